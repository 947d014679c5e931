"""Per-step cost of ``metaopt.learned_opt`` against ``optax.adam``, and the LSTM step's efficiency.

Two measurements, in one process, jitted, ``block_until_ready``, median over interleaved repeats:

1. ``update`` time of ``learned_opt`` vs ``optax.adam`` on the parameter pytrees of a 48-48-10
   MLP (2,842 parameters) and a 100-200-10 MLP (22,210).
2. One policy step (LSTM + head) over ``n`` coordinates vs a ``jnp.dot`` of the same shape,
   ``(n, 3 + 128) @ (131, 512)``. Both are credited with the matmul FLOPs
   ``2·n·131·512 (+ 2·n·128 for the head)``; the ratio of achieved FLOP/s says how close the
   step (matmul + gate nonlinearities + head) gets to the bare matmul. The step is timed as the
   fused CPU kernel (``metaopt.fused_policy``, what ``learned_opt`` uses on one CPU device) and
   through XLA on all coordinates at once and in chunks of 1024 (the fallback without the
   kernel). ``learned_opt`` is timed as it runs by default, i.e. with the kernel when it builds.

Usage: ``python benchmarks/step_overhead.py [--repeats 30]``; prints markdown tables.
"""

import argparse
import os
import statistics

import jax
import jax.numpy as jnp
import optax
from common import interleaved_times, machine

from metaopt.fused_policy import fused_policy_available, fused_policy_step
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


def _compiled_without_kernel(fn, *args):
    """``fn`` compiled with the XLA policy step (METAOPT_FUSED_POLICY=0 while tracing)."""
    previous = os.environ.get("METAOPT_FUSED_POLICY")
    os.environ["METAOPT_FUSED_POLICY"] = "0"
    try:
        # A fresh function object: jax.jit caches traces per function, and `fn` itself may be
        # (or have been) traced with the kernel.
        return jax.jit(lambda *a: fn(*a)).lower(*args).compile()
    finally:
        if previous is None:
            del os.environ["METAOPT_FUSED_POLICY"]
        else:
            os.environ["METAOPT_FUSED_POLICY"] = previous


def update_overhead(theta, repeats):
    """Per pytree: update times of learned_opt (default path), learned_opt through XLA only,
    and Adam, in seconds."""
    rows = []
    for name, widths in SIZES.items():
        params = mlp_params(widths, jax.random.key(0))
        n_params = sum(p.size for p in jax.tree.leaves(params))
        grads = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), params)
        value = jnp.float32(1.0)
        learned, adam = learned_opt(theta), optax.adam(1e-3)
        learned_args = (grads, learned.init(params), params, value)
        update = lambda g, s, p, v, tx=learned: tx.update(g, s, p, value=v)
        cases = {
            "learned_opt": (jax.jit(update), learned_args),
            "learned_opt, XLA step": (_compiled_without_kernel(update, *learned_args), learned_args),
            "adam": (jax.jit(adam.update), (grads, adam.init(params), params)),
        }
        times = time_interleaved(cases, repeats)
        rows.append((name, n_params, times))
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
        "fused kernel": (jax.jit(lambda c, o: fused_policy_step(theta, c, o)), (carry, obs)),
        "XLA, whole": (jax.jit(lambda c, o: apply_policy(theta, c, o)), (carry, obs)),
        f"XLA, chunks of {chunk}": (
            jax.jit(lambda c, o: apply_policy(theta, c, o, chunk_size=chunk)), (carry, obs)
        ),
    }
    if not fused_policy_available(theta):
        del functions["fused kernel"]
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
    print(
        "| pytree | params | learned_opt update (ms) | same, XLA policy step (ms) "
        "| adam update (ms) | learned_opt / adam |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, n_params, times in update_overhead(theta, args.repeats):
        t_learned, t_xla, t_adam = times["learned_opt"], times["learned_opt, XLA step"], times["adam"]
        print(
            f"| {name} MLP | {n_params:,} | {t_learned * 1e3:.3f} | {t_xla * 1e3:.3f} "
            f"| {t_adam * 1e3:.4f} | {t_learned / t_adam:.0f}× |"
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
    if fused_policy_available(theta):
        print("\nlearned_opt runs the policy step as the fused kernel on this machine.")
    else:
        print(
            f"\nNo fused kernel here: learned_opt runs leaves of >= {4 * _CPU_CHUNK_SIZE:,} "
            f"coordinates in chunks of {_CPU_CHUNK_SIZE} on CPU, smaller ones whole."
        )


if __name__ == "__main__":
    main()
