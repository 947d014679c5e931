"""The 2016 MLP as an optax transformation: the checklist every metaopt optimizer passes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy_tasks import optax_step

from metaopt.l2o2016 import features
from metaopt.l2o2016.policy import apply_mlp, init_mlp, l2o2016_opt, load_mlp, save_mlp

PARAMS = {"w": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array(0.3)}


def loss(params):
    return jnp.sum(params["w"] ** 2) + params["b"] ** 2


@pytest.fixture(scope="module")
def theta():
    return init_mlp(jax.random.key(0), dim=4, out_scale=1.0)


def test_step_is_the_mlp_of_the_observation(theta):
    tx = l2o2016_opt(theta)
    state = tx.init(PARAMS)
    value, grads = jax.value_and_grad(loss)(PARAMS)
    updates, state = tx.update(grads, state, PARAMS, value=value)
    flat_grad = jax.flatten_util.ravel_pytree(grads)[0]
    hist = features.push(features.init_history(4), value, flat_grad)
    expected = apply_mlp(theta, features.observation(hist))
    np.testing.assert_allclose(jax.flatten_util.ravel_pytree(updates)[0], expected, rtol=1e-6)
    assert int(state.history.count) == 1


def test_jit_without_retrace_and_dtype_kept(theta):
    tx = l2o2016_opt(theta)
    traces = []

    update = optax_step(tx, loss)

    @jax.jit
    def step(params, state):
        traces.append(1)
        return update(params, state)[:2]

    with jax.enable_x64(True):
        params = {"w": PARAMS["w"].astype(jnp.float64), "b": PARAMS["b"].astype(jnp.bfloat16)}
        state = tx.init(params)
        for _ in range(3):
            params, state = step(params, state)
        assert params["w"].dtype == jnp.float64 and params["b"].dtype == jnp.bfloat16
    assert len(traces) == 1
    assert all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in jax.tree.leaves(params))


def test_missing_value_is_a_clear_error(theta):
    tx = l2o2016_opt(theta)
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match="value=loss"):
        tx.update(jax.grad(loss)(PARAMS), state, PARAMS)


def test_wrong_size_is_a_clear_error(theta):
    tx = l2o2016_opt(theta)
    with pytest.raises(ValueError, match="dimension 4"):
        tx.init({"w": jnp.zeros(5)})


def test_integer_leaf_is_refused(theta):
    with pytest.raises(TypeError, match="floating point"):
        l2o2016_opt(theta).init({"w": jnp.zeros(4, jnp.int32)})


def test_save_load_round_trip(theta, tmp_path):
    save_mlp(tmp_path / "p.msgpack", theta, metadata={"family": "test"})
    loaded, header = load_mlp(tmp_path / "p.msgpack")
    assert header["dim"] == 4 and header["history"] == features.HISTORY
    assert header["metadata"] == {"family": "test"}
    for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)


def test_observation_outside_the_whitening_data_is_clipped():
    from metaopt.l2o2016.s_step import whiten

    raw = init_mlp(jax.random.key(1), dim=4, out_scale=1.0)
    data = jax.random.normal(jax.random.key(2), (64, features.observation_dim(4)))
    theta = whiten(raw, data)
    far = data[0] + 1e3
    # Beyond the data's range every input sits at its bound: the step stops growing.
    np.testing.assert_allclose(apply_mlp(theta, far), apply_mlp(theta, 10 * far), rtol=1e-6)
    np.testing.assert_allclose(apply_mlp(theta, data[:3]),
                               apply_mlp({k: v for k, v in theta.items()
                                          if k not in ("obs_low", "obs_high")}, data[:3]),
                               rtol=1e-6)
    assert not np.allclose(apply_mlp(raw, far), apply_mlp(raw, 10 * far))
