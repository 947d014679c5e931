"""The generalisation suite (issue 17): held-out tasks, baselines tuned on each of them.

The paper's protocol tunes the baselines on the training objective only, which flatters a learned
optimizer on a test task: a user compares against a baseline tuned on their own task. So every
task of the suite has two baseline columns:

* **tuned on the training objective** (the paper's protocol): the settings of
  ``results/baselines/results.json`` (SGD, momentum, Adam, AdaGrad, RMSprop, and momentum and Adam
  with a cosine decay over the task's horizon);
* **tuned on the test task itself**: Adam and momentum, each with a constant learning rate and
  with cosine decay, the learning rate (momentum's μ = 0.9: lr/(1−μ) spans the effective
  step) chosen by the lowest mean
  final f over tuning seeds 0-4, reported on the held-out seeds 100-104.

The tasks: every offline dataset (digits, Fashion-MNIST) of Figs 1-5, and held-out nets unlike the
training net (other depths, widths and activations, other minibatch sizes, longer horizons). The
training dataset (MNIST) is not among them. f is measured on a fixed subset of each training
split (``EVAL_SUBSET`` examples) to keep the suite within minutes on 2 CPU cores.

Example::

  rows = [evaluate_task(t, {"family": family_factory}) for t in suite_tasks()]
  print(markdown_table(rows, "family", ["single_task"]))
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from metaopt.evaluation.figures import FIGURES, over_horizon, tuned_baselines
from metaopt.evaluation.tuning import final_scores, run_grid
from metaopt.optimizers.baselines import BASELINES

__all__ = ["EVAL_SUBSET", "HELD_OUT", "SuiteTask", "TEST_TUNED_GRIDS", "evaluate_task",
           "markdown_table", "score_curves", "suite_tasks", "summary_counts"]

EVAL_SUBSET = 5000
TUNING_SEEDS = (0, 1, 2, 3, 4)
EVAL_SEEDS = (100, 101, 102, 103, 104)
_RATES = tuple(float(f"{10 ** (e / 2):.3g}") for e in range(-8, 1))      # 1e-4 … 1, ×√10
TEST_TUNED_GRIDS: dict[str, list[dict]] = {
    "adam": [{"learning_rate": lr} for lr in _RATES[:7]],
    "adam_cosine": [{"learning_rate": lr} for lr in _RATES[:7]],
    "momentum": [{"learning_rate": lr, "momentum": 0.9} for lr in _RATES[1:]],
    "momentum_cosine": [{"learning_rate": lr, "momentum": 0.9} for lr in _RATES[1:]],
}


@dataclasses.dataclass(frozen=True)
class SuiteTask:
    """A test task: ``input_dim``-``hidden``-C MLP on ``dataset`` (projected), ``num_steps``."""

    name: str
    dataset: str
    input_dim: int = 48
    hidden: tuple[int, ...] = (48,)
    activation: str = "relu"
    batch_size: int = 64
    num_steps: int = 400
    eval_every: int = 10
    source: str = "held-out"

    def task(self, eval_subset: int | None = EVAL_SUBSET):
        from metaopt.tasks import dataset_task

        return dataset_task(self.dataset, input_dim=self.input_dim, hidden=self.hidden,
                            batch_size=self.batch_size, activation=self.activation,
                            eval_subset=eval_subset)


HELD_OUT = (
    SuiteTask("48-48-48-10 relu (2 hidden layers), digits, mb 64", "digits", hidden=(48, 48)),
    SuiteTask("48-48-48-48-10 relu (3 hidden layers), fashion, mb 64", "fashion_mnist",
              hidden=(48, 48, 48)),
    SuiteTask("48-64-10 tanh, digits, mb 32", "digits", hidden=(64,), activation="tanh",
              batch_size=32),
    SuiteTask("48-128-10 tanh, fashion, mb 128", "fashion_mnist", hidden=(128,),
              activation="tanh", batch_size=128),
    SuiteTask("48-48-10 relu, fashion, mb 5", "fashion_mnist", batch_size=5),
    SuiteTask("48-48-10 relu, digits, mb 64, 2000 steps", "digits", num_steps=2000,
              eval_every=50),
    SuiteTask("100-200-10 gelu, fashion, mb 32, 1000 steps", "fashion_mnist", input_dim=100,
              hidden=(200,), activation="gelu", batch_size=32, num_steps=1000, eval_every=25),
)


def suite_tasks(datasets: Sequence[str] = ("digits", "fashion_mnist")) -> list[SuiteTask]:
    """Figs 1-5 on ``datasets``, then ``HELD_OUT``."""
    tasks = []
    for fig, spec in FIGURES.items():
        for ds in datasets:
            net = "-".join(map(str, (spec.input_dim, *spec.hidden))) + "-10"
            tasks.append(SuiteTask(
                f"{fig}: {net} {spec.activation}, {ds.replace('_mnist', '')}, mb "
                f"{spec.batch_size}, {spec.num_steps} steps", ds, spec.input_dim, spec.hidden,
                spec.activation, spec.batch_size, spec.num_steps, spec.eval_every, fig))
    return tasks + list(HELD_OUT)


def score_curves(curves) -> dict:
    """Final f (mean and standard error over seeds), area (mean of the curve), seeds whose final
    f is not below their start; +inf where any seed is non-finite."""
    curves = np.asarray(curves, np.float64)
    final = curves[:, -1]
    finite = bool(np.all(np.isfinite(curves)))
    return {"final": float(final.mean()) if finite else math.inf,
            "final_se": float(final.std(ddof=1) / math.sqrt(len(final)))
            if finite and len(final) > 1 else math.nan,
            "area": float(curves.mean()) if finite else math.inf,
            "ends_above_start": int(np.sum(~(final < curves[:, 0])))}


def evaluate_task(spec: SuiteTask, learned: Mapping[str, Callable], *, task=None,
                  training_tuned: Mapping[str, dict] | None = None,
                  test_grids: Mapping[str, list[dict]] = TEST_TUNED_GRIDS,
                  tuning_seeds: Sequence[int] = TUNING_SEEDS,
                  eval_seeds: Sequence[int] = EVAL_SEEDS, reuse: dict | None = None) -> dict:
    """Every optimizer's curves and scores on one test task.

    Args:
      learned: name → factory of a learned optimizer (``lambda: learned_opt(theta)``).
      training_tuned: baseline → hyperparameters tuned on the training objective (default:
        ``figures.tuned_baselines()``); their cosine horizons are set to ``spec.num_steps``.
      test_grids: baseline → grid tuned on this task over ``tuning_seeds``.
      reuse: an earlier result of this call (a ``table.json`` row): its baseline columns are kept
        when its ``protocol`` equals this call's (same task, settings, grids and seeds), so a new
        policy costs only its own runs.

    Returns:
      ``{"task", "source", "curves": {column: (seeds, evals)}, "scores": {column: score_curves},
      "hyperparams": {column: dict}, "at_grid_edge": [columns]}``; the columns are the learned
      names, ``"<baseline> (training)"`` and ``"<baseline> (this task)"``.
    """
    task = spec.task() if task is None else task
    training_tuned = tuned_baselines() if training_tuned is None else training_tuned
    training_tuned = {n: hp for n, hp in training_tuned.items()
                      if n in BASELINES and n not in ("lbfgs", "conjugate_gradient")}
    steps = dict(num_steps=spec.num_steps, eval_every=spec.eval_every)
    protocol = json.loads(json.dumps({
        "spec": dataclasses.asdict(spec), "training_tuned": training_tuned,
        "test_grids": test_grids, "tuning_seeds": tuning_seeds, "eval_seeds": eval_seeds}))
    curves, hyperparams, edge = {}, {}, []
    for name, factory in learned.items():
        curves[name] = run_grid(factory, [{}], task, eval_seeds, **steps)[0]
    if reuse is not None and reuse.get("protocol") == protocol:
        curves |= {n: np.asarray(c) for n, c in reuse["curves"].items() if n in reuse[
            "hyperparams"]}
        hyperparams, edge = dict(reuse["hyperparams"]), list(reuse["at_grid_edge"])
        training_tuned, test_grids = {}, {}
    for name in {**training_tuned, **test_grids}:
        # One program per baseline: its grid and its training-tuned setting, on the tuning and
        # the held-out seeds together (the choice reads the tuning seeds only).
        grid = [over_horizon({name: hp}, spec.num_steps)[name]
                for hp in test_grids.get(name, [])]
        trained = ([over_horizon(training_tuned, spec.num_steps)[name]]
                   if name in training_tuned else [])
        seeds = (tuple(tuning_seeds) if grid else ()) + tuple(eval_seeds)
        runs = run_grid(BASELINES[name].factory, grid + trained, task, seeds, **steps)
        held_out = runs[:, len(seeds) - len(eval_seeds):]
        if trained:
            curves[f"{name} (training)"] = held_out[-1]
            hyperparams[f"{name} (training)"] = trained[0]
        if grid:
            scores = final_scores(runs[:len(grid), :len(tuning_seeds)])
            best = int(np.argmin(scores))
            column = f"{name} (this task)"
            curves[column], hyperparams[column] = held_out[best], grid[best]
            rates = sorted({hp["learning_rate"] for hp in grid})
            if np.isfinite(scores[best]) and grid[best]["learning_rate"] in (rates[0],
                                                                            rates[-1]):
                edge.append(column)
    return {"task": spec.name, "source": spec.source, "protocol": protocol, "curves": curves,
            "scores": {n: score_curves(c) for n, c in curves.items()},
            "hyperparams": hyperparams, "at_grid_edge": edge}


def _best(scores: Mapping[str, dict], names, key: str) -> tuple[str, float]:
    name = min(names, key=lambda n: scores[n][key])
    return name, scores[name][key]


def compare(row: dict, policy: str) -> dict:
    """``policy`` against the row's best baseline of each column, in final f and area."""
    scores = row["scores"]
    training = [n for n in scores if n.endswith("(training)")]
    adam_here = [n for n in scores if n.startswith("adam") and n.endswith("(this task)")]
    any_here = [n for n in scores if n.endswith("(this task)")]
    own = scores[policy]
    out = {}
    for label, names in (("training", training), ("adam_here", adam_here), ("any_here", any_here)):
        for key in ("final", "area"):
            name, value = _best(scores, names, key)
            out[f"{label}_{key}"] = (name, value, own[key] < value, own[key] / value)
    return out


def summary_counts(rows: Sequence[dict], policy: str) -> dict:
    """How many tasks ``policy`` wins, by criterion (issue 17's 'done when')."""
    cmp = [compare(r, policy) for r in rows]
    fig_cmp = [c for c, r in zip(cmp, rows, strict=True) if r["source"].startswith("fig")]
    wins = lambda cs, k: sum(c[k][2] for c in cs)
    return {
        "tasks": len(rows), "figure_tasks": len(fig_cmp),
        "beats_all_training_tuned_final_on_figures": wins(fig_cmp, "training_final"),
        "beats_all_training_tuned_area_on_figures": wins(fig_cmp, "training_area"),
        "beats_test_tuned_adam_final": wins(cmp, "adam_here_final"),
        "beats_test_tuned_adam_area": wins(cmp, "adam_here_area"),
        "beats_every_test_tuned_final": wins(cmp, "any_here_final"),
        "seeds_above_start": sum(r["scores"][policy]["ends_above_start"] for r in rows),
    }


def markdown_table(rows: Sequence[dict], policy: str, others: Sequence[str] = ()) -> str:
    """One line per task: the policy's final f ± SE / area, the other learned ones, and the best
    baseline of each column with the policy's ratio to it (< 1 and ✓: the policy is better)."""
    head = (["task", f"{policy} final ± SE / area"] + [f"{o} final / area" for o in others]
            + ["best tuned on training: final / area (ratio)",
               "best Adam tuned on this task: final / area (ratio)",
               "best of all tuned on this task: final / area (ratio)", "seeds above start"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    short = lambda n: n.replace(" (training)", "").replace(" (this task)", "")
    for row in rows:
        s, c = row["scores"], compare(row, policy)
        own = s[policy]
        cells = [row["task"], f"{own['final']:.4g} ± {own['final_se']:.2g} / {own['area']:.4g}"]
        cells += [f"{s[o]['final']:.4g} / {s[o]['area']:.4g}" for o in others]
        for label in ("training", "adam_here", "any_here"):
            (nf, vf, wf, rf), (na, va, wa, ra) = c[f"{label}_final"], c[f"{label}_area"]
            mark = lambda won: " ✓" if won else ""
            cells.append(f"{short(nf)} {vf:.4g} ({rf:.2f}{mark(wf)}) / "
                         f"{short(na)} {va:.4g} ({ra:.2f}{mark(wa)})")
        cells.append(str(own["ends_above_start"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
