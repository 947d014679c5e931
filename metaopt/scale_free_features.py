"""Scale-free per-coordinate features for the learned optimizer (ours; issue 16).

The paper's Ψ (:mod:`metaopt.features`) is in the units of the task it was trained on:
ĝ/(|ĝ(t−1)| + 1) ≈ ĝ for gradients ~1e-2. The features here do not change when the loss is
multiplied by c > 0, nor when one tensor's parameters are multiplied by c (its gradients then
divide by c): every gradient statistic is divided by an EMA of |ĝ| (ours: |ĝ| rather than Adam's
√EMA(ĝ²), because ĝ² under- or overflows float32 for |ĝ| outside ~[1e-19, 1e19], and a ratio of
two EMAs of the same units needs neither), and the objective enters only as relative changes.
Per coordinate j of a leaf, ``SCALE_FREE_DIM = 9`` numbers::

  0  ĝ_j / (ā_j + ε)                       the current gradient, normalised
  1  m̂_j(0.5)  / (ā_j + ε)                 momenta at three timescales (bias-corrected EMAs of ĝ)
  2  m̂_j(0.9)  / (ā_j + ε)
  3  m̂_j(0.99) / (ā_j + ε)
  4  clip((f̂(t) − f̂(t−1)) / |f̂(t−1)|, ±1)   relative change of the minibatch objective (shared)
  5  its EMA (β = 0.9)                       the objective's trend (shared)
  6  tanh(t / 10)                            time since the start, two timescales (shared);
  7  tanh(t / 100)                           both saturate long before 400 steps, so a longer
                                             horizon sees no input it never saw
  8  1 for a vector or scalar leaf, 0 for a matrix (or higher rank)

ā is the bias-corrected EMA (β = 0.999) of |ĝ|, m̂(β) likewise of ĝ; ε = 1e-8 · the mean over the
leaf of ā (relative, so it scales with the gradients; a coordinate whose gradient was always 0
gives 0). Every feature is clipped to ±``FEATURE_LIMIT``, so the policy's input is bounded whatever
happens, and |ĝ| to 1e30, so that no EMA can round up to inf. (Gradients below ~1e-35 act as 0:
0.001·|ĝ| would be a denormal, which XLA flushes on CPU.)

Every function is elementwise over a leaf's coordinates (jit-able, vmap-able). The state per
parameter is 3 momenta + ā = 16 bytes (float32).

Example::

  momentum, magnitude = init_moments(x)
  obs, momentum, magnitude = scale_free_features(
      momentum, magnitude, leaf_count, grad, step=t, objective_change=psi1, trend=trend)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MOMENTUM_DECAYS = (0.5, 0.9, 0.99)
MAGNITUDE_DECAY = 0.999
TREND_DECAY = 0.9
TIME_SCALES = (10.0, 100.0)
OBJECTIVE_CHANGE_LIMIT = 1.0
FEATURE_LIMIT = 10.0
RELATIVE_EPS = 1e-8
GRADIENT_LIMIT = 1e30
SCALE_FREE_DIM = 1 + len(MOMENTUM_DECAYS) + 2 + len(TIME_SCALES) + 1   # 9
MOMENTUM_FEATURE = 2            # index of m̂(0.9)/ā, the untrained policy's direction

_F32 = jnp.float32
_TINY = float(jnp.finfo(jnp.float32).tiny)

__all__ = [
    "MOMENTUM_DECAYS",
    "MOMENTUM_FEATURE",
    "SCALE_FREE_DIM",
    "init_moments",
    "objective_trend",
    "relative_objective_change",
    "scale_free_features",
]


def init_moments(x) -> tuple[jax.Array, jax.Array]:
    """Zero momenta ``x.shape + (3,)`` and magnitude ā ``x.shape``, float32."""
    base = jnp.zeros_like(x, dtype=_F32)
    return jnp.broadcast_to(base[..., None], base.shape + (len(MOMENTUM_DECAYS),)), base


def relative_objective_change(count, value, prev_value) -> jax.Array:
    """Feature 4: (f̂(t) − f̂(t−1)) / |f̂(t−1)| clipped to ±1; 0 at t = 0 or when f̂(t−1) = 0."""
    value, prev_value = jnp.asarray(value, _F32), jnp.asarray(prev_value, _F32)
    denominator = jnp.abs(prev_value)
    change = (value - prev_value) / jnp.where(denominator > 0, denominator, 1.0)
    change = jnp.where((count > 0) & (denominator > 0), change, 0.0)
    return jnp.clip(change, -OBJECTIVE_CHANGE_LIMIT, OBJECTIVE_CHANGE_LIMIT)


def objective_trend(trend, objective_change) -> jax.Array:
    """Feature 5 after this step: EMA (β = 0.9) of feature 4."""
    return TREND_DECAY * jnp.asarray(trend, _F32) + (1.0 - TREND_DECAY) * objective_change


def scale_free_features(momentum, magnitude, leaf_count, grad, *, step, objective_change,
                        trend):
    """The 9 features of every coordinate of one leaf, and its moments advanced by one step.

    Args:
      momentum: ``leaf.shape + (3,)`` float32, uncorrected EMAs of ĝ (``init_moments``).
      magnitude: ``leaf.shape`` float32, uncorrected EMA of |ĝ|.
      leaf_count: int32 scalar, gradients already folded into this leaf's moments.
      grad: ĝ(t), the leaf's minibatch gradient (any float dtype).
      step: int32 scalar t of the problem (time features).
      objective_change: feature 4 (scalar), from :func:`relative_objective_change`.
      trend: feature 5 (scalar) after this step, from :func:`objective_trend`.

    Returns:
      ``(obs, new_momentum, new_magnitude)``; ``obs`` is ``leaf.shape + (9,)`` float32.
    """
    g = jnp.clip(jnp.asarray(grad, _F32), -GRADIENT_LIMIT, GRADIENT_LIMIT)
    n = jnp.asarray(leaf_count, _F32) + 1.0
    decays = jnp.asarray(MOMENTUM_DECAYS, _F32)
    new_momentum = decays * momentum + (1.0 - decays) * g[..., None]
    new_magnitude = MAGNITUDE_DECAY * magnitude + (1.0 - MAGNITUDE_DECAY) * jnp.abs(g)
    momentum_hat = new_momentum / (1.0 - decays**n)
    scale = new_magnitude / (1.0 - MAGNITUDE_DECAY**n)
    # ε relative to the leaf's gradient scale; _TINY keeps 0 / 0 at 0 for an all-zero leaf.
    eps = RELATIVE_EPS * jnp.mean(scale) + _TINY if scale.size else _TINY
    inverse = 1.0 / (scale + eps)
    shared = lambda v: jnp.zeros_like(g) + jnp.asarray(v, _F32)    # keeps g's sharding
    time = jnp.asarray(step, _F32)
    columns = [g * inverse, *(momentum_hat[..., k] * inverse for k in range(len(MOMENTUM_DECAYS))),
               shared(objective_change), shared(trend),
               *(shared(jnp.tanh(time / s)) for s in TIME_SCALES),
               shared(1.0 if g.ndim <= 1 else 0.0)]
    obs = jnp.clip(jnp.stack(columns, axis=-1), -FEATURE_LIMIT, FEATURE_LIMIT)
    return obs, new_momentum, new_magnitude
