"""Running optimizers over seeds and hyperparameter grids, and picking the best setting.

A grid of hyperparameters is run as one compiled program: the optimizer is rebuilt from traced
hyperparameters inside ``jax.vmap`` (over seeds) and ``lax.map`` (over grid points, in batches so
memory stays bounded). Integer hyperparameters (Python ints, e.g. a schedule's ``decay_steps``) are
structural, not traced: they are passed to the factory as ints, one compiled program per distinct
value. Tuning chooses the setting with the lowest mean final true objective on the
training task; diverged runs (NaN or inf) score +inf.

Example::

  spec = BASELINES["adam"]
  result = tune(spec.factory, spec.grid_points(num_steps=400), task, seeds=range(5), num_steps=400)
  result.best, result.scores
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt.evaluation.unroll import check_schedule, unroll

# Where `metaopt baselines --config paper` writes the baselines tuned on the training task.
DEFAULT_BASELINES_FILE = "results/baselines/results.json"


class TuningResult(NamedTuple):
    """Attributes:
    grid: the hyperparameter settings tried, in order.
    curves: ``(len(grid), num_seeds, num_evals)`` true objective curves.
    scores: ``(len(grid),)`` mean final true objective (+inf where any seed diverged).
    best_index: index of the chosen setting.
    """

    grid: list[dict[str, float]]
    curves: np.ndarray
    scores: np.ndarray
    best_index: int

    @property
    def best(self) -> dict[str, float]:
        return self.grid[self.best_index]

    @property
    def best_curves(self) -> np.ndarray:
        return self.curves[self.best_index]


def seed_keys(seeds: Sequence[int]) -> jax.Array:
    return jnp.stack([jax.random.key(int(s)) for s in seeds])


def run_grid(
    factory: Callable[..., optax.GradientTransformation],
    grid: Sequence[dict[str, float]],
    task: Any,
    seeds: Sequence[int],
    *,
    num_steps: int,
    eval_every: int = 10,
    grid_batch_size: int | None = 4,
) -> np.ndarray:
    """True-objective curves of ``factory(**point)`` for every grid point and seed.

    Float hyperparameters are traced (one program for the grid); integer ones (Python or NumPy
    ints, bools) are passed as they are, static: points that differ in them run as separate
    programs.

    Returns:
      ``(len(grid), len(seeds), num_steps // eval_every + 1)`` float array.
    """
    check_schedule(num_steps, eval_every)
    if not grid or not seeds:
        raise ValueError("run_grid needs at least one grid point and one seed.")
    names = sorted(grid[0])
    if not names and len(grid) > 1:
        raise ValueError("a grid without hyperparameters has exactly one point: pass [{}].")
    if any(sorted(p) != names for p in grid):
        raise ValueError(f"every grid point must set the same hyperparameters {names}.")
    groups: dict[tuple, list[int]] = {}
    for i, point in enumerate(grid):
        static = tuple((n, _static_value(point[n])) for n in names if _is_static(point[n]))
        groups.setdefault(static, []).append(i)
    keys = seed_keys(seeds)
    out: list[np.ndarray | None] = [None] * len(grid)
    for static, rows in groups.items():
        fixed = dict(static)
        traced = {n: jnp.asarray([float(grid[i][n]) for i in rows], jnp.float32)
                  for n in names if n not in fixed}
        curves = _run_points(factory, fixed, traced, len(rows), keys, task, num_steps=num_steps,
                             eval_every=eval_every, grid_batch_size=grid_batch_size)
        for i, c in zip(rows, curves, strict=True):
            out[i] = c
    return np.stack(out)


def _is_static(value) -> bool:
    return isinstance(value, numbers.Integral)  # int, bool, NumPy integers; not floats, arrays


def _static_value(value):
    return value if isinstance(value, bool) else int(value)


def _run_points(factory, fixed: dict, traced: dict, count: int, keys, task, *, num_steps: int,
                eval_every: int, grid_batch_size: int | None) -> np.ndarray:
    """``(count, len(keys), evals)`` curves: ``factory(**fixed, **traced[i])`` for each i."""

    @jax.jit
    def run(traced, keys, task):
        def one_setting(hp):
            tx = factory(**fixed, **hp)
            return jax.vmap(
                lambda k: unroll(tx, task, k, num_steps=num_steps, eval_every=eval_every).true_loss
            )(keys)

        if not traced:  # nothing traced: every point is the same setting
            curves = one_setting({})
            return jnp.broadcast_to(curves[None], (count, *curves.shape))
        return jax.lax.map(one_setting, traced, batch_size=grid_batch_size)

    return np.asarray(run(traced, keys, task))


def final_scores(curves: np.ndarray) -> np.ndarray:
    """Mean final true objective over seeds, ``+inf`` if any seed ended non-finite."""
    final = curves[..., -1]
    score = final.mean(axis=-1)
    return np.where(np.all(np.isfinite(final), axis=-1), score, np.inf)


def tune(
    factory: Callable[..., optax.GradientTransformation],
    grid: Sequence[dict[str, float]],
    task: Any,
    seeds: Sequence[int],
    *,
    num_steps: int,
    eval_every: int = 10,
    grid_batch_size: int | None = 4,
) -> TuningResult:
    """Runs the grid and picks the setting with the lowest mean final true objective."""
    curves = run_grid(factory, grid, task, seeds, num_steps=num_steps, eval_every=eval_every,
                      grid_batch_size=grid_batch_size)
    scores = final_scores(curves)
    return TuningResult(list(grid), curves, scores, int(np.argmin(scores)))


def read_tuned_baselines(path, expected: dict, *, purpose: str) -> dict[str, dict]:
    """The per-optimizer rows (``hyperparams``, …) of a ``metaopt baselines`` ``results.json``.

    Args:
      path: the report.
      expected: config entries the report must have been tuned with (e.g. ``{"dataset": "mnist"}``).
      purpose: what the caller needs it for; ends the error messages.

    Raises:
      FileNotFoundError: no report, with the command that writes it.
      ValueError: it was tuned with other ``expected`` entries (file value, expected value).
    """
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run `metaopt baselines --config paper --out {path.parent}` first "
            f"(≈ 5 min on 2 cores): {purpose}.")
    doc = json.loads(path.read_text())
    cfg = doc.get("meta", {}).get("config", {})
    mismatch = {k: (cfg.get(k), v) for k, v in expected.items() if cfg.get(k) != v}
    if mismatch:
        raise ValueError(f"{path} was tuned on another task than {purpose}: {mismatch} "
                         "(file, expected).")
    return doc["optimizers"]
