"""Choose the family policy's step schedule over a known horizon on the training side (issue 17).

  .venv/bin/python experiments/schedule_selection.py --out results/schedule-selection
  .venv/bin/python experiments/schedule_selection.py --tiny --out /tmp/sched   # seconds

The scale-free policy's clocks saturate near step 300, so it cannot follow a schedule over a
user's horizon by itself; ``horizon_schedule`` multiplies its step by K knots over the fraction
t / T of the horizon. Here the knots are chosen by ``coordinate_search`` on the tuning seeds 0-4
of the training family's conditions (never a test dataset, never the held-out suite), at the
shipped fan-in exponent. The criterion is the geometric mean over the conditions of final f
**and** area: issue 17 counts both, and a schedule tuned for final f alone can buy a lower end
with a slower start. Writes ``<out>/selection.json`` (the search, the per-condition scores at
the start and at the choice, commit, machine) and ``<out>/table.md``.

``--evaluate SELECTION.json`` scores another selection's chosen schedule on this family instead of
searching (e.g. one chosen on the paper's single condition, ``--family paper``, measured on the
seven ``mnist-wider`` conditions it was not chosen on).

``--adapt loss-noise`` chooses instead the knots of ``scale_by_loss_noise`` (a step multiplier of
the measured minibatch-loss noise, at ``NOISE_LEVELS``), on top of the shipped horizon schedule:

  .venv/bin/python experiments/schedule_selection.py --adapt loss-noise \
      --family mnist-wider-probes --initial 1.6 1.6 1.3 1 0.6 --sweeps 6 --log-step 0.2 \
      --out results/loss-noise-selection
"""

import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np
import optax

from metaopt.evaluation.report import git_commit, machine_description
from metaopt.evaluation.schedule_search import coordinate_search, criterion, knot_scores, schedule_scores
from metaopt.learned_optimizer import learned_opt
from metaopt.optimizers.horizon_schedule import horizon_schedule
from metaopt.optimizers.loss_noise import DEFAULT_DECAY, DEFAULT_WARMUP, scale_by_loss_noise
from metaopt.pretrained import scale_free_family_info
from metaopt.serialization import load
from metaopt.training.families import FAMILIES, family_conditions
from metaopt.training.scale_free_gps import ScaleFreeGPSConfig

# Where scale_by_loss_noise's knots sit: the training side's noise levels at the constant step run
# from ≈ 0.16 (minibatch 128) to ≈ 0.55 (minibatch 5), at steps 50-150.
NOISE_LEVELS = (0.15, 0.25, 0.35, 0.45, 0.55)


def tiny_tasks():
    """Two 8-8-10 digits nets: a smoke run that needs no MNIST."""
    from metaopt.tasks import dataset_task

    return [(f"8-8-10 digits, minibatch {b}", dataset_task(
        "digits", input_dim=8, hidden=(8,), batch_size=b, eval_subset=200)) for b in (10, 32)]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="mnist-wider", choices=sorted(FAMILIES))
    parser.add_argument("--policy", default="metaopt/assets/scale_free_family.metaopt")
    parser.add_argument("--fan-in-exponent", type=float, default=None, metavar="ALPHA",
                        help="default: the shipped family policy's (scale_free_family.json)")
    parser.add_argument("--knots", type=int, default=5, help="K, evenly spaced over t/T")
    parser.add_argument("--sweeps", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="two tiny digits nets, 20 steps")
    parser.add_argument("--evaluate", metavar="SELECTION.json",
                        help="score that file's chosen schedule here instead of searching")
    parser.add_argument("--adapt", default="horizon", choices=("horizon", "loss-noise"),
                        help="choose the horizon schedule's knots (default) or, on top of the "
                             "shipped horizon schedule, scale_by_loss_noise's at NOISE_LEVELS")
    parser.add_argument("--initial", type=float, nargs="+", default=None,
                        help="the search's starting knots (default: all 1, the shipped step)")
    parser.add_argument("--log-step", type=float, nargs="+", default=[0.35, 0.7],
                        help="coordinate_search's log_steps")
    parser.add_argument("--out", required=True, help="folder for selection.json and table.md")
    args = parser.parse_args()
    if args.knots < 2 or args.sweeps < 1:
        parser.error("--knots must be at least 2 and --sweeps at least 1")
    evaluated = None
    if args.evaluate:
        try:
            evaluated = json.loads(Path(args.evaluate).read_text())["rows"]["chosen"]["multipliers"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            parser.error(f"--evaluate {args.evaluate}: not a schedule_selection.py selection.json "
                         f"({e!r}); give the file this script wrote")
        args.knots = len(evaluated)
    start = time.perf_counter()
    config = ScaleFreeGPSConfig()
    alpha = (scale_free_family_info().get("fan_in_exponent", 0.0)
             if args.fan_in_exponent is None else args.fan_in_exponent)
    if args.tiny:
        named, horizon, seeds, every = tiny_tasks(), 20, (0, 1), 10
    else:
        named = [(c.name, c.task) for c in family_conditions(args.family)]
        horizon, seeds, every = config.horizon, tuple(config.select_seeds), 10
    make = functools.partial(learned_opt, load(args.policy), fan_in_exponent=alpha)
    if args.adapt == "loss-noise":
        args.knots = len(NOISE_LEVELS)
        shipped = scale_free_family_info()["horizon_schedule"]["multipliers"]

        def build(row):
            return optax.chain(make(learning_rate=horizon_schedule(shipped, horizon=horizon)),
                               scale_by_loss_noise(row, noise_levels=NOISE_LEVELS))

        scores_of = functools.partial(knot_scores, build)
    else:
        scores_of = functools.partial(schedule_scores, make)
    initial = np.ones(args.knots) if args.initial is None else np.asarray(args.initial)
    if initial.shape != (args.knots,) or evaluated is not None and args.initial is not None:
        parser.error(f"--initial needs {args.knots} values (one per knot), without --evaluate")
    names, tasks = zip(*named, strict=True)
    evaluations = []

    def score(candidates):
        scores = scores_of(tasks, candidates, horizon=horizon, seeds=seeds,
                                 eval_every=every)
        values = criterion(scores["final"], scores["area"])
        evaluations.append(len(candidates))
        print(f"  {len(candidates)} candidates, best {values.min():.5f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        return values

    if evaluated is None:
        result = coordinate_search(score, initial, sweeps=args.sweeps,
                                   log_steps=tuple(args.log_step))
    else:
        result = {"best": [float(m) for m in evaluated], "evaluated_from": args.evaluate}
    ends = scores_of(tasks, [np.ones(args.knots), result["best"]], horizon=horizon, seeds=seeds,
                     eval_every=every)
    geo = lambda x: float(np.exp(np.mean(np.log(x))))
    rows = {label: {"multipliers": list(m), "criterion": float(criterion(
        ends["final"][i:i + 1], ends["area"][i:i + 1])[0]),
        "geometric_mean_final": geo(ends["final"][i]), "geometric_mean_area": geo(ends["area"][i]),
        "conditions": {n: {"final": float(ends["final"][i, j]), "area": float(ends["area"][i, j])}
                       for j, n in enumerate(names)}}
        for i, (label, m) in enumerate((("constant", [1.0] * args.knots),
                                        ("chosen", result["best"])))}
    doc = {"family": "tiny" if args.tiny else args.family, "policy": args.policy,
           "fan_in_exponent": alpha, "horizon": horizon, "tuning_seeds": list(seeds),
           "adapt": args.adapt, "initial": initial.tolist(),
           **({"fractions": [i / (args.knots - 1) for i in range(args.knots)]}
              if args.adapt == "horizon" else
              {"noise_levels": list(NOISE_LEVELS), "decay": DEFAULT_DECAY, "warmup": DEFAULT_WARMUP,
               "horizon_schedule": scale_free_family_info()["horizon_schedule"]}),
           "criterion": "geometric mean over the conditions of final f and area",
           "search": result, "runs_per_seed_and_condition": int(sum(evaluations)),
           "rows": rows, "wall_time_s": round(time.perf_counter() - start),
           "commit": git_commit(), "machine": machine_description()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.json").write_text(json.dumps(doc, indent=1))
    base = "constant ×1" if args.adapt == "horizon" else "shipped (horizon schedule)"
    lines = [f"| condition | {base}: final / area | chosen: final / area |",
             "|---|---|---|"]
    for n in names:
        a, b = rows["constant"]["conditions"][n], rows["chosen"]["conditions"][n]
        lines.append(f"| {n} | {a['final']:.4f} / {a['area']:.4f} | "
                     f"{b['final']:.4f} / {b['area']:.4f} |")
    for key, label in (("geometric_mean_final", "geometric mean, final"),
                       ("geometric_mean_area", "geometric mean, area"),
                       ("criterion", "criterion (both)")):
        lines.append(f"| {label} | {rows['constant'][key]:.4f} | {rows['chosen'][key]:.4f} |")
    knots = ", ".join(f"{m:.3g}" for m in result["best"])
    at = (f"t/T = {doc['fractions']}" if args.adapt == "horizon" else
          f"loss-noise levels {list(NOISE_LEVELS)} (on top of the shipped horizon schedule)")
    table = "\n".join(lines) + f"\n\nchosen multipliers at {at}: [{knots}]\n"
    (out / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
