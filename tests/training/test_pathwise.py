"""The pathwise C-step: exact objective of the samples, its gradient, the natural-gradient step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy_tasks import QuadraticTask

from metaopt.controller import momentum_controller
from metaopt.gps import float64
from metaopt.training import pathwise
from metaopt.training.gps_loop import condition_key, group_sizes
from metaopt.training.model import model_state_dim


def _problem(seed, groups=2, horizon=5, dim=4):
    rng = np.random.default_rng(seed)
    root = rng.normal(size=(groups, horizon, dim, dim))
    second = root @ np.swapaxes(root, -1, -2) / dim + 0.1 * np.eye(dim)
    b = rng.normal(size=(groups, horizon, dim))
    variance = rng.uniform(0.5, 2.0, size=(groups, horizon))
    return b, second, variance


def test_natural_step_meets_the_budget_and_solves_the_trust_region_problem():
    b, second, variance = _problem(0)
    budget = np.array([0.3, 2.0])
    with float64():
        step = jax.device_get(pathwise.natural_step(b, second, variance, budget, ridge=0.0))
    np.testing.assert_allclose(step.kl.sum(-1), budget, rtol=1e-6)
    # KKT: b + (η/G)·M δ = 0 at every (g, t), one η per group.
    residual = b + (step.eta[:, None, None] / variance[..., None]) * np.einsum(
        "gtpq,gtq->gtp", second, step.delta)
    np.testing.assert_allclose(residual, 0.0, atol=1e-10)
    kl = 0.5 * np.einsum("gtp,gtpq,gtq->gt", step.delta, second, step.delta) / variance
    np.testing.assert_allclose(step.kl, kl, rtol=1e-10)


def test_natural_step_per_step_cap_and_coupling():
    b, second, variance = _problem(1)
    b[:, 0] *= 30.0                                    # one step wants far more than the rest
    budget, cap = np.array([2.0, 2.0]), 0.5         # 5 steps × cap 2.5 ≥ budget
    with float64():
        capped = jax.device_get(pathwise.natural_step(b, second, variance, budget, step_cap=cap,
                                                      ridge=0.0))
        coupled = jax.device_get(pathwise.natural_step(
            b, second, variance, budget, coupling=np.full(variance.shape, 1e3)))
    assert np.all(capped.kl <= cap * (1 + 1e-6))
    np.testing.assert_allclose(capped.kl[:, 0], cap, rtol=1e-5)      # the big step is capped
    np.testing.assert_allclose(capped.kl.sum(-1), budget, rtol=1e-5)
    # A strong coupling term caps the move by itself: the budget is not spent.
    assert np.all(coupled.kl.sum(-1) < budget)


@pytest.mark.parametrize("scale", [1e-4, 1e4])
def test_natural_step_does_not_depend_on_the_units_of_a_state_entry(scale):
    """Entry 1 of s in other units: M's row/column × c, ∂J/∂θ₁ × c; then δ₁ / c and the same KL."""
    b, second, variance = _problem(2)
    units = np.ones(b.shape[-1])
    units[1] = scale
    budget = np.array([1.0, 1.0])
    with float64():
        ref = jax.device_get(pathwise.natural_step(b, second, variance, budget, step_cap=0.3))
        scaled = jax.device_get(pathwise.natural_step(
            b * units, second * units[:, None] * units[None, :], variance, budget, step_cap=0.3))
    np.testing.assert_allclose(scaled.kl, ref.kl, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(scaled.delta * units, ref.delta, rtol=1e-5, atol=1e-10)


@pytest.fixture(scope="module")
def sampled(tiny_rollout):
    config, task, state, tracked, data = tiny_rollout
    init_key = jax.random.split(condition_key(config))[0]
    keys = jax.random.split(jax.random.key(7), config.num_samples)     # the fixture's sample key
    return config, task, state, data, init_key, keys


def test_sampled_objective_reproduces_the_rollout(sampled):
    config, task, state, data, init_key, keys = sampled
    value = pathwise.sampled_objective(task, state.controller, init_key, keys)
    np.testing.assert_allclose(float(value), float(np.mean(data.true_objective)), rtol=1e-5)
    privileged = pathwise.sampled_objective(task, state.controller, init_key, keys,
                                            privileged=True)
    np.testing.assert_allclose(float(privileged), float(value), rtol=1e-6)


def test_sampled_objective_gradient_matches_finite_differences():
    """On a smooth noisy quadratic (an MLP's unroll is too kinked for finite differences)."""
    task = QuadraticTask(curvature=jnp.linspace(0.5, 2.0, 6), noise=0.1)
    controller = momentum_controller(learning_rate=0.1, momentum=0.5, horizon=10, variance=1e-4,
                                     num_groups=1)
    init_key, keys = jax.random.key(0), jax.random.split(jax.random.key(1), 3)
    _, grad = pathwise.sampled_objective_and_grad(task, controller, init_key, keys)
    norm = jnp.sqrt(jnp.sum(jnp.square(grad.gain)) + jnp.sum(jnp.square(grad.bias)))
    direction = grad._replace(gain=grad.gain / norm, bias=grad.bias / norm,
                              covariance=jnp.zeros_like(grad.covariance))
    h = 1e-3
    plus, minus = (float(pathwise.sampled_objective(
        task, jax.tree.map(lambda c, d, s=s: c + s * h * d, controller, direction), init_key, keys))
        for s in (1.0, -1.0))
    np.testing.assert_allclose((plus - minus) / (2 * h), float(norm), rtol=1e-3)


def test_pathwise_c_step_lowers_the_samples_objective_within_the_budget(sampled):
    config, task, state, data, init_key, keys = sampled
    dim = model_state_dim(config)
    budget = np.full(4, 2.0)
    result = pathwise.pathwise_c_step(task, state.controller, data.moments, init_key, keys,
                                      group_sizes(task), budget, state_index=dim, num_steps=2)
    assert result.steps_accepted >= 1
    assert result.objective_after < result.objective_before
    np.testing.assert_allclose(result.predicted_improvement,
                               result.objective_before - result.objective_after)
    assert np.all(result.kl.sum(-1) <= budget * (1 + 1e-6))
    np.testing.assert_array_equal(result.controller.gain[..., dim:], 0.0)   # never reads g*
    after = pathwise.sampled_objective(task, result.controller, init_key, keys)
    np.testing.assert_allclose(float(after), result.objective_after, rtol=1e-5)


def test_pathwise_c_step_keeps_the_controller_when_every_step_is_worse(sampled):
    config, task, state, data, init_key, keys = sampled
    calls = []

    def uphill(controller):      # J rises whatever the step: nothing may be accepted
        calls.append(1)
        grad = jax.tree.map(jnp.ones_like, controller)
        return 1.0 + len(calls), grad

    result = pathwise.pathwise_c_step(task, state.controller, data.moments, init_key, keys,
                                      group_sizes(task), np.full(4, 1.0),
                                      state_index=model_state_dim(config), num_steps=3,
                                      objective_and_grad=uphill)
    assert result.steps_accepted == 0 and result.steps_tried == 3 and len(calls) == 4
    for new, old in zip(jax.tree.leaves(result.controller), jax.tree.leaves(state.controller),
                        strict=True):
        np.testing.assert_array_equal(new, old)
    assert result.predicted_improvement == 0.0


def test_pathwise_c_step_moves_only_the_entries_the_controller_reads(sampled):
    from metaopt import features

    config, task, state, data, init_key, keys = sampled
    index = [features.GRADIENT_INDEX, features.PREV_ACTION_INDEX]
    result = pathwise.pathwise_c_step(task, state.controller, data.moments, init_key, keys,
                                      group_sizes(task), np.full(4, 2.0), state_index=index,
                                      num_steps=1)
    assert result.steps_accepted == 1 and result.objective_after < result.objective_before
    changed = np.any(result.controller.gain != np.asarray(state.controller.gain), axis=(0, 1, 2))
    assert set(np.flatnonzero(changed)) <= set(index) and changed[features.GRADIENT_INDEX]


def test_a_rejected_coupled_step_is_retried_smaller(sampled):
    """With a policy coupling the step can stop short of the budget; a rejected one must then
    shrink (it used to be retried unchanged: every coupled C-step of a run kept nothing)."""
    from metaopt.gps import BadmmDuals

    config, task, state, data, init_key, keys = sampled
    dim = model_state_dim(config)
    ctrl = state.controller
    bias0, gain0 = np.asarray(ctrl.bias, np.float64), np.asarray(ctrl.gain, np.float64)
    duals = BadmmDuals(np.zeros(bias0.shape), np.full(bias0.shape[:2], 1e-3))
    distance = lambda c: float(np.sqrt(np.sum(np.square(np.asarray(c.bias) - bias0))
                                       + np.sum(np.square(np.asarray(c.gain) - gain0))))
    linear = lambda c: float(1.0 + np.sum(np.asarray(c.bias) - bias0)
                             + np.sum(np.asarray(c.gain) - gain0))      # ∇ = ones, exactly
    grad = jax.tree.map(lambda a: np.ones_like(np.asarray(a)), ctrl)
    accept_all = lambda c: (linear(c), grad)
    first = pathwise.pathwise_c_step(task, ctrl, data.moments, init_key, keys, group_sizes(task),
                                     np.full(4, 1e9), state_index=dim, linearization=ctrl,
                                     duals=duals, num_steps=1, objective_and_grad=accept_all)
    reach = distance(first.controller)
    assert first.steps_accepted == 1 and np.all(first.kl.sum(-1) < 1e-2 * 1e9)   # not the budget
    near_only = lambda c: (linear(c) if distance(c) < reach / 3 else 2.0, grad)
    result = pathwise.pathwise_c_step(task, ctrl, data.moments, init_key, keys, group_sizes(task),
                                      np.full(4, 1e9), state_index=dim, linearization=ctrl,
                                      duals=duals, num_steps=4, objective_and_grad=near_only)
    assert result.steps_accepted >= 1
    assert 0 < distance(result.controller) < reach / 3


def test_a_c_step_that_kept_nothing_shrinks_the_next_budget():
    """Without it a too-large multiplier was never corrected (nothing kept, nothing to judge)."""
    kept = pathwise.PathwiseResult(None, None, None, 1.0, 0.9, 0.1, 1, 3)
    none = pathwise.PathwiseResult(None, None, None, 1.0, 1.0, 0.0, 0, 3)
    np.testing.assert_array_equal(pathwise.multiplier_after(np.array([5.0, 2.0]), kept), [5, 2])
    np.testing.assert_allclose(pathwise.multiplier_after(np.array([5.0, 0.5]), none),
                               [5 / 64, 0.01])                     # 0.5/64 is below the floor
