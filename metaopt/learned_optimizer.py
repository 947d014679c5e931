"""``learned_opt``: a meta-trained policy shipped as an optax gradient transformation."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaopt import features
from metaopt.policy import Theta, apply_policy, init_carry, policy_hidden_size

__all__ = ["LearnedOptState", "learned_opt"]


class LearnedOptState(NamedTuple):
    """State of :func:`learned_opt`.

    Attributes:
      count: int32, number of finite ``value``s seen (the objective's step index t).
      prev_value: float32, the last finite ``value`` f̂(t−1).
      history: per leaf, a :class:`metaopt.features.ObservationHistory` (x(t−1),
        x(t−1) − x(t−2), |ĝ(t−1)| and the leaf's own step count).
      carry: per leaf, the policy's :class:`metaopt.policy.LSTMCarry`, ``leaf.shape + (H,)``.
      nonfinite_count: int32, number of updates in which some leaf was skipped because its
        gradient, its parameters or ``value`` were not finite.
    """

    count: jax.Array
    prev_value: jax.Array
    history: Any
    carry: Any
    nonfinite_count: jax.Array


# On a single CPU device, leaves of at least 4 chunks run the policy chunk by chunk: ~1.3-1.5x
# faster there (see metaopt.policy.apply_policy). Accelerators, and meshes (where slicing a
# sharded leaf into chunks would make the partitioner replicate its carry), take leaves whole.
_CPU_CHUNK_SIZE = 1024


def _chunk_on_cpu(leaf) -> bool:
    return (
        jax.default_backend() == "cpu"
        and jax.device_count() == 1
        and leaf.size >= 4 * _CPU_CHUNK_SIZE
    )


def _check_float_leaves(tree, what: str) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"learned_opt supports floating-point leaves only; {what} leaf "
                f"{jax.tree_util.keystr(path) or '<root>'} has dtype {dtype}. Exclude it, e.g. "
                "with optax.masked or optax.partition."
            )


def learned_opt(theta: Theta) -> optax.GradientTransformationExtraArgs:
    """The learned optimizer: one policy step per coordinate (SPEC §1, §4).

    Every coordinate j of every leaf observes Ψ_j(t) (3 features: relative change of the
    minibatch objective, gradient over previous |gradient| + 1, previous step over latest
    step; see :mod:`metaopt.features`) and feeds it, with its own LSTM memory, to the shared
    policy ``theta``, whose output is the step Δx_j directly (no learning rate).

    Args:
      theta: policy weights, from :func:`metaopt.policy.init_policy`, :func:`metaopt.load`
        or meta-training.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. ``update(grads, state, params, *, value)``
      needs ``params`` (the iterate x(t)) and the keyword ``value`` (the minibatch objective
      f̂(x(t)), a scalar); other keyword arguments are accepted and ignored. Leaves may be
      float32, bfloat16 or float64: features and the policy run in float32 and the updates
      come back in each gradient leaf's dtype.

    Non-finite inputs: a leaf whose gradient or parameters contain NaN/inf (or whose features
    overflow), or every leaf when ``value`` is NaN/inf, takes a zero step and keeps its history
    and LSTM memory untouched (a non-finite ``value`` also leaves ``count``/``prev_value``
    untouched); ``state.nonfinite_count`` counts the updates in which this happened.

    State memory: per parameter, the LSTM carry (2·H float32 = 1024 bytes for H = 128) plus
    x(t−1) in the leaf dtype and two float32 (12 bytes for float32 leaves).

    Raises:
      ValueError: ``theta`` does not have the policy's structure; ``value`` or ``params``
        missing; ``value`` not a scalar.
      TypeError: a leaf is not floating point.

    Example::

      tx = optax.chain(optax.clip_by_global_norm(1.0), metaopt.learned_opt(theta))
      state = tx.init(params)
      loss, grads = jax.value_and_grad(loss_fn)(params, batch)
      updates, state = tx.update(grads, state, params, value=loss)
      params = optax.apply_updates(params, updates)
    """
    hidden_size = policy_hidden_size(theta)

    def init_fn(params):
        _check_float_leaves(params, "params")
        return LearnedOptState(
            count=jnp.zeros((), jnp.int32),
            prev_value=jnp.zeros((), jnp.float32),
            history=jax.tree.map(features.init_observation_history, params),
            carry=jax.tree.map(lambda x: init_carry(x, hidden_size), params),
            nonfinite_count=jnp.zeros((), jnp.int32),
        )

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del extra_args
        if value is None:
            raise ValueError(
                "learned_opt needs the minibatch objective: call "
                "tx.update(grads, state, params, value=loss)."
            )
        if params is None:
            raise ValueError(
                "learned_opt needs the current parameters: call "
                "tx.update(grads, state, params, value=loss)."
            )
        _check_float_leaves(updates, "updates")
        _check_float_leaves(params, "params")
        value = jnp.asarray(value)
        if value.shape != ():
            raise ValueError(
                f"learned_opt: value must be the scalar minibatch objective, got shape "
                f"{value.shape} (under jax.vmap pass one scalar per problem)."
            )
        value = value.astype(jnp.float32)

        grad_leaves, treedef = jax.tree.flatten(updates)
        try:
            param_leaves = treedef.flatten_up_to(params)
            histories = treedef.flatten_up_to(state.history)
            carries = treedef.flatten_up_to(state.carry)
        except (TypeError, ValueError) as err:
            raise ValueError(
                "learned_opt: updates, params and the optimizer state must have the same "
                f"tree structure (was the state made by init(params) for these params?): {err}"
            ) from err

        value_ok = jnp.isfinite(value)
        objective_change = features.relative_objective_change(state.count, value, state.prev_value)
        new_updates, new_histories, new_carries, skipped = [], [], [], []
        for grad, x, history, carry in zip(
            grad_leaves, param_leaves, histories, carries, strict=True
        ):
            obs, new_history = features.observation_features(history, x, grad, objective_change)
            ok = value_ok & jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(obs))  # covers grad
            chunk_size = _CPU_CHUNK_SIZE if _chunk_on_cpu(grad) else None
            new_carry, step = apply_policy(theta, carry, obs, active=ok, chunk_size=chunk_size)
            keep = lambda new, old, ok=ok: jnp.where(ok, new, old).astype(old.dtype)
            new_updates.append(step.astype(grad.dtype))
            new_histories.append(jax.tree.map(keep, new_history, history))
            new_carries.append(new_carry)
            skipped.append(~ok)

        any_skipped = jnp.any(jnp.stack(skipped)) if skipped else jnp.zeros((), bool)
        new_state = LearnedOptState(
            count=state.count + value_ok.astype(jnp.int32),
            prev_value=jnp.where(value_ok, value, state.prev_value),
            history=treedef.unflatten(new_histories),
            carry=treedef.unflatten(new_carries),
            nonfinite_count=state.nonfinite_count + any_skipped.astype(jnp.int32),
        )
        return treedef.unflatten(new_updates), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
