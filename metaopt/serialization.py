"""``save`` / ``load`` for policy weights: a small self-describing file.

Layout (little-endian)::

  b"METAOPT-POLICY\\n"            magic, 15 bytes
  uint64                          n = length of the header
  n bytes                         JSON header (UTF-8): format version, architecture, feature set,
                                  payload size and SHA-256, free-form user metadata
  payload                         the weights, msgpack via flax.serialization

A file of another format version is refused (with both versions in the message); a file that is
not a policy, is truncated or is corrupt raises :class:`PolicyFileError` naming the file. The
resumable meta-training state is an Orbax checkpoint, not this file.

Example::

  metaopt.save("policy.metaopt", theta, metadata={"trained_on": "mnist-48-48-10"})
  theta = metaopt.load("policy.metaopt")

The same format holds the weights of the L2L baseline (Andrychowicz et al. 2016,
:mod:`metaopt.optimizers.l2l`): ``save_l2l`` / ``load_l2l``, architecture
``"l2l-coordinatewise-lstm"``; each loader refuses the other's files with a ``PolicyFileError``.
"""

import hashlib
import json
import os
import struct
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from metaopt import mlp_policy, scale_free_features
from metaopt.features import OBS_DIM
from metaopt.optimizers import l2l
from metaopt.policy import Theta, policy_hidden_size

FORMAT_VERSION = 1
MAGIC = b"METAOPT-POLICY\n"
_MAX_HEADER_BYTES = 1 << 20

ARCHITECTURE_NAME = "per-coordinate-lstm"
FEATURE_SET = {
    "name": "li-malik-2017-observation",
    "dim": OBS_DIM,
    "features": [
        "(f(t) - f(t-1)) / max(|f(t-1)|, 1e-8)",
        "g(t) / (|g(max(t-1,0))| + 1)",
        "|x(max(t-1,1)) - x(max(t-2,0))| / (|x(t) - x(t-1)| + 0.1)",
    ],
}

MLP_FEATURE_SET = {
    "name": "scale-free-v1",
    "dim": scale_free_features.SCALE_FREE_DIM,
    "momentum_decays": list(scale_free_features.MOMENTUM_DECAYS),
    "magnitude_decay": scale_free_features.MAGNITUDE_DECAY,
    "time_scales": list(scale_free_features.TIME_SCALES),
    "feature_limit": scale_free_features.FEATURE_LIMIT,
}


def _mlp_architecture(hidden_sizes: tuple[int, ...]) -> dict[str, Any]:
    return {
        "name": mlp_policy.MLP_POLICY_KIND,
        "hidden_sizes": [int(h) for h in hidden_sizes],
        "observation_dim": scale_free_features.SCALE_FREE_DIM,
        "activation": "relu",
        "output": "scale * tanh(d) * exp(clip(m))",
        "log_step_range": [mlp_policy.LOG_STEP_MIN, mlp_policy.LOG_STEP_MAX],
    }


__all__ = [
    "FORMAT_VERSION",
    "PolicyFileError",
    "load",
    "load_l2l",
    "read_header",
    "save",
    "save_l2l",
]


class PolicyFileError(ValueError):
    """The file is not a readable metaopt policy file of this format version."""


def _architecture(hidden_size: int) -> dict[str, Any]:
    return {
        "name": ARCHITECTURE_NAME,
        "hidden_size": hidden_size,
        "observation_dim": OBS_DIM,
        "gate_order": "ifgo",
        "head": "linear",
        "output": "step",
    }


def save(path: str | os.PathLike, theta: Theta, *, metadata: dict[str, Any] | None = None) -> None:
    """Writes policy weights and a JSON header describing them to ``path`` (atomically).

    Args:
      path: destination file.
      theta: policy weights, the paper's LSTM or a scale-free MLP policy (validated; stored as
        float32; the header records which).
      metadata: optional JSON-serialisable dict stored in the header (e.g. training details).
    """
    if mlp_policy.is_mlp_policy(theta):
        hidden_sizes = mlp_policy.mlp_policy_sizes(theta)
        _write(path, theta, _mlp_architecture(hidden_sizes), MLP_FEATURE_SET, metadata)
        return
    hidden_size = policy_hidden_size(theta)
    _write(path, theta, _architecture(hidden_size), FEATURE_SET, metadata)


def _write(path, theta, architecture: dict, feature_set: dict, metadata: dict | None) -> None:
    weights = jax.tree.map(lambda a: np.asarray(a, np.float32), theta)
    payload = serialization.msgpack_serialize(weights)
    header = {
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "features": feature_set,
        "dtype": "float32",
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "metadata": metadata or {},
    }
    header_bytes = json.dumps(header, sort_keys=True).encode("utf-8")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("wb", dir=directory, delete=False) as f:
        tmp = f.name
        try:
            f.write(MAGIC + struct.pack("<Q", len(header_bytes)) + header_bytes + payload)
        except BaseException:
            f.close()
            os.unlink(tmp)
            raise
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)   # NamedTemporaryFile makes 0600; a saved policy is an ordinary file
    os.replace(tmp, path)


def _read(path: str | os.PathLike) -> tuple[dict[str, Any], bytes]:
    path = os.fspath(path)
    if os.path.isdir(path):
        raise PolicyFileError(
            f"{path} is a directory, not a metaopt policy file (policy files are single files "
            "written by metaopt.save; a training run's Orbax checkpoints are not policy files)"
        )
    with open(path, "rb") as f:
        # Piece by piece, so that a large file that is not a policy is never read whole.
        magic = f.read(len(MAGIC))
        if magic != MAGIC:
            what = "an empty file" if not magic else "bad magic bytes"
            raise PolicyFileError(f"{path} is not a metaopt policy file ({what})")
        length = f.read(8)
        if len(length) < 8:
            raise PolicyFileError(f"{path} is truncated (no header length)")
        (header_len,) = struct.unpack("<Q", length)
        if header_len > _MAX_HEADER_BYTES:
            raise PolicyFileError(f"{path} is corrupt (header of {header_len} bytes)")
        header_bytes = f.read(header_len)
        if len(header_bytes) < header_len:
            raise PolicyFileError(f"{path} is truncated or corrupt (header of {header_len} bytes)")
        payload = f.read()
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PolicyFileError(f"{path} has a corrupt header: {err}") from err
    if not isinstance(header, dict) or "format_version" not in header:
        raise PolicyFileError(f"{path} has a corrupt header: not a JSON object with a format_version")
    version = header["format_version"]
    if version != FORMAT_VERSION:
        raise PolicyFileError(
            f"{path} has policy format version {version!r}; this metaopt reads version "
            f"{FORMAT_VERSION} only. Load it with the metaopt release that wrote it and re-save."
        )
    for key in ("architecture", "features"):
        if not isinstance(header.get(key), dict):
            raise PolicyFileError(f"{path} has a corrupt header: {key!r} is missing or not an object")
    return header, payload


def _read_verified(path: str | os.PathLike) -> tuple[dict[str, Any], bytes]:
    """``_read`` plus the payload's size and checksum against the header."""
    header, payload = _read(path)
    if len(payload) != header.get("payload_bytes") or (
        hashlib.sha256(payload).hexdigest() != header.get("payload_sha256")
    ):
        raise PolicyFileError(
            f"{os.fspath(path)} is truncated or corrupt: weights are {len(payload)} bytes, header "
            f"says {header.get('payload_bytes')} (or the checksum differs)"
        )
    return header, payload


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a policy file (architecture, feature set, metadata, ...)."""
    return _read(path)[0]


def load(path: str | os.PathLike) -> Theta:
    """Reads policy weights written by :func:`save`; returns ``theta`` (float32 jax arrays).

    Raises:
      PolicyFileError: not a policy file (including an empty file or a directory), another
        format version, truncated or corrupt, or weights that do not match the header's
        architecture. The message names the file.
      FileNotFoundError: no such file (the message names it).
    """
    header, payload = _read_verified(path)
    path = os.fspath(path)
    architecture = header["architecture"]
    if architecture.get("name") == mlp_policy.MLP_POLICY_KIND:
        if header["features"] != MLP_FEATURE_SET or architecture != _mlp_architecture(
                architecture.get("hidden_sizes") or ()):
            raise PolicyFileError(
                f"{path} holds a scale-free MLP policy for features {header['features']} and "
                f"architecture {architecture}; this metaopt runs {MLP_FEATURE_SET} with "
                f"{_mlp_architecture(tuple(architecture.get('hidden_sizes') or ()))}")
        theta, sizes = _restore_weights(path, payload, mlp_policy.mlp_policy_sizes)
        if list(sizes) != architecture["hidden_sizes"]:
            raise PolicyFileError(f"{path}: weights have hidden sizes {list(sizes)}, header says "
                                  f"{architecture['hidden_sizes']}")
        return theta
    if architecture.get("name") != ARCHITECTURE_NAME or header["features"] != FEATURE_SET:
        raise PolicyFileError(
            f"{path} holds architecture {architecture.get('name')!r} with feature set "
            f"{header['features'].get('name')!r}; this metaopt runs "
            f"{ARCHITECTURE_NAME!r} with {FEATURE_SET['name']!r}"
        )
    theta, hidden_size = _restore_weights(path, payload, policy_hidden_size)
    if hidden_size != architecture.get("hidden_size"):
        raise PolicyFileError(
            f"{path}: weights have {hidden_size} LSTM cells, header says "
            f"{architecture.get('hidden_size')}"
        )
    return theta


def _restore_weights(path: str, payload: bytes, describe):
    """The payload's weights as float32 arrays and ``describe(theta)`` (which validates them)."""
    try:
        weights = serialization.msgpack_restore(payload)
        theta = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), weights)
        return theta, describe(theta)
    except Exception as err:  # msgpack raises several unrelated types on garbage
        raise PolicyFileError(f"{path} has corrupt weights: {err}") from err


# --- Andrychowicz et al. 2016's L2L optimizer (metaopt.optimizers.l2l), a baseline -------------

L2L_FEATURE_SET = {
    "name": "andrychowicz-2016-log-sign",
    "dim": l2l.INPUT_DIM,
    "p": l2l.PREPROCESS_P,
    "features": ["log(|g|)/p if |g| >= exp(-p) else -1", "sign(g) if |g| >= exp(-p) else exp(p)*g"],
}


def _l2l_architecture(hidden_size: int, num_layers: int) -> dict[str, Any]:
    return {
        "name": l2l.ARCHITECTURE_NAME,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "gate_order": "ifgo",
        "head": "linear",
        "output_scale": l2l.OUTPUT_SCALE,
        "output": "step",
    }


def save_l2l(
    path: str | os.PathLike, theta: l2l.L2LTheta, *, metadata: dict[str, Any] | None = None
) -> None:
    """Writes L2L weights (:func:`metaopt.optimizers.l2l.init_l2l` layout) like :func:`save`."""
    hidden_size, num_layers = l2l.l2l_shape(theta)
    _write(path, theta, _l2l_architecture(hidden_size, num_layers), L2L_FEATURE_SET, metadata)


def load_l2l(path: str | os.PathLike) -> l2l.L2LTheta:
    """Reads L2L weights written by :func:`save_l2l`; returns ``theta`` (float32 jax arrays).

    Raises:
      PolicyFileError: not a metaopt file, another format version, truncated or corrupt, or a
        file of another architecture (e.g. the GPS policy, which :func:`load` reads).
    """
    header, payload = _read_verified(path)
    path = os.fspath(path)
    architecture = header["architecture"]
    if architecture.get("name") != l2l.ARCHITECTURE_NAME:
        raise PolicyFileError(
            f"{path} holds architecture {architecture.get('name')!r}, not "
            f"{l2l.ARCHITECTURE_NAME!r}; load a GPS policy with metaopt.load"
        )
    if header["features"] != L2L_FEATURE_SET or architecture.get("output_scale") != l2l.OUTPUT_SCALE:
        raise PolicyFileError(
            f"{path} holds L2L weights for preprocessing {header['features']} and output scale "
            f"{architecture.get('output_scale')!r}; this metaopt runs {L2L_FEATURE_SET} with "
            f"output scale {l2l.OUTPUT_SCALE}"
        )
    theta, shape = _restore_weights(path, payload, l2l.l2l_shape)
    if shape != (architecture.get("hidden_size"), architecture.get("num_layers")):
        raise PolicyFileError(
            f"{path}: weights have {shape[1]} layers of {shape[0]} LSTM cells, header says "
            f"{architecture.get('num_layers')} of {architecture.get('hidden_size')}"
        )
    return theta
