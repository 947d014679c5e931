"""``skip_nonfinite``: an optax wrapper that skips a step instead of writing NaN/inf into parameters.

optax's own ``optax.apply_if_finite`` looks only at the incoming gradients and, after
``max_consecutive_errors`` bad steps in a row, gives up and applies them. The wrapper here never
gives up, and it also catches what finite gradients can turn into inside the wrapped optimizer
(e.g. L-BFGS curvature pairs or a line search overflowing float32) or in the parameters. Its state
is optax's ``ApplyIfFiniteState``, with the same meaning.

Example::

  tx = skip_nonfinite(optax.adam(1e-3))      # make_baseline(...) does this by default
  updates, state = tx.update(grads, state, params, value=loss)
  params = optax.apply_updates(params, updates)   # unchanged if grads/loss had NaN
  state.total_notfinite                          # how many steps were skipped
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["check_finite_weights", "check_float_leaves", "scalar_objective", "skip_nonfinite"]


def all_finite(tree) -> jax.Array:
    """Scalar bool: every element of every leaf of ``tree`` is finite (True for no leaves)."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.ones((), bool)


def _select(pred, on_true, on_false):
    """``on_true`` if ``pred`` else ``on_false``, typed like ``on_true``.

    ``lax.cond`` keeps the exact types (weak types included); it needs both sides typed alike,
    which an optimizer whose state changes dtype on its first update (e.g. optax's momentum trace
    of a bfloat16 leaf, promoted by a traced float32 momentum) does not give: then each leaf is
    selected with ``jnp.where``, the kept value cast to the new dtype.
    """
    if jax.tree.map(jax.typeof, on_true) == jax.tree.map(jax.typeof, on_false):
        return jax.lax.cond(pred, lambda: on_true, lambda: on_false)
    return jax.tree.map(
        lambda new, old: jnp.where(pred, new, jnp.asarray(old, jnp.result_type(new))),
        on_true, on_false,
    )


def skip_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` so that a step that would not be finite is skipped as a whole.

    A step is skipped (zero updates returned, ``inner``'s state kept as it was) when any of these
    holds NaN or ±inf: the incoming updates (gradients); the keyword ``value`` (the objective,
    when passed); the updates ``inner`` returns; or, when ``params`` is passed, the parameters
    ``optax.apply_updates(params, updates)`` would produce (this also catches float16/bfloat16
    parameters overflowing). Whole steps, not single leaves, are skipped because the baselines
    couple leaves (global norms, line searches). When nothing is skipped the updates and state
    are exactly ``inner``'s.

    Args:
      inner: any optax transformation (extra keyword arguments are passed through).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is ``optax.ApplyIfFiniteState``:
      ``notfinite_count`` (skipped steps in a row), ``last_finite`` (whether the last step was
      applied), ``total_notfinite`` (skipped steps in all) and ``inner_state``.
    """
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        return optax.ApplyIfFiniteState(
            notfinite_count=jnp.zeros([], jnp.int32),
            last_finite=jnp.array(True, jnp.bool_),
            total_notfinite=jnp.zeros([], jnp.int32),
            inner_state=inner.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        ok = all_finite(updates)
        value = extra_args.get("value")
        if value is not None:
            ok = ok & all_finite(value)
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra_args)
        ok = ok & all_finite(new_updates)
        if params is not None:
            ok = ok & all_finite(optax.apply_updates(params, new_updates))
        new_updates, new_inner = _select(
            ok, (new_updates, new_inner), (optax.tree.zeros_like(new_updates), state.inner_state)
        )
        return new_updates, optax.ApplyIfFiniteState(
            notfinite_count=jnp.where(ok, 0, optax.safe_increment(state.notfinite_count)),
            last_finite=ok,
            total_notfinite=jnp.where(
                ok, state.total_notfinite, optax.safe_increment(state.total_notfinite)
            ),
            inner_state=new_inner,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def check_float_leaves(tree, what: str, *, owner: str) -> None:
    """Raises a ``TypeError`` naming the first non-floating leaf of ``tree`` and the fix.

    ``owner`` names the transformation in the message, ``what`` the tree (``"params"``, …).
    """
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"{owner} supports floating-point leaves only; {what} leaf "
                f"{jax.tree_util.keystr(path) or '<root>'} has dtype {dtype}. Exclude it, e.g. "
                "with optax.masked or optax.partition."
            )


def scalar_objective(value, *, owner: str) -> jax.Array:
    """The keyword ``value`` of a learned optimizer's update as a float32 scalar.

    Raises:
      ValueError: ``value`` is missing (with the call to make) or not a scalar.
      TypeError: ``value`` is not a real number.
    """
    if value is None:
        raise ValueError(f"{owner} needs the minibatch objective: call "
                         "tx.update(grads, state, params, value=loss).")
    value = jnp.asarray(value)
    if not (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)):
        raise TypeError(f"{owner}: value must be the real scalar minibatch objective, got dtype "
                        f"{value.dtype}.")
    if value.shape != ():
        raise ValueError(f"{owner}: value must be the scalar minibatch objective, got shape "
                         f"{value.shape} (under jax.vmap pass one scalar per problem).")
    return value.astype(jnp.float32)


def check_finite_weights(theta, *, fix: str) -> None:
    """Refuses learned-optimizer weights with NaN/inf (they would put NaN into every step).

    Looks at concrete weights on the host (NumPy), so it also works when the transformation is
    built inside a jitted function; traced or not fully addressable weights are not inspected.
    ``fix`` ends the message (how to get intact weights).
    """
    bad = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(theta):
        if isinstance(leaf, jax.core.Tracer) or not getattr(leaf, "is_fully_addressable", True):
            return
        if not np.all(np.isfinite(np.asarray(leaf))):
            bad.append(jax.tree_util.keystr(path))
    if bad:
        raise ValueError(f"theta has NaN or inf weights in {', '.join(bad)}; a policy like this "
                         f"would put NaN into every step. {fix}")
