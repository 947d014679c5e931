"""Per-step cost of ``metaopt.learned_opt`` against ``optax.adam``, and the LSTM step's efficiency.

Two measurements, in one process, jitted, ``block_until_ready``, median over interleaved repeats:

1. ``update`` time of ``learned_opt`` vs ``optax.adam`` on the parameter pytrees of a 48-48-10
   MLP (2,842 parameters) and a 100-200-10 MLP (22,210).
2. One policy step (LSTM + head) over ``n`` coordinates vs a ``jnp.dot`` of the same shape,
   ``(n, 3 + 128) @ (131, 512)``. Both are credited with the matmul FLOPs
   ``2·n·131·512 (+ 2·n·128 for the head)``; the ratio of achieved FLOP/s says how close the
   step (matmul + gate nonlinearities + head) gets to the bare matmul. The step is timed on all
   coordinates at once and in chunks of 1024 (what ``learned_opt`` does on CPU for big leaves).

Usage: ``python benchmarks/step_overhead.py [--repeats 30]``; prints markdown tables.
"""

import argparse
import statistics

import jax
import jax.numpy as jnp
import optax
from common import interleaved_times, machine

from metaopt.learned_optimizer import _CPU_CHUNK_SIZE, learned_opt
from metaopt.policy import HIDDEN_SIZE, LSTMCarry, apply_policy, init_policy

SIZES = {"48-48-10": (48, 48, 10), "100-200-10": (100, 200, 10)}


def mlp_params(widths, key):
    params = {}
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=False)):
        key, sub = jax.random.split(key)
        params[f"layer{i}"] = {
            "w": jax.random.normal(sub, (n_in, n_out)) / n_in**0.5,
            "b": jnp.zeros((n_out,)),
        }
    return params


def time_interleaved(functions, repeats):
    """Median wall time of each ``name -> (fn, args)``, calls interleaved to share the noise."""
    times = interleaved_times(functions, repeats)
    return {name: statistics.median(ts) for name, ts in times.items()}


def update_overhead(theta, repeats):
    rows = []
    for name, widths in SIZES.items():
        params = mlp_params(widths, jax.random.key(0))
        n_params = sum(p.size for p in jax.tree.leaves(params))
        grads = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), params)
        value = jnp.float32(1.0)
        learned, adam = learned_opt(theta), optax.adam(1e-3)
        learned_update = jax.jit(
            lambda g, s, p, v, tx=learned: tx.update(g, s, p, value=v)
        )
        adam_update = jax.jit(adam.update)
        times = time_interleaved(
            {
                "learned_opt": (learned_update, (grads, learned.init(params), params, value)),
                "adam": (adam_update, (grads, adam.init(params), params)),
            },
            repeats,
        )
        rows.append((name, n_params, times["learned_opt"], times["adam"]))
    return rows


def lstm_efficiency(theta, n_coords, repeats):
    keys = jax.random.split(jax.random.key(1), 4)
    h = HIDDEN_SIZE
    carry = LSTMCarry(
        jax.random.normal(keys[0], (n_coords, h)), jax.random.normal(keys[1], (n_coords, h))
    )
    obs = jax.random.normal(keys[2], (n_coords, 3))
    lhs = jax.random.normal(keys[3], (n_coords, 3 + h))
    kernel = theta["gates"]["kernel"]
    chunk = _CPU_CHUNK_SIZE
    functions = {
        "dot": (jax.jit(jnp.dot), (lhs, kernel)),
        "whole": (jax.jit(lambda c, o: apply_policy(theta, c, o)), (carry, obs)),
        f"chunks of {chunk}": (
            jax.jit(lambda c, o: apply_policy(theta, c, o, chunk_size=chunk)), (carry, obs)
        ),
    }
    times = time_interleaved(functions, repeats)
    matmul_flops = 2 * n_coords * (3 + h) * 4 * h
    dot_rate = matmul_flops / times.pop("dot")
    return [
        (variant, t, (matmul_flops + 2 * n_coords * h) / t, dot_rate, matmul_flops / dot_rate)
        for variant, t in times.items()
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    theta = init_policy(jax.random.key(0))

    print(f"Machine: {machine()}\n")
    print("| pytree | params | learned_opt update (ms) | adam update (ms) | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, n_params, t_learned, t_adam in update_overhead(theta, args.repeats):
        print(
            f"| {name} MLP | {n_params:,} | {t_learned * 1e3:.3f} | {t_adam * 1e3:.4f} "
            f"| {t_learned / t_adam:.0f}× |"
        )
    print()
    print(
        "| n_coords | LSTM step | LSTM step (ms) | dot (n,131)@(131,512) (ms) | LSTM GFLOP/s "
        "| dot GFLOP/s | fraction of dot rate |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n_coords in (2_842, 22_210):
        for variant, t, rate, dot_rate, t_dot in lstm_efficiency(theta, n_coords, args.repeats):
            print(
                f"| {n_coords:,} | {variant} | {t * 1e3:.2f} | {t_dot * 1e3:.2f} "
                f"| {rate / 1e9:.1f} | {dot_rate / 1e9:.1f} | {rate / dot_rate:.2f} |"
            )
    print(
        f"\nlearned_opt runs leaves of >= {4 * _CPU_CHUNK_SIZE:,} coordinates in chunks of "
        f"{_CPU_CHUNK_SIZE} on CPU, smaller ones whole."
    )


if __name__ == "__main__":
    main()
