"""Linear-Gaussian controllers on the scale-free features: GPS's teachers for the MLP policy (ours).

The scale-free policy (:mod:`metaopt.mlp_policy`) steps every coordinate by σ·u(φ), σ its leaf's
parameter scale and φ its 9 features (:mod:`metaopt.scale_free_features`). The controllers GPS
optimises for it act on the same features and in the same relative units, tied within a group
g (a leaf) and varying with the step t::

  u = K_{g,t} φ + k_{g,t} + √V_{g,t}·ε,     Δx = learning_rate · σ_g · u,     ε ~ N(0, 1)

so whatever they do, π can express it input for input, and the KL between two controllers (or
between a controller and π) is measured in u, the same for every scale of the problem. They are
``LinearGaussianController``s with gain ``(G, T, 1, 9)``, bias ``(G, T, 1)``, covariance
``(G, T, 1, 1)``; the gains on the features that are constant within a (g, t) — the two clocks and
vector-or-matrix, collinear with the bias — are kept 0 by GPS (``CONTROLLER_FEATURES``). Beyond
the horizon the last step's controller is held. The exploration noise of coordinate j at step t
is a function of (key, t, g, j) only, so two controllers run with one key see the same noise
(common random numbers).

Example::

  ctrl = relative_momentum_controller(step_size=0.05, horizon=400, num_groups=6)
  tx = scale_free_controller(ctrl, key=jax.random.key(0))
  updates, state = tx.update(grads, tx.init(params), params, value=loss)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt.gps.types import LinearGaussianController
from metaopt.scale_free_features import MOMENTUM_FEATURE, SCALE_FREE_DIM
from metaopt.scale_free_optimizer import (
    init_scale_free_state,
    learning_rate_at,
    scale_free_update,
)

CONTROLLER_FEATURES = (0, 1, 2, 3, 4, 5)   # ĝ, three momenta, the objective's change and trend

__all__ = ["CONTROLLER_FEATURES", "controller_noise", "controller_relative_steps",
           "controller_step_rule", "relative_momentum_controller", "scale_free_controller"]


def relative_momentum_controller(*, step_size: float, horizon: int, num_groups: int,
                                 exploration_std: float = 0.2) -> LinearGaussianController:
    """u = −step_size·m̂(0.9)/ā + noise of std ``exploration_std·step_size``, every (g, t).

    The linear twin of the untrained MLP policy (−step_size·tanh(m̂(0.9)/ā)): relative
    momentum, the hand-designed starting point of GPS on the scale-free features.
    """
    if not step_size > 0 or not exploration_std > 0 or horizon < 1 or num_groups < 1:
        raise ValueError("relative_momentum_controller needs step_size > 0, exploration_std > 0, "
                         f"horizon ≥ 1, num_groups ≥ 1; got {step_size}, {exploration_std}, "
                         f"{horizon}, {num_groups}.")
    gain = np.zeros((num_groups, horizon, 1, SCALE_FREE_DIM), np.float32)
    gain[..., 0, MOMENTUM_FEATURE] = -step_size
    variance = (exploration_std * step_size) ** 2
    return LinearGaussianController(
        gain=gain, bias=np.zeros((num_groups, horizon, 1), np.float32),
        covariance=np.full((num_groups, horizon, 1, 1), variance, np.float32))


def controller_relative_steps(controllers: LinearGaussianController, group: int, obs, count,
                              noise=None) -> jax.Array:
    """u of every coordinate of group ``group`` at step ``count``: ``obs (..., 9) → (...)``.

    ``noise``: standard normal draws shaped like the result, or ``None`` for the mean.
    """
    horizon = controllers.gain.shape[-3]
    t = jnp.minimum(count, horizon - 1)
    pick = lambda a: jax.lax.dynamic_index_in_dim(a[group], t, keepdims=False)
    gain = pick(controllers.gain)[0].astype(jnp.float32)
    mean = obs @ gain + pick(controllers.bias)[0].astype(jnp.float32)
    if noise is None:
        return mean
    std = jnp.sqrt(jnp.maximum(pick(controllers.covariance)[0, 0].astype(jnp.float32), 0.0))
    return mean + std * noise


def controller_noise(key: jax.Array, count, group: int, shape) -> jax.Array:
    """The standard normal draws of group ``group`` at step ``count`` (module docs)."""
    return jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, count), group), shape,
                             jnp.float32)


def controller_step_rule(controllers: LinearGaussianController, key: jax.Array | None,
                         learning_rate=1.0):
    """The ``step_rule`` of ``scale_free_update`` for these controllers: Δx = lr·σ·u."""
    def rule(group, obs, scale, count):
        noise = None if key is None else controller_noise(key, count, group, obs.shape[:-1])
        return learning_rate * scale * controller_relative_steps(controllers, group, obs, count,
                                                                 noise)
    return rule


def _check(controllers: LinearGaussianController) -> None:
    if not isinstance(controllers, LinearGaussianController):
        raise ValueError(f"expected a LinearGaussianController, got {type(controllers).__name__}")
    g = jnp.shape(controllers.gain)
    if len(g) != 4 or g[2] != 1 or g[3] != SCALE_FREE_DIM:
        raise ValueError(f"controllers' gain must be (G, T, 1, {SCALE_FREE_DIM}), got {g} "
                         "(see relative_momentum_controller)")
    if jnp.shape(controllers.bias) != g[:3] or jnp.shape(controllers.covariance) != g[:3] + (1,):
        raise ValueError(f"controllers' bias must be {g[:3]} and covariance {g[:3] + (1,)}, got "
                         f"{jnp.shape(controllers.bias)} and {jnp.shape(controllers.covariance)}")


def scale_free_controller(controllers: LinearGaussianController, *, key: jax.Array | None = None,
                          learning_rate: optax.ScalarOrSchedule = 1.0
                          ) -> optax.GradientTransformationExtraArgs:
    """The controllers (module docs) as an optax transformation.

    Args:
      controllers: gain ``(G, T, 1, 9)``, one group per leaf in ``jax.tree.leaves`` order.
      key: exploration noise; ``None`` takes the mean step.
      learning_rate: multiplies every step (as ``scale_free_opt``'s).

    Returns:
      ``update(grads, state, params=None, *, value)``; the state is ``ScaleFreeOptState``.
    """
    _check(controllers)
    groups = jnp.shape(controllers.gain)[0]

    def init_fn(params):
        leaves = jax.tree.leaves(params)
        if len(leaves) != groups:
            raise ValueError(f"scale_free_controller: params have {len(leaves)} leaves but the "
                             f"controllers {groups} groups (one per leaf).")
        return init_scale_free_state(params, owner="scale_free_controller")

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        rule = controller_step_rule(controllers, key, learning_rate_at(learning_rate, state.count))
        steps, new_state, _ = scale_free_update(updates, state, value, rule,
                                                owner="scale_free_controller")
        return steps, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
