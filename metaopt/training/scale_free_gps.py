"""BADMM guided policy search for the scale-free MLP policy (ours; issues 15 and 16).

The same GPS as ``metaopt.training.gps_loop`` (convolutional: one controller per group and step,
tied over the group's coordinates; a C-step judged by what happens on fresh samples; an S-step
that fits π to the controllers; BADMM duals coupling the two), with the teachers and the student
on matching state:

* **Controllers** (``metaopt.scale_free_controller``): u = K_{g,t} φ + k_{g,t} + noise on the
  policy's own 9 scale-free features φ, Δx = σ_g·u. Whatever they do, π can express input for
  input (the LSTM's controllers read a 79-entry GPS state π never saw), and every KL is in u,
  the same at every scale of the problem. Start: tuned relative momentum, π's linear twin.
* **C-step**: the pathwise step (``metaopt.training.pathwise``): the exact gradient of
  J = mean over samples and t = 0..T of f(x_t) with the samples' noise and minibatches held
  fixed, through the whole unroll, and KL-constrained natural-gradient steps (metric E[φ̃φ̃ᵀ] per
  group and step, from the rollout), kept only when J (plus the BADMM terms) fell on the samples.
* **Judged by what happened**: each iteration's fresh samples are also run with the previous
  controllers (common random numbers); the realised fall of J against the C-step's own prediction
  sets the KL step multiplier, and a C-step that made fresh samples worse is rolled back.
* **S-step**: plain weighted regression of π's step u_π(φ) onto the controllers' means (minus the
  BADMM shift λ·V/ν) at the tracked coordinates' features, by Adam on minibatches: π has no
  recurrent state (its memory is in the features), so no BPTT is needed.
* **Coupling**: π's linearisation per (g, t) by least squares on the same features, ν = ``
  initial_penalty``·η of the first C-step (in the cost's units), λ ← λ + α·ν·V⁻¹·E[u_π − u_ψ].

Every iteration logs the controllers' J, π's J on the same minibatches (the imitation gap), the
predicted and realised fall of J, and π's final f and area on the tuning seeds; the θ with the
lowest final f there is kept (never the held-out seeds). Shapes: G groups (leaves), T steps, N
samples, K tracked coordinates per group, F = 9 features.
"""

from __future__ import annotations

import dataclasses
import math
import time
from functools import lru_cache, partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt.evaluation.tuning import seed_keys
from metaopt.gps import BadmmDuals, update_step_multiplier
from metaopt.gps.types import LinearGaussianController, RegressionMoments
from metaopt.learned_optimizer import learned_opt
from metaopt.mlp_policy import init_mlp_policy, mlp_policy_steps
from metaopt.scale_free_controller import (
    CONTROLLER_FEATURES,
    controller_step_rule,
    relative_momentum_controller,
)
from metaopt.scale_free_features import SCALE_FREE_DIM
from metaopt.scale_free_optimizer import (
    check_fan_in_exponent,
    init_scale_free_state,
    scale_free_update,
)
from metaopt.training import checkpoint, pathwise
from metaopt.training.gps_loop import to_host32
from metaopt.training.l2l_training import make_evaluator
from metaopt.training.rollout import select_tracked

__all__ = ["ScaleFreeGPSConfig", "ScaleFreeGPSState", "ScaleFreeRollout", "fit_policy",
           "gps_iteration", "init_state", "policy_linearization", "policy_objective", "rollout",
           "run_iterations", "s_step_points", "sampled_objective", "scored_optimizer", "train"]


@dataclasses.dataclass(frozen=True)
class ScaleFreeGPSConfig:
    """Hyperparameters; every one is relative (to σ, to the step, to η) or a count.

    ``init_step_size``: the relative momentum's step (tune it: ``experiments/train_scale_free_gps``);
    ``exploration_std``: the noise's std relative to it; KL budget per group and iteration
    T·``kl_step``·multiplier nats, at most ``kl_step``·``kl_step_cap`` per step.
    ``fan_in_exponent``: the optimizer π is trained and scored as (``learned_opt``'s).
    """

    horizon: int = 400
    num_samples: int = 10
    num_tracked: int = 64
    iterations: int = 20
    seed: int = 0
    init_step_size: float = 0.05
    exploration_std: float = 0.2
    hidden_sizes: tuple[int, ...] = (32,)
    kl_step: float = 0.2
    kl_step_cap: float = 5.0
    initial_step_multiplier: float = 1.0
    max_step_multiplier: float = 5.0
    pathwise_steps: int = 3
    pathwise_ridge: float = 1e-3
    s_step_iterations: int = 1000
    s_step_batch_size: int = 4096
    s_step_learning_rate: float = 1e-3
    coupling: bool = True
    initial_penalty: float = 0.01
    dual_rate: float = 0.2
    linearization_ridge: float = 1e-4
    divergence_ratio: float = 2.0
    select_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    fan_in_exponent: float = 0.0

    @property
    def fan_in(self) -> dict:
        """``fan_in_exponent`` as the keyword of the jitted rollouts (static)."""
        return {"fan_in_exponent": self.fan_in_exponent}

    def __post_init__(self):
        if self.horizon < 1 or self.num_samples < 1 or self.num_tracked < 1:
            raise ValueError("horizon, num_samples and num_tracked must be ≥ 1")
        if not (self.init_step_size > 0 and self.exploration_std > 0 and self.kl_step > 0):
            raise ValueError("init_step_size, exploration_std and kl_step must be > 0")
        check_fan_in_exponent(self.fan_in_exponent, owner="ScaleFreeGPSConfig")


class ScaleFreeGPSState(NamedTuple):
    """Everything an iteration needs from the last (NumPy, float32; checkpointed by Orbax).

    ``previous``: ψ before the last C-step and ``predicted``: that step's predicted fall of J
    (NaN: none to judge). ``best_theta``/``best_score``: the best π so far on the tuning seeds.
    """

    iteration: Any
    controller: LinearGaussianController
    eta: Any
    step_multiplier: Any
    duals: BadmmDuals
    theta: Any
    previous: LinearGaussianController
    predicted: Any
    best_theta: Any
    best_score: Any


class ScaleFreeRollout(NamedTuple):
    """``true_objective (N, T + 1)``; ``moments`` of φ per (g, t) pooled over samples × coordinates
    (count ``(G, T)``, first ``(G, T, F)``, second ``(G, T, F, F)``); ``observations``: the tracked
    coordinates' φ ``(N, G, K, T, F)``."""

    true_objective: jax.Array
    moments: RegressionMoments
    observations: jax.Array


def _unroll(task, rule, params0, step_keys, tracked_index=None, fan_in_exponent=0.0):
    """f(x_t), t = 0..T, of one run of ``rule``; with ``tracked_index`` also φ's statistics;
    σ as ``learned_opt(θ, fan_in_exponent=…)``'s."""
    record = tracked_index is not None

    def step(carry, key):
        params, state = carry
        value, grad = jax.value_and_grad(task.minibatch_objective(key))(params)
        steps, state, obs = scale_free_update(grad, state, value, rule)
        params = optax.apply_updates(params, steps)
        out = {"f": task.true_loss(params)}
        if record:
            flat = [o.reshape(-1, SCALE_FREE_DIM) for o in obs]
            out["first"] = jnp.stack([o.sum(0) for o in flat])
            out["second"] = jnp.stack([o.T @ o for o in flat])
            out["tracked"] = jnp.stack([o[tracked_index[g]] for g, o in enumerate(flat)])
        return (params, state), out

    horizon = step_keys.shape[0]
    block = pathwise.block_size(horizon)

    @jax.checkpoint     # memory ∝ √T under jax.grad
    def run_block(carry, keys):
        return jax.lax.scan(step, carry, keys)

    keys = step_keys.reshape((horizon // block, block) + step_keys.shape[1:])
    state0 = init_scale_free_state(params0, fan_in_exponent=fan_in_exponent)
    _, outs = jax.lax.scan(run_block, (params0, state0), keys)
    outs = jax.tree.map(lambda a: a.reshape((horizon,) + a.shape[2:]), outs)
    return jnp.concatenate([task.true_loss(params0)[None], outs["f"]]), outs


def _sample_keys(sample_key, horizon):
    noise_key, data_key = jax.random.split(sample_key)
    return noise_key, jax.random.split(data_key, horizon)


@partial(jax.jit, static_argnames=("fan_in_exponent",))
def rollout(task, controller, init_key, sample_keys, tracked_index, *, fan_in_exponent=0.0
            ) -> ScaleFreeRollout:
    """N = len(sample_keys) noisy runs of the controllers from x_0 = ``task.init_params(init_key)``."""
    params0 = task.init_params(init_key)
    horizon = controller.gain.shape[1]

    def one(sample_key):
        noise_key, step_keys = _sample_keys(sample_key, horizon)
        return _unroll(task, controller_step_rule(controller, noise_key), params0, step_keys,
                       tracked_index, fan_in_exponent)

    f, outs = jax.vmap(one)(sample_keys)
    counts = jnp.asarray([leaf.size for leaf in jax.tree.leaves(params0)], jnp.float32)
    moments = RegressionMoments(
        count=jnp.broadcast_to(counts[:, None] * len(sample_keys), (len(counts), horizon)),
        first=jnp.moveaxis(outs["first"].sum(0), 0, 1),
        second=jnp.moveaxis(outs["second"].sum(0), 0, 1))
    observations = jnp.moveaxis(outs["tracked"], 1, 3)        # (N, T, G, K, F) -> (N, G, K, T, F)
    return ScaleFreeRollout(f, moments, observations)


def sampled_objective(task, controller, init_key, sample_keys, *, fan_in_exponent=0.0
                      ) -> jax.Array:
    """J(ψ) under the samples' fixed noise and minibatches (equals ``rollout``'s mean f)."""
    params0 = task.init_params(init_key)
    horizon = controller.gain.shape[1]

    def one(sample_key):
        noise_key, step_keys = _sample_keys(sample_key, horizon)
        return _unroll(task, controller_step_rule(controller, noise_key), params0,
                       step_keys, fan_in_exponent=fan_in_exponent)[0].mean()

    return jax.vmap(one)(sample_keys).mean()


sampled_objective_jit = jax.jit(sampled_objective, static_argnames=("fan_in_exponent",))
sampled_objective_and_grad = jax.jit(jax.value_and_grad(sampled_objective, argnums=1),
                                     static_argnames=("fan_in_exponent",))


@partial(jax.jit, static_argnames=("horizon", "fan_in_exponent"))
def policy_objective(task, theta, init_key, sample_keys, *, horizon: int, fan_in_exponent=0.0
                     ) -> jax.Array:
    """π's J (its deterministic step) on the samples' minibatches: comparable with the controllers'."""
    params0 = task.init_params(init_key)
    rule = lambda group, obs, scale, count: mlp_policy_steps(theta, obs, scale)
    runs = jax.vmap(lambda k: _unroll(task, rule, params0, _sample_keys(k, horizon)[1],
                                      fan_in_exponent=fan_in_exponent)[0])
    return runs(sample_keys).mean()


def controller_means(controller, observations) -> jax.Array:
    """u_ψ's mean at the tracked features: ``(N, G, K, T, F) → (N, G, K, T)``."""
    gain = jnp.asarray(controller.gain)[:, :, 0, :]
    return (jnp.einsum("ngktf,gtf->ngkt", observations, gain)
            + jnp.asarray(controller.bias)[None, :, None, :, 0])


def s_step_points(controller, observations, mask, duals: BadmmDuals, coupled: bool):
    """The S-step's regression: features ``(P, F)``, targets ``(P,)``, weights ``(P,)``.

    Target = u_ψ's mean − λ·V/ν (the minimiser of ν/(2V)·(u_π − u_ψ)² + λ·u_π), weight 1/V,
    0 for padded tracked entries.
    """
    variance = np.asarray(controller.covariance[..., 0, 0], np.float32)           # (G, T)
    target = np.asarray(controller_means(controller, observations))
    if coupled:
        shift = (np.asarray(duals.multiplier[..., 0]) * variance / np.asarray(duals.penalty))
        target = target - shift[None, :, None, :]
    weight = np.asarray(mask)[None, :, :, None] / variance[None, :, None, :]
    weight = np.broadcast_to(weight, target.shape)
    obs = np.asarray(observations)
    return (obs.reshape(-1, SCALE_FREE_DIM), target.reshape(-1).astype(np.float32),
            weight.reshape(-1).astype(np.float32))


def _s_loss(theta, x, y, w):
    return jnp.sum(w * jnp.square(mlp_policy_steps(theta, x, 1.0) - y)) / jnp.sum(w)


s_step_loss = jax.jit(_s_loss)


@partial(jax.jit, static_argnames=("num_steps", "batch_size", "learning_rate"))
def fit_policy(theta, x, y, w, key, *, num_steps: int, batch_size: int, learning_rate: float):
    """Adam on the weighted squared error of π's relative step, ``num_steps`` minibatches."""
    opt = optax.adam(learning_rate)

    def step(carry, k):
        theta, state = carry
        idx = jax.random.randint(k, (batch_size,), 0, x.shape[0])
        loss, grad = jax.value_and_grad(_s_loss)(theta, x[idx], y[idx], w[idx])
        updates, state = opt.update(grad, state, theta)
        return (optax.apply_updates(theta, updates), state), loss

    (theta, _), losses = jax.lax.scan(step, (theta, opt.init(theta)),
                                      jax.random.split(key, num_steps))
    return theta, losses


def policy_linearization(theta, observations, mask, variance, ridge: float
                         ) -> LinearGaussianController:
    """π_lin per (g, t): least squares of u_π on [φ[CONTROLLER_FEATURES], 1] (float64, NumPy)."""
    u = np.asarray(mlp_policy_steps(theta, observations, 1.0), np.float64)      # (N, G, K, T)
    obs = np.asarray(observations, np.float64)
    x = np.concatenate([obs[..., list(CONTROLLER_FEATURES)], np.ones(u.shape + (1,))], -1)
    w = np.broadcast_to(np.asarray(mask, np.float64)[None, :, :, None], u.shape)
    a = np.einsum("ngktp,ngktq,ngkt->gtpq", x, x, w)
    b = np.einsum("ngktp,ngkt,ngkt->gtp", x, u, w)
    diag = np.einsum("gtpp->gtp", a)
    a = a + ridge * np.eye(a.shape[-1]) * np.maximum(diag, 1e-30)[..., None, :]
    coef = np.linalg.solve(a, b[..., None])[..., 0]                              # (G, T, P)
    gain = np.zeros(coef.shape[:2] + (1, SCALE_FREE_DIM), np.float32)
    gain[..., 0, list(CONTROLLER_FEATURES)] = coef[..., :-1]
    return LinearGaussianController(gain, coef[..., -1:].astype(np.float32),
                                    np.asarray(variance, np.float32)[..., None, None])


def condition_key(config: ScaleFreeGPSConfig) -> jax.Array:
    """x_0 of the training condition."""
    return jax.random.key(config.seed + 1)


def init_state(config: ScaleFreeGPSConfig, task) -> ScaleFreeGPSState:
    """Relative-momentum controllers, a fresh π (its nonlinear twin), no coupling yet."""
    groups = len(jax.tree.leaves(task.init_params(jax.random.key(0))))
    controller = relative_momentum_controller(
        step_size=config.init_step_size, horizon=config.horizon, num_groups=groups,
        exploration_std=config.exploration_std)
    theta = init_mlp_policy(jax.random.key(config.seed + 2), hidden_sizes=config.hidden_sizes,
                            init_step_size=min(config.init_step_size, math.exp(-1)))
    shape = (groups, config.horizon)
    return to_host32(ScaleFreeGPSState(
        iteration=np.int32(0), controller=controller, eta=np.full(groups, np.nan),
        step_multiplier=np.full(groups, config.initial_step_multiplier),
        duals=BadmmDuals(np.zeros(shape + (1,)), np.zeros(shape)), theta=theta,
        previous=controller, predicted=np.float32(np.nan), best_theta=theta,
        best_score=np.float32(np.inf)))


@lru_cache(maxsize=16)
def scored_optimizer(fan_in_exponent: float = 0.0, learning_rate: float = 1.0):
    """``θ ↦ learned_opt(θ, …)`` at these settings, one object per value (``make_evaluator``
    caches by it)."""
    if fan_in_exponent == 0 and learning_rate == 1:
        return learned_opt
    return partial(learned_opt, fan_in_exponent=fan_in_exponent, learning_rate=learning_rate)


def _score(config, task, theta, optimizer=None):
    every = 10 if config.horizon % 10 == 0 else 1
    optimizer = optimizer or scored_optimizer(config.fan_in_exponent)
    curves = np.asarray(make_evaluator(config.horizon, every, optimizer)(
        theta, task, seed_keys(config.select_seeds)))
    if not np.all(np.isfinite(curves)):
        return math.inf, math.inf
    return float(curves[:, -1].mean()), float(curves.mean())


def judge_last_c_step(config: ScaleFreeGPSConfig, task, init_key, sample_keys, data,
                      previous, predicted: float, multiplier):
    """The realised fall of J of the last C-step on these fresh samples (common random numbers).

    Returns ``(multiplier, entry, rollback_reason)``: the judged KL step multiplier (halved when
    the step is undone), the log fields, and why the last C-step must be undone (``None``: keep
    it).
    """
    f = np.asarray(data.true_objective)
    objective = float(f.mean())
    entry = {"controller_objective": objective, "predicted_improvement": predicted,
             "realized_improvement": math.nan}
    multiplier = np.asarray(multiplier, np.float64)
    if not np.all(np.isfinite(f)) or np.any(f[:, -1] > config.divergence_ratio * f[:, 0]):
        if not np.isfinite(predicted):
            raise ValueError("scale-free GPS: the initial controllers diverge on this task; "
                             "lower ScaleFreeGPSConfig.init_step_size.")
        return np.maximum(0.5 * multiplier, 0.01), entry, "the samples diverged"
    if np.isfinite(predicted):
        before = float(sampled_objective_jit(task, previous, init_key, sample_keys,
                                             **config.fan_in))
        realized = before - objective
        entry["realized_improvement"] = realized
        if realized < min(0.0, predicted):
            return np.maximum(0.5 * multiplier, 0.01), entry, (
                f"the last C-step made fresh samples worse (J {before:.5f} -> {objective:.5f}, "
                f"predicted {before - predicted:.5f})")
        multiplier = np.asarray(update_step_multiplier(
            multiplier, predicted, realized, max_step_multiplier=config.max_step_multiplier),
            np.float64)
    return multiplier, entry, None


def update_duals(config: ScaleFreeGPSConfig, theta, controller, data, tracked, duals: BadmmDuals,
                 eta) -> tuple[BadmmDuals, bool]:
    """BADMM's dual step after an S-step: ``(duals, coupled)`` (ν set once from the first η)."""
    coupled = bool(np.all(np.asarray(duals.penalty) > 0))
    eta = np.asarray(eta, np.float64)
    if not (config.coupling and np.all(np.isfinite(eta))):
        return duals, coupled
    variance = np.asarray(controller.covariance[..., 0, 0], np.float64)
    # ν is set once, from the η of the first (uncoupled) C-step, which spent its KL budget: a
    # coupled step that stops short of the budget reports a vanishing η, and ν = 0.01·that
    # (re-set every iteration) let the next steps run away, all rejected.
    penalty = (np.asarray(duals.penalty, np.float64) if coupled else
               np.broadcast_to(config.initial_penalty * eta[:, None], variance.shape))
    gap_w = np.broadcast_to(np.asarray(tracked.mask)[None, :, :, None],
                            data.observations.shape[:-1])
    gap = np.asarray(mlp_policy_steps(theta, data.observations, 1.0)
                     - controller_means(controller, data.observations))
    gap = (gap * gap_w).sum((0, 2)) / gap_w.sum((0, 2))
    lam = (np.asarray(duals.multiplier, np.float64)
           + config.dual_rate * (penalty / variance * gap)[..., None]) if coupled \
        else np.zeros(variance.shape + (1,))
    return BadmmDuals(lam, penalty), True


def coupled_c_step(config: ScaleFreeGPSConfig, task, controller, data, tracked, init_key,
                   sample_keys, multiplier, theta, duals: BadmmDuals, coupled: bool, eta):
    """The pathwise C-step, pulled towards π's linearisation when coupled.

    Returns ``(result, eta, budget, next_multiplier)``.
    """
    sizes = np.array([x.size for x in jax.tree.leaves(task.init_params(init_key))], np.float64)
    variance = np.asarray(controller.covariance[..., 0, 0], np.float64)
    linearization = (policy_linearization(theta, data.observations, tracked.mask, variance,
                                          config.linearization_ridge) if coupled else None)
    budget = np.asarray(multiplier, np.float64) * config.horizon * config.kl_step
    result = pathwise.pathwise_c_step(
        task, controller, data.moments, init_key, sample_keys, sizes, budget,
        state_index=list(CONTROLLER_FEATURES), linearization=linearization,
        duals=duals if coupled else None, num_steps=config.pathwise_steps,
        step_cap=config.kl_step * config.kl_step_cap, ridge=config.pathwise_ridge,
        objective_and_grad=lambda c: sampled_objective_and_grad(task, c, init_key, sample_keys,
                                                                **config.fan_in))
    eta = np.where(np.isfinite(result.eta), result.eta, np.asarray(eta, np.float64))
    return result, eta, budget, pathwise.multiplier_after(multiplier, result)


def c_step_entry(config: ScaleFreeGPSConfig, result, budget, eta, multiplier, coupled, duals
                 ) -> dict:
    """The C-step's log fields."""
    return {
        "next_predicted_improvement": float(result.predicted_improvement),
        "pathwise_steps_accepted": int(result.steps_accepted),
        "kl": [float(k) for k in np.sum(result.kl, -1)], "kl_budget": [float(b) for b in budget],
        "eta": [float(e) for e in eta], "step_multiplier": [float(m) for m in multiplier],
        "coupled": coupled, "penalty_over_eta": config.initial_penalty if coupled else 0.0,
        "multiplier_abs_mean": float(np.mean(np.abs(np.asarray(duals.multiplier)))),
    }


def gps_iteration(config: ScaleFreeGPSConfig, task, tracked, state: ScaleFreeGPSState
                  ) -> tuple[ScaleFreeGPSState, dict]:
    """One iteration (module docs); returns the new state and its log entry."""
    iteration = int(state.iteration)
    key = jax.random.fold_in(jax.random.key(config.seed + 3), iteration)
    sample_key, s_key = jax.random.split(key)
    sample_keys = jax.random.split(sample_key, config.num_samples)
    init_key = condition_key(config)

    data = rollout(task, state.controller, init_key, sample_keys, jnp.asarray(tracked.index),
                   **config.fan_in)
    multiplier, judged, reason = judge_last_c_step(
        config, task, init_key, sample_keys, data, state.previous, float(state.predicted),
        state.step_multiplier)
    entry = {"iteration": iteration, "rolled_back": reason} | judged
    if reason is not None:
        return to_host32(state._replace(
            iteration=np.int32(iteration + 1), controller=state.previous,
            step_multiplier=multiplier, predicted=np.float32(np.nan))), entry

    theta, duals, eta = state.theta, state.duals, np.asarray(state.eta, np.float64)
    coupled = bool(np.all(np.asarray(duals.penalty) > 0))
    entry["s_step_loss_before"] = entry["s_step_loss_after"] = math.nan
    if iteration > 0:       # fit π to the controllers that drew these samples
        x, y, w = s_step_points(state.controller, data.observations, tracked.mask, duals, coupled)
        theta, losses = s_step(config, theta, x, y, w, s_key)
        entry["s_step_loss_before"], entry["s_step_loss_after"] = losses
        duals, coupled = update_duals(config, theta, state.controller, data, tracked, duals, eta)
    result, eta, budget, next_multiplier = coupled_c_step(
        config, task, state.controller, data, tracked, init_key, sample_keys, multiplier, theta,
        duals, coupled, eta)

    policy_j = float(policy_objective(task, theta, init_key, sample_keys,
                                      horizon=config.horizon, **config.fan_in))
    final, area = _score(config, task, theta)
    best_theta, best_score = state.best_theta, float(state.best_score)
    if final < best_score:
        best_theta, best_score = theta, final
    entry |= {"policy_objective": policy_j, "imitation_gap": policy_j - entry[
        "controller_objective"], "policy_tuning_final": final, "policy_tuning_area": area}
    entry |= c_step_entry(config, result, budget, eta, multiplier, coupled, duals)
    new_state = to_host32(ScaleFreeGPSState(
        iteration=np.int32(iteration + 1), controller=result.controller, eta=eta,
        step_multiplier=next_multiplier, duals=duals, theta=theta, previous=state.controller,
        predicted=np.float32(result.predicted_improvement if result.steps_accepted else np.nan),
        best_theta=best_theta, best_score=np.float32(best_score)))
    return new_state, entry


def s_step(config: ScaleFreeGPSConfig, theta, x, y, w, key):
    """π fitted to the points; returns ``(θ, (loss before, loss after))`` on a strided probe."""
    probe = slice(None, None, max(1, len(y) // 200_000))   # every sample, group, t
    before = float(s_step_loss(theta, x[probe], y[probe], w[probe]))
    theta, _ = fit_policy(theta, x, y, w, key, num_steps=config.s_step_iterations,
                          batch_size=config.s_step_batch_size,
                          learning_rate=config.s_step_learning_rate)
    theta = to_host32(theta)
    return theta, (before, float(s_step_loss(theta, x[probe], y[probe], w[probe])))


def train(config: ScaleFreeGPSConfig, task, out_dir=None, resume: bool = False, *,
          callback=None, max_seconds: float = math.inf, max_to_keep: int | None = 2):
    """``config.iterations`` iterations (or until ``max_seconds``), checkpointed under ``out_dir``.

    Returns ``(state, log)``; ``state.best_theta`` is the policy to ship. ``callback(state,
    entry, seconds)`` runs after each iteration's checkpoint (its wall time is kept out of the
    log, so that a resumed run's log equals an uninterrupted one's). A killed run resumes
    (``resume=True``) from its last checkpoint bit-for-bit: all randomness derives from
    (seed, iteration).
    """
    tracked = select_tracked(jax.random.key(config.seed + 4),
                             task.init_params(jax.random.key(0)), config.num_tracked)
    return run_iterations(init_state(config, task),
                          lambda state: gps_iteration(config, task, tracked, state),
                          config.iterations, out_dir, resume, callback=callback,
                          max_seconds=max_seconds, max_to_keep=max_to_keep)


def run_iterations(state, iterate, iterations: int, out_dir=None, resume: bool = False, *,
                   callback=None, max_seconds: float = math.inf, max_to_keep: int | None = 2):
    """``state, entry = iterate(state)`` until ``state.iteration == iterations`` or
    ``max_seconds``, each state and the log checkpointed (Orbax) under ``out_dir``; ``resume``
    restores the latest checkpoint (shaped like ``state``) first. Returns ``(state, log)``."""
    log: list[dict] = []
    manager = checkpoint.manager(out_dir, max_to_keep=max_to_keep) if out_dir else None
    if manager is not None and resume and manager.latest_step() is not None:
        state, log = checkpoint.restore(manager, state)
    began = time.perf_counter()
    while int(state.iteration) < iterations and time.perf_counter() - began < max_seconds:
        t0 = time.perf_counter()
        state, entry = iterate(state)
        log.append(entry)
        if manager is not None:
            checkpoint.save(manager, state, log)
        if callback is not None:
            callback(state, entry, time.perf_counter() - t0)
    if manager is not None:
        manager.wait_until_finished()
        manager.close()
    return state, log
