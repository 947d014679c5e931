"""The hand-designed optimizers a learned optimizer must beat, with their tuning grids.

Every baseline is an optax ``GradientTransformationExtraArgs`` built from numeric hyperparameters
that may be traced arrays, so a whole grid of them can be run at once under ``jax.vmap``. All of them
accept the same keyword extras (``value``, ``grad``, ``value_fn``); the line-search methods use them.

``adam_cosine`` and ``momentum_cosine`` are what a practitioner runs: a tuned *peak* learning rate
decayed to 0 over the run by ``optax.cosine_decay_schedule``. Their horizon ``decay_steps`` is not
tuned: it is the run's number of steps (``spec.grid_points(num_steps=...)`` sets it, and tuned
settings record it), a static positive Python int (never traced). After ``decay_steps`` optax holds
the schedule at its final value, 0: a run longer than ``decay_steps`` stops moving there.

``make_baseline`` wraps each in :func:`metaopt.optimizers.guards.skip_nonfinite` unless told not to:
a step whose gradients, ``value``, updates or resulting parameters hold NaN/inf is skipped (zero
update, state kept) instead of written into the parameters. The spec factories (used for tuning)
are the plain optax transformations, with optax's semantics: NaN in, NaN out.

Example::

  tx = make_baseline("momentum", learning_rate=0.1, momentum=0.9)
  tx = make_baseline("adam_cosine", learning_rate=0.03, decay_steps=400)   # for a 400-step run
  for name, spec in BASELINES.items():
      print(name, spec.grid, spec.grid_points(num_steps=400)[0])
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers
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


def _decay_steps(decay_steps) -> int:
    """The horizon of a schedule: a positive Python int, fixed when the optimizer is built."""
    if isinstance(decay_steps, bool) or not isinstance(decay_steps, numbers.Integral):
        raise TypeError(
            "decay_steps (the run's horizon) must be a Python int, static: not traced, not a float "
            f"or array; got {decay_steps!r}.")
    if decay_steps <= 0:
        raise ValueError(f"decay_steps must be positive, got {decay_steps}.")
    return int(decay_steps)


def _cosine(learning_rate, decay_steps) -> optax.Schedule:
    # peak·½(1 + cos(π·min(t, T)/T)): 0 from t = T on (optax holds alpha·peak = 0 there).
    return optax.cosine_decay_schedule(init_value=learning_rate,
                                       decay_steps=_decay_steps(decay_steps))


@dataclasses.dataclass(frozen=True)
class BaselineSpec:
    """A baseline: how to build it and the grid it is tuned over.

    Attributes:
      factory: keyword hyperparameters → optax transformation.
      grid: hyperparameter name → values tried (the Cartesian product is searched).
      description: one line for results files.
      horizon: name of a hyperparameter that is not tuned but set to the run's number of steps
        (a static int, e.g. a schedule's ``decay_steps``), or ``None``.
    """

    factory: Callable[..., optax.GradientTransformation]
    grid: Mapping[str, Sequence[float]]
    description: str
    horizon: str | None = None

    @property
    def hyperparams(self) -> tuple[str, ...]:
        """Every keyword of ``factory``: the tuned ones, then ``horizon`` if any."""
        return (*self.grid, *((self.horizon,) if self.horizon else ()))

    def grid_points(self, num_steps: int | None = None) -> list[dict[str, float]]:
        """The settings tuning tries; with a ``horizon`` each also sets it to ``num_steps``.

        Raises:
          TypeError: ``num_steps`` is missing for a baseline with a horizon.
        """
        names = list(self.grid)
        points = [dict(zip(names, vals, strict=True))
                  for vals in itertools.product(*(self.grid[n] for n in names))]
        if self.horizon is None:
            return points
        if num_steps is None:
            raise TypeError(
                f"this baseline's {self.horizon} is the run's horizon: call "
                "grid_points(num_steps=...) with the number of steps of the runs.")
        steps = _decay_steps(num_steps)
        return [{**p, self.horizon: steps} for p in points]


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
    # Decayed runs tolerate higher peaks: one half-decade more upward than the constant rates.
    "momentum_cosine": BaselineSpec(
        lambda learning_rate, momentum, decay_steps: optax.sgd(
            _cosine(learning_rate, decay_steps), momentum=momentum),
        {"learning_rate": _log_grid(1e-3, 3.0), "momentum": (0.5, 0.8, 0.9, 0.95, 0.99)},
        "SGD with heavy-ball momentum, peak learning rate with cosine decay to 0 over the horizon "
        "(decay_steps = the run's steps; held at 0 after decay_steps)",
        horizon="decay_steps",
    ),
    "adam_cosine": BaselineSpec(
        lambda learning_rate, decay_steps: optax.adam(_cosine(learning_rate, decay_steps)),
        {"learning_rate": _log_grid(1e-4, 1.0)},
        "Adam (β1 0.9, β2 0.999, ε 1e-8), peak learning rate with cosine decay to 0 over the "
        "horizon (decay_steps = the run's steps; held at 0 after decay_steps)",
        horizon="decay_steps",
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
      **hyperparams: exactly the names of ``BASELINES[name].grid``, plus its ``horizon``
        (``decay_steps``: the run's number of steps, a Python int) where it has one.

    Raises:
      ValueError: unknown baseline.
      TypeError: missing or unknown hyperparameters; a ``decay_steps`` that is not a Python int.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}.")
    spec = BASELINES[name]
    missing = set(spec.hyperparams) - set(hyperparams)
    unknown = set(hyperparams) - set(spec.hyperparams)
    if missing or unknown:
        raise TypeError(
            f"baseline {name!r} takes hyperparameters {sorted(spec.hyperparams)}; "
            f"missing {sorted(missing)}, unknown {sorted(unknown)}."
        )
    tx = optax.with_extra_args_support(spec.factory(**hyperparams))
    return guards.skip_nonfinite(tx) if skip_nonfinite else tx
