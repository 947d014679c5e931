"""The experiment scripts in --tiny mode write their results (logistic in CI; all three in slow)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = ("results.json", "summary.csv", "margin.png", "curves.png", "policy.msgpack",
         "lstm_policy.metaopt")


def run_tiny(family: str, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / f"l2o2016_{family}.py"),
                           "--tiny", "--no-lstm", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["tiny"] and doc["meta"]["family"] == family
    rows = doc["summary"][str(doc["meta"]["horizon"])]
    assert set(rows) == {"mlp_gps", "lstm_gps", "gd", "momentum", "cg", "lbfgs"}
    assert set(doc["seeds"]["spread"]) == {"mlp_gps", "lstm_gps"}
    assert "| mlp_gps |" in proc.stdout
    return doc


def test_logistic_tiny(tmp_path):
    run_tiny("logistic", tmp_path / "logistic")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["robust", "net"])
def test_other_families_tiny(tmp_path, family):
    run_tiny(family, tmp_path / family)
