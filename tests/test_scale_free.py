"""The scale-free learned optimizer: invariances, bounds, state layout, serialization (issue 16)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import metaopt
from metaopt import scale_free_features as sff
from metaopt.mlp_policy import LOG_STEP_MAX, init_mlp_policy, mlp_policy_sizes, mlp_policy_steps
from metaopt.scale_free_optimizer import (
    REFERENCE_FAN_IN,
    ScaleFreeOptState,
    fan_in_factor,
    parameter_scales,
)


def _random_policy(seed=0):
    """A policy whose hidden layer and output both matter (the untrained one ignores them)."""
    theta = init_mlp_policy(jax.random.key(seed), hidden_sizes=(16,), init_step_size=0.05)
    k1, k2 = jax.random.split(jax.random.key(seed + 1))
    theta["out"]["kernel"] = 0.3 * jax.random.normal(k1, theta["out"]["kernel"].shape)
    theta["skip"]["kernel"] = theta["skip"]["kernel"] + 0.2 * jax.random.normal(
        k2, theta["skip"]["kernel"].shape)
    return theta


THETA = _random_policy()
A = jax.random.normal(jax.random.key(3), (12, 4))
Y = jax.random.normal(jax.random.key(4), (12,))


def _loss(params, scale_w=1.0, loss_scale=1.0, batch=slice(None)):
    w = params["w"] / scale_w
    r = jnp.tanh(A[batch] @ w + params["b"]) - Y[batch]
    return loss_scale * jnp.mean(r * r)


def _params(scale_w=1.0):
    # b is not zero: a leaf that starts at zero borrows the RMS of all parameters as its scale
    # (test_parameter_scales), and would then see w's rescaling.
    return {"w": scale_w * 0.5 * jax.random.normal(jax.random.key(5), (4,)), "b": jnp.full((), 0.1)}


def _trajectory(theta, steps=25, **loss_kwargs):
    return _jitted_trajectory(theta, steps, loss_kwargs.get("scale_w", 1.0),
                              loss_kwargs.get("loss_scale", 1.0))


@jax.jit(static_argnums=1)
def _jitted_trajectory(theta, steps, scale_w, loss_scale):
    loss_kwargs = {"scale_w": scale_w, "loss_scale": loss_scale}
    tx = metaopt.learned_opt(theta)
    params = _params(scale_w)
    state = tx.init(params)

    def step(carry, t):
        params, state = carry
        batch = jnp.arange(6) + 6 * (t % 2)      # two alternating minibatches
        loss, grads = jax.value_and_grad(lambda p: _loss(p, batch=batch, **loss_kwargs))(params)
        updates, state = tx.update(grads, state, params, value=loss)
        return (optax.apply_updates(params, updates), state), params

    _, visited = jax.lax.scan(step, (params, state), jnp.arange(steps))
    return visited


_UNSCALED = _trajectory(THETA)


@settings(max_examples=12, deadline=None)
@given(st.floats(-3.0, 3.0))
def test_loss_scale_leaves_trajectory_unchanged(log10_c):
    scaled = _trajectory(THETA, loss_scale=10.0**log10_c)
    for a, b in zip(jax.tree.leaves(_UNSCALED), jax.tree.leaves(scaled), strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-5)


@settings(max_examples=12, deadline=None)
@given(st.floats(-3.0, 3.0))
def test_one_tensor_rescaled_scales_its_steps(log10_c):
    c = 10.0**log10_c
    scaled = _trajectory(THETA, scale_w=c)
    np.testing.assert_allclose(scaled["w"] / c, _UNSCALED["w"], rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(scaled["b"], _UNSCALED["b"], rtol=2e-4, atol=2e-5)


def test_the_invariance_tests_can_fail():
    """The same comparison with the paper's absolute-unit LSTM policy does see the rescaling."""
    lstm = metaopt.init_policy(jax.random.key(0), init_step_size=0.05)
    base = _trajectory(lstm)
    scaled = _trajectory(lstm, loss_scale=1e3)
    assert not np.allclose(base["w"], scaled["w"], rtol=2e-4, atol=2e-5)


finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
_BOUNDED_PARAMS = {"w": jnp.asarray([0.3, -0.2, 0.1, 0.0], jnp.float32), "b": jnp.zeros((2,))}
_BOUNDED_UPDATE = jax.jit(lambda g, s, v: metaopt.learned_opt(THETA).update(
    g, s, _BOUNDED_PARAMS, value=v))


@settings(max_examples=40, deadline=None)
@given(st.lists(finite, min_size=6, max_size=6), finite, finite, st.integers(0, 10_000))
def test_step_is_bounded_for_any_finite_input(grads, value, prev_value, count):
    tx = metaopt.learned_opt(THETA, learning_rate=1.0)
    state = tx.init(_BOUNDED_PARAMS)
    state = state._replace(count=jnp.int32(count), prev_value=jnp.float32(prev_value))
    g = {"w": jnp.asarray(grads[:4], jnp.float32), "b": jnp.asarray(grads[4:], jnp.float32)}
    for _ in range(2):
        updates, state = _BOUNDED_UPDATE(g, state, jnp.float32(value))
        for leaf, scale in zip(jax.tree.leaves(updates), jax.tree.leaves(state.scale), strict=True):
            assert np.all(np.isfinite(leaf))
            assert np.all(np.abs(leaf) <= float(scale) * math.exp(LOG_STEP_MAX) * (1 + 1e-6))
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state))


def test_features_are_bounded_and_zero_gradients_give_zero():
    m, v = sff.init_moments(jnp.zeros(3))
    for grad in ([0.0, 1e30, -1e-30], [0.0, 3e38, -3e38], [0.0, 1e-30, -1e-30]):
        obs, m2, v2 = sff.scale_free_features(m, v, 0, jnp.asarray(grad), step=0,
                                              objective_change=0.0, trend=0.0)
        assert obs.shape == (3, sff.SCALE_FREE_DIM)
        assert np.all(np.isfinite(m2)) and np.all(np.isfinite(v2))
        assert np.all(np.abs(obs) <= sff.FEATURE_LIMIT)
        np.testing.assert_array_equal(obs[0, :4], 0.0)
        np.testing.assert_allclose(obs[1, :4], 1.0, rtol=1e-4)
        expected = 0.0 if grad[1] == 1e30 else -1.0      # 0: relative to the leaf, 1e-60 is 0
        np.testing.assert_allclose(obs[2, :4], expected, atol=1e-4)
        np.testing.assert_array_equal(obs[:, 8], 1.0)           # a vector leaf
    obs, _, _ = sff.scale_free_features(m, v, 0, jnp.asarray([0.0, 1e30, -1e-30]), step=0,
                                        objective_change=0.0, trend=0.0)
    assert abs(float(obs[2, 0])) < 1e-6       # relative to the leaf, 1e-60 of the others is 0


def test_features_match_a_numpy_transcription():
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(5, 2, 3)).astype(np.float32) * 1e-3
    m, v = sff.init_moments(jnp.zeros((2, 3)))
    ms, vs = np.zeros((2, 3, 3)), np.zeros((2, 3))
    betas = np.asarray(sff.MOMENTUM_DECAYS)
    for t, g in enumerate(grads):
        obs, m, v = sff.scale_free_features(m, v, t, g, step=t, objective_change=0.25, trend=0.1)
        ms = betas * ms + (1 - betas) * g[..., None]
        vs = 0.999 * vs + 0.001 * np.abs(g)
        scale = vs / (1 - 0.999 ** (t + 1))
        denom = scale + 1e-8 * np.mean(scale)
        want = np.concatenate([
            (g / denom)[..., None], (ms / (1 - betas ** (t + 1))) / denom[..., None],
            np.broadcast_to([0.25, 0.1, np.tanh(t / 10), np.tanh(t / 100), 0.0], (2, 3, 5))], -1)
        np.testing.assert_allclose(obs, np.clip(want, -10, 10), rtol=2e-5, atol=1e-6)


def test_parameter_scales():
    scales = parameter_scales({"w": jnp.full((2, 2), 3.0), "b": jnp.zeros(4), "c": jnp.zeros(0)})
    np.testing.assert_allclose(scales["w"], 3.0)
    np.testing.assert_allclose(scales["b"], math.sqrt(36 / 8))      # the RMS of all parameters
    zeros = parameter_scales({"w": jnp.zeros(3)})
    np.testing.assert_allclose(zeros["w"], 1.0)                     # nothing to go by: absolute


def test_fan_in_factor_by_hand():
    assert fan_in_factor((100, 7), 0.5) == pytest.approx(math.sqrt(48 / 100))
    assert fan_in_factor((3, 3, 16, 8), 1.0) == pytest.approx(48 / 144)   # conv: h·w·in
    assert fan_in_factor((REFERENCE_FAN_IN, 10), 0.5) == 1.0
    assert fan_in_factor((100,), 0.5) == fan_in_factor((), 0.5) == 1.0      # vectors, scalars
    assert fan_in_factor((0, 4), 0.5) == 1.0 and fan_in_factor((100, 7), 0.0) == 1.0
    scales = parameter_scales({"w": jnp.full((192, 2), 3.0), "b": jnp.zeros(4)},
                              fan_in_exponent=0.5)
    np.testing.assert_allclose(scales["w"], 3.0 * 0.5, rtol=1e-6)        # √(48/192) = 1/2
    np.testing.assert_allclose(scales["b"], 3.0 * math.sqrt(384 / 388), rtol=1e-6)


@settings(max_examples=10, deadline=None)
@given(st.floats(0.0, 1.0), st.integers(1, 300))
def test_fan_in_exponent_multiplies_each_matrix_step_by_its_factor(alpha, rows):
    params = {"w": jnp.linspace(-1.0, 1.0, rows * 3).reshape(rows, 3), "b": jnp.full((3,), 0.1)}
    grads = jax.tree.map(lambda x: jnp.cos(7.0 * x) + 0.01, params)
    def first(tx):
        return tx.update(grads, tx.init(params), params, value=jnp.float32(2.0))[0]
    base = first(metaopt.learned_opt(THETA))
    scaled = first(metaopt.learned_opt(THETA, fan_in_exponent=alpha))
    factor = (48 / rows) ** alpha
    np.testing.assert_allclose(scaled["w"], factor * base["w"], rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(scaled["b"], base["b"], rtol=1e-6)


@pytest.mark.parametrize("bad", [-0.1, 1.5, "half", None, math.nan])
def test_bad_fan_in_exponent_is_refused(bad):
    with pytest.raises(ValueError, match="fan_in_exponent"):
        metaopt.learned_opt(THETA, fan_in_exponent=bad)


def test_fan_in_exponent_is_refused_for_the_lstm_policy():
    with pytest.raises(ValueError, match="fan_in_exponent applies to scale-free MLP"):
        metaopt.learned_opt(metaopt.init_policy(jax.random.key(0)), fan_in_exponent=0.5)


def test_untrained_policy_is_relative_sign_momentum():
    theta = init_mlp_policy(jax.random.key(0), init_step_size=0.02)
    obs = jnp.zeros((4, sff.SCALE_FREE_DIM)).at[:, sff.MOMENTUM_FEATURE].set(
        jnp.asarray([-1.0, 0.0, 0.5, 2.0]))
    np.testing.assert_allclose(mlp_policy_steps(theta, obs, 3.0),
                               -0.02 * 3.0 * np.tanh([-1.0, 0.0, 0.5, 2.0]), rtol=1e-6)


def test_learning_rate_scales_steps_and_accepts_schedules_and_inject_hyperparams():
    params = _params()
    grads = jax.grad(_loss)(params)
    def first_update(tx):
        return tx.update(grads, tx.init(params), params, value=jnp.float32(1.0))[0]
    base = first_update(metaopt.learned_opt(THETA))
    half = first_update(metaopt.learned_opt(THETA, learning_rate=0.5))
    sched = first_update(metaopt.learned_opt(THETA, learning_rate=optax.constant_schedule(0.5)))
    injected = first_update(optax.inject_hyperparams(metaopt.learned_opt)(THETA, learning_rate=0.5))
    for other in (half, sched, injected):
        for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(other), strict=True):
            np.testing.assert_allclose(b, 0.5 * a, rtol=1e-6)
    lstm = metaopt.init_policy(jax.random.key(0))
    a = first_update(metaopt.learned_opt(lstm))
    b = first_update(optax.inject_hyperparams(metaopt.learned_opt)(lstm, learning_rate=2.0))
    np.testing.assert_allclose(b["w"], 2.0 * a["w"], rtol=1e-6)


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_state_is_optax_shaped(kind):
    theta = THETA if kind == "mlp" else metaopt.init_policy(jax.random.key(0))
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    tx = metaopt.learned_opt(theta)
    state = tx.init(params)
    assert int(optax.tree_utils.tree_get(state, "count")) == 0
    state = optax.tree_utils.tree_set(state, count=jnp.int32(7))
    assert int(state.count) == 7
    for name in state._fields:
        field = getattr(state, name)
        if isinstance(field, dict):
            assert set(field) == {"w", "b"}
            assert all(isinstance(leaf, jax.Array) for leaf in field.values())


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_flax_nnx_optimizer_runs_several_steps(kind):
    nnx = pytest.importorskip("flax.nnx")
    theta = THETA if kind == "mlp" else metaopt.init_policy(jax.random.key(0))
    model = nnx.Linear(4, 1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, metaopt.learned_opt(theta), wrt=nnx.Param)
    x, y = A[:, :4], Y[:, None]

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads, value=loss)
        return loss

    losses = [float(train_step(model, optimizer)) for _ in range(4)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_save_load_round_trip_and_wrong_layout(tmp_path):
    theta = init_mlp_policy(jax.random.key(1), hidden_sizes=(8, 4))
    metaopt.save(tmp_path / "p.metaopt", theta)
    loaded = metaopt.load(tmp_path / "p.metaopt")
    assert mlp_policy_sizes(loaded) == (8, 4)
    for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    bad = {**theta, "out": {"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros(2)}}
    with pytest.raises(ValueError, match="shapes"):
        metaopt.learned_opt(bad)
    with pytest.raises(ValueError, match="NaN|finite"):
        metaopt.learned_opt({**theta, "skip": {**theta["skip"], "bias": jnp.asarray([0.0, jnp.nan])}})


def test_nonfinite_gradient_skips_that_leaf_only():
    params = _params()
    tx = metaopt.learned_opt(THETA)
    state = tx.init(params)
    grads = jax.grad(_loss)(params)
    updates, new = tx.update({**grads, "w": grads["w"].at[0].set(jnp.nan)}, state, params,
                             value=jnp.float32(1.0))
    np.testing.assert_array_equal(updates["w"], 0.0)
    np.testing.assert_array_equal(new.momentum["w"], state.momentum["w"])
    assert int(new.leaf_count["w"]) == 0 and int(new.leaf_count["b"]) == 1
    assert int(new.nonfinite_count) == 1
    updates, new = tx.update(grads, state, params, value=jnp.float32(jnp.inf))
    assert all(np.all(u == 0) for u in jax.tree.leaves(updates)) and int(new.count) == 0
    with pytest.raises(ValueError, match="value=loss"):
        tx.update(grads, state, params)
    assert isinstance(state, ScaleFreeOptState)


def test_learned_opt_without_theta_uses_the_shipped_scale_free_policy():
    shipped = metaopt.pretrained.scale_free()
    assert mlp_policy_sizes(shipped) == (32,)
    info = metaopt.pretrained.scale_free_info()
    assert info["held_out"]["scale_free"]["final_mean"] < info["held_out"]["adagrad"]["final_mean"]
    assert "guided policy search" in info["trained_by"]
    params = _params()
    grads = jax.grad(_loss)(params)
    a = metaopt.learned_opt().update(grads, metaopt.learned_opt().init(params), params, value=1.0)[0]
    b = metaopt.learned_opt(shipped).update(grads, metaopt.learned_opt(shipped).init(params),
                                            params, value=1.0)[0]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_least_squares_at_any_parameter_scale_is_the_same_run():
    """The same problem in other units: x/s follows one path for s = 1e-3, 1, 1e3 (here), while
    Adam's absolute steps do not."""
    from metaopt.evaluation.unroll import unroll
    from metaopt.tasks import least_squares_task

    def curve(tx, scale):
        task = least_squares_task(jax.random.key(0), scale=scale, rows=30, dim=5)
        return np.asarray(unroll(tx, task, jax.random.key(1), num_steps=30, eval_every=5).true_loss)

    base = curve(metaopt.learned_opt(THETA), 1.0)
    assert base[-1] < base[0]
    for scale in (1e-3, 1e3):
        np.testing.assert_allclose(curve(metaopt.learned_opt(THETA), scale), base, rtol=1e-3)
    assert not np.allclose(curve(optax.adam(0.05), 1e3), curve(optax.adam(0.05), 1.0), rtol=1e-2)
    with pytest.raises(ValueError, match="scale"):
        least_squares_task(jax.random.key(0), scale=0.0)


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_state_round_trips_through_orbax(kind, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    theta = THETA if kind == "mlp" else metaopt.init_policy(jax.random.key(0))
    tx = metaopt.learned_opt(theta)
    params = _params()
    state = tx.update(jax.grad(_loss)(params), tx.init(params), params, value=jnp.float32(1.0))[1]
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", state)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(tmp_path / "state", tx.init(params))
    assert type(restored) is type(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(a, b)


def test_linen_train_state_with_value():
    """flax's TrainState holds the state; its apply_gradients does not pass ``value``, so the
    update goes through tx.update (as README's example does)."""
    from flax.training import train_state

    params = _params()
    state = train_state.TrainState.create(apply_fn=None, params=params,
                                          tx=metaopt.learned_opt(THETA))
    for _ in range(3):
        loss, grads = jax.value_and_grad(_loss)(state.params)
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params, value=loss)
        state = state.replace(params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state, step=state.step + 1)
    assert int(state.opt_state.count) == 3
    with pytest.raises(ValueError, match="value=loss"):
        state.apply_gradients(grads=grads)


def test_reports_record_the_commit_outside_the_checkout(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    from metaopt.evaluation.report import git_commit

    if not (Path(metaopt.__file__).resolve().parents[1] / ".git").exists():
        pytest.skip("metaopt is not running from a git checkout here")
    monkeypatch.chdir(tmp_path)                # not a repository: the old lookup said "unknown"
    assert re.fullmatch(r"[0-9a-f]{7,}(\+dirty)?", git_commit()), git_commit()


def test_the_family_trained_policy_ships_with_its_provenance():
    family = metaopt.pretrained.scale_free_family()
    assert mlp_policy_sizes(family) == (32,)
    info = metaopt.pretrained.scale_free_family_info()
    assert "family" in info["trained_by"]
    assert len(info["family"]) >= 3 and all(m["dataset"] == "mnist" for m in info["family"])
    summary = info["generalization_suite"]["summary"]
    assert summary["seeds_above_start"] == 0
    assert summary["beats_test_tuned_adam_final"] >= summary["tasks"] / 2
    single = metaopt.pretrained.scale_free()
    assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(family), jax.tree.leaves(single),
                                              strict=True))
    with pytest.raises(FileNotFoundError, match="make train-family"):
        metaopt.pretrained.scale_free_family("/nonexistent/family.metaopt")


def test_the_family_optimizer_is_the_family_policy_at_its_shipped_fan_in_exponent():
    alpha = metaopt.pretrained.scale_free_family_info()["fan_in_exponent"]
    assert 0.0 < alpha <= 1.0
    params = {"w": jnp.linspace(-1.0, 1.0, 300).reshape(100, 3), "b": jnp.full((3,), 0.1)}
    grads = jax.tree.map(lambda x: jnp.cos(5.0 * x), params)
    first = lambda tx: tx.update(grads, tx.init(params), params, value=jnp.float32(1.0))[0]
    family = metaopt.pretrained.scale_free_family()
    shipped = first(metaopt.pretrained.scale_free_family_opt(loss_noise=False))
    by_hand = first(metaopt.learned_opt(family, fan_in_exponent=alpha))
    for a, b in zip(jax.tree.leaves(shipped), jax.tree.leaves(by_hand), strict=True):
        np.testing.assert_array_equal(a, b)
    plain = first(metaopt.learned_opt(family))
    np.testing.assert_allclose(shipped["w"], (48 / 100) ** alpha * plain["w"], rtol=1e-5)


def _family_on_a_noisy_quadratic(num_steps):
    """The shipped family info, policy and α, and ``run(tx)``: f over a noisy quadratic run."""
    from metaopt.evaluation.unroll import unroll
    from tests.toy_tasks import QuadraticTask

    info = metaopt.pretrained.scale_free_family_info()
    task = QuadraticTask(jnp.linspace(0.5, 2.0, 8), noise=0.3)
    run = lambda tx: unroll(tx, task, jax.random.key(5), num_steps=num_steps,
                            eval_every=1).true_loss
    return info, metaopt.pretrained.scale_free_family(), info["fan_in_exponent"], run


def test_the_family_optimizer_over_a_horizon_follows_its_shipped_schedule():
    from metaopt.optimizers.horizon_schedule import horizon_schedule

    info, family, alpha, run = _family_on_a_noisy_quadratic(20)
    knots = info["horizon_schedule"]
    assert len(knots["multipliers"]) == len(knots["fractions"]) >= 2
    schedule = horizon_schedule(knots["multipliers"], horizon=20, fractions=knots["fractions"])
    for rate in (1.0, 0.5):
        by_hand = run(metaopt.learned_opt(family, fan_in_exponent=alpha,
                                          learning_rate=lambda t, r=rate: r * schedule(t)))
        shipped = run(metaopt.pretrained.scale_free_family_opt(learning_rate=rate, horizon=20,
                                                               loss_noise=False))
        np.testing.assert_allclose(shipped, by_hand, rtol=1e-6)
    constant = run(metaopt.pretrained.scale_free_family_opt(loss_noise=False))
    assert not np.allclose(constant, run(metaopt.pretrained.scale_free_family_opt(
        horizon=20, loss_noise=False)))
    with pytest.raises(ValueError, match="positive int"):
        metaopt.pretrained.scale_free_family_opt(horizon=0)


def test_the_family_optimizer_scales_its_step_by_the_shipped_loss_noise_multiplier():
    import optax

    from metaopt.optimizers.loss_noise import scale_by_loss_noise

    info, family, alpha, run = _family_on_a_noisy_quadratic(40)
    scaling = info["loss_noise_scaling"]
    assert len(scaling["multipliers"]) == len(scaling["noise_levels"]) >= 2
    by_hand = run(optax.chain(
        metaopt.learned_opt(family, fan_in_exponent=alpha),
        scale_by_loss_noise(scaling["multipliers"], noise_levels=scaling["noise_levels"],
                            decay=scaling["decay"], warmup=scaling["warmup"])))
    shipped = run(metaopt.pretrained.scale_free_family_opt())
    np.testing.assert_allclose(shipped, by_hand, rtol=1e-6)
    assert not np.allclose(shipped, run(metaopt.pretrained.scale_free_family_opt(loss_noise=False)))
