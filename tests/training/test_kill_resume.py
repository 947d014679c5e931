"""`metaopt train` killed with SIGKILL at random moments and resumed ends where an uninterrupted run
ends (issue 8). Slow: about five process starts with JAX compilation each (~3-5 min on 2 cores)."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from metaopt.serialization import load

ITERATIONS = 6


def _command(out, resume):
    return [sys.executable, "-m", "metaopt.cli", "train", "--config", "quick", "--out", str(out),
            "--iterations", str(ITERATIONS)] + (["--resume"] if resume else [])


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_sigkill_five_times_then_resume_equals_uninterrupted(tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_command(reference, False), check=True, env=_env(), capture_output=True)
    killed = tmp_path / "killed"
    rng = random.Random(0)
    kills, runs = 0, 0
    while True:
        process = subprocess.Popen(_command(killed, runs > 0), env=_env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        runs += 1
        if kills < 5:
            deadline = time.monotonic() + rng.uniform(4.0, 30.0)
            while time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.1)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
                kills += 1
                continue
        _, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, stderr.decode()[-2000:]
        if kills >= 5:
            break
    assert kills == 5
    want, got = load(reference / "policy.metaopt"), load(killed / "policy.metaopt")
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(a, b)
    # The logs (NaN included, hence compared as JSON text) match entry for entry.
    entries = lambda run: json.dumps(json.loads((run / "training_log.json").read_text())["entries"])
    assert entries(reference) == entries(killed)
