"""GPS meta-training over a device mesh: samples and S-step minibatches split across devices.

The two costly parts of a GPS iteration are data-parallel; the rest is small and replicated.

* **Rollouts** (``sharded_rollout``): the N samples' keys are split over the mesh's ``"samples"``
  axis (``jax.shard_map``); each device runs ``rollout_samples`` on its N/D samples. The
  per-(group, t) regression moments are sums, so they are added across devices with
  ``lax.psum``; the true objectives, curvature terms and tracked sequences (small) are gathered.
  The result equals ``rollout``'s up to the order of float additions: the sample keys are the
  same ``jax.random.split(sample_key, N)``.
* **S-step** (``sharded_s_step``): the same Adam steps on the same minibatches as
  ``policy_fit.s_step``; each device back-propagates through its B/D sequences of every
  minibatch and the gradients are summed with ``lax.psum`` (each device's loss is normalised by
  the global minibatch, so the sum is the minibatch's gradient). The stored sequences are
  replicated: they are a few MB (paper preset: 1,280 sequences × 400 steps) and every host needs
  them for the policy linearisation anyway.
* **Everything else** (dynamics and cost fit, π linearisation, C-step, dual step, evaluation) runs
  replicated: on one device per process, from host NumPy inputs, identically in every process.

Several hosts: ``initialize_distributed()`` calls ``jax.distributed.initialize()`` (before any
other JAX call) when ``JAX_COORDINATOR_ADDRESS`` is set or when asked to (TPU pods and SLURM are
auto-detected by JAX); ``samples_mesh()`` then spans every process's devices. Every process runs
the same loop; the sharded calls take host inputs (identical on all processes), place them
replicated on the mesh and return replicated results as NumPy. Orbax checkpointing runs in every
process (Orbax writes replicated NumPy state from process 0 only); other files are written by
``is_main_process()`` only (``metaopt.training.job``).

Example::

  mesh = samples_mesh()                              # every visible device
  config = TrainConfig.tiny(num_samples=2 * mesh.size)
  theta, log = train(config, mesh=mesh)              # same result as train(config), to float tolerance
"""

from __future__ import annotations

import dataclasses
import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from metaopt.gps.types import LinearGaussianController
from metaopt.training import policy_fit
from metaopt.training.rollout import RolloutData, assemble_rollout, rollout_samples

AXIS = "samples"

__all__ = ["AXIS", "initialize_distributed", "is_main_process", "replicate", "samples_mesh",
           "scale_to_mesh", "sharded_rollout", "sharded_s_step"]


def initialize_distributed(force: bool = False) -> bool:
    """``jax.distributed.initialize()`` for a multi-process run; call before any other JAX call.

    Runs when ``force`` is True (cluster auto-detection: Cloud TPU pods, SLURM, Open MPI, …) or
    when ``JAX_COORDINATOR_ADDRESS`` is set, with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``
    (read here, as integers) when set. Returns whether it initialised.
    """
    if not force and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return False
    kwargs = {}
    for name, arg in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        if os.environ.get(name):
            kwargs[arg] = int(os.environ[name])
    jax.distributed.initialize(**kwargs)
    return True


def is_main_process() -> bool:
    """Whether this is process 0, the one that writes logs, policies and reports."""
    return jax.process_index() == 0


def samples_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis ``"samples"`` over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


def scale_to_mesh(config, num_devices: int, samples_per_device: int | None = None):
    """``config`` (a ``TrainConfig``) with the work per device of a one-device run.

    N = ``samples_per_device`` (default: ``config.num_samples``) × ``num_devices``, and the S-step
    minibatch × ``num_devices``, so each device rolls out and back-propagates as many samples
    and sequences as one device does for ``config`` (the S-step data grow with N, so its epochs
    per call stay the same). Everything else is unchanged.
    """
    per_device = config.num_samples if samples_per_device is None else samples_per_device
    if per_device < 1:
        raise ValueError(f"samples_per_device must be at least 1, got {per_device}.")
    return dataclasses.replace(config, num_samples=per_device * num_devices,
                               s_step_batch_size=config.s_step_batch_size * num_devices)


def replicate(mesh: Mesh, tree):
    """``tree`` placed whole on every device of ``mesh`` (a no-op for leaves already there).

    Leaves are host NumPy arrays, the same in every process, or arrays already on the mesh; PRNG
    keys travel as their raw data (multi-process ``device_put`` accepts NumPy, not key arrays).
    """
    sharding = NamedSharding(mesh, P())

    def put(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = jax.device_put(np.asarray(jax.random.key_data(leaf)), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        return jax.device_put(leaf, sharding)

    return jax.tree.map(put, tree)


def _check_divisible(what: str, count: int, mesh: Mesh) -> None:
    if count % mesh.size:
        raise ValueError(f"{what} = {count} is not a multiple of the mesh's {mesh.size} devices; "
                         f"use a multiple of {mesh.size} (e.g. {-(-count // mesh.size) * mesh.size}).")


@partial(jax.jit, static_argnames=("mesh", "num_samples"))
def _sharded_rollout(mesh, task, controllers, init_key, sample_key, tracked_index, *, num_samples):
    sample_keys = jax.random.split(sample_key, num_samples)

    def per_device(task, controllers, init_key, keys, tracked_index):
        moments, outputs = rollout_samples(task, controllers, init_key, keys, tracked_index)
        return jax.lax.psum(moments, AXIS), outputs

    # check_vma=False: the scan carry starts replicated (x_0) and becomes per-device; psum and
    # the out_specs say what is summed and what is gathered.
    moments, outputs = jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(), P(), P(), P(AXIS), P()),
        out_specs=(P(), P(None, AXIS)), check_vma=False,
    )(task, controllers, init_key, sample_keys, tracked_index)
    data = assemble_rollout(moments, outputs)
    return jax.lax.with_sharding_constraint(data, NamedSharding(mesh, P()))


def sharded_rollout(mesh: Mesh, task, controllers: LinearGaussianController, init_key: jax.Array,
                    sample_key: jax.Array, tracked_index, *, num_samples: int) -> RolloutData:
    """``rollout`` with the N samples split over ``mesh`` (module docs); returns NumPy.

    Args:
      mesh: a mesh with axis ``"samples"`` (``samples_mesh``); N must be a multiple of its size.
      task, controllers, init_key, sample_key, tracked_index, num_samples: as ``rollout``.

    Returns:
      ``RolloutData`` as host NumPy arrays (moments ``(G, T, ...)``, per-sample outputs
      ``(N, ...)``), equal to ``rollout``'s up to float summation order in the moments.
    """
    _check_divisible("num_samples", num_samples, mesh)
    inputs = replicate(mesh, jax.device_get((task, controllers, init_key, tracked_index)))
    data = _sharded_rollout(mesh, *inputs[:3], replicate(mesh, sample_key), inputs[3],
                            num_samples=num_samples)
    return jax.device_get(data)


@partial(jax.jit, static_argnames=("mesh", "optimizer", "num_steps", "batch_size"))
def _sharded_s_step(mesh, theta, opt_state, data, key, *, optimizer, num_steps, batch_size):
    count = data.targets.shape[0]
    batch_size = min(batch_size, count)
    local = -(-batch_size // mesh.size)                 # sequences per device, the last padded
    padding = local * mesh.size - batch_size
    valid = (jnp.arange(local * mesh.size) < batch_size).astype(jnp.float32)
    schedule = jnp.pad(policy_fit.minibatch_schedule(key, count, batch_size, num_steps),
                       ((0, 0), (0, padding)))

    def per_device(theta, batch):
        # This device's share of the minibatch loss (normalised by the global minibatch).
        loss_fn = lambda th: policy_fit.s_step_loss(th, batch) * (local / batch_size)
        loss, grads = jax.value_and_grad(loss_fn)(theta)
        return jax.lax.psum((loss, grads), AXIS)

    # check_vma=False: theta is replicated and differentiated locally; the psum is explicit.
    split_grad = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)),
                               out_specs=P(), check_vma=False)
    masked_grad = lambda theta, batch: split_grad(
        theta, batch._replace(weights=batch.weights * valid[:, None]))
    result = policy_fit.fit_minibatches(theta, opt_state, data, schedule, optimizer=optimizer,
                                        loss_and_grad=masked_grad)
    return jax.lax.with_sharding_constraint(result, NamedSharding(mesh, P()))


def sharded_s_step(mesh: Mesh, theta, opt_state, data: policy_fit.SStepData, key: jax.Array, *,
                   optimizer: optax.GradientTransformation, num_steps: int, batch_size: int):
    """``policy_fit.s_step`` with every minibatch's BPTT split over ``mesh`` (module docs).

    Same minibatches (same shuffle of ``key``) and same Adam steps as ``s_step``; each device
    takes ⌈B/D⌉ sequences of a minibatch (zero-weight padding when D does not divide B) and the
    gradients are summed across devices. Returns ``(theta, opt_state, losses (num_steps,))`` as
    NumPy.
    """
    inputs = replicate(mesh, jax.device_get((theta, opt_state, data, key)))
    return jax.device_get(_sharded_s_step(mesh, *inputs, optimizer=optimizer,
                                          num_steps=num_steps, batch_size=batch_size))
