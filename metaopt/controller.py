"""Time-varying linear-Gaussian controllers ψ(a | s, t) = N(K_t s + k_t, G_t) as optax transforms.

This is how guided policy search draws its samples (SPEC §3): one controller per coordinate group
(one leaf of the params pytree: a weight matrix or a bias vector), acting independently on every
coordinate's GPS state ``s = [Φ (76), ĝ, a(t−1), g*]`` (:mod:`metaopt.features`). The
transformation keeps the Φ history (running averages of gradients, iterates and objective values
at stride-5 lags, ~1 KiB per parameter) and a(t−1) in its state, so the shipped
:func:`metaopt.learned_opt` stays light.

Example::

  ctrl = momentum_controller(learning_rate=0.1, momentum=0.9, horizon=400, variance=1e-6)
  tx = linear_gaussian_controller(ctrl, key=jax.random.key(0))   # key=None: the mean action
  state = tx.init(params)
  updates, state = tx.update(grads, state, params, value=loss, true_grad=full_grads)
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaopt import features
from metaopt.gps.types import LinearGaussianController

__all__ = [
    "ControllerState",
    "controller_step",
    "linear_gaussian_controller",
    "momentum_controller",
]


class ControllerState(NamedTuple):
    """State of :func:`linear_gaussian_controller`.

    Attributes:
      count: int32, number of finite ``value``s seen: the time step t that selects (K_t, k_t, G_t).
      objective_history: :class:`metaopt.features.AverageHistory` of f̂ (one per problem).
      history: per leaf, a :class:`metaopt.features.GPSHistory` (ḡ and x̄ rings, own count).
      prev_action: per leaf, a(t−1) in float32 (0 at t = 0).
      key: the PRNG key for exploration noise, or None for the deterministic mean.
      nonfinite_count: int32, number of updates in which some leaf was skipped.
    """

    count: jax.Array
    objective_history: features.AverageHistory
    history: Any
    prev_action: Any
    key: Any
    nonfinite_count: jax.Array


def momentum_controller(
    *,
    learning_rate: float,
    momentum: float,
    horizon: int,
    variance: float = 1e-6,
    num_groups: int | None = None,
) -> LinearGaussianController:
    """Heavy-ball momentum ``a = μ·a(t−1) − γ·ĝ`` written as a linear-Gaussian controller.

    K_t has ``momentum`` on the a(t−1) entry of the GPS state and ``−learning_rate`` on the ĝ
    entry, k_t = 0 and G_t = ``variance``. Its mean is exactly ``optax.sgd(learning_rate,
    momentum)``. Shapes: ``(horizon, 1, GPS_STATE_DIM)`` etc., with a leading ``num_groups``
    axis when given (one controller per leaf, in ``jax.tree.leaves`` order).
    """
    gain = jnp.zeros((horizon, 1, features.GPS_STATE_DIM), jnp.float32)
    gain = gain.at[:, 0, features.GRADIENT_INDEX].set(-learning_rate)
    gain = gain.at[:, 0, features.PREV_ACTION_INDEX].set(momentum)
    controller = LinearGaussianController(
        gain=gain,
        bias=jnp.zeros((horizon, 1), jnp.float32),
        covariance=jnp.full((horizon, 1, 1), variance, jnp.float32),
    )
    if num_groups is not None:
        controller = jax.tree.map(
            lambda a: jnp.broadcast_to(a, (num_groups,) + a.shape), controller
        )
    return controller


def _per_leaf_controllers(controllers, treedef) -> list[LinearGaussianController]:
    """Controllers in leaf order from any of the three accepted forms (see the factory)."""
    num_leaves = treedef.num_leaves
    if isinstance(controllers, LinearGaussianController):
        ndim = jnp.ndim(controllers.gain)
        if ndim == 3:
            return [controllers] * num_leaves
        if ndim == 4:
            if controllers.gain.shape[0] != num_leaves:
                raise ValueError(
                    f"stacked controllers have {controllers.gain.shape[0]} groups but the "
                    f"params have {num_leaves} leaves"
                )
            return [jax.tree.map(lambda a, i=i: a[i], controllers) for i in range(num_leaves)]
        raise ValueError(f"controller gain must be (T, 1, dX) or (G, T, 1, dX), got ndim {ndim}")
    is_ctrl = lambda c: isinstance(c, LinearGaussianController)
    leaves, ctrl_treedef = jax.tree.flatten(controllers, is_leaf=is_ctrl)
    if ctrl_treedef != treedef or not all(map(is_ctrl, leaves)):
        raise ValueError(
            "controllers must be one LinearGaussianController (shared or stacked over leaves) "
            f"or a pytree of them shaped like params: params {treedef}, controllers {ctrl_treedef}"
        )
    return leaves


def _check_controller(controller: LinearGaussianController) -> None:
    gain, bias, cov = (jnp.shape(a) for a in controller)
    horizon = gain[0] if len(gain) == 3 else None
    if gain != (horizon, 1, features.GPS_STATE_DIM) or bias != (horizon, 1) or cov != (
        horizon, 1, 1
    ):
        raise ValueError(
            "each controller needs gain (T, 1, 79), bias (T, 1), covariance (T, 1, 1); got "
            f"{gain}, {bias}, {cov}"
        )


def _init(params) -> tuple:
    return (
        jax.tree.map(features.init_gps_history, params),
        jax.tree.map(lambda x: jnp.zeros_like(x, dtype=jnp.float32), params),
    )


def controller_step(
    controllers, updates, state: ControllerState, params, *, value, true_grad
):
    """One controller update that also returns the GPS states it acted on.

    Same arguments as the transformation's ``update`` (plus ``controllers``, any of the forms
    :func:`linear_gaussian_controller` accepts). For GPS rollouts that record (s_t, a_t).

    Returns:
      ``(actions, new_state, gps_states)``: ``gps_states`` is a pytree like params with leaves
      ``leaf.shape + (GPS_STATE_DIM,)`` float32.
    """
    if value is None or true_grad is None:
        raise ValueError(
            "the controller needs the minibatch objective and the true-objective gradient: "
            "call tx.update(grads, state, params, value=loss, true_grad=full_grads)."
        )
    if params is None:
        raise ValueError("the controller needs params: tx.update(grads, state, params, ...)")
    value = jnp.asarray(value)
    if value.shape != ():
        raise ValueError(f"value must be a scalar objective, got shape {value.shape}")
    value = value.astype(jnp.float32)

    grad_leaves, treedef = jax.tree.flatten(updates)
    try:
        param_leaves = treedef.flatten_up_to(params)
        true_grad_leaves = treedef.flatten_up_to(true_grad)
        histories = treedef.flatten_up_to(state.history)
        prev_actions = treedef.flatten_up_to(state.prev_action)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"updates, params, true_grad and the controller state must share one structure: {err}"
        ) from err
    for leaf in grad_leaves + param_leaves:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(f"the controller supports float leaves only, got {leaf.dtype}")
    leaf_controllers = _per_leaf_controllers(controllers, treedef)

    value_ok = jnp.isfinite(value)
    phi_objective, objective_history = features.objective_features(
        state.objective_history, state.count, value
    )
    objective_history = jax.tree.map(
        lambda new, old: jnp.where(value_ok, new, old), objective_history, state.objective_history
    )
    if state.key is None:
        key, leaf_keys = None, [None] * len(grad_leaves)
    else:
        key, *leaf_keys = jax.random.split(state.key, len(grad_leaves) + 1)

    actions, new_histories, new_prev_actions, gps_states, skipped = [], [], [], [], []
    for grad, x, g_star, history, a_prev, ctrl, leaf_key in zip(
        grad_leaves, param_leaves, true_grad_leaves, histories, prev_actions,
        leaf_controllers, leaf_keys, strict=True,
    ):
        ok = value_ok
        for leaf in (grad, x, g_star):
            ok = ok & jnp.all(jnp.isfinite(leaf))
        s, new_history = features.gps_state(history, phi_objective, x, grad, a_prev, g_star)
        horizon = ctrl.gain.shape[0]
        t = jnp.minimum(state.count, horizon - 1)  # beyond T: hold the last controller
        gain = jax.lax.dynamic_index_in_dim(ctrl.gain, t, keepdims=False)[0].astype(jnp.float32)
        bias = jax.lax.dynamic_index_in_dim(ctrl.bias, t, keepdims=False)[0].astype(jnp.float32)
        action = s @ gain + bias
        if leaf_key is not None:
            cov = jax.lax.dynamic_index_in_dim(ctrl.covariance, t, keepdims=False)[0, 0]
            noise = jax.random.normal(leaf_key, action.shape, jnp.float32)
            action = action + jnp.sqrt(jnp.maximum(cov.astype(jnp.float32), 0.0)) * noise
        ok = ok & jnp.all(jnp.isfinite(action))
        keep = lambda new, old, ok=ok: jnp.where(ok, new, old).astype(old.dtype)
        actions.append(jnp.where(ok, action, 0.0).astype(grad.dtype))
        new_histories.append(jax.tree.map(keep, new_history, history))
        new_prev_actions.append(keep(action, a_prev))
        gps_states.append(s)
        skipped.append(~ok)

    any_skipped = jnp.any(jnp.stack(skipped)) if skipped else jnp.zeros((), bool)
    new_state = ControllerState(
        count=state.count + value_ok.astype(jnp.int32),
        objective_history=objective_history,
        history=treedef.unflatten(new_histories),
        prev_action=treedef.unflatten(new_prev_actions),
        key=key,
        nonfinite_count=state.nonfinite_count + any_skipped.astype(jnp.int32),
    )
    return treedef.unflatten(actions), new_state, treedef.unflatten(gps_states)


def linear_gaussian_controller(
    controllers, *, key: jax.Array | None = None
) -> optax.GradientTransformationExtraArgs:
    """Linear-Gaussian controllers acting per coordinate on the GPS state, as an optax transform.

    Args:
      controllers: one :class:`~metaopt.gps.types.LinearGaussianController` per group, where a
        group is one leaf of params, given as either
        (a) a pytree shaped like params whose leaves are controllers (gain ``(T, 1, 79)``),
        (b) one controller stacked over groups (gain ``(G, T, 1, 79)``, G = number of leaves,
        in ``jax.tree.leaves(params)`` order: what a solver vmapped over groups returns), or
        (c) one unstacked controller shared by every leaf.
      key: PRNG key for exploration noise, ``a ~ N(K_t s + k_t, G_t)`` independently per
        coordinate; ``None`` takes the deterministic mean ``K_t s + k_t``. The key is carried
        and split in the state; for a batch of rollouts, build the transformation inside
        ``jax.vmap`` over keys.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(grads, state, params, *,
      value, true_grad)`` returns the actions a_t in the gradient leaves' dtypes. ``value`` is
      the minibatch objective f̂(x_t) and ``true_grad`` the privileged true-objective gradient
      g*(x_t) (pytree like grads); other keyword arguments are ignored. The time step t is the
      state's ``count``; beyond the controllers' horizon T the last step's (K, k, G) is held.

    Non-finite inputs: a leaf whose gradient, parameters or true gradient contain NaN/inf (or
    whose action would), or every leaf when ``value`` is not finite, takes a zero step and keeps
    its history and a(t−1); ``state.nonfinite_count`` counts such updates.

    Example::

      ctrl = momentum_controller(learning_rate=0.1, momentum=0.9, horizon=400,
                                 num_groups=len(jax.tree.leaves(params)))
      tx = linear_gaussian_controller(ctrl, key=jax.random.key(0))
      state = tx.init(params)
      updates, state = tx.update(grads, state, params, value=loss, true_grad=full_grads)
    """
    for ctrl in jax.tree.leaves(
        controllers, is_leaf=lambda c: isinstance(c, LinearGaussianController)
    ):
        if not isinstance(ctrl, LinearGaussianController):
            raise ValueError(f"expected LinearGaussianController leaves, got {type(ctrl)}")
        _check_controller(
            ctrl if jnp.ndim(ctrl.gain) == 3 else jax.tree.map(lambda a: a[0], ctrl)
        )

    def init_fn(params):
        history, prev_action = _init(params)
        return ControllerState(
            count=jnp.zeros((), jnp.int32),
            objective_history=features.init_average_history(jnp.zeros((), jnp.float32)),
            history=history,
            prev_action=prev_action,
            key=key,
            nonfinite_count=jnp.zeros((), jnp.int32),
        )

    def update_fn(updates, state, params=None, *, value=None, true_grad=None, **extra_args):
        del extra_args
        actions, new_state, _ = controller_step(
            controllers, updates, state, params, value=value, true_grad=true_grad
        )
        return actions, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
