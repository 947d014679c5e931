"""GPS rollouts: N noisy linear-Gaussian-controller runs on a task, vmapped over samples.

One rollout runs the per-group controllers (``metaopt.controller.controller_step``) for T steps with
``lax.scan``; the N samples are ``jax.vmap``-ed inside each scan step so that the per-(group, t)
regression moments of y = [s_t; a_t; s_{t+1}] are pooled over samples *and* coordinates as they are
produced (no coordinate's trajectory is kept, except for the tracked subset below).

Recorded:
  * moments per (group, t) of [s_t; a_t; s_{t+1}] (``metaopt.gps.moments``), t = 0..T−1;
  * the true objective f(x_t), t = 0..T, per sample;
  * the Rayleigh-quotient terms of the curvature along each group's step (``curvature``);
  * for a fixed random subset of K coordinates per group ("tracked"), the observation sequences Ψ
    (the policy's input), the GPS states s and the sampled actions: the S-step data.

All samples start from the same x_0 (as in the reference, variability comes from the controller's
exploration noise, and here also from the minibatches). Shapes: G groups (leaves of params, in
``jax.tree.leaves`` order), N samples, K tracked coordinates per group, dX = 79, D = 2·dX + 1.
"""

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt import features
from metaopt.controller import controller_step, linear_gaussian_controller
from metaopt.gps.moments import moments_from_points, transition_points
from metaopt.gps.types import LinearGaussianController, RegressionMoments
from metaopt.training.curvature import group_rayleigh_terms, pooled_curvature


class TrackedCoordinates(NamedTuple):
    """Which coordinates of each group keep full sequences.

    Attributes:
      index: ``(G, K)`` int32, flat indices into each leaf (padded by repetition).
      mask: ``(G, K)`` float32, 1 for real entries, 0 for padding (groups with fewer than K
        coordinates).
    """

    index: np.ndarray
    mask: np.ndarray


class RolloutData(NamedTuple):
    """What one batch of rollouts returns.

    Attributes:
      moments: ``RegressionMoments`` with count ``(G, T)``, first ``(G, T, D)``, second
        ``(G, T, D, D)``: transition t pooled over samples × coordinates. Transition T − 1 ends in
        the state s_T observed after the last action.
      true_objective: ``(N, T + 1)`` f(x_t).
      curvature: ``(G, T)`` pooled h_{g,t} (ratio of sums over samples, clipped at 0).
      observations: ``(N, G, K, T, 3)`` Ψ of the tracked coordinates.
      states: ``(N, G, K, T, dX)`` GPS states of the tracked coordinates.
      actions: ``(N, G, K, T)`` their sampled actions.
    """

    moments: RegressionMoments
    true_objective: jax.Array
    curvature: jax.Array
    observations: jax.Array
    states: jax.Array
    actions: jax.Array


def select_tracked(key: jax.Array, params, num_tracked: int) -> TrackedCoordinates:
    """K = ``num_tracked`` random coordinates per leaf (all of them, padded, for smaller leaves)."""
    sizes = [leaf.size for leaf in jax.tree.leaves(params)]
    index = np.zeros((len(sizes), num_tracked), np.int32)
    mask = np.zeros((len(sizes), num_tracked), np.float32)
    for g, (size, k) in enumerate(zip(sizes, jax.random.split(key, len(sizes)), strict=True)):
        chosen = np.asarray(jax.random.permutation(k, size))[:num_tracked]
        index[g] = np.resize(chosen, num_tracked)
        mask[g, : len(chosen)] = 1.0
    return TrackedCoordinates(index, mask)


def _take_tracked(leaves, index):
    """Per group: leaf.reshape(-1)[index[g]] stacked to ``(G, K, ...)``."""
    return jnp.stack([leaf.reshape((-1,) + leaf.shape[leaf.ndim - extra:])[index[g]]
                      for g, (leaf, extra) in enumerate(leaves)])


class _Carry(NamedTuple):
    params: Any
    controller_state: Any
    observation_history: Any   # per group ObservationHistory of the tracked coordinates (G, K)
    prev_value: jax.Array
    prev_states: Any           # per group (n_g, dX): s_{t−1}
    prev_actions: Any          # per group (n_g,): a_{t−1}


def _sample_step(task, controllers, tracked_index, carry: _Carry, step_key, t):
    """One step of one sample: act, measure, and return the transition pieces."""
    value, grad = jax.value_and_grad(task.minibatch_objective(step_key))(carry.params)
    true_value, true_grad = jax.value_and_grad(task.true_loss)(carry.params)
    actions, controller_state, states = controller_step(
        controllers, grad, carry.controller_state, carry.params, value=value, true_grad=true_grad)
    numerator, denominator = group_rayleigh_terms(task.true_loss, carry.params, actions)

    objective_change = features.relative_objective_change(t, value, carry.prev_value)
    param_leaves = jax.tree.leaves(carry.params)
    grad_leaves = jax.tree.leaves(grad)
    x_tracked = _take_tracked([(x, 0) for x in param_leaves], tracked_index)
    g_tracked = _take_tracked([(g, 0) for g in grad_leaves], tracked_index)
    observations, observation_history = features.observation_features(
        carry.observation_history, x_tracked, g_tracked, objective_change)

    state_leaves = [s.reshape(-1, features.GPS_STATE_DIM) for s in jax.tree.leaves(states)]
    action_leaves = [a.reshape(-1).astype(jnp.float32) for a in jax.tree.leaves(actions)]
    new_carry = _Carry(
        params=optax.apply_updates(carry.params, actions),
        controller_state=controller_state,
        observation_history=observation_history,
        prev_value=value.astype(jnp.float32),
        prev_states=state_leaves,
        prev_actions=action_leaves,
    )
    outputs = dict(
        true_value=true_value.astype(jnp.float32), numerator=numerator, denominator=denominator,
        observations=observations,
        states=_take_tracked([(s, 1) for s in state_leaves], tracked_index),
        actions=_take_tracked([(a, 0) for a in action_leaves], tracked_index),
    )
    transitions = [transition_points(s_prev, a_prev[:, None], s)
                   for s_prev, a_prev, s in zip(carry.prev_states, carry.prev_actions,
                                                state_leaves, strict=True)]
    return new_carry, outputs, transitions


@partial(jax.jit, static_argnames=("num_samples",))
def rollout(task, controllers: LinearGaussianController, init_key: jax.Array,
            sample_key: jax.Array, tracked_index: jax.Array, *,
            num_samples: int) -> RolloutData:
    """N rollouts of T = controllers' horizon steps from x_0 = ``task.init_params(init_key)``.

    Args:
      task: a task pytree (``init_params``, ``minibatch_objective``, ``true_loss``).
      controllers: stacked per-group controllers, gain ``(G, T, 1, dX)``.
      init_key: seeds x_0 (shared by all samples).
      sample_key: seeds the exploration noise and minibatches of each sample.
      tracked_index: ``(G, K)`` from ``select_tracked``.
      num_samples: N.

    Returns:
      ``RolloutData``. T + 1 states are visited (the last step's action is not recorded).
    """
    sample_keys = jax.random.split(sample_key, num_samples)
    moments, outputs = rollout_samples(task, controllers, init_key, sample_keys, tracked_index)
    return assemble_rollout(moments, outputs)


def rollout_samples(task, controllers: LinearGaussianController, init_key: jax.Array,
                    sample_keys: jax.Array, tracked_index: jax.Array):
    """The body of ``rollout`` for explicit per-sample keys ``(n,)``, before assembly (not jitted).

    ``metaopt.training.mesh`` runs it on each device's share of the keys, adds the moments across
    devices and gathers the per-sample outputs before ``assemble_rollout``.

    Returns:
      ``(moments, outputs)``: moments per scan step ``(T + 1, G, ...)`` summed over these samples'
      coordinates (step t holds transition t − 1; step 0's is empty), and a dict of per-sample
      scan outputs, time-major ``(T + 1, n, ...)``.
    """
    horizon = controllers.gain.shape[-3]
    params = task.init_params(init_key)

    def init_sample(key):
        noise_key, data_key = jax.random.split(key)
        controller_state = linear_gaussian_controller(controllers, key=noise_key).init(params)
        leaves = jax.tree.leaves(params)
        tracked = _take_tracked([(x, 0) for x in leaves], tracked_index)
        carry = _Carry(
            params=params, controller_state=controller_state,
            observation_history=features.init_observation_history(tracked),
            prev_value=jnp.zeros((), jnp.float32),
            prev_states=[jnp.zeros((x.size, features.GPS_STATE_DIM), jnp.float32)
                         for x in leaves],
            prev_actions=[jnp.zeros((x.size,), jnp.float32) for x in leaves])
        return carry, jax.random.split(data_key, horizon + 1)

    carry, step_keys = jax.vmap(init_sample)(sample_keys)      # step_keys (N, T + 1)

    def scan_step(carry, xs):
        keys_t, t = xs
        carry, outputs, transitions = jax.vmap(
            lambda c, k: _sample_step(task, controllers, tracked_index, c, k, t))(carry, keys_t)
        weight = (t > 0).astype(jnp.float32)
        per_group = [moments_from_points(
            p.reshape(-1, p.shape[-1]), jnp.full(p.shape[0] * p.shape[1], weight))
            for p in transitions]
        moments = jax.tree.map(lambda *m: jnp.stack(m), *per_group)
        return carry, (outputs, moments)

    _, (outputs, moments) = jax.lax.scan(
        scan_step, carry, (jnp.swapaxes(step_keys, 0, 1), jnp.arange(horizon + 1)))
    return moments, outputs


def assemble_rollout(moments: RegressionMoments, outputs: dict) -> RolloutData:
    """``RolloutData`` from ``rollout_samples``' moments and outputs (of all N samples)."""
    horizon = outputs["true_value"].shape[0] - 1
    # Step t emitted transition t − 1: drop step 0's (empty) moments; keep steps 0..T−1 elsewhere.
    moments = jax.tree.map(lambda m: jnp.swapaxes(m[1:], 0, 1), moments)    # (G, T, ...)
    sequence = lambda a: jnp.moveaxis(a[:horizon], 0, 3)                    # (N, G, K, T, ...)
    curvature = pooled_curvature(jnp.moveaxis(outputs["numerator"][:horizon], 1, 0),
                                 jnp.moveaxis(outputs["denominator"][:horizon], 1, 0))
    return RolloutData(
        moments=moments,
        true_objective=outputs["true_value"].T,
        curvature=curvature.T,
        observations=sequence(outputs["observations"]),
        states=sequence(outputs["states"]),
        actions=sequence(outputs["actions"]),
    )
