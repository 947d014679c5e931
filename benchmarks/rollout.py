"""Steps per second of the jitted, scanned unroll vs a Python loop over a jitted step.

Task: the paper's 48-48-10 ReLU net, minibatch 64, on synthetic 50k × 48 data (same shapes as
projected MNIST; the numbers do not depend on the values). Optimizer: Adam. Both variants run in
this process, so the ratio is robust to machine noise.

  .venv/bin/python benchmarks/rollout.py [--steps 400]
"""

from __future__ import annotations

import argparse
import functools

import jax
import optax
from common import machine, matmul_flops_per_second, time_call

from metaopt.evaluation.unroll import unroll, unroll_python_loop
from metaopt.tasks import make_mlp_task, synthetic_classification


def step_flops(widths, batch):
    """Forward + backward of the MLP on one minibatch: ≈ 3 × 2·batch·Σ fan_in·fan_out."""
    return 3 * 2 * batch * sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    x, y = synthetic_classification(jax.random.key(0), 50_000, 48, 10)
    task = make_mlp_task(x, y, widths=(48, 48, 10), batch_size=64)
    tx = optax.adam(1e-3)
    key = jax.random.key(1)
    rows = []
    for eval_every in (args.steps, 10):
        scanned = jax.jit(functools.partial(unroll, tx, num_steps=args.steps, eval_every=eval_every))
        t_scan = time_call(scanned, task, key, repeats=args.repeats)
        t_loop = time_call(
            lambda t, k, e=eval_every: unroll_python_loop(tx, t, k, num_steps=args.steps, eval_every=e),
            task, key, repeats=max(1, args.repeats // 2))
        n_evals = args.steps // eval_every + 1
        flops = args.steps * step_flops(task.widths, 64) + n_evals * step_flops(task.widths, 50_000) / 3
        rows.append((eval_every, args.steps / t_scan, args.steps / t_loop, t_loop / t_scan,
                     flops / t_scan))
    peak = matmul_flops_per_second()
    print(f"machine: {machine()}")
    print(f"1024² f32 matmul in this run: {peak / 1e9:.1f} GFLOP/s\n")
    print("| true objective every | scanned steps/s | Python-loop steps/s | scan speed-up | "
          "scanned GFLOP/s | fraction of matmul rate |")
    print("|---|---|---|---|---|---|")
    for every, s_scan, s_loop, ratio, fl in rows:
        print(f"| {every} steps | {s_scan:,.0f} | {s_loop:,.0f} | {ratio:.1f}× | {fl / 1e9:.2f} | "
              f"{fl / peak:.3f} |")


if __name__ == "__main__":
    main()
