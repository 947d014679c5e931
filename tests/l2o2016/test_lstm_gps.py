"""The per-coordinate LSTM trained by the 2016 dense MDGPS (``GPSConfig.policy_kind="lstm"``)."""

import jax
import jax.numpy as jnp
import numpy as np

from metaopt.l2o2016.evaluate import family_curves
from metaopt.l2o2016.gps import (
    GPSConfig,
    default_keys,
    flat_problem,
    momentum_controllers,
    rollout,
    run_gps,
)
from metaopt.l2o2016.s_step import lstm_means
from metaopt.learned_optimizer import learned_opt
from metaopt.policy import init_policy
from metaopt.tasks.l2o2016 import logistic_regression_family


def _random_lstm(key, hidden=8):
    theta = init_policy(key, hidden_size=hidden, init_step_size=0.5)
    leaves, tree = jax.tree.flatten(theta)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    return jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(k, a.shape)
                                     for a, k in zip(leaves, keys, strict=True)])


def test_training_rollout_is_the_shipped_transformation():
    """Noise-free on-policy samples = ``learned_opt`` on the task, and the stored Ψ replays the
    same steps through ``lstm_means`` (what π_lin and the S-step see)."""
    tasks, count, horizon = logistic_regression_family(3, 4), 4, 12
    keys = default_keys(0, count)
    problem, x0 = flat_problem(tasks, keys)
    theta = _random_lstm(jax.random.key(3))
    ctrl = momentum_controllers(np.full(count, 0.1), np.full(count, 0.9), x0.shape[-1], horizon,
                                1e-12)
    samples = rollout(problem, tasks, x0, ctrl, jnp.zeros((count, 1, horizon, x0.shape[-1])),
                      history=4, theta=theta, on_policy=True, kind="lstm")
    curves = family_curves(learned_opt, theta, tasks, keys, num_steps=horizon)
    assert float(jnp.abs(samples.actions).max()) > 1e-2          # the policy does move x
    np.testing.assert_allclose(samples.values[:, 0], curves, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(lstm_means(theta, samples.psi), samples.actions, rtol=1e-4,
                               atol=1e-6)


def test_lstm_gps_fits_the_controllers_and_beats_momentum():
    tasks = logistic_regression_family(3, 8)
    config = GPSConfig(horizon=10, num_samples=8, iterations=3, kl_step=0.5, policy_kind="lstm",
                       lstm_s_step_iterations=200)
    out = run_gps(tasks, default_keys(0, 8), config)
    log = out["log"]
    assert all(np.isfinite(e["controller_cost"]) for e in log), log
    assert all(e["s_step_loss_after"] < 0.8 * e["s_step_loss_before"] for e in log), log
    # The kept LSTM, run noise-free through learned_opt, beats the per-objective tuned momentum.
    assert out["best_train_auc"] < log[0]["momentum_train_auc"], log
    assert out["theta"]["head"]["kernel"].shape == (32, 1)
