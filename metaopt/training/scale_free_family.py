"""GPS for the scale-free policy over a family of training conditions (ours; issue 17).

GPS is multi-condition by construction: each condition c (a task: a dataset projection, a net, an
activation, a minibatch size) has its own controllers ψ_c with their own KL step multiplier, η,
BADMM duals and judge, exactly as in :mod:`metaopt.training.scale_free_gps`; one policy π is fitted
to all of them. One iteration:

1. per condition, fresh samples from ψ_c judge ψ_c's last C-step (common random numbers); a
   C-step that made them worse is rolled back for that condition alone;
2. one S-step on the pooled points of the other conditions, each condition's weights normalised
   to sum 1, so that no condition dominates by its number of groups or its noise level;
3. per condition, the BADMM dual step and the coupled pathwise C-step;
4. π scored on every condition's tuning seeds; the θ with the lowest geometric mean of final f
   over the conditions is kept (a ratio, so scale-free across conditions).

The controllers start either as tuned relative momentum per condition (``init_step_size``) or, to
fine-tune a trained π on the family, as π's own linearisation on each condition
(``policy_controllers``), with exploration noise relative to π's steps.

Example::

  conditions = [FamilyCondition("mb64", task_a, 0.05), FamilyCondition("mb10", task_b, 0.03)]
  state, log = train_family(ScaleFreeGPSConfig(num_samples=6), conditions, "ckpt")
  theta = state.best_theta
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metaopt.gps import BadmmDuals
from metaopt.mlp_policy import init_mlp_policy, mlp_policy_steps
from metaopt.scale_free_controller import relative_momentum_controller
from metaopt.training.gps_loop import to_host32
from metaopt.training.rollout import select_tracked
from metaopt.training.scale_free_gps import (
    ScaleFreeGPSConfig,
    _sample_keys,
    _score,
    _unroll,
    c_step_entry,
    coupled_c_step,
    judge_last_c_step,
    policy_linearization,
    policy_objective,
    rollout,
    run_iterations,
    s_step,
    s_step_points,
    update_duals,
)

__all__ = ["ConditionState", "FamilyCondition", "FamilyGPSState", "family_iteration",
           "init_family_state", "policy_controllers", "pool_points", "train_family",
           "tuning_score"]


class FamilyCondition(NamedTuple):
    """One training condition: ``task`` and its controllers' starting relative-momentum step."""

    name: str
    task: Any
    init_step_size: float = 0.05


class ConditionState(NamedTuple):
    """One condition's GPS state (the per-condition fields of ``ScaleFreeGPSState``)."""

    controller: Any
    eta: Any
    step_multiplier: Any
    duals: BadmmDuals
    previous: Any
    predicted: Any


class FamilyGPSState(NamedTuple):
    """``conditions``: one ``ConditionState`` per condition; θ, the best θ and its score
    (geometric mean of final f over the conditions' tuning seeds) are shared."""

    iteration: Any
    conditions: tuple
    theta: Any
    best_theta: Any
    best_score: Any


def _condition_keys(config: ScaleFreeGPSConfig, c: int, iteration: int):
    init_key = jax.random.fold_in(jax.random.key(config.seed + 1), c)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed + 3), iteration), c)
    return init_key, jax.random.split(key, config.num_samples)


def _tracked(config: ScaleFreeGPSConfig, conditions):
    return [select_tracked(jax.random.fold_in(jax.random.key(config.seed + 4), c),
                           cond.task.init_params(jax.random.key(0)), config.num_tracked)
            for c, cond in enumerate(conditions)]


@partial(jax.jit, static_argnames=("horizon", "fan_in_exponent"))
def _policy_observations(task, theta, init_key, sample_keys, tracked_index, *, horizon: int,
                         fan_in_exponent=0.0):
    """The tracked coordinates' φ ``(N, G, K, T, F)`` along π's own (deterministic) runs."""
    params0 = task.init_params(init_key)
    rule = lambda group, obs, scale, count: mlp_policy_steps(theta, obs, scale)
    outs = jax.vmap(lambda k: _unroll(task, rule, params0, _sample_keys(k, horizon)[1],
                                      tracked_index, fan_in_exponent)[1])(sample_keys)
    return jnp.moveaxis(outs["tracked"], 1, 3)


def policy_controllers(config: ScaleFreeGPSConfig, task, theta, init_key, sample_keys, tracked):
    """π's linearisation per (g, t) along its own runs, as controllers: gains and bias by
    least squares (``policy_linearization``), noise std ``exploration_std``·RMS of π's step."""
    obs = _policy_observations(task, theta, init_key, sample_keys, jnp.asarray(tracked.index),
                               horizon=config.horizon, **config.fan_in)
    u = np.asarray(mlp_policy_steps(theta, obs, 1.0), np.float64)              # (N, G, K, T)
    w = np.asarray(tracked.mask, np.float64)[None, :, :, None]
    rms = np.sqrt((np.square(u) * w).sum((0, 2)) / np.broadcast_to(w, u.shape).sum((0, 2)))
    variance = np.square(config.exploration_std * np.maximum(rms, 1e-3 * rms.max()))
    return to_host32(policy_linearization(theta, obs, tracked.mask, variance,
                                          config.linearization_ridge))


def init_family_state(config: ScaleFreeGPSConfig, conditions, theta=None) -> FamilyGPSState:
    """Fresh π and relative-momentum controllers, or (``theta`` given) π and its linearisation."""
    if not conditions:
        raise ValueError("init_family_state: give at least one FamilyCondition")
    trackeds = _tracked(config, conditions)
    states = []
    for c, (cond, tracked) in enumerate(zip(conditions, trackeds, strict=True)):
        groups = len(jax.tree.leaves(cond.task.init_params(jax.random.key(0))))
        if theta is None:
            ctrl = relative_momentum_controller(
                step_size=cond.init_step_size, horizon=config.horizon, num_groups=groups,
                exploration_std=config.exploration_std)
        else:
            init_key = _condition_keys(config, c, 0)[0]
            sample_keys = jax.random.split(jax.random.fold_in(jax.random.key(config.seed + 6), c),
                                           config.num_samples)
            ctrl = policy_controllers(config, cond.task, theta, init_key, sample_keys, tracked)
        shape = (groups, config.horizon)
        states.append(ConditionState(
            controller=ctrl, eta=np.full(groups, np.nan),
            step_multiplier=np.full(groups, config.initial_step_multiplier),
            duals=BadmmDuals(np.zeros(shape + (1,)), np.zeros(shape)), previous=ctrl,
            predicted=np.float32(np.nan)))
    if theta is None:
        theta = init_mlp_policy(jax.random.key(config.seed + 2), hidden_sizes=config.hidden_sizes,
                                init_step_size=min(conditions[0].init_step_size, math.exp(-1)))
    return to_host32(FamilyGPSState(np.int32(0), tuple(states), theta, theta, np.float32(np.inf)))


def pool_points(points):
    """Concatenates per-condition S-step points ``[(x, y, w), ...]``, each condition's weights
    normalised to sum 1 (module docs)."""
    x = np.concatenate([p[0] for p in points])
    y = np.concatenate([p[1] for p in points])
    w = np.concatenate([p[2] / max(float(p[2].sum()), 1e-30) for p in points])
    return x, y, w


def family_iteration(config: ScaleFreeGPSConfig, conditions, trackeds, state: FamilyGPSState
                     ) -> tuple[FamilyGPSState, dict]:
    """One iteration over every condition (module docs); returns the new state and log entry."""
    iteration = int(state.iteration)
    s_key = jax.random.fold_in(jax.random.key(config.seed + 5), iteration)
    new_states, entries, live = list(state.conditions), [], []
    for c, (cond, cs, tracked) in enumerate(zip(conditions, state.conditions, trackeds,
                                                strict=True)):
        init_key, sample_keys = _condition_keys(config, c, iteration)
        data = rollout(cond.task, cs.controller, init_key, sample_keys, jnp.asarray(tracked.index),
                       **config.fan_in)
        multiplier, judged, reason = judge_last_c_step(
            config, cond.task, init_key, sample_keys, data, cs.previous, float(cs.predicted),
            cs.step_multiplier)
        entries.append({"name": cond.name, "rolled_back": reason} | judged)
        if reason is not None:
            new_states[c] = cs._replace(controller=cs.previous, predicted=np.float32(np.nan),
                                        step_multiplier=multiplier)
        else:
            live.append((c, data, multiplier, init_key, sample_keys))

    theta = state.theta
    entry = {"iteration": iteration, "s_step_loss_before": math.nan,
             "s_step_loss_after": math.nan}
    coupled = {c: bool(np.all(np.asarray(state.conditions[c].duals.penalty) > 0))
               for c, *_ in live}
    duals = {c: state.conditions[c].duals for c, *_ in live}
    if iteration > 0 and live:       # fit π to the controllers that drew these samples
        points = [s_step_points(state.conditions[c].controller, data.observations,
                                trackeds[c].mask, duals[c], coupled[c])
                  for c, data, *_ in live]
        theta, (entry["s_step_loss_before"], entry["s_step_loss_after"]) = s_step(
            config, theta, *pool_points(points), s_key)
        for c, data, *_ in live:
            duals[c], coupled[c] = update_duals(config, theta, state.conditions[c].controller,
                                                data, trackeds[c], duals[c],
                                                state.conditions[c].eta)
    for c, data, multiplier, init_key, sample_keys in live:
        cs, task = state.conditions[c], conditions[c].task
        result, eta, budget, next_multiplier = coupled_c_step(
            config, task, cs.controller, data, trackeds[c], init_key, sample_keys, multiplier,
            theta, duals[c], coupled[c], cs.eta)
        policy_j = float(policy_objective(task, theta, init_key, sample_keys,
                                          horizon=config.horizon, **config.fan_in))
        entries[c] |= {"policy_objective": policy_j,
                       "imitation_gap": policy_j - entries[c]["controller_objective"]}
        entries[c] |= c_step_entry(config, result, budget, eta, multiplier, coupled[c], duals[c])
        new_states[c] = ConditionState(
            controller=result.controller, eta=eta, step_multiplier=next_multiplier,
            duals=duals[c], previous=cs.controller,
            predicted=np.float32(result.predicted_improvement if result.steps_accepted
                                 else np.nan))

    score, per_condition = tuning_score(config, conditions, theta)
    for e, (final, area) in zip(entries, per_condition, strict=True):
        e["policy_tuning_final"], e["policy_tuning_area"] = final, area
    best_theta, best_score = state.best_theta, float(state.best_score)
    if score < best_score:
        best_theta, best_score = theta, score
    entry |= {"policy_tuning_score": score, "conditions": entries}
    return to_host32(FamilyGPSState(np.int32(iteration + 1), tuple(new_states), theta,
                                    best_theta, np.float32(best_score))), entry


def tuning_score(config: ScaleFreeGPSConfig, conditions, theta, *, optimizer=None
                 ) -> tuple[float, list[tuple[float, float]]]:
    """π's selection score: the geometric mean over ``conditions`` of its final f on their
    tuning seeds (``config.select_seeds``), inf if any run is not finite; and per condition its
    (final f, area = mean f) there. ``optimizer``: ``θ ↦ transformation`` (default
    ``learned_opt`` at ``config.fan_in_exponent``; ``scale_free_gps.scored_optimizer``)."""
    per_condition = [_score(config, cond.task, theta, optimizer) for cond in conditions]
    finals = np.array([final for final, _ in per_condition])
    score = float(np.exp(np.mean(np.log(finals)))) if np.all(np.isfinite(finals)) else math.inf
    return score, per_condition


def train_family(config: ScaleFreeGPSConfig, conditions, out_dir=None, resume: bool = False, *,
                 init_theta=None, callback=None, max_seconds: float = math.inf,
                 max_to_keep: int | None = 2):
    """``config.iterations`` family iterations (or until ``max_seconds``), checkpointed under
    ``out_dir`` and resumable bit-for-bit, as ``scale_free_gps.train``. ``init_theta``: fine-tune
    this π (controllers start as its linearisation). Returns ``(state, log)``."""
    conditions = list(conditions)
    trackeds = _tracked(config, conditions)
    state = init_family_state(config, conditions, init_theta)
    return run_iterations(state, lambda s: family_iteration(config, conditions, trackeds, s),
                          config.iterations, out_dir, resume, callback=callback,
                          max_seconds=max_seconds, max_to_keep=max_to_keep)
