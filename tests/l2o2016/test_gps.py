"""Dense MDGPS on a tiny logistic family: one iteration must lower the controllers' cost."""

import jax
import numpy as np

from metaopt.l2o2016.gps import GPSConfig, default_keys, run_gps
from metaopt.tasks.l2o2016 import logistic_regression_family


def test_one_c_step_lowers_the_sampled_cost_and_the_policy_learns():
    tasks = logistic_regression_family(3, 8)
    # Off-policy sampling, so that iteration 1's samples are drawn by the C-step's controllers ψ_1.
    config = GPSConfig(horizon=10, num_samples=8, iterations=2, s_step_iterations=300,
                       kl_step=0.5, on_policy=False)
    out = run_gps(tasks, default_keys(0, 8), config)
    log = out["log"]
    assert all(np.isfinite(e["controller_cost"]) for e in log)
    # Samples of ψ_1 (drawn at iteration 1) cost less than those of the momentum controllers.
    assert log[1]["controller_cost"] < 0.97 * log[0]["controller_cost"], log
    # The S-step fits its targets, and the kept policy is at least as good as momentum.
    assert all(e["s_step_loss_after"] < e["s_step_loss_before"] for e in log)
    assert out["best_train_auc"] < log[0]["momentum_train_auc"], log
    assert jax.tree.leaves(out["theta"])[0].shape[-1] > 0
