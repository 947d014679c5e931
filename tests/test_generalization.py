"""The generalisation suite: per-task tuning, both baseline columns, scores and the table."""

import json
import math

import jax
import numpy as np
import optax
import pytest

from metaopt.evaluation import generalization as gen
from metaopt.evaluation.tuning import run_grid
from metaopt.optimizers.baselines import BASELINES
from metaopt.tasks import make_mlp_task, synthetic_classification


def test_score_curves_against_numpy():
    curves = np.array([[2.0, 1.0, 0.5], [2.0, 2.5, 3.0], [1.0, 0.9, 1.0]])
    s = gen.score_curves(curves)
    assert s["final"] == pytest.approx(1.5)
    assert s["final_se"] == pytest.approx(np.std([0.5, 3.0, 1.0], ddof=1) / math.sqrt(3))
    assert s["area"] == pytest.approx(curves.mean())
    assert s["ends_above_start"] == 2          # 3.0 > 2.0, and 1.0 is not below 1.0
    curves[1, 1] = np.nan
    assert gen.score_curves(curves)["final"] == math.inf
    assert gen.score_curves(curves)["area"] == math.inf


def test_suite_holds_out_the_training_dataset():
    tasks = gen.suite_tasks()
    assert len(tasks) == 10 + len(gen.HELD_OUT)
    assert sum(t.source.startswith("fig") for t in tasks) == 10
    assert len({t.name for t in tasks}) == len(tasks)
    assert all(t.dataset in ("digits", "fashion_mnist") for t in tasks)       # never MNIST
    assert any(t.num_steps > 800 for t in gen.HELD_OUT)
    assert any(len(t.hidden) > 1 for t in gen.HELD_OUT)
    assert any(t.activation != "relu" for t in gen.HELD_OUT)


TRAINED = {"adam": {"learning_rate": 3e-3},
           "momentum_cosine": {"learning_rate": 0.1, "momentum": 0.9, "decay_steps": 400},
           "lbfgs": {"max_learning_rate": 1.0}}


@pytest.fixture(scope="module")
def tiny_row():
    x, y = synthetic_classification(jax.random.key(0), 128, 6, 3)
    task = make_mlp_task(x, y, widths=(6, 8, 3), batch_size=16)
    spec = gen.SuiteTask("tiny", "synthetic", num_steps=20, eval_every=10)
    grids = {"adam": [{"learning_rate": lr} for lr in (1e-3, 1e-2, 1e-1)]}
    row = gen.evaluate_task(spec, {"sgd-policy": lambda: optax.sgd(0.1)}, task=task,
                            training_tuned=TRAINED, test_grids=grids, tuning_seeds=(0, 1),
                            eval_seeds=(5, 6))
    return task, grids, row


def test_test_tuned_column_is_chosen_on_tuning_seeds_and_reported_on_others(tiny_row):
    task, grids, row = tiny_row
    steps = dict(num_steps=20, eval_every=10)
    tuning = [run_grid(BASELINES["adam"].factory, [hp], task, (0, 1), **steps)[0]
              for hp in grids["adam"]]
    best = int(np.argmin([c[:, -1].mean() for c in tuning]))
    assert row["hyperparams"]["adam (this task)"] == grids["adam"][best]
    reference = run_grid(BASELINES["adam"].factory, [grids["adam"][best]], task, (5, 6), **steps)
    np.testing.assert_allclose(row["curves"]["adam (this task)"], reference[0], rtol=1e-5)
    edge = grids["adam"][best]["learning_rate"] in (1e-3, 1e-1)
    assert ("adam (this task)" in row["at_grid_edge"]) == edge


def test_training_tuned_columns_use_the_tasks_horizon(tiny_row):
    task, _, row = tiny_row
    assert set(row["curves"]) == {"sgd-policy", "adam (training)", "momentum_cosine (training)",
                                  "adam (this task)"}                         # no L-BFGS
    assert row["hyperparams"]["momentum_cosine (training)"]["decay_steps"] == 20
    reference = run_grid(lambda: optax.adam(3e-3), [{}], task, (5, 6), num_steps=20,
                         eval_every=10)
    np.testing.assert_allclose(row["curves"]["adam (training)"], reference[0], rtol=1e-5)
    policy = run_grid(lambda: optax.sgd(0.1), [{}], task, (5, 6), num_steps=20, eval_every=10)
    np.testing.assert_allclose(row["curves"]["sgd-policy"], policy[0], rtol=1e-6)


def _row(source, own, training, adam_here, momentum_here, above=0):
    mk = lambda f, a: {"final": f, "area": a, "final_se": 0.01, "ends_above_start": 0}
    scores = {"p": mk(*own) | {"ends_above_start": above}, "sgd (training)": mk(*training),
              "adam (this task)": mk(*adam_here), "momentum (this task)": mk(*momentum_here)}
    return {"task": f"{source} task", "source": source, "scores": scores}


def test_summary_counts_and_table():
    rows = [_row("fig1", (0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.05, 0.1)),   # wins but momentum
            _row("fig3", (0.3, 0.2), (0.2, 0.3), (0.25, 0.1), (0.4, 0.5), above=1),
            _row("held-out", (0.1, 0.1), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5))]
    counts = gen.summary_counts(rows, "p")
    assert counts == {"tasks": 3, "figure_tasks": 2,
                      "beats_all_training_tuned_final_on_figures": 1,
                      "beats_all_training_tuned_area_on_figures": 2,
                      "beats_test_tuned_adam_final": 2, "beats_test_tuned_adam_area": 2,
                      "beats_every_test_tuned_final": 1, "seeds_above_start": 1}
    table = gen.markdown_table(rows, "p").splitlines()
    assert len(table) == 2 + len(rows)
    assert "sgd 0.2 (1.50) / sgd 0.3 (0.67 ✓)" in table[3]      # lost final by 1.5×, won area
    assert table[3].endswith("| 1 |")


def test_a_rerun_reuses_the_baseline_columns_of_the_same_protocol(tiny_row, monkeypatch):
    task, grids, row = tiny_row
    stored = json.loads(json.dumps({k: v for k, v in row.items() if k != "curves"} | {
        "curves": {n: np.asarray(c).tolist() for n, c in row["curves"].items()}}))
    calls = []
    real = gen.run_grid
    monkeypatch.setattr(gen, "run_grid", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    kwargs = dict(task=task, training_tuned=TRAINED,
                  test_grids=grids, tuning_seeds=(0, 1), eval_seeds=(5, 6))
    spec = gen.SuiteTask("tiny", "synthetic", num_steps=20, eval_every=10)
    again = gen.evaluate_task(spec, {"other": lambda: optax.sgd(0.05)}, reuse=stored, **kwargs)
    assert len(calls) == 1                                   # only the new policy ran
    for name in ("adam (this task)", "adam (training)", "momentum_cosine (training)"):
        np.testing.assert_allclose(again["curves"][name], row["curves"][name])
    assert again["hyperparams"] == row["hyperparams"]
    changed = gen.evaluate_task(spec, {"other": lambda: optax.sgd(0.05)}, reuse=stored,
                                **(kwargs | {"eval_seeds": (5, 7)}))
    assert len(calls) > 2                                    # another protocol: rerun
    assert changed["protocol"]["eval_seeds"] == [5, 7]
