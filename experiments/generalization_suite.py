"""The generalisation suite (issue 17): learned policies against baselines tuned two ways.

  .venv/bin/python experiments/generalization_suite.py            # results/generalization-wide
  .venv/bin/python experiments/generalization_suite.py --tiny --out /tmp/gen   # ~1 min smoke run

Tasks, columns and protocol: ``metaopt.evaluation.generalization``. The policies: the
family-trained one (``--policy``, from ``experiments/train_scale_free_family.py``) and the
single-task one it started from (``--single``, the shipped ``scale_free.metaopt``). Writes
``<out>/table.md`` (README's table), ``table.json`` (every score, tuned setting, the summary,
commit and machine) and ``curves.png``; the JSON is rewritten after each task. The baseline
columns of an existing ``table.json`` with the same protocol are reused (a new policy costs only
its own runs); ``--rerun-baselines`` recomputes them.
"""

import argparse
import dataclasses
import functools
import json
import math
import time
from pathlib import Path

import numpy as np
import optax

from metaopt.configs import parse_named_paths
from metaopt.evaluation import generalization as gen
from metaopt.evaluation.report import git_commit, machine_description
from metaopt.learned_optimizer import learned_opt
from metaopt.optimizers.horizon_schedule import horizon_schedule
from metaopt.optimizers.loss_noise import scale_by_loss_noise
from metaopt.serialization import load

FAMILY, SINGLE = "family-trained", "single-task"
AS_TRAINED = f"{FAMILY} (as trained: α=0, ×1)"
CONSTANT = f"{FAMILY} (constant step)"


def plot(rows, path: Path) -> None:
    """Per task: both policies, the best baseline tuned on training and on the task itself."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    fig, axes = plt.subplots(math.ceil(len(rows) / cols), cols,
                             figsize=(4.2 * cols, 3.1 * math.ceil(len(rows) / cols)),
                             squeeze=False)
    for ax, row in zip(axes.flat, rows, strict=False):
        s = row["scores"]
        pick = lambda suffix, s=s: min((n for n in s if n.endswith(suffix)),
                                       key=lambda n: s[n]["final"])
        for name, style in ((FAMILY, "C3-"), (SINGLE, "C0--"), (pick("(training)"), "C7:"),
                            (pick("(this task)"), "C2-.")):
            c = np.asarray(row["curves"][name])
            x = np.linspace(0, row["num_steps"], c.shape[1])
            ax.plot(x, c.mean(0), style, lw=1.4, label=name)
        ax.set_yscale("log")
        ax.set_title(row["task"], fontsize=7)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=5.5)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def selected_settings(path: str, parser) -> tuple[float, float]:
    """(fan_in_exponent, learning_rate) of the chosen row of a family_selection.py JSON."""
    try:
        doc = json.loads(Path(path).read_text())
        row = doc["rows"][doc["chosen"]]
        return float(row.get("fan_in_exponent", 0.0)), float(row.get("learning_rate", 1.0))
    except (OSError, ValueError, KeyError) as err:
        parser.error(f"--selection {path}: not an experiments/family_selection.py JSON with a "
                     f"chosen row ({err!r}); run that script first")


def chosen_schedule(path: str, parser) -> dict:
    """``{"multipliers", "fractions"}`` chosen in an experiments/schedule_selection.py JSON."""
    try:
        doc = json.loads(Path(path).read_text())
        knots = {"multipliers": [float(m) for m in doc["search"]["best"]],
                 "fractions": [float(p) for p in doc["fractions"]]}
        horizon_schedule(knots["multipliers"], horizon=1, fractions=knots["fractions"])
        return knots
    except (OSError, ValueError, KeyError, TypeError) as err:
        parser.error(f"--schedule {path}: not an experiments/schedule_selection.py JSON with a "
                     f"valid chosen schedule ({err!r}); run that script first")


def chosen_loss_noise(path: str, parser) -> dict:
    """``scale_by_loss_noise`` arguments chosen in a ``schedule_selection.py --adapt loss-noise``
    JSON."""
    try:
        doc = json.loads(Path(path).read_text())
        if doc.get("adapt") != "loss-noise":
            raise ValueError("its adapt is not 'loss-noise'")
        chosen = {"multipliers": [float(m) for m in doc["search"]["best"]],
                  "noise_levels": [float(n) for n in doc["noise_levels"]],
                  "decay": float(doc["decay"]), "warmup": int(doc["warmup"])}
        scale_by_loss_noise(**chosen)
        return chosen
    except (OSError, ValueError, KeyError, TypeError) as err:
        parser.error(f"--loss-noise {path}: not an experiments/schedule_selection.py --adapt "
                     f"loss-noise JSON ({err!r}); run that script first")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="results/scale-free-family-wide/policy.metaopt")
    parser.add_argument("--single", default="metaopt/assets/scale_free.metaopt")
    parser.add_argument("--out", default="results/generalization-wide")
    parser.add_argument("--tiny", action="store_true",
                        help="8-8-10 nets on digits, 20 steps, 2 seeds, 2-point grids")
    parser.add_argument("--also", action="append", default=[], metavar="NAME=PATH",
                        help="another policy file to run beside the two (repeatable)")
    parser.add_argument("--fan-in-exponent", type=float, default=0.0, metavar="ALPHA",
                        help="both policies' fan_in_exponent (learned_opt's; default 0)")
    parser.add_argument("--learning-rate", type=float, default=1.0, metavar="C",
                        help="both policies' learning_rate (learned_opt's; default 1)")
    parser.add_argument("--selection", default=None, metavar="SELECTION.json",
                        help="take both from the chosen row of an experiments/family_selection.py "
                             "JSON instead; when either is not the default, the family policy "
                             f"as trained (0 and 1) is run too, as '{AS_TRAINED}'")
    parser.add_argument("--schedule", default=None, metavar="SELECTION.json",
                        help="multiply both policies' step by the horizon schedule chosen in an "
                             "experiments/schedule_selection.py JSON, over each task's horizon; "
                             f"the family policy without it is run too, as '{CONSTANT}'")
    parser.add_argument("--loss-noise", default=None, metavar="SELECTION.json",
                        help="also multiply both policies' step by the scale_by_loss_noise chosen "
                             "in an experiments/schedule_selection.py --adapt loss-noise JSON")
    parser.add_argument("--rerun-baselines", action="store_true",
                        help="do not reuse the baseline columns of an existing <out>/table.json")
    args = parser.parse_args()
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    family, single = load(args.policy), load(args.single)
    alpha, rate = (selected_settings(args.selection, parser) if args.selection
                   else (args.fan_in_exponent, args.learning_rate))
    settings = {"fan_in_exponent": alpha, "learning_rate": rate}
    knots = chosen_schedule(args.schedule, parser) if args.schedule else None
    noise = chosen_loss_noise(args.loss_noise, parser) if args.loss_noise else None
    try:
        also = {name: load(path) for name, path in parse_named_paths(args.also, "--also").items()}
    except ValueError as err:
        parser.error(str(err))

    def learned_for(horizon: int) -> dict:
        """The learned columns for a task of ``horizon`` steps (the schedule spans it)."""
        if knots is None:
            lr = rate
        else:
            schedule = horizon_schedule(knots["multipliers"], horizon=horizon,
                                        fractions=knots["fractions"])
            lr = lambda t: rate * schedule(t)  # noqa: E731
        def adapted(theta):
            tx = learned_opt(theta, fan_in_exponent=alpha, learning_rate=lr)
            return tx if noise is None else optax.chain(tx, scale_by_loss_noise(**noise))

        learned = {FAMILY: lambda: adapted(family), SINGLE: lambda: adapted(single)}
        if knots is not None:
            learned[CONSTANT] = lambda: learned_opt(family, **settings)
        if (alpha, rate) != (0.0, 1.0):
            learned[AS_TRAINED] = lambda: learned_opt(family)
        return learned | {name: functools.partial(learned_opt, theta)
                          for name, theta in also.items()}

    learned = learned_for(1)
    tasks, kwargs = gen.suite_tasks(), {}
    if args.tiny:
        tasks = [dataclasses.replace(t, input_dim=8, hidden=(8,) * len(t.hidden), num_steps=20,
                                     eval_every=10) for t in tasks if t.dataset == "digits"][:2]
        kwargs = dict(tuning_seeds=(0, 1), eval_seeds=(100, 101), test_grids={
            n: g[3:5] for n, g in gen.TEST_TUNED_GRIDS.items()})
    earlier = {}
    if (out / "table.json").exists() and not args.rerun_baselines:
        earlier = {r["task"]: r for r in json.loads((out / "table.json").read_text())["rows"]}
    rows = []
    for spec in tasks:
        t0 = time.perf_counter()
        row = gen.evaluate_task(spec, learned_for(spec.num_steps), reuse=earlier.get(spec.name),
                                **kwargs)
        row |= {"num_steps": spec.num_steps, "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        s = row["scores"]
        print(f"{spec.name}: {FAMILY} {s[FAMILY]['final']:.4f}, {SINGLE} {s[SINGLE]['final']:.4f}"
              f", adam here {s['adam (this task)']['final']:.4f}, "
              f"{row['seconds']:.0f} s", flush=True)
        doc = {"policy": args.policy, "single_task_policy": args.single,
               "optimizer_settings": settings, "selection": args.selection,
               "schedule": args.schedule, "horizon_schedule": knots,
               "loss_noise": args.loss_noise, "loss_noise_scaling": noise,
               "summary": gen.summary_counts(rows, FAMILY),
               "summary_single_task": gen.summary_counts(rows, SINGLE),
               "summary_others": {n: gen.summary_counts(rows, n) for n in learned
                                  if n not in (FAMILY, SINGLE)},
               "rows": [{k: v for k, v in r.items() if k != "curves"} | {"curves": {
                   n: np.asarray(c).tolist() for n, c in r["curves"].items()}} for r in rows],
               "eval_subset": gen.EVAL_SUBSET, "wall_time_s": round(time.perf_counter() - start),
               "machine": machine_description(), "commit": git_commit()}
        (out / "table.json").write_text(json.dumps(doc, indent=1, allow_nan=True))
    table = gen.markdown_table(rows, FAMILY, [n for n in learned if n != FAMILY])
    (out / "table.md").write_text(table + "\n\n" + json.dumps(doc["summary"]) + "\n")
    plot(rows, out / "curves.png")
    print(table)
    print("family-trained:", doc["summary"])
    print("single-task:  ", doc["summary_single_task"])


if __name__ == "__main__":
    main()
