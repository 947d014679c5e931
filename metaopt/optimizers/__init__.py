"""Hand-designed optimizers: the tuned baselines, nonlinear conjugate gradient, a non-finite guard.

Example::

  from metaopt.optimizers import make_baseline
  tx = make_baseline("adam", learning_rate=1e-3)   # skips a step with NaN/inf (skip_nonfinite)
"""

from metaopt.optimizers.baselines import BASELINES, BaselineSpec, make_baseline
from metaopt.optimizers.conjugate_gradient import conjugate_gradient
from metaopt.optimizers.guards import skip_nonfinite

__all__ = ["BASELINES", "BaselineSpec", "conjugate_gradient", "make_baseline", "skip_nonfinite"]
