"""A per-coordinate MLP policy on the scale-free features, with a relative, bounded step (ours).

The paper's policy is a 128-cell LSTM per coordinate that outputs the step in absolute units
(:mod:`metaopt.policy`): ~1 KB of state and ~120× Adam's cost per parameter. Here the memory is in
the features (EMAs of ĝ at several timescales and of |ĝ|, :mod:`metaopt.scale_free_features`) and the
policy is a small MLP applied to every coordinate; its two outputs are a direction d and a log
magnitude m, and the step is relative to the leaf's parameter scale σ::

  [d, m] = skip(o) + out(relu(… relu(layer_0(o))))            o: the 9 features
  Δx     = learning_rate · σ · tanh(d) · exp(clip(m, LOG_STEP_MIN, LOG_STEP_MAX))

so |Δx| ≤ learning_rate · σ · e^LOG_STEP_MAX for any input. ``theta`` is a nested dict::

  {"skip": {"kernel": (9, 2), "bias": (2,)},
   "layer_0": {"kernel": (9, H0), "bias": (H0,)}, ..., "out": {"kernel": (H_last, 2), "bias": (2,)}}

Initialisation: ``out`` is zero and ``skip`` reads only m̂(0.9)/ā, so the untrained policy is
"relative sign-momentum": Δx = −init_step_size · σ · tanh(m̂(0.9)/ā); the hidden layers start with
LeCun-normal weights and join in as soon as meta-training moves ``out``.

Example::

  theta = init_mlp_policy(jax.random.key(0))
  steps = mlp_policy_steps(theta, obs, scale)     # obs (..., 9), scale broadcastable to (...)
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metaopt.scale_free_features import MOMENTUM_FEATURE, SCALE_FREE_DIM

HIDDEN_SIZES = (32,)
LOG_STEP_MIN = -16.0
LOG_STEP_MAX = -1.0         # a step never exceeds e^-1 ≈ 37 % of the parameter scale
MLP_POLICY_KIND = "scale-free-mlp"

Theta = dict[str, Any]

__all__ = ["HIDDEN_SIZES", "LOG_STEP_MAX", "LOG_STEP_MIN", "init_mlp_policy", "is_mlp_policy",
           "mlp_policy_outputs", "mlp_policy_sizes", "mlp_policy_steps"]


def _layer_names(theta: Theta) -> list[str]:
    return sorted((k for k in theta if k.startswith("layer_")), key=lambda k: int(k[6:]))


def is_mlp_policy(theta) -> bool:
    """Whether ``theta`` looks like this module's policy (has ``skip`` and ``out``)."""
    return isinstance(theta, dict) and "skip" in theta and "out" in theta


def init_mlp_policy(key: jax.Array, *, hidden_sizes: tuple[int, ...] = HIDDEN_SIZES,
                    init_step_size: float = 0.01) -> Theta:
    """Fresh weights whose untrained step is ``−init_step_size · σ · tanh(m̂(0.9)/ā)``."""
    if not 0.0 < init_step_size <= math.exp(LOG_STEP_MAX):
        raise ValueError(f"init_step_size must be in (0, {math.exp(LOG_STEP_MAX):.3f}] (relative "
                         f"to the parameter scale), got {init_step_size}.")
    if not hidden_sizes or any(int(h) < 1 for h in hidden_sizes):
        raise ValueError(f"hidden_sizes must be positive integers, got {hidden_sizes}.")
    sizes = (SCALE_FREE_DIM, *map(int, hidden_sizes))
    keys = jax.random.split(key, len(hidden_sizes))
    theta: Theta = {}
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
        kernel = jax.random.normal(k, (n_in, n_out), jnp.float32) / np.sqrt(n_in)
        theta[f"layer_{i}"] = {"kernel": kernel, "bias": jnp.zeros((n_out,), jnp.float32)}
    skip = np.zeros((SCALE_FREE_DIM, 2), np.float32)
    skip[MOMENTUM_FEATURE, 0] = -1.0
    theta["skip"] = {"kernel": jnp.asarray(skip),
                     "bias": jnp.asarray([0.0, math.log(init_step_size)], jnp.float32)}
    theta["out"] = {"kernel": jnp.zeros((sizes[-1], 2), jnp.float32),
                    "bias": jnp.zeros((2,), jnp.float32)}
    return theta


def mlp_policy_sizes(theta: Theta) -> tuple[int, ...]:
    """Validates ``theta``; returns its hidden sizes.

    Raises:
      ValueError: naming the expected layout, when ``theta`` is not such a policy.
    """
    expected = ("expected {'skip': {'kernel': (9, 2), 'bias': (2,)}, 'layer_0': {'kernel': (9, H0), "
                "'bias': (H0,)}, ..., 'out': {'kernel': (H_last, 2), 'bias': (2,)}} "
                "(see metaopt.mlp_policy.init_mlp_policy)")
    if not is_mlp_policy(theta):
        raise ValueError(f"theta is not a scale-free MLP policy: {expected}")
    layers = _layer_names(theta)
    if sorted(theta) != sorted(["skip", "out", *layers]) or layers != [
            f"layer_{i}" for i in range(len(layers))] or not layers:
        raise ValueError(f"theta has keys {sorted(theta)}; {expected}")
    try:
        shapes = {name: {k: tuple(jnp.shape(v)) for k, v in theta[name].items()} for name in theta}
    except AttributeError as err:
        raise ValueError(f"theta's entries are not weight dicts; {expected}") from err
    sizes = tuple((shapes[name].get("bias") or (0,))[0] for name in layers)
    dims = (SCALE_FREE_DIM, *sizes)
    want = {f"layer_{i}": {"kernel": (dims[i], dims[i + 1]), "bias": (dims[i + 1],)}
            for i in range(len(layers))}
    want["skip"] = {"kernel": (SCALE_FREE_DIM, 2), "bias": (2,)}
    want["out"] = {"kernel": (dims[-1], 2), "bias": (2,)}
    if shapes != want or min(sizes) < 1:
        raise ValueError(f"theta has shapes {shapes}; {expected}")
    for leaf in jax.tree.leaves(theta):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise ValueError(f"theta has a non-float leaf ({jnp.result_type(leaf)}); {expected}")
    return sizes


def mlp_policy_outputs(theta: Theta, observations: jax.Array) -> jax.Array:
    """``[d, m]`` for every coordinate: ``(..., 9) → (..., 2)`` float32."""
    o = jnp.asarray(observations, jnp.float32)
    w = lambda name, key: jnp.asarray(theta[name][key], jnp.float32)
    h = o
    for name in _layer_names(theta):
        h = jax.nn.relu(h @ w(name, "kernel") + w(name, "bias"))
    return o @ w("skip", "kernel") + w("skip", "bias") + h @ w("out", "kernel") + w("out", "bias")


def mlp_policy_steps(theta: Theta, observations: jax.Array, scale) -> jax.Array:
    """The step Δx of every coordinate (before ``learning_rate``): ``(..., 9) → (...)``.

    ``scale`` (σ, the leaf's parameter scale) broadcasts against ``observations.shape[:-1]``.
    """
    out = mlp_policy_outputs(theta, observations)
    magnitude = jnp.exp(jnp.clip(out[..., 1], LOG_STEP_MIN, LOG_STEP_MAX))
    return jnp.asarray(scale, jnp.float32) * jnp.tanh(out[..., 0]) * magnitude
