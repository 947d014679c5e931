"""Meta-train the L2L baseline (Andrychowicz et al. 2016) on the paper's objective (thin main).

  .venv/bin/python experiments/train_l2l.py --budget-minutes 30          # the shipped run
  .venv/bin/python experiments/train_l2l.py --tiny --out /tmp/l2l-tiny   # ~1 min, synthetic data

Trains on the 48-48-10 ReLU MLP on MNIST projected to 48 dims (minibatch 64, ℓ2 5e-4, T = 400,
f measured on a 5,000-example subset during training), keeps the θ with the best mean final f on
the tuning seeds 0-4, then evaluates it against tuned Adam (lr from results/baselines/summary.csv)
on the held-out seeds 100-104 with f on the whole training split, as results/baselines did.

Writes ``<out>/training_log.json``, ``<out>/training_loss.png`` and the selected weights to
``--asset`` (``metaopt/assets/l2l.metaopt``; not with ``--tiny`` unless ``--asset`` is given).
"""

import argparse
import csv
import dataclasses
import json
import time
from pathlib import Path

import jax
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from metaopt.evaluation.tuning import run_grid, seed_keys  # noqa: E402
from metaopt.evaluation.unroll import eval_steps  # noqa: E402
from metaopt.optimizers.baselines import BASELINES  # noqa: E402
from metaopt.optimizers.l2l import init_l2l  # noqa: E402
from metaopt.serialization import save_l2l  # noqa: E402
from metaopt.tasks import make_mlp_task, synthetic_classification  # noqa: E402
from metaopt.training.config import TrainConfig, make_dataset_task  # noqa: E402
from metaopt.training.l2l_training import (  # noqa: E402
    L2LTrainConfig,
    init_optimizees,
    make_evaluator,
    make_meta_step,
    train_l2l,
)

HELD_OUT_SEEDS = (100, 101, 102, 103, 104)


def tasks(tiny: bool):
    """(training/selection task, evaluation task)."""
    if tiny:
        x, y = synthetic_classification(jax.random.key(0), 128, 6, 3)
        task = make_mlp_task(x, y, widths=(6, 8, 3), batch_size=16)
        return task, task
    config = TrainConfig.paper()
    return make_dataset_task(config, eval_subset=5000), make_dataset_task(config, eval_subset=None)


def time_truncation(task, config: L2LTrainConfig, repeats: int = 5) -> float:
    """Seconds per meta-update (one truncation, ``config.batch_size`` optimizees), compiled."""
    theta = init_l2l(jax.random.key(0))
    meta_tx = optax.adam(config.learning_rate)
    meta_step = make_meta_step(meta_tx, config.truncation)
    states = jax.jit(init_optimizees)(theta, task, jax.random.split(jax.random.key(1),
                                                                    config.batch_size))
    meta_state = meta_tx.init(theta)
    out = meta_step(theta, meta_state, task, states)
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(repeats):
        out = meta_step(out[0], out[1], task, out[2])
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def adam_learning_rate(summary_csv: Path) -> float:
    with open(summary_csv) as f:
        row = next(r for r in csv.DictReader(f) if r["optimizer"] == "adam")
    return float(json.loads(row["hyperparams"])["learning_rate"])


def plot(log, selection, curves, steps, path: Path) -> None:
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.5))
    losses = np.array([e["mean_minibatch_loss"] for e in log])
    x = np.arange(1, len(losses) + 1)
    ax0.plot(x, losses, lw=0.6, alpha=0.4, label="per trajectory")
    window = max(1, len(losses) // 30)
    if len(losses) >= window:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax0.plot(x[window - 1:], smooth, lw=1.5, label=f"running mean ({window})")
    ax0.plot([s["trajectory"] for s in selection], [s["score"] for s in selection], "o-", ms=3,
             label="final f, tuning seeds 0-4 (selection)")
    ax0.set(xlabel="trajectory", ylabel="mean minibatch loss over T = 400",
            title="L2L meta-training", yscale="log")
    ax0.legend(fontsize=8)
    for name, c in curves.items():
        if "untrained" in name:  # diverges to f > 100: it would hide the others (see the json)
            continue
        mean, std = c.mean(0), c.std(0)
        ax1.plot(steps, mean, label=name)
        ax1.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax1.set(xlabel="iteration", ylabel="true objective f", yscale="log",
            title=f"held-out seeds {HELD_OUT_SEEDS[0]}-{HELD_OUT_SEEDS[-1]} (mean ± std)")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trajectories", type=int, default=None,
                        help="optimizee trajectories; default: what --budget-minutes allows")
    parser.add_argument("--budget-minutes", type=float, default=30.0)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--select-every", type=int, default=25)
    parser.add_argument("--out", default="results/l2l")
    parser.add_argument("--asset", default=None,
                        help="where the selected weights go (default metaopt/assets/l2l.metaopt, "
                             "none with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="smoke run on synthetic data, about a minute")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    train_task, eval_task = tasks(args.tiny)
    horizon, truncation = (40, 10) if args.tiny else (400, 20)
    config = L2LTrainConfig(horizon=horizon, truncation=truncation, batch_size=args.batch_size,
                            learning_rate=args.learning_rate,
                            select_every=2 if args.tiny else args.select_every)
    seconds_per_truncation = time_truncation(train_task, config)
    per_trajectory = seconds_per_truncation * horizon // truncation
    if args.trajectories is not None:
        trajectories, why = args.trajectories, "--trajectories"
    elif args.tiny:
        trajectories, why = 6, "--tiny"
    else:
        # 85 % of the budget for meta-updates; the rest for selection runs and compilation.
        trajectories = max(1, int(0.85 * args.budget_minutes * 60 / per_trajectory))
        why = (f"{args.budget_minutes} min budget x 0.85 / {per_trajectory:.2f} s per trajectory "
               f"({seconds_per_truncation:.3f} s per truncation measured before training, "
               f"{horizon // truncation} truncations)")
    config = dataclasses.replace(config, trajectories=trajectories,
                                 max_seconds=args.budget_minutes * 60 * 1.15)
    print(f"{seconds_per_truncation:.3f} s per truncation; {trajectories} trajectories ({why})")

    asset = args.asset or (None if args.tiny else "metaopt/assets/l2l.metaopt")

    def save_best(theta, entry):  # so that an interrupted run still leaves its best weights
        if asset:
            save_l2l(asset, theta, metadata={"selected_at_trajectory": entry["trajectory"],
                                             "selection_score_tuning_seeds": entry["score"],
                                             "note": "saved during training"})

    result = train_l2l(train_task, config, select_task=train_task, on_new_best=save_best)
    theta = result["best_theta"]

    steps = eval_steps(horizon, 10)
    keys = seed_keys(HELD_OUT_SEEDS)
    evaluate = make_evaluator(horizon)
    curves = {
        "l2l (selected)": np.asarray(evaluate(theta, eval_task, keys)),
        "l2l (last)": np.asarray(evaluate(result["theta"], eval_task, keys)),
        "l2l (untrained)": np.asarray(evaluate(init_l2l(jax.random.key(10_000)), eval_task,
                                               keys)),
    }
    adam_lr = adam_learning_rate(Path("results/baselines/summary.csv"))
    curves[f"adam (lr {adam_lr})"] = run_grid(BASELINES["adam"].factory,
                                              [{"learning_rate": adam_lr}], eval_task,
                                              HELD_OUT_SEEDS, num_steps=horizon)[0]
    evaluation = {
        name: {"final_mean": float(c[:, -1].mean()), "final_std": float(c[:, -1].std()),
               "auc_mean": float(c.sum(1).mean()), "final_per_seed": c[:, -1].tolist(),
               "diverged_seeds": int(np.sum(~np.isfinite(c[:, -1])))}
        for name, c in curves.items()
    }
    for name, e in evaluation.items():
        print(f"{name:20s} final f {e['final_mean']:.4f} ± {e['final_std']:.4f}")

    metadata = {
        "trained_on": "48-48-10 relu MLP, mnist projected to 48, minibatch 64, l2 5e-4, T=400"
                      if not args.tiny else "tiny synthetic 6-8-3",
        "trajectories": len(result["log"]),
        "selected_at_trajectory": result["best_trajectory"],
        "selection_score_tuning_seeds": result["best_score"],
        "held_out_final_mean": evaluation["l2l (selected)"]["final_mean"],
    }
    if asset:
        save_l2l(asset, theta, metadata=metadata)
    plot(result["log"], result["selection"], curves, steps, out / "training_loss.png")
    summary = {
        "method": "Andrychowicz et al. 2016 coordinatewise 2x20 LSTM, log/sign preprocessing "
                  "p=10, output scale 0.1; truncated BPTT, meta-loss = sum of minibatch losses "
                  "over the truncation, second derivatives dropped, Adam on theta",
        "config": dataclasses.asdict(config),
        "trajectories_choice": why,
        "seconds_per_truncation_measured_before": seconds_per_truncation,
        "seconds_per_truncation_during_training": result["seconds_per_truncation"],
        "meta_training_wall_s": round(result["wall_time_s"], 1),
        "total_wall_s": round(time.perf_counter() - start, 1),
        "selection": {"seeds": list(config.select_seeds), "true_objective_on":
                      train_task.eval_description, "best_trajectory": result["best_trajectory"],
                      "best_score": result["best_score"], "history": result["selection"]},
        "evaluation": {"seeds": list(HELD_OUT_SEEDS), "num_steps": horizon,
                       "true_objective_on": eval_task.eval_description, "results": evaluation,
                       "eval_steps": steps,
                       "curves": {k: c.tolist() for k, c in curves.items()}},
        "asset": asset,
        "machine": f"{jax.devices()[0].platform}, {jax.device_count()} device(s)",
        "log": result["log"],
    }
    with open(out / "training_log.json", "w") as f:
        json.dump(summary, f, indent=1, default=str)
    print(f"wrote {out}/training_log.json, {out}/training_loss.png" + (f", {asset}" if asset else ""))


if __name__ == "__main__":
    main()
