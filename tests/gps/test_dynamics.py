"""Streaming moments and the linear-Gaussian dynamics fit with its NIW prior."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaopt.gps import (
    NormalInverseWishartPrior,
    accumulate,
    add_moments,
    fit_conditional_mean,
    fit_dynamics,
    float64,
    moments_from_points,
    pooled_time_prior,
    posterior_mean_covariance,
    select_moments,
    sum_moments,
    transition_moments,
    transition_points,
    zeros_moments,
)
from metaopt.gps.types import RegressionMoments


def simulate_points(rng, count, horizon, state_dim, action_dim, time_varying=True):
    """Points [s; a; s'] of a known linear-Gaussian system, (count, T, D)."""
    steps = horizon if time_varying else 1

    def draw(*shape):
        return np.broadcast_to(rng.normal(size=(steps, *shape)), (horizon, *shape))

    a_mat = draw(state_dim, state_dim) / np.sqrt(state_dim)
    b_mat = draw(state_dim, action_dim)
    offset = draw(state_dim)
    root = draw(state_dim, state_dim) / np.sqrt(state_dim)
    noise_cov = 0.1 * (root @ np.swapaxes(root, -1, -2) + 0.5 * np.eye(state_dim))
    states = rng.normal(size=(count, horizon, state_dim)) * 2 + 1
    actions = rng.normal(size=(count, horizon, action_dim))
    noise = np.einsum("tij,ntj->nti", np.linalg.cholesky(noise_cov),
                      rng.normal(size=(count, horizon, state_dim)))
    next_states = (np.einsum("tij,ntj->nti", a_mat, states)
                   + np.einsum("tij,ntj->nti", b_mat, actions) + offset + noise)
    points = np.concatenate([states, actions, next_states], -1)
    return points, (a_mat, b_mat, offset, noise_cov)


def test_streamed_moments_equal_batch_moments_and_merge_across_devices():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(6, 5, 7))          # (chunks, points per chunk, D)
    mask = (rng.uniform(size=(6, 5)) > 0.3).astype(np.float64)
    with float64():
        def step(moments, chunk):
            return accumulate(moments, *chunk), None
        streamed, _ = jax.lax.scan(step, zeros_moments(7, dtype=jnp.float64), (points, mask))
        batch = moments_from_points(points.reshape(30, 7), mask.reshape(30))
        per_chunk = moments_from_points(points, mask)             # count (6,)
        pooled = sum_moments(per_chunk, axis=0)
        # Per-device partial sums merged with psum (devices simulated by a named vmap axis).
        psummed = jax.vmap(lambda m: jax.lax.psum(m, "devices"), axis_name="devices")(per_chunk)
        merged = add_moments(moments_from_points(points[:2].reshape(10, 7), mask[:2].reshape(10)),
                             moments_from_points(points[2:].reshape(20, 7), mask[2:].reshape(20)))
        streamed, batch, pooled, psummed, merged = jax.device_get(
            (streamed, batch, pooled, psummed, merged))
    for other in (streamed, pooled, merged, jax.tree.map(lambda x: x[0], psummed)):
        for got, want in zip(other, batch, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(batch.count, mask.sum())
    selected = points.reshape(30, 7)[mask.reshape(30) > 0]
    np.testing.assert_allclose(batch.second, selected.T @ selected, rtol=1e-12)


def test_blockwise_transition_moments_in_a_rollout_scan_equal_moments_of_points():
    rng = np.random.default_rng(6)
    horizon, count, state_dim, action_dim = 5, 7, 3, 2
    states = rng.normal(size=(horizon + 1, count, state_dim))
    actions = rng.normal(size=(horizon, count, action_dim))
    weights = (rng.uniform(size=count) > 0.3).astype(np.float64)
    with float64():
        def step(state_moments, inputs):
            state, action, next_state = inputs
            moments, next_moments = transition_moments(state, action, next_state, weights,
                                                       state_moments)
            return next_moments, moments
        first = moments_from_points(jnp.asarray(states[0]), weights)
        _, streamed = jax.lax.scan(step, first, (states[:-1], actions, states[1:]))
        direct = moments_from_points(
            transition_points(states[:-1], actions, states[1:]), weights)
        unweighted, _ = transition_moments(states[0], actions[0], states[1])
        streamed, direct, unweighted = jax.device_get((streamed, direct, unweighted))
    for got, want in zip(streamed, direct, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    points = np.concatenate([states[0], actions[0], states[1]], -1)
    np.testing.assert_allclose(unweighted.second, points.T @ points, rtol=1e-12)


def test_fit_without_prior_equals_least_squares_regression():
    rng = np.random.default_rng(1)
    state_dim, action_dim, horizon, count = 3, 2, 4, 500
    points, _ = simulate_points(rng, count, horizon, state_dim, action_dim)
    with float64():
        moments = moments_from_points(jnp.swapaxes(points, 0, 1))       # per step
        dynamics = jax.device_get(jax.jit(
            lambda m: fit_dynamics(m, state_dim, prior_strength=0.0, ridge=0.0))(moments))
        # Streamed through a scan of 5 chunks of 100 points per step: the same fit.
        def add_chunk(acc, chunk):
            return add_moments(acc, moments_from_points(jnp.swapaxes(chunk, 0, 1))), None
        streamed, _ = jax.lax.scan(add_chunk, zeros_moments(points.shape[-1], (horizon,),
                                                             jnp.float64),
                                   points.reshape(5, 100, horizon, -1))
        streamed_fit = jax.device_get(jax.jit(
            lambda m: fit_dynamics(m, state_dim, prior_strength=0.0, ridge=0.0))(streamed))
    for got, want in zip(streamed_fit, dynamics, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    inputs = state_dim + action_dim
    for t in range(horizon):
        z = np.concatenate([points[:, t, :inputs], np.ones((count, 1))], 1)
        coef, *_ = np.linalg.lstsq(z, points[:, t, inputs:], rcond=None)
        residual = points[:, t, inputs:] - z @ coef
        np.testing.assert_allclose(dynamics.state_matrix[t], coef[:state_dim].T, rtol=1e-9)
        np.testing.assert_allclose(dynamics.action_matrix[t], coef[state_dim:inputs].T, rtol=1e-9)
        np.testing.assert_allclose(dynamics.offset[t], coef[-1], rtol=1e-9)
        np.testing.assert_allclose(dynamics.covariance[t], residual.T @ residual / count,
                                   rtol=1e-9)
    np.testing.assert_allclose(dynamics.initial_mean, points[:, 0, :state_dim].mean(0), rtol=1e-12)
    empirical = np.cov(points[:, 0, :state_dim].T, bias=True)
    np.testing.assert_allclose(   # + the relative ridge 1e-6·diag (metaopt.gps.relative_ridge)
        dynamics.initial_covariance, empirical + 1e-6 * np.diag(np.diag(empirical)), rtol=1e-10)


def test_conditional_mean_and_sub_moments_equal_least_squares_on_selected_entries():
    """E[y[out] | y[in]] from (sub-)moments = NumPy least squares on those columns; the dynamics
    fit on select_moments equals the fit on points that never had the dropped entries."""
    rng = np.random.default_rng(7)
    horizon, count = 3, 400
    points = rng.normal(size=(count, horizon, 6)) @ rng.normal(size=(6, 6)) + rng.normal(size=6)
    inputs, outputs = [0, 2, 3, 5], [4]
    with float64():
        moments = moments_from_points(jnp.swapaxes(points, 0, 1))
        gain, offset = jax.device_get(jax.jit(lambda m: fit_conditional_mean(
            m, inputs, outputs, prior_strength=0.0, ridge=0.0))(moments))
        kept = [0, 1, 2, 3, 5]          # [s (2); a (1); s' (2)] without entry 4 ... as a layout
        sub = jax.device_get(select_moments(moments, kept))
        direct = jax.device_get(moments_from_points(jnp.swapaxes(points[..., kept], 0, 1)))
    assert gain.shape == (horizon, 1, 4) and offset.shape == (horizon, 1)
    for t in range(horizon):
        z = np.concatenate([points[:, t, inputs], np.ones((count, 1))], 1)
        coef, *_ = np.linalg.lstsq(z, points[:, t, outputs], rcond=None)
        np.testing.assert_allclose(gain[t], coef[:-1].T, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(offset[t], coef[-1], rtol=1e-8, atol=1e-10)
    for got, want in zip(sub, direct, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("time_varying,prior_strength", [(True, 1.0), (False, None)])
def test_fit_recovers_known_linear_gaussian_system(time_varying, prior_strength):
    # The pooled-over-time prior is exact for a time-invariant system, so the default strength
    # (1000 pseudo-points) must not bias it; a time-varying one needs a weak prior.
    rng = np.random.default_rng(2)
    state_dim, action_dim, horizon, count = 4, 1, 3, 40_000
    points, (a_mat, b_mat, offset, noise_cov) = simulate_points(
        rng, count, horizon, state_dim, action_dim, time_varying)
    kwargs = {} if prior_strength is None else {"prior_strength": prior_strength}
    with float64():
        moments = moments_from_points(np.swapaxes(points, 0, 1))
        dynamics = jax.device_get(jax.jit(lambda m: fit_dynamics(m, state_dim, **kwargs))(moments))
    tolerance = 6 / np.sqrt(count)
    np.testing.assert_allclose(dynamics.state_matrix, a_mat, atol=tolerance)
    np.testing.assert_allclose(dynamics.action_matrix, b_mat, atol=3 * tolerance)
    np.testing.assert_allclose(dynamics.offset, offset, atol=3 * tolerance)
    np.testing.assert_allclose(dynamics.covariance, noise_cov, atol=tolerance)


def test_niw_posterior_matches_reference_formula():
    rng = np.random.default_rng(3)
    points = rng.normal(size=(12, 5)) + 0.5
    prior_mean, prior_cov = rng.normal(size=5), np.eye(5) * 2.0
    strength = 3.0
    with float64():
        mean, cov = jax.device_get(posterior_mean_covariance(
            moments_from_points(points), NormalInverseWishartPrior(prior_mean, prior_cov, strength)))
    n = len(points)
    empirical_mean = points.mean(0)
    empirical_cov = np.cov(points.T, bias=True)
    delta = empirical_mean - prior_mean
    expected = (n * empirical_cov + strength * prior_cov
                + n * strength / (n + strength) * np.outer(delta, delta)) / (n + strength)
    np.testing.assert_allclose(mean, empirical_mean, rtol=1e-12)
    np.testing.assert_allclose(cov, expected, rtol=1e-12)


def test_prior_fills_in_unseen_and_underdetermined_steps_and_batches_over_groups():
    rng = np.random.default_rng(4)
    state_dim, action_dim, horizon, groups = 3, 1, 5, 2
    dim = 2 * state_dim + action_dim
    points = rng.normal(size=(groups, horizon, 3, dim))     # 3 points per step < D
    weights = np.ones((groups, horizon, 3))
    weights[1, 2] = 0.0                                     # group 1 never saw step 2
    fit = jax.jit(lambda m: fit_dynamics(m, state_dim, prior_strength=5.0))
    with float64():
        moments = moments_from_points(points, weights)
        dynamics = jax.device_get(fit(moments))
        single = jax.device_get(fit(RegressionMoments(*(x[0] for x in moments))))
    for leaf in dynamics:
        assert np.all(np.isfinite(leaf))
    assert np.all(np.linalg.eigvalsh(dynamics.covariance) > 0)
    for got, want in zip(dynamics, single, strict=True):
        np.testing.assert_allclose(got[0], want, rtol=1e-12, atol=1e-14)


def test_per_step_prior_strength_weights_the_pooled_covariance():
    rng = np.random.default_rng(5)
    points = rng.normal(size=(2, 4, 3)) * np.array([1.0, 3.0])[:, None, None]   # (T, N, D)
    strength = np.array([2.0, 8.0])
    with float64():
        moments = moments_from_points(points)
        pooled = pooled_time_prior(moments)
        mean, cov = jax.device_get(posterior_mean_covariance(moments, NormalInverseWishartPrior(
            pooled.mean[None], pooled.covariance[None], strength)))
        pooled = jax.device_get(pooled)
    for t in range(2):
        n, n0 = 4, strength[t]
        delta = points[t].mean(0) - pooled.mean
        want = (n * np.cov(points[t].T, bias=True) + n0 * pooled.covariance
                + n * n0 / (n + n0) * np.outer(delta, delta)) / (n + n0)
        np.testing.assert_allclose(cov[t], want, rtol=1e-12)
    np.testing.assert_allclose(pooled.covariance, np.cov(points.reshape(8, 3).T, bias=True),
                               rtol=1e-12)


def test_transition_points_layout():
    s, a, s2 = np.ones((2, 3)), 2 * np.ones((2, 1)), 3 * np.ones((2, 3))
    np.testing.assert_array_equal(transition_points(s, a, s2)[0], [1, 1, 1, 2, 3, 3, 3])
