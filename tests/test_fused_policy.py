"""The fused CPU policy kernel (metaopt.fused_policy): same function as the XLA path and a NumPy
transcription, under jit/vmap/grad, inside learned_opt, and its fallbacks."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from toy_tasks import optax_step

from metaopt.fused_policy import fused_policy_available, fused_policy_step, kernel_library
from metaopt.learned_optimizer import learned_opt
from metaopt.policy import LSTMCarry, apply_policy, init_policy

pytestmark = pytest.mark.skipif(
    kernel_library() is None, reason="no C++ compiler here: the XLA path is used and tested"
)


def _theta(hidden=128, scale=0.3, seed=0):
    """init_policy with every weight perturbed, so every cell and gate matters."""
    theta = init_policy(jax.random.key(seed), hidden_size=hidden)
    keys = iter(jax.random.split(jax.random.key(seed + 1), 4))
    return jax.tree.map(lambda w: w + scale * jax.random.normal(next(keys), w.shape), theta)


def _carry_and_obs(shape, hidden=128, seed=2, scale=2.0):
    keys = jax.random.split(jax.random.key(seed), 3)
    carry = LSTMCarry(*(scale * jax.random.normal(k, shape + (hidden,)) for k in keys[:2]))
    return carry, scale * jax.random.normal(keys[2], shape + (3,))


def _numpy_step(theta, carry, obs):
    """Float64 transcription of one LSTM step with gate order [i, f, g, o] and a linear head."""
    w = {k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in theta.items()}
    x = np.concatenate([np.asarray(obs, np.float64), np.asarray(carry.hidden, np.float64)], -1)
    i, f, g, o = np.split(x @ w["gates"]["kernel"] + w["gates"]["bias"], 4, axis=-1)
    sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))
    cell = sigmoid(f) * np.asarray(carry.cell, np.float64) + sigmoid(i) * np.tanh(g)
    hidden = sigmoid(o) * np.tanh(cell)
    return cell, hidden, (hidden @ w["head"]["kernel"])[..., 0] + w["head"]["bias"][0]


def _assert_close(a, b, rtol=1e-5, atol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


fused = jax.jit(lambda theta, carry, obs, active=None: fused_policy_step(theta, carry, obs, active=active))


@pytest.mark.parametrize("shape", [(), (1,), (7,), (9,), (13, 7), (2842,), (0,), (3, 0)])
def test_matches_numpy_transcription_and_xla_path(shape):
    theta = _theta()
    carry, obs = _carry_and_obs(shape)
    new_carry, step = fused(theta, carry, obs)
    assert new_carry.cell.shape == shape + (128,) and step.shape == shape
    assert step.dtype == jnp.float32
    cell, hidden, want_step = _numpy_step(theta, carry, obs)
    _assert_close((new_carry.cell, new_carry.hidden, step), (cell, hidden, want_step), 2e-5, 2e-5)
    _assert_close((new_carry, step), apply_policy(theta, carry, obs))


@pytest.mark.parametrize("hidden", [16, 32, 48])
def test_other_hidden_sizes(hidden):
    theta = _theta(hidden)
    assert fused_policy_available(theta)
    carry, obs = _carry_and_obs((37,), hidden)
    _assert_close(fused(theta, carry, obs), apply_policy(theta, carry, obs))


def test_unsupported_hidden_size_is_not_offered():
    assert not fused_policy_available(_theta(24))  # not a multiple of 16
    assert not fused_policy_available(_theta(1024))


@settings(max_examples=15, deadline=None)
@given(
    rows=st.integers(0, 40),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
    mask=st.sampled_from(["none", "true", "false", "rows"]),
    seed=st.integers(0, 3),
)
def test_property_same_as_xla_path_and_finite(rows, scale, mask, seed):
    theta = _theta(scale=0.3, seed=seed)
    carry, obs = _carry_and_obs((rows,), seed=seed + 5, scale=scale)
    active = {"none": None, "true": True, "false": False,
              "rows": jnp.arange(rows) % 3 != 1}[mask]
    got = fused(theta, carry, obs, active)
    # Float32 sums of 131 terms in another order: the gates differ by ~eps·Σ|terms| ∝ scale, and
    # the cell by that times the old cell (∝ scale) where a gate is not saturated.
    want = apply_policy(theta, carry, obs, active=active)
    if scale <= 30:
        _assert_close(got, want, 1e-5, 2e-6 * max(scale, 1) ** 2)
    else:
        _assert_close(got, want, 1e-2, 1e-2 * scale)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(got))


def test_inactive_rows_keep_their_carry_exactly():
    theta = _theta()
    carry, obs = _carry_and_obs((20,))
    obs = obs.at[3].set(jnp.nan)  # an inactive row's observation is never used
    active = jnp.arange(20) != 3
    new_carry, step = fused(theta, carry, obs, active)
    assert float(step[3]) == 0.0
    np.testing.assert_array_equal(new_carry.cell[3], carry.cell[3])
    np.testing.assert_array_equal(new_carry.hidden[3], carry.hidden[3])
    new_carry, step = fused(theta, carry, obs, False)
    np.testing.assert_array_equal(step, jnp.zeros(20))
    _assert_close(new_carry, carry, 0, 0)


def test_vmap_over_coordinates_and_over_policies():
    theta = _theta()
    carry, obs = _carry_and_obs((4, 30))
    active = jnp.array([True, False, True, True])
    one = lambda t, c, o, a: fused_policy_step(t, c, o, active=a)
    ref = lambda t, c, o, a: apply_policy(t, c, o, active=a)
    _assert_close(jax.jit(jax.vmap(one, (None, 0, 0, 0)))(theta, carry, obs, active),
                  jax.vmap(ref, (None, 0, 0, 0))(theta, carry, obs, active))
    thetas = jax.tree.map(lambda w: jnp.stack([w, 0.5 * w, w, 2 * w]), theta)
    _assert_close(jax.jit(jax.vmap(one, (0, 0, 0, None)))(thetas, carry, obs, True),
                  jax.vmap(ref, (0, 0, 0, None))(thetas, carry, obs, True))
    _assert_close(jax.jit(jax.vmap(jax.vmap(one, (None, 0, 0, None)), (None, 0, 0, None)))(
                      theta, carry, obs, True),
                  jax.vmap(jax.vmap(ref, (None, 0, 0, None)), (None, 0, 0, None))(
                      theta, carry, obs, True))
    # Only the observations batched: the carry is shared by the batch.
    shared = jax.tree.map(lambda a: a[0], carry)
    _assert_close(jax.jit(jax.vmap(one, (None, None, 0, None)))(theta, shared, obs, True),
                  jax.vmap(ref, (None, None, 0, None))(theta, shared, obs, True))


def test_gradients_are_the_xla_paths():
    theta = _theta()
    carry, obs = _carry_and_obs((25,))

    def loss(step_fn):
        def value(theta, carry, obs):
            new_carry, step = step_fn(theta, carry, obs)
            return jnp.sum(step**2) + jnp.sum(jnp.sin(new_carry.cell)) + jnp.sum(new_carry.hidden)
        return value

    want = jax.grad(loss(apply_policy), argnums=(0, 1, 2))(theta, carry, obs)
    got = jax.jit(jax.grad(loss(fused_policy_step), argnums=(0, 1, 2)))(theta, carry, obs)
    _assert_close(got, want, 1e-4, 1e-5)
    tangent = jax.tree.map(jnp.ones_like, theta)
    _, jvp_want = jax.jvp(lambda t: apply_policy(t, carry, obs), (theta,), (tangent,))
    _, jvp_got = jax.jvp(lambda t: fused_policy_step(t, carry, obs), (theta,), (tangent,))
    _assert_close(jvp_got, jvp_want, 1e-4, 1e-5)


def test_mismatched_shapes_are_a_clear_error():
    theta = _theta()
    carry, obs = _carry_and_obs((5,))
    with pytest.raises(ValueError, match="do not fit the policy"):
        fused_policy_step(theta, carry, obs[:4])
    with pytest.raises(ValueError, match="do not fit the policy"):
        fused_policy_step(theta, carry, obs[:, :2])


def _mlp_problem():
    params = {"w1": 0.3 * jax.random.normal(jax.random.key(0), (20, 48)), "b1": jnp.zeros(48),
              "w2": 0.3 * jax.random.normal(jax.random.key(1), (48, 3)), "b2": jnp.zeros(3)}
    x = jax.random.normal(jax.random.key(2), (64, 20))
    y = jax.random.normal(jax.random.key(3), (64, 3))

    def loss(p):
        return jnp.mean((jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"] - y) ** 2)

    return params, loss


def _run(tx, params, loss, steps=25):
    step, state, values = jax.jit(optax_step(tx, loss)), tx.init(params), []
    for _ in range(steps):
        params, state, value = step(params, state)
        values.append(float(value))
    return params, state, values


def test_learned_opt_uses_the_kernel_and_matches_the_xla_path(monkeypatch):
    theta = init_policy(jax.random.key(0))
    theta = {**theta, "head": {"kernel": theta["head"]["kernel"]
                               + 1e-3 * jax.random.normal(jax.random.key(4), (128, 1)),
                               "bias": jnp.zeros(1)}}
    params, loss = _mlp_problem()
    tx = learned_opt(theta)
    args = (params, tx.init(params), params)
    lowered = jax.jit(lambda g, s, p: tx.update(g, s, p, value=1.0)).lower(*args).as_text()
    assert "metaopt_fused_policy_step" in lowered
    fused_run = _run(tx, params, loss)
    monkeypatch.setenv("METAOPT_FUSED_POLICY", "0")
    lowered = jax.jit(lambda g, s, p: tx.update(g, s, p, value=1.0)).lower(*args).as_text()
    assert "metaopt_fused_policy_step" not in lowered
    xla_run = _run(tx, params, loss)
    assert fused_run[2][-1] < 0.9 * fused_run[2][0]
    _assert_close(fused_run, xla_run, 1e-4, 1e-6)


_SUBPROCESS = textwrap.dedent("""
    import warnings
    import jax, jax.numpy as jnp, optax
    from metaopt import learned_opt
    from metaopt.fused_policy import kernel_library
    from metaopt.policy import init_policy
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        library = kernel_library()
    params = {"w": jnp.ones((5, 3))}
    tx = learned_opt(init_policy(jax.random.key(0)))
    updates, _ = tx.update(params, tx.init(params), params, value=1.0)
    assert bool(jnp.all(jnp.isfinite(updates["w"]))) and float(jnp.max(updates["w"])) < 0
    print("LIBRARY", library)
    print("WARNINGS", " | ".join(str(w.message) for w in caught))
""")


def _subprocess(env_updates, cwd):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **env_updates}
    return subprocess.run([sys.executable, "-c", _SUBPROCESS], env=env, capture_output=True,
                          text=True, timeout=240, cwd=cwd, check=False)


def test_no_compiler_or_failed_build_falls_back_with_one_warning(tmp_path):
    result = _subprocess({"CXX": "false", "PATH": str(tmp_path),
                          "METAOPT_KERNEL_CACHE": str(tmp_path / "cache")}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "LIBRARY None" in result.stdout
    assert "no C++ compiler found" in result.stdout
    broken = tmp_path / "bin"
    broken.mkdir()
    (broken / "c++").write_text("#!/bin/sh\necho 'error: this compiler is broken' >&2\nexit 1\n")
    (broken / "c++").chmod(0o755)
    result = _subprocess({"CXX": str(broken / "c++"),
                          "METAOPT_KERNEL_CACHE": str(tmp_path / "cache")}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "LIBRARY None" in result.stdout
    assert "could not build" in result.stdout and "this compiler is broken" in result.stdout
    result = _subprocess({"METAOPT_FUSED_POLICY": "0"}, tmp_path)
    assert result.returncode == 0 and "LIBRARY None" in result.stdout
    assert "WARNINGS \n" in result.stdout or result.stdout.rstrip().endswith("WARNINGS")


def test_concurrent_first_builds_and_a_damaged_cached_library(tmp_path):
    env = {"METAOPT_KERNEL_CACHE": str(tmp_path / "cache")}
    script = [sys.executable, "-c", _SUBPROCESS]
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
    procs = [subprocess.Popen(script, env=full_env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    built = sorted((tmp_path / "cache").glob("*.so"))
    assert len(built) == 1 and all(f"LIBRARY {built[0]}" in out for out, _ in outputs)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]
    built[0].write_bytes(b"not a shared library")
    result = _subprocess(env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"LIBRARY {built[0]}" in result.stdout and built[0].stat().st_size > 1000


def test_unusable_cache_folder_falls_back_to_the_temp_folder(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    result = _subprocess({"METAOPT_KERNEL_CACHE": str(blocker)}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "LIBRARY None" not in result.stdout and "metaopt-kernels-" in result.stdout


_ISA_CHECK = textwrap.dedent("""
    import ctypes, sys
    import jax, jax.numpy as jnp, numpy as np
    import metaopt.fused_policy as fp
    from metaopt.policy import LSTMCarry, apply_policy, init_policy
    handle = ctypes.cdll.LoadLibrary(sys.argv[1])
    fp._TARGET = "metaopt_fused_policy_step_isa_check"
    jax.ffi.register_ffi_target(fp._TARGET, jax.ffi.pycapsule(handle.MetaoptFusedPolicyStep),
                                platform="cpu")
    fp._state["library"] = sys.argv[1]
    fp._state["lanes"] = handle.MetaoptFusedPolicyStepLanes()
    theta = jax.tree.map(lambda w: w + 0.3 * jax.random.normal(jax.random.key(3), w.shape),
                         init_policy(jax.random.key(0)))
    worst = 0.0
    for rows in (0, 5, 13, 200):
        keys = jax.random.split(jax.random.key(rows), 3)
        carry = LSTMCarry(*(jax.random.normal(k, (rows, 128)) for k in keys[:2]))
        obs = jax.random.normal(keys[2], (rows, 3))
        active = jnp.arange(rows) % 4 != 1
        got = jax.jit(lambda c, o, a: fp.fused_policy_step(theta, c, o, active=a))(carry, obs, active)
        want = apply_policy(theta, carry, obs, active=active)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            if a.size:
                worst = max(worst, float(jnp.max(jnp.abs(a - b))))
    print("LANES", handle.MetaoptFusedPolicyStepLanes(), "WORST", worst)
""")


@pytest.mark.parametrize("flags, lanes", [(["-march=haswell"], 8), ([], 4)],
                         ids=["avx2", "baseline-x86-64"])
def test_narrower_vector_builds_compute_the_same_function(tmp_path, flags, lanes):
    """The AVX2 build (used where there is no AVX-512) and the 4-float build (built, then not
    used) on this machine: same results as the XLA path, and the lane count Python checks."""
    from metaopt import fused_policy

    cpu_flags = fused_policy._cpu_signature().split()
    if flags and not {"avx2", "fma"} <= set(cpu_flags):
        pytest.skip("this CPU cannot run an AVX2 build")
    library = tmp_path / "kernel.so"
    build = subprocess.run(
        [fused_policy._compiler(), "-O3", "-std=c++17", "-ffp-contract=fast", "-shared", "-fPIC",
         "-w", f"-I{jax.ffi.include_dir()}", *flags, str(fused_policy._SOURCE), "-o", str(library)],
        capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stderr
    result = subprocess.run([sys.executable, "-c", _ISA_CHECK, str(library)],
                            env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                            text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stderr
    _, got_lanes, _, worst = result.stdout.split()
    assert int(got_lanes) == lanes
    assert float(worst) < 2e-5
