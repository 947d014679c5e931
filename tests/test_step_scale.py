"""Step-scale diagnosis (metaopt.evaluation.step_scale, experiments/step_scale_diagnosis.py)."""

import importlib.util
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metaopt.evaluation.step_scale import noise_statistics, step_multiplier_scores
from metaopt.evaluation.unroll import unroll
from metaopt.mlp_policy import init_mlp_policy
from metaopt.scale_free_optimizer import scale_free_opt
from tests.toy_tasks import QuadraticTask


def test_pure_noise_gradients_have_the_iid_coherence():
    # curvature 0: ĝ = ξ ~ N(0, I) exactly, and SGD at rate 0 keeps x fixed.
    task = QuadraticTask(jnp.zeros(4000), noise=1.0)
    stats = noise_statistics(optax.sgd(0.0), task, seeds=[0, 1], num_steps=200)
    assert stats["pure_noise_coherence"] == pytest.approx(np.sqrt(0.1 / 1.9))
    assert stats["coherence"] == pytest.approx(stats["pure_noise_coherence"], rel=0.03)


def test_a_constant_gradient_has_coherence_one():
    task = QuadraticTask(jnp.linspace(0.5, 2.0, 16), noise=0.0)
    stats = noise_statistics(optax.sgd(0.0), task, seeds=[3], num_steps=40)
    assert stats["coherence"] == pytest.approx(1.0, rel=1e-5)
    assert stats["objective_change"] == pytest.approx(0.0, abs=1e-7)


def test_objective_change_matches_a_numpy_transcription():
    task = QuadraticTask(jnp.ones(3), noise=1.0)
    num_steps, skip = 30, 5
    stats = noise_statistics(optax.sgd(0.0), task, seeds=[7], num_steps=num_steps, skip=skip)
    init_key, data_key = jax.random.split(jax.random.key(7))
    x = np.asarray(task.init_params(init_key)["x"], np.float64)
    f = 0.5 * np.sum((x - 1.0) ** 2)
    values = np.array([f + x @ np.asarray(jax.random.normal(k, (3,)), np.float64)
                       for k in jax.random.split(data_key, num_steps)])[skip:]
    expected = np.mean(np.minimum(np.abs(np.diff(values)) / np.abs(values[:-1]), 1.0))
    assert stats["objective_change"] == pytest.approx(expected, rel=1e-4)


def test_noise_statistics_rejects_bad_arguments():
    task = QuadraticTask(jnp.ones(3))
    with pytest.raises(ValueError, match="decay"):
        noise_statistics(optax.sgd(0.1), task, seeds=[0], num_steps=10, decay=1.0)
    with pytest.raises(ValueError, match="skip"):
        noise_statistics(optax.sgd(0.1), task, seeds=[0], num_steps=10, skip=9)


def test_multiplier_one_is_the_policy_and_the_best_is_the_lowest_final():
    theta = init_mlp_policy(jax.random.key(0))
    task = QuadraticTask(jnp.linspace(0.5, 2.0, 8), noise=0.3)
    make = lambda learning_rate: scale_free_opt(theta, learning_rate=learning_rate)
    scores = step_multiplier_scores(make, task, (1.0, 0.3), seeds=[0, 1], num_steps=20)
    direct = np.mean([unroll(make(1.0), task, jax.random.key(s), num_steps=20).true_loss[-1]
                      for s in (0, 1)])
    assert scores["final"][0] == pytest.approx(float(direct), rel=1e-5)
    assert scores["best"] == (1.0, 0.3)[int(np.argmin(scores["final"]))]
    with pytest.raises(ValueError, match="positive"):
        step_multiplier_scores(make, task, (1.0, -0.5), seeds=[0], num_steps=20)


def test_the_diagnosis_script_writes_its_table(tmp_path, monkeypatch):
    path = Path(__file__).parents[1] / "experiments" / "step_scale_diagnosis.py"
    spec = importlib.util.spec_from_file_location("step_scale_diagnosis", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    score = lambda f: {"final": f, "final_se": 0.0, "area": 2 * f, "ends_above_start": 0}
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"rows": [{
        "task": "tiny, minibatch 8", "source": "fig1", "scores": {
            "mine": score(0.3), "sgd (training)": score(1e-6), "adam (this task)": score(10.0)}}]}))
    monkeypatch.setattr(sys, "argv", ["x", "--tiny", "--out", str(tmp_path), "--baselines-table",
                                      str(table), "--table-column", "mine"])
    script.main()
    result = json.loads((tmp_path / "results.json").read_text())
    (row,) = result["rows"]
    assert row["scores"]["multipliers"] == list(script.MULTIPLIERS)
    assert np.all(np.isfinite(row["scores"]["final"]))
    assert 0.0 < row["noise"]["coherence"] <= 1.0
    text = (tmp_path / "table.md").read_text()
    assert "| tiny, minibatch 8 | tiny |" in text
    summary = result["held_out"]["summary"]
    assert summary["beats_all_training_tuned_final_on_figures"] == 0   # SGD's 1e-6 is unbeatable
    assert summary["beats_test_tuned_adam_final"] == 1                  # Adam's 10 is not
    assert result["held_out"]["summary_x1"]["beats_test_tuned_adam_final"] == 1
    assert f"| tiny, minibatch 8 (×{row['scores']['best']:g}) |" in text


def test_the_diagnosis_script_decays_filters_and_scales(tmp_path, monkeypatch):
    path = Path(__file__).parents[1] / "experiments" / "step_scale_diagnosis.py"
    spec = importlib.util.spec_from_file_location("step_scale_diagnosis", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    runs = {}
    for name, extra in (("constant", []), ("decayed", ["--cosine-floor", "0.1"])):
        out = tmp_path / name
        monkeypatch.setattr(sys, "argv", ["x", "--tiny", "--out", str(out), "--multipliers",
                                          "1,2", "--fan-in-exponent", "0.5", *extra])
        script.main()
        runs[name] = json.loads((out / "results.json").read_text())
    (row,) = runs["decayed"]["rows"]
    assert row["scores"]["multipliers"] == [1.0, 2.0] and row["decayed"]
    assert runs["decayed"]["cosine_floor"] == 0.1 and runs["decayed"]["fan_in_exponent"] == 0.5
    assert runs["decayed"]["rows"][0]["scores"]["final"] != runs["constant"]["rows"][0][
        "scores"]["final"]
    monkeypatch.setattr(sys, "argv", ["x", "--tiny", "--out", str(tmp_path / "none"),
                                      "--only", "no such task"])
    with pytest.raises(SystemExit):
        script.main()
