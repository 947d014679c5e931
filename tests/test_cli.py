"""The `metaopt` command line in-process: bad input fails in one line before any work, `eval`
writes its report (and matches the train job's evaluation), `plot` re-renders a run, help and
--version. Tiny settings: 8x8 digits projected to 8 dims, an 8-8-10 net, 5 steps, one seed."""

import json
import math

import jax
import numpy as np
import pytest

import metaopt
from metaopt import cli
from metaopt.evaluation import baseline_suite, eval_command
from metaopt.training import job
from metaopt.training.gps_loop import TrainConfig
from metaopt.training.job import TrainJobConfig

TINY = ["--dataset", "digits", "--input-dim", "8", "--hidden", "8", "--steps", "5",
        "--seeds", "100"]
TINY_TASK = dict(dataset="digits", input_dim=8, hidden=[8], batch_size=64, activation="relu",
                 l2=0.0005, num_steps=5, projection_seed=0)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def policy_file(tmp_path):
    path = tmp_path / "policy.metaopt"
    metaopt.save(path, metaopt.init_policy(jax.random.key(0)))
    return path


@pytest.fixture
def baselines_file(tmp_path):
    """A `metaopt baselines` report tuned on the tiny task."""
    path = tmp_path / "baselines.json"
    path.write_text(json.dumps({
        "meta": {"config": TINY_TASK},
        "optimizers": {"sgd": {"hyperparams": {"learning_rate": 0.3}, "tuning_final_mean": 2.0}}}))
    return path


@pytest.fixture
def no_work(monkeypatch):
    """Every expensive entry point a command could reach raises: a check must stop it first."""
    def started(*args, **kwargs):
        raise AssertionError("work started before the inputs were checked")

    for module, name in [(job, "run_train_job"), (job, "train"), (job, "plot_training_log"),
                         (baseline_suite, "run_baseline_suite"), (eval_command, "run_eval"),
                         (eval_command, "eval_task"), (eval_command, "replot_curves")]:
        monkeypatch.setattr(module, name, started)


def _fails_in_one_line(capsys, argv, *expected: str, notes: int = 0) -> str:
    """Exit 2 and the error in one line; ``notes``: progress lines allowed before it (an error
    met during the work, not in the checks)."""
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 + notes, captured.err
    assert all(": error:" not in line for line in lines[:-1])
    lines = lines[-1:]
    assert lines[0].startswith(f"metaopt {argv[0]}: error: ") or lines[0].startswith("metaopt: ")
    assert "Traceback" not in captured.err and captured.out == ""
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


# --- version and help ---------------------------------------------------------------------------


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"metaopt {metaopt.__version__}"


def test_top_level_help_keeps_the_docstring_layout(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    # RawDescriptionHelpFormatter: one example per line, not reflowed into a paragraph.
    assert "\n  metaopt eval --policy results/train/policy.metaopt" in out
    assert "\n  metaopt plot results/train" in out
    for command in ("baselines", "train", "eval", "plot"):
        assert f"\n    {command}" in out


@pytest.mark.parametrize("command, example", [
    ("baselines", "metaopt baselines --config quick --out /tmp/baselines"),
    ("train", "metaopt train --config paper --out results/train --resume --iterations 8"),
    ("eval", "metaopt eval --policy results/train/policy.metaopt --out results/eval"),
    ("plot", "metaopt plot results/baselines"),
])
def test_subcommand_help_has_examples(capsys, command, example):
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: metaopt {command}")
    assert "\nexamples:\n" in out and f"\n  {example}" in out


def test_eval_help_says_where_baseline_hyperparameters_come_from(capsys):
    assert cli.main(["eval", "--help"]) == 0
    out = capsys.readouterr().out
    assert "results/baselines/results.json" in out and "--tune" in out


# --- bad input: exit 2, one line, nothing run -----------------------------------------------------


@pytest.mark.parametrize("argv, expected", [
    (["train", "--iterations", "-1"], ["--iterations", "positive integer", "'-1'"]),
    (["train", "--iterations", "0"], ["--iterations", "positive integer"]),
    (["train", "--samples-per-device", "0"], ["--samples-per-device"]),
    (["eval", "--steps", "0"], ["--steps", "positive integer"]),
    (["eval", "--steps", "ten"], ["--steps", "'ten'"]),
    (["eval", "--batch-size", "-64"], ["--batch-size"]),
    (["eval", "--input-dim", "0"], ["--input-dim"]),
    (["eval", "--hidden", "48,0"], ["--hidden", "positive widths"]),
    (["eval", "--hidden", ""], ["--hidden"]),
    (["eval", "--seeds", "100,-1"], ["--seeds", "non-negative"]),
    (["eval", "--seeds", "a,b"], ["--seeds"]),
    (["eval", "--tuning-seeds", "x"], ["--tuning-seeds"]),
    (["eval", "--dataset", "imagenet"], ["unknown dataset 'imagenet'", "mnist", "fashion_mnist",
                                         "digits"]),
    (["eval", "--dataset", "tfd"], ["Toronto Faces"]),
    (["eval", "--baselines", "adam,nadam"], ["unknown baseline(s) 'nadam'", "sgd", "adam_cosine",
                                             "lbfgs"]),
    (["eval", *TINY, "--eval-every", "3"], ["multiple of eval_every"]),
    (["eval", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["frobnicate"], ["invalid choice", "eval", "plot"]),
])
def test_bad_arguments_fail_in_one_line(capsys, no_work, argv, expected):
    _fails_in_one_line(capsys, argv, *expected)


def test_unknown_configs_list_the_choices(capsys, no_work, tmp_path):
    _fails_in_one_line(capsys, ["train", "--config", "nope", "--out", str(tmp_path)],
                       "unknown train config 'nope'", "paper", "quick")
    _fails_in_one_line(capsys, ["baselines", "--config", "nope", "--out", str(tmp_path)],
                       "unknown config 'nope'", "paper", "quick")


def test_out_that_is_a_file_fails_before_any_work(capsys, no_work, tmp_path, policy_file,
                                                   baselines_file):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{}")
    for argv in (["train", "--config", "quick"], ["baselines", "--config", "quick"],
                 ["eval", "--policy", str(policy_file), *TINY, "--baselines-file",
                  str(baselines_file)], ["plot", str(tmp_path / "run")]):
        line = _fails_in_one_line(capsys, [*argv, "--out", str(taken)],
                                  f"--out {taken} exists and is a file", "pass a folder")
        assert line.startswith(f"metaopt {argv[0]}: error:")
        # Below a file: no folder can be made there either.
        _fails_in_one_line(capsys, [*argv, "--out", str(taken / "sub")], f"{taken} is a file")
    assert taken.read_text() == "not a folder"


def test_policy_file_missing_corrupt_or_a_folder(capsys, no_work, tmp_path, policy_file,
                                                 baselines_file):
    base = ["eval", *TINY, "--baselines-file", str(baselines_file), "--out", str(tmp_path / "o")]
    _fails_in_one_line(capsys, [*base, "--policy", str(tmp_path / "nope.metaopt")],
                       "no policy file", "pretrained")
    corrupt = tmp_path / "corrupt.metaopt"
    corrupt.write_bytes(policy_file.read_bytes()[:-100])
    _fails_in_one_line(capsys, [*base, "--policy", str(corrupt)], str(corrupt), "truncated")
    garbage = tmp_path / "garbage.metaopt"
    garbage.write_text("hello")
    _fails_in_one_line(capsys, [*base, "--policy", str(garbage)], "not a metaopt policy file")
    _fails_in_one_line(capsys, [*base, "--policy", str(tmp_path)], "is a directory")
    assert not (tmp_path / "o").exists()


def test_baselines_file_problems_fail_before_any_work(capsys, no_work, tmp_path, policy_file,
                                                      baselines_file):
    base = ["eval", "--policy", str(policy_file), *TINY, "--out", str(tmp_path / "o")]
    _fails_in_one_line(capsys, [*base, "--baselines-file", str(tmp_path / "missing.json")],
                       "not found", "metaopt baselines")
    _fails_in_one_line(capsys, [*base, "--baselines-file", str(baselines_file), "--baselines",
                                "sgd,adam"], "no tuned adam", "--tune")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    _fails_in_one_line(capsys, [*base, "--baselines-file", str(bad)], "not a readable")


def test_train_checks_its_baselines_report_before_training(capsys, no_work, monkeypatch, tmp_path):
    missing = tmp_path / "baselines" / "results.json"
    monkeypatch.setitem(job.TRAIN_CONFIGS, "quick", TrainJobConfig(
        TrainConfig.tiny(), baselines_file=str(missing)))
    _fails_in_one_line(capsys, ["train", "--config", "quick", "--out", str(tmp_path / "t")],
                       f"{missing} not found", "metaopt baselines")
    assert not (tmp_path / "t").exists()


def test_oserror_during_a_command_is_one_line_with_the_fix(capsys, monkeypatch, tmp_path,
                                                          policy_file, baselines_file):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "o" / "results.json"))

    monkeypatch.setattr(eval_command, "run_eval", denied)
    line = _fails_in_one_line(capsys, ["eval", "--policy", str(policy_file), *TINY,
                                       "--baselines-file", str(baselines_file),
                                       "--out", str(tmp_path / "o")],
                              "Permission denied", "results.json", "another --out", notes=1)
    assert line.startswith("metaopt eval: error:")

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", "/x/checkpoints")

    monkeypatch.setattr(job, "run_train_job", full)
    monkeypatch.setitem(job.TRAIN_CONFIGS, "quick", TrainJobConfig(TrainConfig.tiny()))
    _fails_in_one_line(capsys, ["train", "--config", "quick", "--out", str(tmp_path / "t")],
                       "No space left on device", "/x/checkpoints", "free some disk space")


def test_plot_needs_a_run_folder(capsys, no_work, tmp_path):
    _fails_in_one_line(capsys, ["plot", str(tmp_path / "absent")], "is not a folder")
    (tmp_path / "empty").mkdir()
    _fails_in_one_line(capsys, ["plot", str(tmp_path / "empty")],
                       "neither training_log.json", "nor results.json")


def test_plot_rejects_a_broken_training_log(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "training_log.json").write_text(json.dumps({"entries": []}))
    _fails_in_one_line(capsys, ["plot", str(run)], "not a metaopt training log")
    (run / "training_log.json").write_text(json.dumps({"entries": [{"kl": [1.0]}]}))
    _fails_in_one_line(capsys, ["plot", str(run)], "lacks the field 'iteration'")
    assert not (run / "training_log.png").exists()


# --- what the commands write ------------------------------------------------------------------------


def _entry(i: int) -> dict:
    """The fields plot_training_log reads (the rest it draws as NaN when absent)."""
    return {"iteration": i, "controller_objective": 1.0 - 0.1 * i, "policy_objective": 0.9,
            "policy_final_objective": 0.5, "imitation_gap": 0.1, "predicted_improvement": 0.05,
            "realized_improvement": 0.04, "kl": [1.0, 2.0], "kl_budget": [2.0, 2.0],
            "step_multiplier": [1.0], "penalty": [0.01], "s_step_loss_before": 2.0,
            "s_step_loss_after": 1.0, "rolled_back": i == 1}


def test_plot_rerenders_both_figures(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "training_log.json").write_text(json.dumps(
        {"config": "quick", "entries": [_entry(0), _entry(1)]}))
    (run / "results.json").write_text(json.dumps({
        "meta": {"job": "train", "task": "8-8-10 relu MLP on digits", "eval_seeds": [100, 101]},
        "eval_steps": [0, 5, 10],
        "optimizers": {"learned_gps": {"true_loss": [[2.3, 1.0, 0.5], [2.3, 1.1, 0.6]]},
                       "sgd": {"true_loss": [[2.3, 1.5, 0.9], [2.3, 1.4, 0.8]]}}}))
    assert cli.main(["plot", str(run)]) == 0
    out = capsys.readouterr().out
    for name in ("training_log.png", "curves.png"):
        assert (run / name).read_bytes()[:8] == PNG_MAGIC
        assert str(run / name) in out
    # Elsewhere, and from results.json alone.
    (run / "training_log.json").unlink()
    assert cli.main(["plot", str(run), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert not (tmp_path / "figs" / "training_log.png").exists()


def test_plot_rejects_curves_that_do_not_match_the_steps(capsys, tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({
        "eval_steps": [0, 5], "optimizers": {"sgd": {"true_loss": [[2.3, 1.5, 0.9]]}}}))
    _fails_in_one_line(capsys, ["plot", str(tmp_path)], "do not match eval_steps")
    assert not (tmp_path / "curves.png").exists()


def test_train_wrote_line_lists_the_policy(capsys, monkeypatch, tmp_path):
    out = tmp_path / "t"

    def fake_run(name, out_dir, **kwargs):
        out.mkdir()
        for name in ("results.json", "curves.png", "policy.metaopt", "training_log.json",
                     "training_log.png"):
            (out / name).write_text("x")
        (out / "summary.csv").write_text("optimizer,final_mean\nlearned_gps,0.4\n")
        return {"paths": {k: out / v for k, v in (("json", "results.json"),
                                                  ("csv", "summary.csv"), ("png", "curves.png"))},
                "verdict": {"learned_final_mean": 0.4, "best_baseline": "sgd",
                            "best_baseline_final_mean": 0.5,
                            "beats_every_baseline_at_final_step": True},
                "wall_time_s": 1.0, "peak_rss_gb": 0.1}

    monkeypatch.setattr(job, "run_train_job", fake_run)
    monkeypatch.setitem(job.TRAIN_CONFIGS, "quick", TrainJobConfig(TrainConfig.tiny()))
    assert cli.main(["train", "--config", "quick", "--out", str(out)]) == 0
    wrote = next(line for line in capsys.readouterr().out.splitlines()
                 if line.startswith("wrote "))
    for name in ("results.json", "summary.csv", "curves.png", "policy.metaopt",
                 "training_log.json", "training_log.png"):
        assert str(out / name) in wrote


def test_eval_writes_the_report_and_matches_the_train_jobs_evaluation(
        capsys, tmp_path, policy_file, baselines_file):
    out = tmp_path / "eval"
    assert cli.main(["eval", "--policy", str(policy_file), *TINY, "--baselines", "sgd",
                     "--baselines-file", str(baselines_file), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "| learned_gps | {} |" in captured.out and '| sgd | {"learning_rate": 0.3} |' in captured.out
    assert "tuned on this very task" in captured.err
    doc = json.loads((out / "results.json").read_text())
    assert doc["eval_steps"] == [0, 5]
    assert set(doc["optimizers"]) == {"learned_gps", "sgd"}
    for row in doc["optimizers"].values():
        curve = np.asarray(row["true_loss"])
        assert curve.shape == (1, 2) and np.all(np.isfinite(curve))
        assert all(math.isfinite(row[k]) for k in ("final_mean", "auc_mean"))
    assert doc["optimizers"]["sgd"]["hyperparams"] == {"learning_rate": 0.3}
    assert doc["meta"]["policy"]["path"] == str(policy_file)
    assert doc["meta"]["true_objective_on"].startswith("full training split")
    verdict = doc["meta"]["verdict"]
    finals = {n: r["final_mean"] for n, r in doc["optimizers"].items()}
    assert verdict["beats_every_baseline_at_final_step"] == (finals["learned_gps"] < finals["sgd"])
    assert (out / "summary.csv").read_text().startswith("optimizer,hyperparams,final_mean")
    assert (out / "curves.png").read_bytes()[:8] == PNG_MAGIC

    # The train job's evaluation of the same policy on the same task: the same numbers.
    train = TrainConfig(dataset="digits", widths=(8, 8, 10), batch_size=64, horizon=5)
    reference = job.evaluate_against_baselines(
        metaopt.load(policy_file), TrainJobConfig(train, eval_seeds=(100,), eval_every=5,
                                                  baselines_file=str(baselines_file)),
        tmp_path / "reference", meta={})
    for name, curve in reference["curves"].items():
        np.testing.assert_array_equal(np.asarray(doc["optimizers"][name]["true_loss"]), curve)

    # `plot` re-renders the report's figure from results.json.
    (out / "curves.png").unlink()
    assert cli.main(["plot", str(out)]) == 0
    assert (out / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_eval_tunes_when_there_is_no_baselines_report(capsys, monkeypatch, tmp_path, policy_file):
    monkeypatch.chdir(tmp_path)      # no results/baselines/results.json here
    assert cli.main(["eval", "--policy", str(policy_file), *TINY, "--baselines", "sgd",
                     "--tuning-seeds", "0", "--out", "e"]) == 0
    assert "not found: tuning sgd on this task over seeds [0]" in capsys.readouterr().err
    row = json.loads((tmp_path / "e" / "results.json").read_text())["optimizers"]["sgd"]
    from metaopt.optimizers.baselines import BASELINES

    assert row["tuned_in"] == "this eval"
    assert row["hyperparams"] in BASELINES["sgd"].grid_points()
    assert np.all(np.isfinite(row["true_loss"]))


def test_resolve_baselines_modes(tmp_path, baselines_file):
    spec = eval_command.EvalSpec(dataset="digits", input_dim=8, hidden=(8,), num_steps=5,
                                 baselines_file=str(baselines_file))
    plan = eval_command.resolve_baselines(spec)
    assert plan["mode"] == "file" and plan["same_task"] and plan["names"] == ["sgd"]
    other = eval_command.resolve_baselines(
        eval_command.EvalSpec(dataset="fashion_mnist", baselines_file=str(baselines_file)))
    assert other["mode"] == "file" and not other["same_task"] and "another task" in other["note"]
    tuned = eval_command.resolve_baselines(
        eval_command.EvalSpec(tune=True, baselines=("adam",), baselines_file=str(baselines_file)))
    assert tuned["mode"] == "tune" and tuned["names"] == ["adam"] and not tuned["settings"]
    with pytest.raises(FileNotFoundError, match="metaopt baselines"):
        eval_command.resolve_baselines(
            eval_command.EvalSpec(baselines_file=str(tmp_path / "none.json")), file_required=True)


def test_schedule_horizon_follows_the_eval_steps(tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"meta": {"config": TINY_TASK}, "optimizers": {
        "adam_cosine": {"hyperparams": {"learning_rate": 0.03, "decay_steps": 400}}}}))
    plan = eval_command.resolve_baselines(eval_command.EvalSpec(num_steps=800,
                                                                baselines_file=str(path)))
    assert plan["settings"]["adam_cosine"]["hyperparams"] == {"learning_rate": 0.03,
                                                              "decay_steps": 800}


def test_plot_marks_the_shipped_policy_when_the_plot_can(capsys, monkeypatch, tmp_path,
                                                         policy_file):
    run = tmp_path / "run"
    run.mkdir()
    metaopt.save(run / "policy.metaopt", metaopt.load(policy_file),
                 metadata={"chosen": "iteration 2"})
    (run / "training_log.json").write_text(json.dumps({"entries": [_entry(0), _entry(1)]}))
    calls = []

    def spy(path, log, *, chosen_iteration=None):
        calls.append((path, [e["iteration"] for e in log], chosen_iteration))

    monkeypatch.setattr(job, "plot_training_log", spy)
    assert cli.main(["plot", str(run)]) == 0
    assert calls == [(run / "training_log.png", [0, 1], 2)]


def test_pretrained_is_the_shipped_policy():
    from metaopt.pretrained import pretrained_path

    theta, info = eval_command.load_policy("pretrained")
    assert info["path"] == pretrained_path() and len(info["sha256"]) == 64
    jax.tree.map(np.testing.assert_array_equal, theta, metaopt.pretrained())
    theta, info = eval_command.load_policy("paper-lstm")
    assert info["path"].endswith("paper_lstm.metaopt")
    jax.tree.map(np.testing.assert_array_equal, theta, metaopt.pretrained.paper_lstm())


def test_out_checks_permission_and_another_jobs_report(capsys, no_work, monkeypatch, tmp_path,
                                                       policy_file, baselines_file):
    run = tmp_path / "train"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"meta": {"job": "train"}}))
    argv = ["eval", "--policy", str(policy_file), *TINY, "--baselines-file", str(baselines_file)]
    _fails_in_one_line(capsys, [*argv, "--out", str(run)], "`metaopt train` run",
                       "would overwrite", "pass another --out")
    _fails_in_one_line(capsys, ["baselines", "--config", "quick", "--out", str(run)],
                       "`metaopt train` run")
    monkeypatch.setattr(cli.os, "access", lambda *args: False)   # as a non-root user would see
    _fails_in_one_line(capsys, [*argv, "--out", str(tmp_path / "new")],
                       f"no permission to write in {tmp_path}", "pass a folder you can write")
