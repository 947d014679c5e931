"""The paper's generalisation experiments (Li & Malik 2017, Figs 1–5) as configurations and one runner.

Every figure runs the same optimizers on held-out *test tasks* the learned optimizers never saw:
other datasets (Fig 1), nets with ~8× the parameters (Fig 2), minibatch 10 instead of 64 (Figs 3–4)
and twice the training horizon (Fig 5). The protocol is the paper's:

* the hand-designed baselines keep the hyperparameters tuned on the *training* objective
  (48-48-10 on MNIST-48, minibatch 64, 400 steps: ``results/baselines/results.json``), exactly as
  the learned optimizers keep the weights meta-trained there;
* the learned optimizers are the shipped GPS policy (``metaopt.pretrained()``, the scale-free
  MLP), the paper's LSTM by GPS (``metaopt.pretrained.paper_lstm()``) and the L2L baseline
  (``metaopt/assets/l2l.metaopt``, Andrychowicz et al. 2016), deterministic;
* every optimizer runs on the same held-out seeds (initialisation and minibatch order); the
  metric is the true objective (whole training split of the test dataset) vs iteration.

Written per figure into ``results/figN/``: per dataset ``<dataset>/results.json``,
``summary.csv``, ``curves.png`` (``write_report``); ``figure.png`` (one panel per dataset);
``table.md`` / ``table.json``: final objective and area under the curve, mean ± std over seeds,
and the *margin of victory* of each learned optimizer over its best competitor (negative: it wins).

Example::

  run_figure(FIGURES["fig2"], "results/fig2")            # 100-200-C nets, minibatch 64
  run_figure(FIGURES["fig2"].tiny(), "/tmp/fig2-tiny")   # under a minute, for CI
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import optax

from metaopt.data import DatasetUnavailableError
from metaopt.data.datasets import TFD_UNAVAILABLE
from metaopt.data.sources import sha256_of_file
from metaopt.evaluation.report import git_commit, machine_description, summarize, write_report
from metaopt.evaluation.tuning import DEFAULT_BASELINES_FILE, read_tuned_baselines, run_grid
from metaopt.evaluation.unroll import eval_steps
from metaopt.optimizers.baselines import BASELINES

GPS = "learned_gps"            # metaopt.pretrained(): the scale-free MLP policy by GPS
GPS_LSTM = "learned_gps_lstm"  # metaopt.pretrained.paper_lstm(): the paper's LSTM by GPS
L2L = "learned_l2l"
LEARNED = (GPS, GPS_LSTM, L2L)
# The paper's test datasets are TFD, CIFAR-10 and CIFAR-100. Offline we have Fashion-MNIST and
# sklearn's 8×8 digits; CIFAR runs when TFDS has it prepared and is skipped with its reason if not.
TEST_DATASETS = ("fashion_mnist", "digits", "cifar10", "cifar100")
OFF_SCALE = 3.0   # figure panels: y stops at this × the highest f(x_0); curves above are named


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    """One figure: the test tasks and the run lengths.

    Attributes:
      name: ``"fig1"`` … ``"fig5"``.
      title: what the figure tests.
      input_dim, hidden: the net is ``input_dim``-``hidden``-C (C = the dataset's classes).
      batch_size: minibatch of f̂.
      num_steps, eval_every: horizon and true-objective period.
      datasets: tried in order; unavailable ones are skipped with their reason recorded.
      eval_seeds: held-out seeds (meta-training and tuning never used them).
    """

    name: str
    title: str
    input_dim: int = 48
    hidden: tuple[int, ...] = (48,)
    batch_size: int = 64
    num_steps: int = 400
    eval_every: int = 10
    datasets: tuple[str, ...] = TEST_DATASETS
    eval_seeds: tuple[int, ...] = (100, 101, 102, 103, 104)
    activation: str = "relu"
    l2: float = 5e-4

    def tiny(self) -> FigureSpec:
        """Under a minute on a CPU (mostly compilation): digits, a small net of the same depth, 20
        steps, two seeds."""
        return dataclasses.replace(
            self, input_dim=8, hidden=(8,) * len(self.hidden), num_steps=20, eval_every=10,
            datasets=("digits",), eval_seeds=(100, 101))

    @property
    def net(self) -> str:
        return "-".join(map(str, (self.input_dim, *self.hidden))) + "-C"


FIGURES: dict[str, FigureSpec] = {
    "fig1": FigureSpec("fig1", "48-48-C nets on other datasets, minibatch 64, 400 steps"),
    "fig2": FigureSpec("fig2", "100-200-C nets (about 8x the parameters), minibatch 64, 400 steps",
                       input_dim=100, hidden=(200,)),
    "fig3": FigureSpec("fig3", "48-48-C nets, minibatch 10 (noisier gradients), 400 steps",
                       batch_size=10),
    "fig4": FigureSpec("fig4", "100-200-C nets, minibatch 10, 400 steps",
                       input_dim=100, hidden=(200,), batch_size=10),
    "fig5": FigureSpec("fig5", "100-200-C nets, minibatch 64, 800 steps (twice the training "
                       "horizon)", input_dim=100, hidden=(200,), num_steps=800),
}


def over_horizon(hyperparams: dict[str, dict], num_steps: int) -> dict[str, dict]:
    """Tuned settings with each schedule's horizon set to this task's steps (a practitioner's
    cosine decay spans the run they do; the tuned peak learning rate is kept)."""
    return {name: ({**hp, BASELINES[name].horizon: num_steps} if BASELINES[name].horizon else hp)
            for name, hp in hyperparams.items()}


def tuned_baselines(path: str | Path = DEFAULT_BASELINES_FILE) -> dict[str, dict]:
    """Hyperparameters tuned on the training objective, from a ``metaopt baselines`` report.

    Raises:
      FileNotFoundError: the report is absent, with the command that writes it.
      ValueError: it was tuned on something other than the paper's training objective.
    """
    rows = read_tuned_baselines(
        path, {"dataset": "mnist", "input_dim": 48, "hidden": [48], "batch_size": 64},
        purpose="the figures reuse the baselines tuned on the paper's training objective")
    return {name: row["hyperparams"] for name, row in rows.items() if name in BASELINES}


class LearnedOptimizer(NamedTuple):
    factory: Callable[[], optax.GradientTransformation]
    weights_sha256: str     # identifies the weights, so a rerun reuses only curves of these


def learned_optimizers(gps_path: str | None = None, l2l_path: str | None = None,
                       lstm_path: str | None = None,
                       ) -> tuple[dict[str, LearnedOptimizer], dict[str, str]]:
    """The learned optimizers that are available, and why any is missing."""
    from metaopt.learned_optimizer import learned_opt
    from metaopt.optimizers.l2l import l2l_opt
    from metaopt.pretrained import (
        paper_lstm,
        paper_lstm_path,
        pretrained,
        pretrained_l2l,
        pretrained_l2l_path,
        pretrained_path,
    )

    found, missing = {}, {}
    for name, load, path, default in ((GPS, pretrained, gps_path, pretrained_path),
                                      (GPS_LSTM, paper_lstm, lstm_path, paper_lstm_path)):
        try:
            theta = load(path)
            found[name] = LearnedOptimizer(lambda theta=theta: learned_opt(theta),
                                           sha256_of_file(path or default()))
        except FileNotFoundError as err:
            missing[name] = str(err)
    try:
        l2l_theta = pretrained_l2l(l2l_path)
        found[L2L] = LearnedOptimizer(lambda: l2l_opt(l2l_theta),
                                      sha256_of_file(l2l_path or pretrained_l2l_path()))
    except FileNotFoundError as err:
        missing[L2L] = str(err)
    return found, missing


def _reusable_curves(path: Path, spec: FigureSpec) -> dict[str, tuple[dict, np.ndarray]]:
    """Curves of an earlier run of the same spec in ``path`` (results.json), by optimizer."""
    try:
        doc = json.loads((path / "results.json").read_text())
    except (OSError, ValueError):
        return {}
    if doc.get("meta", {}).get("spec") != json.loads(json.dumps(dataclasses.asdict(spec))):
        return {}
    return {name: (row, np.asarray(row["true_loss"], np.float64))
            for name, row in doc.get("optimizers", {}).items()}


def margin_table(curves: dict[str, np.ndarray], steps: Sequence[int]) -> dict[str, dict]:
    """Per learned optimizer: its summary, its best competitor's, and the margins (negative: wins).

    The best competitor is chosen separately for the final objective and for the area under the
    curve, among every other optimizer (the other learned one included). A diverged competitor
    (non-finite final value) never counts as best.
    """
    stats = {name: summarize(c, steps) for name, c in curves.items()}
    table = {}
    for name in (n for n in LEARNED if n in curves):
        rivals = {n: s for n, s in stats.items() if n != name}
        if not rivals:
            continue
        best_final = min(rivals, key=lambda n: _finite_or_inf(rivals[n]["final_mean"]))
        best_auc = min(rivals, key=lambda n: _finite_or_inf(rivals[n]["auc_mean"]))
        mine = stats[name]
        table[name] = {
            **mine,
            "best_competitor_final": best_final,
            "best_competitor_final_mean": rivals[best_final]["final_mean"],
            "margin_final": mine["final_mean"] - rivals[best_final]["final_mean"],
            "best_competitor_auc": best_auc,
            "best_competitor_auc_mean": rivals[best_auc]["auc_mean"],
            "margin_auc": mine["auc_mean"] - rivals[best_auc]["auc_mean"],
            "wins_final": bool(mine["final_mean"] < rivals[best_final]["final_mean"]),
            "wins_auc": bool(mine["auc_mean"] < rivals[best_auc]["auc_mean"]),
        }
    return table


def _finite_or_inf(x: float) -> float:
    return x if np.isfinite(x) else np.inf


def run_figure(spec: FigureSpec, out_dir: str | Path, *,
               baselines_file: str | Path = DEFAULT_BASELINES_FILE,
               gps_path: str | None = None, l2l_path: str | None = None,
               lstm_path: str | None = None, reuse: bool = True,
               progress: Callable[[str], None] = print) -> dict:
    """Runs every available optimizer on every available test dataset of ``spec``; writes results.

    With ``reuse``, a curve already in ``out_dir/<dataset>/results.json`` for the same spec and
    the same hyperparameters (baselines) or weight file (learned optimizers) is kept, not rerun:
    adding an optimizer to a finished figure costs only that optimizer's runs.

    Returns:
      the ``table.json`` document: per dataset the margin table, the skipped datasets with their
      reasons, the learned optimizers that were missing, wall time, machine and commit.
    """
    from metaopt.tasks import dataset_task

    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hyperparams = tuned_baselines(baselines_file)
    learned, missing = learned_optimizers(gps_path, l2l_path, lstm_path)
    for name, reason in missing.items():
        progress(f"{spec.name}: {name} not available, running without it: {reason}")
    steps = eval_steps(spec.num_steps, spec.eval_every)
    per_dataset, skipped, all_curves = {}, {"tfd": TFD_UNAVAILABLE}, {}
    for dataset in spec.datasets:
        try:
            task = dataset_task(dataset, input_dim=spec.input_dim, hidden=spec.hidden,
                                batch_size=spec.batch_size, activation=spec.activation,
                                l2=spec.l2)
        except DatasetUnavailableError as err:
            skipped[dataset] = str(err)
            progress(f"{spec.name}: skipping {dataset}: {_first_line(str(err), dataset)}")
            continue
        t0 = time.perf_counter()
        earlier = _reusable_curves(out / dataset, spec) if reuse else {}
        runs = {name: (opt.factory, {}, {"hyperparams": {}, "weights_sha256": opt.weights_sha256,
                                         "description": _LEARNED_DESCRIPTION[name]})
                for name, opt in learned.items()}
        runs |= {name: (BASELINES[name].factory, hp,
                        {"hyperparams": hp, "description": BASELINES[name].description,
                         "tuned_on": "48-48-10 MNIST-48, minibatch 64, 400 steps"})
                 for name, hp in over_horizon(hyperparams, spec.num_steps).items()}
        curves, details = {}, {}
        for name, (factory, hp, detail) in runs.items():
            row, curve = earlier.get(name, ({}, None))
            if curve is None or any(row.get(k) != v for k, v in detail.items()):
                curve = run_grid(factory, [hp], task, spec.eval_seeds,
                                 num_steps=spec.num_steps, eval_every=spec.eval_every)[0]
            curves[name], details[name] = curve, detail
        widths = "-".join(map(str, task.widths))
        write_report(
            out / dataset, curves=curves, steps=steps, details=details,
            meta={"figure": spec.name, "spec": dataclasses.asdict(spec), "dataset": dataset,
                  "task": f"{widths} {spec.activation} MLP on {dataset} projected to "
                          f"{spec.input_dim} dims, minibatch {spec.batch_size}, l2 {spec.l2}",
                  "true_objective_on": task.eval_description,
                  "wall_time_s": round(time.perf_counter() - t0, 1)},
            title=f"{spec.name}: {widths} on {dataset}, minibatch {spec.batch_size} "
                  f"(mean ± std, {len(spec.eval_seeds)} held-out seeds)")
        per_dataset[dataset] = {"net": widths, "margins": margin_table(curves, steps),
                                "summary": {n: summarize(c, steps) for n, c in curves.items()}}
        all_curves[dataset] = curves
        progress(f"{spec.name}: {dataset} done in {time.perf_counter() - t0:.0f} s")
    if not per_dataset:
        raise DatasetUnavailableError(
            f"{spec.name}: none of the datasets {spec.datasets} is available: {skipped}")
    doc = {"figure": spec.name, "title": spec.title, "spec": dataclasses.asdict(spec),
           "datasets": per_dataset, "skipped": skipped, "missing_optimizers": missing,
           "baselines_tuned_in": str(baselines_file),
           "wall_time_s": round(time.perf_counter() - start, 1),
           "machine": machine_description(), "commit": git_commit()}
    (out / "table.json").write_text(json.dumps(doc, indent=1, allow_nan=True))
    (out / "table.md").write_text(markdown_summary(doc))
    plot_figure(out / "figure.png", all_curves, steps, spec, gps_path=gps_path, l2l_path=l2l_path,
                lstm_path=lstm_path)
    return doc


_LEARNED_DESCRIPTION = {
    GPS: "GPS-trained scale-free per-coordinate MLP (metaopt.pretrained), deterministic mean",
    GPS_LSTM: "the paper's GPS-trained per-coordinate LSTM (metaopt.pretrained.paper_lstm), "
              "deterministic mean",
    L2L: "Andrychowicz et al. 2016 coordinatewise LSTM, meta-trained by truncated BPTT",
}


def verdict(doc: dict) -> str:
    """Whether the paper's claim (the GPS optimizer beats every competitor) held, per dataset."""
    parts = []
    for dataset, row in doc["datasets"].items():
        m = row["margins"].get(GPS)
        if m is None:
            parts.append(f"{dataset}: GPS policy not run")
            continue
        held = m["wins_final"] and m["wins_auc"]
        parts.append(
            f"{dataset}: {'held' if held else 'did not hold'} (final {m['margin_final']:+.4f} vs "
            f"{m['best_competitor_final']}, AUC {m['margin_auc']:+.1f} vs "
            f"{m['best_competitor_auc']})")
    return "; ".join(parts)


def markdown_summary(doc: dict) -> str:
    """``table.md``: one table per figure, rows = dataset × optimizer, best first."""
    lines = [f"## {doc['figure']}: {doc['title']}", "",
             f"commit {doc['commit']}, {doc['machine']}; wall {doc['wall_time_s']:.0f} s; "
             f"{len(doc['spec']['eval_seeds'])} held-out seeds; baselines tuned on the training "
             "objective.", "",
             "| dataset | net | optimizer | final f (mean ± std) | AUC (mean ± std) | "
             "margin final | margin AUC |", "|---|---|---|---|---|---|---|"]
    for dataset, row in doc["datasets"].items():
        ranked = sorted(row["summary"].items(), key=lambda kv: _finite_or_inf(kv[1]["final_mean"]))
        for name, s in ranked:
            m = row["margins"].get(name)
            margins = (f"{m['margin_final']:+.4f} ({m['best_competitor_final']}) | "
                       f"{m['margin_auc']:+.1f} ({m['best_competitor_auc']})" if m else " | ")
            div = f" ({s['diverged_seeds']} diverged)" if s["diverged_seeds"] else ""
            lines.append(f"| {dataset} | {row['net']} | {name}{div} | {s['final_mean']:.4f} ± "
                         f"{s['final_std']:.4f} | {s['auc_mean']:.1f} ± {s['auc_std']:.1f} | "
                         f"{margins} |")
    lines += ["", f"Verdict (GPS optimizer beats every competitor at the last step and in AUC): "
                  f"{verdict(doc)}."]
    if doc["skipped"]:
        lines += ["", "Skipped (full reasons in table.json): " + "; ".join(
            f"{k}: {_first_line(v, k)}" for k, v in doc["skipped"].items())]
    if doc["missing_optimizers"]:
        lines += ["", "Not run: " + "; ".join(f"{k} ({v.splitlines()[0]})"
                                              for k, v in doc["missing_optimizers"].items())]
    return "\n".join(lines) + "\n"


def overview_markdown(results_dir: str | Path = "results") -> str:
    """One table over every committed figure (README's Results section is this text, verbatim).

    Rows: figure × dataset; the learned optimizers' final f (the shipped GPS policy, the paper's
    LSTM by GPS, L2L), the best hand-designed baseline's, the shipped policy's margins over its
    best competitor, and whether the paper's claim held for it.
    """
    lines = ["| figure | test task | GPS-learned (shipped) final f | paper LSTM by GPS final f | "
             "L2L final f | best baseline final f | GPS margin final / AUC | claim held |",
             "|---|---|---|---|---|---|---|---|"]
    for name in FIGURES:
        path = Path(results_dir) / name / "table.json"
        if not path.is_file():
            continue
        doc = json.loads(path.read_text())
        spec = doc["spec"]
        for dataset, row in doc["datasets"].items():
            summary = row["summary"]
            baselines = {n: s for n, s in summary.items() if n not in LEARNED}
            best = min(baselines, key=lambda n: _finite_or_inf(baselines[n]["final_mean"]))

            def cell(n, summary=summary):
                s = summary.get(n)
                return f"{s['final_mean']:.4f} ± {s['final_std']:.4f}" if s else "not run"

            m = row["margins"].get(GPS)
            held = "—" if m is None else ("yes" if m["wins_final"] and m["wins_auc"] else "no")
            margins = "—" if m is None else f"{m['margin_final']:+.4f} / {m['margin_auc']:+.1f}"
            lines.append(
                f"| {name} | {row['net']} {dataset}, minibatch {spec['batch_size']}, "
                f"{spec['num_steps']} steps | {cell(GPS)} | {cell(GPS_LSTM)} | {cell(L2L)} | "
                f"{best} {cell(best)} | "
                f"{margins} | {held} |")
    return "\n".join(lines) + "\n"


def _first_line(message: str, dataset: str) -> str:
    if dataset == "tfd":
        return "not publicly distributed"
    line = message.splitlines()[0].removeprefix(f"{dataset}: ").removesuffix(" Tried:")
    return line + (" (offline: TFDS has not prepared it)" if "Tried" in message else "")


def plot_figure(path, all_curves: dict[str, dict[str, np.ndarray]], steps, spec: FigureSpec, *,
                gps_path: str | None = None, l2l_path: str | None = None,
                lstm_path: str | None = None):
    """One panel per dataset, mean over seeds; learned optimizers drawn thick and on top and
    named by their weights (``gps_path``/``lstm_path``/``l2l_path`` as given to ``run_figure``; None: the
    shipped ones); log y on a panel only where its means span a decade. The legend sits below the
    panels (it hides no curve) and the title is wrapped to fit.

    Returns:
      the saved ``matplotlib.figure.Figure``.
    """
    from metaopt.evaluation.report import (
        curve_colors,
        fit_suptitle,
        log_scale_helps,
        new_figure,
    )

    n = len(all_curves)
    fig = new_figure(figsize=(max(5.2 * n, 7.0), 5.4))
    axes = fig.subplots(1, n, squeeze=False)[0]
    shipped = {GPS: (gps_path, "metaopt.pretrained()"),
               GPS_LSTM: (lstm_path, "pretrained.paper_lstm()"), L2L: (l2l_path, "assets/l2l.metaopt")}
    labels = {name: f"{name} ({'shipped: ' + where if path is None else Path(path).name})"
              for name, (path, where) in shipped.items()}
    names = list(dict.fromkeys(name for curves in all_curves.values() for name in curves))
    colors = curve_colors(names, LEARNED)   # one colour per optimizer across the panels
    handles = {}
    for ax, (dataset, curves) in zip(axes, all_curves.items(), strict=True):
        means = {}
        for name, curve in curves.items():
            with np.errstate(invalid="ignore", over="ignore"):
                means[name] = np.asarray(curve, np.float64).mean(0)
        for name, mean in means.items():
            learned = name in LEARNED
            (line,) = ax.plot(steps, mean, label=labels.get(name, name), color=colors[name],
                              lw=2.6 if learned else 1.2, ls="-" if learned else "--",
                              zorder=5 if learned else 2)
            handles.setdefault(line.get_label(), line)
        # A diverging baseline (f ~ 1e30) would flatten every other curve: the y range stops at
        # OFF_SCALE × the highest starting value and the panel names the curves that leave it.
        top = OFF_SCALE * max((m[0] for m in means.values() if np.isfinite(m[0])), default=np.nan)
        off = [n for n, m in means.items()
               if not np.all(np.isfinite(m)) or (np.isfinite(top) and m.max() > top)]
        log = log_scale_helps(*(np.minimum(m, top) if np.isfinite(top) else m
                                for m in means.values()))
        if log:
            ax.set_yscale("log")
        if off:
            low = min(np.nanmin(np.where(np.isfinite(m), m, np.nan)) for m in means.values())
            ax.set_ylim(low * 0.8 if log else low - 0.05 * (top - low), top)
            ax.text(0.98, 0.98, "off scale: " + ", ".join(off), transform=ax.transAxes,
                    ha="right", va="top", fontsize=7, wrap=True,
                    bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
        ax.set_title(f"{dataset}: {spec.net}, minibatch {spec.batch_size}", fontsize=10)
        ax.set_xlabel("iteration t")
        ax.set_ylabel("true objective f(x_t), mean over seeds" + (" (log)" if log else ""))
        ax.grid(True, which="both", alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", fontsize=8,
               ncol=min(len(handles), 4),
               title=f"mean over {len(spec.eval_seeds)} held-out seed(s)", title_fontsize=8)
    fit_suptitle(fig, f"{spec.name}: {spec.title}", fontsize=11)
    fig.savefig(path, dpi=110)
    return fig


def main(name: str, argv: Sequence[str] | None = None) -> dict:
    """The body of ``experiments/figN_*.py``: ``--tiny``, ``--out``, ``--baselines-file``."""
    import argparse

    spec = FIGURES[name]
    parser = argparse.ArgumentParser(description=f"{name}: {spec.title}")
    parser.add_argument("--tiny", action="store_true",
                        help="under a minute: digits, a small net, 20 steps, 2 seeds (CI smoke run)")
    parser.add_argument("--out", default=None, help=f"output folder (default results/{name})")
    parser.add_argument("--baselines-file", default=DEFAULT_BASELINES_FILE)
    args = parser.parse_args(argv)
    if args.tiny:
        spec = spec.tiny()
    out = args.out or (f"results/{name}-tiny" if args.tiny else f"results/{name}")
    doc = run_figure(spec, out, baselines_file=args.baselines_file)
    print((Path(out) / "table.md").read_text())
    return doc
