"""Held-out quality of every GPS iteration's policy of a `metaopt train` run (diagnostic).

Runs each ``<run>/policies/iter_NNN.metaopt`` through ``learned_opt`` on the run's held-out
seeds (true objective on the whole training split, as the run's own evaluation), and plots the
final objective per iteration against the tuned baselines of ``<run>/results.json``. Selecting
the shipped policy on these numbers would be selecting on test seeds: the run ships its last
iteration; this script only shows the trajectory of meta-training.

  .venv/bin/python experiments/policy_by_iteration.py results/train
"""

import argparse
import json
from pathlib import Path

from metaopt.evaluation.report import summarize
from metaopt.evaluation.tuning import run_grid
from metaopt.evaluation.unroll import eval_steps
from metaopt.learned_optimizer import learned_opt
from metaopt.serialization import load
from metaopt.training import job


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="output directory of `metaopt train`")
    parser.add_argument("--config", default="paper", help="the run's train config name")
    args = parser.parse_args()
    run = Path(args.run)
    train_job = job.get_train_config(args.config)
    config = train_job.train
    task = job.evaluation_task(config)
    rows = {}
    for path in sorted((run / "policies").glob("iter_*.metaopt")):
        theta = load(path)
        curves = run_grid(lambda theta=theta: learned_opt(theta), [{}], task,
                          train_job.eval_seeds, num_steps=config.horizon,
                          eval_every=train_job.eval_every)[0]
        rows[path.name] = summarize(curves, eval_steps(config.horizon, train_job.eval_every))
        print(path.name, rows[path.name], flush=True)
    baselines = {}
    results = run / "results.json"
    if results.exists():
        doc = json.loads(results.read_text())
        baselines = {name: row["final_mean"] for name, row in doc["optimizers"].items()
                     if name != job.LEARNED and "final_mean" in row}
    out = {"note": "diagnostic only: held-out seeds, true objective on the whole split; the "
                   "shipped policy is the final iteration's, not selected on these seeds",
           "eval_seeds": list(train_job.eval_seeds), "policies": rows,
           "baselines_final_mean": baselines,
           "command": f"python experiments/policy_by_iteration.py {args.run} --config {args.config}"}
    (run / "heldout_per_iteration.json").write_text(json.dumps(out, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    iterations = [int(name[5:8]) for name in rows]
    ax.errorbar(iterations, [r["final_mean"] for r in rows.values()],
                [r["final_std"] for r in rows.values()], fmt="o-", label="learned (GPS), π mean")
    for name, value in sorted(baselines.items(), key=lambda kv: kv[1])[:4]:
        ax.axhline(value, ls="--", lw=1, label=f"{name} (tuned)", color=None)
    ax.set_xlabel("GPS iteration")
    ax.set_ylabel(f"final true objective (t = {config.horizon})")
    ax.set_title("held-out seeds: policy after each GPS iteration")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run / "heldout_per_iteration.png", dpi=110)


if __name__ == "__main__":
    main()
