import dataclasses
import json
import math

import jax
import numpy as np
import pytest

from metaopt.gps import BadmmDuals
from metaopt.training import checkpoint
from metaopt.training.gps_loop import dual_step, train, update_penalty


def test_dual_step_moves_lambda_towards_policy_gap():
    duals = BadmmDuals(np.zeros((1, 2, 1), np.float32), np.array([[0.5, 2.0]], np.float32))
    policy = np.ones((2, 1, 3, 2), np.float32)
    controller = np.zeros((2, 1, 3, 2), np.float32)
    mask = np.array([[1.0, 1.0, 0.0]], np.float32)
    policy[:, :, 2] = 100.0                                # masked out
    precision = np.array([[1e6, 4e6]])                     # G⁻¹ of a controller with G ~ 1e-6
    new = dual_step(duals, policy, controller, mask, rate=0.2, precision=precision)
    # λ ← λ + α·ν·G⁻¹·gap (the reference's step); without G⁻¹ λ would be 1e6× too small.
    np.testing.assert_allclose(np.asarray(new)[0, :, 0], [0.2 * 0.5 * 1e6, 0.2 * 2.0 * 4e6],
                               rtol=1e-6)


def test_update_penalty_rule():
    kl = np.array([[0.0, 2.0, 2.0, 2.0, 6.0]])
    penalty = np.ones_like(kl)
    new = np.asarray(update_penalty(penalty, kl, upper=0.5, lower=1.0, increase=2.0,
                                    decrease=0.5))
    mean, std = kl.mean(), kl.std()
    assert 6.0 >= mean + 0.5 * std and 0.0 < mean - std and 2.0 < mean + 0.5 * std
    np.testing.assert_allclose(new, [[0.5, 1.0, 1.0, 1.0, 2.0]])


@pytest.fixture(scope="module")
def tiny_runs(tiny_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("gps")
    full = train(tiny_config, root / "full")
    part = train(dataclasses.replace(tiny_config, iterations=1), root / "part")
    resumed = train(tiny_config, root / "part", resume=True)
    return full, part, resumed, root


def test_tiny_run_completes_with_finite_logs(tiny_config, tiny_runs):
    (theta, log), *_ = tiny_runs
    assert [entry["iteration"] for entry in log] == list(range(tiny_config.iterations))
    for entry in log:
        for key, value in entry.items():
            values = value if isinstance(value, list) else [value]
            if key == "c_step_failed":
                assert not any(values)
            elif key in ("rolled_back", "c_step"):
                assert value in (None, "lqr")
            elif entry["iteration"] == 0 and key in ("predicted_improvement",
                                                     "realized_improvement"):
                assert math.isnan(value)        # nothing to judge before the first C-step
            elif not (entry["iteration"] == 0 and key.startswith("s_step")):
                assert all(math.isfinite(v) for v in values), (key, value)
        assert all(kl <= 1.1 * b for kl, b in zip(entry["kl"], entry["kl_budget"], strict=True))
    assert log[-1]["s_step_loss_after"] < log[-1]["s_step_loss_before"]
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(theta))


def test_resume_after_iteration_one_equals_uninterrupted(tiny_runs):
    (theta_full, log_full), (_, log_part), (theta_resumed, log_resumed), root = tiny_runs
    assert len(log_part) == 1
    for name in ("full", "part"):
        checkpoints = checkpoint.manager(root / name)
        assert list(checkpoints.all_steps()) == [1, 2]
        checkpoints.close()
    assert json.dumps(log_resumed) == json.dumps(log_full)    # NaN (nothing judged yet) == NaN
    jax.tree.map(np.testing.assert_array_equal, theta_resumed, theta_full)


def test_observable_state_and_calibrated_curvature_run_end_to_end(tiny_config):
    """Controllers without g* (the default) and calibrated curvature: two finite iterations,
    controllers that never act on g*, and a logged curvature scale within its bounds."""
    from metaopt.training.gps_loop import TrainState

    assert not tiny_config.privileged_gradient
    config = dataclasses.replace(tiny_config, calibrate_curvature=True)
    states = []
    theta, log = train(config, callback=lambda state, entry, seconds: states.append(state))
    assert len(log) == 2 and all(isinstance(s, TrainState) for s in states)
    for entry in log:
        assert math.isfinite(entry["controller_objective"]) and math.isfinite(entry["policy_objective"])
        assert 0.1 <= entry["curvature_scale"] <= 10.0
        assert not any(entry["c_step_failed"])
    np.testing.assert_array_equal(states[-1].controller.gain[..., -1], 0.0)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(theta))


def test_diverging_controller_is_rolled_back_and_initial_divergence_is_a_clear_error(tiny_config):
    """A C-step that produced a diverging controller: the iteration is rolled back (ψ ← the
    controller before it, step multiplier halved, π untouched) and logged; no NaN enters θ."""
    from metaopt.training.gps_loop import gps_iteration, init_state, make_task
    from metaopt.training.rollout import select_tracked

    config = tiny_config
    task = make_task(config)
    state = init_state(config, task)
    tracked = select_tracked(jax.random.key(config.seed + 4), task.init_params(jax.random.key(0)),
                             config.num_tracked)
    exploding = state.controller._replace(gain=state.controller.gain * 1e4)
    state = state._replace(controller=exploding, has_previous=np.bool_(True),
                           step_multiplier=np.full_like(state.step_multiplier, 0.8))
    new_state, entry = gps_iteration(config, task, tracked, state)
    assert entry["rolled_back"] and ("diverged" in entry["rolled_back"]
                                     or "non-finite" in entry["rolled_back"])
    np.testing.assert_array_equal(new_state.controller.gain, state.previous.controller.gain)
    np.testing.assert_allclose(new_state.step_multiplier, 0.4)
    assert int(new_state.iteration) == 1
    for new, old in zip(jax.tree.leaves(new_state.theta), jax.tree.leaves(state.theta), strict=True):
        np.testing.assert_array_equal(new, old)
    with pytest.raises(ValueError, match="initial controller"):
        gps_iteration(config, task, tracked, state._replace(has_previous=np.bool_(False)))


def test_c_step_that_made_fresh_samples_worse_is_rolled_back(tiny_config):
    """The last C-step is judged on this iteration's fresh samples, with the previous controller
    re-run on the same noise and minibatches: a worse J rolls it back (ψ ← the controller before
    it, step multiplier halved, π untouched), and the log has both improvements."""
    from metaopt.controller import momentum_controller
    from metaopt.training.gps_loop import PreviousModel, gps_iteration, init_state, make_task
    from metaopt.training.rollout import select_tracked

    config = tiny_config
    task = make_task(config)
    state = init_state(config, task)
    tracked = select_tracked(jax.random.key(config.seed + 4), task.init_params(jax.random.key(0)),
                             config.num_tracked)
    groups = len(state.eta)
    timid = momentum_controller(learning_rate=0.1 * config.learning_rate, momentum=0.0,
                                horizon=config.horizon, variance=config.exploration_variance,
                                num_groups=groups)
    state = state._replace(controller=jax.tree.map(np.asarray, timid), has_previous=np.bool_(True),
                           previous=PreviousModel(state.controller, np.float32(0.01)))
    new_state, entry = gps_iteration(config, task, tracked, state)
    assert "worse" in entry["rolled_back"]
    assert entry["realized_improvement"] < 0
    np.testing.assert_allclose(entry["predicted_improvement"], 0.01)
    np.testing.assert_array_equal(new_state.controller.gain, state.previous.controller.gain)
    np.testing.assert_allclose(new_state.step_multiplier, 0.5 * state.step_multiplier)
    for new, old in zip(jax.tree.leaves(new_state.theta), jax.tree.leaves(state.theta), strict=True):
        np.testing.assert_array_equal(new, old)
    assert not bool(new_state.has_previous)       # the next iteration has nothing to judge


def test_coupling_starts_in_units_of_eta():
    from metaopt.training.gps_loop import couple, coupled

    duals = BadmmDuals(np.zeros((2, 3, 1)), np.zeros((2, 3)))
    assert not coupled(duals)
    new = couple(dataclasses.replace(_config(), initial_penalty=0.1), duals, np.array([1e-4, 3.0]))
    assert coupled(new)
    np.testing.assert_allclose(new.penalty, [[1e-5] * 3, [0.3] * 3])


def _config():
    from metaopt.training.gps_loop import TrainConfig

    return TrainConfig.tiny()


def test_pathwise_gps_runs_end_to_end_within_its_budget(tiny_config):
    config = dataclasses.replace(tiny_config, c_step="pathwise", inner_iterations=1,
                                 pathwise_steps=2, iterations=2)
    theta, log = train(config)
    assert [e["c_step"] for e in log] == ["pathwise", "pathwise"]
    first, second = log
    assert first["pathwise_steps_accepted"] >= 1 and first["next_predicted_improvement"] > 0
    assert math.isfinite(second["realized_improvement"])
    np.testing.assert_allclose(second["predicted_improvement"], first["next_predicted_improvement"],
                               rtol=1e-6)
    for entry in log:
        if not entry["rolled_back"]:
            assert all(kl <= b * (1 + 1e-5) for kl, b in zip(entry["kl"], entry["kl_budget"],
                                                             strict=True))
    assert second["penalty"][0] > 0 or second["rolled_back"]    # coupled once π was fit
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(theta))


def test_train_config_rejects_unknown_c_step():
    with pytest.raises(ValueError, match="c_step"):
        dataclasses.replace(_config(), c_step="ddp")
