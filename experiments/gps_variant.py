"""The paper preset with TrainConfig fields overridden, evaluated like `make train` does.

  .venv/bin/python experiments/gps_variant.py --iterations 3 --out results/ablation-collective \\
      --set privileged_gradient=False calibrate_curvature=True collective_response=True
"""

import argparse
import ast
import dataclasses

from metaopt.training import job
from metaopt.training.gps_loop import TrainConfig


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="TrainConfig overrides (Python literals)")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in fields:
            parser.error(f"unknown TrainConfig field {name!r}")
        overrides[name] = ast.literal_eval(value)
    paper = job.get_train_config("paper")
    job.TRAIN_CONFIGS["variant"] = dataclasses.replace(
        paper, train=TrainConfig.paper(iterations=args.iterations, **overrides))
    job.run_train_job("variant", args.out, resume=args.resume)


if __name__ == "__main__":
    main()
