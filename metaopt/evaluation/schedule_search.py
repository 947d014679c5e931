"""Choose a learned optimizer's step schedule over a known horizon on training tasks (issue 17).

``metaopt.optimizers.horizon_schedule`` gives a step multiplier at K fractions of the horizon.
:func:`schedule_scores` runs a policy at many such K-vectors on a set of tasks (the knots are
traced: one program per task for all candidates); :func:`coordinate_search` picks the vector.
The search moves one knot at a time by ± a step in log, keeps the best candidate of each sweep
when it beats the incumbent and halves the step when none does. Both are used by
``experiments/schedule_selection.py`` on the training family's tuning seeds only.

Example::

  def score(candidates):        # (n, K) multipliers -> (n,) scores, lower is better
      return np.asarray([np.sum(np.log(c) ** 2) for c in candidates])
  result = coordinate_search(score, np.ones(5), sweeps=4)
  result["best"], result["score"]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metaopt.evaluation.tuning import seed_keys
from metaopt.evaluation.unroll import check_schedule, unroll
from metaopt.optimizers.horizon_schedule import check_multipliers, horizon_schedule

__all__ = ["coordinate_search", "criterion", "knot_scores", "schedule_scores"]

GRID_BATCH_SIZE = 4   # candidates run side by side (vmapped) within one program
_PROGRAMS: dict = {}


def _program(build: Callable, horizon: int, eval_every: int):
    """One jit-compiled ``(knots (n, K), keys, task) -> (n, seeds, evals)`` curves program per
    setting, kept across calls: a search scores the same tasks many times (``run_grid`` would
    compile again each call)."""
    key = (build, horizon, eval_every)
    if key not in _PROGRAMS:
        @jax.jit
        def run(knots, keys, task):
            def one(row):
                tx = build(row)
                return jax.vmap(lambda k: unroll(tx, task, k, num_steps=horizon,
                                                 eval_every=eval_every).true_loss)(keys)

            return jax.lax.map(one, knots, batch_size=GRID_BATCH_SIZE)

        _PROGRAMS[key] = run
    return _PROGRAMS[key]


def knot_scores(build: Callable, tasks: Sequence, candidates, *, horizon: int,
                seeds: Sequence[int], eval_every: int = 10) -> dict:
    """Final f and area of the optimizer ``build(row)`` per candidate row and task.

    Args:
      build: ``(K,)`` positive knots (traced) → an optax transformation; the same object on every
        call of a search (its compiled program is kept per ``build``).
      tasks: the tasks to score on (``metaopt.tasks`` objects).
      candidates: ``(n, K)`` positive knots, one optimizer per row.
      horizon: the number of steps of every run.

    Returns:
      ``{"final": (n, tasks), "area": (n, tasks)}`` means over ``seeds`` (area: the mean of the
      true-objective curve, as ``metaopt.evaluation.generalization`` scores it); +inf where any
      seed's curve is not finite.
    """
    candidates = np.atleast_2d(np.asarray(candidates, np.float64))
    for row in candidates:
        check_multipliers(row, owner="knot_scores")
    check_schedule(horizon, eval_every)
    run = _program(build, horizon, eval_every)
    knots, keys = jnp.asarray(candidates, jnp.float32), seed_keys(seeds)
    final, area = [], []
    for task in tasks:
        curves = np.asarray(run(knots, keys, task), np.float64)
        finite = np.all(np.isfinite(curves), axis=(1, 2))
        final.append(np.where(finite, curves[:, :, -1].mean(axis=1), np.inf))
        area.append(np.where(finite, curves.mean(axis=(1, 2)), np.inf))
    return {"final": np.stack(final, axis=1), "area": np.stack(area, axis=1)}


_SCHEDULED: dict = {}


def schedule_scores(make: Callable, tasks: Sequence, candidates, *, horizon: int,
                    seeds: Sequence[int], eval_every: int = 10) -> dict:
    """:func:`knot_scores` of ``make(learning_rate=horizon_schedule(row, horizon=horizon))``.

    ``make`` builds the learned optimizer (e.g. ``partial(learned_opt, theta,
    fan_in_exponent=0.5)``) and must be hashable; candidates are ``(n, K)`` multipliers at evenly
    spaced fractions of the horizon.
    """
    key = (make, horizon)
    if key not in _SCHEDULED:
        _SCHEDULED[key] = lambda row: make(learning_rate=horizon_schedule(row, horizon=horizon))
    return knot_scores(_SCHEDULED[key], tasks, candidates, horizon=horizon, seeds=seeds,
                       eval_every=eval_every)


def criterion(final, area) -> np.ndarray:
    """``(n,)`` geometric mean over tasks and over both measures of ``(n, tasks)`` final f and
    area (inf where any is not finite or not positive): the score to minimise."""
    both = np.concatenate([np.asarray(final, np.float64), np.asarray(area, np.float64)], axis=1)
    ok = np.all(np.isfinite(both) & (both > 0), axis=1)
    return np.where(ok, np.exp(np.mean(np.log(np.where(ok[:, None], both, 1.0)), axis=1)),
                    np.inf)


def coordinate_search(score: Callable[[np.ndarray], np.ndarray], initial, *,
                      log_steps: Sequence[float] = (0.35, 0.7), sweeps: int = 8,
                      min_log_step: float = 0.04,
                      bounds: tuple[float, float] = (0.05, 20.0)) -> dict:
    """Minimise ``score`` over positive K-vectors by single-knot moves in log (module docs).

    Args:
      score: ``(n, K)`` candidates → ``(n,)`` scores (lower is better, inf for a failed run).
      initial: ``(K,)`` the starting multipliers (scored first).
      log_steps: each sweep tries every knot times exp(± s) for each s (all scaled by the
        current halving factor).
      sweeps: the most sweeps; the search also stops when the largest step is below
        ``min_log_step``.
      bounds: multipliers are clipped to this range.

    Returns:
      ``{"best": (K,) list, "score": float, "start_score": float, "history": [per sweep:
      {"scale", "best_candidate", "best_candidate_score", "accepted", "incumbent", "score"}]}``.
    """
    check_multipliers(initial, owner="coordinate_search")
    current = np.clip(np.asarray(initial, np.float64), *bounds)
    if not log_steps or any(s <= 0 for s in log_steps) or sweeps < 1:
        raise ValueError("coordinate_search needs positive log_steps and at least one sweep, got "
                         f"log_steps={list(log_steps)}, sweeps={sweeps}")
    best = float(np.asarray(score(current[None]))[0])
    start, scale, history = best, 1.0, []
    for _ in range(sweeps):
        if max(log_steps) * scale < min_log_step:
            break
        moves = [(k, sign * s * scale) for k in range(len(current)) for s in log_steps
                 for sign in (1.0, -1.0)]
        candidates = np.stack([current * np.exp(np.eye(len(current))[k] * d) for k, d in moves])
        candidates = np.clip(candidates, *bounds)
        scores = np.asarray(score(candidates), np.float64)
        i = int(np.argmin(scores))
        accepted = bool(scores[i] < best)
        history.append({"scale": scale, "best_candidate": candidates[i].tolist(),
                        "best_candidate_score": float(scores[i]), "accepted": accepted})
        if accepted:
            current, best = candidates[i], float(scores[i])
        else:
            scale /= 2.0
        history[-1] |= {"incumbent": current.tolist(), "score": best}
    return {"best": current.tolist(), "score": best, "start_score": start,
            "history": history}
