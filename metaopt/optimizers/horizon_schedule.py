"""``horizon_schedule``: a step multiplier over the fraction of a known horizon, as an optax schedule.

A learned optimizer whose inputs cannot tell how far through its run it is (the scale-free
policy's clocks saturate near step 300) cannot follow a schedule over a user's horizon T by itself.
This schedule gives it one from outside: multipliers at a few fractions p = t / T of the horizon,
interpolated geometrically (linearly in log) between them and held at the last one past T.

Example::

  schedule = horizon_schedule([1.0, 2.0, 2.0, 1.0, 0.5], horizon=400)  # knots at p = 0, ¼, ½, ¾, 1
  tx = metaopt.learned_opt(theta, learning_rate=schedule)
  float(schedule(100))   # 2.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
import optax

__all__ = ["check_multipliers", "even_fractions", "horizon_schedule"]


def even_fractions(count: int) -> tuple[float, ...]:
    """``count`` ≥ 2 evenly spaced fractions of the horizon, from 0 to 1."""
    if count < 2:
        raise ValueError(f"a horizon schedule needs at least 2 knots, got {count}")
    return tuple(i / (count - 1) for i in range(count))


def check_multipliers(multipliers, *, owner: str = "horizon_schedule") -> None:
    """ValueError unless ``multipliers`` are Python/NumPy numbers that are all positive and finite
    (a traced array passes unchecked: the search in ``experiments/schedule_selection.py``)."""
    try:
        values = [float(m) for m in multipliers]
    except TypeError:   # traced values: the caller is a jit-compiled search
        return
    if not values or any(not math.isfinite(m) or m <= 0 for m in values):
        raise ValueError(f"{owner}: the multipliers must be positive finite numbers (they are "
                         f"interpolated in log), got {values}")


def horizon_schedule(multipliers: Sequence[float], *, horizon: int,
                     fractions: Sequence[float] | None = None) -> optax.Schedule:
    """The schedule t ↦ exp(interp(t / horizon, fractions, log multipliers)).

    Args:
      multipliers: ``(K,)`` positive multipliers, one per knot (floats or a traced array).
      horizon: T > 0, the number of steps the run will take; steps past T keep the last value.
      fractions: ``(K,)`` increasing fractions of T from 0 to 1 (default: evenly spaced).

    Returns:
      An ``optax.Schedule`` (float32 scalar of the step count), usable as any optax optimizer's
      ``learning_rate`` and as ``learned_opt``'s.

    Raises:
      ValueError: a multiplier is not positive and finite, the horizon is not a positive integer,
        or the fractions do not rise from 0 to 1 with one per multiplier.
    """
    check_multipliers(multipliers)
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon <= 0:
        raise ValueError(f"horizon_schedule: horizon must be a positive int (the run's number of "
                         f"steps), got {horizon!r}")
    count = len(multipliers)
    fractions = even_fractions(count) if fractions is None else tuple(float(p) for p in fractions)
    if (len(fractions) != count or fractions[0] != 0.0 or fractions[-1] != 1.0
            or any(b <= a for a, b in zip(fractions, fractions[1:], strict=False))):
        raise ValueError(f"horizon_schedule: fractions must rise strictly from 0 to 1 with one "
                         f"per multiplier ({count}), got {list(fractions)}")
    log_knots = jnp.log(jnp.asarray(multipliers, jnp.float32))
    knots_at = jnp.asarray(fractions, jnp.float32)

    def schedule(count):
        progress = jnp.asarray(count, jnp.float32) / horizon
        return jnp.exp(jnp.interp(progress, knots_at, log_knots))

    return schedule
