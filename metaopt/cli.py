"""The ``metaopt`` command line: tune baselines, meta-train, evaluate a policy, re-plot a run.

  metaopt baselines --config paper --out results/baselines    # tune the hand-designed baselines
  metaopt train --config paper --out results/train [--resume]  # GPS meta-training + evaluation
  metaopt train --config paper --mesh --out results/train-tpu  # the same over every device
  metaopt eval --policy results/train/policy.metaopt           # a policy vs the baselines
  metaopt eval --policy pretrained --dataset fashion_mnist --out results/eval-fmnist
  metaopt plot results/train                                   # re-render a run's figures
  metaopt --version

`metaopt COMMAND --help` lists each command's options, with examples.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys
from pathlib import Path

from metaopt import __version__

_FORMATTER = argparse.RawDescriptionHelpFormatter


class _UsageError(Exception):
    """Bad input, found before any work: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # one line instead of argparse's usage block + message
        raise _UsageError(f"{self.prog}: error: {message} (see `{self.prog} --help`)")


# --- argument types: each rejects bad input at parse time with what is valid -------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _int_list(kind: str, minimum: int):
    def parse(text: str) -> tuple[int, ...]:
        items = [t.strip() for t in text.split(",")]
        try:
            values = tuple(int(t) for t in items)
        except ValueError:
            values = ()
        if not values or any(v < minimum for v in values):
            raise argparse.ArgumentTypeError(
                f"must be a comma-separated list of {kind} (e.g. {'100,101' if minimum == 0 else '48,48'}), "
                f"got {text!r}")
        return values

    return parse


def _dataset(text: str) -> str:
    from metaopt.data import available_datasets
    from metaopt.data.datasets import TFD_UNAVAILABLE

    key = text.strip().lower().replace("-", "_")
    if key == "tfd":
        raise argparse.ArgumentTypeError(TFD_UNAVAILABLE)
    if key not in available_datasets():
        raise argparse.ArgumentTypeError(
            f"unknown dataset {text!r}; choose one of {', '.join(available_datasets())}")
    return key


def _baseline_names(text: str) -> tuple[str, ...]:
    from metaopt.optimizers.baselines import BASELINES

    if text.strip().lower() == "none":
        return ()
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [n for n in names if n not in BASELINES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown baseline(s) {', '.join(map(repr, unknown)) or repr(text)}; choose from "
            f"{', '.join(BASELINES)} (comma-separated), or none")
    return names


# --- checks that need more than one argument, run before any work ------------------------------


def _check_out(path, flag: str = "--out", *, job: str | None = None) -> Path:
    """``path`` is, or can be created as, a folder this process may write in; with ``job``, one
    whose results.json (if any) is not the report of another kind of job (it would be replaced)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise _UsageError(f"{flag} {out} exists and is a file, not a folder: pass a folder path "
                          f"(new or existing), e.g. {flag} {out.parent / (out.stem or 'out')}-run")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise _UsageError(f"{flag} {out}: {existing} is a file, so no folder can be made under "
                          f"it: pass another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _UsageError(f"{flag} {out}: no permission to write in {existing}: pass a folder you "
                          f"can write, e.g. {flag} {Path.home() / 'metaopt-out'}")
    if job is not None and (out / "results.json").is_file():
        import json

        try:
            other = json.loads((out / "results.json").read_text()).get("meta", {}).get("job")
        except (OSError, ValueError, AttributeError):
            other = None
        if other is not None and other != job:
            raise _UsageError(f"{flag} {out} holds the report of a `metaopt {other}` run, which "
                              f"`metaopt {job}` would overwrite: pass another {flag}")
    return out


# --- commands -------------------------------------------------------------------------------------


def _baselines(args: argparse.Namespace) -> int:
    from metaopt.configs import get_config
    from metaopt.evaluation import baseline_suite
    from metaopt.evaluation.report import markdown_table

    config = get_config(args.config)
    _check_out(args.out, job="baselines")
    out = baseline_suite.run_baseline_suite(config, args.out)
    print(markdown_table(out["paths"]["csv"]))
    print(f"\nwrote {', '.join(str(p) for p in out['paths'].values())} "
          f"in {out['wall_time_s']:.0f} s")
    return 0


def _train(args: argparse.Namespace) -> int:
    from metaopt.training import job as train_job

    job = train_job.get_train_config(args.config)
    out_dir = _check_out(args.out, job="train")
    train_job.check_baselines_file(job)     # read after training: a bad report must fail now
    if args.mesh or args.distributed:
        from metaopt.training.mesh import initialize_distributed

        initialize_distributed(force=args.distributed)   # before any other JAX call
    from metaopt.evaluation.report import markdown_table

    out = train_job.run_train_job(args.config, args.out, resume=args.resume,
                                  iterations=args.iterations, mesh=args.mesh or args.distributed,
                                  samples_per_device=args.samples_per_device)
    if out["paths"] is None:    # not process 0: it writes and prints nothing
        return 0
    print(markdown_table(out["paths"]["csv"]))
    verdict = out["verdict"]
    print(f"\nlearned policy final {verdict['learned_final_mean']:.4f} vs best tuned baseline "
          f"{verdict['best_baseline']} {verdict['best_baseline_final_mean']:.4f}: "
          f"{'beats' if verdict['beats_every_baseline_at_final_step'] else 'does NOT beat'} "
          "every baseline at the last step")
    written = [Path(p) for p in out["paths"].values()]
    for name in ("policy.metaopt", "training_log.json", "training_log.png"):
        if out_dir / name not in written and (out_dir / name).exists():
            written.append(out_dir / name)
    print(f"wrote {', '.join(map(str, written))} in {out['wall_time_s']:.0f} s "
          f"(peak RSS {out['peak_rss_gb']:.2f} GB)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from metaopt.evaluation import eval_command as ev

    eval_every = args.eval_every or math.gcd(args.steps, 10)
    spec = ev.EvalSpec(
        dataset=args.dataset, input_dim=args.input_dim, hidden=args.hidden,
        batch_size=args.batch_size, num_steps=args.steps, eval_every=eval_every,
        seeds=args.seeds, baselines=args.baselines, tune=args.tune,
        tuning_seeds=args.tuning_seeds,
        baselines_file=args.baselines_file or ev.DEFAULT_BASELINES_FILE)
    try:
        ev.check_spec(spec)
    except ValueError as err:
        raise _UsageError(f"metaopt eval: error: {err}") from err
    _check_out(args.out, job="eval")
    plan = ev.resolve_baselines(spec, file_required=args.baselines_file is not None)
    theta, policy_info = ev.load_policy(args.policy)
    task = ev.eval_task(spec)     # loads the dataset: a missing one fails before any run
    print(f"metaopt eval: {plan['note']}", file=sys.stderr)
    from metaopt.evaluation.report import markdown_table

    out = ev.run_eval(theta, spec, args.out, plan=plan, policy_info=policy_info, task=task,
                      progress=lambda msg: print(f"metaopt eval: {msg}", file=sys.stderr))
    print(markdown_table(out["paths"]["csv"]))
    verdict = out["verdict"]
    if verdict["best_baseline"] is not None:
        print(f"\nlearned policy final {verdict['learned_final_mean']:.4f} vs best baseline "
              f"{verdict['best_baseline']} {verdict['best_baseline_final_mean']:.4f}: "
              f"{'beats' if verdict['beats_every_baseline_at_final_step'] else 'does NOT beat'} "
              "every baseline at the last step")
    print(f"wrote {', '.join(str(p) for p in out['paths'].values())} "
          f"in {out['wall_time_s']:.0f} s")
    return 0


def _plot(args: argparse.Namespace) -> int:
    import json

    run = Path(args.run_dir)
    if not run.is_dir():
        raise _UsageError(f"metaopt plot: error: RUN_DIR {run} is not a folder: pass the --out "
                          "folder of a metaopt train, baselines or eval run (e.g. results/train)")
    log_path, results_path = run / "training_log.json", run / "results.json"
    if not log_path.is_file() and not results_path.is_file():
        raise _UsageError(f"metaopt plot: error: {run} has neither training_log.json (written by "
                          "metaopt train) nor results.json (written by metaopt train, baselines "
                          "and eval): pass the --out folder of such a run")
    out = _check_out(args.out or run)
    entries = None
    if log_path.is_file():   # read and check both files before drawing either
        try:
            doc = json.loads(log_path.read_text())
            entries = doc["entries"] if isinstance(doc, dict) else doc
            if not isinstance(entries, list) or not entries:
                raise ValueError("no entries")
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{log_path} is not a metaopt training log (a JSON object whose "
                             f"'entries' list the GPS iterations): {err}") from err
    from metaopt.evaluation.eval_command import replot_curves
    from metaopt.training.job import plot_training_log

    out.mkdir(parents=True, exist_ok=True)
    written = []
    if entries is not None:
        try:
            plot_training_log(out / "training_log.png", entries,
                              chosen_iteration=_chosen_iteration(run))
        except (KeyError, TypeError) as err:
            raise ValueError(f"{log_path}: an entry lacks the field {err} (or holds a value of "
                             "another type) that the training-log plot reads") from err
        written.append(out / "training_log.png")
    if results_path.is_file():
        written.append(replot_curves(results_path, out / "curves.png"))
    print(f"wrote {', '.join(map(str, written))}")
    return 0


def _chosen_iteration(run: Path) -> int | None:
    """k of the shipped policy's label "iteration k" (``select_policy``), as the run recorded it."""
    from metaopt.training.job import iteration_number, shipped_choice

    label, _ = shipped_choice(run)
    return None if label is None else iteration_number(label)


# --- parser ---------------------------------------------------------------------------------------

_BASELINES_EPILOG = """examples:
  metaopt baselines --config paper --out results/baselines   # the paper's task, ~5 min on 2 cores
  metaopt baselines --config quick --out /tmp/baselines       # seconds: 8x8 digits, 60 steps
"""

_TRAIN_EPILOG = """examples:
  metaopt train --config paper --out results/train            # needs results/baselines first
  metaopt train --config paper --out results/train --resume --iterations 8
  metaopt train --config quick --out /tmp/train               # a CPU smoke run
  metaopt train --config paper --mesh --out results/train-tpu

writes OUT/policy.metaopt (the chosen policy, for metaopt.load or `metaopt eval --policy`),
OUT/results.json, summary.csv, curves.png, training_log.json, training_log.png,
OUT/policies/iter_NNN.metaopt and OUT/checkpoints/.
"""

_EVAL_EPILOG = """examples:
  # the train job's held-out evaluation, again (the defaults are the paper's training task)
  metaopt eval --policy results/train/policy.metaopt --out results/eval
  # the shipped policy on another dataset and a wider net (Fig. 2's task)
  metaopt eval --policy pretrained --dataset fashion_mnist --input-dim 100 --hidden 200
  # a quick look: 8x8 digits, two baselines tuned on this task
  metaopt eval --dataset digits --input-dim 8 --hidden 8 --steps 100 --seeds 100,101 \\
      --baselines sgd,adam --tune --out /tmp/eval

baseline hyperparameters: by default those in --baselines-file (results/baselines/results.json,
written by `metaopt baselines --config paper`), kept as tuned there even when this task differs
(the paper's protocol; a cosine schedule's horizon is set to --steps). If that default file does
not exist, or with --tune, each baseline is grid-searched on this task over --tuning-seeds
(never the evaluation --seeds). The note printed first says which was used.

writes OUT/results.json (curves, summaries, hyperparameters, verdict), OUT/summary.csv and
OUT/curves.png, and prints the summary as a Markdown table.
"""

_PLOT_EPILOG = """examples:
  metaopt plot results/train              # training_log.png and curves.png
  metaopt plot results/baselines          # curves.png
  metaopt plot results/train --out /tmp/figs
"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="metaopt", description=__doc__, formatter_class=_FORMATTER)
    parser.add_argument("--version", action="version", version=f"metaopt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("baselines", help="tune the hand-designed baselines and write their curves",
                       description="Tune every hand-designed baseline on a config's task (grid "
                                   "search on tuning seeds), re-run the best setting on held-out "
                                   "seeds, write results.json, summary.csv and curves.png.",
                       epilog=_BASELINES_EPILOG, formatter_class=_FORMATTER)
    p.add_argument("--config", default="paper",
                   help="a name in metaopt.configs.CONFIGS: paper or quick (default: paper)")
    p.add_argument("--out", default="results/baselines", help="output folder (default: %(default)s)")
    p.set_defaults(run=_baselines)

    p = sub.add_parser("train", help="meta-train the LSTM optimizer by GPS, then evaluate it "
                                     "against the tuned baselines",
                       description="Meta-train the LSTM optimizer by guided policy search with a "
                                   "checkpoint per iteration, pick the policy on the tuning seeds, "
                                   "and evaluate it against the tuned baselines on held-out seeds.",
                       epilog=_TRAIN_EPILOG, formatter_class=_FORMATTER)
    p.add_argument("--config", default="paper",
                   help="a name in metaopt.training.job.TRAIN_CONFIGS: paper or quick "
                        "(default: paper)")
    p.add_argument("--out", default="results/train",
                   help="output folder (checkpoints, policy, report; default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint under OUT/checkpoints")
    p.add_argument("--iterations", type=_positive_int, default=None,
                   help="GPS iterations, >= 1 (default: the config's); with --resume, stop there")
    p.add_argument("--mesh", action="store_true",
                   help="split samples and S-step minibatches over every visible device; N and "
                        "the S-step minibatch grow with the device count")
    p.add_argument("--samples-per-device", type=_positive_int, default=None,
                   help="with --mesh: N = this × device count (default: the config's N)")
    p.add_argument("--distributed", action="store_true",
                   help="several hosts: jax.distributed.initialize() with cluster auto-detection "
                        "(TPU pods, SLURM); implies --mesh. Automatic with --mesh when "
                        "JAX_COORDINATOR_ADDRESS is set")
    p.set_defaults(run=_train)

    p = sub.add_parser("eval", help="run a policy file (or the shipped one) and baselines on a "
                                    "task; write JSON, CSV and a plot",
                       description="Run the deterministic mean of a learned policy "
                                   "(metaopt.learned_opt) and hand-designed baselines on one MLP "
                                   "task over held-out seeds; the true objective is measured on "
                                   "the whole training split, as in `metaopt train`.",
                       epilog=_EVAL_EPILOG, formatter_class=_FORMATTER)
    p.add_argument("--policy", default="pretrained",
                   help="a policy file written by metaopt.save (e.g. results/train/policy.metaopt),"
                        " `pretrained` for the shipped policy, learned_opt()'s default (default; "
                        "`scale-free` is another name for it) or `paper-lstm` for the paper's "
                        "GPS-trained LSTM shipped in the package")
    p.add_argument("--dataset", type=_dataset, default="mnist",
                   help="mnist, fashion_mnist, digits (offline), cifar10, cifar100 (if TFDS has "
                        "them prepared); default: %(default)s")
    p.add_argument("--input-dim", type=_positive_int, default=48,
                   help="inputs are a fixed random projection of the pixels to this many dims "
                        "(default: %(default)s)")
    p.add_argument("--hidden", type=_int_list("positive widths", 1), default=(48,),
                   help="hidden widths, comma-separated (default: 48; the net is "
                        "INPUT_DIM-HIDDEN-classes)")
    p.add_argument("--batch-size", type=_positive_int, default=64,
                   help="minibatch of the training objective (default: %(default)s)")
    p.add_argument("--steps", type=_positive_int, default=400,
                   help="optimizer steps per run (default: %(default)s)")
    p.add_argument("--eval-every", type=_positive_int, default=None,
                   help="true-objective period; must divide --steps (default: 10, or gcd(steps, "
                        "10) when 10 does not divide it)")
    p.add_argument("--seeds", type=_int_list("non-negative integers", 0),
                   default=(100, 101, 102, 103, 104),
                   help="held-out seeds of initialisation and minibatch order (default: 100-104)")
    p.add_argument("--baselines", type=_baseline_names, default=None,
                   help="comma-separated baselines, or none (default: every one in the "
                        "baselines file, or all when tuning)")
    p.add_argument("--tune", action="store_true",
                   help="tune the baselines on this task over --tuning-seeds instead of reading "
                        "--baselines-file")
    p.add_argument("--tuning-seeds", type=_int_list("non-negative integers", 0),
                   default=(0, 1, 2, 3, 4), help="with --tune (default: 0-4)")
    p.add_argument("--baselines-file", default=None,
                   help="a `metaopt baselines` results.json (default: "
                        "results/baselines/results.json if it exists, else tune)")
    p.add_argument("--out", default="results/eval", help="output folder (default: %(default)s)")
    p.set_defaults(run=_eval)

    p = sub.add_parser("plot", help="re-render a run folder's figures from its JSON files",
                       description="Re-render training_log.png (from training_log.json) and "
                                   "curves.png (from results.json) of a run folder.",
                       epilog=_PLOT_EPILOG, formatter_class=_FORMATTER)
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of a metaopt run")
    p.add_argument("--out", default=None, help="where to write the PNGs (default: RUN_DIR)")
    p.set_defaults(run=_plot)
    return parser


_OS_FIXES = {
    errno.ENOENT: "check that the path exists",
    errno.EACCES: "pass a path you can write (e.g. another --out) or fix its permissions",
    errno.EPERM: "pass a path you can write (e.g. another --out) or fix its permissions",
    errno.EROFS: "the file system is read-only: pass another --out",
    errno.ENOSPC: "free some disk space or pass an --out on another disk",
    errno.EDQUOT: "free some disk space or pass an --out on another disk",
    errno.ENOTDIR: "a part of the path is a file, not a folder: pass another path",
    errno.EISDIR: "the path is a folder where a file was expected: pass a file",
    errno.EEXIST: "remove it or pass another path",
}


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _os_error(err: OSError) -> str:
    if err.strerror is None:       # raised with a message of ours (e.g. a missing report)
        return _one_line(str(err))
    where = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
    fix = _OS_FIXES.get(err.errno, "check the path, its permissions and the free disk space")
    return f"{err.strerror}{': ' + where if where else ''} ({fix})"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as err:
        print(_one_line(str(err)), file=sys.stderr)
        return 2
    except SystemExit as done:          # --help, --version
        return done.code if isinstance(done.code, int) else 0
    from metaopt.data import ChecksumError, DatasetUnavailableError

    prefix = f"metaopt {args.command}: error:"
    try:
        return args.run(args)
    except _UsageError as err:
        message = str(err)
        print(_one_line(message if message.startswith("metaopt") else f"{prefix} {message}"),
              file=sys.stderr)
    except (ValueError, DatasetUnavailableError, ChecksumError) as err:
        # Bad input (unknown config, corrupt policy or data): one clear line, no traceback.
        print(f"{prefix} {_one_line(str(err))}", file=sys.stderr)
    except OSError as err:
        print(f"{prefix} {_os_error(err)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
