"""The linear-Gaussian controller transformation and the momentum controller."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metaopt import features
from metaopt.controller import (
    ControllerState,
    controller_step,
    linear_gaussian_controller,
    momentum_controller,
)
from metaopt.gps.types import LinearGaussianController

D = features.GPS_STATE_DIM


def _problem(dtype=jnp.float32):
    k1, k2 = jax.random.split(jax.random.key(0))
    inputs = jax.random.normal(k1, (32, 4))
    targets = inputs @ jax.random.normal(k2, (4, 3))
    params = {"w": jnp.zeros((4, 3), dtype), "b": jnp.zeros((3,), dtype)}

    def loss_fn(p, scale=1.0):
        p = jax.tree.map(lambda a: a.astype(jnp.float32), p)
        return scale * jnp.mean((inputs @ p["w"] + p["b"] - targets) ** 2)

    return params, loss_fn


def _rollout(tx, params, loss_fn, steps):
    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(loss_fn)(params)
        true_grad = jax.grad(loss_fn)(params, 1.5)  # any pytree like grads
        updates, state = tx.update(grads, state, params, value=value, true_grad=true_grad)
        return optax.apply_updates(params, updates), state, updates

    state = tx.init(params)
    trajectory = []
    for _ in range(steps):
        params, state, updates = step(params, state)
        trajectory.append(updates)
    return params, state, trajectory


def test_momentum_controller_mean_is_optax_momentum_sgd_beyond_horizon():
    params, loss_fn = _problem()
    ctrl = momentum_controller(learning_rate=0.05, momentum=0.8, horizon=4)
    final, state, _ = _rollout(linear_gaussian_controller(ctrl), params, loss_fn, 12)
    sgd = optax.sgd(0.05, momentum=0.8)
    p, s = params, sgd.init(params)
    for _ in range(12):
        u, s = sgd.update(jax.grad(loss_fn)(p), s, p)
        p = optax.apply_updates(p, u)
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(p), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(state.count) == 12


def test_time_index_holds_the_last_controller_beyond_horizon():
    horizon = 3
    bias = jnp.arange(1.0, horizon + 1.0)[:, None]  # k_t = t + 1
    ctrl = LinearGaussianController(
        jnp.zeros((horizon, 1, D)), bias, jnp.ones((horizon, 1, 1))
    )
    params, loss_fn = _problem()
    _, _, trajectory = _rollout(linear_gaussian_controller(ctrl), params, loss_fn, 6)
    got = [float(u["b"][0]) for u in trajectory]
    assert got == [1.0, 2.0, 3.0, 3.0, 3.0, 3.0]


def test_exploration_noise_has_the_controller_covariance():
    n, variance = 5_000, 0.04
    ctrl = momentum_controller(learning_rate=0.0, momentum=0.0, horizon=2, variance=variance)
    tx = linear_gaussian_controller(ctrl, key=jax.random.key(7))
    params = jnp.zeros(n)
    update = jax.jit(lambda s: tx.update(params, s, params, value=1.0, true_grad=params))
    a1, state = update(tx.init(params))
    a2, _ = update(state)
    assert np.std(a1) == pytest.approx(np.sqrt(variance), rel=0.03)
    assert abs(float(np.mean(a1))) < 0.01
    assert not np.allclose(a1, a2)  # the key advances
    mean_tx = linear_gaussian_controller(ctrl)
    a0, _ = jax.jit(lambda s: mean_tx.update(params, s, params, value=1.0, true_grad=params))(
        mean_tx.init(params)
    )
    np.testing.assert_array_equal(a0, 0.0)


def test_vmap_over_keys_gives_a_batch_of_rollouts():
    ctrl = momentum_controller(learning_rate=0.1, momentum=0.9, horizon=5, variance=1e-2)
    params, loss_fn = _problem()

    def rollout(key):
        tx = linear_gaussian_controller(ctrl, key=key)
        _, state, trajectory = _rollout(tx, params, loss_fn, 3)
        return trajectory[-1]["w"]

    keys = jax.random.split(jax.random.key(0), 4)
    last = jax.jit(jax.vmap(rollout))(keys)
    assert last.shape == (4, 4, 3)
    assert not np.allclose(last[0], last[1])


def test_controller_forms_agree():
    params, loss_fn = _problem()
    rng = np.random.default_rng(0)
    gains = [jnp.asarray(rng.normal(0, 0.05, (5, 1, D)), jnp.float32) for _ in range(2)]
    per_leaf = [LinearGaussianController(g, jnp.zeros((5, 1)), jnp.ones((5, 1, 1))) for g in gains]
    # jax.tree.leaves order of {"w", "b"} is b, w.
    as_tree = {"b": per_leaf[0], "w": per_leaf[1]}
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *per_leaf)
    results = [
        _rollout(linear_gaussian_controller(c), params, loss_fn, 3)[0] for c in (as_tree, stacked)
    ]
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    shared = _rollout(linear_gaussian_controller(per_leaf[0]), params, loss_fn, 3)[0]
    shared_tree = _rollout(
        linear_gaussian_controller({"b": per_leaf[0], "w": per_leaf[0]}), params, loss_fn, 3
    )[0]
    for a, b in zip(jax.tree.leaves(shared), jax.tree.leaves(shared_tree), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_controller_step_returns_the_gps_states():
    params, loss_fn = _problem()
    ctrl = momentum_controller(learning_rate=0.1, momentum=0.5, horizon=3)
    tx = linear_gaussian_controller(ctrl)
    value, grads = jax.value_and_grad(loss_fn)(params)
    step = jax.jit(lambda g, s, p, v: controller_step(ctrl, g, s, p, value=v, true_grad=g))
    actions, state, states = step(grads, tx.init(params), params, value)
    assert isinstance(state, ControllerState)
    assert states["w"].shape == (4, 3, D)
    np.testing.assert_allclose(states["w"][..., features.GRADIENT_INDEX], grads["w"])
    np.testing.assert_allclose(states["w"][..., features.TRUE_GRADIENT_INDEX], grads["w"])
    np.testing.assert_allclose(actions["w"], -0.1 * grads["w"], rtol=1e-6)


def test_jit_scan_chain_and_dtypes():
    params, loss_fn = _problem(jnp.bfloat16)
    ctrl = momentum_controller(learning_rate=0.1, momentum=0.9, horizon=10, variance=1e-4)
    tx = optax.chain(
        optax.clip_by_global_norm(10.0), linear_gaussian_controller(ctrl, key=jax.random.key(1))
    )
    traces = []

    def step(carry, _):
        traces.append(1)
        params, state = carry
        value, grads = jax.value_and_grad(loss_fn)(params)
        updates, new_state = tx.update(
            grads, state, params, value=value, true_grad=grads, ignored=True
        )
        assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
        return (optax.apply_updates(params, updates), new_state), None

    state = tx.init(params)
    types0 = jax.tree.map(jax.typeof, state)
    (params, state), _ = jax.jit(lambda c: jax.lax.scan(step, c, length=5))((params, state))
    assert len(traces) == 1
    assert jax.tree.map(jax.typeof, state) == types0
    assert int(state[1].count) == 5


def test_nonfinite_inputs():
    params, loss_fn = _problem()
    ctrl = momentum_controller(learning_rate=0.1, momentum=0.9, horizon=5)
    tx = linear_gaussian_controller(ctrl)
    update = jax.jit(lambda g, s, p, v, gs: tx.update(g, s, p, value=v, true_grad=gs))
    value, grads = jax.value_and_grad(loss_fn)(params)
    _, state = update(grads, tx.init(params), params, value, grads)
    bad = {**grads, "w": grads["w"].at[0, 0].set(jnp.nan)}
    actions, new_state = update(grads, state, params, value, bad)  # NaN in the true gradient
    np.testing.assert_array_equal(actions["w"], 0.0)
    assert bool(jnp.all(actions["b"] != 0.0))
    for old, new in zip(
        jax.tree.leaves((state.history["w"], state.prev_action["w"])),
        jax.tree.leaves((new_state.history["w"], new_state.prev_action["w"])), strict=True,
    ):
        np.testing.assert_array_equal(old, new)
    assert int(new_state.nonfinite_count) == 1
    actions, nan_state = update(grads, state, params, jnp.inf, grads)
    assert all(bool(jnp.all(a == 0.0)) for a in jax.tree.leaves(actions))
    assert int(nan_state.count) == int(state.count)
    for old, new in zip(jax.tree.leaves(state), jax.tree.leaves(nan_state), strict=True):
        if old.shape:  # everything but the counters is untouched
            np.testing.assert_array_equal(old, new)


def test_clear_errors():
    params, _ = _problem()
    ctrl = momentum_controller(learning_rate=0.1, momentum=0.9, horizon=5)
    tx = linear_gaussian_controller(ctrl)
    state = tx.init(params)
    with pytest.raises(ValueError, match="true_grad="):
        tx.update(params, state, params, value=1.0)
    with pytest.raises(ValueError, match="value="):
        tx.update(params, state, params, true_grad=params)
    stacked = momentum_controller(learning_rate=0.1, momentum=0.9, horizon=5, num_groups=3)
    with pytest.raises(ValueError, match="3 groups"):
        linear_gaussian_controller(stacked).update(
            params, state, params, value=1.0, true_grad=params
        )
    bad_shape = LinearGaussianController(jnp.zeros((5, 1, 10)), jnp.zeros((5, 1)),
                                         jnp.ones((5, 1, 1)))
    with pytest.raises(ValueError, match="79"):
        linear_gaussian_controller(bad_shape)
    with pytest.raises(ValueError, match="shaped like params"):
        linear_gaussian_controller({"w": ctrl}).update(
            params, state, params, value=1.0, true_grad=params
        )
