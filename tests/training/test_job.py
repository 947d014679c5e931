"""The `metaopt train` job end to end through the CLI entry point (tiny settings), and its presets."""

import dataclasses
import json
import math
from types import SimpleNamespace

import jax
import numpy as np
import pytest

import metaopt
from metaopt import cli
from metaopt.training import job
from metaopt.training.gps_loop import TrainConfig
from metaopt.training.job import LEARNED, TrainJobConfig


def _tiny_job(iterations: int) -> TrainJobConfig:
    train = TrainConfig.tiny(iterations=iterations, horizon=10, num_samples=2,
                             s_step_iterations=5, s_step_batch_size=8)
    return TrainJobConfig(train, eval_seeds=(100, 101), eval_every=5, baselines=("sgd",),
                          tuning_seeds=(0,))


@pytest.mark.slow  # ~50 s of compilation on 2 CPU cores; test_cli_plumbing below is the fast twin
def test_train_cli_end_to_end_and_resume(tmp_path, monkeypatch, capsys):
    out = tmp_path / "train"
    monkeypatch.setitem(job.TRAIN_CONFIGS, "quick", _tiny_job(iterations=1))
    assert cli.main(["train", "--config", "quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "learned policy final" in printed and "| learned_gps |" in printed

    doc = json.loads((out / "results.json").read_text())
    assert set(doc["optimizers"]) == {LEARNED, "sgd"}
    assert doc["eval_steps"] == [0, 5, 10]
    for row in doc["optimizers"].values():
        curves = np.asarray(row["true_loss"])
        assert curves.shape == (2, 3) and np.all(np.isfinite(curves))
    verdict = doc["meta"]["verdict"]
    finals = {n: row["final_mean"] for n, row in doc["optimizers"].items()}
    assert verdict["beats_every_baseline_at_final_step"] == (finals[LEARNED] < finals["sgd"])
    assert math.isclose(verdict["learned_final_mean"], finals[LEARNED], rel_tol=1e-6)
    for name in ("summary.csv", "curves.png", "training_log.png"):
        assert (out / name).stat().st_size > 0
    first = json.loads((out / "training_log.json").read_text())
    assert [e["iteration"] for e in first["entries"]] == [0]
    # The final policy file is what the run ended with, and it drives learned_opt.
    theta = metaopt.load(out / "policy.metaopt")
    jax.tree.map(np.testing.assert_array_equal, theta,
                 metaopt.load(out / "policies" / "iter_001.metaopt"))
    assert not all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(theta), jax.tree.leaves(metaopt.init_policy(
            jax.random.key(2), hidden_size=32, init_step_size=0.01)), strict=True))

    # Resume: one more iteration continues from the checkpoint instead of starting over.
    monkeypatch.setitem(job.TRAIN_CONFIGS, "quick", _tiny_job(iterations=2))
    assert cli.main(["train", "--config", "quick", "--out", str(out), "--resume"]) == 0
    second = json.loads((out / "training_log.json").read_text())
    assert [e["iteration"] for e in second["entries"]] == [0, 1]
    assert second["entries"][0] == first["entries"][0]
    assert set(second["seconds_per_iteration"]) == {"0", "1"}
    assert (out / "policies" / "iter_002.metaopt").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2"]


def test_cli_plumbing_with_a_recorded_training_run(tmp_path, monkeypatch, capsys):
    """CLI → train(resume flag, callback) → policy files, log, report, against a baselines file.

    ``train`` is replaced by a double that replays two iterations through the callback (the GPS
    loop and its resume are tested in test_train.py); evaluation runs for real.
    """
    from metaopt.policy import init_policy

    config = TrainConfig.tiny(horizon=10)
    # A useful policy, then a timid one: the job must ship the first (better on the tuning
    # seeds), not the last.
    thetas = [init_policy(jax.random.key(i), hidden_size=8, init_step_size=step)
              for i, step in enumerate((0.05, 1e-4))]
    entry = {"controller_objective": 1.0, "policy_objective": 0.9, "policy_final_objective": 0.5,
             "kl": [1.0], "kl_budget": [2.0], "step_multiplier": [1.0], "penalty": [0.01],
             "s_step_loss_before": 2.0, "s_step_loss_after": 1.0}
    calls = []

    def recorded_train(cfg, out_dir, resume=False, *, callback=None, max_to_keep=3):
        calls.append((cfg, out_dir, resume))
        log = []
        for i, theta in enumerate(thetas):
            log.append({"iteration": i, **entry})
            state = SimpleNamespace(iteration=np.int32(i + 1), theta=theta)  # what callbacks read
            callback(state, log[-1], 1.5)
        return thetas[-1], log

    baselines = tmp_path / "baselines.json"
    baselines.write_text(json.dumps({
        "meta": {"config": dict(dataset=None, input_dim=6, hidden=[8], batch_size=16,
                                activation="relu", l2=5e-4, num_steps=10, projection_seed=0)},
        "optimizers": {"sgd": {"hyperparams": {"learning_rate": 0.1}, "tuning_final_mean": 0.3}}}))
    monkeypatch.setattr(job, "train", recorded_train)
    monkeypatch.setitem(job.TRAIN_CONFIGS, "quick", TrainJobConfig(
        config, eval_seeds=(100, 101), eval_every=5, baselines_file=str(baselines)))
    out = tmp_path / "out"
    assert cli.main(["train", "--config", "quick", "--out", str(out), "--resume",
                     "--iterations", "5"]) == 0
    assert len(calls) == 1 and calls[0][2] is True
    assert calls[0][0] == dataclasses.replace(config, iterations=5)
    assert calls[0][1] == out / "checkpoints"
    assert "learned policy final" in capsys.readouterr().out
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["optimizers"]) == {LEARNED, "sgd"}
    assert doc["optimizers"]["sgd"]["hyperparams"] == {"learning_rate": 0.1}
    assert doc["optimizers"]["sgd"]["tuned_in"] == str(baselines)
    curves = np.asarray(doc["optimizers"][LEARNED]["true_loss"])
    assert curves.shape == (2, 3) and np.all(np.isfinite(curves))
    for i, theta in enumerate(thetas, start=1):
        jax.tree.map(np.testing.assert_array_equal,
                     metaopt.load(out / "policies" / f"iter_{i:03d}.metaopt"), theta)
    policy = doc["meta"]["policy"]
    scores = policy["tuning_scores"]
    assert policy["tuning_seeds"] == [0, 1, 2, 3, 4] and set(scores) == {"iteration 1",
                                                                        "iteration 2"}
    assert policy["chosen"] == min(scores, key=lambda k: scores[k]["final"]) == "iteration 1"
    assert scores["iteration 1"]["final"] < scores["iteration 2"]["final"]
    jax.tree.map(np.testing.assert_array_equal, metaopt.load(out / "policy.metaopt"), thetas[0])
    log = json.loads((out / "training_log.json").read_text())
    assert [e["iteration"] for e in log["entries"]] == [0, 1]
    assert log["seconds_per_iteration"] == {"0": 1.5, "1": 1.5}
    assert (out / "training_log.png").stat().st_size > 0


def test_unknown_config_is_one_clear_error(capsys):
    assert cli.main(["train", "--config", "nope", "--out", "unused"]) == 2
    assert "unknown train config 'nope'" in capsys.readouterr().err


def _baselines_doc(**config):
    base = dict(dataset="mnist", input_dim=48, hidden=[48], batch_size=64, activation="relu",
                l2=0.0005, num_steps=400, projection_seed=0)
    return {"meta": {"config": {**base, **config}},
            "optimizers": {"adam": {"hyperparams": {"learning_rate": 0.01}}}}


def test_baselines_file_must_match_the_task(tmp_path):
    path = tmp_path / "results.json"
    paper = dataclasses.replace(job.TRAIN_CONFIGS["paper"], baselines_file=str(path))
    path.write_text(json.dumps(_baselines_doc()))
    settings = job._baseline_settings(paper, task=None, num_steps=400)
    assert settings["adam"]["hyperparams"] == {"learning_rate": 0.01}
    path.write_text(json.dumps(_baselines_doc(batch_size=10)))
    with pytest.raises(ValueError, match="batch_size"):
        job._baseline_settings(paper, task=None, num_steps=400)
    with pytest.raises(FileNotFoundError, match="metaopt baselines"):
        job._baseline_settings(dataclasses.replace(paper, baselines_file=str(tmp_path / "no")),
                               task=None, num_steps=400)


def test_paper_preset_is_the_papers_task_with_tuned_momentum():
    config = TrainConfig.paper()
    assert (config.dataset, config.widths, config.batch_size, config.horizon,
            config.hidden_size) == ("mnist", (48, 48, 10), 64, 400, 128)
    doc = json.loads(open("results/baselines/results.json").read())
    assert doc["optimizers"]["momentum"]["hyperparams"] == {
        "learning_rate": config.learning_rate, "momentum": config.momentum}
    assert job.TRAIN_CONFIGS["paper"].eval_seeds == tuple(doc["meta"]["config"]["eval_seeds"])
