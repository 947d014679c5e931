"""The L2L baseline (Andrychowicz et al. 2016): preprocessing, optax checklist, non-finite
gradients, save/load, meta-training and the shipped weights."""

import math
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from toy_tasks import least_squares_problem

from metaopt.evaluation.tuning import seed_keys
from metaopt.optimizers.l2l import (
    HIDDEN_SIZE,
    L2LState,
    apply_l2l,
    init_l2l,
    init_l2l_carry,
    l2l_opt,
    l2l_shape,
    preprocess_gradient,
)
from metaopt.policy import init_policy
from metaopt.serialization import PolicyFileError, load, load_l2l, read_header, save, save_l2l
from metaopt.tasks import make_mlp_task, synthetic_classification
from metaopt.training.l2l_training import (
    L2LTrainConfig,
    make_evaluator,
    train_l2l,
)

THETA = init_l2l(jax.random.key(0))
_F32_MAX = float(np.finfo(np.float32).max)




def _step_fn(tx, loss_fn):
    def step(params, state):
        value, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params, value=value, grad=grads, value_fn=loss_fn)
        return optax.apply_updates(params, updates), state

    return step


def _tiny_task(seed=0):
    x, y = synthetic_classification(jax.random.key(seed), 128, 6, 3)
    return make_mlp_task(x, y, widths=(6, 8, 3), batch_size=16)


# ------------------------------------------------------------------------------------------------
# Preprocessing (Appendix A of Andrychowicz et al., p = 10).


def _preprocess_numpy(g, p=10.0):
    g = np.asarray(g, np.float64)
    out = np.empty(g.shape + (2,))
    for idx, value in np.ndenumerate(g):
        if abs(value) >= math.exp(-p):
            out[idx] = (math.log(abs(value)) / p, math.copysign(1.0, value))
        else:
            out[idx] = (-1.0, math.exp(p) * value)
    return out


def test_preprocessing_matches_numpy_transcription():
    e = math.exp(-10.0)
    g = np.array([0.0, -0.0, 1e-30, -3e-6, e * 0.999, -e * 0.999, e * 1.001, 1e-3, -0.5, 1.0,
                  7.0, -1e30, 3e38], np.float32)
    np.testing.assert_allclose(preprocess_gradient(g), _preprocess_numpy(g), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(preprocess_gradient(jnp.zeros(2)), [[-1.0, 0.0], [-1.0, 0.0]])
    assert preprocess_gradient(jnp.ones((3, 4), jnp.bfloat16)).shape == (3, 4, 2)


_update_from_scratch = jax.jit(lambda g: l2l_opt(THETA).update(g, l2l_opt(THETA).init(g)))


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.float32, 12, elements=st.floats(-_F32_MAX, _F32_MAX, width=32)))
def test_finite_gradients_give_finite_steps_and_match_numpy(g):
    np.testing.assert_allclose(preprocess_gradient(g), _preprocess_numpy(g), rtol=1e-5, atol=1e-6)
    updates, state = _update_from_scratch(jnp.asarray(g))
    assert bool(jnp.all(jnp.isfinite(updates)))
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(state))


_apply = jax.jit(apply_l2l)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_permuting_coordinates_permutes_steps(seed):
    key_g, key_p = jax.random.split(jax.random.key(seed))
    grads = jax.random.normal(key_g, (2, 11)) * jnp.array([[1e-6], [1.0]])
    perm = jax.random.permutation(key_p, 11)
    carry, carry_p = init_l2l_carry(grads[0]), init_l2l_carry(grads[0])
    for g in grads:  # two steps, so the permuted memory is exercised too
        carry, step = _apply(THETA, carry, g)
        carry_p, step_p = _apply(THETA, carry_p, g[perm])
        np.testing.assert_allclose(step_p, step[perm], rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# The optax checklist.


def test_theta_layout_and_validation():
    assert l2l_shape(THETA) == (HIDDEN_SIZE, 2)
    assert THETA["lstm_0"]["kernel"].shape == (2 + 20, 80)
    assert THETA["lstm_1"]["kernel"].shape == (40, 80)
    for bad in (None, {"head": THETA["head"]}, {**THETA, "lstm_1": THETA["lstm_0"]},
                init_policy(jax.random.key(0))):
        with pytest.raises(ValueError, match="init_l2l"):
            l2l_opt(bad)
    with pytest.raises(ValueError, match="NaN or inf"):
        l2l_opt({**THETA, "head": {**THETA["head"], "bias": jnp.array([jnp.nan])}})


def test_no_retrace_extra_args_ignored_and_state_is_named_tuple():
    params, loss_fn = least_squares_problem()
    tx = l2l_opt(THETA)
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)
        return _step_fn(tx, loss_fn)(params, state)

    state = tx.init(params)
    assert isinstance(state, L2LState)
    assert state.carry["w"][1].cell.shape == (4, 3, HIDDEN_SIZE)
    for _ in range(3):
        params, state = step(params, state)
    assert len(traces) == 1
    assert int(state.count) == 3 and int(state.nonfinite_count) == 0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtypes_kept_and_state_structure_stable(dtype):
    params, loss_fn = least_squares_problem(dtype)
    tx = l2l_opt(THETA)
    state = jax.jit(tx.init)(params)
    types0 = jax.tree.map(jax.typeof, state)
    step = jax.jit(_step_fn(tx, loss_fn))
    for _ in range(2):
        params, state = step(params, state)
        assert all(p.dtype == dtype for p in jax.tree.leaves(params))
        assert jax.tree.map(jax.typeof, state) == types0


def test_float64_leaves():
    with jax.enable_x64(True):
        params, loss_fn = least_squares_problem(jnp.float64)
        tx = l2l_opt(THETA)
        value, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = jax.jit(tx.update)(grads, tx.init(params))
        assert updates["w"].dtype == jnp.float64
        assert state.carry["w"][0].cell.dtype == jnp.float32


def test_vmap_over_problems_scan_and_chain():
    tx = optax.chain(optax.clip_by_global_norm(1.0), l2l_opt(THETA))
    problems = [least_squares_problem(seed=s) for s in range(3)]
    batched = jax.tree.map(lambda *a: jnp.stack(a), *[p for p, _ in problems])
    grads = [jax.grad(f)(p) for p, f in problems]
    batched_grads = jax.tree.map(lambda *a: jnp.stack(a), *grads)
    update = lambda g, s, p: tx.update(g, s, p, value=0.0)
    out, _ = jax.jit(jax.vmap(update))(batched_grads, jax.jit(jax.vmap(tx.init))(batched), batched)
    init, update = jax.jit(tx.init), jax.jit(update)
    for i, (params, _) in enumerate(problems):
        single, _ = update(grads[i], init(params), params)
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(out), strict=True):
            np.testing.assert_allclose(a, b[i], rtol=1e-5, atol=1e-8)
    # lax.scan equals a Python loop over the jitted step.
    params, loss_fn = problems[0]
    step = _step_fn(tx, loss_fn)
    (scanned, _), _ = jax.jit(lambda c: jax.lax.scan(lambda c, _: (step(*c), None), c,
                                                     length=5))((params, init(params)))
    looped, state, jitted = params, init(params), jax.jit(step)
    for _ in range(5):
        looped, state = jitted(looped, state)
    for a, b in zip(jax.tree.leaves(scanned), jax.tree.leaves(looped), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert int(state[1].count) == 5


def test_non_float_leaf_and_mismatched_state_are_rejected():
    tx = l2l_opt(THETA)
    with pytest.raises(TypeError, match="floating-point"):
        tx.init({"w": jnp.zeros(3), "n": jnp.zeros(2, jnp.int32)})
    state = tx.init({"w": jnp.zeros(3)})
    with pytest.raises(TypeError, match="floating-point"):
        tx.update({"w": jnp.zeros(3, jnp.int32)}, state)
    with pytest.raises(ValueError, match="init\\(params\\)"):
        tx.update({"w": jnp.zeros(4)}, state)
    with pytest.raises(ValueError, match="tree structure"):
        tx.update({"v": jnp.zeros(3)}, state)


# ------------------------------------------------------------------------------------------------
# Non-finite gradients.


def test_nonfinite_gradient_zero_step_for_that_leaf_and_state_kept():
    params, loss_fn = least_squares_problem()
    tx = l2l_opt(THETA)
    update = jax.jit(tx.update)
    grads = jax.grad(loss_fn)(params)
    _, state = update(grads, tx.init(params), params)
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        bad_grads = {**grads, "w": grads["w"].at[1, 2].set(bad)}
        updates, new_state = update(bad_grads, state, params)
        np.testing.assert_array_equal(updates["w"], 0.0)
        assert bool(jnp.any(updates["b"] != 0.0))
        for old, new in zip(jax.tree.leaves(state.carry["w"]),
                            jax.tree.leaves(new_state.carry["w"]), strict=True):
            np.testing.assert_array_equal(old, new)
        assert int(new_state.nonfinite_count) == 1
        # Not poisoned: the next good step equals the one without the bad update in between.
        clean, _ = update(grads, state, params)
        after, _ = update(grads, new_state._replace(carry={**new_state.carry,
                                                           "b": state.carry["b"]}), params)
        np.testing.assert_array_equal(clean["w"], after["w"])
    bad_params = {**params, "b": params["b"].at[0].set(jnp.nan)}
    updates, _ = update(grads, state, bad_params)
    np.testing.assert_array_equal(updates["b"], 0.0)


# ------------------------------------------------------------------------------------------------
# Save / load.


def test_save_load_round_trip_and_refusals(tmp_path):
    path = tmp_path / "l2l.metaopt"
    save_l2l(path, THETA, metadata={"note": "test"})
    theta = load_l2l(path)
    for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(THETA), strict=True):
        np.testing.assert_array_equal(a, b)
    header = read_header(path)
    assert header["architecture"]["name"] == "l2l-coordinatewise-lstm"
    assert header["architecture"]["output_scale"] == 0.1
    assert header["features"]["p"] == 10.0
    assert header["metadata"] == {"note": "test"}
    with pytest.raises(PolicyFileError, match="metaopt.load"):
        save(tmp_path / "gps.metaopt", init_policy(jax.random.key(0), hidden_size=8))
        load_l2l(tmp_path / "gps.metaopt")
    with pytest.raises(PolicyFileError, match="l2l-coordinatewise-lstm"):
        load(path)
    data = path.read_bytes()
    (tmp_path / "cut").write_bytes(data[:-7])
    with pytest.raises(PolicyFileError, match="truncated or corrupt"):
        load_l2l(tmp_path / "cut")
    (tmp_path / "junk").write_bytes(b"not a policy at all")
    with pytest.raises(PolicyFileError, match="not a metaopt policy file"):
        load_l2l(tmp_path / "junk")


# ------------------------------------------------------------------------------------------------
# Meta-training and the shipped weights.


def test_meta_training_lowers_the_objective_on_a_tiny_task():
    task = _tiny_task()
    config = L2LTrainConfig(horizon=40, truncation=10, batch_size=1, trajectories=12,
                            learning_rate=1e-2, select_every=12, select_seeds=(0, 1, 2))
    result = train_l2l(task, config, progress=False)
    before, after = result["selection"][0]["score"], result["selection"][-1]["score"]
    assert after < 0.8 * before, result["selection"]
    assert result["best_score"] == min(s["score"] for s in result["selection"])
    assert len(result["log"]) == 12
    for entry in result["log"]:  # every truncation ran and applied a finite meta-gradient
        assert entry["truncations"] == 4 and entry["skipped_meta_updates"] == 0
        assert math.isfinite(entry["mean_minibatch_loss"])


def test_shipped_weights_load_and_beat_untrained_weights():
    path = resources.files("metaopt") / "assets" / "l2l.metaopt"
    if not path.is_file():
        pytest.skip("metaopt/assets/l2l.metaopt not built yet (experiments/train_l2l.py)")
    trained = load_l2l(path)
    task = _tiny_task(seed=3)
    evaluate = make_evaluator(num_steps=40)  # compiled already by the meta-training test
    keys = seed_keys([100, 101, 102])  # as many as the selection seeds: no recompilation
    final_trained = np.asarray(evaluate(trained, task, keys))[:, -1]
    final_untrained = np.asarray(evaluate(THETA, task, keys))[:, -1]
    assert np.all(np.isfinite(final_trained))
    assert final_trained.mean() < 0.8 * final_untrained.mean(), (final_trained, final_untrained)
