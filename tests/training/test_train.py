import dataclasses
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
    new = dual_step(duals, policy, controller, mask, rate=0.2)
    np.testing.assert_allclose(np.asarray(new)[0, :, 0], [0.2 * 0.5, 0.2 * 2.0], rtol=1e-6)


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
    assert log_resumed == log_full
    jax.tree.map(np.testing.assert_array_equal, theta_resumed, theta_full)
