"""Every regulariser in the units of what it acts on: rescaling the problem changes nothing.

The GPS states here have variances of 1e-6–1e-4; an absolute 1e-3 ridge crushed the fitted
dynamics (a coefficient that is exactly 1 came out 0.02). These tests rescale a known system by
1e-4 and 1e4 and ask for the same fit, the same controller and the same step-multiplier rule.
"""

import jax
import numpy as np
import pytest

from metaopt.gps import (
    LinearGaussianController,
    QuadraticCost,
    eta_search,
    fit_dynamics,
    float64,
    moments_from_points,
    update_step_multiplier,
)

from .test_dynamics import simulate_points

SCALES = [1e-4, 1.0, 1e4]
STATE_DIM, ACTION_DIM, HORIZON = 3, 1, 4
COPY = 1          # s'[COPY] = a exactly, like the a(t−1) slot of the GPS state


def _points(scale):
    points, _ = simulate_points(np.random.default_rng(0), 400, HORIZON, STATE_DIM, ACTION_DIM)
    points = np.array(points)
    points[..., STATE_DIM + ACTION_DIM + COPY] = points[..., STATE_DIM]
    return scale * points


def _fit(scale):
    points = np.moveaxis(_points(scale), 0, 1)                       # (T, n, D)
    with float64():
        moments = moments_from_points(points)
        return jax.device_get(jax.jit(lambda m: fit_dynamics(m, STATE_DIM))(moments))


@pytest.mark.parametrize("scale", SCALES)
def test_fitted_dynamics_do_not_depend_on_the_units(scale):
    reference, fitted = _fit(1.0), _fit(scale)
    # The known coefficient survives the default (relative) ridge at every scale.
    np.testing.assert_allclose(fitted.action_matrix[:, COPY, 0], 1.0, atol=5e-3)
    np.testing.assert_allclose(fitted.state_matrix, reference.state_matrix, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(fitted.action_matrix, reference.action_matrix, rtol=1e-6)
    np.testing.assert_allclose(fitted.offset, scale * reference.offset, rtol=1e-6, atol=1e-12 * scale)
    np.testing.assert_allclose(fitted.covariance, scale**2 * reference.covariance, rtol=1e-5,
                               atol=1e-12 * scale**2)


def _cost_and_previous(scale):
    rng = np.random.default_rng(1)
    dim = STATE_DIM + ACTION_DIM
    root = rng.normal(size=(HORIZON, dim, dim))
    hessian = root @ np.swapaxes(root, -1, -2) / dim + 0.5 * np.eye(dim)
    cost = QuadraticCost(hessian / scale**2, rng.normal(size=(HORIZON, dim)) / scale,
                         np.zeros(HORIZON))
    previous = LinearGaussianController(
        gain=0.1 * rng.normal(size=(HORIZON, ACTION_DIM, STATE_DIM)),
        bias=scale * 0.1 * rng.normal(size=(HORIZON, ACTION_DIM)),
        covariance=scale**2 * np.full((HORIZON, ACTION_DIM, ACTION_DIM), 0.5))
    return cost, previous


@pytest.mark.parametrize("scale", SCALES)
def test_kl_constrained_controller_does_not_depend_on_the_units(scale):
    """States, actions and noise × c, the cost in the same units (z → z/c): same ψ, same η."""
    results = []
    for c in (1.0, scale):
        dynamics = _fit(c)
        cost, previous = _cost_and_previous(c)
        with float64():
            results.append(jax.device_get(jax.jit(
                lambda *a: eta_search(*a, eta_init=1.0))(cost, dynamics, previous, 2.0)))
    reference, scaled = results
    assert not reference.failed and not scaled.failed
    np.testing.assert_allclose(scaled.eta, reference.eta, rtol=1e-5)
    np.testing.assert_allclose(scaled.kl, reference.kl, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(scaled.controller.gain, reference.controller.gain, rtol=1e-5,
                               atol=1e-9)
    np.testing.assert_allclose(scaled.controller.bias, scale * reference.controller.bias,
                               rtol=1e-5, atol=1e-9 * scale)


def test_step_multiplier_rule_when_the_c_step_changed_nothing():
    """predicted = actual = 0 (no step kept): the most a multiplier shrinks, never NaN."""
    np.testing.assert_allclose(update_step_multiplier(1.0, 0.0, 0.0), 0.1)
    np.testing.assert_allclose(update_step_multiplier(np.float32(1.0), np.float32(0.0),
                                                      np.float32(0.0)), 0.1)


@pytest.mark.parametrize("scale", [1e-8, 1e-4, 1.0, 1e4])
def test_step_multiplier_rule_does_not_depend_on_the_objective_scale(scale):
    for predicted, actual in [(1.0, 0.5), (1.0, 1.0), (1.0, 0.99999), (1.0, -3.0), (-1.0, 0.2)]:
        np.testing.assert_allclose(
            update_step_multiplier(1.0, scale * predicted, scale * actual),
            update_step_multiplier(1.0, predicted, actual), rtol=1e-6)
