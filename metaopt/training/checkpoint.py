"""Orbax checkpoints of the GPS training state, one per iteration, with the log alongside.

Orbax writes each step into a temporary directory and renames it when complete, so an
interrupted save never leaves a checkpoint that ``restore`` would pick up. Orbax does not check
what it reads back, though (a flipped bit in an array file restores silently as a wrong value),
so ``save`` stores a SHA-256 of the state and the log next to them and ``restore`` compares it;
a checkpoint that is truncated, garbled, incomplete or of another configuration raises
:class:`CheckpointError` naming the step's directory and the fix.
"""

import hashlib
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["CheckpointError", "manager", "restore", "save"]


class CheckpointError(ValueError):
    """A checkpoint cannot be restored; the message names its directory and what to do."""


def manager(directory, max_to_keep: int | None = 3) -> ocp.CheckpointManager:
    """A ``CheckpointManager`` over ``directory`` (created if missing) with items state and log."""
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CheckpointError(
            f"{directory} is a file, not a checkpoint directory; pass a directory (it is created "
            "if missing)."
        )
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "log"))


def _digest(state, entries) -> str:
    """SHA-256 of the state's leaves (dtype, shape, bytes, in tree order) and of the log."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    digest.update(json.dumps(entries).encode())  # as Orbax's JsonSave writes it
    return digest.hexdigest()


def save(checkpoints: ocp.CheckpointManager, state, log: list[dict]) -> None:
    """Saves ``state`` (a ``TrainState``) and ``log`` as step ``state.iteration``."""
    checkpoints.save(int(state.iteration), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        log=ocp.args.JsonSave({"entries": log, "sha256": _digest(state, log)})))
    checkpoints.wait_until_finished()


def _fix(checkpoints: ocp.CheckpointManager, step) -> str:
    directory = os.fspath(checkpoints.directory)
    earlier = [s for s in checkpoints.all_steps() if step is None or s < step]
    step_dir = os.path.join(directory, str(step))
    if earlier:
        return (f"Fix: delete {step_dir} and resume (--resume) from step {max(earlier)}, the "
                f"latest earlier checkpoint, or delete {directory} to start over.")
    return f"Fix: delete {directory} (or the step directory {step_dir}) and train from the start."


def restore(checkpoints: ocp.CheckpointManager, template, step: int | None = None):
    """``(state, log)`` of ``step`` (default: the latest), shaped like ``template``.

    Raises:
      CheckpointError: there is no checkpoint, or the one asked for is truncated, corrupt,
        incomplete, does not match ``template`` (another configuration), or fails its checksum.
        The message names the step's directory and the fix (an earlier step, or start over).
    """
    directory = os.fspath(checkpoints.directory)
    step = checkpoints.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"{directory} holds no checkpoint to resume from; train without "
                              "--resume to start a new run there.")
    step_dir = os.path.join(directory, str(step))
    try:
        restored = checkpoints.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(template), log=ocp.args.JsonRestore()))
        state = jax.tree.map(lambda t, r: np.asarray(r, dtype=np.asarray(t).dtype), template,
                             restored["state"])
        saved = restored["log"]
        entries = list(saved["entries"])
        for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(template),
                                     jax.tree.leaves(restored["state"]), strict=True):
            if np.shape(want) != np.shape(got):
                raise ValueError(f"{jax.tree_util.keystr(path)} has shape {np.shape(got)}, "
                                 f"this run's is {np.shape(want)}")
    except Exception as err:  # Orbax/TensorStore raise many types (ValueError, KeyError, OSError...)
        message = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        raise CheckpointError(
            f"checkpoint {step_dir} cannot be restored: it is truncated, corrupt, incomplete, or "
            f"from another configuration ({message}). {_fix(checkpoints, step)}"
        ) from err
    expected = saved.get("sha256")  # absent in checkpoints written before it was added
    if expected is not None and _digest(state, entries) != expected:
        raise CheckpointError(
            f"checkpoint {step_dir} is corrupt: its contents do not match the SHA-256 stored "
            f"with it. {_fix(checkpoints, step)}"
        )
    return state, entries
