"""Tune all hand-designed baselines on a task and write their evaluation curves (the `baselines` job)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from tqdm.auto import tqdm

from metaopt.configs import BaselineSuiteConfig
from metaopt.evaluation.report import write_report
from metaopt.evaluation.tuning import run_grid, tune
from metaopt.evaluation.unroll import eval_steps
from metaopt.optimizers.baselines import BASELINES
from metaopt.tasks import dataset_task


def run_baseline_suite(config: BaselineSuiteConfig, out_dir: str | Path) -> dict:
    """Tunes each baseline on ``config``'s task, re-runs the best setting on held-out seeds, and
    writes ``results.json``, ``summary.csv`` and ``curves.png`` into ``out_dir``.

    Returns the paths written and the wall time.
    """
    start = time.perf_counter()
    task = dataset_task(config.dataset, input_dim=config.input_dim, hidden=config.hidden,
                        batch_size=config.batch_size, activation=config.activation, l2=config.l2,
                        eval_subset=config.eval_subset, projection_seed=config.projection_seed)
    steps = eval_steps(config.num_steps, config.eval_every)
    curves, details = {}, {}
    for name in (bar := tqdm(config.baselines, desc="baselines", unit="opt")):
        bar.set_postfix_str(name)
        spec = BASELINES[name]
        t0 = time.perf_counter()
        # A horizon hyperparameter (decay_steps) is set to the run's steps, not tuned.
        result = tune(spec.factory, spec.grid_points(num_steps=config.num_steps), task,
                      config.tuning_seeds, num_steps=config.num_steps,
                      eval_every=config.eval_every, grid_batch_size=config.grid_batch_size)
        held_out = run_grid(spec.factory, [result.best], task, config.eval_seeds,
                            num_steps=config.num_steps, eval_every=config.eval_every)[0]
        curves[name] = held_out
        details[name] = {
            "description": spec.description,
            "hyperparams": result.best,
            "at_grid_edge": _at_grid_edge(result.best, spec.grid),
            "grid": result.grid,
            "grid_scores": [float(s) for s in result.scores],
            "tuning_final_mean": float(result.scores[result.best_index]),
            "seconds": round(time.perf_counter() - t0, 2),
        }
    wall = time.perf_counter() - start
    widths = "-".join(map(str, task.widths))
    meta = {
        "job": "baselines",
        "config": dataclasses.asdict(config),
        "task": f"{widths} {config.activation} MLP on {config.dataset} projected to "
                f"{config.input_dim} dims, minibatch {config.batch_size}, l2 {config.l2}",
        "true_objective_on": task.eval_description,
        "wall_time_s": round(wall, 1),
        "tuning": "grid search, lowest mean final true objective over tuning_seeds; curves on eval_seeds",
    }
    paths = write_report(out_dir, curves=curves, steps=steps, details=details, meta=meta,
                         title=f"Tuned baselines: {widths} on {config.dataset}, minibatch "
                               f"{config.batch_size} (mean ± std, {len(config.eval_seeds)} seeds)")
    return {"paths": paths, "wall_time_s": wall, "curves": curves, "details": details}


def _at_grid_edge(best: dict, grid: dict) -> bool:
    """Whether a tuned value sits at an end of its grid (then the grid may be too narrow).

    Only the tuned knobs (the keys of ``grid``) count; a fixed one such as ``decay_steps`` does not.
    """
    return any(k in grid and len(grid[k]) > 1 and v in (min(grid[k]), max(grid[k]))
               for k, v in best.items())
