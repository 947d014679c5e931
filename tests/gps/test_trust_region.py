"""η dual search, non-PD handling and the KL step multiplier."""

import jax
import numpy as np
import pytest

from metaopt.gps import (
    BadmmDuals,
    LinearGaussianController,
    controller_kl,
    estimated_cost,
    eta_search,
    float64,
    forward_marginals,
    kl_budget,
    solve_with_pd_fallback,
    tied_coordinate_cost,
    update_step_multiplier,
)
from metaopt.gps.cost import add_costs

from .helpers import random_controller, random_cost, random_dynamics, sample_trajectories

GROUPS, HORIZON, STATE_DIM, ACTION_DIM = 3, 6, 4, 1


def problem(seed, groups=GROUPS):
    rng = np.random.default_rng(seed)
    batch = (groups,)
    dynamics = random_dynamics(rng, HORIZON, STATE_DIM, ACTION_DIM, batch)
    cost = random_cost(rng, HORIZON, STATE_DIM + ACTION_DIM, batch)
    previous = random_controller(rng, HORIZON, STATE_DIM, ACTION_DIM, batch)
    policy = random_controller(rng, HORIZON, STATE_DIM, ACTION_DIM, batch)
    duals = BadmmDuals(0.1 * rng.normal(size=(*batch, HORIZON, ACTION_DIM)),
                       np.full((*batch, HORIZON), 0.01))
    return rng, dynamics, cost, previous, policy, duals


@pytest.fixture(scope="module")
def search():
    with float64():
        return jax.jit(eta_search, static_argnames=("max_iterations",))


def test_eta_search_meets_kl_budget_for_every_group(search):
    _, dynamics, cost, previous, policy, duals = problem(0)
    budget = kl_budget(1.0, HORIZON)
    with float64():
        result = jax.device_get(search(cost, dynamics, previous, budget, 1.0, policy, duals))
    total = result.kl.sum(-1)
    assert result.met_budget.all() and not result.failed.any()
    assert np.all(np.abs(total - budget) <= 0.1 * budget), total
    assert np.all(result.iterations <= 50)
    assert np.all(np.isfinite(result.controller.gain))


def test_eta_search_is_the_per_group_search_vmapped(search):
    _, dynamics, cost, previous, policy, duals = problem(1)
    with float64():
        batched = jax.device_get(search(cost, dynamics, previous, 1.2, 0.5, policy, duals))
        one = jax.tree.map(lambda x: x[1:2], (cost, dynamics, previous, policy, duals))
        single = jax.device_get(search(one[0], one[1], one[2], 1.2, 0.5, one[3], one[4]))
    np.testing.assert_allclose(batched.eta[1], single.eta[0], rtol=1e-12)
    np.testing.assert_allclose(batched.controller.gain[1], single.controller.gain[0], rtol=1e-10)


def test_sequential_groups_and_condition_axes_match_vmap():
    rng = np.random.default_rng(8)
    batch = (2, 2)                                     # (conditions, groups)
    dynamics = random_dynamics(rng, HORIZON, STATE_DIM, ACTION_DIM, batch)
    cost = random_cost(rng, HORIZON, STATE_DIM + ACTION_DIM, batch)
    previous = random_controller(rng, HORIZON, STATE_DIM, ACTION_DIM, batch)
    with float64():
        search = jax.jit(eta_search, static_argnames=("sequential",))
        batched = jax.device_get(search(cost, dynamics, previous, 1.0, 1.0))
        sequential = jax.device_get(search(cost, dynamics, previous, 1.0, 1.0, sequential=True))
    assert batched.eta.shape == batch and batched.met_budget.all()
    for got, want in zip(jax.tree.leaves(sequential), jax.tree.leaves(batched), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_float32_outside_the_float64_context():
    _, dynamics, cost, previous, policy, duals = problem(9)
    result = jax.jit(eta_search)(cost, dynamics, previous, 1.0, 1.0, policy, duals)
    assert result.controller.gain.dtype == np.float32
    assert np.all(np.isfinite(result.controller.gain)) and bool(result.satisfied.all())


def test_kl_of_the_solution_matches_monte_carlo(search):
    rng, dynamics, cost, previous, policy, duals = problem(2, groups=1)
    with float64():
        result = jax.device_get(search(cost, dynamics, previous, 1.0, 1.0, policy, duals))
    new = jax.tree.map(lambda x: x[0], result.controller)
    old = jax.tree.map(lambda x: x[0], previous)
    states, actions = sample_trajectories(rng, new, jax.tree.map(lambda x: x[0], dynamics),
                                          50_000)
    log_ratio = 0.0
    for c, sign in ((new, 1), (old, -1)):
        residual = actions - np.einsum("tus,nts->ntu", c.gain, states) - c.bias
        precision = np.linalg.inv(c.covariance)
        log_ratio = log_ratio + sign * (
            -0.5 * np.einsum("ntu,tuv,ntv->nt", residual, precision, residual)
            - 0.5 * np.linalg.slogdet(c.covariance)[1])
    total = log_ratio.sum(1)
    assert abs(total.mean() - result.kl[0].sum()) < 5 * total.std() / np.sqrt(len(total))


def test_eta_search_says_when_budget_cannot_be_met(search):
    _, dynamics, cost, previous, policy, duals = problem(3)
    with float64():
        loose = jax.device_get(search(cost, dynamics, previous, 1e6, 1.0, policy, duals))
        capped = jax.device_get(search(cost, dynamics, previous, 1.0, 1e3, policy, duals,
                                       max_iterations=2))
    # A budget no controller uses up: η sinks to its lower bound, the constraint is inactive.
    assert not loose.met_budget.any() and loose.satisfied.all()
    np.testing.assert_allclose(loose.eta, 1e-4)
    assert np.all(loose.iterations < 50)
    # Too few tries from a bad start: reported, not hidden.
    assert not capped.met_budget.any() and np.all(capped.iterations == 2)


def test_non_pd_cost_raises_eta_inside_jit_without_nans(search):
    rng, dynamics, _, previous, policy, duals = problem(4)
    curvature = -np.abs(rng.normal(size=(GROUPS, HORIZON))) * 50      # concave in the action
    cost = tied_coordinate_cost(curvature, STATE_DIM, ACTION_DIM)
    with float64():
        result = jax.device_get(search(cost, dynamics, previous, 1.0, 1e-4, policy, duals))
    assert not result.failed.any()
    for leaf in jax.tree.leaves(result):
        assert np.all(np.isfinite(leaf))
    assert np.all(result.eta > 1e-4)


def test_pd_fallback_uses_the_doubling_increments():
    # One step, dU = 1, ψ_prev variance 1: Q_uu ∝ c_uu + η, so c_uu = −0.01 needs η > 0.01.
    previous = LinearGaussianController(np.zeros((1, 1, 1)), np.zeros((1, 1)), np.ones((1, 1, 1)))
    cost = random_cost(np.random.default_rng(5), 1, 2)
    hessian = cost.hessian.copy()
    hessian[0, 1, 1] = -0.01
    hessian[0, 0, 1] = hessian[0, 1, 0] = 0.0
    dynamics = random_dynamics(np.random.default_rng(6), 1, 1, 1)
    with float64():
        result, eta = jax.device_get(jax.jit(solve_with_pd_fallback)(
            cost._replace(hessian=hessian), dynamics, previous, 1e-4))
    # Tries 1e-4 + 1e-4·2^k for k = 0, 1, …: the first above 0.01 is k = 7.
    np.testing.assert_allclose(eta, 1e-4 + 1e-4 * 2**7)
    assert not result.failed


def test_step_multiplier_update():
    # predicted 1, actual 0.5: change = 1 / (2·0.5) = 1.
    np.testing.assert_allclose(update_step_multiplier(2.0, 1.0, 0.5), 2.0)
    # Actual matches prediction: change clipped at 5; the product clipped at 10.
    np.testing.assert_allclose(update_step_multiplier(1.0, 1.0, 1.0), 5.0)
    np.testing.assert_allclose(update_step_multiplier(3.0, 1.0, 1.0), 10.0)
    # Worse than predicted: change clipped at 0.1; the product clipped at 0.01.
    np.testing.assert_allclose(update_step_multiplier(1.0, 0.1, -10.0), 0.1)
    np.testing.assert_allclose(update_step_multiplier(0.05, 0.1, -10.0), 0.01)
    np.testing.assert_allclose(update_step_multiplier(np.array([1.0, 1.0]), np.array([1.0, 0.1]),
                                                      np.array([0.5, -10.0])), [1.0, 0.1])


def test_estimated_cost_is_expected_cost_plus_weighted_policy_kl():
    _, dynamics, cost, previous, policy, duals = problem(7, groups=1)
    with float64():
        base = estimated_cost(cost, previous, dynamics)
        with_kl = estimated_cost(cost, previous, dynamics, policy, duals.penalty)
        marginals = forward_marginals(previous, dynamics)
        kl = controller_kl(previous, policy, marginals)
        doubled = estimated_cost(add_costs((2.0, cost)), previous, dynamics)
        base, with_kl, kl, doubled = jax.device_get((base, with_kl, kl, doubled))
    np.testing.assert_allclose(with_kl - base, (duals.penalty * kl).sum(-1), rtol=1e-10)
    np.testing.assert_allclose(doubled, 2 * base, rtol=1e-12)
