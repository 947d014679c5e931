"""The C-steps side by side on the same samples, judged on fresh ones (issue 15).

From the paper preset's initial controllers (tuned momentum), one rollout of N samples; each C-step
variant computes a new controller from those samples under the same KL budget ε = T·0.2 per group
and no policy coupling (π is not fit yet at iteration 0). Each is then judged by what actually
happens: J = mean over samples and t of f(x_t) on fresh samples, with common random numbers (the
old and the new controller see the same noise and minibatches), on several fresh key sets.

  .venv/bin/python experiments/c_step_comparison.py --out results/c-step-comparison
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from metaopt.evaluation.report import machine_description
from metaopt.gps import float64
from metaopt.training import gps_loop, pathwise
from metaopt.training.model import collective_response, fit_model, model_state_dim, to_model
from metaopt.training.rollout import rollout, select_tracked


def lqr_variant(config, data, controller, sizes, *, collective=False):
    dim = model_state_dim(config)
    with float64():
        dynamics, cost, _ = jax.device_get(fit_model(
            data, prior_strength=config.dynamics_prior_strength, ridge=config.dynamics_ridge,
            privileged_gradient=config.privileged_gradient))
    if collective:
        dynamics = collective_response(dynamics, data.curvature, to_model(controller, dim), dim)
    eta = np.full(len(sizes), config.initial_eta)
    multiplier = np.ones(len(sizes))
    result = gps_loop.run_c_step(config, cost, dynamics, controller, multiplier, eta, None, None)
    predicted = gps_loop.lqr_predicted_improvement(
        cost, dynamics, to_model(controller, dim), to_model(result.controller, dim), sizes)
    return result.controller, predicted, np.sum(result.kl, -1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/c-step-comparison")
    parser.add_argument("--fresh-sets", type=int, default=2)
    args = parser.parse_args()
    config = gps_loop.TrainConfig.paper()
    task = gps_loop.make_task(config)
    state = gps_loop.init_state(config, task)
    tracked = select_tracked(jax.random.key(config.seed + 4),
                             task.init_params(jax.random.key(0)), config.num_tracked)
    init_key = jax.random.split(gps_loop.condition_key(config))[0]
    sample_key = jax.random.key(config.seed + 1000)
    data = jax.device_get(rollout(task, state.controller, init_key, sample_key,
                                  jnp.asarray(tracked.index), num_samples=config.num_samples))
    sample_keys = jax.random.split(sample_key, config.num_samples)
    sizes = gps_loop.group_sizes(task)
    budget = np.full(len(sizes), config.horizon * config.kl_step)
    fresh = [jax.random.split(jax.random.key(5000 + i), config.num_samples)
             for i in range(args.fresh_sets)]
    objective = pathwise.sampled_objective_jit
    base = [float(objective(task, state.controller, init_key, k)) for k in fresh]

    variants = {}
    t0 = time.perf_counter()
    variants["lqr"] = (*lqr_variant(config, data, state.controller, sizes), time.perf_counter() - t0)
    t0 = time.perf_counter()
    variants["lqr + collective response"] = (
        *lqr_variant(config, data, state.controller, sizes, collective=True),
        time.perf_counter() - t0)
    for steps in (1, 3):
        t0 = time.perf_counter()
        result = pathwise.pathwise_c_step(
            task, state.controller, data.moments, init_key, sample_keys, sizes, budget,
            state_index=model_state_dim(config), num_steps=steps,
            step_cap=config.kl_step * config.kl_step_cap, ridge=config.pathwise_ridge)
        variants[f"pathwise, {steps} step(s)"] = (
            result.controller, result.predicted_improvement, np.sum(result.kl, -1),
            time.perf_counter() - t0)

    rows = {}
    for name, (controller, predicted, kl, seconds) in variants.items():
        after = [float(objective(task, controller, init_key, k)) for k in fresh]
        realized = [b - a for b, a in zip(base, after, strict=True)]
        rows[name] = {"predicted_improvement": predicted, "realized_improvement": realized,
                      "realized_mean": float(np.mean(realized)), "kl_per_group": kl.tolist(),
                      "seconds": round(seconds, 1)}
        print(f"{name:28s} predicted {predicted:+.5f}  realised {np.mean(realized):+.5f} "
              f"({', '.join(f'{r:+.5f}' for r in realized)})  KL {np.round(kl, 1)}  {seconds:.0f} s",
              flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"what": __doc__, "config": dataclasses.asdict(config), "machine": machine_description(),
           "controllers_objective_on_fresh": base, "variants": rows}
    (out / "comparison.json").write_text(json.dumps(doc, indent=1, default=str))


if __name__ == "__main__":
    main()
