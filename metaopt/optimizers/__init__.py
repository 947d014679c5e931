"""Baseline optimizers: the tuned hand-designed ones, nonlinear conjugate gradient, a non-finite
guard, and the L2L LSTM optimizer of Andrychowicz et al. 2016.

Example::

  from metaopt.optimizers import init_l2l, l2l_opt, make_baseline
  tx = make_baseline("adam", learning_rate=1e-3)   # skips a step with NaN/inf (skip_nonfinite)
  tx = l2l_opt(init_l2l(jax.random.key(0)))         # Andrychowicz et al. 2016's LSTM optimizer
"""

from metaopt.optimizers.baselines import BASELINES, BaselineSpec, make_baseline
from metaopt.optimizers.conjugate_gradient import conjugate_gradient
from metaopt.optimizers.guards import skip_nonfinite
from metaopt.optimizers.l2l import init_l2l, l2l_opt

__all__ = [
    "BASELINES",
    "BaselineSpec",
    "conjugate_gradient",
    "init_l2l",
    "l2l_opt",
    "make_baseline",
    "skip_nonfinite",
]
