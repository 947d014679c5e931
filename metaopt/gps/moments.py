"""Streaming moments for the pooled per-(group, t) dynamics regression.

A rollout step turns the points y = [s_t; a_t; s_{t+1}] of every coordinate of a group (and every
sample) into one ``RegressionMoments`` (count, Σy, Σyyᵀ); ``lax.scan`` stacks them over time, and
accumulators over the same (group, t) add up across samples, rollouts and devices. The dynamics
fit (``metaopt.gps.dynamics``) needs nothing else.

The sums are raw (not centred), accumulated in the accumulator's dtype. In float32, a dimension
whose mean is much larger than its spread loses precision in ``mean_covariance``; centre such
features before accumulating or accumulate in float64.
"""

import jax
import jax.numpy as jnp

from metaopt.gps.types import RegressionMoments


def zeros_moments(dim: int, batch_shape: tuple[int, ...] = (),
                  dtype=jnp.float32) -> RegressionMoments:
    """Empty accumulator: count ``batch_shape``, first ``(..., dim)``, second ``(…, dim, dim)``."""
    return RegressionMoments(
        count=jnp.zeros(batch_shape, dtype),
        first=jnp.zeros((*batch_shape, dim), dtype),
        second=jnp.zeros((*batch_shape, dim, dim), dtype),
    )


def transition_points(state: jax.Array, action: jax.Array, next_state: jax.Array) -> jax.Array:
    """Regression points y = [s_t; a_t; s_{t+1}], ``(..., 2·dX + dU)``."""
    return jnp.concatenate([state, action, next_state], axis=-1)


def moments_from_points(points: jax.Array, weights: jax.Array | None = None,
                        dtype=None) -> RegressionMoments:
    """Moments of a batch of points, summed over the second-to-last axis.

    Args:
      points: ``(..., N, D)``.
      weights: optional ``(..., N)`` non-negative weights (e.g. a 0/1 mask of valid coordinates).
      dtype: accumulation dtype; defaults to the points' dtype.

    Returns:
      ``RegressionMoments`` with count ``(...,)``, first ``(..., D)``, second ``(..., D, D)``.
    """
    if dtype is not None:
        points = points.astype(dtype)
    if weights is None:
        weighted = points
        count = jnp.full(points.shape[:-2], points.shape[-2], points.dtype)
    else:
        weights = weights.astype(points.dtype)
        weighted = points * weights[..., None]
        count = weights.sum(-1)
    return RegressionMoments(
        count=count,
        first=weighted.sum(-2),
        second=jnp.einsum("...nd,...ne->...de", weighted, points),
    )


def transition_moments(state: jax.Array, action: jax.Array, next_state: jax.Array,
                       weights: jax.Array | None = None,
                       state_moments: RegressionMoments | None = None,
                       ) -> tuple[RegressionMoments, RegressionMoments]:
    """``moments_from_points(transition_points(state, action, next_state), weights)`` by blocks.

    The (2dX + dU)² Gram matrix is assembled from sᵀs, sᵀa, sᵀs', aᵀa, aᵀs', s'ᵀs'. In a rollout
    the sᵀs block of step t is step t − 1's s'ᵀs' block: pass the ``next_moments`` returned by the
    previous step as ``state_moments`` and each step costs two dX×dX products instead of one
    (2dX + dU)² product (about half the FLOPs; the points are never concatenated).

    Args:
      state, next_state: ``(..., N, dX)``; action: ``(..., N, dU)``.
      weights: optional ``(..., N)``, e.g. a mask of valid coordinates (the same at every step if
        ``state_moments`` is reused).
      state_moments: moments of ``state`` alone (count, Σs, Σssᵀ), or None to compute them.

    Returns:
      (moments of y = [s; a; s'], moments of ``next_state`` alone).
    """
    dtype = state.dtype if state_moments is None else state_moments.first.dtype
    state, action, next_state = (x.astype(dtype) for x in (state, action, next_state))
    if state_moments is None:
        state_moments = moments_from_points(state, weights)
    next_moments = moments_from_points(next_state, weights)
    weighted_state, weighted_action = state, action
    if weights is not None:
        weighted_state = state * weights.astype(dtype)[..., None]
        weighted_action = action * weights.astype(dtype)[..., None]

    def cross(a, b):
        return jnp.einsum("...nd,...ne->...de", a, b)

    state_action = cross(weighted_state, action)
    action_action = cross(weighted_action, action)
    action_next = cross(weighted_action, next_state)
    state_next = cross(weighted_state, next_state)
    action_sum = weighted_action.sum(-2)

    def transpose(x):
        return jnp.swapaxes(x, -1, -2)

    second = jnp.concatenate([
        jnp.concatenate([state_moments.second, state_action, state_next], -1),
        jnp.concatenate([transpose(state_action), action_action, action_next], -1),
        jnp.concatenate([transpose(state_next), transpose(action_next), next_moments.second], -1),
    ], -2)
    first = jnp.concatenate([state_moments.first, action_sum, next_moments.first], -1)
    return RegressionMoments(next_moments.count, first, second), next_moments


def add_moments(a: RegressionMoments, b: RegressionMoments) -> RegressionMoments:
    """Merge two accumulators of the same (group, t) index: elementwise sum."""
    return RegressionMoments(*(x + y for x, y in zip(a, b, strict=True)))


def accumulate(moments: RegressionMoments, points: jax.Array,
               weights: jax.Array | None = None) -> RegressionMoments:
    """Add a batch of points ``(..., N, D)`` to an accumulator with batch shape ``(...)``."""
    return add_moments(moments, moments_from_points(points, weights, dtype=moments.first.dtype))


def sum_moments(moments: RegressionMoments, axis: int | tuple[int, ...]) -> RegressionMoments:
    """Pool accumulators over batch ``axis`` (e.g. samples or conditions); axes index ``count``."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    axes = tuple(a % moments.count.ndim for a in axes)
    return RegressionMoments(
        count=moments.count.sum(axes), first=moments.first.sum(axes),
        second=moments.second.sum(axes))


def mean_covariance(moments: RegressionMoments) -> tuple[jax.Array, jax.Array]:
    """Empirical mean ``(..., D)`` and biased (1/N) covariance ``(..., D, D)``.

    Where the count is zero both are zero (the dynamics prior then takes over).
    """
    count = moments.count[..., None]
    safe = jnp.where(count > 0, count, 1)
    mean = jnp.where(count > 0, moments.first / safe, 0)
    second = jnp.where(count[..., None] > 0, moments.second / safe[..., None], 0)
    covariance = second - mean[..., :, None] * mean[..., None, :]
    return mean, 0.5 * (covariance + jnp.swapaxes(covariance, -1, -2))


def select_moments(moments: RegressionMoments, index) -> RegressionMoments:
    """Moments of the sub-vector y[index] (a sub-block of Σy and Σyyᵀ; counts unchanged)."""
    index = jnp.asarray(index)
    return RegressionMoments(
        count=moments.count,
        first=moments.first[..., index],
        second=moments.second[..., index[:, None], index[None, :]],
    )
