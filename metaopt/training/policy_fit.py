"""The policy side of BADMM: linearisation of the LSTM per (group, t), S-step targets and BPTT fit.

Data are the tracked coordinates' sequences from ``rollout``: observations Ψ ``(N, G, K, T, 3)``
and GPS states s ``(N, G, K, T, dX)``, with a ``(G, K)`` mask for padded coordinates. The LSTM is
run over each sequence from a zero memory (``metaopt.policy.unroll_policy``), exactly as
``learned_opt`` runs it on a task.

* ``fit_policy_linearization``: π_lin,g,t(a|s) = N(K̄ s + k̄, Σ̄) by regressing the LSTM mean step on
  s over the pooled tracked coordinates × samples of (g, t), with the same NIW machinery as the
  dynamics (a prior pooled over the group's time steps, a ridge on s); Σ̄ = residual variance + Σ^π.
* ``s_step``: minimise Σ w·(μ_ω(o) − μ*)² / (2·Σ mask) by Adam over minibatches of sequences, in
  whitened units of the observations and targets (``whitening``; folded back exactly), with
  μ* = K_t s + k_t − G_t λ_t / ν_t (the minimiser of λᵀμ + ν·½‖μ − μ_ψ‖²_{G⁻¹}, given the C-step's
  −λᵀa cost term) and w = ν_t·G_t⁻¹ normalised by its median and clipped at 2× the median, as in the
  reference.
"""

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaopt.gps.dynamics import condition_gaussian, pooled_time_prior, posterior_mean_covariance
from metaopt.gps.moments import moments_from_points
from metaopt.gps.types import BadmmDuals, LinearGaussianController, solve_dtype
from metaopt.policy import Theta, init_carry, policy_hidden_size, unroll_policy


def policy_means(theta: Theta, observations: jax.Array) -> jax.Array:
    """μ_ω over stored sequences: ``(..., T, 3)`` -> ``(..., T)``, zero initial memory."""
    batch_shape, horizon = observations.shape[:-2], observations.shape[-2]
    flat = observations.reshape((-1, horizon, observations.shape[-1]))
    carry = init_carry(flat[:, 0, 0], policy_hidden_size(theta))
    _, steps = unroll_policy(theta, carry, jnp.swapaxes(flat, 0, 1))    # (T, B)
    return jnp.swapaxes(steps, 0, 1).reshape(batch_shape + (horizon,))


def controller_means(controller: LinearGaussianController, states: jax.Array) -> jax.Array:
    """K_{g,t} s + k_{g,t} for states ``(N, G, K, T, dX)`` and gains ``(G, T, 1, dX)``."""
    return (jnp.einsum("ngktx,gtx->ngkt", states, controller.gain[..., 0, :])
            + controller.bias[None, :, None, :, 0])


def fit_policy_linearization(states: jax.Array, means: jax.Array, mask: jax.Array,
                             policy_variance: jax.Array, prior_strength: float = 1.0,
                             ridge: float = 1e-3) -> LinearGaussianController:
    """Per-(g, t) linear-Gaussian fit of the LSTM's mean step on the GPS state.

    Args:
      states: ``(N, G, K, T, dX)``.
      means: ``(N, G, K, T)`` μ_ω at those states' observations.
      mask: ``(G, K)`` weights of the tracked coordinates.
      policy_variance: Σ^π, ``(G,)`` or scalar, added to the residual variance.

    Returns:
      ``LinearGaussianController`` gain ``(G, T, 1, dX)``, bias ``(G, T, 1)``, covariance
      ``(G, T, 1, 1)``, in the solve dtype (float64 under ``metaopt.gps.float64()``).
    """
    state_dim = states.shape[-1]
    points = jnp.concatenate([states, means[..., None]], -1)       # (N, G, K, T, dX + 1)
    points = jnp.moveaxis(points, (1, 3), (0, 1))                  # (G, T, N, K, D)
    points = points.reshape(points.shape[:2] + (-1, points.shape[-1]))
    weights = jnp.broadcast_to(mask[:, None, None, :], points.shape[:2] + (means.shape[0],
                                                                          mask.shape[-1]))
    moments = moments_from_points(points, weights.reshape(points.shape[:3]), dtype=solve_dtype())
    prior = pooled_time_prior(moments, prior_strength)
    prior = prior._replace(mean=prior.mean[:, None], covariance=prior.covariance[:, None])
    mean, covariance = posterior_mean_covariance(moments, prior)
    gain, offset, residual = condition_gaussian(mean, covariance, state_dim, ridge)
    variance = jnp.broadcast_to(jnp.asarray(policy_variance, residual.dtype),
                                (residual.shape[0],))
    return LinearGaussianController(gain, offset, residual + variance[:, None, None, None])


def policy_variance(controller: LinearGaussianController, penalty: jax.Array) -> jax.Array:
    """Σ^π per group: the inverse of the ν-weighted mean controller precision, ``(G,)``."""
    precision = 1.0 / controller.covariance[..., 0, 0]
    return penalty.sum(-1) / (penalty * precision).sum(-1)


class SStepData(NamedTuple):
    """Flattened S-step sequences: observations ``(S, T, 3)``, targets ``(S, T)``, weights ``(S, T)``.

    S = N·G·K sequences; padded coordinates have weight 0.
    """

    observations: jax.Array
    targets: jax.Array
    weights: jax.Array


def s_step_data(observations: jax.Array, states: jax.Array, mask: jax.Array,
                controller: LinearGaussianController, duals: BadmmDuals) -> SStepData:
    """Targets μ* = K s + k − G λ/ν and normalised Mahalanobis weights ν·G⁻¹ (module docs)."""
    covariance = controller.covariance[..., 0, 0]                    # (G, T)
    shift = covariance * duals.multiplier[..., 0] / duals.penalty
    targets = controller_means(controller, states) - shift[None, :, None, :]
    raw = jnp.broadcast_to((duals.penalty / covariance)[None, :, None, :], targets.shape)
    valid = jnp.broadcast_to(mask[None, :, :, None], targets.shape) > 0
    median = jnp.nanmedian(jnp.where(valid, raw, jnp.nan))
    weights = jnp.where(valid, jnp.minimum(raw, 2 * median) / median, 0.0)
    horizon = targets.shape[-1]
    return SStepData(observations.reshape(-1, horizon, observations.shape[-1]),
                     targets.reshape(-1, horizon).astype(jnp.float32),
                     weights.reshape(-1, horizon).astype(jnp.float32))


class Whitening(NamedTuple):
    """Affine maps of the S-step's inputs and targets to zero mean, unit variance.

    Attributes: ``observation_mean``, ``observation_scale`` ``(3,)``; ``target_mean``,
    ``target_scale`` scalars. Statistics over the entries with positive weight.
    """

    observation_mean: jax.Array
    observation_scale: jax.Array
    target_mean: jax.Array
    target_scale: jax.Array


def whitening(data: SStepData) -> Whitening:
    """The ``Whitening`` of ``data`` (the reference whitens the S-step's observations; ours the
    targets too, so that Adam's steps are in the units of what the policy must fit)."""
    valid = (data.weights > 0).astype(jnp.float32)
    count = jnp.maximum(valid.sum(), 1.0)

    def stats(x, weight):
        axes = tuple(range(valid.ndim))              # (S, T): per feature for observations
        mean = (weight * x).sum(axes) / count
        var = (weight * jnp.square(x - mean)).sum(axes) / count
        scale = jnp.sqrt(var)
        # A constant input (spread below float rounding of its mean) keeps unit scale.
        return mean, jnp.where(scale > 1e-6 * jnp.abs(mean), scale, 1.0)

    obs_mean, obs_scale = stats(data.observations, valid[..., None])
    target_mean, target_scale = stats(data.targets, valid)
    return Whitening(obs_mean, obs_scale, target_mean, target_scale)


def whiten(data: SStepData, w: Whitening) -> SStepData:
    """``data`` in whitened units (same weights: the loss only scales by ``target_scale``²)."""
    return data._replace(
        observations=(data.observations - w.observation_mean) / w.observation_scale,
        targets=(data.targets - w.target_mean) / w.target_scale)


def to_whitened(theta: Theta, w: Whitening) -> Theta:
    """The policy that, on whitened inputs, outputs the whitened steps of ``theta`` (exactly)."""
    n = w.observation_mean.shape[-1]
    kernel, bias = jnp.asarray(theta["gates"]["kernel"]), jnp.asarray(theta["gates"]["bias"])
    obs_rows = kernel[:n]
    return {
        "gates": {"kernel": kernel.at[:n].set(obs_rows * w.observation_scale[:, None]),
                  "bias": bias + w.observation_mean @ obs_rows},
        "head": {"kernel": theta["head"]["kernel"] / w.target_scale,
                 "bias": (theta["head"]["bias"] - w.target_mean) / w.target_scale},
    }


def from_whitened(theta_w: Theta, w: Whitening) -> Theta:
    """The inverse of ``to_whitened``: fold the whitening back into the gate and head weights."""
    n = w.observation_mean.shape[-1]
    kernel, bias = jnp.asarray(theta_w["gates"]["kernel"]), jnp.asarray(theta_w["gates"]["bias"])
    obs_rows = kernel[:n] / w.observation_scale[:, None]
    return {
        "gates": {"kernel": kernel.at[:n].set(obs_rows), "bias": bias - w.observation_mean @ obs_rows},
        "head": {"kernel": theta_w["head"]["kernel"] * w.target_scale,
                 "bias": theta_w["head"]["bias"] * w.target_scale + w.target_mean},
    }


def s_step_loss(theta: Theta, data: SStepData) -> jax.Array:
    """Σ w·(μ_ω(o) − μ*)² / (2·#sequences·T): the weighted squared error of the S-step."""
    error = policy_means(theta, data.observations) - data.targets
    return 0.5 * jnp.sum(data.weights * jnp.square(error)) / data.targets.size


def minibatch_schedule(key: jax.Array, count: int, batch_size: int, num_steps: int) -> jax.Array:
    """Indices ``(num_steps, batch_size)`` of the S-step's minibatches.

    The ``count`` sequences are shuffled once and visited cyclically (as in the reference); a
    remainder smaller than a minibatch is skipped.
    """
    order = jax.random.permutation(key, count)
    usable = (count // batch_size) * batch_size
    starts = (jnp.arange(num_steps) * batch_size) % usable
    return order[starts[:, None] + jnp.arange(batch_size)]


def fit_minibatches(theta: Theta, opt_state, data: SStepData, schedule: jax.Array, *,
                    optimizer: optax.GradientTransformation, loss_and_grad=None):
    """One optimizer step per row of ``schedule`` (``lax.scan``); returns theta, state, losses.

    ``loss_and_grad(theta, batch) -> (loss, grads)`` defaults to ``value_and_grad(s_step_loss)``;
    ``metaopt.training.mesh`` passes one that splits each minibatch over devices.
    """
    loss_and_grad = jax.value_and_grad(s_step_loss) if loss_and_grad is None else loss_and_grad

    def step(carry, idx):
        theta, opt_state = carry
        loss, grads = loss_and_grad(theta, jax.tree.map(lambda a: a[idx], data))
        updates, opt_state = optimizer.update(grads, opt_state, theta)
        return (optax.apply_updates(theta, updates), opt_state), loss

    (theta, opt_state), losses = jax.lax.scan(step, (theta, opt_state), schedule)
    return theta, opt_state, losses


@partial(jax.jit, static_argnames=("optimizer", "num_steps", "batch_size"))
def s_step(theta: Theta, opt_state, data: SStepData, key: jax.Array, *,
           optimizer: optax.GradientTransformation, num_steps: int,
           batch_size: int) -> tuple[Theta, optax.OptState, jax.Array]:
    """``num_steps`` Adam steps of BPTT on minibatches of ``batch_size`` sequences.

    The sequences are shuffled once per call and visited cyclically (``minibatch_schedule``).

    Returns:
      ``(theta, opt_state, losses)``, losses ``(num_steps,)`` on the minibatches.
    """
    count = data.targets.shape[0]
    schedule = minibatch_schedule(key, count, min(batch_size, count), num_steps)
    return fit_minibatches(theta, opt_state, data, schedule, optimizer=optimizer)
