"""The S-step of the 2016 GPS: regression of a policy onto the C-step controllers' mean actions.

Both policies minimise ½(μ(·) − (K s + k))ᵀ G⁻¹ (μ(·) − (K s + k)) over the samples, with G⁻¹
normalised by its median trace and clipped at twice the median (as in the reference):

* the 2016 MLP (:mod:`metaopt.l2o2016.policy`) on single points (o_t, target), Adam on random
  minibatches of points;
* the per-coordinate LSTM (:mod:`metaopt.policy`, shipped as ``metaopt.learned_opt``) by
  back-propagation through time on whole sampled trajectories: its input is Ψ (3 features per
  coordinate, :mod:`metaopt.features`) from a zero memory at t = 0, exactly as ``learned_opt`` runs
  it, and the d per-coordinate outputs at (c, n, t) form the action whose error is weighted by the
  same d × d precision as the MLP's.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaopt.gps import LinearGaussianController
from metaopt.l2o2016.policy import apply_mlp
from metaopt.training.policy_fit import fit_minibatches, minibatch_schedule, policy_means


class SStepData(NamedTuple):
    """Flattened points: observations ``(P, dO)``, targets ``(P, d)``, precisions ``(P, d, d)``."""

    observations: jax.Array
    targets: jax.Array
    precisions: jax.Array


def s_step_data(samples, controller: LinearGaussianController,
                valid: jax.Array) -> SStepData:
    """Targets K_t s + k_t at the samples and normalised precisions G_t⁻¹ (module docs).

    ``valid`` ``(C,)``: conditions whose samples are finite; the others get zero weight.
    """
    states = jnp.where(valid[:, None, None, None], samples.states[:, :, :-1], 0.0)
    observations = jnp.where(valid[:, None, None, None], samples.observations, 0.0)
    targets = (jnp.einsum("ctux,cntx->cntu", controller.gain, states)
               + controller.bias[:, None])
    precision = jnp.linalg.inv(controller.covariance)                  # (C, T, d, d)
    scale = jnp.trace(precision, axis1=-2, axis2=-1) / precision.shape[-1]
    median = jnp.median(jnp.where(valid[:, None], scale, jnp.nan)[valid])
    precision = precision * (jnp.minimum(scale, 2 * median) / (scale * median))[..., None, None]
    precision = jnp.where(valid[:, None, None, None], precision, 0.0)
    precision = jnp.broadcast_to(precision[:, None], targets.shape + targets.shape[-1:])
    dim_o, dim = observations.shape[-1], targets.shape[-1]
    return SStepData(observations.reshape(-1, dim_o).astype(jnp.float32),
                     jnp.where(valid[:, None, None, None], targets, 0.0).reshape(-1, dim)
                     .astype(jnp.float32),
                     precision.reshape(-1, dim, dim).astype(jnp.float32))


def s_step_loss(theta, data: SStepData) -> jax.Array:
    error = apply_mlp(theta, data.observations) - data.targets
    return 0.5 * jnp.einsum("pi,pij,pj->p", error, data.precisions, error).mean()


def trainable(theta):
    """The S-step's weights of the MLP (the whitening stays fixed)."""
    return {"hidden": theta["hidden"], "out": theta["out"]}


@partial(jax.jit, static_argnames=("optimizer", "num_steps", "batch_size"))
def s_step(theta, opt_state, data: SStepData, key, *, optimizer, num_steps: int,
           batch_size: int):
    """``num_steps`` Adam steps on random minibatches; whitening stays fixed."""
    count = data.targets.shape[0]
    batches = jax.random.randint(key, (num_steps, min(batch_size, count)), 0, count)

    def loss(weights, batch):
        return s_step_loss({**theta, **weights}, jax.tree.map(lambda a: a[batch], data))

    def step(carry, batch):
        weights, opt_state = carry
        value, grads = jax.value_and_grad(loss)(weights, batch)
        updates, opt_state = optimizer.update(grads, opt_state, weights)
        return (optax.apply_updates(weights, updates), opt_state), value

    (weights, opt_state), _ = jax.lax.scan(step, (trainable(theta), opt_state), batches)
    return {**theta, **weights}, opt_state


def whiten(theta, observations: jax.Array):
    """θ with obs_mean / obs_scale from these observations ``(P, dO)`` (std floored at 1e-4) and
    the whitened range they span, obs_low / obs_high, to which ``apply_mlp`` clips its input."""
    mean, scale = observations.mean(0), jnp.maximum(observations.std(0), 1e-4)
    whitened = (observations - mean) / scale
    return {**theta, "obs_mean": mean, "obs_scale": scale, "obs_low": whitened.min(0),
            "obs_high": whitened.max(0)}




class LSTMData(NamedTuple):
    """Whole trajectories: Ψ ``(B, T, d, 3)``, targets ``(B, T, d)``, precisions ``(B, T, d, d)``;
    B = C·N sampled trajectories."""

    psi: jax.Array
    targets: jax.Array
    precisions: jax.Array


def lstm_s_step_data(samples, controller: LinearGaussianController,
                     valid: jax.Array) -> LSTMData:
    """The MLP's targets and precisions (``s_step_data``) kept as trajectories, with Ψ."""
    points = s_step_data(samples, controller, valid)
    count, horizon, dim = samples.actions.shape[0] * samples.actions.shape[1], \
        samples.actions.shape[2], samples.actions.shape[3]
    psi = jnp.where(valid[:, None, None, None, None], samples.psi, 0.0)
    return LSTMData(psi.reshape(count, horizon, dim, -1).astype(jnp.float32),
                    points.targets.reshape(count, horizon, dim),
                    points.precisions.reshape(count, horizon, dim, dim))


def lstm_means(theta, psi: jax.Array) -> jax.Array:
    """The LSTM's mean steps on stored trajectories: Ψ ``(..., T, d, 3)`` → ``(..., T, d)``."""
    steps = policy_means(theta, jnp.swapaxes(psi, -3, -2))           # (..., d, T)
    return jnp.swapaxes(steps, -2, -1)


def lstm_s_step_loss(theta, data: LSTMData) -> jax.Array:
    error = lstm_means(theta, data.psi) - data.targets
    return 0.5 * jnp.einsum("bti,btij,btj->bt", error, data.precisions, error).mean()


@partial(jax.jit, static_argnames=("optimizer", "num_steps", "batch_size"))
def lstm_s_step(theta, opt_state, data: LSTMData, key, *, optimizer, num_steps: int,
                batch_size: int):
    """``num_steps`` Adam steps of BPTT on minibatches of ``batch_size`` trajectories."""
    count = data.targets.shape[0]
    schedule = minibatch_schedule(key, count, min(batch_size, count), num_steps)
    theta, opt_state, _ = fit_minibatches(theta, opt_state, data, schedule, optimizer=optimizer,
                                          loss_and_grad=jax.value_and_grad(lstm_s_step_loss))
    return theta, opt_state
