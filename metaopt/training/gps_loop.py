"""BADMM guided policy search, convolutional (one LQG per coordinate group): the outer loop.

One GPS iteration (``gps_iteration``), following the reference's ``Algorithm.iteration``:

1. ``rollout``: N samples from the current controllers ψ (the trust-region reference).
2. Model: dynamics per (g, t) from the pooled moments (NIW prior pooled over time), the tied cost
   w_t·(g*·a + ½ h_{g,t} a²) with the measured curvature, and π's linearisation. With
   ``TrainConfig.privileged_gradient=False`` the model's state is the *observable* GPS state
   (Φ, ĝ, a(t−1)) and g* enters the cost through its regression E[g* | s].
3. Step multiplier (from iteration 1): predicted vs actual improvement of the Laplace cost
   estimate (``metaopt.gps.update_step_multiplier``).
4. ``inner_iterations`` times: [S-step (not at iteration 0, inner 0), π refit, dual step on λ
   (and ν on the last inner iteration)], then the C-step: η search under Σ_t KL(ψ_new‖ψ) ≤ ε.
5. ψ ← ψ_new; the evaluation of π's mean (through ``learned_opt``) goes into the log.

The state between iterations (``TrainState``) is float32 NumPy (the solves run in float64 inside
``metaopt.gps.float64()``), so a checkpointed run resumes bit-for-bit; all randomness derives from
``(config.seed, iteration)``. Shapes: G groups, T steps, dX = 79 (GPS state width).
"""

import functools
import time
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt import features
from metaopt.controller import momentum_controller
from metaopt.evaluation.unroll import unroll
from metaopt.gps import (
    BadmmDuals,
    LinearGaussianController,
    LinearGaussianDynamics,
    estimated_cost,
    eta_search,
    float64,
    tied_coordinate_cost,
    update_step_multiplier,
)
from metaopt.learned_optimizer import learned_opt
from metaopt.policy import init_policy
from metaopt.training import checkpoint, policy_fit
from metaopt.training import mesh as mesh_lib
from metaopt.training.config import PAPER_SETTING, TrainConfig, make_dataset_task, make_task
from metaopt.training.model import (
    calibrate_curvature,
    collective_response,
    fit_model,
    from_model,
    model_state_dim,
    rollout_fault,
    to_model,
)
from metaopt.training.rollout import RolloutData, TrackedCoordinates, rollout, select_tracked

__all__ = [  # the loop, plus the config and model names it re-exports for convenience
    "PAPER_SETTING", "PreviousModel", "TrainConfig", "TrainState", "c_step", "fit_model",
    "gps_iteration", "init_state", "make_dataset_task", "make_task", "model_state_dim",
    "roll_back", "run_c_step", "train", "calibrate_curvature", "collective_response",
    "from_model", "rollout_fault", "to_model",
]

STATE_DIM = features.GPS_STATE_DIM


class PreviousModel(NamedTuple):
    """The previous iteration's controller and model, for the step-multiplier update.

    ``dynamics``, ``linearization`` and the gradient model ``(M (G, T, 1, dM), m (G, T, 1))`` live
    in the model's state space (``model_state_dim``); ``controller`` in the full GPS state.
    """

    controller: LinearGaussianController
    dynamics: LinearGaussianDynamics
    curvature: jax.Array
    linearization: LinearGaussianController
    gradient_coefficients: jax.Array
    gradient_offset: jax.Array


class TrainState(NamedTuple):
    """Everything a GPS iteration needs from the last one (float32 NumPy between iterations).

    Attributes:
      iteration: completed iterations.
      controller: ψ, gain ``(G, T, 1, dX)``: the controller that draws the next samples.
      eta: η per group ``(G,)`` (warm start of the η search).
      step_multiplier: ``(G,)``.
      duals: λ ``(G, T, 1)``, ν ``(G, T)``.
      theta, opt_state: the policy and its Adam state.
      previous: ``PreviousModel`` (meaningless while ``has_previous`` is False).
      has_previous: bool scalar.
    """

    iteration: Any
    controller: LinearGaussianController
    eta: Any
    step_multiplier: Any
    duals: BadmmDuals
    theta: Any
    opt_state: Any
    previous: PreviousModel
    has_previous: Any


def to_host32(tree):
    """Device arrays -> NumPy, floats as float32 (the canonical between-iteration dtype)."""
    def convert(a):
        a = np.asarray(a)
        return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a
    return jax.tree.map(convert, jax.device_get(tree))


@functools.lru_cache(maxsize=8)
def s_step_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    # Cached: ``s_step`` takes the optimizer as a static jit argument, and two optax.adam(...)
    # objects never compare equal, so a fresh one per call recompiled the S-step every time.
    return optax.adam(config.s_step_learning_rate)


def condition_key(config: TrainConfig) -> jax.Array:
    """Seeds x_0: ``unroll(tx, task, condition_key)`` starts where the rollouts start."""
    return jax.random.key(config.seed + 1)


def init_state(config: TrainConfig, task) -> TrainState:
    """Momentum controllers, fresh policy, λ = 0, ν = ν₀, η and step multiplier at their starts."""
    num_groups = len(jax.tree.leaves(task.init_params(jax.random.key(0))))
    controller = momentum_controller(
        learning_rate=config.learning_rate, momentum=config.momentum, horizon=config.horizon,
        variance=config.exploration_variance, num_groups=num_groups)
    theta = init_policy(jax.random.key(config.seed + 2), hidden_size=config.hidden_size,
                        init_step_size=config.init_step_size)
    shape, dim = (num_groups, config.horizon), model_state_dim(config)
    zeros_dynamics = LinearGaussianDynamics(
        np.zeros(shape + (dim, dim)), np.zeros(shape + (dim, 1)),
        np.zeros(shape + (dim,)), np.zeros(shape + (dim, dim)),
        np.zeros((num_groups, dim)), np.zeros((num_groups, dim, dim)))
    return to_host32(TrainState(
        iteration=np.int32(0),
        controller=controller,
        eta=np.full(num_groups, config.initial_eta),
        step_multiplier=np.full(num_groups, config.initial_step_multiplier),
        duals=BadmmDuals(np.zeros(shape + (1,)), np.full(shape, config.initial_penalty)),
        theta=theta,
        opt_state=s_step_optimizer(config).init(theta),
        previous=PreviousModel(controller, zeros_dynamics, np.zeros(shape),
                               to_model(controller, dim), np.zeros(shape + (1, dim)),
                               np.zeros(shape + (1,))),
        has_previous=np.bool_(False),
    ))


@jax.jit
def _means_and_variance(theta, observations, controller, penalty):
    return (policy_fit.policy_means(theta, observations),
            policy_fit.policy_variance(controller, penalty))


_fit_linearization = jax.jit(policy_fit.fit_policy_linearization,
                             static_argnames=("prior_strength", "ridge"))


def linearize_policy(config: TrainConfig, theta, data: RolloutData, mask, controller, penalty):
    """π's mean on the tracked sequences ``(N, G, K, T)``, Σ^π ``(G,)`` and π_lin (float64).

    π_lin acts on the model's state (``model_state_dim``).

    Σ^π comes from ``controller``'s precision weighted by ``penalty`` (``policy_variance``).
    """
    means, variance = jax.device_get(
        _means_and_variance(theta, data.observations, controller, penalty))
    states = data.states[..., :model_state_dim(config)]
    with float64():
        linearization = jax.device_get(_fit_linearization(
            states, means, mask, variance, prior_strength=config.policy_prior_strength,
            ridge=config.policy_ridge))
    return means, variance, linearization


@partial(jax.jit, static_argnames=("sequential",))
def c_step(cost, dynamics, previous, budget, eta, linearization, duals, *,
           sequential: bool = True):
    """η search per group (call inside ``float64()``); failed groups keep ψ_prev.

    Args:
      cost, dynamics: the fitted model, ``(G, T, ...)``.
      previous: ψ, the controller that drew the samples (the KL reference).
      budget, eta: ε and the warm-start η, ``(G,)``.
      linearization, duals: BADMM terms, or ``None`` for plain trajectory optimisation.
      sequential: groups one after another (``lax.map``, faster on CPU) or ``vmap``-ed.

    Returns:
      ``metaopt.gps.EtaSearchResult`` with batch shape ``(G,)``.
    """
    result = eta_search(cost, dynamics, previous, budget, eta_init=eta,
                        policy_linearization=linearization, duals=duals, sequential=sequential)
    failed = result.failed
    keep = lambda new, old: jnp.where(
        failed.reshape(failed.shape + (1,) * (new.ndim - 1)), old.astype(new.dtype), new)
    return result._replace(controller=jax.tree.map(keep, result.controller, previous))


def run_c_step(config: TrainConfig, cost, dynamics, previous, step_multiplier, eta,
               linearization, duals):
    """``c_step`` in float64 on host inputs (cast once, so every call hits one compilation).

    ``previous`` is a GPS-state controller; the search runs in the model's state space.

    Returns the ``EtaSearchResult`` as NumPy (float64), its controller a GPS-state controller.
    """
    budget = np.asarray(step_multiplier, np.float64) * config.horizon * config.kl_step
    previous = to_model(previous, model_state_dim(config))
    inputs = jax.tree.map(lambda a: np.asarray(a, np.float64),
                          (cost, dynamics, previous, budget, eta, linearization, duals))
    with float64():
        result = jax.device_get(c_step(*inputs, sequential=config.sequential_c_step))
    return result._replace(controller=from_model(result.controller))


def dual_step(duals: BadmmDuals, policy_mean, controller_mean, mask, rate: float) -> jax.Array:
    """λ ← λ + α·ν·(E[μ_π] − E[μ_ψ]), expectations over tracked coordinates × samples."""
    weights = jnp.broadcast_to(mask[None, :, :, None], policy_mean.shape)
    gap = (weights * (policy_mean - controller_mean)).sum((0, 2)) / weights.sum((0, 2))
    return duals.multiplier + rate * (duals.penalty * gap)[..., None]


def policy_controller_kl(controller: LinearGaussianController, policy_mean, controller_mean,
                         variance, mask) -> jax.Array:
    """Monte-Carlo E[KL(ψ(·|s) ‖ π(·|o))] per (g, t), ``(G, T)``."""
    ctrl_var = controller.covariance[None, :, None, :, 0, 0]
    pol_var = variance[None, :, None, None]
    kl = 0.5 * (ctrl_var / pol_var - 1 + jnp.log(pol_var / ctrl_var)
                + jnp.square(policy_mean - controller_mean) / pol_var)
    weights = jnp.broadcast_to(mask[None, :, :, None], kl.shape)
    return (weights * kl).sum((0, 2)) / weights.sum((0, 2))


def update_penalty(penalty, kl, *, upper: float, lower: float, increase: float,
                   decrease: float) -> jax.Array:
    """ν ×increase where KL_t ≥ mean + upper·std, ×decrease where KL_t < mean − lower·std (per group)."""
    mean, std = kl.mean(-1, keepdims=True), kl.std(-1, keepdims=True)
    factor = jnp.where(kl >= mean + upper * std, increase,
                       jnp.where(kl < mean - lower * std, decrease, 1.0))
    return penalty * factor


@partial(jax.jit, static_argnames=("num_steps",))
def evaluate_policy(theta, task, key, *, num_steps: int) -> jax.Array:
    """f(x_t), t = 0..T, of π's mean run through ``learned_opt`` from x_0(key)."""
    return unroll(learned_opt(theta), task, key, num_steps=num_steps, eval_every=1).true_loss


def step_multiplier_update(state: TrainState, dynamics, cost, linearization,
                           max_step_multiplier: float = 10.0):
    """New step multipliers from predicted vs actual improvement (inside ``float64()``)."""
    prev = state.previous
    penalty = state.duals.penalty
    dim = prev.linearization.gain.shape[-1]
    prev_cost = tied_coordinate_cost(
        jnp.asarray(prev.curvature, jnp.float64), dim,
        gradient_model=(prev.gradient_coefficients, prev.gradient_offset))
    previous_controller, controller = to_model(prev.controller, dim), to_model(state.controller, dim)
    before = estimated_cost(prev_cost, previous_controller, prev.dynamics, prev.linearization,
                            penalty)
    predicted = estimated_cost(prev_cost, controller, prev.dynamics, prev.linearization, penalty)
    actual = estimated_cost(cost, controller, dynamics, linearization, penalty)
    return update_step_multiplier(state.step_multiplier, before - predicted, before - actual,
                                  max_step_multiplier=max_step_multiplier)


_step_multiplier_update = jax.jit(step_multiplier_update, static_argnames=("max_step_multiplier",))
_s_step_loss = jax.jit(policy_fit.s_step_loss)


def roll_back(config: TrainConfig, state: TrainState, reason: str) -> tuple[TrainState, dict]:
    """Undo the last C-step: ψ ← the controller before it, step multiplier halved; π untouched.

    Raises:
      ValueError: the initial controller itself is at fault (there is nothing to roll back to).
    """
    if not bool(state.has_previous):
        raise ValueError(f"GPS iteration 0: {reason}. The initial controller (momentum, "
                         f"learning_rate={config.learning_rate}, momentum={config.momentum}) must "
                         "not diverge on this task: lower TrainConfig.learning_rate.")
    nan = float("nan")
    groups = len(state.eta)
    step_multiplier = np.maximum(0.5 * np.asarray(state.step_multiplier), 0.01)
    log = {
        "iteration": int(state.iteration), "controller_objective": nan,
        "policy_objective_before": nan, "policy_objective": nan, "policy_final_objective": nan,
        "kl": [nan] * groups, "kl_budget": [nan] * groups,
        "eta": [float(e) for e in state.eta], "c_step_failed": [True] * groups,
        "step_multiplier": [float(x) for x in step_multiplier],
        "penalty": [float(p) for p in np.mean(state.duals.penalty, -1)],
        "s_step_loss_before": nan, "s_step_loss_after": nan, "curvature_scale": nan,
        "rolled_back": reason,
    }
    new_state = to_host32(state._replace(iteration=np.int32(int(state.iteration) + 1),
                                         controller=state.previous.controller,
                                         step_multiplier=step_multiplier))
    return new_state, log


def gps_iteration(config: TrainConfig, task, tracked: TrackedCoordinates,
                  state: TrainState, *, mesh=None) -> tuple[TrainState, dict]:
    """One BADMM GPS iteration (module docs). Returns the new state and a log entry.

    ``mesh``: a ``jax.sharding.Mesh`` with axis ``"samples"`` (``metaopt.training.mesh``) to split
    the rollout's samples and the S-step's minibatches over its devices; ``None``: one device.
    """
    iteration = int(state.iteration)
    key = jax.random.fold_in(jax.random.key(config.seed + 3), iteration)
    sample_key, s_step_key = jax.random.split(key)
    init_key = jax.random.split(condition_key(config))[0]
    sample = rollout if mesh is None else partial(mesh_lib.sharded_rollout, mesh)
    data = sample(task, state.controller, init_key, sample_key, jnp.asarray(tracked.index),
                  num_samples=config.num_samples)
    s_step = policy_fit.s_step if mesh is None else partial(mesh_lib.sharded_s_step, mesh)
    fault = rollout_fault(data, config.divergence_ratio)
    if fault is not None:
        return roll_back(config, state, fault)
    mask = jnp.asarray(tracked.mask)
    kappa = np.ones(config.horizon, np.float32)
    if config.calibrate_curvature:
        data, kappa = calibrate_curvature(data)
    with float64():
        dynamics, cost, gradient_model = jax.device_get(fit_model(
            data, prior_strength=config.dynamics_prior_strength, ridge=config.dynamics_ridge,
            privileged_gradient=config.privileged_gradient))
    if config.collective_response:
        dim = model_state_dim(config)
        dynamics = collective_response(dynamics, data.curvature, to_model(state.controller, dim),
                                       dim)
    theta, opt_state, duals = state.theta, state.opt_state, state.duals
    means, variance, linearization = linearize_policy(config, theta, data, mask,
                                                      state.controller, duals.penalty)
    step_multiplier = state.step_multiplier
    if bool(state.has_previous):
        with float64():
            step_multiplier = jax.device_get(_step_multiplier_update(
                state, dynamics, cost, linearization,
                max_step_multiplier=config.max_step_multiplier))

    controller, eta = state.controller, state.eta
    start = evaluate_policy(theta, task, condition_key(config), num_steps=config.horizon)
    s_losses = (float("nan"), float("nan"))
    for inner in range(config.inner_iterations):
        if iteration > 0 or inner > 0:
            target = state.controller if inner == 0 else controller
            s_data = policy_fit.s_step_data(data.observations, data.states, mask,
                                            target, duals)
            before = float(_s_step_loss(theta, s_data))
            theta, opt_state, _ = s_step(
                theta, opt_state, s_data, jax.random.fold_in(s_step_key, inner),
                optimizer=s_step_optimizer(config), num_steps=config.s_step_iterations,
                batch_size=config.s_step_batch_size)
            s_losses = (before, float(_s_step_loss(theta, s_data)))
            means, variance, linearization = linearize_policy(config, theta, data, mask,
                                                              state.controller, duals.penalty)
            target_means = policy_fit.controller_means(target, data.states)
            penalty = duals.penalty
            if inner == config.inner_iterations - 1:
                sampler_means = policy_fit.controller_means(state.controller, data.states)
                kl = policy_controller_kl(state.controller, means, sampler_means, variance, mask)
                penalty = update_penalty(
                    penalty, kl, upper=config.penalty_upper, lower=config.penalty_lower,
                    increase=config.penalty_increase, decrease=config.penalty_decrease)
            duals = BadmmDuals(dual_step(duals, means, target_means, mask, config.dual_rate),
                               penalty)
        result = run_c_step(config, cost, dynamics, state.controller, step_multiplier, eta,
                            linearization, duals)
        controller, eta = result.controller, result.eta

    trajectory = evaluate_policy(theta, task, condition_key(config), num_steps=config.horizon)
    log = {
        "iteration": iteration,
        "controller_objective": float(np.mean(data.true_objective)),
        "policy_objective_before": float(np.mean(start)),
        "policy_objective": float(np.mean(trajectory)),
        "policy_final_objective": float(trajectory[-1]),
        "kl": [float(k) for k in np.sum(result.kl, -1)],
        "kl_budget": [float(b) for b in result.kl_budget],
        "eta": [float(e) for e in result.eta],
        "c_step_failed": [bool(f) for f in result.failed],
        "step_multiplier": [float(s) for s in np.asarray(step_multiplier)],
        "curvature_scale": float(np.mean(kappa)),
        "rolled_back": None,
        "penalty": [float(p) for p in np.mean(duals.penalty, -1)],
        "s_step_loss_before": s_losses[0],
        "s_step_loss_after": s_losses[1],
    }
    new_state = to_host32(TrainState(
        iteration=np.int32(iteration + 1), controller=controller, eta=eta,
        step_multiplier=step_multiplier, duals=duals, theta=theta, opt_state=opt_state,
        previous=PreviousModel(state.controller, dynamics, data.curvature, linearization,
                               *gradient_model),
        has_previous=np.bool_(True)))
    return new_state, log


def train(config: TrainConfig, out_dir=None, resume: bool = False, *, callback=None,
          max_to_keep: int | None = 3, mesh=None):
    """Run ``config.iterations`` GPS iterations, checkpointing each one under ``out_dir``.

    Args:
      config: hyperparameters.
      out_dir: checkpoint directory (Orbax); ``None`` disables checkpointing.
      resume: continue from the latest checkpoint in ``out_dir`` if there is one.
      callback: called as ``callback(state, entry, seconds)`` after each new iteration (after
        its checkpoint is written), e.g. for a progress bar; ``seconds`` is its wall time (kept
        out of the log so that a resumed run's log equals an uninterrupted one's).
      max_to_keep: checkpoints kept (``None``: all).
      mesh: split samples and S-step minibatches over this mesh (``gps_iteration``); with
        several processes every process calls ``train`` (Orbax writes from process 0).

    Returns:
      ``(theta, log)``: the policy and one log dict per iteration (including restored ones).
    """
    task = make_task(config)
    state = init_state(config, task)
    tracked = select_tracked(jax.random.key(config.seed + 4),
                             task.init_params(jax.random.key(0)), config.num_tracked)
    log: list[dict] = []
    manager = (checkpoint.manager(out_dir, max_to_keep=max_to_keep)
               if out_dir is not None else None)
    if manager is not None and resume and manager.latest_step() is not None:
        state, log = checkpoint.restore(manager, state)
    while int(state.iteration) < config.iterations:
        start = time.perf_counter()
        state, entry = gps_iteration(config, task, tracked, state, mesh=mesh)
        seconds = time.perf_counter() - start
        log.append(entry)
        if manager is not None:
            checkpoint.save(manager, state, log)
        if callback is not None:
            callback(state, entry, seconds)
    if manager is not None:
        manager.wait_until_finished()
        manager.close()
    return state.theta, log
