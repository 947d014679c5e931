"""Quadratic cost models of the C-step: the tied per-coordinate cost and its BADMM augmentation.

Costs are ``QuadraticCost`` over z = [s; a] per (group, t): ℓ_t(z) = ½ zᵀC_t z + c_tᵀz + c⁰_t.
Shapes: ``T`` steps, ``dX`` state, ``dU`` action; leading ``...`` are groups (and conditions).
"""

import jax
import jax.numpy as jnp

from metaopt.gps.types import BadmmDuals, LinearGaussianController, QuadraticCost


def horizon_weights(horizon: int, dtype=jnp.float32) -> jax.Array:
    """w_t = T − t, ``(T,)``: how many terms of the meta-loss Σ_t f(x_t) step t's action moves."""
    return (horizon - jnp.arange(horizon)).astype(dtype)


def tied_coordinate_cost(curvature: jax.Array, state_dim: int, action_dim: int = 1,
                         weights: jax.Array | None = None,
                         gradient_model: tuple[jax.Array, jax.Array] | None = None) -> QuadraticCost:
    """The per-coordinate cost w_t·(g*ᵀa + ½ h_t aᵀa) of SPEC §3, tied within a group.

    By default g* (the true-objective gradient) is the last ``action_dim`` entries of the state, so
    the cost is a quadratic in (s, a) with a cross term between those entries and a, and no
    constant. With ``gradient_model = (M, m)`` the state does not hold g*; its estimate
    E[g* | s] = M_t s + m_t stands in for it. The expected cost of any controller that acts on s
    alone is the same either way (E[g*ᵀa] = E[E[g*|s]ᵀa] when a depends on s only), but the LQG
    can no longer buy cost reductions with information the learned policy never sees.

    Args:
      curvature: h_{g,t}, ``(..., T)``, the measured curvature of f along the group's steps.
      state_dim: dX (79 for the GPS state of SPEC §3, 78 without g*).
      action_dim: dU (1: one coordinate's step).
      weights: w_t, ``(T,)`` or ``(..., T)``; default ``horizon_weights(T)``.
      gradient_model: optional ``(M (..., T, dU, dX), m (..., T, dU))``, e.g. from
        ``metaopt.gps.fit_conditional_mean``.

    Returns:
      ``QuadraticCost`` with hessian ``(..., T, dX + dU, dX + dU)``.
    """
    curvature = jnp.asarray(curvature)
    dtype = curvature.dtype
    horizon = curvature.shape[-1]
    if weights is None:
        weights = horizon_weights(horizon, dtype)
    weights = jnp.broadcast_to(jnp.asarray(weights, dtype), curvature.shape)
    dim = state_dim + action_dim
    eye_u = jnp.eye(action_dim, dtype=dtype)
    if gradient_model is None:
        coefficients = jnp.zeros((action_dim, state_dim), dtype).at[:, state_dim - action_dim:].set(eye_u)
        coefficients = jnp.broadcast_to(coefficients, (*curvature.shape, action_dim, state_dim))
        offset = jnp.zeros((*curvature.shape, action_dim), dtype)
    else:
        coefficients, offset = (jnp.asarray(x, dtype) for x in gradient_model)
        if coefficients.shape[-2:] != (action_dim, state_dim):
            raise ValueError(f"gradient_model's M has trailing shape {coefficients.shape[-2:]}; "
                             f"expected (dU, dX) = ({action_dim}, {state_dim}).")
    w = weights[..., None, None]
    hessian = jnp.zeros((*curvature.shape, dim, dim), dtype)
    hessian = hessian.at[..., state_dim:, state_dim:].set(w * curvature[..., None, None] * eye_u)
    hessian = hessian.at[..., state_dim:, :state_dim].set(w * coefficients)
    hessian = hessian.at[..., :state_dim, state_dim:].set(w * jnp.swapaxes(coefficients, -1, -2))
    gradient = jnp.zeros((*curvature.shape, dim), dtype)
    gradient = gradient.at[..., state_dim:].set(weights[..., None] * offset)
    return QuadraticCost(hessian, gradient, jnp.zeros(curvature.shape, dtype))


def controller_precision(controller: LinearGaussianController) -> tuple[jax.Array, jax.Array]:
    """Precision P = G⁻¹ ``(..., T, dU, dU)`` and log det G ``(..., T)``, via a Cholesky factor."""
    chol = jnp.linalg.cholesky(controller.covariance)
    eye = jnp.broadcast_to(jnp.eye(chol.shape[-1], dtype=chol.dtype), chol.shape)
    precision = jax.scipy.linalg.cho_solve((chol, True), eye)
    log_det = 2.0 * jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)
    return 0.5 * (precision + jnp.swapaxes(precision, -1, -2)), log_det


def negative_log_likelihood_cost(controller: LinearGaussianController) -> QuadraticCost:
    """−log ψ(a | s) of a linear-Gaussian controller as a quadratic in z = [s; a].

    With P = G⁻¹: C = [[KᵀPK, −KᵀP], [−PK, P]], c = [KᵀPk; −Pk], c⁰ = ½kᵀPk + ½log det(2πG).
    """
    gain, bias = controller.gain, controller.bias
    precision, log_det = controller_precision(controller)
    action_dim = bias.shape[-1]
    p_gain = precision @ gain                                   # (..., T, dU, dX)
    p_bias = jnp.einsum("...ij,...j->...i", precision, bias)    # (..., T, dU)
    top = jnp.concatenate([jnp.swapaxes(gain, -1, -2) @ p_gain, -jnp.swapaxes(p_gain, -1, -2)], -1)
    bottom = jnp.concatenate([-p_gain, precision], -1)
    hessian = jnp.concatenate([top, bottom], -2)
    gradient = jnp.concatenate([jnp.einsum("...ui,...u->...i", gain, p_bias), -p_bias], -1)
    constant = 0.5 * (jnp.einsum("...u,...u->...", bias, p_bias) + log_det
                      + action_dim * jnp.log(2 * jnp.pi))
    return QuadraticCost(0.5 * (hessian + jnp.swapaxes(hessian, -1, -2)), gradient, constant)


def add_costs(*terms: tuple[jax.Array, QuadraticCost]) -> QuadraticCost:
    """Σ_i w_i·ℓ_i for (w_i, ℓ_i) pairs; each w_i is a scalar or per-step ``(..., T)``."""
    hessian = gradient = constant = 0.0
    for weight, cost in terms:
        weight = jnp.asarray(weight, cost.constant.dtype)
        hessian = hessian + weight[..., None, None] * cost.hessian
        gradient = gradient + weight[..., None] * cost.gradient
        constant = constant + weight * cost.constant
    return QuadraticCost(hessian, gradient, constant)


def augmented_cost(cost: QuadraticCost, previous: LinearGaussianController, eta: jax.Array,
                   policy_linearization: LinearGaussianController | None = None,
                   duals: BadmmDuals | None = None) -> tuple[QuadraticCost, jax.Array]:
    """The C-step's BADMM-augmented cost and its per-step entropy temperature.

    Per step the controller ψ minimises E_ψ[ℓ_t − λ_tᵀa] + η·KL(ψ‖ψ_prev) + ν_t·KL(ψ‖π_lin), i.e.
    E_ψ[ℓ_t − λ_tᵀa − η log ψ_prev − ν_t log π_lin] − (η + ν_t)·H(ψ_t), which is what
    ``lqg.backward_pass`` solves given this cost and the temperature α_t = η + ν_t.
    (The reference code divides the same terms by η + ν_t; the optimal controller is identical.)

    Args:
      cost: the task cost (e.g. ``tied_coordinate_cost``), ``(..., T, ...)``.
      previous: ψ_prev, the controller that drew the samples (the trust-region reference).
      eta: η ≥ 0, ``(...)``.
      policy_linearization: π_lin(a|s) = N(K̄_t s + k̄_t, Σ^π); ``None`` drops the ν term.
      duals: λ_t and ν_t; ``None`` means λ = 0 and ν = 0. ν is used only with a linearisation.

    Returns:
      (augmented ``QuadraticCost``, temperature α ``(..., T)``).
    """
    eta = jnp.broadcast_to(jnp.asarray(eta, cost.hessian.dtype)[..., None], cost.constant.shape)
    return augment_aligned(cost, previous, eta, policy_linearization, duals)


def augment_aligned(cost: QuadraticCost, previous: LinearGaussianController, eta: jax.Array,
                    policy_linearization: LinearGaussianController | None = None,
                    duals: BadmmDuals | None = None) -> tuple[QuadraticCost, jax.Array]:
    """``augmented_cost`` with η shaped like ``cost.constant``: works on one time step's slices."""
    dtype = cost.hessian.dtype
    terms = [(1.0, cost), (eta, negative_log_likelihood_cost(previous))]
    temperature = eta
    if duals is not None:
        action_dim = duals.multiplier.shape[-1]
        multiplier = duals.multiplier.astype(dtype)
        dim = cost.gradient.shape[-1]
        gradient = jnp.zeros(multiplier.shape[:-1] + (dim,), dtype)
        gradient = gradient.at[..., dim - action_dim:].set(-multiplier)
        linear = QuadraticCost(jnp.zeros((), dtype), gradient, jnp.zeros((), dtype))
        terms.append((1.0, linear))
        if policy_linearization is not None:
            penalty = duals.penalty.astype(dtype)
            terms.append((penalty, negative_log_likelihood_cost(policy_linearization)))
            temperature = temperature + penalty
    return add_costs(*terms), temperature


def expected_cost(cost: QuadraticCost, mean: jax.Array, covariance: jax.Array) -> jax.Array:
    """E[ℓ_t(z_t)] ``(..., T)`` for z_t ~ N(mean ``(..., T, D)``, covariance ``(..., T, D, D)``)."""
    quadratic = jnp.einsum("...i,...ij,...j->...", mean, cost.hessian, mean)
    trace = jnp.einsum("...ij,...ji->...", cost.hessian, covariance)
    linear = jnp.einsum("...i,...i->...", cost.gradient, mean)
    return cost.constant + 0.5 * (quadratic + trace) + linear
