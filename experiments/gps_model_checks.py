"""Checks of the GPS model against reality on the paper task (what `results/` reports for issue 5).

1. Tied cost vs realised change: for tuned momentum at lr 0.15 / 0.3 / 0.6 (μ 0.5, no
   exploration noise), Σ_t w_t·Δf_t of the samples against the tied cost Σ_t w_t Σ_j (g*_j a_j
   + ½ h a_j²) with the per-group Rayleigh curvature, and the scale κ that makes them agree
   (``metaopt.training.curvature.calibrate_to_realized_change``).
2. What g* is worth: momentum (lr 0.3, μ 0.5) on the minibatch gradient ĝ vs on the true
   gradient g* — the information a controller with g* in its state can use and the policy cannot.

  .venv/bin/python experiments/gps_model_checks.py --out results/gps-model-checks
"""

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from metaopt import features
from metaopt.controller import momentum_controller
from metaopt.evaluation.report import machine_description
from metaopt.training import gps_loop
from metaopt.training.rollout import rollout, select_tracked


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/gps-model-checks")
    parser.add_argument("--samples", type=int, default=2)
    args = parser.parse_args()
    config = gps_loop.TrainConfig.paper()
    task = gps_loop.make_task(config)
    groups = len(jax.tree.leaves(task.init_params(jax.random.key(0))))
    tracked = select_tracked(jax.random.key(config.seed + 4), task.init_params(jax.random.key(0)),
                             config.num_tracked)
    init_key = jax.random.split(gps_loop.condition_key(config))[0]
    horizon = config.horizon
    weights = (horizon - np.arange(horizon)).astype(np.float64)
    g_star, action = features.GPS_STATE_DIM - 1, features.GPS_STATE_DIM

    def run(controller):
        return jax.device_get(rollout(task, controller, init_key, jax.random.key(5),
                                      jnp.asarray(tracked.index), num_samples=args.samples))

    report = {"machine": machine_description(), "samples": args.samples, "cost_vs_realised": {}}
    for lr in (0.15, 0.3, 0.6):
        data = run(momentum_controller(learning_rate=lr, momentum=0.5, horizon=horizon,
                                       variance=1e-30, num_groups=groups))
        f = np.asarray(data.true_objective, np.float64)
        second = np.asarray(data.moments.second, np.float64)
        linear = (weights * second[..., g_star, action]).sum() / args.samples
        quadratic = (weights * 0.5 * np.asarray(data.curvature, np.float64)
                     * second[..., action, action]).sum() / args.samples
        realised = float((weights * (f[:, 1:] - f[:, :-1])).sum(1).mean())
        report["cost_vs_realised"][f"lr {lr}"] = {
            "realised_weighted_change": realised, "tied_cost": linear + quadratic,
            "linear_part": linear, "quadratic_part": quadratic,
            "kappa_pooled": (realised - linear) / quadratic, "mean_f": float(f.mean()),
            "final_f": float(f[:, -1].mean())}
        print(f"lr {lr}:", report["cost_vs_realised"][f"lr {lr}"], flush=True)
    base = momentum_controller(learning_rate=0.3, momentum=0.5, horizon=horizon, variance=1e-30,
                               num_groups=groups)
    gain = np.array(base.gain)
    gain[..., g_star] = gain[..., features.GRADIENT_INDEX]
    gain[..., features.GRADIENT_INDEX] = 0.0
    for name, controller in (("momentum on minibatch gradient", base),
                             ("momentum on true gradient g*", base._replace(gain=gain))):
        f = np.asarray(run(controller).true_objective)
        report[name] = {"mean_f": float(f.mean()), "final_f": float(f[:, -1].mean())}
        print(name, report[name], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "checks.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
