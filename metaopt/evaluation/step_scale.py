"""Does a learned optimizer step at the right scale for a task, and could it tell? (issue 17).

Two measurements, both on tuning seeds (they choose nothing that ships):

* :func:`step_multiplier_scores`: final f and area of ``make(learning_rate=c)`` for several
  multipliers c of the policy's own step (c = 1 is the policy as meta-trained). A task whose best
  c is far from 1 is one the policy steps at the wrong scale for.
* :func:`noise_statistics`: what the policy could observe of the task's gradient noise along its
  own run: the **gradient coherence** ‖EMA_β(ĝ)‖ / EMA_β(‖ĝ‖) of each leaf (1 for a constant
  gradient, √((1−β)/(1+β)) ≈ 0.23 at β = 0.9 for pure noise) and the mean relative change of the
  minibatch objective |f̂(t) − f̂(t−1)| / |f̂(t−1)| (clipped at 1, as feature 4 of the scale-free
  features is). If tasks that want different multipliers show the same statistics, a policy
  reading these features cannot tell them apart, whatever it is trained on.

Example::

  make = lambda learning_rate: learned_opt(theta, learning_rate=learning_rate)
  scores = step_multiplier_scores(make, task, (1.0, 0.7, 0.5), seeds=range(5), num_steps=400)
  stats = noise_statistics(make(1.0), task, seeds=range(5), num_steps=400)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt.evaluation.tuning import run_grid, seed_keys

__all__ = ["COHERENCE_DECAY", "noise_statistics", "pure_noise_coherence",
           "step_multiplier_scores"]

COHERENCE_DECAY = 0.9


def pure_noise_coherence(decay: float = COHERENCE_DECAY) -> float:
    """The coherence of i.i.d. zero-mean gradients in many coordinates, at stationarity."""
    return float(np.sqrt((1.0 - decay) / (1.0 + decay)))


def step_multiplier_scores(make: Callable[..., optax.GradientTransformation], task,
                           multipliers: Sequence[float], *, seeds: Sequence[int],
                           num_steps: int, eval_every: int = 10) -> dict:
    """Final f and area (mean of the curve) per multiplier, mean over ``seeds``.

    Args:
      make: ``make(learning_rate=c)`` builds the optimizer with its step multiplied by ``c``.

    Returns:
      ``{"multipliers": [...], "final": [...], "area": [...], "best": c}`` with ``best`` the
      multiplier of the lowest mean final f (non-finite runs score +inf).
    """
    if not multipliers or any(not np.isfinite(c) or c <= 0 for c in multipliers):
        raise ValueError(f"multipliers must be positive finite numbers, got {list(multipliers)}")
    curves = run_grid(make, [{"learning_rate": float(c)} for c in multipliers], task, seeds,
                      num_steps=num_steps, eval_every=eval_every)
    curves = np.asarray(curves, np.float64)
    finite = np.all(np.isfinite(curves), axis=(1, 2))
    final = np.where(finite, curves[:, :, -1].mean(axis=1), np.inf)
    area = np.where(finite, curves.mean(axis=(1, 2)), np.inf)
    return {"multipliers": [float(c) for c in multipliers], "final": final.tolist(),
            "area": area.tolist(), "best": float(multipliers[int(np.argmin(final))])}


def _statistics_run(tx, task, key, num_steps: int, decay: float):
    # unroll's step (same keys, same extras) plus the gradient EMAs: unroll returns no gradients.
    init_key, data_key = jax.random.split(key)
    params = task.init_params(init_key)
    zeros = lambda tree: jax.tree.map(lambda x: jnp.zeros_like(x, jnp.float32), tree)
    norms = jax.tree.map(lambda _: jnp.zeros((), jnp.float32), params)
    carry = (params, tx.init(params), zeros(params), norms)

    def step(carry, step_key):
        params, opt_state, ema, ema_norm = carry
        value_fn = task.minibatch_objective(step_key)
        value, grad = jax.value_and_grad(value_fn)(params)
        updates, opt_state = tx.update(grad, opt_state, params, value=value, grad=grad,
                                       value_fn=value_fn)
        ema = jax.tree.map(lambda m, g: decay * m + (1 - decay) * g, ema, grad)
        ema_norm = jax.tree.map(lambda n, g: decay * n + (1 - decay) * jnp.linalg.norm(g),
                                ema_norm, grad)
        # Both EMAs carry the same bias (1 − β^t), so their ratio needs no correction.
        leaf_coherence = jax.tree.leaves(jax.tree.map(
            lambda m, n: jnp.linalg.norm(m) / jnp.where(n > 0, n, 1.0), ema, ema_norm))
        return ((optax.apply_updates(params, updates), opt_state, ema, ema_norm),
                (jnp.stack(leaf_coherence), value))

    _, (coherence, values) = jax.lax.scan(step, carry, jax.random.split(data_key, num_steps))
    return coherence, values


def noise_statistics(tx: optax.GradientTransformation, task, *, seeds: Sequence[int],
                     num_steps: int, skip: int | None = None,
                     decay: float = COHERENCE_DECAY) -> dict:
    """Gradient coherence and relative objective change along ``tx``'s runs (module docs).

    Averaged over ``seeds`` and over steps ``skip`` … ``num_steps`` (default: the last three
    quarters, past the transient of the EMAs and of the first descent).

    Returns:
      ``{"coherence": mean over leaves, "coherence_per_leaf": [...] (jax.tree.leaves order),
      "objective_change": mean clipped |Δf̂/f̂|, "pure_noise_coherence": the i.i.d. reference}``.
    """
    if not 0.0 < decay < 1.0:
        raise ValueError(f"decay must be in (0, 1), got {decay}")
    skip = num_steps // 4 if skip is None else int(skip)
    if not 0 <= skip < num_steps - 1:
        raise ValueError(f"skip ({skip}) must leave at least two of the {num_steps} steps")
    run = jax.jit(jax.vmap(lambda k: _statistics_run(tx, task, k, num_steps, decay)))
    coherence, values = (np.asarray(a, np.float64) for a in run(seed_keys(seeds)))
    per_leaf = coherence[:, skip:].mean(axis=(0, 1))
    previous = np.abs(values[:, skip:-1])
    change = np.abs(np.diff(values[:, skip:], axis=1)) / np.where(previous > 0, previous, np.inf)
    return {"coherence": float(per_leaf.mean()), "coherence_per_leaf": per_leaf.tolist(),
            "objective_change": float(np.clip(change, 0.0, 1.0).mean()),
            "pure_noise_coherence": pure_noise_coherence(decay)}
