"""The ``metaopt eval`` job: a policy file (or the shipped one) against baselines on one task.

``run_eval(theta, spec, out_dir, ...)`` runs the deterministic mean of a policy
(``metaopt.learned_opt``) and the chosen hand-designed baselines on ``spec``'s task and held-out
seeds, and writes ``results.json``, ``summary.csv`` and ``curves.png`` (``write_report``).

It is the train job's evaluation (``metaopt.training.job.evaluate_against_baselines``) made a
command of its own: the same task (the whole training split as the true objective, ``eval_subset
None``), the same ``run_grid`` calls, the same seeds and the same verdict. With the defaults
(``EvalSpec()``: MNIST projected to 48 dims, a 48-48-10 ReLU net, minibatch 64, 400 steps, seeds
100-104, the baselines of ``results/baselines/results.json``) it reproduces the held-out table of
``metaopt train --config paper`` for the same policy file.

The baselines' hyperparameters (``resolve_baselines``) come either from a ``metaopt baselines``
report, as tuned there (the paper's protocol on a test task: hand-designed optimizers keep the
settings tuned on the training objective, as the learned one keeps its weights; a schedule's
horizon is set to this run's steps), or, with ``tune``, from a grid search on this task over
``tuning_seeds`` (never the evaluation seeds).

Example::

  spec = EvalSpec(dataset="digits", input_dim=8, hidden=(8,), num_steps=20, seeds=(100,))
  plan = resolve_baselines(spec)                 # reads/validates before any run
  run_eval(metaopt.pretrained(), spec, "/tmp/eval", plan=plan)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from metaopt.evaluation.tuning import DEFAULT_BASELINES_FILE
from metaopt.optimizers.baselines import BASELINES

LEARNED = "learned_gps"          # the same name as the train job's report
PRETRAINED = "pretrained"          # the shipped policy, learned_opt()'s default (metaopt.pretrained())
SCALE_FREE = "scale-free"          # another name for it (metaopt.pretrained.scale_free())
PAPER_LSTM = "paper-lstm"          # the paper's GPS-trained LSTM (metaopt.pretrained.paper_lstm())
# What a baselines report's config must share with the eval task for its hyperparameters to count
# as tuned on this task (the keys the train job checks, plus the horizon).
_TASK_KEYS = ("dataset", "input_dim", "hidden", "batch_size", "num_steps", "l2", "activation",
              "projection_seed")


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """The task, seeds and baselines of one evaluation.

    Attributes:
      dataset: a name of ``metaopt.data.available_datasets()``.
      input_dim, hidden: the net is ``input_dim``-``hidden``-C (C = the dataset's classes); the
        inputs are a fixed random projection (``projection_seed``) of the pixels, standardised.
      batch_size: minibatch of f̂.
      num_steps, eval_every: horizon and true-objective period (``num_steps % eval_every == 0``).
      seeds: held-out seeds (initialisation and minibatch order).
      baselines: names in ``BASELINES``; ``None``: every baseline of the report (or all of
        ``BASELINES`` when tuning).
      tune: tune the baselines on this task over ``tuning_seeds`` instead of reading
        ``baselines_file``.
    """

    dataset: str = "mnist"
    input_dim: int = 48
    hidden: tuple[int, ...] = (48,)
    batch_size: int = 64
    num_steps: int = 400
    eval_every: int = 10
    seeds: tuple[int, ...] = (100, 101, 102, 103, 104)
    activation: str = "relu"
    l2: float = 5e-4
    projection_seed: int = 0
    baselines: tuple[str, ...] | None = None
    tune: bool = False
    tuning_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    baselines_file: str = DEFAULT_BASELINES_FILE

    def task_config(self) -> dict[str, Any]:
        """The entries a ``metaopt baselines`` report records for its task."""
        return {"dataset": self.dataset, "input_dim": self.input_dim, "hidden": list(self.hidden),
                "batch_size": self.batch_size, "num_steps": self.num_steps, "l2": self.l2,
                "activation": self.activation, "projection_seed": self.projection_seed}

    @property
    def net(self) -> str:
        return "-".join(map(str, (self.input_dim, *self.hidden))) + "-C"


def check_spec(spec: EvalSpec) -> None:
    """Raises ``ValueError`` (one line, with the valid choices) for anything that cannot run."""
    from metaopt.data import available_datasets
    from metaopt.data.datasets import TFD_UNAVAILABLE
    from metaopt.tasks import ACTIVATIONS

    def positive(name, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")

    for name in ("input_dim", "batch_size", "num_steps", "eval_every"):
        positive(name, getattr(spec, name))
    for name in ("hidden", "seeds"):
        if not getattr(spec, name):
            raise ValueError(f"{name} needs at least one value.")
    for h in spec.hidden:
        positive("every hidden width", h)
    for seed in (*spec.seeds, *(spec.tuning_seeds if spec.tune else ())):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seeds must be non-negative integers, got {seed!r}.")
    if spec.num_steps % spec.eval_every:
        raise ValueError(f"steps ({spec.num_steps}) must be a multiple of eval_every "
                         f"({spec.eval_every}).")
    if spec.dataset == "tfd":
        raise ValueError(TFD_UNAVAILABLE)
    if spec.dataset not in available_datasets():
        raise ValueError(f"unknown dataset {spec.dataset!r}; choose one of "
                         f"{', '.join(available_datasets())}.")
    if spec.activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {spec.activation!r}; choose one of "
                         f"{', '.join(sorted(ACTIVATIONS))}.")
    unknown = [n for n in spec.baselines or () if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(BASELINES)}.")
    if spec.tune and not spec.tuning_seeds:
        raise ValueError("tuning_seeds needs at least one seed.")


def load_policy(source: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """θ from a policy file, or a shipped one (``"pretrained"`` or ``"scale-free"``:
    ``learned_opt()``'s default, ``"paper-lstm"``: the paper's GPS-trained LSTM); and where it
    came from.

    Raises:
      FileNotFoundError: no such file (with what to pass instead).
      metaopt.PolicyFileError: not a readable policy file.
    """
    from metaopt.pretrained import paper_lstm, paper_lstm_path, pretrained, pretrained_path
    from metaopt.serialization import PolicyFileError, load

    if os.fspath(source) in (PRETRAINED, SCALE_FREE):
        path = pretrained_path()
        theta = pretrained()
    elif os.fspath(source) == PAPER_LSTM:
        path = paper_lstm_path()
        theta = paper_lstm()
    else:
        path = os.fspath(source)
        if os.path.isdir(path):
            raise PolicyFileError(
                f"{path} is a directory, not a policy file: pass the policy.metaopt inside a "
                f"training run (e.g. {os.path.join(path, 'policy.metaopt')}) or `pretrained`.")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"no policy file {path}: pass a file written by metaopt.save (a training run's "
                "policy.metaopt, e.g. results/train/policy.metaopt) or `pretrained` for the "
                "shipped policy.")
        theta = load(path)
    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    return theta, {"source": os.fspath(source), "path": path, "sha256": digest}


def resolve_baselines(spec: EvalSpec, *, file_required: bool = False) -> dict[str, Any]:
    """Where each baseline's hyperparameters come from, decided (and files read) before any run.

    Without ``spec.tune``: the rows of ``spec.baselines_file`` (a ``metaopt baselines`` report)
    when it exists; when it does not, tuning on this task unless ``file_required``.

    Returns:
      ``{"mode": "file" | "tune", "note": str, "settings": name → details}``; with mode "file"
      each details dict holds ``hyperparams`` (a schedule's horizon set to ``spec.num_steps``),
      ``tuned_in`` and ``tuning_final_mean``.

    Raises:
      FileNotFoundError: ``file_required`` and no report (with the command that writes one).
      ValueError: a requested baseline is not in the report (with the fix).
    """
    from metaopt.evaluation.tuning import read_tuned_baselines

    path = Path(spec.baselines_file)
    if not spec.tune and not path.is_file() and not file_required:
        names = spec.baselines or tuple(BASELINES)
        return {"mode": "tune", "names": list(names), "settings": {},
                "note": f"{path} not found: tuning {', '.join(names)} on this task over seeds "
                        f"{list(spec.tuning_seeds)} (write the report with `metaopt baselines "
                        f"--config paper --out {path.parent}` to reuse its settings instead)."}
    if spec.tune:
        names = spec.baselines or tuple(BASELINES)
        return {"mode": "tune", "names": list(names), "settings": {},
                "note": f"tuning {', '.join(names)} on this task over seeds "
                        f"{list(spec.tuning_seeds)} (--tune)."}
    try:
        rows = read_tuned_baselines(path, {}, purpose="the baselines `metaopt eval` runs")
        import json

        tuned_on = json.loads(path.read_text()).get("meta", {}).get("config", {})
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a readable `metaopt baselines` report ({err}); rewrite "
                         "it with `metaopt baselines` or pass --tune.") from err
    available = [n for n in rows if n in BASELINES]
    names = spec.baselines or tuple(available)
    missing = [n for n in names if n not in rows]
    if missing:
        raise ValueError(f"{path} has no tuned {', '.join(missing)} (it has "
                         f"{', '.join(available)}); choose among those or pass --tune to tune on "
                         "this task.")
    same_task = {k: tuned_on.get(k) for k in _TASK_KEYS} == spec.task_config()
    settings = {}
    for name in names:
        hp = dict(rows[name]["hyperparams"])
        horizon = BASELINES[name].horizon
        if horizon:    # a practitioner's schedule spans the run they do (figures' protocol)
            hp[horizon] = spec.num_steps
        settings[name] = {"hyperparams": hp, "tuned_in": str(path),
                          "tuning_final_mean": rows[name].get("tuning_final_mean")}
    where = ("tuned on this very task" if same_task else
             f"tuned on another task ({_describe(tuned_on)}), kept as tuned: the paper's protocol "
             "for a test task; pass --tune to tune on this one")
    return {"mode": "file", "names": list(names), "settings": settings, "same_task": same_task,
            "tuned_on": {k: tuned_on.get(k) for k in _TASK_KEYS},
            "note": f"baseline hyperparameters from {path}, {where}."}


def _describe(cfg: dict) -> str:
    hidden = "-".join(map(str, cfg.get("hidden") or []))
    return (f"{cfg.get('dataset')} {cfg.get('input_dim')}-{hidden}-C, minibatch "
            f"{cfg.get('batch_size')}, {cfg.get('num_steps')} steps")


def eval_task(spec: EvalSpec):
    """The task: what ``job.evaluation_task`` builds for a training config of the same task (the
    true objective on the whole training split)."""
    from metaopt.tasks import dataset_task

    return dataset_task(spec.dataset, input_dim=spec.input_dim, hidden=spec.hidden,
                        batch_size=spec.batch_size, activation=spec.activation, l2=spec.l2,
                        eval_subset=None, projection_seed=spec.projection_seed)


def run_eval(theta, spec: EvalSpec, out_dir: str | os.PathLike, *, plan: dict[str, Any],
             policy_info: dict[str, Any] | None = None, task=None,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Curves of θ's mean and each baseline of ``plan`` on ``spec.seeds``; writes the report.

    Returns:
      ``{"paths", "curves", "verdict", "wall_time_s"}``.
    """
    from metaopt.evaluation.report import write_report
    from metaopt.evaluation.tuning import tune
    from metaopt.evaluation.unroll import eval_steps

    say = progress or (lambda _: None)
    start = time.perf_counter()
    task = eval_task(spec) if task is None else task
    steps = eval_steps(spec.num_steps, spec.eval_every)
    grid = dict(num_steps=spec.num_steps, eval_every=spec.eval_every)
    settings = dict(plan["settings"])
    if plan["mode"] == "tune":
        for name in plan["names"]:
            spec_b = BASELINES[name]
            say(f"{name}: tuning over seeds {list(spec.tuning_seeds)}")
            result = tune(spec_b.factory, spec_b.grid_points(num_steps=spec.num_steps), task,
                          spec.tuning_seeds, **grid)
            settings[name] = {"hyperparams": result.best, "tuned_in": "this eval",
                              "tuning_final_mean": float(result.scores[result.best_index])}
    from metaopt.mlp_policy import is_mlp_policy

    kind = ("scale-free MLP policy" if is_mlp_policy(theta)
            else "per-coordinate LSTM policy (the paper's features)")
    curves, details = learned_and_baseline_curves(
        theta, {n: settings[n] for n in plan["names"]}, task, spec.seeds,
        description=f"{kind}, deterministic mean (learned_opt); the column keeps the train "
                    "job's name", progress=say, **grid)
    if policy_info:
        details[LEARNED]["policy"] = policy_info
    verdict = verdict_of(curves)
    widths = "-".join(map(str, task.widths))
    wall = time.perf_counter() - start
    meta = {
        "job": "eval",
        "spec": dataclasses.asdict(spec),
        "policy": policy_info or {},
        "baselines": {"mode": plan["mode"], "note": plan["note"],
                      **({"tuned_on": plan["tuned_on"]} if "tuned_on" in plan else {})},
        "task": f"{widths} {spec.activation} MLP on {spec.dataset} projected to "
                f"{spec.input_dim} dims, minibatch {spec.batch_size}, l2 {spec.l2}",
        "true_objective_on": task.eval_description,
        "eval_seeds": list(spec.seeds),
        "verdict": verdict,
        "wall_time_s": round(wall, 1),
    }
    title = report_title(widths, spec.num_steps, len(spec.seeds), spec.dataset)
    meta["title"] = title     # what `metaopt plot` draws again
    paths = write_report(out_dir, curves=curves, steps=steps, details=details, meta=meta,
                         title=title)
    return {"paths": paths, "curves": curves, "verdict": verdict,
            "wall_time_s": time.perf_counter() - start}


def learned_and_baseline_curves(theta, settings: dict[str, dict], task, seeds, *, num_steps: int,
                                eval_every: int, description: str,
                                progress: Callable[[str], None] | None = None):
    """Curves of θ's deterministic mean (as ``LEARNED``) and of each baseline at its
    ``settings[name]["hyperparams"]`` on ``seeds``; the train job's evaluation and ``run_eval``.

    Returns:
      ``(curves, details)``: name → ``(len(seeds), num_evals)``, and name → the JSON facts of
      the report (description, then everything in ``settings[name]``).
    """
    from metaopt.evaluation.tuning import run_grid
    from metaopt.learned_optimizer import learned_opt

    say = progress or (lambda _: None)
    grid = dict(num_steps=num_steps, eval_every=eval_every)
    say(f"{LEARNED}: {len(seeds)} seed(s) × {num_steps} steps")
    curves = {LEARNED: run_grid(lambda: learned_opt(theta), [{}], task, seeds, **grid)[0]}
    details = {LEARNED: {"description": description, "hyperparams": {}}}
    for name, setting in settings.items():
        spec = BASELINES[name]
        say(f"{name}: {len(seeds)} seed(s)")
        curves[name] = run_grid(spec.factory, [setting["hyperparams"]], task, seeds, **grid)[0]
        details[name] = {"description": spec.description, **setting}
    return curves, details


def verdict_of(curves: dict[str, np.ndarray]) -> dict[str, Any]:
    """Mean final f of ``LEARNED`` against the best baseline (a diverged one never is best)."""
    finals = {n: float(np.mean(c[:, -1])) for n, c in curves.items()}
    rivals = {n: v for n, v in finals.items() if n != LEARNED}
    best = min(rivals, key=lambda n: rivals[n] if np.isfinite(rivals[n]) else np.inf,
               default=None)
    return {
        "learned_final_mean": finals[LEARNED],
        "best_baseline": best,
        "best_baseline_final_mean": rivals.get(best),
        "beats_every_baseline_at_final_step": bool(
            rivals and all(finals[LEARNED] < v for v in rivals.values())),
    }


def report_title(widths: str, num_steps: int, num_seeds: int, dataset: str | None) -> str:
    return (f"Learned optimizer vs baselines: {widths} on {dataset or 'synthetic data'}, "
            f"{num_steps} steps (mean ± std, {num_seeds} held-out seeds)")


def replot_curves(results_json: str | os.PathLike, png: str | os.PathLike) -> Path:
    """Re-renders ``curves.png`` from a ``write_report`` ``results.json`` (``metaopt plot``).

    Raises:
      ValueError: the file is not such a report (with what it lacks).
    """
    import json

    from metaopt.evaluation.report import plot_curves

    path = Path(results_json)
    try:
        doc = json.loads(path.read_text())
        steps = [int(s) for s in doc["eval_steps"]]
        curves = {name: np.asarray(row["true_loss"], np.float64)
                  for name, row in doc["optimizers"].items()}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a metaopt report (results.json with eval_steps and "
                         f"optimizers[*].true_loss): {type(err).__name__} {err}") from err
    bad = [n for n, c in curves.items() if c.ndim != 2 or c.shape[1] != len(steps)]
    if not curves or bad:
        raise ValueError(f"{path}: curves {bad or '(none)'} do not match eval_steps "
                         f"({len(steps)} points).")
    meta = doc.get("meta", {})
    seeds = meta.get("eval_seeds") or []
    title = meta.get("title") or (f"{meta.get('job', 'run')}: {meta.get('task', path.parent.name)},"
                                  f" {steps[-1]} steps (mean ± std, {len(seeds) or 'all'} seeds)")
    plot_curves(png, curves, steps, title, meta=meta)
    return Path(png)


__all__ = ["DEFAULT_BASELINES_FILE", "LEARNED", "PAPER_LSTM", "PRETRAINED", "SCALE_FREE", "EvalSpec",
           "check_spec", "eval_task", "learned_and_baseline_curves", "load_policy",
           "replot_curves", "resolve_baselines", "run_eval", "verdict_of"]
