"""The ``metaopt`` command line: ``metaopt baselines --config paper --out results/baselines``."""

from __future__ import annotations

import argparse
import sys


def _baselines(args: argparse.Namespace) -> int:
    from metaopt.configs import get_config
    from metaopt.evaluation.baseline_suite import run_baseline_suite
    from metaopt.evaluation.report import markdown_table

    config = get_config(args.config)
    out = run_baseline_suite(config, args.out)
    print(markdown_table(out["paths"]["csv"]))
    print(f"\nwrote {', '.join(str(p) for p in out['paths'].values())} "
          f"in {out['wall_time_s']:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metaopt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("baselines", help="tune the hand-designed baselines and write their curves")
    p.add_argument("--config", default="paper", help="a name in metaopt.configs.CONFIGS")
    p.add_argument("--out", default="results/baselines", help="output folder")
    p.set_defaults(run=_baselines)
    args = parser.parse_args(argv)
    from metaopt.data import ChecksumError, DatasetUnavailableError

    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, DatasetUnavailableError, ChecksumError) as err:
        # Bad input (unknown config or dataset, missing or corrupt data): one clear line, no traceback.
        print(f"metaopt {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
