"""GPS over a family of conditions: pooled S-step, per-condition judges, warm start, resume."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaopt.configs import parse_named_paths, parse_overrides
from metaopt.mlp_policy import init_mlp_policy, mlp_policy_steps
from metaopt.tasks import make_mlp_task, synthetic_classification
from metaopt.training import checkpoint
from metaopt.training import scale_free_family as sf
from metaopt.training import scale_free_gps as sg
from metaopt.training.families import FAMILIES, family_conditions


@pytest.fixture(scope="module")
def family():
    x, y = synthetic_classification(jax.random.key(0), 128, 6, 3)
    conditions = [
        sf.FamilyCondition("6-8-3 relu mb16", make_mlp_task(x, y, widths=(6, 8, 3),
                                                              batch_size=16), 0.05),
        sf.FamilyCondition("6-5-5-3 tanh mb4", make_mlp_task(
            x, y, widths=(6, 5, 5, 3), batch_size=4, activation="tanh"), 0.03),
    ]
    config = sg.ScaleFreeGPSConfig(horizon=10, num_samples=3, num_tracked=8, iterations=3,
                                   s_step_iterations=40, s_step_batch_size=64,
                                   select_seeds=(0, 1))
    return config, conditions


@pytest.fixture(scope="module")
def family_run(family, tmp_path_factory):
    config, conditions = family
    out = tmp_path_factory.mktemp("family") / "ckpt"
    state, log = sf.train_family(config, conditions, out, max_to_keep=None)
    return config, conditions, out, state, log


def test_pooled_points_weigh_every_condition_equally():
    rng = np.random.default_rng(0)
    a = (rng.normal(size=(5, 9)), rng.normal(size=5), np.full(5, 1e4))      # few, precise
    b = (rng.normal(size=(50, 9)), rng.normal(size=50), np.full(50, 1.0))   # many, noisy
    x, y, w = sf.pool_points([a, b])
    assert x.shape == (55, 9) and y.shape == (55,)
    np.testing.assert_allclose([w[:5].sum(), w[5:].sum()], [1.0, 1.0])
    np.testing.assert_array_equal(y[5:], b[1])


def test_family_run_improves_every_condition_and_logs_each(family_run):
    config, conditions, _, state, log = family_run
    assert [e["iteration"] for e in log] == [0, 1, 2]
    assert len(state.conditions) == 2
    assert state.conditions[1].controller.gain.shape == (6, 10, 1, 9)   # its own groups
    for e in log[1:]:
        assert [c["name"] for c in e["conditions"]] == [c.name for c in conditions]
        for c in e["conditions"]:
            assert c["rolled_back"] is None
            assert c["realized_improvement"] > 0, c             # judged on fresh samples
            assert np.isfinite(c["imitation_gap"])
    assert log[1]["s_step_loss_after"] < log[1]["s_step_loss_before"]
    assert all(c["coupled"] and c["multiplier_abs_mean"] > 0 for c in log[2]["conditions"])
    scores = [e["policy_tuning_score"] for e in log]
    for e in log:           # the geometric mean of the conditions' final f
        finals = [c["policy_tuning_final"] for c in e["conditions"]]
        np.testing.assert_allclose(e["policy_tuning_score"], np.exp(np.mean(np.log(finals))),
                                   rtol=1e-6)
    assert float(state.best_score) == pytest.approx(min(scores), rel=1e-6)


def test_family_resume_continues_bit_for_bit(family_run, tmp_path):
    config, conditions, out, state, log = family_run
    copy = tmp_path / "ckpt"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "3")                                 # as if killed after iteration 2
    resumed, resumed_log = sf.train_family(config, conditions, copy, resume=True,
                                           max_to_keep=None)
    assert json.dumps(resumed_log) == json.dumps(log)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
    (copy / "3" / "state").rename(copy / "3" / "gone")
    with pytest.raises(checkpoint.CheckpointError, match="cannot be restored"):
        sf.train_family(config, conditions, copy, resume=True)


def test_a_worse_c_step_is_rolled_back_in_its_condition_only(family):
    config, conditions = family
    trackeds = sf._tracked(config, conditions)
    state = sf.init_family_state(config, conditions)
    cs = state.conditions[1]
    worse = cs.controller._replace(gain=np.asarray(cs.controller.gain) * 0.05)
    state = state._replace(conditions=(state.conditions[0], cs._replace(
        controller=worse, predicted=np.float32(0.01))))
    new_state, entry = sf.family_iteration(config, conditions, trackeds, state)
    first, second = entry["conditions"]
    assert first["rolled_back"] is None and first["pathwise_steps_accepted"] >= 0
    assert second["rolled_back"].startswith("the last C-step made fresh samples worse")
    np.testing.assert_array_equal(new_state.conditions[1].controller.gain, cs.previous.gain)
    assert np.isnan(new_state.conditions[1].predicted)
    assert np.isfinite(second["policy_tuning_final"])       # π is still scored there


def test_warm_start_controllers_are_the_policys_linearisation(family):
    config, conditions = family
    task = conditions[0].task
    theta = init_mlp_policy(jax.random.key(3), hidden_sizes=(8,), init_step_size=0.05)
    tracked = sf._tracked(config, conditions)[0]
    init_key, keys = sf._condition_keys(config, 0, 0)
    ctrl = sf.policy_controllers(config, task, theta, init_key, keys, tracked)
    obs = sf._policy_observations(task, theta, init_key, keys, jnp.asarray(tracked.index),
                                  horizon=config.horizon)
    u = np.asarray(mlp_policy_steps(theta, obs, 1.0))
    lin = np.asarray(sg.controller_means(ctrl, obs))
    valid = np.broadcast_to(tracked.mask[None, :, :, None] > 0, u.shape)
    residual = np.sum(np.square(u - lin)[valid]) / np.sum(np.square(u - u[valid].mean())[valid])
    assert residual < 0.05                                    # R² > 0.95 along π's runs
    std = np.sqrt(np.asarray(ctrl.covariance[..., 0, 0]))
    rms = np.sqrt(np.mean(np.square(u), axis=(0, 2), where=valid))
    np.testing.assert_allclose(std, config.exploration_std * rms, rtol=1e-3)
    state = sf.init_family_state(config, conditions, theta)
    for leaf, ref in zip(jax.tree.leaves(state.theta), jax.tree.leaves(theta), strict=True):
        np.testing.assert_array_equal(leaf, ref)


def test_family_configs_and_bad_input():
    assert len(FAMILIES["paper"]) == 1 and len(FAMILIES["mnist"]) >= 3
    assert all(m.dataset == "mnist" for f in FAMILIES.values() for m in f)   # no test dataset
    with pytest.raises(ValueError, match="no training family 'cifar'; choose from paper"):
        family_conditions("cifar")
    with pytest.raises(ValueError, match="at least one FamilyCondition"):
        sf.init_family_state(sg.ScaleFreeGPSConfig(), [])


def test_set_overrides_of_the_training_scripts():
    assert parse_overrides(["num_samples=3", "hidden_sizes=(16,)"], sg.ScaleFreeGPSConfig) == {
        "num_samples": 3, "hidden_sizes": (16,)}
    with pytest.raises(ValueError, match="no such ScaleFreeGPSConfig field; choose from horizon"):
        parse_overrides(["samples=3"], sg.ScaleFreeGPSConfig)
    with pytest.raises(ValueError, match="kl_step=big: the value must be a Python literal"):
        parse_overrides(["kl_step=big"], sg.ScaleFreeGPSConfig)


def test_named_policy_paths_of_the_scripts():
    assert parse_named_paths(["wide=a/p.metaopt", "x=b=c"], "--also") == {
        "wide": "a/p.metaopt", "x": "b=c"}
    for bad in ("nopath", "=p.metaopt", "name="):
        with pytest.raises(ValueError, match=f"--policy '{bad}': give NAME=PATH"):
            parse_named_paths([bad], "--policy")


def test_tuning_score_at_other_optimizer_settings(family):
    """The selection score of π under learned_opt(θ, fan_in_exponent=α, learning_rate=c) is that
    optimizer's own runs (a GPS trained at α scores itself at α), and the settings matter."""
    from metaopt.evaluation.tuning import run_grid
    from metaopt.learned_optimizer import learned_opt

    config, conditions = family
    theta = init_mlp_policy(jax.random.key(1), hidden_sizes=(8,), init_step_size=0.05)
    assert sg.scored_optimizer(0.0, 1.0) is learned_opt
    assert sg.scored_optimizer(0.5, 1.4) is sg.scored_optimizer(0.5, 1.4)   # compiled once
    score, per_condition = sf.tuning_score(config, conditions, theta,
                                           optimizer=sg.scored_optimizer(0.5, 1.4))
    for cond, (final, _) in zip(conditions, per_condition, strict=True):
        curves = run_grid(lambda: learned_opt(theta, fan_in_exponent=0.5, learning_rate=1.4),
                          [{}], cond.task, config.select_seeds, num_steps=config.horizon)[0]
        np.testing.assert_allclose(final, np.mean(np.asarray(curves)[:, -1]), rtol=1e-5)
    trained_at = sf.tuning_score(sg.ScaleFreeGPSConfig(**{
        **{f: getattr(config, f) for f in ("horizon", "select_seeds")}, "fan_in_exponent": 0.5}),
        conditions, theta)
    at_half = sf.tuning_score(config, conditions, theta, optimizer=sg.scored_optimizer(0.5))
    np.testing.assert_allclose(trained_at[0], at_half[0], rtol=1e-6)
    assert abs(score - sf.tuning_score(config, conditions, theta)[0]) > 1e-5
