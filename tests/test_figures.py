"""The figure experiments (metaopt.evaluation.figures, experiments/fig*_*.py)."""

import json
import runpy
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import metaopt
from metaopt.data.sources import sha256_of_file
from metaopt.evaluation import figures
from metaopt.evaluation.figures import (
    FIGURES,
    GPS,
    GPS_LSTM,
    L2L,
    margin_table,
    tuned_baselines,
)

ROOT = Path(__file__).resolve().parents[1]
BASELINES_FILE = ROOT / "results" / "baselines" / "results.json"
SCRIPTS = {
    "fig1": "fig1_other_datasets.py",
    "fig2": "fig2_larger_nets.py",
    "fig3": "fig3_small_minibatch.py",
    "fig4": "fig4_larger_nets_small_minibatch.py",
    "fig5": "fig5_long_horizon.py",
}


def test_specs_are_the_papers_settings():
    nets = {n: (s.input_dim, s.hidden, s.batch_size, s.num_steps) for n, s in FIGURES.items()}
    assert nets == {
        "fig1": (48, (48,), 64, 400),
        "fig2": (100, (200,), 64, 400),
        "fig3": (48, (48,), 10, 400),
        "fig4": (100, (200,), 10, 400),
        "fig5": (100, (200,), 64, 800),
    }
    assert sorted(SCRIPTS) == sorted(FIGURES)
    assert all(len(s.eval_seeds) >= 5 for s in FIGURES.values())


def test_margin_table_by_hand():
    steps = [0, 10]
    curves = {
        GPS: np.array([[1.0, 0.5], [1.0, 0.7]]),          # final 0.6, AUC 8.0
        L2L: np.array([[1.0, 0.4], [1.0, 0.4]]),          # final 0.4, AUC 7.0
        "adam": np.array([[1.0, 0.55], [1.0, 0.55]]),     # final 0.55, AUC 7.75
        "lbfgs": np.array([[1.0, np.nan], [1.0, 0.1]]),   # diverged on one seed: never best
    }
    table = margin_table(curves, steps)
    assert table[GPS]["best_competitor_final"] == L2L
    assert table[GPS]["margin_final"] == pytest.approx(0.2)
    assert table[GPS]["margin_auc"] == pytest.approx(1.0)
    assert not table[GPS]["wins_final"]
    assert table[L2L]["best_competitor_final"] == "adam"
    assert table[L2L]["margin_final"] == pytest.approx(-0.15)
    assert table[L2L]["wins_final"] and table[L2L]["wins_auc"]
    assert set(table) == {GPS, L2L}


def test_missing_or_foreign_baselines_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="metaopt baselines --config paper"):
        tuned_baselines(tmp_path / "absent.json")
    doc = json.loads(BASELINES_FILE.read_text())
    doc["meta"]["config"]["dataset"] = "digits"
    (tmp_path / "r.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="tuned on another task than the figures"):
        tuned_baselines(tmp_path / "r.json")
    assert set(tuned_baselines(BASELINES_FILE)) == {
        "sgd", "momentum", "adam", "adagrad", "rmsprop", "lbfgs", "conjugate_gradient",
        "adam_cosine", "momentum_cosine"}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_tiny_mode(name, tmp_path, monkeypatch):
    """Each committed script runs end to end in --tiny mode and writes its table and figure."""
    out = tmp_path / name
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [SCRIPTS[name], "--tiny", "--out", str(out),
                                      "--baselines-file", str(BASELINES_FILE)])
    runpy.run_path(str(ROOT / "experiments" / SCRIPTS[name]), run_name="__main__")
    doc = json.loads((out / "table.json").read_text())
    assert doc["figure"] == name and list(doc["datasets"]) == ["digits"]
    row = doc["datasets"]["digits"]
    assert set(row["summary"]) >= {GPS, "adam", "sgd", "momentum", "lbfgs"}
    assert np.isfinite(row["summary"][GPS]["final_mean"])
    assert GPS in row["margins"]
    assert "tfd" in doc["skipped"]
    for f in ("figure.png", "table.md", "digits/curves.png", "digits/summary.csv"):
        assert (out / f).stat().st_size > 0
    assert "Verdict" in (out / "table.md").read_text()


def test_rerun_reuses_matching_curves_only(tmp_path, monkeypatch):
    spec = FIGURES["fig3"].tiny()
    spec = type(spec)(**{**spec.__dict__, "num_steps": 10, "eval_every": 5})
    doc = json.loads(BASELINES_FILE.read_text())
    doc["optimizers"] = {k: doc["optimizers"][k] for k in ("adam", "sgd")}   # fewer compiles
    (tmp_path / "a.json").write_text(json.dumps(doc))
    figures.run_figure(spec, tmp_path, baselines_file=tmp_path / "a.json", progress=lambda s: None)
    first = json.loads((tmp_path / "table.json").read_text())

    calls = []
    real_run_grid = figures.run_grid

    def counting_run_grid(factory, grid, *args, **kwargs):
        calls.append(grid)
        return real_run_grid(factory, grid, *args, **kwargs)

    monkeypatch.setattr(figures, "run_grid", counting_run_grid)
    figures.run_figure(spec, tmp_path, baselines_file=tmp_path / "a.json", progress=lambda s: None)
    assert calls == []
    again = json.loads((tmp_path / "table.json").read_text())
    assert again["datasets"] == first["datasets"]

    # Other hyperparameters for one baseline: only that one reruns.
    doc["optimizers"]["adam"]["hyperparams"] = {"learning_rate": 0.003}
    (tmp_path / "b.json").write_text(json.dumps(doc))
    figures.run_figure(spec, tmp_path, baselines_file=tmp_path / "b.json",
                       progress=lambda s: None)
    assert calls == [[{"learning_rate": 0.003}]]


def test_learned_optimizers_shipped_and_missing(tmp_path):
    found, missing = figures.learned_optimizers()
    assert set(found) == {GPS, GPS_LSTM, L2L} and not missing   # the weight files are committed
    found, missing = figures.learned_optimizers(l2l_path=str(tmp_path / "none.metaopt"),
                                                lstm_path=str(tmp_path / "none.metaopt"))
    assert set(found) == {GPS}
    assert "experiments/train_l2l.py" in missing[L2L]
    assert "make train-paper" in missing[GPS_LSTM]
    theta = metaopt.pretrained()       # GPS is the shipped default policy, not the paper LSTM
    assert found[GPS].weights_sha256 == sha256_of_file(metaopt.pretrained.pretrained_path())
    assert jax.tree.leaves(theta)


def test_readme_shows_the_committed_figure_numbers():
    """README's figure table is overview_markdown() of the committed results, verbatim."""
    readme = (ROOT / "README.md").read_text()
    assert figures.overview_markdown(ROOT / "results") in readme
