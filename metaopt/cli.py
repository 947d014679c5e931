"""The ``metaopt`` command line.

  metaopt baselines --config paper --out results/baselines   # tune the hand-designed baselines
  metaopt train --config paper --out results/train [--resume]  # GPS meta-training + evaluation
  metaopt train --config paper --mesh --out results/train-tpu  # the same over every device
"""

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


def _train(args: argparse.Namespace) -> int:
    if args.mesh or args.distributed:
        from metaopt.training.mesh import initialize_distributed

        initialize_distributed(force=args.distributed)   # before any other JAX call
    from metaopt.evaluation.report import markdown_table
    from metaopt.training.job import run_train_job

    out = run_train_job(args.config, args.out, resume=args.resume, iterations=args.iterations,
                        mesh=args.mesh or args.distributed,
                        samples_per_device=args.samples_per_device)
    if out["paths"] is None:    # not process 0: it writes and prints nothing
        return 0
    print(markdown_table(out["paths"]["csv"]))
    verdict = out["verdict"]
    print(f"\nlearned policy final {verdict['learned_final_mean']:.4f} vs best tuned baseline "
          f"{verdict['best_baseline']} {verdict['best_baseline_final_mean']:.4f}: "
          f"{'beats' if verdict['beats_every_baseline_at_final_step'] else 'does NOT beat'} "
          "every baseline at the last step")
    print(f"wrote {', '.join(str(p) for p in out['paths'].values())} in {out['wall_time_s']:.0f} s "
          f"(peak RSS {out['peak_rss_gb']:.2f} GB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metaopt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("baselines", help="tune the hand-designed baselines and write their curves")
    p.add_argument("--config", default="paper", help="a name in metaopt.configs.CONFIGS")
    p.add_argument("--out", default="results/baselines", help="output folder")
    p.set_defaults(run=_baselines)
    p = sub.add_parser("train", help="meta-train the LSTM optimizer by GPS, then evaluate it "
                                     "against the tuned baselines")
    p.add_argument("--config", default="paper", help="a name in metaopt.training.job.TRAIN_CONFIGS")
    p.add_argument("--out", default="results/train", help="output folder (checkpoints, policy, report)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint under OUT/checkpoints")
    p.add_argument("--iterations", type=int, default=None,
                   help="GPS iterations (default: the config's); with --resume, stop there")
    p.add_argument("--mesh", action="store_true",
                   help="split samples and S-step minibatches over every visible device; N and "
                        "the S-step minibatch grow with the device count")
    p.add_argument("--samples-per-device", type=int, default=None,
                   help="with --mesh: N = this × device count (default: the config's N)")
    p.add_argument("--distributed", action="store_true",
                   help="several hosts: jax.distributed.initialize() with cluster auto-detection "
                        "(TPU pods, SLURM); implies --mesh. Automatic with --mesh when "
                        "JAX_COORDINATOR_ADDRESS is set")
    p.set_defaults(run=_train)
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
