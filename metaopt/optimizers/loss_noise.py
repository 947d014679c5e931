"""``scale_by_loss_noise``: scale updates by a function of the measured minibatch-loss noise.

A step size that suits minibatch 64 is too large at minibatch 5: the family policy's best constant
step multiplier on the training side falls from ≈ 1.6 (minibatch 32–128) to 1 (minibatch 10) and
below 0.6 (minibatch 5). The policy cannot tell the two apart from its per-coordinate inputs, but
the objective's own fluctuation can: the relative change r_t = (f̂_t − f̂_{t−1}) / ½(|f̂_t| + |f̂_{t−1}|)
of consecutive minibatch objectives is mostly sampling noise. This transformation keeps an EMA of
r², reads the noise level n_t = √(EMA / 2) (bias-corrected; the std of one minibatch's relative
objective when consecutive minibatches are independent) and multiplies the updates by
g(n_t), interpolated geometrically between K knots (held flat outside them). It is invariant to
multiplying the objective by c > 0, as the scale-free policy is. Until ``warmup`` changes have
been seen the multiplier is 1.

Example::

  tx = optax.chain(metaopt.learned_opt(theta),
                   scale_by_loss_noise([1.6, 1.6, 1.2, 1.0, 0.6],
                                       noise_levels=[0.15, 0.25, 0.35, 0.45, 0.55]))
  updates, state = tx.update(grads, state, params, value=loss)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaopt.optimizers.guards import scalar_objective
from metaopt.optimizers.horizon_schedule import check_multipliers

__all__ = ["DEFAULT_DECAY", "DEFAULT_WARMUP", "LossNoiseState", "loss_noise_level",
           "loss_noise_multiplier", "scale_by_loss_noise"]

DEFAULT_DECAY = 0.98   # the EMA's β: about the last 50 steps
DEFAULT_WARMUP = 10    # changes seen before the multiplier leaves 1


class LossNoiseState(NamedTuple):
    """State of :func:`scale_by_loss_noise`.

    Attributes:
      count: int32, finite relative changes folded into ``mean_square``.
      prev_value: float32, the last finite ``value`` (NaN before the first).
      mean_square: float32, EMA of r² (not bias-corrected).
    """

    count: jax.Array
    prev_value: jax.Array
    mean_square: jax.Array


def loss_noise_level(state: LossNoiseState, decay: float) -> jax.Array:
    """n = √(bias-corrected EMA of r² / 2); 0 before any change is seen."""
    corrected = state.mean_square / jnp.maximum(1.0 - decay ** state.count.astype(jnp.float32),
                                                1e-12)
    return jnp.sqrt(jnp.maximum(corrected, 0.0) / 2.0)


def loss_noise_multiplier(level, multipliers, noise_levels) -> jax.Array:
    """g(level): ``multipliers`` interpolated in log over log ``noise_levels``, flat outside."""
    log_level = jnp.log(jnp.maximum(jnp.asarray(level, jnp.float32), 1e-12))
    return jnp.exp(jnp.interp(log_level, jnp.log(jnp.asarray(noise_levels, jnp.float32)),
                              jnp.log(jnp.asarray(multipliers, jnp.float32))))


def scale_by_loss_noise(multipliers: Sequence[float], *, noise_levels: Sequence[float],
                        decay: float = DEFAULT_DECAY, warmup: int = DEFAULT_WARMUP
                        ) -> optax.GradientTransformationExtraArgs:
    """Multiply updates by g(n_t), the measured loss-noise level's multiplier (module docs).

    Args:
      multipliers: ``(K,)`` positive multipliers g at ``noise_levels`` (floats or a traced array).
      noise_levels: ``(K,)`` strictly increasing positive noise levels n.
      decay: the EMA's β in (0, 1) (0.98: about the last 50 steps).
      warmup: the multiplier is 1 until this many changes have been seen.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs the keyword ``value``
      (the minibatch objective at the current iterate). A non-finite ``value`` leaves the state
      as it was (the updates are still scaled by the current multiplier).

    Raises:
      ValueError: bad multipliers, levels, decay or warmup; ``value`` missing or not a scalar.
    """
    check_multipliers(multipliers, owner="scale_by_loss_noise")
    levels = [float(n) for n in noise_levels]
    if (len(levels) != len(multipliers) or any(n <= 0 for n in levels)
            or any(b <= a for a, b in zip(levels, levels[1:], strict=False))):
        raise ValueError(f"scale_by_loss_noise: noise_levels must be positive, strictly "
                         f"increasing and one per multiplier ({len(multipliers)}), got {levels}")
    if not 0.0 < decay < 1.0:
        raise ValueError(f"scale_by_loss_noise: decay must be in (0, 1), got {decay}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise ValueError(f"scale_by_loss_noise: warmup must be a positive int, got {warmup!r}")

    def init_fn(params):
        del params
        return LossNoiseState(jnp.zeros((), jnp.int32), jnp.full((), jnp.nan, jnp.float32),
                              jnp.zeros((), jnp.float32))

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        value = scalar_objective(value, owner="scale_by_loss_noise").astype(jnp.float32)
        scale = jnp.where(state.count >= warmup,
                          loss_noise_multiplier(loss_noise_level(state, decay), multipliers,
                                                levels), 1.0)
        updates = jax.tree.map(lambda u: (u * scale).astype(u.dtype), updates)
        # Not scale_free_features.relative_objective_change: that one is clipped to ±1 and
        # divides by |f̂(t−1)|; the symmetric, unclipped r is what the knots were chosen on.
        change = (value - state.prev_value) / jnp.maximum(
            0.5 * (jnp.abs(value) + jnp.abs(state.prev_value)), 1e-30)
        seen = jnp.isfinite(change)
        new_state = LossNoiseState(
            count=state.count + seen.astype(jnp.int32),
            prev_value=jnp.where(jnp.isfinite(value), value, state.prev_value),
            mean_square=jnp.where(seen, decay * state.mean_square + (1 - decay) * change ** 2,
                                  state.mean_square))
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
