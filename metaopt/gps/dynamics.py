"""Linear-Gaussian dynamics fit from pooled moments, with a normal-inverse-Wishart prior.

For every (group, t) the points y = [s_t; a_t; s_{t+1}] of all coordinates × samples are
summarised by ``RegressionMoments``. The fit forms the NIW posterior covariance of y, adds a ridge
on the (s, a) block and conditions s_{t+1} on z = [s_t; a_t]:

    Σ   = [N·S + n₀·Φ + (N·n₀ / (N + n₀))·(μ̂ − μ₀)(μ̂ − μ₀)ᵀ] / (N + n₀),   μ = μ̂,
    Σ_zz += ridge·diag(Σ_zz),   [A B] = Σ_{x'z} Σ_zz⁻¹,   c = μ_{x'} − [A B] μ_z,
    F   = Σ_{x'x'} − [A B] Σ_{zx'}.

The default prior pools the group's moments over all its time steps (μ₀, Φ = their mean and
covariance) with n₀ = ``DEFAULT_PRIOR_STRENGTH`` = 1000 pseudo-points per step. The mean is not
shrunk, as in the reference.

Why pooled-over-time and why 1000 (``benchmarks/cstep.py --prior-study``; real 79-wide GPS
states of a 48-48-10 MLP under the momentum controller, fit on 10 samples, scored on 10 others):
the held-out normalised MSE of s_{t+1} fell from 0.83 (ridge only) to 0.82 / 0.76 / 0.64 / 0.61
with n₀ = 1 / 10 / 100 / 1000 for the 10-coordinate bias (100 points per step), and was flat
(0.615–0.618) up to 10⁵; for the 48-coordinate bias n₀ = 1000 was best (0.68), for the
480-coordinate matrix 10⁴ (0.687, against 0.711 at 1000). The reference's GMM prior (K = 20, EM
on 20k points) improved the MSE by only 0.01 at equal n₀ while costing ~150 s per group on
2 CPUs, against ~0.1 s for the pooled prior. The reference's n₀ ≈ 1 is far too weak here.

Shapes: ``T`` steps, ``D = 2·dX + dU``; leading axes ``...`` are groups (and conditions). All solves
run in the widest float JAX allows: float64 under ``metaopt.gps.float64()``, float32 otherwise.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaopt.gps.moments import mean_covariance, select_moments, sum_moments
from metaopt.gps.types import (
    LinearGaussianDynamics,
    RegressionMoments,
    solve_dtype,
    symmetrize,
)

DEFAULT_PRIOR_STRENGTH = 1000.0


class NormalInverseWishartPrior(NamedTuple):
    """NIW prior on the joint Gaussian of y, per (group[, t]).

    Attributes:
      mean: μ₀, ``(..., D)`` or ``(..., T, D)``.
      covariance: Φ, the prior's expected covariance, same leading shape plus ``(D, D)``.
      strength: pseudo-count n₀ (also used as the mean's pseudo-count m), ``(...)`` or scalar.
    """

    mean: jax.Array
    covariance: jax.Array
    strength: jax.Array


def pooled_time_prior(moments: RegressionMoments,
                      strength: float | jax.Array = DEFAULT_PRIOR_STRENGTH,
                      ) -> NormalInverseWishartPrior:
    """Prior from the group's moments pooled over its time steps.

    Args:
      moments: per-step moments, count ``(..., T)``.
      strength: pseudo-points per time step (scalar or ``(..., T)``).

    Returns:
      ``NormalInverseWishartPrior`` with mean ``(..., D)`` and covariance ``(..., D, D)``; the
      pooled covariance includes the spread of the per-step means (law of total variance).
    """
    pooled = sum_moments(moments, axis=-1)
    mean, covariance = mean_covariance(pooled)
    return NormalInverseWishartPrior(mean, covariance, jnp.asarray(strength))


def posterior_mean_covariance(moments: RegressionMoments,
                              prior: NormalInverseWishartPrior) -> tuple[jax.Array, jax.Array]:
    """NIW posterior mean ``(..., D)`` (= the empirical mean) and covariance ``(..., D, D)``.

    ``prior`` broadcasts against the moments' batch shape. Where no points were seen the result is
    the prior.
    """
    dtype = solve_dtype()
    count = moments.count.astype(dtype)
    moments = RegressionMoments(count, moments.first.astype(dtype), moments.second.astype(dtype))
    mean, covariance = mean_covariance(moments)
    prior_mean = jnp.broadcast_to(prior.mean.astype(dtype), mean.shape)
    prior_cov = prior.covariance.astype(dtype)
    n0 = jnp.asarray(prior.strength, dtype)
    n0 = jnp.broadcast_to(n0, count.shape) if n0.ndim == 0 else n0
    mean = jnp.where(count[..., None] > 0, mean, prior_mean)
    delta = mean - prior_mean
    n, n0 = count[..., None, None], n0[..., None, None]
    shrink = n * n0 / jnp.maximum(n + n0, jnp.finfo(dtype).tiny)
    numerator = (n * covariance + n0 * prior_cov
                 + shrink * delta[..., :, None] * delta[..., None, :])
    return mean, symmetrize(numerator / jnp.maximum(n + n0, jnp.finfo(dtype).tiny))


def relative_ridge(matrix: jax.Array, ridge: float) -> jax.Array:
    """The diagonal matrix ``ridge``·diag(M) to add to M: a ridge in M's own units.

    An absolute ridge acts differently on every scale of the problem: 1e-3·I on regressors whose
    variances are 1e-6–1e-4 crushed the fitted dynamics (a coefficient that is exactly 1 came
    out 0.02). Relative to each entry's variance the fit is invariant to rescaling any entry.
    Entries that never vary (diag ≤ 0: undefined features, exactly 0) get the mean variance
    instead, which keeps the solve defined and gives them zero gain.
    Returns ``(..., n, n)``.
    """
    diag = jnp.diagonal(matrix, axis1=-2, axis2=-1)
    fallback = jnp.maximum(jnp.mean(jnp.maximum(diag, 0.0), -1, keepdims=True),
                           jnp.finfo(matrix.dtype).tiny)
    added = jnp.where(diag > 0, ridge * diag, fallback)
    return added[..., None] * jnp.eye(matrix.shape[-1], dtype=matrix.dtype)


def condition_gaussian(mean: jax.Array, covariance: jax.Array, input_dim: int,
                       ridge: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Linear-Gaussian conditional of y[input_dim:] given y[:input_dim].

    Args:
      mean: ``(..., D)``; covariance: ``(..., D, D)``.
      input_dim: n, the width of the conditioning block z.
      ridge: relative ridge on the z block: ``ridge``·diag(Σ_zz) (+ a tiny floor) is added
        before solving (``relative_ridge``), so the fit does not depend on the units of z.

    Returns:
      gain ``(..., D − n, n)``, offset ``(..., D − n)``, covariance ``(..., D − n, D − n)``.
    """
    sigma_zz = covariance[..., :input_dim, :input_dim]
    sigma_zz = sigma_zz + relative_ridge(sigma_zz, ridge)
    sigma_zy = covariance[..., :input_dim, input_dim:]
    chol = jnp.linalg.cholesky(sigma_zz)
    gain = jnp.swapaxes(jax.scipy.linalg.cho_solve((chol, True), sigma_zy), -1, -2)
    offset = mean[..., input_dim:] - jnp.einsum("...ij,...j->...i", gain, mean[..., :input_dim])
    residual = covariance[..., input_dim:, input_dim:] - gain @ sigma_zy
    return gain, offset, symmetrize(residual)


def fit_dynamics(moments: RegressionMoments, state_dim: int,
                 prior: NormalInverseWishartPrior | None = None,
                 prior_strength: float | jax.Array = DEFAULT_PRIOR_STRENGTH,
                 ridge: float = 1e-3,
                 initial_state_variance: float = 1e-6) -> LinearGaussianDynamics:
    """Fit p(s_{t+1} | s_t, a_t) = N(A_t s_t + B_t a_t + c_t, F_t) for every (group, t).

    Args:
      moments: moments of y = [s_t; a_t; s_{t+1}], count ``(..., T)``, first ``(..., T, D)``.
      state_dim: dX; the action width is dU = D − 2·dX.
      prior: a NIW prior broadcastable to ``(..., T)``; default ``pooled_time_prior(moments,
        prior_strength)``.
      prior_strength: n₀ of the default prior, scalar or ``(..., T)`` (e.g. proportional to
        ``moments.count``); 0 for no prior (then groups with fewer points than D need the ridge).
      ridge: relative ridge on the (s, a) block of the posterior covariance (``relative_ridge``;
        the reference's 1e-3·I is absolute, for its O(1) states).
      initial_state_variance: relative ridge on the empirical s_0 covariance
        (``relative_ridge``: the variance of every entry × (1 + this), plus a tiny floor).

    Returns:
      ``LinearGaussianDynamics`` with ``(..., T, ...)`` matrices; ``initial_mean`` / ``_covariance``
      are the (empirical) mean and covariance of s_0 from the t = 0 moments.
    """
    if prior is None:
        prior = pooled_time_prior(moments, prior_strength)
        prior = NormalInverseWishartPrior(
            prior.mean[..., None, :], prior.covariance[..., None, :, :], prior.strength)
    mean, covariance = posterior_mean_covariance(moments, prior)
    action_dim = mean.shape[-1] - 2 * state_dim
    if action_dim < 1:
        raise ValueError(
            f"moments of width {mean.shape[-1]} cannot hold [s; a; s'] with dX={state_dim}")
    gain, offset, noise = condition_gaussian(mean, covariance, state_dim + action_dim, ridge)
    first_step = RegressionMoments(moments.count[..., 0], moments.first[..., 0, :],
                                   moments.second[..., 0, :, :])
    _, empirical = mean_covariance(jax.tree.map(lambda x: x.astype(mean.dtype), first_step))
    initial = empirical[..., :state_dim, :state_dim]
    return LinearGaussianDynamics(
        state_matrix=gain[..., :state_dim],
        action_matrix=gain[..., state_dim:],
        offset=offset,
        covariance=noise,
        initial_mean=mean[..., 0, :state_dim],
        initial_covariance=initial + relative_ridge(initial, initial_state_variance),
    )



def fit_conditional_mean(moments: RegressionMoments, inputs, outputs,
                         prior_strength: float | jax.Array = DEFAULT_PRIOR_STRENGTH,
                         ridge: float = 1e-3) -> tuple[jax.Array, jax.Array]:
    """Per-(group, t) linear regression E[y[outputs] | y[inputs]] = M y[inputs] + m.

    The joint Gaussian of the selected entries gets the same pooled-over-time NIW prior as
    ``fit_dynamics`` (strength ``prior_strength`` per step) and ``ridge`` on the inputs' block.
    Used for E[g* | s] when the controllers may not see g* (``tied_coordinate_cost``).

    Args:
      moments: count ``(..., T)``; first ``(..., T, D)``.
      inputs, outputs: integer indices into y.

    Returns:
      M ``(..., T, len(outputs), len(inputs))`` and m ``(..., T, len(outputs))``.
    """
    inputs, outputs = list(inputs), list(outputs)
    selected = select_moments(moments, inputs + outputs)
    prior = pooled_time_prior(selected, prior_strength)
    prior = NormalInverseWishartPrior(
        prior.mean[..., None, :], prior.covariance[..., None, :, :], prior.strength)
    mean, covariance = posterior_mean_covariance(selected, prior)
    gain, offset, _ = condition_gaussian(mean, covariance, len(inputs), ridge)
    return gain, offset
