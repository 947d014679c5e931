import jax
import jax.numpy as jnp
import numpy as np

from metaopt.gps.moments import moments_from_points
from metaopt.training.curvature import group_rayleigh_terms, pooled_curvature
from metaopt.training.gps_loop import condition_key


def test_rayleigh_terms_match_dense_hessian():
    rng = np.random.default_rng(0)
    root = rng.normal(size=(5, 5))
    hessian = root @ root.T
    params = {"a": jnp.asarray(rng.normal(size=2)), "b": jnp.asarray(rng.normal(size=3))}
    actions = {"a": jnp.asarray(rng.normal(size=2)), "b": jnp.asarray(rng.normal(size=3))}

    def loss(p):
        x = jnp.concatenate([p["a"], p["b"]])
        return 0.5 * x @ hessian @ x + jnp.sum(jnp.sin(x)) * 0.0

    numerator, denominator = group_rayleigh_terms(loss, params, actions)
    a, b = np.asarray(actions["a"]), np.asarray(actions["b"])
    np.testing.assert_allclose(numerator, [a @ hessian[:2, :2] @ a, b @ hessian[2:, 2:] @ b],
                               rtol=1e-4)
    np.testing.assert_allclose(denominator, [a @ a, b @ b], rtol=1e-6)
    pooled = pooled_curvature(jnp.stack([numerator, -10 * denominator]),
                              jnp.stack([denominator, denominator]))
    assert np.all(np.asarray(pooled) == 0.0)   # negative pooled curvature is clipped


def test_rollout_shapes_and_objective(tiny_rollout):
    config, task, state, tracked, data = tiny_rollout
    n, t, k = config.num_samples, config.horizon, config.num_tracked
    groups = len(tracked.index)
    assert data.observations.shape == (n, groups, k, t, 3)
    assert data.states.shape == (n, groups, k, t, 79)
    assert data.true_objective.shape == (n, t + 1)
    x0 = task.init_params(jax.random.split(condition_key(config))[0])
    np.testing.assert_allclose(data.true_objective[:, 0], task.true_loss(x0), rtol=1e-6)
    assert np.all(np.isfinite(data.curvature)) and np.all(data.curvature >= 0)
    assert np.all(data.curvature > 0)        # every group moved, along positive curvature
    # the objective goes down under momentum SGD
    assert data.true_objective[:, -1].mean() < 0.5 * data.true_objective[:, 0].mean()


def test_rollout_moments_equal_moments_of_stored_trajectories(tiny_rollout):
    """Groups no larger than K are tracked whole: their moments are recomputable from storage."""
    config, task, state, tracked, data = tiny_rollout
    sizes = [leaf.size for leaf in jax.tree.leaves(task.init_params(jax.random.key(0)))]
    np.testing.assert_array_equal(
        data.moments.count, np.repeat(np.asarray(sizes, np.float32)[:, None] * config.num_samples,
                                      config.horizon, axis=1))
    whole = [g for g, size in enumerate(sizes) if size <= config.num_tracked]
    assert whole, "the tiny preset must have a group that is tracked whole"
    for g in whole:
        size = sizes[g]
        np.testing.assert_array_equal(np.sort(tracked.index[g][:size]), np.arange(size))
        states = data.states[:, g, :size]                     # (N, n_g, T, dX)
        actions = data.actions[:, g, :size, :, None]
        points = np.concatenate([states[:, :, :-1], actions[:, :, :-1], states[:, :, 1:]], -1)
        points = np.moveaxis(points, 2, 0).reshape(config.horizon - 1, -1, points.shape[-1])
        expected = moments_from_points(jnp.asarray(points))
        np.testing.assert_allclose(data.moments.first[g, :-1], expected.first,
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(data.moments.second[g, :-1], expected.second,
                                   rtol=1e-4, atol=1e-5)
        # the stored actions are the actions that moved the stored states' a(t−1) entry
        np.testing.assert_allclose(states[:, :, 1:, 77], data.actions[:, g, :size, :-1],
                                   rtol=1e-6)


def test_curvature_calibration_recovers_the_scale_of_realised_changes():
    """Δf_t = Σ g*·a + κ*·Σ ½ h‖a‖² exactly (κ* = 2.5): κ_t = 2.5 everywhere, h scaled by it; and
    on the tiny rollout the calibrated cost reproduces the samples' total objective change."""
    from metaopt.training.curvature import calibrate_to_realized_change

    rng = np.random.default_rng(0)
    groups, horizon, samples = 3, 30, 4
    curvature = rng.uniform(0.1, 1.0, (groups, horizon))
    gradient_action = -rng.uniform(0.5, 1.0, (groups, horizon))
    action_square = rng.uniform(0.5, 1.0, (groups, horizon))
    total = gradient_action.sum(0) + 2.5 * 0.5 * (curvature * action_square).sum(0)
    steps = rng.dirichlet(np.ones(samples), horizon).T * total          # split over samples
    objective = np.concatenate([np.zeros((samples, 1)), np.cumsum(steps, 1)], 1) + 3.0
    scaled, kappa = calibrate_to_realized_change(curvature, objective, gradient_action,
                                                 action_square)
    np.testing.assert_allclose(kappa, 2.5, rtol=1e-5)
    np.testing.assert_allclose(scaled, 2.5 * curvature, rtol=1e-5)
    # κ is clipped: a decrease larger than the linear term alone predicts (it would need κ < 0)
    # gets the lower bound, not a negative curvature.
    faster = np.cumsum(np.broadcast_to(3.0 * gradient_action.sum(0) / samples, steps.shape), 1)
    faster = np.concatenate([np.zeros((samples, 1)), faster], 1) + 3.0
    _, kappa = calibrate_to_realized_change(curvature, faster, gradient_action, action_square)
    np.testing.assert_allclose(kappa, 0.1, rtol=1e-6)
