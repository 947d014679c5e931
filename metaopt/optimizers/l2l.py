"""``l2l_opt``: the LSTM optimizer of Andrychowicz et al. 2016, a baseline (SPEC §1, "Evaluation").

"Learning to learn by gradient descent by gradient descent": every coordinate of every leaf runs
the same small recurrent net on its own gradient history. Per coordinate j, at step t:

  input  = preprocess_gradient(g_j(t))                       (2 numbers, Appendix A, p = 10)
  h1, h2 = two stacked LSTM layers (20 cells each), own memory per coordinate
  Δx_j   = OUTPUT_SCALE · (h2 @ W + b)                        (OUTPUT_SCALE = 0.1, as the paper)

``theta`` is a plain nested dict of float32 arrays (H = 20 cells, L = 2 layers)::

  {"lstm_0": {"kernel": (2 + H, 4H), "bias": (4H,)},   # gates [i, f, g, o] on [input, h]
   "lstm_1": {"kernel": (2H, 4H),    "bias": (4H,)},
   "head":   {"kernel": (H, 1),      "bias": (1,)}}

Unlike :func:`metaopt.learned_opt` it needs neither ``value`` nor ``params`` (only the gradient).

Example::

  theta = metaopt.pretrained.pretrained_l2l()   # the shipped weights, or init_l2l(key)
  tx = optax.chain(optax.clip_by_global_norm(1.0), l2l_opt(theta))
  state = tx.init(params)
  updates, state = tx.update(grads, state)
  params = optax.apply_updates(params, updates)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt.optimizers.guards import check_finite_weights, check_float_leaves
from metaopt.policy import LSTMCarry

ARCHITECTURE_NAME = "l2l-coordinatewise-lstm"
HIDDEN_SIZE = 20
NUM_LAYERS = 2
INPUT_DIM = 2
OUTPUT_SCALE = 0.1
PREPROCESS_P = 10.0

L2LTheta = dict[str, Any]

__all__ = [
    "ARCHITECTURE_NAME",
    "L2LState",
    "L2LTheta",
    "apply_l2l",
    "init_l2l",
    "init_l2l_carry",
    "l2l_opt",
    "l2l_shape",
    "preprocess_gradient",
]


class L2LState(NamedTuple):
    """State of :func:`l2l_opt`.

    Attributes:
      carry: per leaf, a tuple of one :class:`metaopt.policy.LSTMCarry` per layer, each field
        ``leaf.shape + (H,)`` float32.
      count: int32, number of updates applied.
      nonfinite_count: int32, number of updates in which some leaf took a zero step because its
        gradient (or parameters) held NaN/inf.
    """

    carry: Any
    count: jax.Array
    nonfinite_count: jax.Array


def preprocess_gradient(g: jax.Array, p: float = PREPROCESS_P) -> jax.Array:
    """Andrychowicz et al.'s log/sign preprocessing (their Appendix A): ``(...) → (..., 2)``.

    ``(log|g| / p, sign g)`` where ``|g| ≥ e^−p``, else ``(−1, e^p · g)``; computed in float32.
    Both branches are continuous at ``|g| = e^−p`` up to the sign's jump, and bounded for finite g.
    """
    g = jnp.asarray(g, jnp.float32)
    threshold = math.exp(-p)
    big = jnp.abs(g) >= threshold
    # Clamped so the unused branch never takes log(0) (its NaN/inf would leak into gradients).
    log_part = jnp.log(jnp.maximum(jnp.abs(g), threshold)) / p
    first = jnp.where(big, log_part, -1.0)
    second = jnp.where(big, jnp.sign(g), math.exp(p) * g)
    return jnp.stack([first, second], axis=-1)


def init_l2l(
    key: jax.Array, *, hidden_size: int = HIDDEN_SIZE, num_layers: int = NUM_LAYERS
) -> L2LTheta:
    """Fresh weights: LeCun-normal kernels, forget-gate bias 1, a head scaled down by 10 (ours).

    With the small head the untrained optimizer takes steps of ~1e-3 per coordinate.
    """
    keys = jax.random.split(key, num_layers + 1)
    theta = {}
    fan_in = INPUT_DIM
    for layer in range(num_layers):
        rows = fan_in + hidden_size
        kernel = jax.random.normal(keys[layer], (rows, 4 * hidden_size)) / np.sqrt(rows)
        bias = jnp.zeros((4 * hidden_size,)).at[hidden_size : 2 * hidden_size].set(1.0)
        theta[f"lstm_{layer}"] = {"kernel": kernel, "bias": bias}
        fan_in = hidden_size
    head = 0.1 * jax.random.normal(keys[-1], (hidden_size, 1)) / np.sqrt(hidden_size)
    theta["head"] = {"kernel": head, "bias": jnp.zeros((1,))}
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), theta)


def l2l_shape(theta: L2LTheta) -> tuple[int, int]:
    """Validates ``theta``'s structure and shapes; returns ``(hidden_size, num_layers)``.

    Raises:
      ValueError: naming the expected layout, when ``theta`` is not L2L weights.
    """
    expected = (
        "expected {'lstm_0': {'kernel': (2+H, 4H), 'bias': (4H,)}, 'lstm_1': {'kernel': (2H, 4H), "
        "'bias': (4H,)}, ..., 'head': {'kernel': (H, 1), 'bias': (1,)}} (see init_l2l)"
    )
    try:
        structure = {name: sorted(theta[name]) for name in theta}
        h = int(jnp.shape(theta["head"]["kernel"])[0])
    except (TypeError, KeyError, IndexError) as err:
        raise ValueError(f"theta is not L2L weights: {expected}; got {type(theta).__name__}") from err
    num_layers = len(structure) - 1
    names = {f"lstm_{i}" for i in range(num_layers)} | {"head"}
    if num_layers < 1 or set(structure) != names or any(
        v != ["bias", "kernel"] for v in structure.values()
    ):
        raise ValueError(f"theta has keys {structure}; {expected}")
    want = {f"lstm_{i}": {"kernel": ((INPUT_DIM if i == 0 else h) + h, 4 * h), "bias": (4 * h,)}
            for i in range(num_layers)}
    want["head"] = {"kernel": (h, 1), "bias": (1,)}
    shapes = jax.tree.map(jnp.shape, theta)
    if h < 1 or shapes != want:
        raise ValueError(f"theta has shapes {shapes}; {expected}")
    for leaf in jax.tree.leaves(theta):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise ValueError(f"theta has a non-float leaf ({jnp.result_type(leaf)}); {expected}")
    return h, num_layers


def init_l2l_carry(x, hidden_size: int = HIDDEN_SIZE, num_layers: int = NUM_LAYERS):
    """Zero memory for every coordinate of a leaf shaped like ``x``: one ``LSTMCarry`` per layer."""
    zeros = jnp.zeros(jnp.shape(x) + (hidden_size,), jnp.float32)
    return tuple(LSTMCarry(zeros, zeros) for _ in range(num_layers))


def _lstm_cell(params, carry: LSTMCarry, inputs):
    gates = jnp.concatenate([inputs, carry.hidden], axis=-1) @ params["kernel"] + params["bias"]
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    cell = jax.nn.sigmoid(f) * carry.cell + jax.nn.sigmoid(i) * jnp.tanh(g)
    hidden = jax.nn.sigmoid(o) * jnp.tanh(cell)
    return LSTMCarry(cell, hidden), hidden


def apply_l2l(theta: L2LTheta, carry, grad: jax.Array):
    """One optimizer step for any batch of coordinates.

    Args:
      theta: L2L weights.
      carry: tuple of ``LSTMCarry`` per layer, fields ``grad.shape + (H,)``.
      grad: gradient, any shape ``(...)``.

    Returns:
      ``(new_carry, step)``, ``step`` of shape ``(...)`` float32 (already × ``OUTPUT_SCALE``).
    """
    inputs = preprocess_gradient(grad)
    new_carry = []
    for layer, layer_carry in enumerate(carry):
        layer_carry, inputs = _lstm_cell(theta[f"lstm_{layer}"], layer_carry, inputs)
        new_carry.append(layer_carry)
    out = inputs @ theta["head"]["kernel"] + theta["head"]["bias"]
    return tuple(new_carry), OUTPUT_SCALE * out[..., 0]


def l2l_opt(theta: L2LTheta) -> optax.GradientTransformationExtraArgs:
    """Andrychowicz et al.'s coordinatewise LSTM optimizer as an optax transformation.

    Args:
      theta: weights from :func:`init_l2l`, meta-training
        (:mod:`metaopt.training.l2l_training`) or :func:`metaopt.serialization.load_l2l`.
        May be traced (built inside a jitted meta-loss).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update(grads, state, params=None, **extra)``
      ignores ``extra`` (``value``, ``grad``, ``value_fn``, ...). Leaves may be float32, bfloat16
      or float64: the net runs in float32 and the updates come back in each gradient's dtype.

    Non-finite inputs (as :func:`metaopt.learned_opt`): a leaf whose gradient, or parameters when
    passed, hold NaN/inf takes a zero step and keeps its LSTM memory; ``state.nonfinite_count``
    counts the updates where this happened. Finite gradients always give finite steps (the
    preprocessed input is bounded).

    Raises:
      ValueError: ``theta`` is not L2L weights or holds NaN/inf; the state was made for other
        parameters.
      TypeError: a leaf is not floating point.
    """
    hidden_size, num_layers = l2l_shape(theta)
    check_finite_weights(theta, fix="Load intact weights (metaopt.pretrained.pretrained_l2l()) "
                                    "or train them (experiments/train_l2l.py).")

    def init_fn(params):
        check_float_leaves(params, "params", owner="l2l_opt")
        return L2LState(
            carry=jax.tree.map(lambda x: init_l2l_carry(x, hidden_size, num_layers), params),
            count=jnp.zeros((), jnp.int32),
            nonfinite_count=jnp.zeros((), jnp.int32),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        check_float_leaves(updates, "updates", owner="l2l_opt")
        paths_and_grads, treedef = jax.tree_util.tree_flatten_with_path(updates)
        try:
            carries = treedef.flatten_up_to(state.carry)
            param_leaves = (
                [None] * len(carries) if params is None else treedef.flatten_up_to(params)
            )
        except (TypeError, ValueError) as err:
            raise ValueError(
                "l2l_opt: updates, params and the optimizer state must have the same tree "
                f"structure (was the state made by init(params) for these params?): {err}"
            ) from err

        new_updates, new_carries, skipped = [], [], []
        for (path, grad), x, carry in zip(paths_and_grads, param_leaves, carries, strict=True):
            if carry[0].cell.shape != jnp.shape(grad) + (hidden_size,):
                raise ValueError(
                    f"l2l_opt: leaf {jax.tree_util.keystr(path) or '<root>'} has gradient shape "
                    f"{jnp.shape(grad)} but state shape {carry[0].cell.shape[:-1]} (was the state "
                    "made by init(params) for these params?)."
                )
            ok = jnp.all(jnp.isfinite(grad))
            if x is not None:
                ok = ok & jnp.all(jnp.isfinite(x))
            new_carry, step = apply_l2l(theta, carry, grad)
            new_carries.append(jax.tree.map(lambda new, old, ok=ok: jnp.where(ok, new, old),
                                            new_carry, carry))
            new_updates.append(jnp.where(ok, step, 0.0).astype(jnp.result_type(grad)))
            skipped.append(~ok)

        any_skipped = jnp.any(jnp.stack(skipped)) if skipped else jnp.zeros((), bool)
        new_state = L2LState(
            carry=treedef.unflatten(new_carries),
            count=state.count + 1,
            nonfinite_count=state.nonfinite_count + any_skipped.astype(jnp.int32),
        )
        return treedef.unflatten(new_updates), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
