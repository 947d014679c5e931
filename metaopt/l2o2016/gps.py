"""Dense-state mirror-descent GPS for the 2016 problems (d = 4 to 12): one condition per objective.

Every training objective (with its own x_0) is a condition c. The controllers, dynamics and cost
act on the dense GPS state of all d coordinates together,

    s_t = [x_t (d); ∇f(x_t) (d); a_{t−1} (d)],    dX = 3d,  action a_t = Δx ∈ R^d,

which is Markov for these deterministic full-batch objectives and makes heavy-ball momentum
(a = μ·a_{t−1} − γ·∇f) exactly a linear controller. The policy never sees s: it sees the 2016
observation o_t (:mod:`metaopt.l2o2016.features`), as GPS allows. One iteration:

1. N samples per condition, ``lax.scan`` over t, ``vmap`` over samples and conditions: at
   iteration 0 from the controllers ψ_c (tuned momentum), afterwards from the policy's mean plus
   exploration noise Σ^π = ``initial_variance``·I (on-policy MDGPS; sampling the controllers
   instead, ``on_policy=False``, left the policy to compound its errors on states it never saw).
2. Model per (c, t): linear-Gaussian dynamics fitted to the N transitions by
   ``metaopt.gps.fit_dynamics`` (NIW prior pooled over the condition's time steps, ridge);
   cost ℓ_t(s, a) = the quadratic model of f(x_t + a_t) = f(x_{t+1}) from the exact gradient and
   Hessian (eigenvalues clipped at 0) at the samples' mean x_{t+1}, so Σ_t ℓ_t ≈ Σ_{t=1}^T f(x_t).
3. MDGPS C-step (Montgomery & Levine 2016): ``metaopt.gps.eta_search`` per condition under
   Σ_t KL(ψ_new ‖ π_lin) ≤ T·kl_step·m_c, where π_lin is the MLP's mean regressed on s over the
   samples plus Σ^π. At iteration 0 the reference is the sampling (momentum) controller.
4. S-step (:mod:`metaopt.l2o2016.s_step`): Adam on ½(μ_ω(o) − (K s + k))ᵀ G⁻¹ (μ_ω(o) − (K s + k))
   over all samples, G⁻¹ normalised by its median trace and clipped at twice the median, as in
   the reference.

``policy_kind="lstm"`` runs the same loop with the repo's per-coordinate LSTM (``metaopt.policy``,
shipped as ``metaopt.learned_opt``) in place of the MLP: it samples on-policy from the LSTM on Ψ
(:mod:`metaopt.features`), π_lin regresses the LSTM's mean steps on s, and the S-step fits it by
back-propagation through time on the sampled trajectories.

The initial controllers are heavy-ball momentum tuned per condition on a grid (μ 0.82–0.92,
γ 0.025–1.6, final f of a noise-free run), as in the authors' code.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from metaopt import features as lstm_features
from metaopt.gps import (
    LinearGaussianController,
    QuadraticCost,
    condition_gaussian,
    estimated_cost,
    eta_search,
    fit_dynamics,
    float64,
    moments_from_points,
    pooled_time_prior,
    posterior_mean_covariance,
    update_step_multiplier,
)
from metaopt.l2o2016 import features
from metaopt.l2o2016.evaluate import auc, family_curves, objective_keys
from metaopt.l2o2016.policy import apply_mlp, init_mlp, l2o2016_opt
from metaopt.l2o2016.s_step import (
    lstm_means,
    lstm_s_step,
    lstm_s_step_data,
    lstm_s_step_loss,
    s_step,
    s_step_data,
    s_step_loss,
    trainable,
    whiten,
)
from metaopt.learned_optimizer import learned_opt
from metaopt.policy import apply_policy, init_carry, init_policy, policy_hidden_size


class GPSConfig(NamedTuple):
    horizon: int = 40
    history: int = features.HISTORY
    num_samples: int = 20
    iterations: int = 10
    kl_step: float = 0.2
    max_step_multiplier: float = 10.0
    initial_variance: float = 0.01
    dynamics_prior_strength: float = 20.0
    dynamics_ridge: float = 1e-6
    policy_prior_strength: float = 1.0
    policy_ridge: float = 1e-6
    s_step_iterations: int = 2000
    s_step_learning_rate: float = 1e-3
    s_step_batch_size: int = 256
    momentum_grid: tuple = (0.82, 0.84, 0.86, 0.88, 0.90, 0.92)
    learning_rate_grid: tuple = (0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
    hidden: int = 50
    on_policy: bool = True
    seed: int = 0
    policy_kind: str = "mlp"            # or "lstm": metaopt.policy's per-coordinate LSTM
    lstm_hidden: int = 32
    lstm_init_step: float = 0.01
    lstm_s_step_iterations: int = 400
    lstm_batch_size: int = 32           # trajectories per minibatch (× d coordinate sequences)


class Samples(NamedTuple):
    """One iteration's rollouts: states ``(C, N, T + 1, 3d)``, observations ``(C, N, T, dO)``,
    actions ``(C, N, T, d)``, values f(x_t) ``(C, N, T + 1)``, the LSTM's Ψ ``(C, N, T, d, 3)``."""

    states: jax.Array
    observations: jax.Array
    actions: jax.Array
    values: jax.Array
    psi: jax.Array


class FlatProblem(NamedTuple):
    """The family seen as f(x, task) on flat x ∈ R^d (hashable: a jit static argument)."""

    unravel: Any

    def loss(self, x, task):
        return task.true_loss(self.unravel(x))


def flat_problem(tasks, keys) -> tuple[FlatProblem, jax.Array]:
    """The flat view and the conditions' x_0 ``(C, d)``, the same x_0 ``unroll(tx, task, key)`` uses."""
    one = jax.tree.map(lambda a: a[0], tasks)
    _, unravel = ravel_pytree(one.init_params(jax.random.key(0)))
    x0 = jax.vmap(lambda task, key: ravel_pytree(task.init_params(jax.random.split(key)[0]))[0])(
        tasks, keys)
    return FlatProblem(unravel), x0


def momentum_controllers(learning_rate, momentum, dim: int, horizon: int,
                         variance: float) -> LinearGaussianController:
    """a = μ·a_{t−1} − γ·∇f as ψ on s = [x; g; a_{t−1}]; γ, μ ``(C,)`` → gain ``(C, T, d, 3d)``."""
    eye = jnp.eye(dim)
    learning_rate, momentum = jnp.asarray(learning_rate), jnp.asarray(momentum)
    gain = jnp.concatenate([jnp.zeros((learning_rate.size, dim, dim)),
                            -learning_rate[:, None, None] * eye,
                            momentum[:, None, None] * eye], -1)
    count = learning_rate.size
    return LinearGaussianController(
        gain=jnp.broadcast_to(gain[:, None], (count, horizon, dim, 3 * dim)),
        bias=jnp.zeros((count, horizon, dim)),
        covariance=jnp.broadcast_to(variance * eye, (count, horizon, dim, dim)))


def _rollout_one(problem: FlatProblem, history: int, kind: str, theta, on_policy, task, x0,
                 controller, chol, noise):
    dim = x0.shape[0]

    def step(carry, xs):
        x, a_prev, hist, psi_hist, prev_value, lstm_carry = carry
        gain, bias, root, eps = xs
        value, grad = jax.value_and_grad(problem.loss)(x, task)
        # Ψ exactly as metaopt.learned_opt computes it on the flattened params.
        change = lstm_features.relative_objective_change(psi_hist.count, value, prev_value)
        psi, psi_hist = lstm_features.observation_features(psi_hist, x, grad, change)
        hist = features.push(hist, value, grad)
        state = jnp.concatenate([x, grad, a_prev])
        obs = features.observation(hist)
        if kind == "lstm":
            lstm_carry, policy_mean = apply_policy(theta, lstm_carry, psi)
        else:
            policy_mean = apply_mlp(theta, obs)
        mean = jnp.where(on_policy, policy_mean, gain @ state + bias)
        action = mean + root @ eps
        carry = (x + action, action, hist, psi_hist, value.astype(jnp.float32), lstm_carry)
        return carry, (state, obs, action, value, psi)

    lstm_carry = init_carry(x0, policy_hidden_size(theta)) if kind == "lstm" else ()
    init = (x0, jnp.zeros_like(x0), features.init_history(dim, history, x0.dtype),
            lstm_features.init_observation_history(x0), jnp.zeros((), jnp.float32), lstm_carry)
    (x_end, a_end, *_), (states, obs, actions, values, psi) = jax.lax.scan(
        step, init, (controller.gain, controller.bias, chol, noise))
    value, grad = jax.value_and_grad(problem.loss)(x_end, task)
    states = jnp.concatenate([states, jnp.concatenate([x_end, grad, a_end])[None]])
    return states, obs, actions, jnp.concatenate([values, value[None]]), psi


@partial(jax.jit, static_argnames=("problem", "history", "kind"))
def rollout(problem: FlatProblem, tasks, x0, controller: LinearGaussianController,
            noise: jax.Array, *, history: int, theta=None, on_policy=False,
            kind: str = "mlp") -> Samples:
    """N samples per condition, noise ``(C, N, T, d)`` standard normal scaled by chol(G_t).

    The mean action is the controller's K_t s + k_t, or the policy ``theta``'s mean if
    ``on_policy`` (then only the controller's covariance is used): μ_ω(o_t) of the MLP
    (``kind="mlp"``) or the per-coordinate LSTM's step on Ψ (``kind="lstm"``).
    """
    chol = jnp.linalg.cholesky(controller.covariance)
    if theta is None:
        theta = init_policy_of(kind, jax.random.key(0), x0.shape[-1], GPSConfig(history=history))
    per_sample = jax.vmap(partial(_rollout_one, problem, history, kind, theta, on_policy),
                          in_axes=(None, None, None, None, 0))
    return Samples(*jax.vmap(per_sample)(tasks, x0, controller, chol, noise))


def init_policy_of(kind: str, key: jax.Array, dim: int, config: GPSConfig):
    """Fresh weights of the ``kind`` policy (``"mlp"`` or ``"lstm"``)."""
    if kind == "lstm":
        return init_policy(key, hidden_size=config.lstm_hidden,
                           init_step_size=config.lstm_init_step)
    if kind != "mlp":
        raise ValueError(f"policy_kind must be 'mlp' or 'lstm', got {kind!r}.")
    return init_mlp(key, dim, history=config.history, hidden=config.hidden)


def policy_transformation(kind: str):
    """The optax transformation that runs a trained policy on a task."""
    return learned_opt if kind == "lstm" else l2o2016_opt


@partial(jax.jit, static_argnames=("problem", "horizon", "history"))
def _momentum_grid_finals(problem: FlatProblem, tasks, x0, learning_rate, momentum, *,
                          horizon: int, history: int) -> jax.Array:
    """f(x_T) of the noise-free momentum controller at each grid point, ``(P, C)``."""
    count, dim = x0.shape
    noise = jnp.zeros((count, 1, horizon, dim))

    def one(point):
        lr, mu = point
        ctrl = momentum_controllers(jnp.full(count, lr), jnp.full(count, mu), dim, horizon, 1e-12)
        return rollout(problem, tasks, x0, ctrl, noise, history=history).values[:, 0, -1]

    return jax.lax.map(one, (learning_rate, momentum))


def tune_momentum(problem: FlatProblem, tasks, x0, config: GPSConfig):
    """Per-condition (γ, μ) of the noise-free momentum controller with the lowest final f."""
    grid = [(lr, mu) for mu in config.momentum_grid for lr in config.learning_rate_grid]
    lr_grid, mu_grid = (np.array(column) for column in zip(*grid, strict=True))
    finals = np.asarray(_momentum_grid_finals(
        problem, tasks, x0, jnp.asarray(lr_grid, jnp.float32), jnp.asarray(mu_grid, jnp.float32),
        horizon=config.horizon, history=config.history), np.float64)   # (P, C)
    finals = np.where(np.isfinite(finals), finals, np.inf)
    best = np.argmin(finals, 0)
    return lr_grid[best], mu_grid[best]


# Separate programs for the dynamics (Cholesky) and the cost (eigh), and for the η search and the
# cost estimates: on this jaxlib's CPU backend one program holding several LAPACK chains over 90
# conditions deadlocked (0 % CPU, never returned), as metaopt/training/model.py records too.
@partial(jax.jit, static_argnames=("prior_strength", "ridge"))
def _fit_dynamics(samples: Samples, *, prior_strength: float, ridge: float):
    states = samples.states.astype(jnp.float64)
    actions = samples.actions.astype(jnp.float64)
    points = jnp.concatenate([states[:, :, :-1], actions, states[:, :, 1:]], -1)
    moments = moments_from_points(jnp.swapaxes(points, 1, 2))        # (C, T) over N
    return fit_dynamics(moments, states.shape[-1], prior_strength=prior_strength, ridge=ridge)


@partial(jax.jit, static_argnames=("problem",))
def cost_model(problem: FlatProblem, tasks, samples: Samples) -> QuadraticCost:
    """ℓ_t(s, a): the quadratic model of f(x_t + a_t) at the samples' mean x_{t+1} (float64)."""
    dim = samples.actions.shape[-1]
    centre = samples.states[:, :, 1:, :dim].astype(jnp.float64).mean(1)     # (C, T, d)

    def local_model(task, x):
        value, grad = jax.value_and_grad(problem.loss)(x, task)
        hess = jax.hessian(problem.loss)(x, task)
        eigval, eigvec = jnp.linalg.eigh(0.5 * (hess + hess.T))
        hess = (eigvec * jnp.maximum(eigval, 0.0)) @ eigvec.T
        return value, grad, hess

    value, grad, hess = jax.vmap(jax.vmap(local_model, in_axes=(None, 0)))(tasks, centre)
    # ℓ(z) = ½(Pz − c)ᵀH(Pz − c) + gᵀ(Pz − c) + f, with Pz = x + a picking x from s and a.
    select = jnp.concatenate([jnp.eye(dim), jnp.zeros((dim, 2 * dim)), jnp.eye(dim)], -1)
    hessian = jnp.einsum("ik,...ij,jl->...kl", select, hess, select)
    linear = grad - jnp.einsum("...ij,...j->...i", hess, centre)
    gradient = jnp.einsum("ik,...i->...k", select, linear)
    constant = (value - jnp.einsum("...i,...i->...", grad, centre)
                + 0.5 * jnp.einsum("...i,...ij,...j->...", centre, hess, centre))
    return QuadraticCost(hessian, gradient, constant)


def fit_model(problem: FlatProblem, tasks, samples: Samples, *, prior_strength: float,
              ridge: float):
    """Dynamics ``(C, T, …)`` of s and the cost model (call inside ``float64()``), on host."""
    dynamics = jax.device_get(_fit_dynamics(samples, prior_strength=prior_strength,
                                            ridge=ridge))
    return dynamics, jax.device_get(cost_model(problem, tasks, samples))


@partial(jax.jit, static_argnames=("prior_strength", "ridge"))
def linearize_policy(states, means, policy_covariance, *, prior_strength: float,
                     ridge: float) -> LinearGaussianController:
    """π_lin,c,t = N(K̄ s + k̄, residual + Σ^π) from μ_ω at the samples (call inside float64).

    states ``(C, N, T + 1, dX)``, means ``(C, N, T, d)``, Σ^π ``(C, d, d)``.
    """
    state_dim = states.shape[-1]
    points = jnp.concatenate([states[:, :, :-1], means], -1).astype(jnp.float64)
    moments = moments_from_points(jnp.swapaxes(points, 1, 2))
    prior = pooled_time_prior(moments, prior_strength)
    prior = prior._replace(mean=prior.mean[:, None], covariance=prior.covariance[:, None])
    mean, covariance = posterior_mean_covariance(moments, prior)
    gain, offset, residual = condition_gaussian(mean, covariance, state_dim, ridge)
    return LinearGaussianController(gain, offset, residual + policy_covariance[:, None])


_eta_search = jax.jit(eta_search)
_estimated_cost = jax.jit(estimated_cost)


def c_step(cost, dynamics, reference, fallback, budget, eta):
    """η search per condition against ``reference``; failed conditions keep ``fallback``.

    Call inside ``float64()``. Returns the ``EtaSearchResult`` (NumPy) and the model's predicted
    improvement Σ_t E[ℓ_t] under ``reference`` minus that under the new controller, ``(C,)``.
    """
    result = jax.device_get(_eta_search(cost, dynamics, reference, budget, eta))
    failed = np.asarray(result.failed)
    result = result._replace(controller=_select(~failed, result.controller, fallback))
    predicted = (np.asarray(_estimated_cost(cost, reference, dynamics))
                 - np.asarray(_estimated_cost(cost, result.controller, dynamics)))
    return result, predicted


def _to64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), jax.device_get(tree))


def _finite_conditions(samples: Samples) -> np.ndarray:
    return np.asarray(jnp.all(jnp.isfinite(samples.values), axis=(1, 2))
                      & jnp.all(jnp.isfinite(samples.states), axis=(1, 2, 3)))


def _select(mask, new, old):
    return jax.tree.map(lambda a, b: np.where(
        mask.reshape(mask.shape + (1,) * (np.ndim(a) - 1)), a, b), new, old)


def run_gps(tasks, keys, config: GPSConfig | None = None, *, log_fn=None) -> dict[str, Any]:
    """MDGPS on the training objectives ``tasks`` (leading axis C) with x_0 from ``keys``.

    Step size (ours, in the spirit of the reference's rule): each condition's KL budget
    T·kl_step·m_c has a multiplier m_c updated by ``metaopt.gps.update_step_multiplier`` from the
    model's predicted and the samples' actual improvement of Σ_{t≥1} f; a condition whose new
    samples are non-finite or cost more than twice the previous ones is rolled back to its
    previous controller (and resampled) with m_c halved.

    Returns a dict: ``theta`` (the policy with the lowest training meta-loss Σ_t f over the
    iterations, noise-free through ``l2o2016_opt`` or, for the LSTM, ``metaopt.learned_opt``),
    ``last_theta``, ``log`` (one dict per iteration), ``momentum`` (the tuned initial (γ, μ) per condition).
    """
    config = GPSConfig() if config is None else config
    problem, x0 = flat_problem(tasks, keys)
    count, dim = x0.shape
    horizon = config.horizon
    lr, mu = tune_momentum(problem, tasks, x0, config)
    controller = jax.device_get(momentum_controllers(lr, mu, dim, horizon,
                                                     config.initial_variance))
    key = jax.random.key(config.seed)
    kind = config.policy_kind
    theta = init_policy_of(kind, jax.random.fold_in(key, 1), dim, config)
    optimizer = optax.adam(config.s_step_learning_rate)
    opt_state = optimizer.init(trainable(theta) if kind == "mlp" else theta)
    eta, multiplier = np.ones(count), np.ones(count)
    # Σ^π: fixed exploration of the policy's samples and covariance of π_lin (a covariance taken
    # from the controllers grew from iteration to iteration and the samples diverged).
    exploration = config.initial_variance * jnp.eye(dim)
    log, best = [], (np.inf, theta)
    momentum_curves = np.asarray(rollout(
        problem, tasks, x0, momentum_controllers(lr, mu, dim, horizon, 1e-12),
        jnp.zeros((count, 1, horizon, dim)), history=config.history).values[:, 0])
    previous = None            # (controller, mean sample cost Σ_{t≥1} f, predicted improvement)
    for iteration in range(config.iterations):
        start = time.perf_counter()
        noise = jax.random.normal(jax.random.fold_in(key, 100 + iteration),
                                  (count, config.num_samples, horizon, dim))
        on_policy = config.on_policy and iteration > 0
        sampler = jax.tree.map(jnp.asarray, controller)
        if on_policy:
            sampler = sampler._replace(covariance=jnp.broadcast_to(
                exploration, sampler.covariance.shape))
        samples = rollout(problem, tasks, x0, sampler, noise, history=config.history,
                          theta=theta, on_policy=on_policy, kind=kind)
        cost_now = np.asarray(samples.values[:, :, 1:].sum(-1), np.float64).mean(1)
        rolled_back = np.zeros(count, bool)
        if previous is not None:
            old_controller, old_cost, predicted = previous
            finite = np.isfinite(cost_now)
            actual = np.where(finite, old_cost - cost_now, -np.inf)
            useful = finite & (predicted > 0)
            multiplier = np.where(useful, np.asarray(update_step_multiplier(
                multiplier, np.where(useful, predicted, 1.0), np.where(useful, actual, 0.0),
                max_step_multiplier=config.max_step_multiplier)),
                multiplier)
            rolled_back = ~finite | (cost_now > 2.0 * old_cost)
            multiplier = np.where(rolled_back, np.maximum(0.5 * multiplier, 0.01), multiplier)
            if rolled_back.any() and not on_policy:
                controller = _select(rolled_back, old_controller, controller)
                samples = rollout(problem, tasks, x0, jax.tree.map(jnp.asarray, controller),
                                  noise, history=config.history)
                cost_now = np.asarray(samples.values[:, :, 1:].sum(-1), np.float64).mean(1)
        # Diverged samples (non-finite, or cost doubled) would swamp the regressions: skip them.
        valid = _finite_conditions(samples) & ~rolled_back
        if iteration == 0 and kind == "mlp":
            flat_obs = samples.observations[valid].reshape(-1, samples.observations.shape[-1])
            theta = whiten(theta, flat_obs)
        budget = multiplier * config.kl_step * horizon
        with float64():
            dynamics, cost = _to64(fit_model(problem, tasks, samples,
                                             prior_strength=config.dynamics_prior_strength,
                                             ridge=config.dynamics_ridge))
            fallback = _to64(controller)
            if iteration == 0:
                reference = fallback
            else:
                means = (lstm_means(theta, samples.psi) if kind == "lstm"
                         else apply_mlp(theta, samples.observations))
                reference = _to64(linearize_policy(
                    samples.states, means, jnp.broadcast_to(exploration, (count, dim, dim)),
                    prior_strength=config.policy_prior_strength, ridge=config.policy_ridge))
                reference = _select(valid, reference, fallback)
            result, predicted = c_step(cost, dynamics, reference, fallback, budget, eta)
        failed = np.asarray(result.failed) | ~valid
        new_controller = _select(~failed, jax.tree.map(lambda a: np.asarray(a, np.float32),
                                                       result.controller), controller)
        previous = (controller, cost_now, np.where(failed, 0.0, np.asarray(predicted)))
        eta = np.where(failed, eta, np.asarray(result.eta))
        make_data, loss_fn, fit = ((lstm_s_step_data, lstm_s_step_loss, partial(
            lstm_s_step, num_steps=config.lstm_s_step_iterations,
            batch_size=config.lstm_batch_size)) if kind == "lstm" else (s_step_data, s_step_loss,
            partial(s_step, num_steps=config.s_step_iterations,
                    batch_size=config.s_step_batch_size)))
        data = make_data(samples, jax.tree.map(jnp.asarray, new_controller), jnp.asarray(valid))
        controller = new_controller
        loss = jax.jit(loss_fn)
        loss_before = float(loss(theta, data))
        theta, opt_state = fit(theta, opt_state, data, jax.random.fold_in(key, 200 + iteration),
                               optimizer=optimizer)
        loss_after = float(loss(theta, data))
        policy = np.asarray(family_curves(policy_transformation(kind), theta, tasks, keys,
                                          num_steps=horizon), np.float64)
        policy_auc = auc(policy)
        score = float(np.mean(np.where(np.isfinite(policy_auc), policy_auc, np.inf)))
        if score < best[0]:
            best = (score, theta)
        entry = {
            "iteration": iteration,
            "controller_cost": float(np.mean(auc(samples.values)[valid])),
            "policy_train_auc": score,
            "policy_train_final": float(np.median(policy[:, -1])),
            "momentum_train_auc": float(np.mean(auc(momentum_curves))),
            "s_step_loss_before": loss_before,
            "s_step_loss_after": loss_after,
            "kl": float(np.mean(np.asarray(result.kl).sum(-1)[~failed])) if (~failed).any()
            else float("nan"),
            "kl_budget": float(np.mean(budget)),
            "step_multiplier_median": float(np.median(multiplier)),
            "eta_median": float(np.median(eta)),
            "c_step_failed": int(np.sum(failed)),
            "rolled_back": int(np.sum(rolled_back)),
            "seconds": time.perf_counter() - start,
        }
        log.append(entry)
        if log_fn is not None:
            log_fn(entry)
    return {"theta": best[1], "last_theta": theta, "log": log,
            "momentum": {"learning_rate": lr.tolist(), "momentum": mu.tolist()},
            "best_train_auc": best[0]}


def default_keys(split_seed: int, count: int) -> jax.Array:
    """x_0 keys of the training conditions (distinct from the test keys of the experiments)."""
    return objective_keys(1000 + split_seed, count)
