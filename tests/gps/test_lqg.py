"""Backward pass vs the dense KKT brute force; forward marginals and KL vs Monte Carlo."""

import jax
import numpy as np
import pytest

from metaopt.gps import (
    backward_pass,
    controller_kl,
    float64,
    forward_marginals,
    trajectory_kl,
)

from .helpers import (
    gaussian_log_density,
    random_controller,
    random_cost,
    random_dynamics,
    sample_trajectories,
    tail_problem_solution,
)


def relative_error(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    return np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-300)


@pytest.mark.parametrize("state_dim,action_dim,horizon,seed", [(3, 1, 6, 0), (4, 2, 5, 1),
                                                               (2, 3, 7, 2)])
def test_backward_pass_matches_kkt_brute_force(state_dim, action_dim, horizon, seed):
    rng = np.random.default_rng(seed)
    dim = state_dim + action_dim
    dynamics = random_dynamics(rng, horizon, state_dim, action_dim)
    cost = random_cost(rng, horizon, dim)
    temperature = rng.uniform(0.5, 3.0, size=horizon)
    with float64():
        # device_get inside the context: JAX ops outside it would truncate to float32.
        result = jax.device_get(jax.jit(backward_pass)(cost, dynamics, temperature))
    assert result.controller.gain.dtype == np.float64
    assert not bool(result.failed)
    for t in range(horizon):
        gain, offset, value_hessian, value_gradient = tail_problem_solution(
            cost, dynamics, t, state_dim)
        # Free variables start with a_t: the first dU rows are the optimal first action.
        assert relative_error(result.controller.gain[t], gain[:action_dim]) < 1e-8
        assert relative_error(result.controller.bias[t], offset[:action_dim]) < 1e-8
        assert relative_error(result.value_hessian[t] * temperature[t], value_hessian) < 1e-8
        assert relative_error(result.value_gradient[t] * temperature[t], value_gradient) < 1e-8
        # Q_uu = Hessian of the optimal tail cost in a_t at fixed s_t; G_t = α_t Q_uu⁻¹.
        _, _, q_hessian, _ = tail_problem_solution(cost, dynamics, t, dim)
        expected_cov = temperature[t] * np.linalg.inv(q_hessian[state_dim:, state_dim:])
        assert relative_error(result.controller.covariance[t], expected_cov) < 1e-8


def test_backward_pass_reports_non_pd_without_raising():
    rng = np.random.default_rng(3)
    dynamics = random_dynamics(rng, 4, 2, 1)
    cost = random_cost(rng, 4, 3)
    hessian = cost.hessian.copy()
    hessian[2, 2:, 2:] = -5.0
    with float64():
        result = jax.jit(backward_pass)(cost._replace(hessian=hessian), dynamics)
    assert bool(result.failed)


def test_forward_marginals_and_kl_match_monte_carlo():
    rng = np.random.default_rng(4)
    state_dim, action_dim, horizon, count = 3, 2, 5, 200_000
    dynamics = random_dynamics(rng, horizon, state_dim, action_dim)
    new = random_controller(rng, horizon, state_dim, action_dim)
    old = random_controller(rng, horizon, state_dim, action_dim)
    with float64():
        marginals = jax.jit(forward_marginals)(new, dynamics)
        kl = jax.device_get(jax.jit(controller_kl)(new, old, marginals))
        marginals = jax.device_get(marginals)
    states, actions = sample_trajectories(rng, new, dynamics, count)
    z = np.concatenate([states, actions], -1)
    mean, cov = np.asarray(marginals.mean), np.asarray(marginals.covariance)
    for t in range(horizon):
        mc_mean = z[:, t].mean(0)
        mean_se = np.sqrt(np.diag(cov[t]) / count)
        assert np.all(np.abs(mc_mean - mean[t]) < 5 * mean_se)
        mc_cov = np.cov(z[:, t].T, bias=True)
        var = np.diag(cov[t])
        cov_se = np.sqrt((np.outer(var, var) + cov[t] ** 2) / count)
        assert np.all(np.abs(mc_cov - cov[t]) < 5 * cov_se)
        log_ratio = (gaussian_log_density(actions[:, t], states[:, t] @ new.gain[t].T
                                          + new.bias[t], new.covariance[t])
                     - gaussian_log_density(actions[:, t], states[:, t] @ old.gain[t].T
                                            + old.bias[t], old.covariance[t]))
        se = log_ratio.std() / np.sqrt(count)
        assert abs(log_ratio.mean() - float(kl[t])) < 5 * se, (t, log_ratio.mean(), kl[t], se)


def test_kl_of_identical_controllers_is_zero():
    rng = np.random.default_rng(5)
    dynamics = random_dynamics(rng, 4, 3, 1)
    controller = random_controller(rng, 4, 3, 1)
    with float64():
        kl = jax.device_get(
            controller_kl(controller, controller, forward_marginals(controller, dynamics)))
    np.testing.assert_allclose(kl, 0.0, atol=1e-12)


def test_lqg_functions_broadcast_over_leading_group_axes():
    rng = np.random.default_rng(6)
    batch, horizon, state_dim, action_dim = (2, 3), 4, 3, 1
    dynamics = random_dynamics(rng, horizon, state_dim, action_dim, batch)
    cost = random_cost(rng, horizon, state_dim + action_dim, batch)
    old = random_controller(rng, horizon, state_dim, action_dim, batch)
    with float64():
        batched = backward_pass(cost, dynamics)
        marginals = forward_marginals(batched.controller, dynamics)
        kl = controller_kl(batched.controller, old, marginals)
        assert kl.shape == (*batch, horizon)
        # The fused forward + KL scan and the pass without the value function agree.
        np.testing.assert_allclose(jax.device_get(trajectory_kl(batched.controller, old, dynamics)),
                                   jax.device_get(kl), rtol=1e-12, atol=1e-14)
        lean = backward_pass(cost, dynamics, value_function=False)
        assert lean.value_hessian is None and lean.value_gradient is None
        np.testing.assert_array_equal(jax.device_get(lean.controller.gain),
                                      jax.device_get(batched.controller.gain))
        one = jax.tree.map(lambda x: x[1, 2], (cost, dynamics, old))
        single = backward_pass(one[0], one[1])
        single_kl = controller_kl(single.controller, one[2],
                                  forward_marginals(single.controller, one[1]))
        batched, kl, single, single_kl = jax.device_get((batched, kl, single, single_kl))
    for got, want in zip(jax.tree.leaves(batched.controller), jax.tree.leaves(single.controller),
                         strict=True):
        np.testing.assert_allclose(got[1, 2], want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(kl[1, 2], single_kl, rtol=1e-10, atol=1e-12)
