"""Horizon schedules and their search (metaopt.optimizers.horizon_schedule,
metaopt.evaluation.schedule_search, experiments/schedule_selection.py)."""

import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaopt.evaluation.schedule_search import coordinate_search, criterion, schedule_scores
from metaopt.evaluation.tuning import run_grid
from metaopt.evaluation.unroll import unroll
from metaopt.mlp_policy import init_mlp_policy
from metaopt.optimizers.horizon_schedule import horizon_schedule
from metaopt.scale_free_optimizer import scale_free_opt
from tests.experiment_scripts import load_experiment
from tests.toy_tasks import QuadraticTask

positive = st.floats(0.01, 100.0, allow_nan=False, allow_infinity=False)


@settings(deadline=None, max_examples=25)
@given(st.lists(positive, min_size=2, max_size=6), st.integers(1, 1000),
       st.floats(0.0, 1.5))
def test_schedule_matches_a_numpy_transcription(multipliers, horizon, progress):
    step = int(progress * horizon)
    fractions = np.linspace(0.0, 1.0, len(multipliers))
    expected = np.exp(np.interp(step / horizon, fractions, np.log(multipliers)))
    schedule = horizon_schedule(multipliers, horizon=horizon)
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)


def test_schedule_hits_its_knots_and_holds_the_last_past_the_horizon():
    schedule = horizon_schedule([1.0, 4.0, 0.25], horizon=100, fractions=[0.0, 0.2, 1.0])
    assert [float(schedule(t)) for t in (0, 20, 100, 500)] == pytest.approx([1, 4, 0.25, 0.25])
    assert float(schedule(10)) == pytest.approx(2.0, rel=1e-6)      # geometric midpoint
    assert float(jax.jit(schedule)(jnp.int32(60))) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(multipliers=[1.0, -1.0], horizon=10), "positive finite"),
    (dict(multipliers=[1.0, float("nan")], horizon=10), "positive finite"),
    (dict(multipliers=[], horizon=10), "positive finite"),
    (dict(multipliers=[1.0, 2.0], horizon=0), "positive int"),
    (dict(multipliers=[1.0, 2.0], horizon=True), "positive int"),
    (dict(multipliers=[1.0, 2.0], horizon=10.0), "positive int"),
    (dict(multipliers=[1.0, 2.0], horizon=10, fractions=[0.0, 0.5]), "from 0 to 1"),
    (dict(multipliers=[1.0, 2.0, 3.0], horizon=10, fractions=[0.0, 1.0]), "one per"),
    (dict(multipliers=[1.0, 2.0, 3.0], horizon=10, fractions=[0.0, 0.0, 1.0]), "strictly"),
])
def test_schedule_rejects_bad_input(kwargs, match):
    multipliers = kwargs.pop("multipliers")
    with pytest.raises(ValueError, match=match):
        horizon_schedule(multipliers, **kwargs)


def test_a_constant_schedule_is_the_constant_learning_rate():
    theta = init_mlp_policy(jax.random.key(0))
    task = QuadraticTask(jnp.linspace(0.5, 2.0, 8), noise=0.3)
    run = lambda lr: unroll(scale_free_opt(theta, learning_rate=lr), task, jax.random.key(3),
                            num_steps=30, eval_every=10).true_loss
    np.testing.assert_allclose(run(horizon_schedule([0.7, 0.7, 0.7], horizon=30)), run(0.7),
                               rtol=1e-6)


def test_scores_agree_with_run_grid_and_keep_one_program():
    theta = init_mlp_policy(jax.random.key(1))
    tasks = [QuadraticTask(jnp.linspace(0.5, 2.0, 8), noise=0.3),
             QuadraticTask(jnp.linspace(1.0, 3.0, 5), noise=0.0)]
    make = functools.partial(scale_free_opt, theta)
    candidates = [[1.0, 1.0, 1.0], [2.0, 0.5, 1.5]]
    scores = schedule_scores(make, tasks, candidates, horizon=20, seeds=[0, 1])
    assert scores["final"].shape == scores["area"].shape == (2, 2)
    for j, task in enumerate(tasks):
        reference = run_grid(lambda **k: make(learning_rate=horizon_schedule(
            [k["a"], k["b"], k["c"]], horizon=20)),
            [dict(zip("abc", c, strict=True)) for c in candidates], task, [0, 1], num_steps=20)
        np.testing.assert_allclose(scores["final"][:, j], reference[:, :, -1].mean(1), rtol=1e-5)
        np.testing.assert_allclose(scores["area"][:, j], reference.mean((1, 2)), rtol=1e-5)
    again = schedule_scores(make, tasks, candidates, horizon=20, seeds=[0, 1])
    np.testing.assert_array_equal(again["final"], scores["final"])
    with pytest.raises(ValueError, match="positive finite"):
        schedule_scores(make, tasks, [[1.0, 0.0, 1.0]], horizon=20, seeds=[0])


def test_criterion_is_the_geometric_mean_of_finals_and_areas():
    final, area = np.array([[0.1, 0.4], [0.2, np.inf]]), np.array([[1.0, 1.6], [0.5, 0.5]])
    values = criterion(final, area)
    assert values[0] == pytest.approx((0.1 * 0.4 * 1.0 * 1.6) ** 0.25)
    assert values[1] == np.inf


def test_search_finds_a_separable_minimum_and_never_ends_worse():
    target = np.log(np.array([2.0, 0.5, 1.0, 3.0]))
    calls = []

    def score(c):
        calls.append(len(c))
        return np.sum((np.log(c) - target) ** 2, axis=1)

    result = coordinate_search(score, np.ones(4), sweeps=60, min_log_step=1e-3)
    np.testing.assert_allclose(np.log(result["best"]), target, atol=0.02)
    assert result["score"] <= result["start_score"]
    assert calls[0] == 1 and set(calls[1:]) == {16}          # K knots × 2 steps × 2 signs
    scores = [h["score"] for h in result["history"]]
    assert scores == sorted(scores, reverse=True)


def test_search_rejects_failed_runs_and_respects_bounds():
    # every move is inf except pushing knot 0 up; the bound stops it at 3
    def score(c):
        ok = np.all(c[:, 1:] == 1.0, axis=1)
        return np.where(ok, 1.0 / c[:, 0], np.inf)

    result = coordinate_search(score, [1.0, 1.0], sweeps=20, bounds=(0.1, 3.0))
    assert result["best"] == [3.0, 1.0]
    with pytest.raises(ValueError, match="positive"):
        coordinate_search(score, [1.0, -1.0])
    with pytest.raises(ValueError, match="sweep"):
        coordinate_search(score, [1.0, 1.0], sweeps=0)


def test_the_selection_script_writes_its_choice(tmp_path, monkeypatch):
    script = load_experiment("schedule_selection")
    monkeypatch.setattr(sys, "argv", ["x", "--tiny", "--sweeps", "1", "--knots", "3",
                                      "--out", str(tmp_path)])
    script.main()
    doc = json.loads((tmp_path / "selection.json").read_text())
    assert doc["fractions"] == [0.0, 0.5, 1.0] and len(doc["search"]["best"]) == 3
    assert doc["rows"]["chosen"]["criterion"] == pytest.approx(doc["search"]["score"], rel=1e-5)
    assert doc["rows"]["constant"]["criterion"] == pytest.approx(doc["search"]["start_score"],
                                                                 rel=1e-5)
    assert doc["rows"]["chosen"]["criterion"] <= doc["rows"]["constant"]["criterion"]
    assert "chosen multipliers" in (tmp_path / "table.md").read_text()
    monkeypatch.setattr(sys, "argv", ["x", "--tiny", "--knots", "1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        script.main()


def test_the_selection_script_rescores_a_given_schedule(tmp_path, monkeypatch, capsys):
    script = load_experiment("schedule_selection")
    chosen = tmp_path / "given.json"
    chosen.write_text(json.dumps({"rows": {"chosen": {"multipliers": [2.0, 0.5, 1.0]}}}))
    monkeypatch.setattr(sys, "argv", ["x", "--tiny", "--evaluate", str(chosen),
                                      "--out", str(tmp_path / "out")])
    script.main()
    doc = json.loads((tmp_path / "out" / "selection.json").read_text())
    assert doc["rows"]["chosen"]["multipliers"] == [2.0, 0.5, 1.0]
    assert doc["search"]["evaluated_from"] == str(chosen)
    assert doc["rows"]["chosen"]["criterion"] != doc["rows"]["constant"]["criterion"]
    chosen.write_text("{}")
    with pytest.raises(SystemExit):
        script.main()
    assert "not a schedule_selection.py selection.json" in capsys.readouterr().err
