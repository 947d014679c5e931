"""Unrolling an optimizer on a task: the one measurement every optimizer in metaopt goes through.

A *task* is any pytree with ``init_params(key)``, ``minibatch_objective(key) -> (params -> f̂)``
and ``true_loss(params) -> f`` (see :mod:`metaopt.tasks`). The optimizer is any optax
transformation; it is always called with the keyword extras ``value`` (f̂ at the current
iterate), ``grad`` and ``value_fn`` (f̂ on the same minibatch), so line searches and learned
optimizers see what they need and plain optax transformations ignore them.

Example::

  traj = jax.jit(unroll, static_argnames=("tx", "num_steps", "eval_every"))(
      optax.adam(1e-3), task, jax.random.key(0), num_steps=400, eval_every=10)
  traj.true_loss   # (41,): f at steps 0, 10, ..., 400
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class Trajectory(NamedTuple):
    """What one unroll records.

    Attributes:
      true_loss: ``(num_steps // eval_every + 1,)`` f at steps 0, eval_every, …, num_steps.
      minibatch_loss: ``(num_steps,)`` f̂ at each step's iterate, before its update.
    """

    true_loss: jax.Array
    minibatch_loss: jax.Array


def eval_steps(num_steps: int, eval_every: int) -> list[int]:
    """The iterations at which :func:`unroll` records the true objective."""
    return list(range(0, num_steps + 1, eval_every))


def check_schedule(num_steps: int, eval_every: int) -> None:
    if num_steps <= 0 or eval_every <= 0 or num_steps % eval_every:
        raise ValueError(
            f"num_steps ({num_steps}) must be a positive multiple of eval_every ({eval_every})."
        )


def unroll(
    tx: optax.GradientTransformation,
    task: Any,
    key: jax.Array,
    *,
    num_steps: int,
    eval_every: int = 10,
) -> Trajectory:
    """Runs ``tx`` on ``task`` for ``num_steps`` steps with ``lax.scan``.

    ``key`` seeds both the initial parameters and the minibatch order. Pure and jit-compatible
    (``tx``, ``num_steps`` and ``eval_every`` static), so it vmaps over keys and tasks.
    """
    check_schedule(num_steps, eval_every)
    init_key, data_key = jax.random.split(key)
    params = task.init_params(init_key)
    opt_state = tx.init(params)

    def step(carry, step_key):
        params, opt_state = carry
        value_fn = task.minibatch_objective(step_key)
        value, grad = jax.value_and_grad(value_fn)(params)
        updates, opt_state = tx.update(
            grad, opt_state, params, value=value, grad=grad, value_fn=value_fn
        )
        params = optax.apply_updates(params, updates)
        return (params, opt_state), value

    def chunk(carry, chunk_keys):
        carry, values = jax.lax.scan(step, carry, chunk_keys)
        return carry, (task.true_loss(carry[0]), values)

    step_keys = jax.random.split(data_key, num_steps).reshape(num_steps // eval_every, eval_every)
    f0 = task.true_loss(params)
    _, (true_losses, values) = jax.lax.scan(chunk, (params, opt_state), step_keys)
    return Trajectory(
        true_loss=jnp.concatenate([f0[None], true_losses]),
        minibatch_loss=values.reshape(num_steps),
    )


def unroll_python_loop(
    tx: optax.GradientTransformation, task: Any, key: jax.Array, *, num_steps: int, eval_every: int = 10
) -> Trajectory:
    """The same computation as :func:`unroll` driven by a Python loop over a jitted step.

    Only for benchmarks and for checking :func:`unroll`; one host round trip per step.
    """
    check_schedule(num_steps, eval_every)
    init_key, data_key = jax.random.split(key)
    params = task.init_params(init_key)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, task, step_key):
        value_fn = task.minibatch_objective(step_key)
        value, grad = jax.value_and_grad(value_fn)(params)
        updates, opt_state = tx.update(
            grad, opt_state, params, value=value, grad=grad, value_fn=value_fn
        )
        return optax.apply_updates(params, updates), opt_state, value

    true_loss = jax.jit(lambda task, p: task.true_loss(p))
    step_keys = jax.random.split(data_key, num_steps)
    f, values = [true_loss(task, params)], []
    for t in range(num_steps):
        params, opt_state, value = step(params, opt_state, task, step_keys[t])
        values.append(value)
        if (t + 1) % eval_every == 0:
            f.append(true_loss(task, params))
    return Trajectory(jnp.stack(f), jnp.stack(values))
