"""Meta-train the scale-free MLP policy by GPS on the paper's task (thin main; issues 15 and 16).

  .venv/bin/python experiments/train_scale_free_gps.py                 # results/scale-free-gps
  .venv/bin/python experiments/train_scale_free_gps.py --tiny --out /tmp/sfg   # ~1 min
  .venv/bin/python experiments/train_scale_free_gps.py --resume        # continue a killed run

GPS as in ``metaopt.training.scale_free_gps``: controllers on the policy's own scale-free
features, the pathwise C-step judged on fresh samples, an S-step by regression. First the
controllers' relative momentum step is tuned on the tuning seeds 0-4 (the hand-designed start);
the π with the lowest final f on those seeds is written to ``<out>/policy.metaopt``; then
``metaopt eval --policy <out>/policy.metaopt`` compares it with the tuned baselines on the
held-out seeds 100-104.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from metaopt.configs import parse_overrides
from metaopt.evaluation.tuning import seed_keys
from metaopt.scale_free_controller import relative_momentum_controller, scale_free_controller
from metaopt.serialization import save
from metaopt.tasks import make_mlp_task, synthetic_classification
from metaopt.training import scale_free_gps
from metaopt.training.config import TrainConfig, make_dataset_task
from metaopt.training.l2l_training import make_evaluator

STEP_SIZES = (0.02, 0.03, 0.05, 0.1)     # the relative momentum's step, relative to σ


def tune_step_size(task, horizon, groups, seeds=(0, 1, 2, 3, 4)):
    """The relative momentum's step with the lowest mean final f on ``seeds`` (and all scores)."""
    evaluate = make_evaluator(horizon, 10, scale_free_controller)
    scores = {}
    for size in STEP_SIZES:
        ctrl = relative_momentum_controller(step_size=size, horizon=horizon, num_groups=groups)
        curves = np.asarray(evaluate(ctrl, task, seed_keys(seeds)))
        scores[size] = float(curves[:, -1].mean()) if np.all(np.isfinite(curves)) else np.inf
        print(f"relative momentum, step {size}: final f {scores[size]:.4f}")
    return min(scores, key=scores.get), scores


def plot_log(log, path: Path, title: str) -> None:
    """Controllers' J, π's J on the same minibatches, π on the tuning seeds; realised vs predicted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [e["iteration"] for e in log]
    get = lambda k: [e.get(k, np.nan) for e in log]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax.plot(it, get("controller_objective"), "o-", label="controllers' samples: J = mean_t f")
    ax.plot(it, get("policy_objective"), "s-", label="π on the same minibatches: J")
    ax.plot(it, get("policy_tuning_final"), "^-", label="π final f, tuning seeds 0-4 (selection)")
    ax.set(xlabel="GPS iteration", ylabel="objective", title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    bx.plot(it, get("predicted_improvement"), "o-", label="predicted fall of J (own samples)")
    bx.plot(it, get("realized_improvement"), "s-", label="realised on fresh samples (CRN)")
    for e in log:
        if e.get("rolled_back"):
            bx.axvline(e["iteration"], color="r", alpha=0.3)
    bx.axhline(0, color="k", lw=0.5)
    bx.set(xlabel="GPS iteration (red: rolled back)", ylabel="fall of J",
           title="each C-step judged on the next iteration's samples")
    bx.grid(True, alpha=0.3)
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/scale-free-gps")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--budget-minutes", type=float, default=25.0,
                        help="stop starting new iterations after this long")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="6-8-3 net on synthetic data, T = 20")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a ScaleFreeGPSConfig field (repeatable)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.tiny:
        x, y = synthetic_classification(jax.random.key(0), 128, 6, 3)
        task = make_mlp_task(x, y, widths=(6, 8, 3), batch_size=16)
        base = dict(horizon=20, num_samples=4, num_tracked=8, s_step_iterations=50,
                    s_step_batch_size=64)
    else:
        task = make_dataset_task(TrainConfig.paper(), eval_subset=5000)
        base = {}
    overrides = {}
    try:
        overrides |= parse_overrides(args.set, scale_free_gps.ScaleFreeGPSConfig)
    except ValueError as err:
        parser.error(str(err))
    groups = len(jax.tree.leaves(task.init_params(jax.random.key(0))))
    horizon = base.get("horizon", 400)
    if "init_step_size" in overrides:
        step, scores = overrides["init_step_size"], {}
    else:
        step, scores = tune_step_size(task, horizon, groups)
    config = scale_free_gps.ScaleFreeGPSConfig(
        **(base | {"iterations": args.iterations, "init_step_size": step} | overrides))

    def report(state, entry, seconds):
        print(f"iteration {entry['iteration']}: {seconds:.0f} s, controllers J "
              f"{entry['controller_objective']:.4f}, realised {entry.get('realized_improvement')}"
              f" / predicted {entry.get('predicted_improvement')}, π J "
              f"{entry.get('policy_objective', float('nan')):.4f}, π tuning final "
              f"{entry.get('policy_tuning_final', float('nan')):.4f}, rolled back: "
              f"{entry['rolled_back']}", flush=True)

    state, log = scale_free_gps.train(config, task, out / "checkpoints", resume=args.resume,
                                      callback=report, max_seconds=args.budget_minutes * 60)
    chosen = int(np.nanargmin([e.get("policy_tuning_final", np.inf) for e in log])) if log else 0
    metadata = {"trained_by": "scale-free GPS (metaopt.training.scale_free_gps)",
                "task": "tiny synthetic" if args.tiny else "paper 48-48-10 MNIST-48",
                "selected_at_iteration": chosen,
                "selection_score_tuning_seeds": float(state.best_score),
                "init_step_size": step, "hidden_sizes": list(config.hidden_sizes)}
    save(out / "policy.metaopt", state.best_theta, metadata=metadata)
    summary = {"config": dataclasses.asdict(config), "step_size_scores": {
        str(k): v for k, v in scores.items()}, "chosen_iteration": chosen,
        "best_score_tuning_seeds": float(state.best_score),
        "wall_time_s": round(time.perf_counter() - start, 1),
        "machine": f"{jax.devices()[0].platform}, {jax.device_count()} device(s)", "log": log}
    (out / "training_log.json").write_text(json.dumps(summary, indent=1, default=float))
    plot_log(log, out / "training_log.png", "scale-free GPS on " + metadata["task"])
    print(f"best π final f on tuning seeds {float(state.best_score):.4f} (iteration {chosen}); "
          f"wrote {out}/policy.metaopt, {out}/training_log.json, {out}/training_log.png")


if __name__ == "__main__":
    main()
