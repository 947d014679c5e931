"""The scale-free policy against the paper-features policy and the tuned baselines (issue 16).

  .venv/bin/python experiments/scale_free_suite.py --policy results/scale-free-bptt/policy.metaopt

Tasks, each on the held-out seeds 100-104:
* the training task (48-48-10 on MNIST-48, minibatch 64, 400 steps): the other curves are read
  from ``results/train/results.json`` (the baselines re-run on those seeds);
* every dataset of Figs 1-5 in ``results/figN/<dataset>/results.json`` (baselines tuned on the
  training task, the shipped paper-features LSTM ``learned_gps`` and L2L), read from there;
* least squares with parameters at scale 1e-3, 1 and 1e3 (``metaopt.tasks.least_squares_task``;
  the same problem in other units), against the shipped LSTM and Adam(1e-3) / Adam tuned at
  scale 1.

Only the new policy (and, for least squares, everything) is run here. Writes
``results/scale-free-suite/table.md`` and ``table.json``: per task the final f and area (mean over
the curve), the new policy's rank, whether it beats the paper-features policy, and whether any of
its seeds ends above its starting objective.
"""

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from metaopt.evaluation.generalization import score_curves
from metaopt.evaluation.report import git_commit, machine_description
from metaopt.evaluation.tuning import run_grid
from metaopt.learned_optimizer import learned_opt
from metaopt.optimizers.baselines import BASELINES
from metaopt.pretrained import paper_lstm
from metaopt.serialization import load
from metaopt.tasks import dataset_task, least_squares_task
from metaopt.training.config import TrainConfig
from metaopt.training.job import evaluation_task

NEW, PAPER = "scale_free", "learned_gps"
SEEDS = (100, 101, 102, 103, 104)


def _row(task_name, curves):
    scores = {name: score_curves(c) for name, c in curves.items()}
    others = {n: s for n, s in scores.items() if n not in (NEW, PAPER, "learned_l2l")}
    best_final = min(others, key=lambda n: others[n]["final"])
    best_area = min(others, key=lambda n: others[n]["area"])
    new = scores[NEW]
    return {"task": task_name, "scores": scores,
            "best_baseline_final": [best_final, others[best_final]["final"]],
            "best_baseline_area": [best_area, others[best_area]["area"]],
            "beats_best_baseline_final": new["final"] < others[best_final]["final"],
            "beats_best_baseline_area": new["area"] < others[best_area]["area"],
            "beats_paper_policy_final": new["final"] < scores[PAPER]["final"],
            "beats_paper_policy_area": new["area"] < scores[PAPER]["area"],
            "new_seeds_above_start": new["ends_above_start"]}


def _from_report(path):
    doc = json.loads(Path(path).read_text())
    return doc, {n: np.asarray(r["true_loss"]) for n, r in doc["optimizers"].items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="results/scale-free-bptt/policy.metaopt")
    parser.add_argument("--out", default="results/scale-free-suite")
    args = parser.parse_args()
    start = time.perf_counter()
    theta = load(args.policy)
    new = lambda: learned_opt(theta)
    rows = []

    doc, curves = _from_report("results/train/results.json")
    del curves["learned_gps"]              # that run's GPS policy; the shipped one is issue 5's
    task = evaluation_task(TrainConfig.paper())
    steps = doc["eval_steps"]
    run = lambda factory, hp, task, n, every: run_grid(factory, [hp], task, SEEDS, num_steps=n,
                                                       eval_every=every)[0]
    curves[NEW] = run(new, {}, task, steps[-1], steps[1] - steps[0])
    curves[PAPER] = run(lambda: learned_opt(paper_lstm()), {}, task, steps[-1], steps[1] - steps[0])
    rows.append(_row("training task 48-48-10 MNIST-48", curves))
    print(rows[-1]["task"], {n: round(s["final"], 4) for n, s in rows[-1]["scores"].items()})

    for fig in ("fig1", "fig2", "fig3", "fig4", "fig5"):
        for report in sorted(Path("results", fig).glob("*/results.json")):
            doc, curves = _from_report(report)
            spec = doc["meta"]["spec"]
            task = dataset_task(doc["meta"]["dataset"], input_dim=spec["input_dim"],
                                hidden=tuple(spec["hidden"]), batch_size=spec["batch_size"],
                                activation=spec["activation"], l2=spec["l2"])
            curves[NEW] = run(new, {}, task, spec["num_steps"], spec["eval_every"])
            rows.append(_row(f"{fig} {doc['meta']['task'].split(' MLP')[0]} on "
                             f"{doc['meta']['dataset']}, minibatch {spec['batch_size']}, "
                             f"{spec['num_steps']} steps", curves))
            print(rows[-1]["task"], {n: round(s["final"], 4) for n, s in rows[-1]["scores"].items()})

    adam_scale_1 = None
    for scale in (1.0, 1e-3, 1e3):
        task = least_squares_task(jax.random.key(0), scale=scale)
        curves = {NEW: run(new, {}, task, 400, 10),
                  PAPER: run(lambda: learned_opt(paper_lstm()), {}, task, 400, 10)}
        if adam_scale_1 is None:          # tune Adam's rate once, at scale 1, on seeds 0-4
            grid = [{"learning_rate": lr} for lr in (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3)]
            tuned = run_grid(BASELINES["adam"].factory, grid, task, (0, 1, 2, 3, 4), num_steps=400,
                             eval_every=10)
            adam_scale_1 = grid[int(np.nanargmin([np.mean(c[:, -1]) for c in tuned]))]
        curves["adam_1e-3"] = run(BASELINES["adam"].factory, {"learning_rate": 1e-3}, task, 400, 10)
        curves[f"adam_tuned_at_scale_1 (lr {adam_scale_1['learning_rate']})"] = run(
            BASELINES["adam"].factory, adam_scale_1, task, 400, 10)
        rows.append(_row(f"least squares, parameter scale {scale:g}", curves))
        print(rows[-1]["task"], {n: round(s["final"], 4) for n, s in rows[-1]["scores"].items()})

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| task | scale-free final / area | paper LSTM final / area | best baseline final "
             "| best baseline area | beats paper LSTM (final, area) | beats best baseline "
             "(final, area) | seeds above start |", "|---|---|---|---|---|---|---|---|"]
    yn = lambda b: "yes" if b else "no"
    for r in rows:
        s, p = r["scores"][NEW], r["scores"][PAPER]
        lines.append(
            f"| {r['task']} | {s['final']:.4g} / {s['area']:.4g} | {p['final']:.4g} / "
            f"{p['area']:.4g} | {r['best_baseline_final'][0]} {r['best_baseline_final'][1]:.4g} | "
            f"{r['best_baseline_area'][0]} {r['best_baseline_area'][1]:.4g} | "
            f"{yn(r['beats_paper_policy_final'])}, {yn(r['beats_paper_policy_area'])} | "
            f"{yn(r['beats_best_baseline_final'])}, {yn(r['beats_best_baseline_area'])} | "
            f"{r['new_seeds_above_start']} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    (out / "table.json").write_text(json.dumps(
        {"policy": args.policy, "seeds": list(SEEDS), "rows": rows,
         "wall_time_s": round(time.perf_counter() - start, 1), "machine": machine_description(),
         "commit": git_commit()}, indent=1, allow_nan=True))
    print(table)


if __name__ == "__main__":
    main()
