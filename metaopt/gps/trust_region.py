"""The KL trust region of the C-step: the η dual search and the step-multiplier adaptation.

``eta_search`` finds η such that the new controller's Σ_t KL(ψ_new ‖ ψ_prev) (under ψ_new's own
state marginals) meets the budget ε = T·kl_step·step_mult within ±10 %, as the reference does:
geometric bisection of [1e-4, 1e16] with moves capped at ×10, at most 50 tries, all inside one
``lax.while_loop``. A non-positive-definite Q_uu raises η to η + 1e-4, η + 2e-4, η + 4e-4, … and
redoes the backward pass (an inner ``while_loop``). Everything is vmapped over leading group
(and condition) axes, and runs in ``solve_dtype()``.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaopt.gps.cost import augment_aligned, expected_cost
from metaopt.gps.lqg import (
    BackwardPassResult,
    backward_recursion,
    controller_kl,
    forward_marginals,
    trajectory_kl,
)
from metaopt.gps.types import (
    BadmmDuals,
    LinearGaussianController,
    LinearGaussianDynamics,
    QuadraticCost,
    solve_dtype,
    to_solve_dtype,
)


class EtaSearchResult(NamedTuple):
    """Output of ``eta_search``; every field has the leading batch shape ``(...)``.

    Attributes:
      controller: the controller of the last backward pass (``(..., T, ...)``).
      eta: the η it was solved with (after any non-PD increase).
      kl: per-step KL(ψ_new ‖ ψ_prev), ``(..., T)``.
      kl_budget: ε.
      met_budget: |Σ KL − ε| ≤ tolerance·ε.
      satisfied: Σ KL ≤ (1 + tolerance)·ε (true also when the constraint is inactive at min η).
      failed: the backward pass stayed non-PD up to max η (the controller is then NaN).
      iterations: backward passes tried by the bisection.
    """

    controller: LinearGaussianController
    eta: jax.Array
    kl: jax.Array
    kl_budget: jax.Array
    met_budget: jax.Array
    satisfied: jax.Array
    failed: jax.Array
    iterations: jax.Array


def kl_budget(step_multiplier: jax.Array, horizon: int, kl_step: float = 0.2) -> jax.Array:
    """ε = T·kl_step·step_mult (the reference's total KL budget)."""
    return horizon * kl_step * jnp.asarray(step_multiplier)


def _batched(fn, batch_ndim: int, sequential: bool):
    """``fn`` over ``batch_ndim`` leading axes: nested ``vmap``, or a ``lax.map`` if sequential."""
    if not sequential:
        for _ in range(batch_ndim):
            fn = jax.vmap(fn)
        return fn

    def mapped(*args):
        batch_shape = jax.tree.leaves(args)[0].shape[:batch_ndim]
        flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[batch_ndim:]), args)
        out = jax.lax.map(lambda a: fn(*a), flat)
        return jax.tree.map(lambda x: x.reshape(batch_shape + x.shape[1:]), out)

    return mapped


def solve_with_pd_fallback(cost: QuadraticCost, dynamics: LinearGaussianDynamics,
                           previous: LinearGaussianController, eta: jax.Array,
                           policy_linearization: LinearGaussianController | None = None,
                           duals: BadmmDuals | None = None, eta_increment: float = 1e-4,
                           max_eta: float = 1e16) -> tuple[BackwardPassResult, jax.Array]:
    """Backward pass on the augmented cost at η, raising η while some Q_uu is not PD.

    One group (no batch axes; ``eta_search`` vmaps it). Tries η, then η + δ, η + 2δ, η + 4δ, …
    (δ = ``eta_increment``) until the pass succeeds or η ≥ ``max_eta``. The augmented cost is built
    per time step inside the backward scan.

    Returns:
      (``BackwardPassResult`` without the value function, the η used); ``result.failed`` is True
      if no η worked.
    """
    cost, dynamics, previous, policy_linearization, duals = to_solve_dtype(
        (cost, dynamics, previous, policy_linearization, duals))
    eta = jnp.asarray(eta, solve_dtype())

    def solve(eta_try):
        def step_cost(inputs_t):
            cost_t, previous_t, policy_t, duals_t = inputs_t
            eta_t = jnp.broadcast_to(eta_try, cost_t.constant.shape)
            augmented, temperature = augment_aligned(cost_t, previous_t, eta_t, policy_t, duals_t)
            return augmented.hessian, augmented.gradient, temperature

        return backward_recursion(step_cost, (cost, previous, policy_linearization, duals),
                                  dynamics)

    # Non-finite inputs fail for every η: do not walk all the way to max_eta. (The last step's
    # transition is unused, so it may hold anything.)
    used_dynamics = dynamics._replace(**{
        name: getattr(dynamics, name)[:-1]
        for name in ("state_matrix", "action_matrix", "offset", "covariance")})
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(
        (cost, used_dynamics, previous, policy_linearization, duals))]))

    def should_retry(carry):
        result, eta_try, _ = carry
        return result.failed & (eta_try < max_eta) & finite

    def retry(carry):
        _, _, increment = carry
        eta_try = eta + increment
        return solve(eta_try), eta_try, 2 * increment

    result, eta_used, _ = jax.lax.while_loop(
        should_retry, retry, (solve(eta), eta, jnp.asarray(eta_increment, eta.dtype)))
    return result, eta_used


def eta_search(cost: QuadraticCost, dynamics: LinearGaussianDynamics,
               previous: LinearGaussianController, budget: jax.Array,
               eta_init: jax.Array = 1.0,
               policy_linearization: LinearGaussianController | None = None,
               duals: BadmmDuals | None = None, min_eta: float = 1e-4, max_eta: float = 1e16,
               max_iterations: int = 50, tolerance: float = 0.1,
               sequential: bool = False) -> EtaSearchResult:
    """The C-step's KL-constrained LQG: find η meeting Σ_t KL(ψ_new ‖ ψ_prev) ≈ ε.

    Bisection in log η: KL too small ⇒ η too large ⇒ max_η ← η, η ← max(√(min_η·max_η), max_η/10);
    KL too large ⇒ min_η ← η, η ← min(√(min_η·max_η), 10·min_η). Stops when |KL − ε| < tolerance·ε,
    after ``max_iterations`` tries, or when η stops moving (the bracket collapsed on a bound).

    Args:
      cost: the task cost (``tied_coordinate_cost``), ``(..., T, D, D)``.
      dynamics: fitted dynamics, ``(..., T, ...)``.
      previous: ψ_prev, the controller that drew the samples, ``(..., T, ...)``.
      budget: ε, scalar or ``(...)`` (see ``kl_budget``).
      eta_init: the first η tried (warm start: the previous C-step's η), scalar or ``(...)``.
      policy_linearization, duals: BADMM terms (see ``cost.augmented_cost``); ``None`` to omit.
      sequential: solve the groups one after another (``lax.map``) instead of batched
        (``vmap``). Same results; on CPU it is faster (batched products of ~80×80 matrices
        do not pay there, and each group stops after its own number of tries).

    Returns:
      ``EtaSearchResult`` with batch shape ``(...)`` = the cost's leading axes.
    """
    dtype = solve_dtype()
    cost, dynamics, previous, policy_linearization, duals = to_solve_dtype(
        (cost, dynamics, previous, policy_linearization, duals))
    batch_shape = cost.constant.shape[:-1]
    budget = jnp.broadcast_to(jnp.asarray(budget, dtype), batch_shape)
    eta_init = jnp.broadcast_to(jnp.asarray(eta_init, dtype), batch_shape)

    def search_one(cost, dynamics, previous, policy_linearization, duals, budget, eta_init):
        def evaluate(eta):
            result, eta_used = solve_with_pd_fallback(
                cost, dynamics, previous, eta, policy_linearization, duals, max_eta=max_eta)
            return result, eta_used, trajectory_kl(result.controller, previous, dynamics)

        def assess(result, eta_used, kl, low, high):
            gap = kl.sum() - budget
            kl_small = gap < 0
            high = jnp.where(kl_small, eta_used, high)
            low = jnp.where(kl_small, low, eta_used)
            next_eta = jnp.where(kl_small, jnp.maximum(jnp.sqrt(low * high), 0.1 * high),
                                 jnp.minimum(jnp.sqrt(low * high), 10.0 * low))
            stuck = jnp.abs(next_eta - eta_used) <= 1e-9 * eta_used      # bracket collapsed
            done = (jnp.abs(gap) < tolerance * budget) | result.failed | stuck
            return low, high, next_eta, done

        def keep_going(carry):
            *_, iteration, done = carry
            return (~done) & (iteration < max_iterations)

        def bisect(carry):
            _, _, _, low, high, next_eta, iteration, _ = carry
            result, eta_used, kl = evaluate(next_eta)
            low, high, next_eta, done = assess(result, eta_used, kl, low, high)
            return result, eta_used, kl, low, high, next_eta, iteration + 1, done

        low, high = jnp.asarray(min_eta, dtype), jnp.asarray(max_eta, dtype)
        result, eta_used, kl = evaluate(jnp.clip(eta_init, low, high))
        low, high, next_eta, done = assess(result, eta_used, kl, low, high)
        carry = (result, eta_used, kl, low, high, next_eta, jnp.asarray(1), done)
        result, eta_used, kl, *_, iterations, _ = jax.lax.while_loop(keep_going, bisect, carry)
        total = kl.sum()
        return EtaSearchResult(
            controller=result.controller, eta=eta_used, kl=kl, kl_budget=budget,
            met_budget=jnp.abs(total - budget) <= tolerance * budget,
            satisfied=total <= (1 + tolerance) * budget, failed=result.failed,
            iterations=iterations)

    return _batched(search_one, len(batch_shape), sequential)(
        cost, dynamics, previous, policy_linearization, duals, budget, eta_init)


def estimated_cost(cost: QuadraticCost, controller: LinearGaussianController,
                   dynamics: LinearGaussianDynamics,
                   policy_linearization: LinearGaussianController | None = None,
                   penalty: jax.Array | None = None) -> jax.Array:
    """Laplace estimate Σ_t E[ℓ_t] + Σ_t ν_t·KL(ψ‖π_lin) of a controller under a model, ``(...)``.

    The expectations are under the controller's own forward marginals; used for the predicted and
    actual improvements of ``update_step_multiplier``.
    """
    marginals = forward_marginals(controller, dynamics)
    cost = jax.tree.map(lambda x: x.astype(marginals.mean.dtype), cost)
    total = expected_cost(cost, marginals.mean, marginals.covariance).sum(-1)
    if policy_linearization is not None and penalty is not None:
        kl = controller_kl(controller, policy_linearization, marginals)
        total = total + (jnp.asarray(penalty, kl.dtype) * kl).sum(-1)
    return total


def update_step_multiplier(step_multiplier: jax.Array, predicted_improvement: jax.Array,
                           actual_improvement: jax.Array, min_step_multiplier: float = 0.01,
                           max_step_multiplier: float = 10.0, min_change: float = 0.1,
                           max_change: float = 5.0) -> jax.Array:
    """New KL step multiplier from predicted vs actual improvement (SPEC §2).

    change = predicted / (2·max(1e-4·|predicted|, predicted − actual)), clipped to [0.1, 5]; the multiplier
    becomes clip(change·step_mult, 0.01, 10). This maximises the improvement model
    I(ε) = a·ε + b·ε² fitted to the two improvements.

    Args:
      step_multiplier, predicted_improvement, actual_improvement: scalars or ``(...)``;
        predicted = the C-step's own estimate of its improvement, actual = the improvement
        realised on fresh samples (``metaopt.training.gps_loop`` measures it with common random
        numbers). A non-positive prediction shrinks the multiplier by the most allowed.
    """
    predicted = jnp.asarray(predicted_improvement, jnp.result_type(float))
    actual = jnp.asarray(actual_improvement)
    # The reference's floor 1e-4 is absolute (its costs are O(1)); here it is relative to the
    # predicted improvement, so the rule reads the same at every scale of the objective.
    # (Not a denormal when predicted = 0: XLA on CPU flushes those to 0 and 0/0 was NaN.)
    floor = jnp.maximum(1e-4 * jnp.abs(predicted), jnp.finfo(predicted.dtype).tiny)
    change = predicted / (2.0 * jnp.maximum(floor, predicted - actual))
    change = jnp.clip(change, min_change, max_change)
    return jnp.clip(change * step_multiplier, min_step_multiplier, max_step_multiplier)
