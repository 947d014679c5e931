"""learned_opt and its policy: behaviour, the optax checklist, non-finite inputs, errors."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from toy_tasks import least_squares_problem, optax_step

from metaopt import learned_optimizer
from metaopt.learned_optimizer import LearnedOptState, learned_opt
from metaopt.policy import (
    HIDDEN_SIZE,
    LSTMCarry,
    apply_policy,
    init_carry,
    init_policy,
    policy_hidden_size,
    unroll_policy,
)

THETA = init_policy(jax.random.key(0))


def _trained_looking_theta(seed=1):
    """init_policy with every head weight in play, so all 128 cells affect the step."""
    theta = init_policy(jax.random.key(seed))
    head = 1e-3 * jax.random.normal(jax.random.key(seed + 1), (HIDDEN_SIZE, 1))
    return {**theta, "head": {"kernel": theta["head"]["kernel"] + head, "bias": jnp.ones(1) * 1e-4}}




def _types(tree):
    return jax.tree.map(jax.typeof, tree)


# ------------------------------------------------------------------------------------------------
# Policy.


def test_policy_shapes_and_validation():
    assert policy_hidden_size(THETA) == 128
    assert THETA["gates"]["kernel"].shape == (3 + 128, 512)
    small = init_policy(jax.random.key(0), hidden_size=8)
    assert policy_hidden_size(small) == 8


def test_untrained_policy_takes_small_sgd_like_steps():
    g = jnp.array([-0.2, -0.01, 0.0, 0.03, 0.1])
    obs = jnp.stack([jnp.zeros(5), g / (jnp.abs(g) + 1), jnp.zeros(5)], axis=-1)
    _, step = apply_policy(THETA, init_carry(g), obs)
    np.testing.assert_allclose(step, -0.01 * obs[:, 1], rtol=0.02, atol=1e-7)
    big = init_policy(jax.random.key(3), init_step_size=0.1)
    _, step = apply_policy(big, init_carry(g), obs)
    np.testing.assert_allclose(step, -0.1 * obs[:, 1], rtol=0.02, atol=1e-6)


def test_unroll_matches_step_by_step():
    theta = _trained_looking_theta()
    obs = jax.random.normal(jax.random.key(4), (6, 5, 3))
    carry = init_carry(jnp.zeros(5))
    _, steps = unroll_policy(theta, carry, obs)
    for t in range(6):
        carry, step = apply_policy(theta, carry, obs[t])
        np.testing.assert_allclose(steps[t], step, rtol=1e-6, atol=1e-7)


def test_fused_gates_equal_concatenated_matmul():
    theta = _trained_looking_theta()
    obs = jax.random.normal(jax.random.key(5), (7, 3))
    carry = init_carry(jnp.zeros(7))._replace(hidden=jax.random.normal(jax.random.key(6), (7, 128)))
    new, _ = apply_policy(theta, carry, obs)
    z = jnp.concatenate([obs, carry.hidden], -1) @ theta["gates"]["kernel"] + theta["gates"]["bias"]
    i, f, g, o = jnp.split(z, 4, -1)
    cell = jax.nn.sigmoid(f) * carry.cell + jax.nn.sigmoid(i) * jnp.tanh(g)
    np.testing.assert_allclose(new.cell, cell, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new.hidden, jax.nn.sigmoid(o) * jnp.tanh(cell), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Behaviour.


def test_first_update_is_minus_step_size_times_normalised_gradient():
    params, loss_fn = least_squares_problem()
    tx = learned_opt(THETA)
    value, grads = jax.value_and_grad(loss_fn)(params)
    update = jax.jit(lambda g, s, p, v: tx.update(g, s, p, value=v))
    updates, state = update(grads, tx.init(params), params, value)
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads), strict=True):
        # Linear in ψ2 = g / (|g| + 1) for small ψ2, saturating (by tanh) for large ones.
        np.testing.assert_allclose(u, -0.01 * g / (jnp.abs(g) + 1), rtol=0.15, atol=1e-6)
        assert bool(jnp.all(jnp.abs(u) <= 0.01 * jnp.abs(g) / (jnp.abs(g) + 1) + 1e-7))
    assert int(state.count) == 1 and int(state.nonfinite_count) == 0


def test_untrained_policy_descends():
    params, loss_fn = least_squares_problem()
    tx = learned_opt(init_policy(jax.random.key(0), init_step_size=0.05))
    step = jax.jit(optax_step(tx, loss_fn))
    state = tx.init(params)
    first = loss_fn(params)
    for _ in range(60):
        params, state, _ = step(params, state)
    assert loss_fn(params) < 0.5 * first


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_permuting_coordinates_permutes_steps(seed):
    rng = np.random.default_rng(seed)
    perm = rng.permutation(6)
    grads = rng.normal(size=(4, 6)).astype(np.float32)
    values = rng.uniform(1, 2, 4).astype(np.float32)
    outs = [_run_permutation(grads[:, order], values) for order in (np.arange(6), perm)]
    np.testing.assert_allclose(outs[0][:, perm], outs[1], rtol=1e-6, atol=1e-9)


_PERM_TX = learned_opt(_trained_looking_theta())


@jax.jit
def _run_permutation(grads, values):
    def body(carry, inputs):
        params, state = carry
        g, v = inputs
        updates, state = _PERM_TX.update(g, state, params, value=v)
        return (params + updates, state), updates

    params = jnp.zeros(6)
    return jax.lax.scan(body, (params, _PERM_TX.init(params)), (grads, values))[1]


# ------------------------------------------------------------------------------------------------
# The optax checklist.


def test_extra_args_accepted_and_no_recompilation():
    params, loss_fn = least_squares_problem()
    tx = learned_opt(THETA)
    traces = []

    update = optax_step(tx, loss_fn, unexpected_extra_arg=1, another={"a": 2})

    @jax.jit
    def step(params, state):
        traces.append(1)
        return update(params, state)[:2]

    state = tx.init(params)
    params, state = step(params, state)
    params, state = step(params, state)
    params, state = step(params, state)
    assert len(traces) == 1


def test_init_accepts_abstract_params():
    state = learned_opt(THETA).init(jax.ShapeDtypeStruct((3, 2), jnp.float32))
    assert state.cell.shape == (3, 2, 128)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtypes_kept_and_state_stable(dtype):
    params, loss_fn = least_squares_problem(dtype)
    tx = learned_opt(THETA)
    state = jax.jit(tx.init)(params)
    types0 = _types(state)

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(loss_fn)(params)
        value = value.astype(jnp.float16)  # confuse the dtype on purpose, as optax's tests do
        # lax.cond fails unless both branches give identical types.
        cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
        updates, state = jax.lax.cond(
            cond,
            lambda: tx.update(grads, state, params, value=value),
            lambda: (jax.tree.map(jnp.zeros_like, params), state),
        )
        return updates, state

    for _ in range(3):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
        assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
        assert all(p.dtype == dtype for p in jax.tree.leaves(params))
        assert _types(state) == types0


def test_float64_leaves():
    with jax.enable_x64(True):
        params, loss_fn = least_squares_problem(jnp.float64)
        tx = learned_opt(THETA)
        state = tx.init(params)
        types0 = _types(state)
        step = jax.jit(optax_step(tx, loss_fn))
        for _ in range(2):
            params, state, _ = step(params, state)
        assert all(p.dtype == jnp.float64 for p in jax.tree.leaves(params))
        assert state.prev_iterate["w"].dtype == jnp.float64
        assert state.cell["w"].dtype == jnp.float32
        assert _types(state) == types0


def test_vmap_over_a_batch_of_problems():
    tx = learned_opt(_trained_looking_theta())
    problems = [least_squares_problem(seed=s) for s in range(3)]
    batched_params = jax.tree.map(lambda *a: jnp.stack(a), *[p for p, _ in problems])
    grads, values = [], []
    for params, loss_fn in problems:
        v, g = jax.value_and_grad(loss_fn)(params)
        grads.append(g)
        values.append(v)
    batched_grads = jax.tree.map(lambda *a: jnp.stack(a), *grads)

    states = jax.vmap(tx.init)(batched_params)
    update = jax.jit(lambda g, s, p, v: tx.update(g, s, p, value=v))
    batched_updates, _ = jax.jit(jax.vmap(update))(
        batched_grads, states, batched_params, jnp.stack(values)
    )
    for i, (params, _) in enumerate(problems):
        single, _ = update(grads[i], tx.init(params), params, values[i])
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(batched_updates), strict=True):
            np.testing.assert_allclose(a, b[i], rtol=1e-5, atol=1e-8)


def test_scan_equals_python_loop():
    params, loss_fn = least_squares_problem()
    tx = learned_opt(_trained_looking_theta())
    step = optax_step(tx, loss_fn)
    (scan_params, scan_state), _ = jax.lax.scan(
        lambda c, _: (step(*c)[:2], None), (params, tx.init(params)), length=8
    )
    loop_params, loop_state = params, tx.init(params)
    jitted = jax.jit(step)
    for _ in range(8):
        loop_params, loop_state, _ = jitted(loop_params, loop_state)
    for a, b in zip(jax.tree.leaves(scan_params), jax.tree.leaves(loop_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert int(scan_state.count) == 8


def test_inside_optax_chain():
    params, loss_fn = least_squares_problem()
    tx = optax.chain(optax.clip_by_global_norm(1.0), learned_opt(THETA))
    state = tx.init(params)
    step = jax.jit(optax_step(tx, loss_fn, unused_extra=3))
    for _ in range(3):
        params, state, _ = step(params, state)
    assert int(state[1].count) == 3


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_inside_optax_multisteps(dtype):
    params, loss_fn = least_squares_problem(dtype)
    tx = optax.MultiSteps(learned_opt(THETA), every_k_schedule=3)
    state = jax.jit(tx.init)(params)
    step = jax.jit(optax_step(tx, loss_fn))
    moved = []
    for _ in range(6):
        new_params, state, _ = step(params, state)
        moved.append(any(bool(jnp.any(a != b)) for a, b in zip(
            jax.tree.leaves(new_params), jax.tree.leaves(params), strict=True)))
        params = new_params
    assert moved == [False, False, True, False, False, True]
    assert int(state.inner_opt_state.count) == 2


def test_state_sharding_unchanged_on_8_device_mesh():
    script = textwrap.dedent(
        """
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        import jax, jax.numpy as jnp
        from jax.sharding import NamedSharding, PartitionSpec as P
        from metaopt.learned_optimizer import learned_opt
        from metaopt.policy import init_policy
        assert len(jax.devices()) == 8
        tx = learned_opt(init_policy(jax.random.key(0)))

        # Sharding in types (explicit axes), as optax's own sharding tests check it.
        mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
        with jax.set_mesh(mesh):
            params = {
                "w": jnp.ones((2, 8, 4), out_sharding=NamedSharding(mesh, P(None, "x"))),
                "b": jnp.ones((8,), out_sharding=NamedSharding(mesh, P("x"))),
                "big": jnp.ones((8, 1024), out_sharding=NamedSharding(mesh, P("x"))),
            }
            types = lambda t: jax.tree.map(jax.typeof, t)
            s0 = tx.init(params)
            _, s1 = tx.update(params, s0, params, value=jnp.float32(1.0))
            _, s2 = jax.jit(tx.update)(params, s1, params, value=jnp.float32(2.0))
            assert types(s0) == types(s1) == types(s2) == types(jax.jit(tx.init)(params))
            assert s1.cell["w"].sharding.spec == P(None, "x", None, None)

        # Automatic sharding: placed params, jitted init and update.
        mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
        params = {
            "w": jax.device_put(jnp.ones((16, 6)), NamedSharding(mesh, P("x"))),
            "b": jax.device_put(jnp.ones((8,)), NamedSharding(mesh, P("x"))),
            "big": jax.device_put(jnp.ones((8, 1024)), NamedSharding(mesh, P("x"))),
        }
        update = jax.jit(lambda g, s, p, v: tx.update(g, s, p, value=v))
        s0 = tx.init(params)
        _, s1 = update(params, s0, params, 1.0)
        _, s2 = update(params, s1, params, 2.0)
        for a, b, c in zip(jax.tree.leaves(s0), jax.tree.leaves(s1), jax.tree.leaves(s2),
                           strict=True):
            assert b.sharding.is_equivalent_to(c.sharding, b.ndim), (b.sharding, c.sharding)
            if a.ndim:  # per-parameter state starts sharded like its leaf (scalars: 1 device)
                assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (a.sharding, b.sharding)
        for name, spec in [("w", P("x", None, None)), ("big", P("x", None, None))]:
            assert s2.cell[name].sharding.is_equivalent_to(NamedSharding(mesh, spec), 3)
        print("OK")
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([_repo_root(), os.environ.get(
        "PYTHONPATH", "")]), "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def _repo_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------------
# Non-finite inputs.


def test_nonfinite_gradient_skips_only_that_leaf():
    params, loss_fn = least_squares_problem()
    tx = learned_opt(THETA)
    update = jax.jit(lambda g, s, p, v: tx.update(g, s, p, value=v))
    state = tx.init(params)
    value, grads = jax.value_and_grad(loss_fn)(params)
    _, state = update(grads, state, params, value)
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        bad_grads = {**grads, "w": grads["w"].at[1, 2].set(bad)}
        updates, new_state = update(bad_grads, state, params, value)
        assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
        np.testing.assert_array_equal(updates["w"], 0.0)
        assert bool(jnp.any(updates["b"] != 0.0))
        leaf_state = lambda s: [getattr(s, f)["w"] for f in s._fields if isinstance(
            getattr(s, f), dict)]
        for old, new in zip(leaf_state(state), leaf_state(new_state), strict=True):
            np.testing.assert_array_equal(old, new)
        assert int(new_state.leaf_count["b"]) == int(state.leaf_count["b"]) + 1
        assert int(new_state.nonfinite_count) == int(state.nonfinite_count) + 1
        assert int(new_state.count) == int(state.count) + 1


def test_nonfinite_value_skips_everything_then_recovers():
    params, loss_fn = least_squares_problem()
    tx = learned_opt(THETA)
    step = jax.jit(optax_step(tx, loss_fn))
    update = jax.jit(lambda g, s, p, v: tx.update(g, s, p, value=v))
    state = tx.init(params)
    params, state, _ = step(params, state)
    value, grads = jax.value_and_grad(loss_fn)(params)
    updates, bad_state = update(grads, state, params, jnp.nan)
    assert all(bool(jnp.all(u == 0.0)) for u in jax.tree.leaves(updates))
    np.testing.assert_array_equal(bad_state.prev_value, state.prev_value)
    assert int(bad_state.count) == int(state.count)
    assert int(bad_state.nonfinite_count) == 1
    for old, new in zip(jax.tree.leaves(state._replace(nonfinite_count=0)),
                        jax.tree.leaves(bad_state._replace(nonfinite_count=0)), strict=True):
        np.testing.assert_array_equal(old, new)
    # The history is clean: the next good step equals the step without the bad one.
    clean, _ = update(grads, state, params, value)
    after, _ = update(grads, bad_state, params, value)
    for a, b in zip(jax.tree.leaves(clean), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)


def test_nonfinite_params_give_zero_step():
    params, loss_fn = least_squares_problem()
    tx = learned_opt(THETA)
    value, grads = jax.value_and_grad(loss_fn)(params)
    bad = {**params, "b": params["b"].at[0].set(jnp.inf)}
    updates, state = jax.jit(tx.update)(grads, tx.init(params), bad, value=value)
    np.testing.assert_array_equal(updates["b"], 0.0)
    assert int(state.nonfinite_count) == 1


# ------------------------------------------------------------------------------------------------
# Clear errors.


def test_missing_value_says_how_to_pass_it():
    params, _ = least_squares_problem()
    tx = learned_opt(THETA)
    with pytest.raises(ValueError, match="value=loss"):
        tx.update(params, tx.init(params), params)


def test_missing_params_and_non_scalar_value():
    params, _ = least_squares_problem()
    tx = learned_opt(THETA)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params), value=1.0)
    with pytest.raises(ValueError, match="scalar"):
        tx.update(params, tx.init(params), params, value=jnp.ones(3))


def test_non_float_leaf_is_rejected():
    tx = learned_opt(THETA)
    params = {"w": jnp.zeros(3), "steps": jnp.zeros(2, jnp.int32)}
    with pytest.raises(TypeError, match=r"\['steps'\].*int32"):
        tx.init(params)
    good = {"w": jnp.zeros(3)}
    with pytest.raises(TypeError, match="floating-point"):
        tx.update({"w": jnp.zeros(3, jnp.int32)}, tx.init(good), good, value=1.0)


@pytest.mark.parametrize(
    "theta",
    [
        {"gates": THETA["gates"]},
        {**THETA, "head": {"kernel": jnp.zeros((64, 1)), "bias": jnp.zeros(1)}},
        [THETA["gates"], THETA["head"]],
        {**THETA, "gates": {**THETA["gates"], "kernel": jnp.zeros((131, 512), jnp.int32)}},
    ],
)
def test_wrong_theta_structure_is_rejected(theta):
    with pytest.raises(ValueError, match="init_policy"):
        learned_opt(theta)


def test_state_structure_mismatch_is_reported():
    tx = learned_opt(THETA)
    state = tx.init({"w": jnp.zeros(3)})
    params = {"w": jnp.zeros(3), "b": jnp.zeros(2)}
    with pytest.raises(ValueError, match="tree structure"):
        tx.update(params, state, params, value=1.0)


def test_state_is_a_named_tuple_with_documented_fields():
    state = learned_opt(THETA).init({"w": jnp.zeros((2, 3))})
    assert isinstance(state, LearnedOptState)
    assert state._fields == ("count", "prev_value", "leaf_count", "prev_iterate", "prev_delta",
                             "prev_grad_abs", "cell", "hidden", "nonfinite_count")
    assert state.prev_iterate["w"].shape == state.prev_delta["w"].shape == (2, 3)
    assert state.hidden["w"].shape == state.cell["w"].shape == (2, 3, 128)
    # Every per-leaf field is one tree shaped like params (optax's layout, not a tree of tuples).
    for name in state._fields[2:-1]:
        assert jax.tree.structure(getattr(state, name)) == jax.tree.structure({"w": 0})


def test_chunked_policy_step_equals_whole():
    theta = _trained_looking_theta()
    keys = jax.random.split(jax.random.key(10), 3)
    carry = LSTMCarry(*(jax.random.normal(k, (5, 6, 128)) for k in keys[:2]))
    obs = jax.random.normal(keys[2], (5, 6, 3))
    active = jnp.arange(30).reshape(5, 6) % 3 != 0
    for mask in (None, active):
        whole = jax.jit(lambda c, o, m=mask: apply_policy(theta, c, o, active=m))(carry, obs)
        chunked = jax.jit(
            lambda c, o, m=mask: apply_policy(theta, c, o, active=m, chunk_size=7)  # 30 = 4·7 + 2
        )(carry, obs)
        for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(chunked), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

    def loss(theta, chunk_size):
        return jnp.sum(apply_policy(theta, carry, obs, chunk_size=chunk_size)[1] ** 2)

    for a, b in zip(jax.tree.leaves(jax.grad(loss)(theta, None)),
                    jax.tree.leaves(jax.grad(loss)(theta, 7)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_learned_opt_big_leaf_chunked_path_matches(monkeypatch):
    monkeypatch.setenv("METAOPT_FUSED_POLICY", "0")  # the XLA path; the kernel: test_fused_policy
    params = {"w": jnp.zeros((80, 60)), "b": jnp.zeros((60,))}  # 4,800 coordinates: chunked
    tx = learned_opt(_trained_looking_theta())
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(11), p.shape), params)

    def two_steps():
        update = jax.jit(lambda g, s, p, v: tx.update(g, s, p, value=v))
        updates, state = update(grads, tx.init(params), params, 1.0)
        return update(grads, state, optax.apply_updates(params, updates), 0.9)

    chunked = two_steps()
    monkeypatch.setattr(learned_optimizer, "_chunk_on_cpu", lambda leaf: False)
    whole = two_steps()
    for a, b in zip(jax.tree.leaves(chunked), jax.tree.leaves(whole), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_policy_mask_keeps_carry_and_zeroes_step():
    theta = _trained_looking_theta()
    carry = init_carry(jnp.zeros(4))._replace(hidden=jax.random.normal(jax.random.key(8), (4, 128)))
    obs = jax.random.normal(jax.random.key(9), (4, 3))
    active = jnp.array([True, False, True, False])
    masked, step = apply_policy(theta, carry, obs, active=active)
    full, full_step = apply_policy(theta, carry, obs)
    np.testing.assert_array_equal(step, jnp.where(active, full_step, 0.0))
    for m, f, c in zip(masked, full, carry, strict=True):
        np.testing.assert_array_equal(m, jnp.where(active[:, None], f, c))
