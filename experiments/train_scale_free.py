"""Meta-train the scale-free MLP policy by truncated BPTT on the paper's task (thin main).

  .venv/bin/python experiments/train_scale_free.py --budget-minutes 25   # results/scale-free-bptt
  .venv/bin/python experiments/train_scale_free.py --tiny --out /tmp/sf  # ~1 min, synthetic data

This measures the ceiling of the policy's function class on its training task by optimising it
directly (by default the exact gradient of Σ_t f̂ through the whole 400-step unroll, second
derivatives included; ``--truncation 20 --first-order`` is L2L's protocol;
``metaopt.training.l2l_training`` with ``optimizer=learned_opt``), before GPS is asked to find it.
First the untrained policy's relative step is tuned on the tuning seeds
0-4; meta-training starts from the best; the θ with the lowest mean final f on seeds 0-4 is kept.
Then ``metaopt eval --policy <out>/policy.metaopt`` compares it with the tuned baselines on the
held-out seeds 100-104.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from metaopt.evaluation.tuning import seed_keys
from metaopt.learned_optimizer import learned_opt
from metaopt.mlp_policy import init_mlp_policy
from metaopt.policy import init_policy
from metaopt.serialization import save
from metaopt.tasks import make_mlp_task, synthetic_classification
from metaopt.training.config import TrainConfig, make_dataset_task
from metaopt.training.l2l_training import L2LTrainConfig, make_evaluator, train_l2l

INIT_STEP_SIZES = (0.01, 0.02, 0.05, 0.1, 0.2)      # relative to the parameter scale
LSTM_INIT_STEP_SIZES = (0.1, 0.3, 1.0)              # the paper LSTM's untrained step: −s·ψ2 ≈ −s·ĝ


def plot_log(summary: dict, path: Path) -> None:
    """Meta-loss per trajectory and the selection score (mean final f, tuning seeds 0-4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    losses = np.array([e["mean_minibatch_loss"] for e in summary["log"]])
    window = max(1, len(losses) // 30)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    ax.plot(np.arange(window, len(losses) + 1), smooth, label=f"meta-loss: mean f̂ over the run "
            f"(running mean of {window})")
    ax.plot([e["trajectory"] for e in summary["selection"]],
            [e["score"] for e in summary["selection"]], "o-", ms=2,
            label="final f, tuning seeds 0-4 (selection)")
    ax.set(xlabel="meta-update (one 400-step run each)", ylabel="objective",
           title=f"{summary.get('policy', 'scale-free')} policy meta-trained by BPTT on "
                 "48-48-10 MNIST-48")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-minutes", type=float, default=25.0)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--hidden", default="32", help="hidden sizes, comma-separated")
    parser.add_argument("--policy", choices=("scale-free", "paper-lstm"), default="scale-free",
                        help="paper-lstm: the paper's 128-cell LSTM on Ψ (its class's ceiling, for "
                             "the GPS issue); --hidden is then ignored")
    parser.add_argument("--out", default="results/scale-free-bptt")
    parser.add_argument("--truncation", type=int, default=400,
                        help="BPTT length (400: the whole horizon, one meta-update per run)")
    parser.add_argument("--first-order", action="store_true",
                        help="drop the second derivatives (as L2L); default: exact meta-gradient")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.tiny:
        x, y = synthetic_classification(jax.random.key(0), 128, 6, 3)
        task = make_mlp_task(x, y, widths=(6, 8, 3), batch_size=16)
        horizon, truncation, select_every = 40, 10, 2
    else:
        task = make_dataset_task(TrainConfig.paper(), eval_subset=5000)
        horizon, truncation, select_every = 400, args.truncation, 10
    hidden = tuple(int(h) for h in args.hidden.split(","))

    if args.policy == "paper-lstm":
        sizes = LSTM_INIT_STEP_SIZES
        make_theta = lambda key, size: init_policy(key, init_step_size=size)
    else:
        sizes = INIT_STEP_SIZES
        make_theta = lambda key, size: init_mlp_policy(key, hidden_sizes=hidden, init_step_size=size)
    evaluate = make_evaluator(horizon, 10, learned_opt)
    keys = seed_keys((0, 1, 2, 3, 4))
    init_scores = {}
    for size in sizes:
        curves = np.asarray(evaluate(make_theta(jax.random.key(0), size), task, keys))
        init_scores[size] = float(curves[:, -1].mean()) if np.all(np.isfinite(curves)) else np.inf
        print(f"untrained, init step size {size}: final f {init_scores[size]:.4f}")
    best_size = min(init_scores, key=init_scores.get)

    config = L2LTrainConfig(horizon=horizon, truncation=truncation, batch_size=args.batch_size,
                            trajectories=10_000, learning_rate=args.learning_rate,
                            select_every=select_every, second_order=not args.first_order,
                            max_seconds=(1.0 if args.tiny else args.budget_minutes) * 60)

    def save_best(theta, entry):
        save(out / "policy.metaopt", theta, metadata={"selected_at_trajectory": entry["trajectory"],
                                                      "selection_score_tuning_seeds": entry["score"],
                                                      "trained_by": "truncated BPTT"})

    result = train_l2l(
        task, config, optimizer=learned_opt, description=f"{args.policy} by BPTT",
        init_theta=lambda k: make_theta(k, best_size),
        on_new_best=save_best)
    save(out / "policy.metaopt", result["best_theta"], metadata={
        "selected_at_trajectory": result["best_trajectory"],
        "selection_score_tuning_seeds": result["best_score"], "trained_by": "truncated BPTT",
        "task": "paper 48-48-10 MNIST-48" if not args.tiny else "tiny synthetic",
        "init_step_size": best_size, "policy": args.policy,
        "hidden_sizes": list(hidden) if args.policy == "scale-free" else [128]})
    summary = {"config": dataclasses.asdict(config), "policy": args.policy,
               "hidden_sizes": list(hidden) if args.policy == "scale-free" else [128],
               "init_step_size_scores": {str(k): v for k, v in init_scores.items()},
               "init_step_size": best_size, "best_score_tuning_seeds": result["best_score"],
               "best_trajectory": result["best_trajectory"], "selection": result["selection"],
               "seconds_per_truncation": result["seconds_per_truncation"],
               "wall_time_s": round(time.perf_counter() - start, 1),
               "machine": f"{jax.devices()[0].platform}, {jax.device_count()} device(s)",
               "log": result["log"]}
    (out / "training_log.json").write_text(json.dumps(summary, indent=1, default=str))
    plot_log(summary, out / "training_log.png")
    print(f"best final f on tuning seeds {result['best_score']:.4f} (trajectory "
          f"{result['best_trajectory']}); wrote {out}/policy.metaopt, {out}/training_log.json")


if __name__ == "__main__":
    main()
