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
    """The commit of the metaopt source that runs (looked up next to the package, not in the
    working directory, so a run started elsewhere still records it), or the installed version."""
    import metaopt

    where = os.path.dirname(os.path.abspath(metaopt.__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True, cwd=where)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, cwd=where).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"metaopt {metaopt.__version__} (not a git checkout)"


LEARNED_PREFIX = "learned"   # curves whose name starts so (learned_gps, learned_l2l) are drawn on top
# Learned optimizers in black / red, baselines in the other nine tab10 colours (no red among them).
LEARNED_COLORS = ("black", "tab:red", "gold")
BASELINE_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink",
                   "tab:gray", "tab:olive", "tab:cyan")


def new_figure(**kwargs):
    """A matplotlib Figure with an Agg canvas and constrained layout, outside pyplot (no global
    state, nothing to close; ``fig.savefig`` writes it, ``fig.canvas.draw()`` lays it out)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def log_scale_helps(*series, min_ratio: float = 10.0) -> bool:
    """Whether a log axis suits these values: every finite one is positive and together they span
    at least ``min_ratio`` (a decade). False when there is no finite value (all NaN, empty)."""
    values = np.concatenate([np.ravel(np.asarray(s, np.float64)) for s in series] or [[]])
    values = values[np.isfinite(values)]
    if values.size == 0 or np.any(values <= 0):
        return False
    return bool(values.max() / values.min() >= min_ratio)


def set_iteration_ticks(ax, iterations, *, max_explicit: int = 15) -> None:
    """Integer ticks on ``ax``'s x axis: one at each iteration when there are at most
    ``max_explicit`` (with half an iteration of margin: a 1-entry log gets the single tick 0, not
    matplotlib's -0.04 … 0.04), else an integer locator."""
    from matplotlib.ticker import MaxNLocator

    xs = sorted({int(x) for x in iterations})
    if not xs:
        return
    if len(xs) <= max_explicit:
        ax.set_xticks(xs)
        ax.set_xlim(xs[0] - 0.5, xs[-1] + 0.5)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def fit_suptitle(fig, text: str, *, fontsize: float = 11, margin: float = 0.97):
    """``fig.suptitle(text)``, re-wrapped until it is at most ``margin`` of the figure's width
    (constrained layout then makes room for its lines above the panels). Returns the Text."""
    import textwrap

    title = fig.suptitle(text, fontsize=fontsize)
    renderer = fig.canvas.get_renderer()
    for _ in range(8):
        width = title.get_window_extent(renderer).width
        if width <= margin * fig.bbox.width:
            break
        longest = max(len(line) for line in title.get_text().splitlines())
        chars = max(16, int(longest * margin * fig.bbox.width / width) - 2)
        title.set_text("\n".join(textwrap.fill(line, chars) for line in text.splitlines()))
    return title


def learned_policy_label(meta: Mapping[str, Any] | None) -> str | None:
    """Which learned policy a report shows, from its ``meta["policy"]``: ``"label"`` verbatim; a
    training run's ``"chosen"`` (``select_policy``'s label, e.g. "iteration 2") as "shipped policy:
    iteration 2 of 6"; an eval's ``"source"`` (``"pretrained"`` or a file). None if unknown."""
    policy = (meta or {}).get("policy") or {}
    if not isinstance(policy, Mapping):
        return str(policy)
    if policy.get("label"):
        return str(policy["label"])
    if policy.get("chosen"):
        iterations = (meta or {}).get("iterations")
        return f"shipped policy: {policy['chosen']}" + (f" of {iterations}" if iterations else "")
    source = policy.get("source")
    if source:
        shipped = {"pretrained": "metaopt.pretrained()",
                   "scale-free": "metaopt.pretrained.scale_free()",
                   "paper-lstm": "metaopt.pretrained.paper_lstm()"}
        return shipped.get(source) or f"policy {Path(os.fspath(source)).name}"
    return None


def curve_colors(names: Sequence[str], highlight: Sequence[str]) -> dict[str, str | None]:
    """Name → colour: highlighted (learned) ones black, red, …; the others from the nine
    non-red tab10 colours (None, the default cycle, past them)."""
    learned, baselines = iter(LEARNED_COLORS), iter(BASELINE_COLORS)
    return {name: next(learned if name in highlight else baselines, None) for name in names}


def curves_figure(curves: Mapping[str, np.ndarray], steps: Sequence[int], title: str, *,
                  labels: Mapping[str, str] | None = None, highlight: Sequence[str] | None = None,
                  zoom: bool = True):
    """The figure ``plot_curves`` saves: mean ± std band of the true objective over seeds.

    Left: the whole run (log y when the means span a decade and are positive). Right (``zoom``,
    with at least 4 evaluations): the last half of the run on its own y range, where the
    optimizers' final values are told apart. ``highlight`` (default: names starting with
    "learned") are drawn thick and on top; ``labels`` renames legend entries. The legend is outside
    the panels (below them), so it hides no curve.

    Returns:
      the ``matplotlib.figure.Figure`` (Agg canvas, constrained layout).
    """
    labels = dict(labels or {})
    highlight = ([n for n in curves if n.startswith(LEARNED_PREFIX)] if highlight is None
                 else list(highlight))
    steps = np.asarray(steps, np.float64)
    zoom = zoom and len(steps) >= 4
    fig = new_figure(figsize=(12.0 if zoom else 7.5, 6.0))
    axes = fig.subplots(1, 2 if zoom else 1, squeeze=False)[0]
    stats, colors = {}, curve_colors(list(curves), highlight)
    for name, curve in curves.items():
        curve = np.asarray(curve, np.float64).reshape(-1, len(steps))
        with np.errstate(invalid="ignore", over="ignore"):   # a diverged seed: NaN mean, a gap
            stats[name] = (curve.mean(0), curve.std(0))
    num_seeds = max((np.asarray(c).reshape(-1, len(steps)).shape[0] for c in curves.values()),
                    default=0)
    means = [m for m, _ in stats.values()]
    first = int(len(steps) // 2) if zoom else 0
    panels = [(axes[0], slice(None), "whole run")]
    if zoom:
        panels.append((axes[1], slice(first, None),
                       f"last half (iterations {int(steps[first])}–{int(steps[-1])}), zoomed"))
    for ax, window, subtitle in panels:
        window_means = [m[window] for m in means]
        log = log_scale_helps(*window_means)
        for name, (mean, std) in stats.items():
            strong = name in highlight
            x, m, s = steps[window], mean[window], std[window]
            (line,) = ax.plot(x, m, label=labels.get(name, name), color=colors[name],
                              lw=2.8 if strong else 1.3, zorder=5 if strong else 2,
                              alpha=1.0 if strong else 0.85)
            lower = m - s
            if log:   # a band below 0 is not drawable on a log axis: clip at half the mean
                lower = np.where(lower > 0, lower, m * 0.5)
            ax.fill_between(x, lower, m + s, color=line.get_color(), alpha=0.18 if strong else 0.1,
                            lw=0, zorder=4 if strong else 1)
        if log:
            ax.set_yscale("log")
        if window != slice(None):
            # the range of the means over the window, up to their 95th percentile: a diverging
            # baseline leaves the zoom panel instead of flattening everyone else
            finite = np.concatenate([w[np.isfinite(w)] for w in window_means] or [[]])
            if finite.size:
                lo, hi = float(finite.min()), float(np.percentile(finite, 95))
                pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 1.0
                ax.set_ylim(lo - pad if not log else lo / 1.1, hi + pad if not log else hi * 1.1)
            ax.set_xlim(steps[first], steps[-1])
        ax.set_xlabel("iteration t")
        ax.set_ylabel("true objective f(x_t)" + (" (log scale)" if log else ""))
        ax.set_title(subtitle, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", fontsize=8, ncol=min(len(names), 4),
               title=f"mean ± std over {num_seeds} seed(s)", title_fontsize=8)
    fit_suptitle(fig, title, fontsize=11)
    return fig


def plot_curves(path: str | os.PathLike, curves: Mapping[str, np.ndarray], steps: Sequence[int],
                title: str, *, meta: Mapping[str, Any] | None = None,
                labels: Mapping[str, str] | None = None,
                highlight: Sequence[str] | None = None):
    """Writes ``curves_figure`` to ``path`` (PNG) and returns the figure.

    ``meta`` (a report's meta dict): the learned policy it names (``learned_policy_label``, e.g.
    the training run's shipped iteration) goes into the learned curves' legend labels and, on its
    own line, the title.
    """
    labels = dict(labels or {})
    shown = learned_policy_label(meta)
    if shown:
        learned = [n for n in curves if n.startswith(LEARNED_PREFIX)]
        for name in learned:
            labels.setdefault(name, f"{name} ({shown})")
        policy = (meta or {}).get("policy") or {}
        why = (f", chosen on tuning seeds {list(policy['tuning_seeds'])}"
               if isinstance(policy, Mapping) and policy.get("tuning_seeds") else "")
        if learned:
            title = f"{title}\n{', '.join(learned)} = {shown}{why}"
    fig = curves_figure(curves, steps, title, labels=labels, highlight=highlight)
    fig.savefig(path, dpi=120)
    return fig


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
      meta: facts about the run (task, seeds, timing, …); machine and commit are added. Its
        ``"policy"`` entry (e.g. ``{"chosen": "iteration 2"}``) names the learned policy in the
        plot's legend and title (``learned_policy_label``).
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
    plot_curves(paths["png"], curves, steps, title, meta=meta)
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
