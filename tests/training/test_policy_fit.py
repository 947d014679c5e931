import jax
import jax.numpy as jnp
import numpy as np

from metaopt.gps import BadmmDuals, float64
from metaopt.training import policy_fit
from metaopt.training.gps_loop import s_step_optimizer


def test_linearization_recovers_a_linear_policy():
    rng = np.random.default_rng(0)
    n, g, k, t, dx = 3, 2, 10, 4, 5
    states = rng.normal(size=(n, g, k, t, dx))
    gain = rng.normal(size=(g, dx))
    bias = rng.normal(size=(g,))
    means = np.einsum("ngktx,gx->ngkt", states, gain) + bias[None, :, None, None]
    mask = np.ones((g, k))
    mask[1, 7:] = 0.0
    means[:, 1, 7:] = 1e3      # padded coordinates must be ignored
    with float64():
        lin = jax.device_get(policy_fit.fit_policy_linearization(
            states, means, mask, policy_variance=np.array([0.5, 0.25]), prior_strength=1e-6,
            ridge=1e-9))
    np.testing.assert_allclose(lin.gain[..., 0, :], np.broadcast_to(gain[:, None], (g, t, dx)),
                               atol=1e-4)
    np.testing.assert_allclose(lin.bias[..., 0], np.broadcast_to(bias[:, None], (g, t)),
                               atol=1e-4)
    np.testing.assert_allclose(lin.covariance[..., 0, 0],
                               np.broadcast_to([[0.5], [0.25]], (g, t)), atol=1e-4)


def test_s_step_data_targets_and_weights(tiny_rollout):
    config, task, state, tracked, data = tiny_rollout
    groups = len(tracked.index)
    penalty = np.full((groups, config.horizon), 0.01, np.float32)
    penalty[0, :5] = 1.0                                  # 100× the others: clipped at 2
    multiplier = np.full((groups, config.horizon, 1), 1e-4, np.float32)
    s_data = policy_fit.s_step_data(data.observations, data.states, jnp.asarray(tracked.mask),
                                    state.controller, BadmmDuals(multiplier, penalty))
    weights = np.asarray(s_data.weights).reshape(config.num_samples, groups, -1, config.horizon)
    assert weights.max() == 2.0
    np.testing.assert_allclose(weights[:, 1:], np.where(tracked.mask[1:, :, None] > 0, 1.0, 0.0)
                               [None].repeat(config.num_samples, 0).repeat(config.horizon, -1))
    mean = np.asarray(policy_fit.controller_means(state.controller, data.states))
    shift = config.exploration_variance * 1e-4 / penalty
    np.testing.assert_allclose(np.asarray(s_data.targets).reshape(mean.shape),
                               mean - shift[None, :, None, :], rtol=1e-5, atol=1e-9)


def test_s_step_reduces_its_loss(tiny_rollout):
    config, task, state, tracked, data = tiny_rollout
    duals = BadmmDuals(np.zeros_like(state.duals.multiplier),
                       np.full_like(state.duals.penalty, 0.01))
    s_data = policy_fit.s_step_data(data.observations, data.states, jnp.asarray(tracked.mask),
                                    state.controller, duals)
    before = float(policy_fit.s_step_loss(state.theta, s_data))
    optimizer = s_step_optimizer(config)
    theta, opt_state, losses = policy_fit.s_step(
        state.theta, optimizer.init(state.theta), s_data, jax.random.key(0),
        optimizer=optimizer, num_steps=config.s_step_iterations,
        batch_size=config.s_step_batch_size)
    after = float(policy_fit.s_step_loss(theta, s_data))
    assert np.all(np.isfinite(np.asarray(losses)))
    assert after < 0.7 * before, (before, after)
    # the S-step moved π's means towards the targets on the stored sequences
    means = np.asarray(policy_fit.policy_means(theta, s_data.observations))
    means0 = np.asarray(policy_fit.policy_means(state.theta, s_data.observations))
    w = np.asarray(s_data.weights)
    targets = np.asarray(s_data.targets)
    assert np.sum(w * (means - targets) ** 2) < np.sum(w * (means0 - targets) ** 2)


def test_whitening_folds_back_into_the_policy_exactly(tiny_rollout):
    """On whitened inputs the whitened policy outputs the whitened steps; folding it back gives
    the original weights (so the S-step may run in whitened units with no change to π's form)."""
    config, task, state, tracked, data = tiny_rollout
    duals = BadmmDuals(np.zeros_like(state.duals.multiplier),
                       np.full_like(state.duals.penalty, 0.01))
    s_data = policy_fit.s_step_data(data.observations, data.states, jnp.asarray(tracked.mask),
                                    state.controller, duals)
    rng = np.random.default_rng(0)
    theta = jax.tree.map(lambda a: a + 0.1 * rng.normal(size=a.shape).astype(a.dtype),
                         state.theta)
    white = policy_fit.whitening(s_data)
    assert np.all(np.asarray(white.observation_scale) > 0) and float(white.target_scale) > 0
    whitened = policy_fit.whiten(s_data, white)
    valid = np.asarray(s_data.weights) > 0
    np.testing.assert_allclose(np.asarray(whitened.targets)[valid].std(), 1.0, rtol=1e-3)
    theta_w = policy_fit.to_whitened(theta, white)
    raw = np.asarray(policy_fit.policy_means(theta, s_data.observations))
    white_means = np.asarray(policy_fit.policy_means(theta_w, whitened.observations))
    np.testing.assert_allclose(white_means * float(white.target_scale) + float(white.target_mean),
                               raw, rtol=1e-4, atol=1e-6 * np.abs(raw).max())
    back = policy_fit.from_whitened(theta_w, white)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), back, theta)
    # The loss scales by target_scale² only: Adam in whitened units fits the same objective.
    np.testing.assert_allclose(float(policy_fit.s_step_loss(theta_w, whitened))
                               * float(white.target_scale) ** 2,
                               float(policy_fit.s_step_loss(theta, s_data)), rtol=1e-3)
