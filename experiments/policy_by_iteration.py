"""Held-out quality of every GPS iteration's policy of a `metaopt train` run (diagnostic).

Runs each ``<run>/policies/iter_NNN.metaopt`` through ``learned_opt`` on the run's held-out
seeds (true objective on the whole training split, as the run's own evaluation), and plots the
final objective per iteration against the tuned baselines of ``<run>/results.json``.

Which iteration the run shipped (``<run>/policy.metaopt``) is read from the run, not assumed:
``metaopt train`` ships the iteration ``select_policy`` chose (lowest mean final f on the
*tuning* seeds), recorded as ``"chosen"`` in policy.metaopt's metadata and in results.json's
``meta.policy``; for runs older than that, the iteration file with the same weights. The
script marks that iteration, and the one whose weights ``metaopt.pretrained.paper_lstm()`` ships
if it is from this run. Choosing the shipped policy on the numbers printed here would be choosing on test
seeds: this script only shows the trajectory of meta-training.

  .venv/bin/python experiments/policy_by_iteration.py results/train
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from metaopt.serialization import PolicyFileError, read_header
from metaopt.training.job import iteration_number, shipped_choice


def _iteration_of(name: str) -> int:
    """``iter_002.metaopt`` → 2."""
    return int(re.fullmatch(r"iter_(\d+)\.metaopt", name).group(1))


def _digest(path: Path) -> str | None:
    try:
        return read_header(path).get("payload_sha256")
    except (OSError, PolicyFileError):
        return None


def shipped_policy(run: str | Path, package_asset: str | Path | None = None) -> dict:
    """Which ``policies/iter_NNN.metaopt`` the run shipped as ``policy.metaopt``, and how we know.

    Looks, in order, at policy.metaopt's metadata ``"chosen"`` (e.g. "iteration 2", the label
    ``select_policy`` gave it), results.json's ``meta.policy.chosen``, and the iteration file whose
    weights equal policy.metaopt's. ``package_asset`` (default: ``metaopt.pretrained``'s file): the
    iteration file of this run with the same weights, if any.

    Returns:
      ``{"iteration": k or None, "file": "iter_00k.metaopt" or None, "chosen": label,
      "source": how it was found, "selection": the rule recorded by the run, "weights_match":
      [iteration files with policy.metaopt's weights], "last_iteration": the highest iter file,
      "package_asset_iteration": k or None}``.
    """
    run = Path(run)
    files = sorted((run / "policies").glob("iter_*.metaopt"), key=lambda p: _iteration_of(p.name))
    digests = {p.name: _digest(p) for p in files}
    info = {"iteration": None, "file": None, "chosen": None, "source": None, "selection": None,
            "weights_match": [],
            "last_iteration": _iteration_of(files[-1].name) if files else None,
            "package_asset_iteration": None}
    policy = run / "policy.metaopt"
    if policy.is_file():
        try:
            header = read_header(policy)
        except PolicyFileError:
            header = {}
        metadata = header.get("metadata") or {}
        info["selection"] = metadata.get("selection")
        digest = header.get("payload_sha256")
        info["weights_match"] = [n for n, d in digests.items() if d is not None and d == digest]
    info["chosen"], info["source"] = shipped_choice(run)
    if info["chosen"] is not None:
        info["iteration"] = iteration_number(info["chosen"])
    elif info["weights_match"]:
        info["iteration"] = _iteration_of(info["weights_match"][-1])
        info["source"] = f"policy.metaopt has the weights of policies/{info['weights_match'][-1]}"
    if info["iteration"] is not None:
        info["file"] = f"iter_{info['iteration']:03d}.metaopt"
    if package_asset is None:
        from metaopt.pretrained import paper_lstm_path

        package_asset = paper_lstm_path()
    asset = _digest(Path(package_asset)) if Path(package_asset).is_file() else None
    same = [n for n, d in digests.items() if asset is not None and d == asset]
    info["package_asset_iteration"] = _iteration_of(same[-1]) if same else None
    return info


def describe(shipped: dict, eval_seeds) -> str:
    """The ``note`` of heldout_per_iteration.json: what the numbers are and what was shipped."""
    note = (f"diagnostic only: held-out seeds {list(eval_seeds)}, true objective on the whole "
            "training split. ")
    k = shipped["iteration"]
    if k is None:
        note += ("Which iteration this run shipped is not recorded (no 'chosen' in policy.metaopt's "
                 "metadata or results.json, and no iteration file with policy.metaopt's weights).")
    elif shipped["chosen"] is not None:
        rule = shipped["selection"] or "lowest mean final f on the tuning seeds"
        note += (f"The run shipped {shipped['chosen']} (policies/{shipped['file']}) as "
                 f"policy.metaopt, chosen by select_policy: {rule}. These held-out numbers "
                 "played no part in the choice.")
    else:
        last = " (the last iteration)" if k == shipped["last_iteration"] else ""
        note += (f"policy.metaopt has the weights of policies/{shipped['file']}{last}: this run "
                 "recorded no choice (it predates select_policy) and these held-out numbers played no "
                 "part in it.")
    if shipped["package_asset_iteration"] is not None:
        note += (f" metaopt.pretrained.paper_lstm() ships the weights of this run's "
                 f"policies/iter_{shipped['package_asset_iteration']:03d}.metaopt.")
    return note


def plot(path, rows: dict[str, dict], baselines: dict[str, float], shipped: dict, horizon: int):
    """Final f per iteration (mean ± std over the held-out seeds), the shipped iteration marked,
    the best four tuned baselines as lines. Returns the saved Figure."""
    from metaopt.evaluation.report import (
        fit_suptitle,
        log_scale_helps,
        new_figure,
        set_iteration_ticks,
    )

    iterations = [_iteration_of(name) for name in rows]
    means = np.asarray([r["final_mean"] for r in rows.values()], np.float64)
    stds = np.asarray([r["final_std"] for r in rows.values()], np.float64)
    fig = new_figure(figsize=(7.5, 5.2))
    ax = fig.subplots()
    ax.errorbar(iterations, means, stds, fmt="o-", color="black", lw=2, capsize=3,
                label="learned (GPS), π mean", zorder=5)
    k = shipped.get("iteration")
    if k in iterations:
        ax.axvline(k, color="gold", lw=8, alpha=0.45, zorder=0, gid="shipped",
                   label=f"shipped: {shipped.get('chosen') or f'iteration {k}'} (policy.metaopt)")
        ax.plot([k], [means[iterations.index(k)]], "*", color="darkgoldenrod", ms=18, zorder=6)
    asset = shipped.get("package_asset_iteration")
    if asset in iterations and asset != k:
        ax.axvline(asset, color="tab:purple", lw=1.5, ls=":", gid="package-asset",
                   label=f"metaopt.pretrained.paper_lstm() = iter_{asset:03d}")
    best = sorted(baselines.items(), key=lambda kv: kv[1])[:4]
    for (name, value), color in zip(best, ("tab:blue", "tab:orange", "tab:green", "tab:cyan"),
                                    strict=False):
        ax.axhline(value, ls="--", lw=1, label=f"{name} (tuned)", color=color)
    log = log_scale_helps(means, [v for _, v in best])
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("GPS iteration k (the policy file policies/iter_<k>.metaopt)")
    ax.set_ylabel(f"final true objective f(x_{horizon}), held-out seeds" + (" (log)" if log else ""))
    set_iteration_ticks(ax, iterations)
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: not labels[i].startswith("learned"))
    fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside lower center",
               fontsize=8, ncol=2)
    fit_suptitle(fig, "held-out seeds: the policy after each GPS iteration"
                 + (f"\nshipped: {shipped.get('chosen') or f'iteration {k}'} "
                    f"({shipped.get('source')})" if k is not None else ""), fontsize=11)
    fig.savefig(path, dpi=110)
    return fig


def main(argv=None):
    from metaopt.evaluation.report import summarize
    from metaopt.evaluation.tuning import run_grid
    from metaopt.evaluation.unroll import eval_steps
    from metaopt.learned_optimizer import learned_opt
    from metaopt.serialization import load
    from metaopt.training import job

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="output directory of `metaopt train`")
    parser.add_argument("--config", default="paper", help="the run's train config name")
    args = parser.parse_args(argv)
    run = Path(args.run)
    train_job = job.get_train_config(args.config)
    config = train_job.train
    task = job.evaluation_task(config)
    shipped = shipped_policy(run)
    print(describe(shipped, train_job.eval_seeds), flush=True)
    rows = {}
    for path in sorted((run / "policies").glob("iter_*.metaopt"), key=lambda p: _iteration_of(p.name)):
        theta = load(path)
        curves = run_grid(lambda theta=theta: learned_opt(theta), [{}], task,
                          train_job.eval_seeds, num_steps=config.horizon,
                          eval_every=train_job.eval_every)[0]
        rows[path.name] = summarize(curves, eval_steps(config.horizon, train_job.eval_every))
        rows[path.name]["shipped"] = path.name == shipped["file"]
        print(path.name, rows[path.name], flush=True)
    baselines = {}
    results = run / "results.json"
    if results.exists():
        doc = json.loads(results.read_text())
        baselines = {name: row["final_mean"] for name, row in doc["optimizers"].items()
                     if name != job.LEARNED and "final_mean" in row}
    out = {"note": describe(shipped, train_job.eval_seeds), "shipped": shipped,
           "eval_seeds": list(train_job.eval_seeds), "policies": rows,
           "baselines_final_mean": baselines,
           "command": f"python experiments/policy_by_iteration.py {args.run} --config {args.config}"}
    (run / "heldout_per_iteration.json").write_text(json.dumps(out, indent=1))
    plot(run / "heldout_per_iteration.png", rows, baselines, shipped, config.horizon)
    return out


if __name__ == "__main__":
    main()
