"""The PNGs a user reads first: training_log.png, curves.png, the figures' figure.png and
heldout_per_iteration.png, rendered and inspected (labels, integer iteration ticks, log scale only
across decades, titles inside the figure, legends off the curves, the shipped policy marked)."""

import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from metaopt.evaluation import figures, report
from metaopt.evaluation.figures import FIGURES, GPS, L2L, plot_figure
from metaopt.evaluation.report import log_scale_helps, plot_curves, set_iteration_ticks, write_report
from metaopt.policy import init_policy
from metaopt.serialization import save
from metaopt.training.job import plot_training_log

ROOT = Path(__file__).resolve().parents[1]
NAN = float("nan")


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _draw(fig):
    """Lays the figure out once (constrained layout, tick labels); the checks below read it."""
    fig.canvas.draw()
    return fig


def _inside_figure(fig, artist, tol=1.0):
    box = artist.get_window_extent(fig.canvas.get_renderer())
    return (box.x0 >= -tol and box.y0 >= -tol and box.x1 <= fig.bbox.width + tol
            and box.y1 <= fig.bbox.height + tol)


def _overlaps(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _check_title_and_legends(fig):
    """The suptitle inside the figure and clear of every panel and its title; figure legends
    clear of every panel (they hide no curve)."""
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle
    assert title is not None and title.get_text()
    assert _inside_figure(fig, title), title.get_text()
    top = title.get_window_extent(renderer)
    for ax in fig.axes:
        assert not _overlaps(top, ax.get_window_extent(renderer))
        if ax.get_title():
            assert not _overlaps(top, ax.title.get_window_extent(renderer))
            assert _inside_figure(fig, ax.title)
    for legend in fig.legends:
        box = legend.get_window_extent(renderer)
        assert _inside_figure(fig, legend)
        assert not any(_overlaps(box, ax.get_window_extent(renderer)) for ax in fig.axes)


def _visible_tick_labels(ax):
    lo, hi = sorted(ax.get_xlim())
    return [t.get_text().replace("\N{MINUS SIGN}", "-") for t, v in
            zip(ax.get_xticklabels(), ax.get_xticks(), strict=True) if lo <= v <= hi]


def _integer_ticks(ax):
    labels = _visible_tick_labels(ax)
    return bool(labels) and all(float(t).is_integer() for t in labels if t)


def _log(n, *, nan_budget_from=None):
    """A GPS log shaped like gps_loop's: entry 0 has no judged C-step and no S-step 'before'."""
    entries = []
    for i in range(n):
        budget = NAN if nan_budget_from is not None and i >= nan_budget_from else 300.0 * (i + 1)
        entries.append({
            "iteration": i, "controller_objective": 0.56 - 0.01 * i,
            "policy_objective": 0.62 - 0.01 * i, "policy_final_objective": 0.45 + 0.01 * i,
            "imitation_gap": 0.06 + 0.01 * i,
            "predicted_improvement": NAN if i == 0 else 0.04 / i,
            "realized_improvement": NAN if i == 0 else 0.03 / i,
            "kl": [80.0 / (i + 1)] * 4 if i < 3 else [0.0] * 4,
            "kl_budget": [budget / 4] * 4,
            "step_multiplier": [1.0 + i] * 4, "penalty": [0.0 if i == 0 else 1e-8 * i] * 4,
            "s_step_loss_before": NAN if i == 0 else 5e-6 / i ** 3,
            "s_step_loss_after": 7e-7 / (i + 1) ** 3, "rolled_back": None,
        })
    return entries


# ---------------------------------------------------------------------------------------- helpers

def test_log_scale_only_for_positive_values_spanning_a_decade():
    assert log_scale_helps([1.0, 0.05])
    assert log_scale_helps([1e-8, 3e-8], [5.0])                 # together, over decades
    assert not log_scale_helps([0.37, 0.6, 2.5])                  # within a decade: linear
    assert not log_scale_helps([0.0, 1e-8, 5.0])                  # zero is not drawable on log
    assert not log_scale_helps([-1.0, 100.0])
    assert not log_scale_helps([NAN, NAN])                        # no data: never log
    assert not log_scale_helps([])
    assert not log_scale_helps()
    assert log_scale_helps([NAN, 1e-3, 1.0, np.inf])              # non-finite values ignored


@pytest.mark.parametrize("iterations", [[0], [0, 1], [3, 4, 5], list(range(40))])
def test_iteration_ticks_are_integers(iterations):
    fig = report.new_figure()
    ax = fig.subplots()
    ax.plot(iterations, np.linspace(1, 2, len(iterations)), "o-")
    set_iteration_ticks(ax, iterations)
    _draw(fig)
    assert _integer_ticks(ax), _visible_tick_labels(ax)
    if len(iterations) <= 15:
        assert [int(float(t)) for t in _visible_tick_labels(ax)] == iterations


# ----------------------------------------------------------------------------- training_log.png

@pytest.mark.parametrize("n", [1, 2, 6])
def test_training_log_panels_are_labelled_with_integer_ticks(tmp_path, n):
    path = tmp_path / "training_log.png"
    fig = plot_training_log(path, _log(n, nan_budget_from=3))
    _draw(fig)
    assert path.stat().st_size > 10_000
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 6
    for ax in fig.axes:                      # the twin (ν) axis too
        assert ax.get_ylabel(), ax.get_title()
    for ax in panels:
        assert ax.get_xlabel(), ax.get_title()
        assert _integer_ticks(ax), (ax.get_title(), _visible_tick_labels(ax))
    _check_title_and_legends(fig)
    assert not any(a.get_gid() == "shipped" for ax in fig.axes for a in ax.lines)  # default None


def test_training_log_log_scale_only_across_decades_and_empty_panels_say_so(tmp_path):
    fig = plot_training_log(tmp_path / "a.png", _log(6))
    _draw(fig)
    scales = {ax.get_title() or "ν": ax.get_yscale() for ax in fig.axes}
    assert scales["S-step loss"] == "log"              # 5e-6 … 3e-9: decades, positive
    assert scales["C-step trust region"] == "linear"   # KL 0 once no step is kept
    assert scales["true objective on the training condition"] == "linear"
    assert scales["imitation gap: π − controllers"] == "linear"
    # a 1-entry log: nothing judged yet, no S-step loss before/after: a message, not empty axes
    fig = plot_training_log(tmp_path / "b.png", _log(1))
    _draw(fig)
    empty = {ax.get_title() for ax in fig.axes if any(t.get_gid() == "no-data" for t in ax.texts)}
    assert "improvement of J per C-step" in empty
    for ax in fig.axes:
        assert ax.get_yscale() == "linear" or ax.get_title() not in empty
    # all-NaN and non-positive values everywhere must not crash or pick a log axis
    broken = [{"iteration": i, "kl": [0.0], "kl_budget": [NAN], "step_multiplier": [NAN],
               "penalty": [-1.0], "s_step_loss_after": 0.0} for i in range(3)]
    fig = plot_training_log(tmp_path / "c.png", broken)
    _draw(fig)
    assert all(ax.get_yscale() == "linear" for ax in fig.axes)
    _check_title_and_legends(fig)


def test_training_log_marks_the_shipped_iteration(tmp_path):
    # select_policy's "iteration 2" = policies/iter_002.metaopt, made by log entry 1
    fig = plot_training_log(tmp_path / "a.png", _log(6), chosen_iteration=2)
    _draw(fig)
    panels = [ax for ax in fig.axes if ax.get_title()]
    for ax in panels:
        marks = [line for line in ax.lines if line.get_gid() == "shipped"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [1, 1], ax.get_title()
    assert "iteration 2" in fig._suptitle.get_text()
    assert "iter_002" in fig._suptitle.get_text()
    labels = panels[0].get_legend().get_texts()
    assert any("shipped" in t.get_text() for t in labels)
    _check_title_and_legends(fig)
    # the log itself may say which entry was shipped
    log = _log(3)
    log[2]["shipped"] = True
    fig = plot_training_log(tmp_path / "b.png", log)
    _draw(fig)
    assert [list(line.get_xdata()) for line in fig.axes[0].lines
            if line.get_gid() == "shipped"] == [[2, 2]]
    # a chosen iteration outside the log is said, not drawn
    fig = plot_training_log(tmp_path / "c.png", _log(2), chosen_iteration=9)
    _draw(fig)
    assert "not in this log" in fig._suptitle.get_text()


# ------------------------------------------------------------------------------------ curves.png

def _curves(span_decades):
    steps = np.arange(0, 410, 10)
    t = steps / steps[-1]
    end = 0.01 if span_decades else 0.4
    rng = np.random.default_rng(0)
    make = lambda scale: np.exp(np.log(2.5) * (1 - t) + np.log(end * scale) * t) * (
        1 + 0.02 * rng.standard_normal((3, len(steps))))
    names = ["learned_gps", "sgd", "momentum", "adam", "momentum_cosine", "adam_cosine",
             "adagrad", "rmsprop", "lbfgs", "conjugate_gradient"]
    return {n: make(1.0 + 0.05 * i) for i, n in enumerate(names)}, steps


TRAIN_TITLE = ("GPS-learned optimizer vs tuned baselines: 48-48-10, 400 steps (mean ± std, 5 "
               "held-out seeds)")
TRAIN_META = {"iterations": 6, "policy": {"chosen": "iteration 2", "tuning_seeds": [0, 1, 2, 3, 4],
                                          "tuning_scores": {}}}


def test_curves_png_names_the_shipped_policy_and_fits(tmp_path, monkeypatch):
    curves, steps = _curves(span_decades=False)
    seen = {}
    original = report.plot_curves
    monkeypatch.setattr(report, "plot_curves", lambda *a, **k: seen.setdefault(
        "fig", original(*a, **k)))
    paths = write_report(tmp_path, curves=curves, steps=steps, details={}, meta=TRAIN_META,
                         title=TRAIN_TITLE)
    assert paths["png"].stat().st_size > 10_000
    fig = _draw(seen["fig"])
    title = fig._suptitle.get_text()
    assert "iteration 2" in title and "shipped" in title and "learned_gps" in title
    _check_title_and_legends(fig)
    legend = fig.legends[0]
    learned = [t.get_text() for t in legend.get_texts() if t.get_text().startswith("learned_gps")]
    assert learned == ["learned_gps (shipped policy: iteration 2 of 6)"]
    for ax in fig.axes:
        assert ax.get_xlabel() == "iteration t"
        assert ax.get_ylabel().startswith("true objective f(x_t)")
        assert ax.get_yscale() == "linear"             # 2.5 → 0.4: within a decade
        assert _integer_ticks(ax)
        lines = {line.get_label(): line for line in ax.lines}
        top = lines[learned[0]]
        others = [line for name, line in lines.items() if name != learned[0]]
        assert all(top.get_linewidth() > o.get_linewidth() for o in others)
        assert all(top.get_zorder() > o.get_zorder() for o in others)
    assert len(fig.axes) == 2                          # whole run + last half zoomed
    assert fig.axes[1].get_xlim() == (200.0, 400.0)


def test_curves_png_log_scale_across_decades_and_long_titles_wrap(tmp_path):
    curves, steps = _curves(span_decades=True)
    long_title = TRAIN_TITLE + " " + "with a very long description of the task " * 4
    fig = plot_curves(tmp_path / "c.png", curves, steps, long_title,
                      meta={"policy": {"label": "my policy"}})
    _draw(fig)
    assert fig.axes[0].get_yscale() == "log"          # 2.5 → 0.01
    assert "(log scale)" in fig.axes[0].get_ylabel()
    assert "\n" in fig._suptitle.get_text()            # wrapped
    assert "learned_gps = my policy" in fig._suptitle.get_text().replace("\n", " ")
    _check_title_and_legends(fig)
    # no meta, a single evaluation point, a diverged curve: still drawn, no crash
    fig = plot_curves(tmp_path / "d.png", {"learned_gps": np.array([[1.0], [2.0]]),
                                           "sgd": np.array([[NAN], [np.inf]])}, [0], "short")
    _draw(fig)
    assert len(fig.axes) == 1 and fig._suptitle.get_text() == "short"


# ------------------------------------------------------------------------------- figures.py plots

def test_figure_png_panels_labelled_log_only_across_decades(tmp_path):
    steps = list(range(0, 410, 10))
    wide, _ = _curves(span_decades=True)
    narrow, _ = _curves(span_decades=False)
    pick = lambda c: {GPS: c["learned_gps"], L2L: c["sgd"] * 1.1, "adam": c["adam"],
                      "momentum": c["momentum"]}
    spec = FIGURES["fig5"]
    fig = plot_figure(tmp_path / "figure.png", {"digits": pick(wide), "fashion_mnist": pick(narrow)},
                      steps, spec)
    _draw(fig)
    assert (tmp_path / "figure.png").stat().st_size > 10_000
    assert [ax.get_yscale() for ax in fig.axes] == ["log", "linear"]
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
        assert _integer_ticks(ax)
        gps = next(line for line in ax.lines if line.get_label().startswith(GPS))
        assert all(gps.get_linewidth() >= line.get_linewidth() for line in ax.lines)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert f"{GPS} (shipped: metaopt.pretrained())" in labels
    _check_title_and_legends(fig)
    fig = plot_figure(tmp_path / "one.png", {"digits": pick(narrow)}, steps, spec,
                      gps_path="/x/mine.metaopt")
    _draw(fig)
    assert f"{GPS} (mine.metaopt)" in [t.get_text() for t in fig.legends[0].get_texts()]
    _check_title_and_legends(fig)   # one narrow panel: the long fig5 title is wrapped to fit


def test_figure_panel_names_a_diverged_curve_and_keeps_the_others_readable(tmp_path):
    """A baseline that blows up (f ~ 1e30, or inf) must not flatten the panel: the y range ends
    at OFF_SCALE x the highest start and the panel names the curves that leave it."""
    steps = list(range(0, 410, 10))
    t = np.asarray(steps, np.float64)
    good = np.stack([2.3 * np.exp(-t / 100) + 0.1] * 2)
    blown = np.stack([2.3 * np.exp(t / 5)] * 2)
    curves = {GPS: good, L2L: good * 1.2, "momentum": blown,
              "adam": np.where(t > 200, np.inf, good * 1.1)}
    fig = plot_figure(tmp_path / "figure.png", {"digits": curves}, steps, FIGURES["fig4"])
    _draw(fig)
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert high == pytest.approx(figures.OFF_SCALE * 2.4 * 1.2) and low < 0.2   # L2L starts highest
    texts = [x.get_text() for x in ax.texts]
    assert texts == ["off scale: momentum, adam"]
    fig = plot_figure(tmp_path / "calm.png", {"digits": {GPS: good, L2L: good * 1.2}}, steps,
                      FIGURES["fig4"])
    assert not fig.axes[0].texts


# ---------------------------------------------------------------- experiments/policy_by_iteration

@pytest.fixture(scope="module")
def script():
    return _load_script("policy_by_iteration")


def _run_dir(tmp_path, *, chosen=None, results_chosen=None, shipped=2):
    run = tmp_path / "run"
    (run / "policies").mkdir(parents=True)
    thetas = {k: init_policy(jax.random.key(k)) for k in (1, 2, 3)}
    for k, theta in thetas.items():
        save(run / "policies" / f"iter_{k:03d}.metaopt", theta, metadata={"iteration": k})
    metadata = {"config": "quick", "iterations": 3}
    if chosen:
        metadata |= {"chosen": chosen, "selection": "lowest mean final f on the tuning seeds [0, 1]"}
    save(run / "policy.metaopt", thetas[shipped], metadata=metadata)
    if results_chosen:
        (run / "results.json").write_text(json.dumps(
            {"meta": {"policy": {"chosen": results_chosen}},
             "optimizers": {"adam": {"final_mean": 0.4}, "sgd": {"final_mean": 0.5}}}))
    return run


def test_policy_by_iteration_reports_the_shipped_iteration(tmp_path, script):
    run = _run_dir(tmp_path / "a", chosen="iteration 2")
    asset = tmp_path / "asset.metaopt"
    asset.write_bytes((run / "policies" / "iter_001.metaopt").read_bytes())
    shipped = script.shipped_policy(run, package_asset=asset)
    assert (shipped["iteration"], shipped["file"], shipped["source"]) == (
        2, "iter_002.metaopt", "policy.metaopt metadata")
    assert shipped["weights_match"] == ["iter_002.metaopt"]
    assert shipped["package_asset_iteration"] == 1
    note = script.describe(shipped, [100, 101])
    assert "shipped iteration 2 (policies/iter_002.metaopt)" in note
    assert "select_policy" in note and "tuning seeds" in note
    assert "final iteration" not in note and "last iteration" not in note
    assert "metaopt.pretrained.paper_lstm() ships the weights of this run's policies/iter_001" in note
    # results.json's meta.policy when the file's metadata lacks it
    run = _run_dir(tmp_path / "b", results_chosen="iteration 3", shipped=3)
    shipped = script.shipped_policy(run, package_asset=asset)
    assert (shipped["iteration"], shipped["source"]) == (3, "results.json meta.policy")
    # an old run that recorded no choice: found by its weights, said to be the last iteration
    run = _run_dir(tmp_path / "c", shipped=3)
    shipped = script.shipped_policy(run, package_asset=tmp_path / "absent.metaopt")
    assert shipped["iteration"] == 3 and "iter_003" in shipped["source"]
    note = script.describe(shipped, [100])
    assert "iter_003.metaopt (the last iteration)" in note and "recorded no choice" in note
    assert shipped["package_asset_iteration"] is None
    # nothing to go on
    empty = tmp_path / "d"
    (empty / "policies").mkdir(parents=True)
    shipped = script.shipped_policy(empty, package_asset=asset)
    assert shipped["iteration"] is None
    assert "not recorded" in script.describe(shipped, [100])


def test_policy_by_iteration_plot_marks_it(tmp_path, script):
    rows = {f"iter_{k:03d}.metaopt": {"final_mean": 0.42 + 0.01 * k, "final_std": 0.01}
            for k in (1, 2, 3)}
    shipped = {"iteration": 2, "chosen": "iteration 2", "source": "policy.metaopt metadata",
               "package_asset_iteration": 1}
    fig = script.plot(tmp_path / "h.png", rows, {"adam": 0.41, "sgd": 0.5}, shipped, 400)
    _draw(fig)
    (ax,) = fig.axes
    assert [list(line.get_xdata()) for line in ax.lines if line.get_gid() == "shipped"] == [[2, 2]]
    assert any(line.get_gid() == "package-asset" for line in ax.lines)
    assert ax.get_xlabel() and "f(x_400)" in ax.get_ylabel() and ax.get_yscale() == "linear"
    assert [int(float(t)) for t in _visible_tick_labels(ax)] == [1, 2, 3]
    assert "shipped: iteration 2" in fig._suptitle.get_text()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[0].startswith("learned") and any("shipped" in t for t in labels)
    _check_title_and_legends(fig)
