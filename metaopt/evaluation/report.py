"""Results files: a JSON with everything, a CSV summary table and a PNG of objective vs iteration.

Example::

  write_report("results/baselines", curves={"adam": (5, 41) array, ...}, steps=[0, 10, ...],
               details={"adam": {"hyperparams": {...}}}, meta={"task": "..."})
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def summarize(curve: np.ndarray, steps: Sequence[int]) -> dict[str, float]:
    """Final value and area under the curve (≈ Σ_t f(x_t), the meta-loss), mean and std over seeds.

    Args:
      curve: ``(num_seeds, num_evals)`` true objective.
      steps: the iteration of each column.
    """
    curve = np.asarray(curve, np.float64)
    auc = np.trapezoid(curve, np.asarray(steps, np.float64), axis=-1)
    return {
        "final_mean": float(curve[:, -1].mean()),
        "final_std": float(curve[:, -1].std()),
        "auc_mean": float(auc.mean()),
        "auc_std": float(auc.std()),
        "diverged_seeds": int((~np.isfinite(curve[:, -1])).sum()),
    }


def machine_description() -> str:
    """CPU model, visible cores, jax version and devices: named next to every figure we report."""
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    kinds = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return (f"{cpu}, {os.cpu_count()} CPU cores visible, jax {jax.__version__} on {kinds}, "
            f"{jax.device_count()} device(s)")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def plot_curves(path: str | os.PathLike, curves: Mapping[str, np.ndarray], steps: Sequence[int],
                title: str) -> None:
    """Mean ± std band of the true objective over seeds, log y."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in curves.items():
        curve = np.asarray(curve, np.float64)
        mean, std = curve.mean(0), curve.std(0)
        (line,) = ax.plot(steps, mean, label=name, lw=1.6)
        lower = np.maximum(mean - std, np.nanmin(curve[np.isfinite(curve)]) * 0.5
                           if np.isfinite(curve).any() else 1e-12)
        ax.fill_between(steps, lower, mean + std, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("true objective f(x_t)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    out_dir: str | os.PathLike,
    *,
    curves: Mapping[str, np.ndarray],
    steps: Sequence[int],
    details: Mapping[str, Mapping[str, Any]],
    meta: Mapping[str, Any],
    title: str,
) -> dict[str, Path]:
    """Writes ``results.json``, ``summary.csv`` and ``curves.png`` into ``out_dir``.

    Args:
      curves: optimizer name → ``(num_seeds, num_evals)`` true objective.
      steps: the iteration of each column of the curves.
      details: optimizer name → extra JSON-able facts (hyperparameters, grid scores, …).
      meta: facts about the run (task, seeds, timing, …); machine and commit are added.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    optimizers = {}
    for name, curve in curves.items():
        optimizers[name] = {**summarize(curve, steps), **details.get(name, {}),
                            "true_loss": np.asarray(curve, np.float64).tolist()}
    doc = {"meta": {**meta, "machine": machine_description(), "commit": git_commit()},
           "eval_steps": list(map(int, steps)), "optimizers": optimizers}
    paths = {"json": out / "results.json", "csv": out / "summary.csv", "png": out / "curves.png"}
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=True))
    os.replace(tmp, paths["json"])
    with open(paths["csv"], "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["optimizer", "hyperparams", "final_mean", "final_std", "auc_mean",
                         "auc_std", "diverged_seeds"])
        for name, row in sorted(optimizers.items(), key=lambda kv: _sort_key(kv[1]["final_mean"])):
            writer.writerow([name, json.dumps(row.get("hyperparams", {})),
                             f"{row['final_mean']:.6g}", f"{row['final_std']:.3g}",
                             f"{row['auc_mean']:.6g}", f"{row['auc_std']:.3g}",
                             row["diverged_seeds"]])
    plot_curves(paths["png"], curves, steps, title)
    return paths


def _sort_key(x: float) -> float:
    return x if np.isfinite(x) else np.inf


def markdown_table(summary_csv: str | os.PathLike) -> str:
    """The CSV summary as a Markdown table (for README and RESULTS.md)."""
    with open(summary_csv) as fh:
        rows = list(csv.reader(fh))
    head, body = rows[0], rows[1:]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)
