"""Choose between family-trained policies on the training side (issue 17), before any test task.

  .venv/bin/python experiments/family_selection.py --family mnist-wider \
      --policy mnist-wide=results/scale-free-family-wide/policy.metaopt \
      --policy mnist-wider=results/scale-free-family-wider/policy.metaopt \
      --out results/scale-free-family-wider/selection.json
  .venv/bin/python experiments/family_selection.py --family mnist-wider \
      --policy mnist-wide=metaopt/assets/scale_free_family.metaopt \
      --fan-in-exponents 0,0.5,1 --learning-rates 1,1.4,2 \
      --out results/generalization-fan-in/selection.json

Scores every policy as the family GPS selects its own π (``scale_free_family.tuning_score``):
final f on each condition's tuning seeds 0-4, geometric mean over the conditions. The held-out
suite (``experiments/generalization_suite.py``) never enters this choice. With
``--fan-in-exponents`` and ``--learning-rates``, every policy is scored at each pair of
``learned_opt``'s ``fan_in_exponent`` and ``learning_rate``, and the (policy, exponent, rate)
triple is chosen.
"""

import argparse
import json
from pathlib import Path

from metaopt.configs import parse_named_paths
from metaopt.evaluation.report import git_commit, machine_description
from metaopt.scale_free_optimizer import check_fan_in_exponent
from metaopt.serialization import load
from metaopt.training.families import FAMILIES, family_conditions
from metaopt.training.scale_free_family import tuning_score
from metaopt.training.scale_free_gps import ScaleFreeGPSConfig, scored_optimizer


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="mnist-wider", choices=sorted(FAMILIES))
    parser.add_argument("--policy", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--fan-in-exponents", default="0", metavar="A,B,...",
                        help="score each policy at these fan-in exponents (default: 0)")
    parser.add_argument("--learning-rates", default="1", metavar="A,B,...",
                        help="and at these step multipliers (default: 1)")
    parser.add_argument("--out", required=True, help="where to write the JSON")
    args = parser.parse_args()
    try:
        paths = parse_named_paths(args.policy, "--policy")
        exponents = [float(a) for a in args.fan_in_exponents.split(",")]
        rates = [float(c) for c in args.learning_rates.split(",")]
        for a in exponents:
            check_fan_in_exponent(a, owner="--fan-in-exponents")
    except ValueError as err:
        parser.error(str(err))
    config = ScaleFreeGPSConfig()
    conditions = family_conditions(args.family)
    rows = {}
    grid = [(p, a, c) for p in paths.items() for a in exponents for c in rates]
    for (policy, path), alpha, rate in grid:
        name = policy + (f" @ α={alpha:g}" if len(exponents) > 1 or alpha else "") + (
            f" × {rate:g}" if len(rates) > 1 or rate != 1 else "")
        score, per_condition = tuning_score(config, conditions, load(path),
                                            optimizer=scored_optimizer(alpha, rate))
        rows[name] = {"policy": policy, "fan_in_exponent": alpha, "learning_rate": rate,
                      "score": score, "conditions": {
            c.name: {"final": final, "area": area}
            for c, (final, area) in zip(conditions, per_condition, strict=True)}}
        print(f"{name}: geometric-mean final f {score:.4f} | " + " | ".join(
            f"{c.name.split(',')[0]} {final:.4f}"
            for c, (final, _) in zip(conditions, per_condition, strict=True)), flush=True)
    chosen = min(rows, key=lambda n: rows[n]["score"])
    print(f"chosen on the tuning seeds: {chosen}")
    Path(args.out).write_text(json.dumps({
        "family": args.family, "tuning_seeds": list(config.select_seeds),
        "policies": paths,
        "rows": rows, "chosen": chosen, "commit": git_commit(),
        "machine": machine_description()}, indent=1))


if __name__ == "__main__":
    main()
