"""Scale-free GPS: its controllers, rollout, pathwise gradient, S-step, loop and resume."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaopt.gps import BadmmDuals
from metaopt.mlp_policy import init_mlp_policy, mlp_policy_steps
from metaopt.scale_free_controller import (
    CONTROLLER_FEATURES,
    relative_momentum_controller,
    scale_free_controller,
)
from metaopt.tasks import make_mlp_task, synthetic_classification
from metaopt.training import checkpoint
from metaopt.training import scale_free_gps as sg
from metaopt.training.rollout import select_tracked


@pytest.fixture(scope="module")
def tiny():
    x, y = synthetic_classification(jax.random.key(0), 128, 6, 3)
    task = make_mlp_task(x, y, widths=(6, 8, 3), batch_size=16)
    config = sg.ScaleFreeGPSConfig(horizon=10, num_samples=3, num_tracked=8, iterations=3,
                                   s_step_iterations=40, s_step_batch_size=64,
                                   init_step_size=0.05, select_seeds=(0, 1))
    tracked = select_tracked(jax.random.key(config.seed + 4),
                             task.init_params(jax.random.key(0)), config.num_tracked)
    return config, task, tracked


def _random_controller(groups=2, horizon=6, seed=0):
    ctrl = relative_momentum_controller(step_size=0.05, horizon=horizon, num_groups=groups)
    gain = np.array(ctrl.gain)
    rng = np.random.default_rng(seed)
    gain[..., 0, list(CONTROLLER_FEATURES)] += 0.02 * rng.standard_normal(
        gain.shape[:2] + (len(CONTROLLER_FEATURES),))
    return ctrl._replace(gain=gain, bias=0.01 * rng.standard_normal(ctrl.bias.shape))


A = jax.random.normal(jax.random.key(3), (12, 4))
Y = jax.random.normal(jax.random.key(4), (12,))


def _loss(params, scale_w=1.0, loss_scale=1.0):
    return loss_scale * jnp.mean((jnp.tanh(A @ (params["w"] / scale_w) + params["b"]) - Y) ** 2)


def _run_controller(ctrl, steps=6, scale_w=1.0, loss_scale=1.0, seed=1):
    tx = scale_free_controller(ctrl, key=None if seed is None else jax.random.key(seed))
    params = {"b": jnp.full((), 0.1), "w": scale_w * 0.5 * jax.random.normal(jax.random.key(5),
                                                                             (4,))}
    state, visited = tx.init(params), []
    for _ in range(steps):
        loss, grads = jax.value_and_grad(_loss)(params, scale_w, loss_scale)
        updates, state = tx.update(grads, state, params, value=loss)
        params = optax.apply_updates(params, updates)
        visited.append(params)
    return visited


def test_relative_momentum_controller_matches_a_numpy_transcription():
    """u = −c·m̂(0.9)/ā, Δx = σ·u, with the features' EMAs written out by hand."""
    c = 0.05
    ctrl = relative_momentum_controller(step_size=c, horizon=5, num_groups=2)
    tx = scale_free_controller(ctrl)                    # no key: the mean step
    params = {"b": jnp.full((3,), 0.2), "w": jnp.asarray([[0.5, -1.0], [2.0, 0.1]])}
    sigma = {k: float(np.sqrt(np.mean(np.square(v)))) for k, v in params.items()}
    state = tx.init(params)
    rng = np.random.default_rng(0)
    m = {k: np.zeros(v.shape) for k, v in params.items()}
    a = {k: np.zeros(v.shape) for k, v in params.items()}
    for t in range(1, 5):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
        updates, state = tx.update(grads, state, params, value=jnp.float32(1.0 / t))
        for k, g in grads.items():
            m[k] = 0.9 * m[k] + 0.1 * g
            a[k] = 0.999 * a[k] + 0.001 * np.abs(g)
            m_hat, a_hat = m[k] / (1 - 0.9**t), a[k] / (1 - 0.999**t)
            eps = 1e-8 * a_hat.mean()
            want = -c * sigma[k] * np.clip(m_hat / (a_hat + eps), -10, 10)
            np.testing.assert_allclose(updates[k], want, rtol=2e-5, atol=1e-9)


@settings(max_examples=8, deadline=None)
@given(st.floats(-3.0, 3.0))
def test_controllers_are_scale_free(log10_c):
    """Loss ×c: the same run; one tensor's parameters ×c (gradients ÷c): its iterates ×c."""
    ctrl, c = _random_controller(), 10.0 ** log10_c
    base = _run_controller(ctrl)
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(_run_controller(ctrl, loss_scale=c)),
                    strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-6)
    for a, b in zip(base, _run_controller(ctrl, scale_w=c), strict=True):
        np.testing.assert_allclose(b["w"], c * a["w"], rtol=2e-4, atol=2e-6 * c)
        np.testing.assert_allclose(b["b"], a["b"], rtol=2e-4, atol=2e-6)


def test_controller_noise_is_common_to_two_controllers_with_one_key():
    ctrl = _random_controller()
    mean = _run_controller(ctrl, seed=None)
    one, two = _run_controller(ctrl), _run_controller(ctrl)
    shifted = ctrl._replace(bias=np.asarray(ctrl.bias) + 1e-3)
    three = _run_controller(shifted)
    np.testing.assert_array_equal(one[-1]["w"], two[-1]["w"])
    assert not np.allclose(one[-1]["w"], mean[-1]["w"])
    assert 0 < np.max(np.abs(three[0]["w"] - one[0]["w"])) < 1e-3   # same noise, shifted mean


def test_controller_bad_input():
    ctrl = _random_controller()
    with pytest.raises(ValueError, match=r"\(G, T, 1, 9\)"):
        scale_free_controller(ctrl._replace(gain=np.zeros((2, 6, 1, 79))))
    with pytest.raises(ValueError, match="3 leaves but the controllers 2 groups"):
        scale_free_controller(ctrl).init({"a": 1.0, "b": 2.0, "c": 3.0})
    tx = scale_free_controller(ctrl)
    params = {"b": jnp.ones(()), "w": jnp.ones(4)}
    with pytest.raises(ValueError, match="value"):
        tx.update(params, tx.init(params), params)
    with pytest.raises(ValueError, match="step_size"):
        relative_momentum_controller(step_size=0.0, horizon=4, num_groups=1)


def test_sampled_objective_is_the_rollouts_mean_and_its_gradient_is_exact(tiny):
    config, task, tracked = tiny
    state = sg.init_state(config, task)
    keys = jax.random.split(jax.random.key(9), config.num_samples)
    init_key = sg.condition_key(config)
    data = sg.rollout(task, state.controller, init_key, keys, jnp.asarray(tracked.index))
    j = sg.sampled_objective_jit(task, state.controller, init_key, keys)
    np.testing.assert_allclose(j, np.mean(data.true_objective), rtol=1e-6)
    # moments: the count is every coordinate of the group × samples, the means are bounded
    sizes = [x.size for x in jax.tree.leaves(task.init_params(init_key))]
    np.testing.assert_array_equal(data.moments.count[:, 0], np.asarray(sizes) * config.num_samples)
    assert data.observations.shape == (config.num_samples, len(sizes), config.num_tracked,
                                       config.horizon, 9)
    # ∂J/∂k_{g,t} against a central difference
    _, grad = sg.sampled_objective_and_grad(task, state.controller, init_key, keys)
    g, t, h = 0, 3, 1e-3
    bump = lambda d: state.controller._replace(bias=np.asarray(state.controller.bias).copy()
                                               + d * (np.arange(10)[None, :, None] == t)
                                               * (np.arange(len(sizes))[:, None, None] == g))
    fd = (sg.sampled_objective_jit(task, bump(h), init_key, keys)
          - sg.sampled_objective_jit(task, bump(-h), init_key, keys)) / (2 * h)
    np.testing.assert_allclose(grad.bias[g, t, 0], fd, rtol=0.05, atol=1e-4)


def test_gps_runs_pi_as_learned_opt_at_the_same_fan_in_exponent(tiny):
    """π's J inside GPS is the mean f of ``learned_opt(θ, fan_in_exponent=α)`` on the same
    minibatches, and α changes it (GPS trains the optimizer it ships)."""
    config, task, _ = tiny
    theta = init_mlp_policy(jax.random.key(2), hidden_sizes=(8,), init_step_size=0.05)
    init_key, sample_key = sg.condition_key(config), jax.random.key(11)
    from metaopt.learned_optimizer import learned_opt

    def by_hand(alpha):
        tx = learned_opt(theta, fan_in_exponent=alpha)
        params = task.init_params(init_key)
        state, fs = tx.init(params), [task.true_loss(params)]
        for key in sg._sample_keys(sample_key, config.horizon)[1]:
            value, grad = jax.value_and_grad(task.minibatch_objective(key))(params)
            updates, state = tx.update(grad, state, params, value=value)
            params = optax.apply_updates(params, updates)
            fs.append(task.true_loss(params))
        return float(np.mean(fs))

    for alpha in (0.0, 0.5):
        j = sg.policy_objective(task, theta, init_key, sample_key[None], horizon=config.horizon,
                                fan_in_exponent=alpha)
        np.testing.assert_allclose(j, by_hand(alpha), rtol=1e-5)
    assert abs(by_hand(0.5) - by_hand(0.0)) > 1e-4
    with pytest.raises(ValueError, match="fan_in_exponent"):
        sg.ScaleFreeGPSConfig(fan_in_exponent=2.0)


def test_s_step_targets_and_fit():
    rng = np.random.default_rng(0)
    ctrl = _random_controller(groups=2, horizon=5)
    obs = np.clip(rng.standard_normal((3, 2, 4, 5, 9)), -10, 10).astype(np.float32)
    mask = np.ones((2, 4), np.float32)
    mask[1, 3] = 0.0
    variance = np.asarray(ctrl.covariance[..., 0, 0])
    duals = BadmmDuals(np.full((2, 5, 1), 0.3), np.full((2, 5), 2.0))
    x, y, w = sg.s_step_points(ctrl, obs, mask, duals, coupled=True)
    mean = obs[0, 1, 2, 4] @ ctrl.gain[1, 4, 0] + ctrl.bias[1, 4, 0]
    i = np.ravel_multi_index((0, 1, 2, 4), (3, 2, 4, 5))
    np.testing.assert_allclose(y[i], mean - 0.3 * variance[1, 4] / 2.0, rtol=1e-5)
    assert w[np.ravel_multi_index((2, 1, 3, 0), (3, 2, 4, 5))] == 0.0
    _, y0, _ = sg.s_step_points(ctrl, obs, mask, duals, coupled=False)
    np.testing.assert_allclose(y0[i], mean, rtol=1e-5)
    theta = init_mlp_policy(jax.random.key(0), hidden_sizes=(16,), init_step_size=0.01)
    before = float(sg.s_step_loss(theta, x, y0, w))
    fitted, losses = sg.fit_policy(theta, x, y0, w, jax.random.key(1), num_steps=300,
                                   batch_size=32, learning_rate=3e-3)
    assert float(sg.s_step_loss(fitted, x, y0, w)) < 0.3 * before
    assert losses.shape == (300,)


def test_policy_linearization_solves_the_normal_equations():
    rng = np.random.default_rng(1)
    obs = rng.standard_normal((3, 2, 5, 4, 9)).astype(np.float32)
    mask = np.ones((2, 5), np.float32)
    mask[0, 4] = 0.0
    theta = init_mlp_policy(jax.random.key(2), hidden_sizes=(8,), init_step_size=0.05)
    theta["out"]["kernel"] = 0.3 * jax.random.normal(jax.random.key(3), (8, 2))
    lin = sg.policy_linearization(theta, obs, mask, np.full((2, 4), 1e-4), ridge=0.0)
    u = np.asarray(mlp_policy_steps(theta, obs, 1.0))
    for g in range(2):
        for t in range(4):
            keep = mask[g] > 0
            xs = obs[:, g, keep, t][..., list(CONTROLLER_FEATURES)].reshape(-1, 6)
            xs = np.concatenate([xs, np.ones((len(xs), 1))], -1)
            coef = np.linalg.lstsq(xs.astype(np.float64), u[:, g, keep, t].reshape(-1),
                                   rcond=None)[0]
            np.testing.assert_allclose(lin.gain[g, t, 0, list(CONTROLLER_FEATURES)], coef[:-1],
                                       rtol=1e-3, atol=1e-6)
            np.testing.assert_allclose(lin.bias[g, t, 0], coef[-1], rtol=1e-3, atol=1e-6)
    assert np.all(lin.gain[..., 0, 6:] == 0)


@pytest.fixture(scope="module")
def tiny_run(tiny, tmp_path_factory):
    config, task, _ = tiny
    out = tmp_path_factory.mktemp("sfgps") / "ckpt"
    state, log = sg.train(config, task, out, max_to_keep=None)
    return config, task, out, state, log


def test_tiny_run_improves_and_logs_what_happened(tiny_run):
    config, _, _, state, log = tiny_run
    assert [e["iteration"] for e in log] == [0, 1, 2]
    assert all(e["rolled_back"] is None for e in log)
    realized = [e["realized_improvement"] for e in log[1:]]
    assert all(r > 0 for r in realized), realized            # judged on fresh samples
    assert np.isfinite(log[1]["s_step_loss_after"])
    assert log[1]["s_step_loss_after"] < log[1]["s_step_loss_before"]
    assert log[2]["coupled"] and log[2]["multiplier_abs_mean"] > 0   # λ has moved
    assert all(np.isfinite(e["imitation_gap"]) for e in log)
    assert float(state.best_score) == min(e["policy_tuning_final"] for e in log)
    for leaf in jax.tree.leaves(state.best_theta):
        assert np.all(np.isfinite(leaf))


def test_resume_continues_bit_for_bit(tiny_run, tmp_path):
    config, task, out, state, log = tiny_run
    copy = tmp_path / "ckpt"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "3")                                 # as if killed after iteration 2
    resumed, resumed_log = sg.train(config, task, copy, resume=True, max_to_keep=None)
    assert json.dumps(resumed_log) == json.dumps(log)          # (NaN != NaN in a dict)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
    (copy / "3" / "state").rename(copy / "3" / "gone")
    with pytest.raises(checkpoint.CheckpointError, match="cannot be restored"):
        sg.train(config, task, copy, resume=True)


def test_a_c_step_that_made_fresh_samples_worse_is_rolled_back(tiny):
    config, task, tracked = tiny
    state = sg.init_state(config, task)
    worse = state.controller._replace(gain=np.asarray(state.controller.gain) * 0.05)
    state = state._replace(controller=worse, predicted=np.float32(0.01))   # "it will help"
    new_state, entry = sg.gps_iteration(config, task, tracked, state)
    assert entry["rolled_back"].startswith("the last C-step made fresh samples worse")
    np.testing.assert_array_equal(new_state.controller.gain, state.previous.gain)
    np.testing.assert_allclose(new_state.step_multiplier, 0.5 * state.step_multiplier)
    assert int(new_state.iteration) == 1 and np.isnan(new_state.predicted)
