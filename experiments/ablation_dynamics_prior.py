"""Ablation: the paper preset with the dynamics prior strength the GPS benchmark measured best.

`benchmarks/cstep.py --prior-study` found a pooled NIW prior of strength n₀ = 1000 predicts
s_{t+1} better than the reference's n₀ ≈ 1 that `TrainConfig.paper()` uses. This runs the paper
preset with n₀ = 1000 for a few iterations and evaluates against the tuned baselines like
`make train` does.

  .venv/bin/python experiments/ablation_dynamics_prior.py --iterations 6 --out results/ablation-prior1000
"""

import argparse
import dataclasses

from metaopt.training import job
from metaopt.training.gps_loop import TrainConfig


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--strength", type=float, default=1000.0)
    parser.add_argument("--out", default="results/ablation-prior1000")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    paper = job.get_train_config("paper")
    job.TRAIN_CONFIGS["ablation"] = dataclasses.replace(
        paper, train=TrainConfig.paper(dynamics_prior_strength=args.strength,
                                       iterations=args.iterations))
    job.run_train_job("ablation", args.out, resume=args.resume)


if __name__ == "__main__":
    main()
