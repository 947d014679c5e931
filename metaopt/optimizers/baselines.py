"""The hand-designed optimizers a learned optimizer must beat, with their tuning grids.

Every baseline is an optax ``GradientTransformationExtraArgs`` built from numeric hyperparameters
that may be traced arrays, so a whole grid of them can be run at once under ``jax.vmap``. All of them
accept the same keyword extras (``value``, ``grad``, ``value_fn``); the line-search methods use them.

``make_baseline`` wraps each in :func:`metaopt.optimizers.guards.skip_nonfinite` unless told not to:
a step whose gradients, ``value``, updates or resulting parameters hold NaN/inf is skipped (zero
update, state kept) instead of written into the parameters. The spec factories (used for tuning)
are the plain optax transformations, with optax's semantics: NaN in, NaN out.

Example::

  tx = make_baseline("momentum", learning_rate=0.1, momentum=0.9)
  for name, spec in BASELINES.items():
      print(name, spec.grid)
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence

import optax

from metaopt.optimizers import guards
from metaopt.optimizers.conjugate_gradient import conjugate_gradient


def _log_grid(low: float, high: float) -> tuple[float, ...]:
    """1, 3, 10, 30, … × 10^k between ``low`` and ``high`` (half-decade steps)."""
    values = [m * 10.0**e for e in range(-8, 5) for m in (1.0, 3.0)]
    return tuple(float(f"{v:.3g}") for v in values if low * (1 - 1e-9) <= v <= high * (1 + 1e-9))


def _lbfgs(max_learning_rate, memory_size: int = 10):
    # Line search on the minibatch objective (value_fn); its step cap is the tuned knob.
    return optax.lbfgs(
        memory_size=memory_size,
        linesearch=optax.scale_by_zoom_linesearch(
            max_linesearch_steps=15, max_learning_rate=max_learning_rate
        ),
    )


@dataclasses.dataclass(frozen=True)
class BaselineSpec:
    """A baseline: how to build it and the grid it is tuned over.

    Attributes:
      factory: keyword hyperparameters → optax transformation.
      grid: hyperparameter name → values tried (the Cartesian product is searched).
      description: one line for results files.
    """

    factory: Callable[..., optax.GradientTransformation]
    grid: Mapping[str, Sequence[float]]
    description: str

    def grid_points(self) -> list[dict[str, float]]:
        names = list(self.grid)
        return [dict(zip(names, vals, strict=True))
                for vals in itertools.product(*(self.grid[n] for n in names))]


BASELINES: dict[str, BaselineSpec] = {
    "sgd": BaselineSpec(
        lambda learning_rate: optax.sgd(learning_rate),
        {"learning_rate": _log_grid(1e-3, 3.0)},
        "SGD, fixed step",
    ),
    "momentum": BaselineSpec(
        lambda learning_rate, momentum: optax.sgd(learning_rate, momentum=momentum),
        {"learning_rate": _log_grid(1e-3, 1.0), "momentum": (0.5, 0.8, 0.9, 0.95, 0.99)},
        "SGD with heavy-ball momentum",
    ),
    "adam": BaselineSpec(
        lambda learning_rate: optax.adam(learning_rate),
        {"learning_rate": _log_grid(1e-4, 0.3)},
        "Adam (β1 0.9, β2 0.999, ε 1e-8)",
    ),
    "adagrad": BaselineSpec(
        lambda learning_rate: optax.adagrad(learning_rate),
        {"learning_rate": _log_grid(1e-3, 3.0)},
        "AdaGrad (optax defaults)",
    ),
    "rmsprop": BaselineSpec(
        lambda learning_rate: optax.rmsprop(learning_rate),
        {"learning_rate": _log_grid(1e-4, 0.3)},
        "RMSprop (decay 0.9, ε 1e-8)",
    ),
    "lbfgs": BaselineSpec(
        _lbfgs,
        {"max_learning_rate": _log_grid(1e-2, 100.0)},
        "L-BFGS (memory 10), zoom line search on the minibatch objective, step capped",
    ),
    "conjugate_gradient": BaselineSpec(
        lambda max_learning_rate: conjugate_gradient(max_learning_rate=max_learning_rate),
        {"max_learning_rate": _log_grid(1e-2, 100.0)},
        "nonlinear CG (Polak-Ribiere+), zoom line search on the minibatch objective, step capped",
    ),
}


def make_baseline(
    name: str, *, skip_nonfinite: bool = True, **hyperparams
) -> optax.GradientTransformationExtraArgs:
    """Builds baseline ``name`` with the given hyperparameters (floats or traced arrays).

    Args:
      name: a key of :data:`BASELINES`.
      skip_nonfinite: wrap it in :func:`metaopt.optimizers.guards.skip_nonfinite` (default), so
        that a step with NaN/inf gradients, ``value``, updates or resulting parameters is skipped
        (zero update; ``state.total_notfinite`` counts them). ``False``: the plain optax
        transformation (NaN gradients give NaN parameters).
      **hyperparams: exactly the names of ``BASELINES[name].grid``.

    Raises:
      ValueError: unknown baseline.
      TypeError: missing or unknown hyperparameters.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}.")
    spec = BASELINES[name]
    missing = set(spec.grid) - set(hyperparams)
    unknown = set(hyperparams) - set(spec.grid)
    if missing or unknown:
        raise TypeError(
            f"baseline {name!r} takes hyperparameters {sorted(spec.grid)}; "
            f"missing {sorted(missing)}, unknown {sorted(unknown)}."
        )
    tx = optax.with_extra_args_support(spec.factory(**hyperparams))
    return guards.skip_nonfinite(tx) if skip_nonfinite else tx
