"""Where does a learned policy step at the wrong scale, and could it tell? (issue 17; thin main).

  .venv/bin/python experiments/step_scale_diagnosis.py --out results/step-scale-diagnosis
  .venv/bin/python experiments/step_scale_diagnosis.py --tiny --out /tmp/ssd   # seconds

For every condition of a training family and every task of the generalisation suite: the
policy's final f and area with its step multiplied by 1, 0.7 and 0.5, and the two noise
statistics it could observe along its own run (``metaopt.evaluation.step_scale``). Tuning seeds
0-4 only: this measures, it selects nothing.

With ``--baselines-table`` (a generalisation suite's ``table.json``), each suite task is also run
on the held-out seeds 100-104 at the multiplier its tuning seeds chose, and compared with that
table's baselines: the most a perfect step-scale input could buy this policy. That column is
tuned on the task (a 3-point grid), so it is fair against the "tuned on this task" columns, and
an upper bound, not the paper's protocol, against the "tuned on training" ones.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import optax

from metaopt.evaluation.generalization import (
    EVAL_SEEDS,
    TUNING_SEEDS,
    markdown_table,
    score_curves,
    suite_tasks,
    summary_counts,
)
from metaopt.evaluation.report import git_commit, machine_description
from metaopt.evaluation.step_scale import noise_statistics, step_multiplier_scores
from metaopt.evaluation.tuning import run_grid
from metaopt.scale_free_optimizer import scale_free_opt
from metaopt.serialization import load
from metaopt.training.families import FAMILIES

MULTIPLIERS = (1.0, 0.7, 0.5)
TUNED = "step-tuned"    # the policy at its per-task multiplier, in the held-out comparison


def _tiny_tasks():
    import jax

    from metaopt.tasks import make_mlp_task, synthetic_classification

    x, y = synthetic_classification(jax.random.key(0), 256, 8, 3)
    task = make_mlp_task(x, y, widths=(8, 8, 3), batch_size=8)
    return [("tiny, minibatch 8", "tiny", task, 20, 10)]


def _tasks(family: str):
    rows = [(f"{m.name}", f"training ({family})", m.task(), 400, 10) for m in FAMILIES[family]]
    rows += [(s.name, f"test ({s.source})", s.task(), s.num_steps, s.eval_every)
             for s in suite_tasks()]
    return rows


def markdown(rows, multipliers=MULTIPLIERS) -> str:
    head = " / ".join(f"×{c:g}" for c in multipliers)
    lines = [f"| task | side | final f {head} | area {head} | best × | gradient coherence "
             "(pure noise 0.229) | mean \\|Δf̂/f̂\\| |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        s, n = r["scores"], r["noise"]
        fmt = lambda xs: " / ".join(f"{x:.4g}" for x in xs)
        lines.append(f"| {r['task']} | {r['side']} | {fmt(s['final'])} | {fmt(s['area'])} | "
                     f"{s['best']:g} | {n['coherence']:.3f} | {n['objective_change']:.3f} |")
    return "\n".join(lines) + "\n"


def held_out_comparison(rows, table_rows, make_for) -> tuple[list[dict], str]:
    """Each suite task at its chosen multiplier on ``EVAL_SEEDS``, against ``table_rows``
    (``make_for(num_steps)``: the ``make`` of a task with that horizon). The table's own
    (constant-step) runs are the ``"x1"`` column, and stand for the chosen ×1 unless the step
    decays. Returns the rows (``TUNED`` beside ``"x1"``) and their table, the suite's columns
    with the multiplier in the task name."""
    by_task = {r["task"]: r for r in table_rows}
    compared = []
    for r in rows:
        base = by_task.get(r["task"])
        if base is None:
            continue
        lr, x1 = r["scores"]["best"], base["scores"][base["policy"]]
        tuned = x1 if lr == 1.0 and not r["decayed"] else score_curves(run_grid(
            make_for(r["num_steps"]), [{"learning_rate": lr}], r["task_object"], EVAL_SEEDS,
            num_steps=r["num_steps"], eval_every=r["eval_every"])[0])
        compared.append({"task": f"{base['task']} (×{lr:g})", "source": base["source"],
                         "scores": {n: s for n, s in base["scores"].items() if "(" in n}
                         | {TUNED: tuned, "x1": x1}})
    return compared, markdown_table(compared, TUNED, ["x1"]) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default=None,
                        help="a .metaopt MLP policy (default: metaopt.pretrained.scale_free_family)")
    parser.add_argument("--family", default="mnist-wider", choices=sorted(FAMILIES))
    parser.add_argument("--out", required=True)
    parser.add_argument("--tiny", action="store_true", help="one synthetic task, 20 steps")
    parser.add_argument("--baselines-table", default=None,
                        help="a generalisation suite's table.json whose policy column is this "
                             "policy (module docs)")
    parser.add_argument("--table-column", default="family-trained",
                        help="that table's column of this policy (default: %(default)s)")
    parser.add_argument("--multipliers", default=",".join(f"{m:g}" for m in MULTIPLIERS),
                        metavar="A,B,...", help="step multipliers (default: %(default)s)")
    parser.add_argument("--fan-in-exponent", type=float, default=0.0,
                        help="the policy's fan_in_exponent (learned_opt's; default 0)")
    parser.add_argument("--cosine-floor", type=float, default=None, metavar="F",
                        help="decay every step multiplier by a cosine to F times it over each "
                             "task's horizon (default: constant)")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="only the tasks whose name contains TEXT (e.g. 'fig1:'; repeatable)")
    args = parser.parse_args()
    if args.policy is None:
        from metaopt.pretrained import scale_free_family

        theta, policy = scale_free_family(), "metaopt.pretrained.scale_free_family()"
    else:
        theta, policy = load(args.policy), args.policy
    multipliers = tuple(float(m) for m in args.multipliers.split(","))

    def make_for(num_steps):
        def make(learning_rate):
            if args.cosine_floor is not None:
                learning_rate = optax.cosine_decay_schedule(learning_rate, num_steps,
                                                            alpha=args.cosine_floor)
            return scale_free_opt(theta, learning_rate=learning_rate,
                                  fan_in_exponent=args.fan_in_exponent)
        return make

    seeds = TUNING_SEEDS[:2] if args.tiny else TUNING_SEEDS
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, rows = time.time(), []
    tasks = [t for t in (_tiny_tasks() if args.tiny else _tasks(args.family))
             if not args.only or any(text in t[0] for text in args.only)]
    if not tasks:
        parser.error(f"--only {args.only}: no task's name contains it")
    for name, side, task, num_steps, eval_every in tasks:
        make = make_for(num_steps)
        scores = step_multiplier_scores(make, task, multipliers, seeds=seeds,
                                        num_steps=num_steps, eval_every=eval_every)
        noise = noise_statistics(make(1.0), task, seeds=seeds, num_steps=num_steps)
        rows.append({"task": name, "side": side, "num_steps": num_steps,
                     "eval_every": eval_every, "scores": scores, "noise": noise,
                     "decayed": args.cosine_floor is not None,
                     "task_object": task})
        print(f"{name}: best ×{scores['best']:g} "
              f"(final {' / '.join(f'{x:.4f}' for x in scores['final'])}), "
              f"coherence {noise['coherence']:.3f}, |Δf̂/f̂| {noise['objective_change']:.3f}",
              flush=True)
    table, held_out = markdown(rows, multipliers), None
    if args.baselines_table:
        table_json = json.loads(Path(args.baselines_table).read_text())
        table_rows = [r | {"policy": args.table_column} for r in table_json["rows"]]
        compared, held_table = held_out_comparison(rows, table_rows, make_for)
        held_out = {"table": args.baselines_table, "summary": summary_counts(compared, TUNED),
                    "summary_x1": summary_counts(compared, "x1"),
                    "rows": [{"task": r["task"], "scores": {TUNED: r["scores"][TUNED]}}
                             for r in compared]}
        table += (f"\nHeld-out seeds {list(EVAL_SEEDS)}, baselines from "
                  f"`{args.baselines_table}`:\n\n" + held_table
                  + f"\nAt the chosen multipliers: {held_out['summary']}\n"
                  + f"At ×1: {held_out['summary_x1']}\n")
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps({
        "policy": policy, "family": args.family, "multipliers": multipliers,
        "fan_in_exponent": args.fan_in_exponent, "cosine_floor": args.cosine_floor,
        "only": args.only,
        "seeds": list(seeds), "rows": [{k: v for k, v in r.items() if k != "task_object"}
                                       for r in rows],
        "held_out": held_out, "wall_time_s": time.time() - start,
        "commit": git_commit(), "machine": machine_description()}, indent=1))
    wants_smaller = [r["task"] for r in rows if r["scores"]["best"] < 1.0]
    coherence = np.array([r["noise"]["coherence"] for r in rows])
    print(f"{len(wants_smaller)} of {len(rows)} tasks prefer a smaller step; coherence spans "
          f"{coherence.min():.3f}-{coherence.max():.3f}; wrote {out / 'table.md'}")


if __name__ == "__main__":
    main()
