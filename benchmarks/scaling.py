"""Throughput of the sharded GPS rollout and S-step on a 1-, 2-, 4- and 8-device mesh.

The device count of a JAX process is fixed when it starts, so each count runs in its own
subprocess (``--worker D``) with ``--xla_force_host_platform_device_count=D`` (virtual CPU devices)
or, with ``--real``, on the accelerators the machine has (D ≤ their number). Each worker times,
interleaved in one process (``common.interleaved_times``):

* ``rollout`` on one device (the unsharded path) and ``mesh.sharded_rollout`` over D devices,
  the same N samples (strong scaling: N is fixed, each device runs N/D);
* ``policy_fit.s_step`` and ``mesh.sharded_s_step``: the same minibatches, each device
  back-propagating B/D sequences of each.

The sharded calls include placing their inputs on the mesh and fetching the (gathered) result as
NumPy, as ``gps_iteration`` uses them; the unsharded ones are timed to ``block_until_ready``.

    .venv/bin/python benchmarks/scaling.py [--config tiny|medium] [--devices 1 2 4 8] [--repeats 3]

Virtual CPU devices share the machine's cores: on a 2-core machine, 8 devices cannot be faster
than 1; the table measures that the sharded path is correct and what its overhead is, not speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CONFIGS = {
    # TrainConfig.tiny: 6-8-3 net, T = 20, 8 samples.
    "tiny": dict(num_samples=8),
    # 48-48-10 on synthetic data, T = 100, 8 samples, 32 tracked coordinates, 128-cell LSTM.
    "medium": dict(widths=(48, 48, 10), num_examples=1024, batch_size=64, horizon=100,
                   num_samples=8, num_tracked=32, hidden_size=128, s_step_batch_size=64),
}


def worker(args) -> dict:
    """Runs inside a process that sees ``args.worker`` devices; returns the timings as a dict."""
    import jax
    import jax.numpy as jnp
    from common import interleaved_times, machine

    from metaopt.training import mesh as mesh_lib
    from metaopt.training import policy_fit
    from metaopt.training.gps_loop import (
        TrainConfig,
        condition_key,
        init_state,
        make_task,
        s_step_optimizer,
    )
    from metaopt.training.rollout import rollout, select_tracked

    devices = jax.devices()[: args.worker]
    assert len(devices) == args.worker, (len(devices), args.worker)
    mesh = mesh_lib.samples_mesh(devices)
    config = TrainConfig.tiny(**CONFIGS[args.config], s_step_iterations=args.s_steps)
    task = make_task(config)
    state = init_state(config, task)
    tracked = select_tracked(jax.random.key(config.seed + 4), task.init_params(jax.random.key(0)),
                             config.num_tracked)
    init_key = jax.random.split(condition_key(config))[0]
    sample_key = jax.random.key(7)
    index = jnp.asarray(tracked.index)
    data = jax.device_get(rollout(task, state.controller, init_key, sample_key, index,
                                  num_samples=config.num_samples))
    s_data = policy_fit.s_step_data(data.observations, data.states, jnp.asarray(tracked.mask),
                                    state.controller, state.duals)
    s_kwargs = dict(optimizer=s_step_optimizer(config), num_steps=config.s_step_iterations,
                    batch_size=config.s_step_batch_size)
    s_key = jax.random.key(3)
    cases = {
        "rollout, 1 device": (lambda: rollout(task, state.controller, init_key, sample_key, index,
                                              num_samples=config.num_samples), ()),
        "rollout, mesh": (lambda: mesh_lib.sharded_rollout(
            mesh, task, state.controller, init_key, sample_key, index,
            num_samples=config.num_samples), ()),
        "s_step, 1 device": (lambda: policy_fit.s_step(state.theta, state.opt_state, s_data, s_key,
                                                       **s_kwargs), ()),
        "s_step, mesh": (lambda: mesh_lib.sharded_s_step(mesh, state.theta, state.opt_state,
                                                         s_data, s_key, **s_kwargs), ()),
    }
    times = interleaved_times(cases, args.repeats)
    sharded = mesh_lib.sharded_rollout(mesh, task, state.controller, init_key, sample_key, index,
                                       num_samples=config.num_samples)
    moments_error = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-30))
                        for a, b in zip(jax.tree.leaves(data.moments),
                                        jax.tree.leaves(sharded.moments), strict=True))
    return {"devices": args.worker, "machine": machine(), "num_samples": config.num_samples,
            "s_step_batch": config.s_step_batch_size, "s_steps": config.s_step_iterations,
            "horizon": config.horizon, "widths": list(config.widths),
            "seconds": {name: statistics.median(t) for name, t in times.items()},
            "moments_max_relative_difference": moments_error}


def run_worker(devices: int, args) -> dict:
    env = dict(os.environ)
    if not args.real:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        env["JAX_PLATFORMS"] = "cpu"
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join([here, os.path.dirname(here), env.get("PYTHONPATH", "")])
    command = [sys.executable, os.path.abspath(__file__), "--worker", str(devices),
               "--config", args.config, "--repeats", str(args.repeats), "--s-steps",
               str(args.s_steps)]
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker with {devices} devices failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--s-steps", type=int, default=20, help="Adam steps per S-step call")
    parser.add_argument("--real", action="store_true",
                        help="use the machine's accelerators instead of virtual CPU devices")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args)))
        return

    rows = [run_worker(d, args) for d in args.devices]
    first = rows[0]
    print(f"machine: {first['machine']}")
    print(f"config {args.config}: {'-'.join(map(str, first['widths']))} net, T = {first['horizon']}, "
          f"N = {first['num_samples']} samples; S-step {first['s_steps']} Adam steps, minibatch "
          f"{first['s_step_batch']}; median of {args.repeats} interleaved rounds\n")
    print("| devices | rollout 1 device (s) | rollout on mesh (s) | samples/s on mesh | "
          "mesh / 1 device | S-step 1 device (s) | S-step on mesh (s) | mesh / 1 device | "
          "moments max rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        s = row["seconds"]
        r1, rm, s1, sm = (s["rollout, 1 device"], s["rollout, mesh"], s["s_step, 1 device"],
                          s["s_step, mesh"])
        print(f"| {row['devices']} | {r1:.3f} | {rm:.3f} | {row['num_samples'] / rm:.1f} | "
              f"{rm / r1:.2f}× | {s1:.3f} | {sm:.3f} | {sm / s1:.2f}× | "
              f"{row['moments_max_relative_difference']:.1e} |")


if __name__ == "__main__":
    main()
