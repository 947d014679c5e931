"""The pathwise C-step: exact gradients of the sampled rollouts' objective, a natural-gradient step.

The fitted per-coordinate dynamics see only the diagonal Hessian of f, while a tied controller moves
a whole group at once (SPEC §3, "Known dynamics"). The base learner's training is a differentiable
JAX program, so this C-step differentiates the controllers' own samples instead: with the samples'
exploration noise and minibatches held fixed (reparameterisation, common random numbers), the meta
objective

    J(ψ) = mean over samples and t = 0..T of f(x_t)

is a deterministic function of the tied gains θ_{g,t} = [K_{g,t}, k_{g,t}], and ``jax.grad``
through the T-step unroll (rematerialised in blocks, so memory grows with √T) gives ∇J. The step
per group g and time t minimises the linearised objective plus the BADMM terms under the KL trust
region, in each coordinate's units:

    min_δ  bᵀδ + η·KL(ψ_new ‖ ψ) + (quadratic BADMM coupling, folded into b and the metric)
    b_t  = ∇_θ J / n_g − λ_t·E[s̃] + (ν_t / Σ̄_t)·M_t (θ_t − θ̄_t)
    KL_t = ½ δ_tᵀ M_t δ_t / G_t,      M_t = E[s̃ s̃ᵀ] (s̃ = [s; 1], pooled over the group's samples)

so δ_t = −M_t⁻¹ b_t / (ν_t/Σ̄_t + η_t/G_t) with η found by bisection to meet Σ_t KL_t = ε and
η_t = max(η, the η that caps KL_t at ``step_cap``). θ̄, Σ̄ are π's linearisation; n_g the group's
size. M_t is the state's second moment in the sampling controller's distribution (whitening by it
makes the step invariant to the units of every state entry). A step is kept only if J on the same
samples went down (J plus the BADMM terms, with a policy coupling); otherwise the budget shrinks
and the step is retried (``pathwise_c_step``).

Shapes: G groups, T steps, P = (state entries the controller reads) + 1 gain entries per (g, t).
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt.controller import controller_step, linear_gaussian_controller
from metaopt.gps.dynamics import relative_ridge
from metaopt.gps.moments import mean_covariance
from metaopt.gps.types import LinearGaussianController, RegressionMoments, float64

__all__ = ["PathwiseResult", "block_size", "multiplier_after", "natural_step", "pathwise_c_step",
           "sampled_objective", "sampled_objective_and_grad", "sampled_objective_jit", "state_second_moment"]


def block_size(horizon: int) -> int:
    """The largest divisor of ``horizon`` not above √horizon (remat block length)."""
    best = 1
    for b in range(1, int(math.isqrt(horizon)) + 1):
        if horizon % b == 0:
            best = b
    return best


def _one_sample_objective(task, controllers, params0, sample_key, horizon: int,
                          privileged: bool = False):
    """mean_t f(x_t), t = 0..T, of one reparameterised sample (the rollout's keys and noise)."""
    noise_key, data_key = jax.random.split(sample_key)
    step_keys = jax.random.split(data_key, horizon + 1)[:horizon]
    tx = linear_gaussian_controller(controllers, key=noise_key)
    zeros = jax.tree.map(jnp.zeros_like, params0)   # g* never reaches an observable controller

    def step(carry, key):
        params, state = carry
        value, grad = jax.value_and_grad(task.minibatch_objective(key))(params)
        true_grad = jax.grad(task.true_loss)(params) if privileged else zeros
        actions, state, _ = controller_step(controllers, grad, state, params, value=value,
                                            true_grad=true_grad)
        params = optax.apply_updates(params, actions)
        return (params, state), task.true_loss(params)

    block = block_size(horizon)

    @jax.checkpoint
    def run_block(carry, keys):
        return jax.lax.scan(step, carry, keys)

    keys = step_keys.reshape((horizon // block, block) + step_keys.shape[1:])
    _, losses = jax.lax.scan(run_block, (params0, tx.init(params0)), keys)
    return (task.true_loss(params0) + losses.sum()) / (horizon + 1)


def sampled_objective(task, controllers: LinearGaussianController, init_key: jax.Array,
                      sample_keys: jax.Array, *, privileged: bool = False,
                      chunk_size: int | None = None) -> jax.Array:
    """J(ψ): mean over samples ``(N,)`` and t = 0..T of f(x_t) under fixed noise and minibatches.

    With the keys ``rollout`` used (``jax.random.split(sample_key, N)``), this is the mean of that
    rollout's ``true_objective``. ``privileged``: feed the controllers g* (else zeros: exact for
    an observable controller, whose gain on g* is 0, and cheaper). ``chunk_size``: samples
    vmapped at a time (``lax.map``); ``None``: all at once. Measured on the paper preset
    (N = 10, its ∇J): all at once 183–212 s per GPS iteration and a peak RSS of 3.9 GB, chunks
    of 4 about 250 s and 4.2 GB, so chunking is no help there.
    """
    horizon = controllers.gain.shape[-3]
    params0 = task.init_params(init_key)
    one = lambda k: _one_sample_objective(task, controllers, params0, k, horizon, privileged)
    if chunk_size is None:
        return jax.vmap(one)(sample_keys).mean()
    return jax.lax.map(one, sample_keys, batch_size=chunk_size).mean()


sampled_objective_and_grad = jax.jit(jax.value_and_grad(sampled_objective, argnums=1))
sampled_objective_jit = jax.jit(sampled_objective, static_argnames=("privileged", "chunk_size"))


def _index(state_index) -> np.ndarray:
    """The state entries a controller reads: an int n means the first n."""
    if isinstance(state_index, int | np.integer):
        return np.arange(int(state_index))
    return np.asarray(state_index, int)


def state_second_moment(moments: RegressionMoments, state_index) -> tuple[jax.Array, jax.Array]:
    """M = E[s̃ s̃ᵀ] ``(G, T, P, P)`` and E[s̃] ``(G, T, P)`` of s̃ = [s[state_index]; 1]."""
    index = _index(state_index)
    mean, covariance = mean_covariance(moments)
    m = mean[..., index]
    second = covariance[..., index[:, None], index] + m[..., :, None] * m[..., None, :]
    one = jnp.ones(m.shape[:-1] + (1,), m.dtype)
    m_tilde = jnp.concatenate([m, one], -1)
    top = jnp.concatenate([second, m[..., :, None]], -1)
    bottom = jnp.concatenate([m[..., None, :], one[..., None]], -1)
    return jnp.concatenate([top, bottom], -2), m_tilde


def _regularised_inverse_apply(matrix, vector, ridge: float):
    """(M + ridge·diag(M))⁻¹ v (``metaopt.gps.relative_ridge``: in each entry's own units)."""
    chol = jnp.linalg.cholesky(matrix + relative_ridge(matrix, ridge))
    return jax.scipy.linalg.cho_solve((chol, True), vector[..., None])[..., 0]


class NaturalStep(NamedTuple):
    """Output of ``natural_step``: δ ``(G, T, P)``, η ``(G,)``, KL per step ``(G, T)``."""

    delta: jax.Array
    eta: jax.Array
    kl: jax.Array


@partial(jax.jit, static_argnames=("iterations",))
def natural_step(b, second_moment, variance, budget, *, coupling=None, step_cap=None,
                 ridge: float = 1e-3, iterations: int = 100) -> NaturalStep:
    """δ_t = −M_t⁻¹ b_t / (c_t + η_t/G_t) with Σ_t KL_t(δ) = ε per group (module docs).

    Args:
      b: the linear term ``(G, T, P)`` (gradient plus BADMM terms, per coordinate).
      second_moment: M ``(G, T, P, P)``; variance: G_t ``(G, T)``; budget: ε ``(G,)``.
      coupling: c_t = ν_t/Σ̄_t ``(G, T)`` (0 without policy coupling).
      step_cap: optional per-step KL cap ``(G,)`` or scalar.
      ridge: relative ridge on M (``_regularised_inverse_apply``).

    Returns:
      ``NaturalStep``; η solves the total budget by bisection in log η over [1e-30, 1e30]·scale.
    """
    direction = _regularised_inverse_apply(second_moment, b, ridge)        # M⁻¹ b
    quad = 0.5 * jnp.einsum("gtp,gtp->gt", b, direction) / variance        # KL_t·(c + η/G)²
    quad = jnp.maximum(quad, 0.0)
    coupling = jnp.zeros_like(quad) if coupling is None else coupling
    if step_cap is None:
        eta_floor = jnp.zeros_like(quad)
    else:
        cap = jnp.broadcast_to(jnp.asarray(step_cap, quad.dtype), budget.shape)[:, None]
        eta_floor = jnp.maximum(variance * (jnp.sqrt(quad / cap) - coupling), 0.0)

    def kl_of(eta):
        denom = coupling + jnp.maximum(eta[:, None], eta_floor) / variance
        return quad / jnp.square(jnp.maximum(denom, jnp.finfo(quad.dtype).tiny))

    # η's natural scale: the one that spends the budget with no coupling and no cap.
    scale = jnp.sqrt(jnp.maximum(quad * jnp.square(variance), 0).sum(-1) / budget)
    scale = jnp.maximum(scale, jnp.finfo(quad.dtype).tiny)
    low, high = jnp.log(scale) - 70.0, jnp.log(scale) + 70.0

    def bisect(_, bounds):
        low, high = bounds
        mid = 0.5 * (low + high)
        too_big = kl_of(jnp.exp(mid)).sum(-1) > budget
        return jnp.where(too_big, mid, low), jnp.where(too_big, high, mid)

    low, high = jax.lax.fori_loop(0, iterations, bisect, (low, high))
    eta = jnp.exp(high)
    denom = coupling + jnp.maximum(eta[:, None], eta_floor) / variance
    delta = -direction / denom[..., None]
    kl = 0.5 * jnp.einsum("gtp,gtpq,gtq->gt", delta, second_moment, delta) / variance
    return NaturalStep(delta, eta, kl)


def _theta(controller: LinearGaussianController, state_index) -> np.ndarray:
    """[K[state_index], k] per (g, t): ``(G, T, P)``."""
    gain = np.asarray(controller.gain)[..., 0, _index(state_index)]
    return np.concatenate([gain, np.asarray(controller.bias)], -1)


def _with_theta(controller: LinearGaussianController, theta, state_index):
    index = _index(state_index)
    gain = np.array(controller.gain)
    gain[..., 0, index] = theta[..., :-1]
    return controller._replace(gain=gain, bias=np.asarray(theta[..., -1:], gain.dtype))


class PathwiseResult(NamedTuple):
    """What ``pathwise_c_step`` did (NumPy).

    Attributes:
      controller: the new ψ (GPS-state controller, zero gain beyond the model state).
      eta: the last accepted step's η per group ``(G,)`` (or the last tried).
      kl: per-step KL(ψ_new ‖ ψ) under the samples' states ``(G, T)``.
      objective_before, objective_after: J on the iteration's own samples.
      predicted_improvement: J_before − J_after on those samples (the "model" of this C-step;
        with a policy coupling J may rise: steps are kept when J + the BADMM terms fell).
      steps_accepted, steps_tried: ints.
    """

    controller: LinearGaussianController
    eta: np.ndarray
    kl: np.ndarray
    objective_before: float
    objective_after: float
    predicted_improvement: float
    steps_accepted: int
    steps_tried: int


def pathwise_c_step(task, controller: LinearGaussianController, moments: RegressionMoments,
                    init_key, sample_keys, group_sizes, budget, *, state_index,
                    linearization: LinearGaussianController | None = None, duals=None,
                    num_steps: int = 3, step_cap=None, ridge: float = 1e-3,
                    objective_and_grad=None) -> PathwiseResult:
    """Up to ``num_steps`` natural-gradient steps on J, each kept only if J fell (module docs).

    Args:
      task: the meta-training task; ``init_key``, ``sample_keys`` ``(N,)``: the samples' keys.
      controller: ψ, the sampler (GPS-state controller, gain ``(G, T, 1, 79)``).
      moments: the rollout's per-(g, t) moments of [s; a; s'] (for M).
      group_sizes: n_g ``(G,)``.
      budget: ε per group ``(G,)``: the KL of all accepted steps together stays within it (each
        step may use what the previous ones left; after a rejected step the next may use a
        quarter of what the rejected one used, or of what remains if less).
      state_index: the state entries the controller may read (an int n: the first n); its gains
        on the others stay as they are (0 for a controller that never read them). With a
        policy coupling, π_lin's gains on the unread entries are left out of the pull term.
      linearization, duals: π_lin (on the model state) and BADMM duals, or ``None``.
      objective_and_grad: ``(controller) -> (J, ∇J)``; default differentiates ``sampled_objective``.
    """
    if objective_and_grad is None:
        def objective_and_grad(ctrl):
            return sampled_objective_and_grad(task, ctrl, init_key, sample_keys)
    with float64():      # M is ill-conditioned (collinear Φ): float32 moments are not PD
        moments = jax.tree.map(lambda a: np.asarray(a, np.float64), moments)
        second, first = jax.device_get(state_second_moment(moments, state_index))
    second, first = np.asarray(second, np.float64), np.asarray(first, np.float64)
    variance = np.asarray(controller.covariance[..., 0, 0], np.float64)
    sizes = np.asarray(group_sizes, np.float64)
    budget = np.asarray(budget, np.float64)
    theta0 = np.asarray(_theta(controller, state_index), np.float64)
    coupling = None
    if linearization is not None and duals is not None:
        theta_bar = np.asarray(_theta(linearization, state_index), np.float64)
        pol_var = np.asarray(linearization.covariance[..., 0, 0], np.float64)
        coupling = np.asarray(duals.penalty, np.float64) / pol_var
        multiplier = np.asarray(duals.multiplier[..., 0], np.float64)

    def linear_term(theta, grad_controller):
        grad = np.asarray(_theta(grad_controller, state_index), np.float64) / sizes[:, None, None]
        if coupling is None:
            return grad
        pull = np.einsum("gtpq,gtq->gtp", second, theta - theta_bar)
        return grad - multiplier[..., None] * first + coupling[..., None] * pull

    def coupling_terms(theta):
        """The BADMM terms in J's units: Σ_g n_g Σ_t [½ c_t ‖θ − θ̄‖²_M − λ_t E[s̃]ᵀθ]."""
        if coupling is None:
            return 0.0
        gap = theta - theta_bar
        pull = 0.5 * coupling * np.einsum("gtp,gtpq,gtq->gt", gap, second, gap)
        dual = multiplier * np.einsum("gtp,gtp->gt", first, theta)
        return float(np.sum(sizes[:, None] * (pull - dual)))

    # A step is kept when the augmented objective (J plus the BADMM terms the step minimises)
    # fell on the samples: judging it by J alone rejected every step that honoured the coupling.
    value, grad = objective_and_grad(controller)
    start = value = float(value)
    augmented = value + coupling_terms(theta0)
    theta, current, accepted, tried = theta0, controller, 0, 0
    remaining = budget.copy()
    eta = np.full(budget.shape, np.nan)
    kl_total = np.zeros_like(variance)
    for _ in range(num_steps):
        tried += 1
        b = linear_term(theta, grad)
        with float64():
            step = jax.device_get(natural_step(b, second, variance, np.maximum(remaining, 1e-30),
                                               coupling=coupling, step_cap=step_cap, ridge=ridge))
        total_delta = theta + np.asarray(step.delta) - theta0
        kl = 0.5 * np.einsum("gtp,gtpq,gtq->gt", total_delta, second, total_delta) / variance
        # Steps taken one after another can add up past ε: shrink the whole move back onto it.
        shrink = np.sqrt(np.minimum(1.0, budget / np.maximum(kl.sum(-1), 1e-300)))
        total_delta, kl = total_delta * shrink[:, None, None], kl * np.square(shrink)[:, None]
        candidate_theta = theta0 + total_delta
        candidate = _with_theta(controller, candidate_theta, state_index)
        new_value, new_grad = objective_and_grad(candidate)
        new_value = float(new_value)
        new_augmented = new_value + coupling_terms(candidate_theta)
        if np.isfinite(new_augmented) and new_augmented < augmented:
            theta, current, value, grad = candidate_theta, candidate, new_value, new_grad
            augmented = new_augmented
            accepted += 1
            eta, kl_total = np.asarray(step.eta), kl
            remaining = np.maximum(budget - kl.sum(-1), 0.05 * budget)
        else:
            # Shrink the step itself: with a policy coupling the tried step may have used less
            # than the budget (the coupling bounds it), and a quartered budget it never reached
            # retried the same step (every coupled C-step then kept nothing).
            remaining = 0.25 * np.minimum(remaining, np.asarray(step.kl).sum(-1))
    current = jax.tree.map(lambda a: np.asarray(a, np.float32), current)
    return PathwiseResult(current, eta, kl_total, start, value, start - value, accepted, tried)


def multiplier_after(step_multiplier, result: PathwiseResult, *, floor: float = 0.01) -> np.ndarray:
    """The KL step multiplier for the next C-step, given what this one found on its samples.

    A C-step that kept no step has measured that even a quarter of a quarter of its budget was
    too much (each rejection quarters the KL tried), and it predicts nothing, so the next
    iteration's judge (realised vs predicted) cannot shrink the multiplier: left as it was, every
    later C-step tried the same too-large budget and kept nothing. Here it shrinks by 4 per step
    tried; a C-step that kept a step leaves the multiplier to the judge.
    """
    step_multiplier = np.asarray(step_multiplier, np.float64)
    if result.steps_accepted:
        return step_multiplier
    return np.maximum(step_multiplier * 0.25 ** result.steps_tried, floor)
