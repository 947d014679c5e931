"""Meta-train the scale-free policy by GPS over a family of training conditions (issue 17).

  .venv/bin/python experiments/train_scale_free_family.py --family mnist-wide \
      --out results/scale-free-family-wide                               # make train-family
  .venv/bin/python experiments/train_scale_free_family.py --resume      # continue a killed run
  .venv/bin/python experiments/train_scale_free_family.py --init-policy none   # cold start

The family is ``metaopt.training.families.FAMILIES[--family]`` (MNIST only: the test datasets
are never trained on). By default GPS fine-tunes the shipped single-task policy
(``metaopt/assets/scale_free.metaopt``): each condition's controllers start as that π's
linearisation on the condition, so the family's effect is measured against the same start.
``--init-policy none`` starts from relative momentum at each member's ``init_step_size``. The π
with the lowest geometric mean of final f over the conditions' tuning seeds 0-4 is written to
``<out>/policy.metaopt``; ``experiments/generalization_suite.py`` compares it on held-out tasks.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from metaopt.configs import parse_overrides
from metaopt.evaluation.report import git_commit, machine_description
from metaopt.mlp_policy import mlp_policy_sizes
from metaopt.serialization import load, save
from metaopt.training import scale_free_family
from metaopt.training.families import FAMILIES, family_conditions
from metaopt.training.scale_free_gps import ScaleFreeGPSConfig

SHIPPED = "metaopt/assets/scale_free.metaopt"


def plot_log(log, names, path: Path, title: str) -> None:
    """Per condition: controllers' J and π's final f on the tuning seeds; the selection score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [e["iteration"] for e in log]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.4))
    for c, name in enumerate(names):
        get = lambda k, c=c: [e["conditions"][c].get(k, np.nan) for e in log]
        line, = ax.plot(it, get("controller_objective"), "o-", ms=3, label=f"{name}: ψ's J")
        ax.plot(it, get("policy_objective"), "--", color=line.get_color(), lw=1)
        bx.plot(it, get("policy_tuning_final"), "o-", ms=3, color=line.get_color(), label=name)
    bx.plot(it, [e["policy_tuning_score"] for e in log], "k^-", label="geometric mean (selection)")
    ax.set(xlabel="GPS iteration", ylabel="J = mean_t f (dashed: π on the same minibatches)",
           title=title)
    bx.set(xlabel="GPS iteration", ylabel="π's final f, tuning seeds 0-4")
    for a in (ax, bx):
        a.grid(True, alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="mnist-wide", choices=sorted(FAMILIES))
    parser.add_argument("--out", default="results/scale-free-family-wide")
    parser.add_argument("--init-policy", default=SHIPPED,
                        help="a .metaopt policy to fine-tune, or 'none' for a cold start")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--budget-minutes", type=float, default=35.0,
                        help="stop starting new iterations after this long")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a ScaleFreeGPSConfig field (repeatable)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    overrides = {"num_samples": 6}
    try:
        overrides |= parse_overrides(args.set, ScaleFreeGPSConfig)
    except ValueError as err:
        parser.error(str(err))
    init_theta = None if args.init_policy == "none" else load(args.init_policy)
    if init_theta is not None:
        overrides.setdefault("hidden_sizes", mlp_policy_sizes(init_theta))
    config = ScaleFreeGPSConfig(**({"iterations": args.iterations} | overrides))
    conditions = family_conditions(args.family)
    names = [c.name for c in conditions]

    def report(state, entry, seconds):
        parts = [f"{c['name'].split(',')[0]}..: ψ {c['controller_objective']:.4f} "
                 f"real {c.get('realized_improvement', float('nan')):+.4f} "
                 f"π {c.get('policy_tuning_final', float('nan')):.4f}"
                 + (" ROLLED BACK" if c["rolled_back"] else "") for c in entry["conditions"]]
        print(f"iteration {entry['iteration']}: {seconds:.0f} s, score "
              f"{entry['policy_tuning_score']:.4f} | " + " | ".join(parts), flush=True)

    state, log = scale_free_family.train_family(
        config, conditions, out / "checkpoints", resume=args.resume, init_theta=init_theta,
        callback=report, max_seconds=args.budget_minutes * 60)
    scores = [e["policy_tuning_score"] for e in log]
    chosen = int(np.nanargmin(scores)) if log else 0
    metadata = {"trained_by": "scale-free GPS over a family "
                              "(metaopt.training.scale_free_family)",
                "family": args.family, "conditions": names,
                "init_policy": args.init_policy, "selected_at_iteration": chosen,
                "selection_score_tuning_seeds": float(state.best_score),
                "hidden_sizes": list(config.hidden_sizes),
                "fan_in_exponent": config.fan_in_exponent}
    save(out / "policy.metaopt", state.best_theta, metadata=metadata)
    summary = {"config": dataclasses.asdict(config), "family": [
        dataclasses.asdict(m) for m in FAMILIES[args.family]], "init_policy": args.init_policy,
        "chosen_iteration": chosen, "best_score_tuning_seeds": float(state.best_score),
        "wall_time_s": round(time.perf_counter() - start, 1), "machine": machine_description(),
        "commit": git_commit(), "log": log}
    (out / "training_log.json").write_text(json.dumps(summary, indent=1, default=float))
    plot_log(log, names, out / "training_log.png", f"scale-free GPS over the {args.family} family")
    print(f"best π: geometric-mean final f {float(state.best_score):.4f} on the tuning seeds "
          f"(iteration {chosen}); wrote {out}/policy.metaopt, training_log.json, .png")


if __name__ == "__main__":
    main()
