"""Orbax checkpoints of the GPS training state, one per iteration, with the log alongside.

Orbax writes each step into a temporary directory and renames it when complete, so an
interrupted save never leaves a checkpoint that ``restore`` would pick up.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp


def manager(directory, max_to_keep: int | None = 3) -> ocp.CheckpointManager:
    """A ``CheckpointManager`` over ``directory`` (created if missing) with items state and log."""
    directory = os.path.abspath(os.fspath(directory))
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "log"))


def save(checkpoints: ocp.CheckpointManager, state, log: list[dict]) -> None:
    """Saves ``state`` (a ``TrainState``) and ``log`` as step ``state.iteration``."""
    checkpoints.save(int(state.iteration), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), log=ocp.args.JsonSave({"entries": log})))
    checkpoints.wait_until_finished()


def restore(checkpoints: ocp.CheckpointManager, template, step: int | None = None):
    """``(state, log)`` of ``step`` (default: the latest), shaped like ``template``."""
    step = checkpoints.latest_step() if step is None else step
    restored = checkpoints.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template), log=ocp.args.JsonRestore()))
    state = jax.tree.map(lambda t, r: np.asarray(r, dtype=np.asarray(t).dtype), template,
                         restored["state"])
    return state, list(restored["log"]["entries"])
