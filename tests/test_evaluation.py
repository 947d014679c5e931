import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from toy_tasks import QuadraticTask

from metaopt import cli
from metaopt.configs import get_config
from metaopt.evaluation.baseline_suite import run_baseline_suite
from metaopt.evaluation.report import summarize, write_report
from metaopt.evaluation.tuning import final_scores, run_grid, tune
from metaopt.evaluation.unroll import eval_steps, unroll, unroll_python_loop
from metaopt.optimizers.baselines import make_baseline
from metaopt.tasks import make_mlp_task, synthetic_classification


@pytest.fixture(scope="module")
def mlp_task():
    x, y = synthetic_classification(jax.random.key(0), 300, 5, 3)
    return make_mlp_task(x, y, widths=(5, 7, 3), batch_size=16)


def test_unroll_shapes_and_start(mlp_task):
    traj = jax.jit(unroll, static_argnames=("tx", "num_steps", "eval_every"))(
        optax.sgd(0.1), mlp_task, jax.random.key(0), num_steps=20, eval_every=5)
    assert traj.true_loss.shape == (5,) and traj.minibatch_loss.shape == (20,)
    p0 = mlp_task.init_params(jax.random.split(jax.random.key(0))[0])
    assert float(traj.true_loss[0]) == pytest.approx(float(mlp_task.true_loss(p0)), rel=1e-6)
    assert float(traj.true_loss[-1]) < float(traj.true_loss[0])
    assert eval_steps(20, 5) == [0, 5, 10, 15, 20]


@pytest.mark.parametrize(
    "tx, rtol",
    # L-BFGS exercises value, grad and value_fn; its line search amplifies f32 rounding differences.
    [(make_baseline("momentum", learning_rate=0.1, momentum=0.9), 1e-5),
     (make_baseline("lbfgs", max_learning_rate=1.0), 2e-3)],
    ids=["momentum", "lbfgs"],
)
def test_scanned_unroll_equals_python_loop(mlp_task, tx, rtol):
    a = jax.jit(unroll, static_argnames=("tx", "num_steps", "eval_every"))(
        tx, mlp_task, jax.random.key(3), num_steps=12, eval_every=4)
    b = unroll_python_loop(tx, mlp_task, jax.random.key(3), num_steps=12, eval_every=4)
    np.testing.assert_allclose(a.true_loss, b.true_loss, rtol=rtol)
    np.testing.assert_allclose(a.minibatch_loss, b.minibatch_loss, rtol=rtol)


def test_unroll_rejects_bad_schedule(mlp_task):
    with pytest.raises(ValueError, match="multiple of eval_every"):
        unroll(optax.sgd(0.1), mlp_task, jax.random.key(0), num_steps=10, eval_every=3)


def test_run_grid_shapes_and_seed_dependence(mlp_task):
    grid = [{"learning_rate": 0.01}, {"learning_rate": 0.1}, {"learning_rate": 0.3}]
    curves = run_grid(lambda learning_rate: optax.sgd(learning_rate), grid, mlp_task, [0, 1],
                      num_steps=10, eval_every=5, grid_batch_size=2)
    assert curves.shape == (3, 2, 3)
    assert not np.allclose(curves[:, 0], curves[:, 1])  # seeds differ
    # Row for lr=0.1 equals a single unroll with that setting.
    single = unroll(optax.sgd(0.1), mlp_task, jax.random.key(1), num_steps=10, eval_every=5)
    np.testing.assert_allclose(curves[1, 1], single.true_loss, rtol=1e-5)


def test_tuning_picks_the_known_best_step_size():
    # f = ½‖x − 1‖²: gradient descent with step 1 solves it in one step; 1.9 oscillates, 2.5 diverges.
    task = QuadraticTask(curvature=jnp.ones(4))
    grid = [{"learning_rate": lr} for lr in (0.1, 0.5, 1.0, 1.9, 2.5)]
    result = tune(lambda learning_rate: optax.sgd(learning_rate), grid, task, [0, 1, 2],
                  num_steps=20, eval_every=10)
    assert result.best == {"learning_rate": 1.0}
    assert result.curves.shape == (5, 3, 3)
    assert result.scores[4] > result.scores[0]


def test_final_scores_treat_divergence_as_worst():
    curves = np.array([[[1.0, 0.5], [1.0, np.nan]], [[1.0, 0.9], [1.0, 0.8]]])
    scores = final_scores(curves)
    assert scores[0] == np.inf and scores[1] == pytest.approx(0.85)


def test_summarize_and_report(tmp_path):
    steps = [0, 10, 20]
    curves = {"a": np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]]), "b": np.array([[3.0, 1.0, 0.5]] * 2)}
    s = summarize(curves["a"], steps)
    assert s["final_mean"] == 1.0 and s["final_std"] == 0.0
    assert s["auc_mean"] == pytest.approx(10 * (3 + 2) / 2 + 10 * (2 + 1) / 2)
    paths = write_report(tmp_path, curves=curves, steps=steps, details={"a": {"hyperparams": {"lr": 1}}},
                         meta={"job": "test"}, title="t")
    doc = json.loads(paths["json"].read_text())
    assert doc["eval_steps"] == steps and doc["optimizers"]["a"]["hyperparams"] == {"lr": 1}
    assert "machine" in doc["meta"] and "commit" in doc["meta"]
    rows = paths["csv"].read_text().splitlines()
    assert rows[1].startswith("b,") and rows[2].startswith("a,")  # sorted by final objective
    assert paths["png"].stat().st_size > 1000


def test_baseline_suite_end_to_end_on_digits(tmp_path):
    config = dataclasses.replace(get_config("quick"), num_steps=10, eval_every=5,
                                 baselines=("sgd", "adam"),
                                 tuning_seeds=(0,), eval_seeds=(7,))
    out = run_baseline_suite(config, tmp_path)
    doc = json.loads(out["paths"]["json"].read_text())
    assert set(doc["optimizers"]) == {"sgd", "adam"}
    assert np.asarray(doc["optimizers"]["sgd"]["true_loss"]).shape == (1, 3)
    assert doc["meta"]["true_objective_on"].startswith("full training split")


def test_cli_reports_bad_input_clearly(capsys):
    assert cli.main(["baselines", "--config", "nope"]) == 2
    assert "unknown config 'nope'" in capsys.readouterr().err


def test_untrained_learned_optimizer_runs_through_the_harness(mlp_task):
    import metaopt

    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     metaopt.learned_opt(metaopt.init_policy(jax.random.key(0))))
    curves = run_grid(lambda: tx, [{}], mlp_task, [0, 1], num_steps=20, eval_every=10)
    assert curves.shape == (1, 2, 3) and np.all(np.isfinite(curves))
    assert np.all(curves[0, :, -1] < curves[0, :, 0])
