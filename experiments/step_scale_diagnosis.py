"""Where does a learned policy step at the wrong scale, and could it tell? (issue 17; thin main).

  .venv/bin/python experiments/step_scale_diagnosis.py --out results/step-scale-diagnosis
  .venv/bin/python experiments/step_scale_diagnosis.py --tiny --out /tmp/ssd   # seconds

For every condition of a training family and every task of the generalisation suite: the
policy's final f and area with its step multiplied by 1, 0.7 and 0.5, and the two noise
statistics it could observe along its own run (``metaopt.evaluation.step_scale``). Tuning seeds
0-4 only: this measures, it selects nothing.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from metaopt.evaluation.generalization import TUNING_SEEDS, suite_tasks
from metaopt.evaluation.report import git_commit, machine_description
from metaopt.evaluation.step_scale import noise_statistics, step_multiplier_scores
from metaopt.scale_free_optimizer import scale_free_opt
from metaopt.serialization import load
from metaopt.training.families import FAMILIES

MULTIPLIERS = (1.0, 0.7, 0.5)


def _tiny_tasks():
    from metaopt.tasks import make_mlp_task, synthetic_classification

    import jax

    x, y = synthetic_classification(jax.random.key(0), 256, 8, 3)
    task = make_mlp_task(x, y, widths=(8, 8, 3), batch_size=8)
    return [("tiny, minibatch 8", "tiny", task, 20, 10)]


def _tasks(family: str):
    rows = [(f"{m.name}", f"training ({family})", m.task(), 400, 10) for m in FAMILIES[family]]
    rows += [(s.name, f"test ({s.source})", s.task(), s.num_steps, s.eval_every)
             for s in suite_tasks()]
    return rows


def markdown(rows) -> str:
    head = " / ".join(f"×{c:g}" for c in MULTIPLIERS)
    lines = [f"| task | side | final f {head} | area {head} | best × | gradient coherence "
             "(pure noise 0.229) | mean \\|Δf̂/f̂\\| |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        s, n = r["scores"], r["noise"]
        fmt = lambda xs: " / ".join(f"{x:.4g}" for x in xs)
        lines.append(f"| {r['task']} | {r['side']} | {fmt(s['final'])} | {fmt(s['area'])} | "
                     f"{s['best']:g} | {n['coherence']:.3f} | {n['objective_change']:.3f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default=None,
                        help="a .metaopt MLP policy (default: metaopt.pretrained.scale_free_family)")
    parser.add_argument("--family", default="mnist-wider", choices=sorted(FAMILIES))
    parser.add_argument("--out", required=True)
    parser.add_argument("--tiny", action="store_true", help="one synthetic task, 20 steps")
    args = parser.parse_args()
    if args.policy is None:
        from metaopt.pretrained import scale_free_family

        theta, policy = scale_free_family(), "metaopt.pretrained.scale_free_family()"
    else:
        theta, policy = load(args.policy), args.policy
    make = lambda learning_rate: scale_free_opt(theta, learning_rate=learning_rate)
    seeds = TUNING_SEEDS[:2] if args.tiny else TUNING_SEEDS
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, rows = time.time(), []
    for name, side, task, num_steps, eval_every in (_tiny_tasks() if args.tiny
                                                    else _tasks(args.family)):
        scores = step_multiplier_scores(make, task, MULTIPLIERS, seeds=seeds,
                                        num_steps=num_steps, eval_every=eval_every)
        noise = noise_statistics(make(1.0), task, seeds=seeds, num_steps=num_steps)
        rows.append({"task": name, "side": side, "num_steps": num_steps, "scores": scores,
                     "noise": noise})
        print(f"{name}: best ×{scores['best']:g} "
              f"(final {' / '.join(f'{x:.4f}' for x in scores['final'])}), "
              f"coherence {noise['coherence']:.3f}, |Δf̂/f̂| {noise['objective_change']:.3f}",
              flush=True)
    table = markdown(rows)
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps({
        "policy": policy, "family": args.family, "multipliers": MULTIPLIERS,
        "seeds": list(seeds), "rows": rows, "wall_time_s": time.time() - start,
        "commit": git_commit(), "machine": machine_description()}, indent=1))
    wants_smaller = [r["task"] for r in rows if r["scores"]["best"] < 1.0]
    coherence = np.array([r["noise"]["coherence"] for r in rows])
    print(f"{len(wants_smaller)} of {len(rows)} tasks prefer a smaller step; coherence spans "
          f"{coherence.min():.3f}-{coherence.max():.3f}; wrote {out / 'table.md'}")


if __name__ == "__main__":
    main()
