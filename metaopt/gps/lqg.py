"""Maximum-entropy LQG under linear-Gaussian dynamics: backward pass, forward marginals, KL.

The backward pass solves, for a linear-Gaussian controller ψ_t(a|s),

    min_ψ  Σ_t E[ℓ_t(s_t, a_t)] − α_t·H(ψ_t(·|s_t)),    s_{t+1} ~ N(A_t s_t + B_t a_t + c_t, F_t),

with ℓ_t a ``QuadraticCost`` over z = [s; a] and per-step temperatures α_t > 0 (η + ν_t in the
C-step). Working in each step's own units (Q̃_t = Q_t / α_t), the recursion is the reference's:

    Q̃_t = ℓ_t/α_t + (α_{t+1}/α_t)·[A B]ᵀ Ṽ_{t+1} [A B],  q̃_t likewise with (ṽ_{t+1} + Ṽ_{t+1} c_t),
    K_t = −Q̃_uu⁻¹ Q̃_ux,  k_t = −Q̃_uu⁻¹ q̃_u,  G_t = Q̃_uu⁻¹,  Ṽ_t = Q̃_xx + Q̃_xu K_t,

so (K, k) is the deterministic LQR solution and G_t = α_t·Q_uu⁻¹. A non-positive-definite
Q̃_uu makes the Cholesky factor NaN; the pass then reports ``failed`` (the η search raises η and
redoes it).

Batch axes: every function accepts leading axes ``...`` (groups, conditions) shared by its inputs.
Computation is in ``solve_dtype()`` (float64 under ``metaopt.gps.float64()``).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaopt.gps.types import (
    LinearGaussianController,
    LinearGaussianDynamics,
    QuadraticCost,
    StateActionMarginals,
    symmetrize,
    to_solve_dtype,
)


class BackwardPassResult(NamedTuple):
    """Output of ``backward_pass``.

    Attributes:
      controller: the optimal ``LinearGaussianController``, ``(..., T, ...)``.
      value_hessian: Ṽ_t, ``(..., T, dX, dX)``, in step t's units (divided by α_t).
      value_gradient: ṽ_t, ``(..., T, dX)``.
      failed: ``(...)`` bool, True where some Q̃_uu was not positive definite (outputs then NaN).
    """

    controller: LinearGaussianController
    value_hessian: jax.Array
    value_gradient: jax.Array
    failed: jax.Array


def _time_first(tree, batch_ndim: int):
    """Move every leaf's time axis (the one after ``batch_ndim`` leading axes) to the front."""
    return jax.tree.map(lambda x: jnp.moveaxis(x, batch_ndim, 0), tree)


def _time_back(tree, batch_ndim: int):
    return jax.tree.map(lambda x: jnp.moveaxis(x, 0, batch_ndim), tree)


def _transition(dynamics: LinearGaussianDynamics) -> jax.Array:
    """[A_t B_t], ``(..., T, dX, dX + dU)``."""
    return jnp.concatenate([dynamics.state_matrix, dynamics.action_matrix], axis=-1)


def backward_pass(cost: QuadraticCost, dynamics: LinearGaussianDynamics,
                  temperature: jax.Array | None = None, *,
                  value_function: bool = True) -> BackwardPassResult:
    """Time-varying max-entropy LQG by a reverse ``lax.scan``.

    Args:
      cost: ℓ_t, hessian ``(..., T, D, D)``, gradient ``(..., T, D)``, D = dX + dU.
      dynamics: matrices ``(..., T, ...)``; step T − 1's transition is unused.
      temperature: α_t > 0, ``(..., T)``; default ones.
      value_function: also return Ṽ_t, ṽ_t for every t (else they are ``None``, which saves
        writing ``(..., T, dX, dX)`` per call).

    Returns:
      ``BackwardPassResult``.
    """
    cost = to_solve_dtype(cost)
    if temperature is None:
        temperature = jnp.ones(cost.constant.shape, cost.hessian.dtype)
    temperature = jnp.broadcast_to(to_solve_dtype(temperature), cost.constant.shape)
    return backward_recursion(lambda step: step, (cost.hessian, cost.gradient, temperature),
                              dynamics, value_function=value_function)


def backward_recursion(step_cost, inputs, dynamics: LinearGaussianDynamics, *,
                       value_function: bool = False) -> BackwardPassResult:
    """The backward pass with the per-step cost computed inside the scan.

    ``step_cost(inputs_t) -> (hessian_t, gradient_t, temperature_t)`` builds step t's
    (un-normalised) cost from the time-t slice of ``inputs``, a pytree whose leaves all have shape
    ``(..., T, ...)`` with the dynamics' batch axes. Building e.g. the KL-augmented cost per step
    avoids materialising ``(..., T, D, D)`` arrays, which dominates the η search's memory traffic.
    """
    dynamics = to_solve_dtype(dynamics)
    state_dim = dynamics.state_matrix.shape[-1]
    batch_shape = dynamics.initial_mean.shape[:-1]
    batch_ndim = len(batch_shape)
    dtype = dynamics.state_matrix.dtype
    horizon = dynamics.offset.shape[-2]
    is_last = jnp.arange(horizon) == horizon - 1

    def step(carry, xs):
        value_hessian, value_gradient, next_temperature = carry
        inputs_t, transition, offset, last = xs
        hessian, gradient, temperature = step_cost(inputs_t)
        hessian = hessian / temperature[..., None, None]
        gradient = gradient / temperature[..., None]
        scale = next_temperature / temperature
        transition_t = jnp.swapaxes(transition, -1, -2)
        future_hessian = scale[..., None, None] * (transition_t @ value_hessian @ transition)
        future_gradient = scale[..., None] * jnp.einsum(
            "...ij,...j->...i", transition_t,
            value_gradient + jnp.einsum("...ij,...j->...i", value_hessian, offset))
        # The last step has no successor; masking (not multiplying) keeps unused NaN dynamics out.
        q_hessian = symmetrize(hessian + jnp.where(last, 0.0, future_hessian))
        q_gradient = gradient + jnp.where(last, 0.0, future_gradient)
        q_uu = q_hessian[..., state_dim:, state_dim:]
        q_ux = q_hessian[..., state_dim:, :state_dim]
        chol = jnp.linalg.cholesky(q_uu)
        eye = jnp.broadcast_to(jnp.eye(q_uu.shape[-1], dtype=q_uu.dtype), q_uu.shape)
        solved = jax.scipy.linalg.cho_solve(
            (chol, True), jnp.concatenate([q_ux, q_gradient[..., state_dim:, None], eye], -1))
        gain = -solved[..., :state_dim]
        bias = -solved[..., state_dim]
        covariance = symmetrize(solved[..., state_dim + 1:])
        q_xu = jnp.swapaxes(q_ux, -1, -2)
        value_hessian = symmetrize(q_hessian[..., :state_dim, :state_dim] + q_xu @ gain)
        value_gradient = q_gradient[..., :state_dim] + jnp.einsum("...ij,...j->...i", q_xu, bias)
        failed = ~jnp.all(jnp.isfinite(chol), axis=(-2, -1))
        outputs = (gain, bias, covariance, failed)
        if value_function:
            outputs += (value_hessian, value_gradient)
        return (value_hessian, value_gradient, temperature), outputs

    init = (jnp.zeros((*batch_shape, state_dim, state_dim), dtype),
            jnp.zeros((*batch_shape, state_dim), dtype), jnp.ones(batch_shape, dtype))
    xs = (_time_first((inputs, _transition(dynamics), dynamics.offset), batch_ndim) + (is_last,))
    _, outputs = jax.lax.scan(step, init, xs, reverse=True)
    outputs = _time_back(outputs, batch_ndim)
    gain, bias, covariance, failed = outputs[:4]
    value_hessian, value_gradient = outputs[4:] if value_function else (None, None)
    return BackwardPassResult(LinearGaussianController(gain, bias, covariance), value_hessian,
                              value_gradient, jnp.any(failed, axis=-1))


def forward_recursion(controller: LinearGaussianController, dynamics: LinearGaussianDynamics,
                      per_step, inputs=None):
    """Propagate the marginals forward, emitting ``per_step(controller_t, marginals_t, inputs_t)``.

    ``marginals_t`` is step t's ``StateActionMarginals`` (no time axis); ``inputs`` is an optional
    pytree of ``(..., T, ...)`` arrays sliced per step like the controller. Returns the stacked
    outputs with the time axis after the batch axes.
    """
    controller, dynamics = to_solve_dtype(controller), to_solve_dtype(dynamics)
    batch_ndim = dynamics.initial_mean.ndim - 1

    def step(carry, xs):
        state_mean, state_cov = carry
        controller_t, transition, offset, noise, inputs_t = xs
        gain, bias, action_cov = controller_t
        action_mean = jnp.einsum("...ij,...j->...i", gain, state_mean) + bias
        cross = gain @ state_cov                                       # (..., dU, dX)
        action_block = symmetrize(cross @ jnp.swapaxes(gain, -1, -2) + action_cov)
        mean = jnp.concatenate([state_mean, action_mean], -1)
        covariance = jnp.concatenate([
            jnp.concatenate([state_cov, jnp.swapaxes(cross, -1, -2)], -1),
            jnp.concatenate([cross, action_block], -1)], -2)
        next_mean = jnp.einsum("...ij,...j->...i", transition, mean) + offset
        next_cov = symmetrize(transition @ covariance @ jnp.swapaxes(transition, -1, -2) + noise)
        outputs = per_step(controller_t, StateActionMarginals(mean, covariance), inputs_t)
        return (next_mean, next_cov), outputs

    xs = _time_first((controller, _transition(dynamics), dynamics.offset, dynamics.covariance,
                      inputs), batch_ndim)
    _, outputs = jax.lax.scan(step, (dynamics.initial_mean, dynamics.initial_covariance), xs)
    return _time_back(outputs, batch_ndim)


def forward_marginals(controller: LinearGaussianController,
                      dynamics: LinearGaussianDynamics) -> StateActionMarginals:
    """Gaussian marginals of z_t = [s_t; a_t] by a forward ``lax.scan``.

    s_0 ~ N(initial_mean, initial_covariance); a_t | s_t ~ ψ_t; s_{t+1} | z_t ~ dynamics.

    Returns:
      ``StateActionMarginals`` with mean ``(..., T, dX + dU)``, covariance ``(..., T, D, D)``.
    """
    return forward_recursion(controller, dynamics, lambda _, marginals, __: marginals)


def trajectory_kl(new: LinearGaussianController, old: LinearGaussianController,
                  dynamics: LinearGaussianDynamics) -> jax.Array:
    """``controller_kl(new, old, forward_marginals(new, dynamics))`` in one scan, ``(..., T)``.

    Never materialises the ``(..., T, D, D)`` marginals.
    """
    return forward_recursion(new, dynamics,
                             lambda new_t, marginals, old_t: controller_kl(new_t, old_t, marginals),
                             to_solve_dtype(old))


def controller_kl(new: LinearGaussianController, old: LinearGaussianController,
                  marginals: StateActionMarginals) -> jax.Array:
    """Per-step E_{s_t}[KL(new(·|s_t) ‖ old(·|s_t))] with s_t from ``marginals``, clamped at 0.

    With P = G_old⁻¹, ΔK = K_new − K_old, Δk = k_new − k_old and s_t ~ N(m, S):
    KL_t = ½[tr(P G_new) − dU + log|G_old| − log|G_new| + (ΔK m + Δk)ᵀP(ΔK m + Δk) + tr(ΔKᵀPΔK S)].
    This equals the reference's M/v form but avoids its cancellations at large η.

    Returns:
      ``(..., T)``. Also the predicted KL(ψ ‖ π_lin) when ``old`` is the policy linearisation.
    """
    new, old, marginals = to_solve_dtype(new), to_solve_dtype(old), to_solve_dtype(marginals)
    state_dim = new.gain.shape[-1]
    action_dim = new.bias.shape[-1]
    state_mean = marginals.mean[..., :state_dim]
    state_cov = marginals.covariance[..., :state_dim, :state_dim]
    chol_old = jnp.linalg.cholesky(old.covariance)
    chol_new = jnp.linalg.cholesky(new.covariance)
    delta_gain = new.gain - old.gain
    delta_mean = jnp.einsum("...ij,...j->...i", delta_gain, state_mean) + new.bias - old.bias
    whitened_mean = jax.scipy.linalg.solve_triangular(chol_old, delta_mean[..., None], lower=True)
    whitened_gain = jax.scipy.linalg.solve_triangular(chol_old, delta_gain, lower=True)
    whitened_chol = jax.scipy.linalg.solve_triangular(chol_old, chol_new, lower=True)
    log_det_old = 2 * jnp.log(jnp.diagonal(chol_old, axis1=-2, axis2=-1)).sum(-1)
    log_det_new = 2 * jnp.log(jnp.diagonal(chol_new, axis1=-2, axis2=-1)).sum(-1)
    kl = 0.5 * (
        jnp.square(whitened_chol).sum((-2, -1)) - action_dim + log_det_old - log_det_new
        + jnp.square(whitened_mean).sum((-2, -1))
        + jnp.einsum("...ij,...jk,...ik->...", whitened_gain, state_cov, whitened_gain))
    return jnp.maximum(kl, 0.0)
