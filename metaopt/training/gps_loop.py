"""BADMM guided policy search, convolutional (one controller per coordinate group): the outer loop.

One GPS iteration (``gps_iteration``), following the reference's ``Algorithm.iteration``:

1. ``rollout``: N samples from the current controllers ψ (the trust-region reference).
2. Judge the last C-step on these fresh samples: the previous controller is re-run with the same
   noise and minibatches (common random numbers, ``pathwise.sampled_objective``); the realised fall
   of J = mean_t f(x_t) against the C-step's own prediction sets the step multiplier
   (``metaopt.gps.update_step_multiplier``), and a C-step that made J worse is rolled back.
3. ``inner_iterations`` times: [S-step (not at iteration 0, inner 0), π refit, dual step on λ
   (and ν on the last inner iteration)], then the C-step under Σ_t KL(ψ_new‖ψ) ≤ ε:
   - ``c_step="lqr"`` (the paper's): dynamics per (g, t) from the pooled moments (NIW prior pooled
     over time), the tied cost w_t·(g*·a + ½ h_{g,t} a²) with the measured curvature, π's
     linearisation, and the η search of the KL-constrained LQG. With the observable state (the
     default) g* enters the cost through its regression E[g* | s];
   - ``c_step="pathwise"`` (ours): the exact gradient of J on the samples through the unroll and
     KL-constrained natural-gradient steps (``metaopt.training.pathwise``).
   The policy coupling (ν, λ) starts once π has been fit, with ν = ``initial_penalty``·η.
4. ψ ← ψ_new; the evaluation of π's mean (through ``learned_opt``) goes into the log, with the
   imitation gap (π's mean_t f minus the controllers').

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
    estimated_cost,
    eta_search,
    float64,
    update_step_multiplier,
)
from metaopt.learned_optimizer import learned_opt
from metaopt.policy import init_policy
from metaopt.training import checkpoint, pathwise, policy_fit
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
    "PAPER_SETTING", "PreviousModel", "TrainConfig", "TrainState", "c_step", "couple",
    "coupled", "fit_model", "gps_iteration", "group_sizes", "init_state",
    "lqr_predicted_improvement", "make_dataset_task", "make_task", "model_state_dim",
    "roll_back", "run_c_step", "train", "calibrate_curvature", "collective_response",
    "from_model", "rollout_fault", "to_model",
]

STATE_DIM = features.GPS_STATE_DIM


class PreviousModel(NamedTuple):
    """The last C-step, to be judged on the next iteration's fresh samples.

    Attributes:
      controller: ψ before the C-step (GPS state), the controller the last samples came from.
      predicted_improvement: the C-step's own estimate of the fall of J = mean_t f(x_t) (its
        model's for the LQR, the change on its own samples for the pathwise step); NaN: none.
    """

    controller: LinearGaussianController
    predicted_improvement: Any


class TrainState(NamedTuple):
    """Everything a GPS iteration needs from the last one (float32 NumPy between iterations).

    Attributes:
      iteration: completed iterations.
      controller: ψ, gain ``(G, T, 1, dX)``: the controller that draws the next samples.
      eta: η per group ``(G,)`` (warm start of the η search).
      step_multiplier: ``(G,)``.
      duals: λ ``(G, T, 1)``, ν ``(G, T)``.
      theta: the policy (each S-step runs a fresh Adam in whitened units, so no optimizer state).
      previous: ``PreviousModel`` (meaningless while ``has_previous`` is False).
      has_previous: bool scalar.
    """

    iteration: Any
    controller: LinearGaussianController
    eta: Any
    step_multiplier: Any
    duals: BadmmDuals
    theta: Any
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
    """Momentum controllers, fresh policy, λ = 0, ν = 0 (no coupling until π is first fit)."""
    num_groups = len(jax.tree.leaves(task.init_params(jax.random.key(0))))
    controller = momentum_controller(
        learning_rate=config.learning_rate, momentum=config.momentum, horizon=config.horizon,
        variance=config.exploration_variance, num_groups=num_groups)
    theta = init_policy(jax.random.key(config.seed + 2), hidden_size=config.hidden_size,
                        init_step_size=config.init_step_size)
    shape = (num_groups, config.horizon)
    return to_host32(TrainState(
        iteration=np.int32(0),
        controller=controller,
        eta=np.full(num_groups, config.initial_eta),
        step_multiplier=np.full(num_groups, config.initial_step_multiplier),
        duals=BadmmDuals(np.zeros(shape + (1,)), np.zeros(shape)),
        theta=theta,
        previous=PreviousModel(controller, np.float32(np.nan)),
        has_previous=np.bool_(False),
    ))


def coupled(duals: BadmmDuals) -> bool:
    """Whether the policy coupling is on (ν > 0: π has been fit at least once)."""
    return bool(np.all(np.asarray(duals.penalty) > 0))


def couple(config: TrainConfig, duals: BadmmDuals, eta) -> BadmmDuals:
    """ν_{g,t} = ``initial_penalty``·η_g: the coupling in the units of the cost (ours).

    An absolute ν₀ (the reference's 0.01) is ≈ η from the first iteration here, where the tied
    cost per coordinate-step is ~1e-5·w_t, so the C-step mostly imitated the untrained policy.
    """
    eta = np.asarray(eta, np.float64)[:, None]
    return BadmmDuals(duals.multiplier,
                      np.broadcast_to(config.initial_penalty * eta, duals.penalty.shape))


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
    weights = np.where(np.asarray(penalty) > 0, penalty, 1.0)   # ν = 0: uncoupled, equal weights
    means, variance = jax.device_get(
        _means_and_variance(theta, data.observations, controller, weights))
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


def dual_step(duals: BadmmDuals, policy_mean, controller_mean, mask, rate: float,
              precision) -> jax.Array:
    """λ ← λ + α·ν·G⁻¹·(E[μ_π] − E[μ_ψ]) (the reference's step, with the controller precision).

    ``precision``: G_t⁻¹ per (g, t), ``(G, T)``. Without it λ stayed ~1e-6 here (G ≈ 1e-6) and
    did nothing. Expectations over tracked coordinates × samples.
    """
    weights = jnp.broadcast_to(mask[None, :, :, None], policy_mean.shape)
    gap = (weights * (policy_mean - controller_mean)).sum((0, 2)) / weights.sum((0, 2))
    return duals.multiplier + rate * (duals.penalty * precision * gap)[..., None]


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


_s_step_loss = jax.jit(policy_fit.s_step_loss)


_estimated_cost = jax.jit(estimated_cost)


def lqr_predicted_improvement(cost, dynamics, before, after, group_sizes) -> float:
    """The fitted model's predicted fall of J = mean_t f(x_t) from ψ ``before`` to ``after``.

    The tied cost per coordinate sums w_t·Δf_t over t, i.e. one coordinate's share of Σ_t f(x_t);
    × n_g per group, summed, ÷ (T + 1). BADMM terms are left out (they are not part of f).
    """
    inputs = jax.tree.map(lambda a: np.asarray(a, np.float64), (cost, dynamics, before, after))
    with float64():
        cost, dynamics, before, after = inputs
        change = np.asarray(_estimated_cost(cost, before, dynamics)
                            - _estimated_cost(cost, after, dynamics))
    horizon = cost.constant.shape[-1]
    return float(np.sum(np.asarray(group_sizes) * change) / (horizon + 1))


def _empty_log(state: TrainState) -> dict:
    nan, groups = float("nan"), len(state.eta)
    return {
        "iteration": int(state.iteration), "controller_objective": nan,
        "policy_objective_before": nan, "policy_objective": nan, "policy_final_objective": nan,
        "imitation_gap": nan, "predicted_improvement": nan, "realized_improvement": nan,
        "next_predicted_improvement": nan, "kl": [nan] * groups, "kl_budget": [nan] * groups,
        "eta": [float(e) for e in state.eta], "c_step_failed": [True] * groups,
        "c_step": None, "pathwise_steps_accepted": 0,
        "step_multiplier": [float(x) for x in state.step_multiplier],
        "penalty": [float(p) for p in np.mean(state.duals.penalty, -1)],
        "multiplier_abs_mean": float(np.mean(np.abs(state.duals.multiplier))),
        "s_step_loss_before": nan, "s_step_loss_after": nan, "curvature_scale": nan,
        "rolled_back": None,
    }


def roll_back(config: TrainConfig, state: TrainState, reason: str,
              **log_fields) -> tuple[TrainState, dict]:
    """Undo the last C-step: ψ ← the controller before it, step multiplier halved; π untouched.

    ``log_fields`` go into the log entry (e.g. the realised and predicted improvement).

    Raises:
      ValueError: the initial controller itself is at fault (there is nothing to roll back to).
    """
    if not bool(state.has_previous):
        raise ValueError(f"GPS iteration 0: {reason}. The initial controller (momentum, "
                         f"learning_rate={config.learning_rate}, momentum={config.momentum}) must "
                         "not diverge on this task: lower TrainConfig.learning_rate.")
    step_multiplier = np.maximum(0.5 * np.asarray(state.step_multiplier), 0.01)
    log = _empty_log(state) | {"step_multiplier": [float(x) for x in step_multiplier],
                               "rolled_back": reason} | log_fields
    new_state = to_host32(state._replace(
        iteration=np.int32(int(state.iteration) + 1), controller=state.previous.controller,
        step_multiplier=step_multiplier,
        previous=PreviousModel(state.previous.controller, np.float32(np.nan)),
        has_previous=np.bool_(False)))
    return new_state, log


def controller_state_index(config: TrainConfig):
    """The GPS-state entries the controllers read (``TrainConfig.controller_state``)."""
    if config.controller_state == "momentum":
        return [features.GRADIENT_INDEX, features.PREV_ACTION_INDEX]
    return model_state_dim(config)


def group_sizes(task) -> np.ndarray:
    """n_g: coordinates per group (leaf), ``(G,)``."""
    return np.array([x.size for x in jax.tree.leaves(task.init_params(jax.random.key(0)))])


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
    sample_keys = jax.random.split(sample_key, config.num_samples)
    objective = float(np.mean(data.true_objective))
    sizes = group_sizes(task)

    # Judge the last C-step by what it did on these fresh samples (common random numbers: the
    # previous controller re-run with this iteration's noise and minibatches).
    step_multiplier = np.asarray(state.step_multiplier, np.float64)
    predicted = float(state.previous.predicted_improvement)
    realized = float("nan")
    if bool(state.has_previous) and np.isfinite(predicted):
        before = float(pathwise.sampled_objective_jit(task, state.previous.controller, init_key, sample_keys,
                                          privileged=config.privileged_gradient))
        realized = before - objective
        judged = {"predicted_improvement": predicted, "realized_improvement": realized,
                  "controller_objective": objective}
        # Worse than before, and worse than the C-step meant: a coupled step may trade some J
        # for agreement with π (predicted < 0); only a fall below that is the model's mistake.
        if realized < min(0.0, predicted):
            return roll_back(config, state, "the last C-step made fresh samples worse "
                             f"(J {before:.5f} -> {objective:.5f}, predicted "
                             f"{before - predicted:.5f})", **judged)
        step_multiplier = np.asarray(update_step_multiplier(
            step_multiplier, predicted, realized,
            max_step_multiplier=config.max_step_multiplier), np.float64)

    mask = jnp.asarray(tracked.mask)
    kappa = np.ones(config.horizon, np.float32)
    dim = model_state_dim(config)
    if config.c_step == "lqr":
        if config.calibrate_curvature:
            data, kappa = calibrate_curvature(data)
        with float64():
            dynamics, cost, _ = jax.device_get(fit_model(
                data, prior_strength=config.dynamics_prior_strength, ridge=config.dynamics_ridge,
                privileged_gradient=config.privileged_gradient))
        if config.collective_response:
            dynamics = collective_response(dynamics, data.curvature,
                                           to_model(state.controller, dim), dim)
    theta, duals = state.theta, state.duals
    means, variance, linearization = linearize_policy(config, theta, data, mask,
                                                      state.controller, duals.penalty)
    controller, eta = state.controller, state.eta
    start = evaluate_policy(theta, task, condition_key(config), num_steps=config.horizon)
    s_losses = (float("nan"), float("nan"))
    budget = step_multiplier * config.horizon * config.kl_step
    pathwise_accepted, next_predicted = 0, float("nan")
    for inner in range(config.inner_iterations):
        if iteration > 0 or inner > 0:
            target = state.controller if inner == 0 else controller
            if not coupled(duals):
                duals = couple(config, duals, eta)
            s_data = policy_fit.s_step_data(data.observations, data.states, mask,
                                            target, duals)
            before = float(_s_step_loss(theta, s_data))
            # Adam in whitened units of Ψ and of the targets (steps ~1e-3 against weights ~1:
            # in raw units one Adam step of 1e-3 moved the head by ~100 % and π never fit).
            # A fresh Adam per S-step: its coordinates change with the data's statistics.
            white = policy_fit.whitening(s_data)
            theta_w = policy_fit.to_whitened(theta, white)
            theta_w, _, _ = s_step(
                theta_w, s_step_optimizer(config).init(theta_w), policy_fit.whiten(s_data, white),
                jax.random.fold_in(s_step_key, inner), optimizer=s_step_optimizer(config),
                num_steps=config.s_step_iterations, batch_size=config.s_step_batch_size)
            theta = jax.device_get(policy_fit.from_whitened(theta_w, white))
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
            precision = 1.0 / np.asarray(target.covariance[..., 0, 0], np.float64)
            duals = BadmmDuals(dual_step(duals, means, target_means, mask, config.dual_rate,
                                         precision), penalty)
        badmm = ((linearization, duals) if coupled(duals) else (None, None))
        if config.c_step == "pathwise":
            result = pathwise.pathwise_c_step(
                task, state.controller, data.moments, init_key, sample_keys, sizes, budget,
                state_index=controller_state_index(config), linearization=badmm[0],
                duals=badmm[1],
                num_steps=config.pathwise_steps,
                step_cap=config.kl_step * config.kl_step_cap, ridge=config.pathwise_ridge)
            controller = result.controller
            eta = np.where(np.isfinite(result.eta), result.eta, eta)
            kl, failed = result.kl, np.zeros(len(sizes), bool)
            pathwise_accepted = result.steps_accepted
            next_predicted = result.predicted_improvement
        else:
            result = run_c_step(config, cost, dynamics, state.controller, step_multiplier, eta,
                                *badmm)
            controller, eta, kl, failed = result.controller, result.eta, result.kl, result.failed
            next_predicted = lqr_predicted_improvement(
                cost, dynamics, to_model(state.controller, dim), to_model(controller, dim), sizes)

    trajectory = evaluate_policy(theta, task, condition_key(config), num_steps=config.horizon)
    log = _empty_log(state) | {
        "controller_objective": objective,
        "policy_objective_before": float(np.mean(start)),
        "policy_objective": float(np.mean(trajectory)),
        "policy_final_objective": float(trajectory[-1]),
        # π's mean (deterministic, its own minibatches) minus the controllers' samples: what the
        # S-step has not carried over yet. Both are mean_t f on the training condition.
        "imitation_gap": float(np.mean(trajectory)) - objective,
        "predicted_improvement": predicted, "realized_improvement": realized,
        "next_predicted_improvement": next_predicted,
        "c_step": config.c_step, "pathwise_steps_accepted": pathwise_accepted,
        "kl": [float(k) for k in np.sum(kl, -1)],
        "kl_budget": [float(b) for b in budget],
        "eta": [float(e) for e in eta],
        "c_step_failed": [bool(f) for f in failed],
        "step_multiplier": [float(s) for s in np.asarray(step_multiplier)],
        "curvature_scale": float(np.mean(kappa)),
        "penalty": [float(p) for p in np.mean(duals.penalty, -1)],
        "multiplier_abs_mean": float(np.mean(np.abs(duals.multiplier))),
        "s_step_loss_before": s_losses[0],
        "s_step_loss_after": s_losses[1],
    }
    new_state = to_host32(TrainState(
        iteration=np.int32(iteration + 1), controller=controller, eta=eta,
        step_multiplier=(pathwise.multiplier_after(step_multiplier, result)
                         if config.c_step == "pathwise" else step_multiplier),
        duals=duals, theta=theta,
        previous=PreviousModel(state.controller, np.float32(next_predicted)),
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
