"""The tied per-coordinate cost, the KL terms and the BADMM-augmented cost."""

import jax
import numpy as np
import pytest

from metaopt.gps import (
    BadmmDuals,
    augmented_cost,
    expected_cost,
    float64,
    horizon_weights,
    negative_log_likelihood_cost,
    tied_coordinate_cost,
)

from .helpers import gaussian_log_density, random_controller, random_cost, random_spd


def evaluate(cost, z, t):
    hessian, gradient, constant = (np.asarray(x)[t] for x in cost)
    return 0.5 * z @ hessian @ z + gradient @ z + constant


def test_tied_cost_is_weighted_gradient_step_plus_curvature():
    rng = np.random.default_rng(0)
    horizon, state_dim = 6, 5
    curvature = rng.uniform(-1, 2, size=(2, horizon))           # two groups
    cost = tied_coordinate_cost(curvature, state_dim)
    assert cost.hessian.shape == (2, horizon, state_dim + 1, state_dim + 1)
    weights = np.asarray(horizon_weights(horizon))
    np.testing.assert_array_equal(weights, np.arange(horizon, 0, -1))
    for g in range(2):
        for t in range(horizon):
            s, a = rng.normal(size=state_dim), rng.normal()
            want = weights[t] * (s[-1] * a + 0.5 * curvature[g, t] * a * a)
            got = evaluate(jax.tree.map(lambda x, g=g: x[g], cost), np.append(s, a), t)
            np.testing.assert_allclose(got, want, rtol=1e-6)


def test_tied_cost_with_gradient_model_uses_the_estimate():
    """With g* ≈ M s + m the cost is w_t·((M s + m)·a + ½ h a²) and still has no constant."""
    rng = np.random.default_rng(3)
    horizon, state_dim = 5, 4
    curvature = rng.uniform(0, 2, size=(2, horizon))
    coefficients = rng.normal(size=(2, horizon, 1, state_dim))
    offset = rng.normal(size=(2, horizon, 1))
    with float64():
        cost = jax.device_get(tied_coordinate_cost(curvature, state_dim,
                                                   gradient_model=(coefficients, offset)))
    weights = np.asarray(horizon_weights(horizon))
    for g in range(2):
        for t in range(horizon):
            s, a = rng.normal(size=state_dim), rng.normal()
            estimate = coefficients[g, t, 0] @ s + offset[g, t, 0]
            want = weights[t] * (estimate * a + 0.5 * curvature[g, t] * a * a)
            got = evaluate(jax.tree.map(lambda x, g=g: x[g], cost), np.append(s, a), t)
            np.testing.assert_allclose(got, want, rtol=1e-10)
    with pytest.raises(ValueError, match="gradient_model"):
        tied_coordinate_cost(curvature, state_dim + 1, gradient_model=(coefficients, offset))


def test_negative_log_likelihood_cost_matches_density():
    rng = np.random.default_rng(1)
    controller = random_controller(rng, 3, 4, 2)
    with float64():
        cost = jax.device_get(negative_log_likelihood_cost(controller))
    for t in range(3):
        s, a = rng.normal(size=4), rng.normal(size=2)
        mean = controller.gain[t] @ s + controller.bias[t]
        want = -gaussian_log_density(a[None], mean[None], controller.covariance[t])[0]
        np.testing.assert_allclose(evaluate(cost, np.concatenate([s, a]), t), want, rtol=1e-12)


def test_augmented_cost_adds_dual_and_kl_terms():
    rng = np.random.default_rng(2)
    horizon, state_dim, action_dim = 4, 3, 2
    base = random_cost(rng, horizon, state_dim + action_dim)
    previous = random_controller(rng, horizon, state_dim, action_dim)
    policy = random_controller(rng, horizon, state_dim, action_dim)
    duals = BadmmDuals(rng.normal(size=(horizon, action_dim)), rng.uniform(0.1, 1, size=horizon))
    eta = 0.7
    with float64():
        cost, temperature = jax.device_get(augmented_cost(base, previous, eta, policy, duals))
    np.testing.assert_allclose(temperature, eta + duals.penalty)
    for t in range(horizon):
        s, a = rng.normal(size=state_dim), rng.normal(size=action_dim)
        z = np.concatenate([s, a])

        def nll(c, s=s, a=a, t=t):
            mean = c.gain[t] @ s + c.bias[t]
            return -gaussian_log_density(a[None], mean[None], c.covariance[t])[0]

        want = (evaluate(base, z, t) - duals.multiplier[t] @ a + eta * nll(previous)
                + duals.penalty[t] * nll(policy))
        np.testing.assert_allclose(evaluate(cost, z, t), want, rtol=1e-10)


def test_expected_cost_matches_monte_carlo():
    rng = np.random.default_rng(3)
    cost = random_cost(rng, 2, 3)
    mean, cov = rng.normal(size=(2, 3)), random_spd(rng, (2,), 3)
    with float64():
        expected = jax.device_get(expected_cost(cost, mean, cov))
    for t in range(2):
        z = rng.multivariate_normal(mean[t], cov[t], size=200_000)
        values = (0.5 * np.einsum("ni,ij,nj->n", z, cost.hessian[t], z) + z @ cost.gradient[t]
                  + cost.constant[t])
        assert abs(values.mean() - expected[t]) < 5 * values.std() / np.sqrt(len(z))
