"""Tune the seven hand-designed baselines on the paper's training objective (thin main).

  .venv/bin/python experiments/baselines.py --config paper --out results/baselines

Configurations live in `metaopt/configs.py`; this is the same job as `metaopt baselines`.
"""

import argparse

from metaopt.configs import get_config
from metaopt.evaluation.baseline_suite import run_baseline_suite
from metaopt.evaluation.report import markdown_table


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="paper")
    parser.add_argument("--out", default="results/baselines")
    args = parser.parse_args()
    out = run_baseline_suite(get_config(args.config), args.out)
    print(markdown_table(out["paths"]["csv"]))
    print(f"wall time {out['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
