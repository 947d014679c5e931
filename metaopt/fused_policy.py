"""The policy step as one fused CPU kernel (``metaopt/csrc/fused_policy_step.cc``).

Same function as :func:`metaopt.policy.apply_policy`; on CPU about 1.4x faster at a few thousand
coordinates, because the (coordinates, 4H) gate block never goes to memory
(``benchmarks/step_overhead.py``). ``metaopt.learned_opt`` uses it on a single CPU device and
falls back to the XLA path elsewhere (accelerators, meshes) or when the kernel cannot be built.

The kernel is compiled on first use with the system C++ compiler (``$CXX``, else ``c++``/``g++``)
against jaxlib's XLA FFI headers, for this machine's instruction set (``-march=native``), and
cached under ``$METAOPT_KERNEL_CACHE`` (default ``~/.cache/metaopt/kernels``), keyed by the
source, jaxlib version and CPU. It is used on x86-64 CPUs with AVX2 or AVX-512 (its register
tiling is written for those; a 4-float SSE build measured 5x slower than the matmul); other CPUs
run the XLA path silently. No compiler, a failed build, or an x86 CPU without AVX2: one warning,
then the XLA path. ``METAOPT_FUSED_POLICY=0`` turns it off.

Gradients: the kernel has none of its own; a JVP rule differentiates the XLA path instead, so
``jax.grad``/``jax.jvp`` through ``learned_opt`` give the same derivatives as without the kernel.
``jax.vmap`` folds batched coordinates into the kernel's rows; batched weights use the XLA path.

Example::

  if fused_policy_available(theta):
      carry, step = fused_policy_step(theta, carry, obs, active=ok)
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib

from metaopt.policy import LSTMCarry, Theta, apply_policy

__all__ = ["fused_policy_available", "fused_policy_step", "kernel_library"]

_SOURCE = Path(__file__).with_name("csrc") / "fused_policy_step.cc"
_TARGET = "metaopt_fused_policy_step"
_SYMBOL = "MetaoptFusedPolicyStep"
_MAX_HIDDEN = 512
# Measured (benchmarks/RESULTS.md): AVX-512 and AVX2 builds beat XLA's step; a 4-float (SSE)
# build runs 5x slower than the matmul, so it is not used.
_MIN_LANES = 8
_MAX_OBS = 8
_lock = threading.Lock()
_state: dict = {}


def _cpu_signature() -> str:
    """What -march=native depends on: a cached build must not run on a CPU without its ISA."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cache_dir() -> Path:
    configured = os.environ.get("METAOPT_KERNEL_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "metaopt" / "kernels"


def _build(compiler: str, *, rebuild: bool = False) -> Path:
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(
        source + jaxlib.__version__.encode() + _cpu_signature().encode() + compiler.encode()
    ).hexdigest()[:16]
    cache = _cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        writable = os.access(cache, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        cache = Path(tempfile.gettempdir()) / f"metaopt-kernels-{os.getuid()}"
        cache.mkdir(parents=True, exist_ok=True)
    library = cache / f"fused_policy_step-{key}.so"
    if library.exists() and not rebuild:
        return library
    base = [compiler, "-O3", "-std=c++17", "-ffp-contract=fast", "-shared", "-fPIC", "-w",
            f"-I{jax.ffi.include_dir()}"]
    # Written under a unique name, then renamed: concurrent builds (pytest -n, several
    # processes) never load a half-written library.
    partial = cache / f".{library.name}.{os.getpid()}.{threading.get_ident()}"
    errors = []
    for flags in (["-march=native"], []):  # some compilers (Apple clang on arm64) reject it
        result = subprocess.run(
            [*base, *flags, str(_SOURCE), "-o", str(partial)],
            capture_output=True, text=True, check=False,
        )
        if result.returncode == 0:
            os.replace(partial, library)
            return library
        errors.append("\n".join([ln for ln in result.stderr.splitlines() if "error" in ln][:10]))
    partial.unlink(missing_ok=True)
    raise RuntimeError(f"{compiler} could not build {_SOURCE.name}:\n" + "\n".join(errors))


def kernel_library() -> Path | None:
    """Builds (once per process, cached on disk) and registers the kernel; its path, or None.

    None when ``METAOPT_FUSED_POLICY=0``, when no C++ compiler is found, or when the build
    fails (then a warning says why; the XLA path is used).
    """
    if os.environ.get("METAOPT_FUSED_POLICY", "1") == "0":
        return None
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None  # tuned and measured for x86 AVX2/AVX-512 only; XLA elsewhere
    with _lock:
        if "library" in _state:
            return _state["library"]
        library = None
        compiler = _compiler()
        if compiler is None:
            warnings.warn(
                "metaopt: no C++ compiler found ($CXX, c++, g++, clang++); learned_opt uses the "
                "XLA policy step on CPU (about 1.4x slower). Install g++ to enable the fused "
                "kernel, or set METAOPT_FUSED_POLICY=0 to silence this.",
                stacklevel=3,
            )
        else:
            try:
                library = _build(compiler)
                try:
                    handle = ctypes.cdll.LoadLibrary(str(library))
                except OSError:  # a damaged cached build: build it again, once
                    library = _build(compiler, rebuild=True)
                    handle = ctypes.cdll.LoadLibrary(str(library))
                lanes = _state["lanes"] = handle.MetaoptFusedPolicyStepLanes()
                if lanes < _MIN_LANES:
                    raise RuntimeError(
                        f"this CPU has no AVX2 ({lanes}-float vectors), where the kernel is "
                        "slower than XLA"
                    )
                jax.ffi.register_ffi_target(
                    _TARGET, jax.ffi.pycapsule(getattr(handle, _SYMBOL)), platform="cpu"
                )
            except (OSError, RuntimeError, AttributeError) as err:
                warnings.warn(
                    f"metaopt: the fused CPU policy kernel is unavailable ({err}); learned_opt "
                    "uses the XLA policy step. Set METAOPT_FUSED_POLICY=0 to silence this.",
                    stacklevel=3,
                )
                library = None
        _state["library"] = library
        return library


def fused_policy_available(theta: Theta) -> bool:
    """Whether :func:`fused_policy_step` applies here: CPU default backend, one device, a policy
    shape the kernel supports, and the kernel built."""
    hidden = theta["head"]["kernel"].shape[0]
    obs_dim = theta["gates"]["kernel"].shape[0] - hidden
    return (
        jax.default_backend() == "cpu"
        and jax.device_count() == 1
        and hidden % 16 == 0
        and 0 < hidden <= _MAX_HIDDEN
        and 0 < obs_dim <= _MAX_OBS
        and kernel_library() is not None
    )


def _kernel_call(theta, cell, hidden, obs, active):
    kernel = theta["gates"]["kernel"]
    n_in, n_gates = kernel.shape
    cols = 2 * _state["lanes"]
    # The kernel's panel layout (see the .cc). Identical for every leaf of an update, so XLA
    # computes it once per program (common-subexpression elimination), not once per call.
    packed = kernel.reshape(n_in, n_gates // cols, cols).transpose(1, 0, 2)
    out_types = (
        jax.ShapeDtypeStruct(cell.shape, jnp.float32),
        jax.ShapeDtypeStruct(cell.shape, jnp.float32),
        jax.ShapeDtypeStruct(obs.shape[:-1], jnp.float32),
    )
    return jax.ffi.ffi_call(_TARGET, out_types)(
        cell, hidden, obs, packed, theta["gates"]["bias"], theta["head"]["kernel"],
        theta["head"]["bias"], active,
    )


@jax.custom_batching.custom_vmap
def _batchable_call(theta, cell, hidden, obs, active):
    return _kernel_call(theta, cell, hidden, obs, active)


@_batchable_call.def_vmap
def _batchable_call_vmap(axis_size, in_batched, theta, cell, hidden, obs, active):
    theta_batched, *data_batched = in_batched
    if any(jax.tree.leaves(theta_batched)):
        # A batch of policies: the kernel takes one weight set, so run the XLA path.
        def one(theta, cell, hidden, obs, active):
            carry, step = apply_policy(theta, LSTMCarry(cell, hidden), obs, active=active)
            return carry.cell, carry.hidden, step

        axes = (jax.tree.map(lambda b: 0 if b else None, theta_batched),) + tuple(
            0 if b else None for b in data_batched
        )
        outputs = jax.vmap(one, in_axes=axes)(theta, cell, hidden, obs, active)
        return outputs, (True, True, True)
    # Coordinates are independent: the batch axis becomes more rows.
    grow = lambda a, b: a if b else jnp.broadcast_to(a, (axis_size,) + jnp.shape(a))
    cell, hidden, obs = (grow(a, b) for a, b in zip((cell, hidden, obs), data_batched[:3], strict=True))
    if data_batched[3]:
        active = active.reshape(active.shape + (1,) * (obs.ndim - 1 - active.ndim))
    active = jnp.broadcast_to(active, obs.shape[:-1])
    return _batchable_call(theta, cell, hidden, obs, active), (True, True, True)


@jax.custom_jvp
def _fused(theta, cell, hidden, obs, active):
    return _batchable_call(theta, cell, hidden, obs, active)


@_fused.defjvp
def _fused_jvp(primals, tangents):
    theta, cell, hidden, obs, active = primals
    d_theta, d_cell, d_hidden, d_obs, _ = tangents

    def reference(theta, cell, hidden, obs):
        carry, step = apply_policy(theta, LSTMCarry(cell, hidden), obs, active=active)
        return carry.cell, carry.hidden, step

    _, tangent_out = jax.jvp(reference, (theta, cell, hidden, obs), (d_theta, d_cell, d_hidden, d_obs))
    return _fused(theta, cell, hidden, obs, active), tangent_out


def fused_policy_step(theta: Theta, carry: LSTMCarry, observations: jax.Array, *, active=None):
    """:func:`metaopt.policy.apply_policy` by the fused CPU kernel (check
    :func:`fused_policy_available` first).

    Args:
      theta: policy weights (cast to float32).
      carry: :class:`LSTMCarry`, ``(..., H)``.
      observations: ``(..., D_obs)``.
      active: optional bool scalar or ``(...)`` array; where False the carry is returned
        unchanged and the step is 0.

    Returns:
      ``(new_carry, steps)``, ``steps`` of shape ``(...)``, float32.
    """
    if kernel_library() is None:
        raise RuntimeError(
            "fused_policy_step: the kernel is not available here (see the warning above, or "
            "METAOPT_FUSED_POLICY=0); call metaopt.policy.apply_policy instead."
        )
    hidden_size = theta["head"]["kernel"].shape[0]
    obs_dim = theta["gates"]["kernel"].shape[0] - hidden_size
    rows_shape = observations.shape[:-1]
    want = rows_shape + (hidden_size,)
    if observations.shape[-1:] != (obs_dim,) or any(jnp.shape(a) != want for a in carry):
        raise ValueError(
            f"fused_policy_step: observations {observations.shape} and carry "
            f"{[jnp.shape(a) for a in carry]} do not fit the policy (H = {hidden_size}, "
            f"{obs_dim} features): expected observations (..., {obs_dim}) and carry (..., "
            f"{hidden_size}) over the same coordinates (metaopt.policy.init_carry)."
        )
    active = jnp.ones((), bool) if active is None else jnp.asarray(active, bool)
    if active.ndim:
        active = jnp.broadcast_to(active, rows_shape)
    cell, hidden = (jnp.asarray(a, jnp.float32) for a in carry)
    theta = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), theta)
    new_cell, new_hidden, step = _fused(theta, cell, hidden, jnp.asarray(observations, jnp.float32), active)
    return LSTMCarry(new_cell, new_hidden), step
