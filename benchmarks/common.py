"""Timing helpers shared by the benchmark scripts (run them from the repo root or benchmarks/)."""

from __future__ import annotations

import time

import jax
import numpy as np

from metaopt.evaluation.report import machine_description


def machine() -> str:
    """The line every benchmark prints about where it ran."""
    return machine_description()


def interleaved_times(cases: dict, repeats: int) -> dict[str, list[float]]:
    """Wall times of each ``name -> (fn, args)`` or ``(fn, args, float64)`` case.

    One warm-up (compiling) call per case, then ``repeats`` rounds calling every case once, so
    load from other processes hits all cases alike. ``float64`` runs the call under
    ``jax.enable_x64``. Returns the per-round seconds of each case.
    """

    def call(fn, args, x64=False):
        with jax.enable_x64(x64):
            jax.block_until_ready(fn(*args))

    for case in cases.values():
        call(*case)
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            start = time.perf_counter()
            call(*case)
            times[name].append(time.perf_counter() - start)
    return times


def time_call(fn, *args, repeats: int = 5) -> float:
    """Median wall time of ``fn(*args)`` in seconds, after a warm-up call."""
    return float(np.median(interleaved_times({"fn": (fn, args)}, repeats)["fn"]))


def matmul_flops_per_second(n: int = 1024, repeats: int = 5) -> float:
    """Achieved FLOP/s of an ``n × n`` float32 matmul: the machine's dense-compute yardstick."""
    a = jax.random.normal(jax.random.key(0), (n, n), jax.numpy.float32)
    f = jax.jit(lambda a: a @ a)
    return 2 * n**3 / time_call(f, a, repeats=repeats)
