"""Optimizers over a *set* of objectives: curves, tuning on the training set, margin of victory.

``metaopt.evaluation.tuning`` vmaps an unroll over seeds of one task; the 2016 experiments need it
over objectives (a task pytree batched with a leading objective axis, one key per objective),
which is what this module adds. Shapes: O objectives, T steps, curves ``(O, T + 1)``.

Example::

  curves = family_curves(BASELINES["sgd"].factory, {"learning_rate": 0.1}, tasks, keys,
                         num_steps=40)                      # (O, 41)
  best = tune_on_family(BASELINES["sgd"], tasks, keys, num_steps=40)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metaopt.evaluation.unroll import unroll


def objective_keys(seed: int, count: int) -> jax.Array:
    """One key per objective; ``unroll`` draws x_0 from ``split(key)[0]``."""
    return jax.random.split(jax.random.key(seed), count)


@partial(jax.jit, static_argnames=("make_tx", "num_steps"))
def family_curves(make_tx: Callable[..., Any], hyperparams, tasks, keys, *,
                  num_steps: int) -> jax.Array:
    """f(x_t), t = 0..T, of ``make_tx(hyperparams)`` on every objective, ``(O, T + 1)``.

    ``hyperparams`` is a pytree (a dict of floats for the baselines, θ for a learned policy) passed
    as ``make_tx(**hyperparams)`` if it is a dict of scalars, else ``make_tx(hyperparams)``.
    """
    tx = _build(make_tx, hyperparams)
    return jax.vmap(lambda task, key: unroll(tx, task, key, num_steps=num_steps,
                                             eval_every=1).true_loss)(tasks, keys)


def _build(make_tx, hyperparams):
    if isinstance(hyperparams, Mapping) and all(
            not isinstance(v, Mapping) and np.ndim(v) == 0 for v in hyperparams.values()):
        return make_tx(**hyperparams)
    return make_tx(hyperparams)


@partial(jax.jit, static_argnames=("factory", "num_steps", "batch_size"))
def grid_curves(factory: Callable[..., Any], stacked: dict[str, jax.Array], tasks, keys, *,
                num_steps: int, batch_size: int = 4) -> jax.Array:
    """Curves for every grid point (``stacked``: name → ``(P,)``), ``(P, O, T + 1)``."""
    def one(hp):
        tx = factory(**hp)
        return jax.vmap(lambda task, key: unroll(tx, task, key, num_steps=num_steps,
                                                 eval_every=1).true_loss)(tasks, keys)

    return jax.lax.map(one, stacked, batch_size=batch_size)


def diverged(curves: np.ndarray) -> np.ndarray:
    """``(..., O)`` bool: final f non-finite or above f(x_0)."""
    curves = np.asarray(curves, np.float64)
    final, start = curves[..., -1], curves[..., 0]
    return ~np.isfinite(final) | (final > start)


def auc(curves: np.ndarray) -> np.ndarray:
    """Σ_t f(x_t) over t = 0..T by the trapezoid rule with unit steps, ``(..., O)``."""
    return np.trapezoid(np.asarray(curves, np.float64), axis=-1)


class TunedBaseline(NamedTuple):
    """Attributes: best (hyperparameters), grid, scores ``(P,)`` mean training AUC (inf where
    some run diverged), divergences ``(P,)``, train_curves ``(O, T + 1)`` at the best point."""

    best: dict[str, float]
    grid: list[dict[str, float]]
    scores: np.ndarray
    divergences: np.ndarray
    train_curves: np.ndarray


def tune_on_family(spec, tasks, keys, *, num_steps: int,
                   grid: Sequence[dict[str, float]] | None = None) -> TunedBaseline:
    """Pick the grid point with the fewest divergences on the training objectives, then the
    lowest mean AUC Σ_t f(x_t) (the meta-loss GPS minimises)."""
    grid = list(spec.grid_points() if grid is None else grid)
    names = sorted(grid[0])
    stacked = {n: jnp.asarray([float(p[n]) for p in grid], jnp.float32) for n in names}
    curves = np.asarray(grid_curves(spec.factory, stacked, tasks, keys, num_steps=num_steps),
                        np.float64)
    div = diverged(curves).sum(-1)
    areas = auc(curves)
    scores = np.where(np.isfinite(areas).all(-1), np.nanmean(np.where(np.isfinite(areas), areas,
                                                                      np.nan), -1), np.inf)
    order = np.lexsort((np.where(np.isfinite(scores), scores, np.inf), div))
    best = int(order[0])
    return TunedBaseline(grid[best], grid, scores, div, curves[best])


def _competitor_min(curves: Mapping[str, np.ndarray], exclude: str,
                    among: Sequence[str]) -> np.ndarray:
    others = [np.where(np.isfinite(curves[n]), curves[n], np.inf)
              for n in among if n != exclude]
    return np.min(np.stack(others), axis=0)


def margin_of_victory(curves: Mapping[str, np.ndarray], name: str,
                      among: Sequence[str]) -> np.ndarray:
    """f_name(x_t) − min over the other optimizers in ``among`` of f(x_t), ``(O, T + 1)``.

    Negative where ``name`` beats every competitor (our sign; the paper plots the opposite).
    A diverged (non-finite) competitor never counts as the best; a non-finite ``name`` gives +inf.
    """
    own = np.where(np.isfinite(curves[name]), curves[name], np.inf)
    with np.errstate(invalid="ignore"):
        return own - _competitor_min(curves, name, among)


def summary_row(curves: Mapping[str, np.ndarray], name: str,
                among: Sequence[str]) -> dict[str, float]:
    """Final f and AUC (mean ± std over the finite runs), divergences, win fraction, margin."""
    curve = np.asarray(curves[name], np.float64)
    final, area = curve[:, -1], auc(curve)
    ok = np.isfinite(final) & np.isfinite(area)
    margin = margin_of_victory(curves, name, among)[:, -1]
    finite_margin = margin[np.isfinite(margin)]
    return {
        "final_mean": float(final[ok].mean()) if ok.any() else float("nan"),
        "final_std": float(final[ok].std()) if ok.any() else float("nan"),
        "final_median": float(np.median(final[ok])) if ok.any() else float("nan"),
        "auc_mean": float(area[ok].mean()) if ok.any() else float("nan"),
        "auc_std": float(area[ok].std()) if ok.any() else float("nan"),
        "diverged": int(diverged(curve).sum()),
        "nonfinite": int((~np.isfinite(final)).sum()),
        "num_objectives": int(curve.shape[0]),
        "win_fraction": float(np.mean(margin <= 0)),
        "final_margin_mean": float(finite_margin.mean()) if finite_margin.size else float("nan"),
        "final_margin_median": float(np.median(finite_margin)) if finite_margin.size
        else float("nan"),
    }
