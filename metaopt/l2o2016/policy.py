"""The 2016 policy (one hidden layer of 50 softplus units) and its optax transformation.

The MLP maps the whole observation o_t (:mod:`metaopt.l2o2016.features`, H + (H + 1)·d numbers)
to the whole step Δx (d numbers): it is dense over the coordinates, so one trained policy applies
to one problem dimension d. ``theta`` is a plain dict of float32 arrays::

  {"hidden": {"kernel": (dO, 50), "bias": (50,)}, "out": {"kernel": (50, d), "bias": (d,)},
   "obs_mean": (dO,), "obs_scale": (dO,), "obs_low": (dO,), "obs_high": (dO,)}

``obs_mean`` / ``obs_scale`` whiten the observation (set from the first S-step's data and then
frozen, as in the authors' code); the whitened observation is clipped to [obs_low, obs_high], the
range of that data (ours). They are part of the policy, not trained.

Example::

  theta = init_mlp(jax.random.key(0), dim=4)
  tx = l2o2016_opt(theta)
  state = tx.init(params)                       # params: any pytree with 4 float entries in all
  updates, state = tx.update(grads, state, params, value=loss)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from jax.flatten_util import ravel_pytree

from metaopt.l2o2016 import features

HIDDEN = 50
MLP = dict[str, Any]
_MAGIC = "metaopt-l2o2016-mlp"


def init_mlp(key: jax.Array, dim: int, *, history: int = features.HISTORY,
             hidden: int = HIDDEN, out_scale: float = 1e-2) -> MLP:
    """LeCun-normal hidden layer, a small random output layer (initial steps ≈ 0), no whitening."""
    obs_dim = features.observation_dim(dim, history)
    k1, k2 = jax.random.split(key)
    return {
        "hidden": {"kernel": jax.random.normal(k1, (obs_dim, hidden)) / jnp.sqrt(obs_dim),
                   "bias": jnp.zeros((hidden,))},
        "out": {"kernel": out_scale * jax.random.normal(k2, (hidden, dim)) / jnp.sqrt(hidden),
                "bias": jnp.zeros((dim,))},
        "obs_mean": jnp.zeros((obs_dim,)),
        "obs_scale": jnp.ones((obs_dim,)),
        "obs_low": jnp.full((obs_dim,), -jnp.inf),
        "obs_high": jnp.full((obs_dim,), jnp.inf),
    }


def mlp_dims(theta: MLP) -> tuple[int, int]:
    """(observation width dO, problem dimension d) of a policy."""
    return int(theta["hidden"]["kernel"].shape[0]), int(theta["out"]["kernel"].shape[1])


def mlp_history(theta: MLP) -> int:
    """H such that dO = H + (H + 1)·d."""
    obs_dim, dim = mlp_dims(theta)
    history, rest = divmod(obs_dim - dim, dim + 1)
    if rest or history < 0:
        raise ValueError(f"policy input width {obs_dim} fits no history length for d = {dim}.")
    return history


def apply_mlp(theta: MLP, obs: jax.Array) -> jax.Array:
    """μ_ω(o): ``(..., dO)`` → ``(..., d)``, softplus hidden layer, linear output."""
    z = (obs - theta["obs_mean"]) / theta["obs_scale"]
    if "obs_low" in theta:
        # The range of the whitening data: outside it the linear output would extrapolate without
        # bound (an objective rising from ~0 gives relative changes of 1e3+, which fed back into
        # ever larger steps and diverged on 2 logistic test objectives; results/l2o2016/README.md).
        z = jnp.clip(z, theta["obs_low"], theta["obs_high"])
    h = jax.nn.softplus(z @ theta["hidden"]["kernel"] + theta["hidden"]["bias"])
    return h @ theta["out"]["kernel"] + theta["out"]["bias"]


class L2O2016State(NamedTuple):
    """State of :func:`l2o2016_opt`: the iterate history (values and gradients, newest first)."""

    history: features.History


def l2o2016_opt(theta: MLP) -> optax.GradientTransformationExtraArgs:
    """The learned 2016 optimizer as an optax transformation.

    The params pytree is flattened (``jax.flatten_util.ravel_pytree``, leaves in tree order) into
    x ∈ R^d; d must equal the policy's output width. Each update pushes (``value``, gradient) into
    the history, builds o_t and returns the MLP's step, unflattened into each leaf's dtype.
    Computation is float32.

    Raises (at ``init``/``update`` time, i.e. while tracing):
      ValueError: the params have a different total size than the policy's d; ``value`` missing
        or not a scalar.
      TypeError: a leaf is not floating point.
    """
    obs_dim, dim = mlp_dims(theta)
    history_len = mlp_history(theta)
    theta = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), theta)

    def flatten(tree, what: str) -> jax.Array:
        for leaf in jax.tree.leaves(tree):
            if not jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating):
                raise TypeError(f"l2o2016_opt: every {what} leaf must be floating point, got "
                                f"{jnp.asarray(leaf).dtype}.")
        flat, unravel = ravel_pytree(tree)
        if flat.shape != (dim,):
            raise ValueError(
                f"l2o2016_opt: this policy was trained for problems of dimension {dim} (its MLP is "
                f"dense over the coordinates) but the {what} have {flat.size} entries in total.")
        return flat, unravel

    def init_fn(params):
        flatten(params, "params")
        return L2O2016State(features.init_history(dim, history_len))

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        if value is None:
            raise ValueError("l2o2016_opt needs the objective value: call "
                             "tx.update(grads, state, params, value=loss).")
        value = jnp.asarray(value)
        if value.shape != ():
            raise ValueError(f"l2o2016_opt: value must be a scalar, got shape {value.shape}.")
        grad, unravel = flatten(updates, "updates")
        hist = features.push(state.history, value.astype(jnp.float32), grad.astype(jnp.float32))
        step = apply_mlp(theta, features.observation(hist))
        return unravel(step.astype(grad.dtype)), L2O2016State(hist)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def save_mlp(path: str | os.PathLike, theta: MLP, metadata: dict[str, Any] | None = None) -> None:
    """msgpack file (flax.serialization) holding the weights and a JSON header."""
    obs_dim, dim = mlp_dims(theta)
    header = {"format": _MAGIC, "version": 1, "observation_dim": obs_dim, "dim": dim,
              "history": mlp_history(theta), "hidden": int(theta["hidden"]["bias"].shape[0]),
              "activation": "softplus", "metadata": metadata or {}}
    payload = {"header": json.dumps(header),
               "theta": jax.tree.map(lambda a: np.asarray(a, np.float32), theta)}
    Path(path).write_bytes(serialization.msgpack_serialize(payload))


def load_mlp(path: str | os.PathLike) -> tuple[MLP, dict[str, Any]]:
    """(theta, header) from :func:`save_mlp`'s file."""
    payload = serialization.msgpack_restore(Path(path).read_bytes())
    header = json.loads(payload.get("header", "{}"))
    if header.get("format") != _MAGIC:
        raise ValueError(f"{path} is not a metaopt 2016 MLP policy file.")
    return jax.tree.map(jnp.asarray, payload["theta"]), header
