"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import platform
import time

import jax
import numpy as np


def machine() -> str:
    kinds = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return f"{platform.machine()}, {os.cpu_count()} CPU cores visible, jax {jax.__version__} on {kinds}"


def time_call(fn, *args, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn(*args)`` in seconds, blocking on the result; warm-up calls first."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def matmul_flops_per_second(n: int = 1024, repeats: int = 5) -> float:
    """Achieved FLOP/s of an ``n × n`` float32 matmul: the machine's dense-compute yardstick."""
    a = jax.random.normal(jax.random.key(0), (n, n), jax.numpy.float32)
    f = jax.jit(lambda a: a @ a)
    return 2 * n**3 / time_call(f, a, repeats=repeats)
