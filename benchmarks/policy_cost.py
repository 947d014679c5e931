"""Update cost and state size of each learned-optimizer policy against ``optax.adam`` (issue 16).

In one process, jitted, ``block_until_ready``, median over interleaved repeats, on the parameter
pytrees of a 48-48-10 MLP (2,842 parameters) and a 100-200-10 MLP (22,210):

* the paper's LSTM (H = 128; the fused CPU kernel where it builds), and LSTMs of 32 and 16 cells;
* the scale-free per-coordinate MLP (hidden 32, the default; and 16, 64);
* ``optax.adam``;

and, on 300 leaves of 10×10, the first update's time (trace + compile + run) and the steady one.

For each: update time, its ratio to Adam's, the state's bytes per parameter, and the policy's
FLOPs per parameter per step (matmuls only), with the rate that implies next to a ``jnp.dot`` of
the MLP's first layer's shape timed in the same run.

Usage: ``python benchmarks/policy_cost.py [--repeats 30]``; prints a markdown table.
"""

import argparse
import statistics

import jax
import jax.numpy as jnp
import optax
from common import interleaved_times, machine
from step_overhead import SIZES, mlp_params

from metaopt.learned_optimizer import learned_opt
from metaopt.mlp_policy import init_mlp_policy
from metaopt.policy import init_policy
from metaopt.scale_free_features import SCALE_FREE_DIM


def policies():
    key = jax.random.key(0)
    out = {f"LSTM {h}" + (" (paper)" if h == 128 else ""): (init_policy(key, hidden_size=h),
                                                             2 * (3 + h) * 4 * h + 2 * h)
           for h in (128, 32, 16)}
    for h in (32, 16, 64):
        name = f"scale-free MLP {h}" + (" (default)" if h == 32 else "")
        out[name] = (init_mlp_policy(key, hidden_sizes=(h,)),
                     2 * (SCALE_FREE_DIM * h + h * 2 + SCALE_FREE_DIM * 2))
    return out


def state_bytes(state, params):
    n = sum(p.size for p in jax.tree.leaves(params))
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state)) / n


def many_leaves(repeats):
    """First-call (trace + compile + run) and steady update time on 300 leaves of 10×10."""
    import time

    params = {f"w{i}": jnp.full((10, 10), 0.1) for i in range(300)}
    grads = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), params)
    rows = []
    key = jax.random.key(0)
    for name, tx in (("LSTM 128 (paper)", learned_opt(init_policy(key))),
                     ("scale-free MLP 32 (default)", learned_opt(init_mlp_policy(key))),
                     ("adam", optax.adam(1e-3))):
        update = jax.jit(lambda g, s, p, tx=tx: tx.update(g, s, p, value=jnp.float32(1.0)))
        state = tx.init(params)
        t0 = time.perf_counter()
        jax.block_until_ready(update(grads, state, params))
        first = time.perf_counter() - t0
        steady = statistics.median(interleaved_times({name: (update, (grads, state, params))},
                                                     repeats)[name])
        rows.append((name, first, steady))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    print("| net (params) | optimizer | update (ms) | × adam | state B/param | policy FLOP/param "
          "| GFLOP/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for net, widths in SIZES.items():
        params = mlp_params(widths, jax.random.key(0))
        n = sum(p.size for p in jax.tree.leaves(params))
        grads = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), params)
        value = jnp.float32(1.0)
        cases, info = {}, {}
        for name, (theta, flops) in policies().items():
            tx = learned_opt(theta)
            state = tx.init(params)
            update = jax.jit(lambda g, s, p, v, tx=tx: tx.update(g, s, p, value=v))
            cases[name] = (update, (grads, state, params, value))
            info[name] = (state_bytes(state, params), flops)
        adam = optax.adam(1e-3)
        cases["adam"] = (jax.jit(adam.update), (grads, adam.init(params), params))
        info["adam"] = (state_bytes(adam.init(params), params), 0)
        lhs = jnp.ones((n, SCALE_FREE_DIM))
        rhs = jnp.ones((SCALE_FREE_DIM, 32))
        cases["dot"] = (jax.jit(jnp.dot), (lhs, rhs))
        times = {k: statistics.median(v) for k, v in interleaved_times(cases, args.repeats).items()}
        dot_rate = 2 * n * SCALE_FREE_DIM * 32 / times.pop("dot") / 1e9
        for name, t in times.items():
            bytes_per, flops = info[name]
            rate = f"{flops * n / t / 1e9:.1f}" if flops else "-"
            print(f"| {net} ({n:,}) | {name} | {t * 1e3:.3f} | {t / times['adam']:.1f} | "
                  f"{bytes_per:.0f} | {flops:,} | {rate} |")
        print(f"| {net} | jnp.dot ({n}, {SCALE_FREE_DIM}) @ ({SCALE_FREE_DIM}, 32) | | | | | "
              f"{dot_rate:.1f} |")
    print("\n300 leaves of 10×10 (30,000 parameters): first update (trace + compile + run) and "
          "steady update\n\n| optimizer | first call (s) | update (ms) |\n|---|---:|---:|")
    for name, first, steady in many_leaves(max(3, args.repeats // 3)):
        print(f"| {name} | {first:.1f} | {steady * 1e3:.2f} |")


if __name__ == "__main__":
    main()
