"""One GPS C-step vs one rollout at the paper's scale, on this machine's CPUs.

C-step (float64, jitted, vmapped over 4 groups): dynamics fit from pooled moments + tied cost +
η search with the BADMM-augmented LQG; T = 400, dX = 79, dU = 1; moments pooled from the
2,842 coordinates × 20 samples of the rollout below.

Rollout (float32, jitted): a ``lax.scan`` over T = 400 steps of, for 20 samples (vmap): the
minibatch value-and-grad of a 48-48-10 ReLU MLP (softmax cross-entropy, batch 64, random data
50k × 48), the real 79-wide GPS state (``metaopt.features`` via ``metaopt.controller``), a
linear-Gaussian controller a = K_t s + k_t + noise for every coordinate, and the per-(group, t)
moment accumulation of [s_t; a_t; s_{t+1}]. g* (the true-objective gradient) is stood in for by
the minibatch gradient: a full-batch gradient on all 50k examples is timed separately and
extrapolated (``full_batch_gradient`` row).

    .venv/bin/python benchmarks/cstep.py [--repeats 3] [--prior-study]

Prints markdown tables: every case is compiled and warmed up, then timed in ``--repeats``
interleaved rounds (so load from other processes on a shared machine hits all cases alike);
times are medians with the fastest round in parentheses.
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import interleaved_times

from metaopt import features
from metaopt.controller import controller_step, linear_gaussian_controller, momentum_controller
from metaopt.gps import (
    BadmmDuals,
    LinearGaussianController,
    eta_search,
    fit_dynamics,
    float64,
    kl_budget,
    moments_from_points,
    tied_coordinate_cost,
    transition_moments,
    transition_points,
)

HORIZON, STATE_DIM, ACTION_DIM = 400, features.GPS_STATE_DIM, 1
SAMPLES, BATCH, EXAMPLES, INPUTS, HIDDEN, CLASSES = 20, 64, 50_000, 48, 48, 10
POINT_DIM = 2 * STATE_DIM + ACTION_DIM


class Timing(float):
    """Median seconds over repeats (a float), remembering the fastest repeat as ``.best``."""

    def __new__(cls, times):
        timing = super().__new__(cls, statistics.median(times))
        timing.best = min(times)
        return timing

    def __format__(self, spec):
        return f"{float(self):{spec}} ({self.best:{spec}})"


def timed(fn, *args, repeats):
    """``Timing`` of ``fn(*args)`` after a compile + warm-up call."""
    return interleaved_timings({"fn": (fn, args, False)}, repeats)["fn"]


def interleaved_timings(cases, repeats):
    """{name: Timing} for {name: (fn, args, float64?)}, calls interleaved (``common``)."""
    return {name: Timing(values) for name, values in interleaved_times(cases, repeats).items()}


# ------------------------------------------------------------------------------------------------
# Rollout proxy.

def init_params(key):
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (INPUTS, HIDDEN)) / jnp.sqrt(INPUTS),
            "b1": jnp.zeros(HIDDEN),
            "w2": jax.random.normal(k2, (HIDDEN, CLASSES)) / jnp.sqrt(HIDDEN),
            "b2": jnp.zeros(CLASSES)}


def loss_fn(params, inputs, labels):
    hidden = jax.nn.relu(inputs @ params["w1"] + params["b1"])
    logits = hidden @ params["w2"] + params["b2"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))


def make_rollout(data, labels, controllers, output="moments", horizon=HORIZON):
    """Rollout of SAMPLES runs; returns (per-step outputs, mean minibatch loss per step).

    ``output``: "moments" — per-group ``RegressionMoments`` with count ``(G, T)``, by blocks
    (``transition_moments``, reusing step t − 1's s'ᵀs'); "concat" — the same from the
    concatenated points (``moments_from_points``); "none" — no moments (for the time breakdown);
    an int g — group g's transition points ``(T, SAMPLES, n_g, D)`` (for the prior study).
    """
    value_and_grad = jax.value_and_grad(loss_fn)

    def sample_step(carry, key):
        params, state = carry
        idx = jax.random.randint(key, (BATCH,), 0, EXAMPLES)
        value, grads = value_and_grad(params, data[idx], labels[idx])
        actions, state, gps_states = controller_step(
            controllers, grads, state, params, value=value, true_grad=grads)
        params = jax.tree.map(jnp.add, params, actions)
        return (params, state), (gps_states, actions, value)

    def flat(x, width):
        return x.reshape(-1, width)                     # (samples × coordinates, width)

    def step(carry, keys):
        samples, previous, state_moments = carry
        samples, (states, actions, values) = jax.vmap(sample_step)(samples, keys)
        states, actions = jax.tree.leaves(states), jax.tree.leaves(actions)
        if previous is None:
            state_moments = [moments_from_points(flat(s, STATE_DIM)) for s in states]
            return (samples, (states, actions), state_moments), None
        if output == "none":
            return (samples, (states, actions), state_moments), (values.mean(), values.mean())
        if isinstance(output, int):
            points = transition_points(previous[0][output], previous[1][output][..., None],
                                       states[output])
            return (samples, (states, actions), state_moments), (points, values.mean())
        moments, next_moments = [], []
        for s_prev, a_prev, s_next, m_prev in zip(*previous, states, state_moments, strict=True):
            if output == "concat":
                points = transition_points(s_prev, a_prev[..., None], s_next)
                moments.append(moments_from_points(flat(points, POINT_DIM)))
                next_moments.append(m_prev)
            else:
                m, m_next = transition_moments(flat(s_prev, STATE_DIM), flat(a_prev, ACTION_DIM),
                                               flat(s_next, STATE_DIM), state_moments=m_prev)
                moments.append(m)
                next_moments.append(m_next)
        moments = jax.tree.map(lambda *m: jnp.stack(m), *moments)    # (G, ...)
        return (samples, (states, actions), next_moments), (moments, values.mean())

    def rollout(key):
        init_key, noise_key, step_key = jax.random.split(key, 3)
        params = jax.vmap(init_params)(jax.random.split(init_key, SAMPLES))
        states = jax.vmap(lambda k, p: linear_gaussian_controller(controllers, key=k).init(p))(
            jax.random.split(noise_key, SAMPLES), params)
        keys = jax.random.split(step_key, (horizon + 1, SAMPLES))
        carry, _ = step(((params, states), None, None), keys[0])
        # Step t + 1 computes s_{t+1}, completing transition t: T transitions need T + 1 states.
        _, (outputs, values) = jax.lax.scan(step, carry, keys[1:])
        if output in ("moments", "concat"):
            outputs = jax.tree.map(lambda m: jnp.moveaxis(m, 0, 1), outputs)
        return outputs, values

    return jax.jit(rollout)


# ------------------------------------------------------------------------------------------------
# C-step.

def c_step(moments, curvature, previous, policy, duals, budget, eta, sequential=False):
    dynamics = fit_dynamics(moments, STATE_DIM)
    cost = tied_coordinate_cost(curvature, STATE_DIM, ACTION_DIM)
    return eta_search(cost, dynamics, previous, budget, eta, policy, duals, sequential=sequential)


def analytic_flops(groups, iterations):
    """Dense-matmul FLOPs of the C-step (multiply-add = 2), ignoring O(n²) terms."""
    n, x, u = STATE_DIM + ACTION_DIM, STATE_DIM, ACTION_DIM
    d = POINT_DIM
    fit = groups * HORIZON * (n**3 / 3 + 2 * n * n * x + 2 * x * n * x + 2 * d * d)
    backward = 2 * x * x * n + 2 * n * x * n + 2 * x * u * x + 2 * x * u * x * 2  # FᵀVF, KᵀPK, V
    forward = 2 * x * n * n + 2 * x * n * x + 2 * u * x * x                       # FΣFᵀ, KΣ
    per_try = groups * HORIZON * (backward + forward + 2 * u * x * x)
    return fit, per_try, fit + iterations * per_try


def xla_flops(fn, *args):
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return float(analysis.get("flops", float("nan")))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prior-study", action="store_true",
                        help="also run the NIW-pooled vs GMM prior measurement")
    args = parser.parse_args()

    key = jax.random.key(0)
    data_key, label_key, rollout_key = jax.random.split(key, 3)
    data = jax.random.normal(data_key, (EXAMPLES, INPUTS))
    labels = jax.random.randint(label_key, (EXAMPLES,), 0, CLASSES)
    group_sizes = [x.size for x in jax.tree.leaves(init_params(key))]
    groups = len(group_sizes)
    sampling = momentum_controller(learning_rate=0.1, momentum=0.9, horizon=HORIZON,
                                   variance=1e-6, num_groups=groups)

    rollout = make_rollout(data, labels, sampling)
    moments, values = jax.device_get(rollout(rollout_key))
    value_and_grad = jax.jit(jax.vmap(jax.value_and_grad(loss_fn), in_axes=(0, None, None)))
    params = jax.vmap(init_params)(jax.random.split(key, SAMPLES))

    # Inputs of the C-step: the sampling controller is ψ_prev; a perturbed copy stands in for the
    # policy linearisation; h = 1 stands in for the measured curvature.
    rng = np.random.default_rng(0)
    previous = jax.tree.map(np.asarray, sampling)
    policy = LinearGaussianController(
        previous.gain + 1e-3 * rng.normal(size=previous.gain.shape),
        previous.bias, 2 * previous.covariance)
    duals = BadmmDuals(np.zeros((groups, HORIZON, ACTION_DIM)), np.full((groups, HORIZON), 0.01))
    curvature = np.ones((groups, HORIZON))
    budget = kl_budget(1.0, HORIZON)
    eta = np.ones(groups)
    cstep_args = (moments, curvature, previous, policy, duals, budget, eta)
    batched = jax.jit(c_step)
    sequential = jax.jit(lambda *a: c_step(*a, sequential=True))
    fit = jax.jit(lambda m: fit_dynamics(m, STATE_DIM))
    with float64():
        result = jax.device_get(sequential(*cstep_args))
        fit_flops = xla_flops(lambda m: fit_dynamics(m, STATE_DIM), moments)
    timings = interleaved_timings({
        "rollout": (rollout, (rollout_key,), False),
        "bare": (make_rollout(data, labels, sampling, output="none"), (rollout_key,), False),
        "concat": (make_rollout(data, labels, sampling, output="concat"), (rollout_key,), False),
        "full_grad": (value_and_grad, (params, data, labels), False),
        "cstep": (batched, cstep_args, True),
        "sequential": (sequential, cstep_args, True),
        "fit": (fit, (moments,), True),
    }, args.repeats)
    rollout_time, bare_rollout_time, concat_rollout_time, full_grad_time = (
        timings[k] for k in ("rollout", "bare", "concat", "full_grad"))
    cstep_time, sequential_time, fit_time = (timings[k] for k in ("cstep", "sequential", "fit"))

    iterations = int(np.max(result.iterations))
    fit_an, try_an, total_an = analytic_flops(groups, iterations)
    print(f"\nJAX {jax.__version__}, backend {jax.default_backend()}, "
          f"{jax.device_count()} device(s), {os.cpu_count()} CPUs, load average at the end "
          f"{os.getloadavg()[0]:.1f}; groups {group_sizes}")
    print(f"mean minibatch loss over the rollout: first {float(values[0]):.3f}, "
          f"last {float(values[-1]):.3f}")
    print(f"η search: η = {np.array2string(result.eta, precision=3)}, "
          f"tries = {result.iterations}, ΣKL = {np.array2string(result.kl.sum(-1), precision=2)}"
          f" (budget {float(budget):.0f}), met = {result.met_budget}, failed = {result.failed}\n")
    print("| what | time (s): median (fastest) | notes |")
    print("|---|---:|---|")
    print(f"| rollout (20 samples × T=400, 2,842 coords, features + controller + moments) "
          f"| {rollout_time:.3f} | g* = minibatch gradient stand-in |")
    print(f"| of which moment accumulation (rollout minus rollout without it) "
          f"| {float(rollout_time) - bare_rollout_time:.3f} | `transition_moments` (by blocks) |")
    print(f"| rollout with moments of the concatenated points instead "
          f"| {concat_rollout_time:.3f} | `moments_from_points` |")
    print(f"| full-batch value-and-grad, 20 samples × 50k examples, one step "
          f"| {full_grad_time:.4f} | ×400 = {400 * float(full_grad_time):.0f} s for an exact g* |")
    print(f"| C-step (fit + cost + η search, 4 groups, float64), groups vmapped | {cstep_time:.3f} "
          f"| {iterations} η tries (max over groups) |")
    print(f"| C-step, groups one after another (`sequential=True`) | {sequential_time:.3f} "
          f"| tries {result.iterations} |")
    print(f"| of which dynamics fit | {fit_time:.3f} | |")
    print(f"| **C-step / rollout** (vmapped; sequential) | **{cstep_time / rollout_time:.3f}; "
          f"{sequential_time / rollout_time:.3f}** | medians; fastest: "
          f"{cstep_time.best / rollout_time.best:.3f}; "
          f"{sequential_time.best / rollout_time.best:.3f} |")
    print("\n| C-step FLOPs | analytic | XLA cost_analysis |")
    print("|---|---:|---:|")
    print(f"| dynamics fit | {fit_an / 1e9:.2f} G | {fit_flops / 1e9:.2f} G |")
    print(f"| one η try (backward + forward + KL) | {try_an / 1e9:.2f} G | (scan bodies: n/a) |")
    print(f"| whole C-step ({iterations} tries) | {total_an / 1e9:.1f} G | |")
    moment_flops = HORIZON * SAMPLES * sum(group_sizes) * POINT_DIM**2 * 2
    print(f"| (rollout moment accumulation, for scale) | {moment_flops / 1e9:.0f} G | |")
    if args.prior_study:
        prior_study(data, labels, sampling)


# ------------------------------------------------------------------------------------------------
# NIW prior pooled over time vs a GMM prior.

def gaussian_log_densities(points, means, covariances):
    """log N(points_i; means_k, covariances_k): ``(N, D), (K, D), (K, D, D) -> (N, K)``."""
    chol = jnp.linalg.cholesky(covariances)
    diff = points[None] - means[:, None]                                      # (K, N, D)
    white = jax.scipy.linalg.solve_triangular(chol, jnp.swapaxes(diff, 1, 2), lower=True)
    log_det = jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)
    dim = points.shape[-1]
    return (-0.5 * jnp.square(white).sum(1) - log_det[:, None]
            - 0.5 * dim * jnp.log(2 * jnp.pi)).T


def fit_gmm(points, clusters, iterations, key):
    """EM for a full-covariance GMM as in the reference (random hard init, 1e-6·I jitter)."""
    count, dim = points.shape
    eye = jnp.eye(dim)

    def m_step(responsibility):
        weight = responsibility.sum(0)                                       # (K,)
        safe = jnp.maximum(weight, 1e-12)
        means = responsibility.T @ points / safe[:, None]
        diff = points[None] - means[:, None]
        covariances = jnp.einsum("kn,kni,knj->kij", responsibility.T, diff, diff) / safe[:, None,
                                                                                         None]
        return jnp.log(safe / count), means, covariances + 1e-6 * eye

    def e_step(params):
        log_weights, means, covariances = params
        log_joint = gaussian_log_densities(points, means, covariances) + log_weights
        return jax.nn.softmax(log_joint, axis=1)

    initial = jax.nn.one_hot(jax.random.randint(key, (count,), 0, clusters), clusters)
    params = m_step(initial)
    params = jax.lax.fori_loop(0, iterations, lambda _, p: m_step(e_step(p)), params)
    return params, e_step(params)


def gmm_prior(gmm_points, step_points, clusters):
    """Per-step NIW prior moments from a GMM fitted to ``gmm_points`` (N, D): step t's prior is
    the mixture under the average responsibilities of its points ``step_points[t]``."""
    (log_weights, means, covariances), _ = fit_gmm(gmm_points, clusters, 30, jax.random.key(0))
    log_joint = jax.lax.map(
        lambda y: gaussian_log_densities(y, means, covariances), step_points) + log_weights
    mix = jax.nn.softmax(log_joint, -1).mean(1)                                  # (T, K)
    mean = mix @ means
    spread = means[None] - mean[:, None]                                         # (T, K, D)
    covariance = jnp.einsum("tk,kij->tij", mix, covariances) + jnp.einsum(
        "tk,tki,tkj->tij", mix, spread, spread)
    return mean, covariance


def prior_study(data, labels, sampling, strengths=(1.0, 10.0, 100.0, 1000.0), clusters=20,
                gmm_points=20_000, groups=((1, "b2", True), (0, "b1", True), (3, "w2", False))):
    """Held-out fit quality of the dynamics with no prior, the pooled-over-time NIW prior and
    the reference's GMM prior (K = 20, EM on ≤ 20k of the group's points, 30 iterations), on
    the real GPS states of the given (group index, name, with GMM) groups."""
    from metaopt.gps import NormalInverseWishartPrior, pooled_time_prior
    train_samples = SAMPLES // 2
    print("\n### Dynamics prior study (train on 10 samples, test on the other 10)\n")
    print("| group (coords) | prior | strength | held-out NLL / point | normalised MSE "
          "| prior time (s) |")
    print("|---|---|---:|---:|---:|---:|")
    for group, name, with_gmm in groups:
        points = np.asarray(make_rollout(data, labels, sampling, output=group)(
            jax.random.key(1))[0], np.float64)                               # (T, S, n, D)
        horizon, coords = points.shape[0], int(np.prod(points.shape[2:-1]))
        train = points[:, :train_samples].reshape(horizon, -1, POINT_DIM)
        test = points[:, train_samples:].reshape(horizon, -1, POINT_DIM)
        with float64():
            moments = moments_from_points(jnp.asarray(train))
            priors = {}
            pooled_prior = jax.jit(pooled_time_prior)
            pooled_time = timed(pooled_prior, moments, repeats=1)
            pooled = pooled_prior(moments)
            priors[("none", 0.0)] = (pooled.mean[None], pooled.covariance[None], 0.0, 0.0)
            for strength in strengths:
                priors[("pooled NIW", strength)] = (pooled.mean[None], pooled.covariance[None],
                                                    strength, pooled_time)
            if with_gmm:
                flat = train.reshape(-1, POINT_DIM)
                subset = np.random.default_rng(0).choice(len(flat), min(gmm_points, len(flat)),
                                                         False)
                gmm = jax.jit(gmm_prior, static_argnums=(2,)).lower(
                    jnp.asarray(flat[subset]), jnp.asarray(train), clusters).compile()
                start = time.perf_counter()
                gmm_mean, gmm_cov = jax.block_until_ready(
                    gmm(jnp.asarray(flat[subset]), jnp.asarray(train)))
                gmm_time = time.perf_counter() - start
                for strength in strengths:
                    priors[("GMM", strength)] = (gmm_mean, gmm_cov, strength, gmm_time)
            for (kind, strength), (mean, cov, n0, seconds) in priors.items():
                dynamics = jax.device_get(fit_dynamics(
                    moments, STATE_DIM, prior=NormalInverseWishartPrior(mean, cov, n0)))
                nll, mse = held_out_scores(dynamics, test)
                print(f"| {name} ({coords}) | {kind} | {strength:g} | {nll:.2f} | {mse:.4f} "
                      f"| {seconds:.2f} |")


def held_out_scores(dynamics, test):
    """Mean NLL of s_{t+1} | s_t, a_t (noise floored at 1e-6·I) and the MSE normalised by the
    target's variance (dimensions that vary), over t < T − 1 and the test points."""
    nll, mse = [], []
    inputs = STATE_DIM + ACTION_DIM
    for t in range(test.shape[0] - 1):
        z, target = test[t, :, :inputs], test[t, :, inputs:]
        transition = np.concatenate([dynamics.state_matrix[t], dynamics.action_matrix[t]], 1)
        residual = target - z @ transition.T - dynamics.offset[t]
        noise = dynamics.covariance[t] + 1e-6 * np.eye(STATE_DIM)
        chol = np.linalg.cholesky(noise)
        white = np.linalg.solve(chol, residual.T)
        nll.append(0.5 * np.square(white).sum(0).mean() + np.log(np.diag(chol)).sum()
                   + 0.5 * STATE_DIM * np.log(2 * np.pi))
        variance = target.var(0)
        varies = variance > 1e-12
        mse.append(np.mean(np.square(residual).mean(0)[varies] / variance[varies]))
    return float(np.mean(nll)), float(np.mean(mse))


if __name__ == "__main__":
    main()
