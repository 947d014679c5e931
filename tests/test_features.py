"""Features Ψ and the GPS state against a straightforward NumPy transcription of SPEC §1."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaopt import features
from metaopt.controller import controller_step, linear_gaussian_controller
from metaopt.gps.types import LinearGaussianController

EPS = 1e-8


# ------------------------------------------------------------------------------------------------
# Reference: written from the full history arrays, index by index, as the SPEC prints it.


def _rel(new, old):
    return (new - old) / max(abs(old), EPS)


def _avg(seq, i):
    """3-step running average of seq at step i (i ≥ 0)."""
    return np.mean(seq[max(i - 2, 0) : i + 1], axis=0)


def reference_observation(x, g, f, t):
    """Ψ(t) per coordinate; x, g: (steps, n), f: (steps,)."""
    n = x.shape[1]
    psi = np.zeros((n, 3))
    if t - 1 >= 0:
        psi[:, 0] = _rel(f[t], f[t - 1])
    psi[:, 1] = g[t] / (np.abs(g[max(t - 1, 0)]) + 1)
    if t - 1 >= 0:  # x(t − 1) is the only index that can be negative
        num = x[max(t - 1, 1)] - x[max(t - 2, 0)]
        psi[:, 2] = np.abs(num / (np.abs(x[t] - x[t - 1]) + 0.1))
    return psi


def reference_phi(x, g, f, t):
    """Φ(t) per coordinate: (n, 76)."""
    n = x.shape[1]
    objective = np.zeros(25)
    for i in range(25):
        a, b = t - 5 * i, t - 5 * (i + 1)
        if b >= 0:
            objective[i] = _rel(_avg(f, a), _avg(f, b))
    gradient = np.zeros((n, 26))
    for i in range(26):
        a, b = t - 5 * i, max(t - 5 * (i + 1), t % 5)
        if a >= 0:
            gradient[:, i] = _avg(g, a) / (np.abs(_avg(g, b)) + 1)
    iterate = np.zeros((n, 25))
    for i in range(25):
        a, b, c = t - 5 * i, t - 5 * (i + 1), t - 5 * (i + 2)
        if c >= 0:
            iterate[:, i] = np.abs(_avg(x, b) - _avg(x, c)) / (
                np.abs(_avg(x, a) - _avg(x, b)) + 0.1
            )
    return np.concatenate([np.broadcast_to(objective, (n, 25)), gradient, iterate], axis=1)


def _random_history(steps, n, seed, zero_objective_at=()):
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.normal(0, 0.3, (steps, n)), axis=0) + rng.normal(0, 1, n)
    g = rng.normal(0, 2, (steps, n))
    f = rng.uniform(0.5, 3.0, steps)
    f[list(zero_objective_at)] = 0.0
    return x.astype(np.float32), g.astype(np.float32), f.astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Ψ.


@jax.jit
def _observation_step(history, count, prev_value, x, g, f):
    psi1 = features.relative_objective_change(count, f, prev_value)
    return features.observation_features(history, x, g, psi1)


def test_observation_matches_reference_for_all_t():
    steps, n = 20, 7
    x, g, f = _random_history(steps, n, seed=0, zero_objective_at=(6,))
    history = features.init_observation_history(jnp.asarray(x[0]))
    for t in range(steps):
        obs, history = _observation_step(history, t, f[t - 1] if t else 0.0, x[t], g[t], f[t])
        np.testing.assert_allclose(obs, reference_observation(x, g, f, t), rtol=2e-5, atol=1e-5)
        assert int(history.count) == t + 1


def test_observation_zero_fill_at_t0():
    x, g = jnp.array([1.0, -2.0]), jnp.array([3.0, -0.5])
    obs, _ = _observation_step(features.init_observation_history(x), 0, 0.0, x, g, 5.0)
    np.testing.assert_allclose(obs[:, 0], 0.0)
    np.testing.assert_allclose(obs[:, 1], g / (jnp.abs(g) + 1))  # index max(t−1, 0) = 0
    np.testing.assert_allclose(obs[:, 2], 0.0)


def test_relative_objective_change_sign_and_zero_guard():
    assert float(features.relative_objective_change(1, 1.0, 2.0)) == pytest.approx(-0.5)
    assert float(features.relative_objective_change(1, -3.0, -2.0)) == pytest.approx(-0.5)
    assert np.isfinite(features.relative_objective_change(1, 1.0, 0.0))
    assert float(features.relative_objective_change(0, 1.0, 2.0)) == 0.0


# ------------------------------------------------------------------------------------------------
# GPS state, through the ring buffers, for t = 0..140 (every t < 3, t < 5, t mod 5, t ≥ 130).


@jax.jit
def _gps_step(history, objective_history, count, x, g, f, prev_action, true_grad):
    phi_objective, objective_history = features.objective_features(objective_history, count, f)
    state, history = features.gps_state(history, phi_objective, x, g, prev_action, true_grad)
    return state, history, objective_history


def test_gps_state_matches_reference_for_t_0_to_140():
    steps, n = 141, 5
    x, g, f = _random_history(steps, n, seed=1, zero_objective_at=(40, 41, 42))
    rng = np.random.default_rng(2)
    actions = rng.normal(size=(steps, n)).astype(np.float32)
    true_grads = rng.normal(size=(steps, n)).astype(np.float32)
    history = features.init_gps_history(jnp.asarray(x[0]))
    objective_history = features.init_average_history(jnp.zeros(()))
    for t in range(steps):
        prev_action = actions[t - 1] if t else np.zeros(n, np.float32)
        state, history, objective_history = _gps_step(
            history, objective_history, t, x[t], g[t], f[t], prev_action, true_grads[t]
        )
        assert state.shape == (n, features.GPS_STATE_DIM)
        want = np.concatenate(
            [reference_phi(x, g, f, t), np.stack([g[t], prev_action, true_grads[t]], axis=1)],
            axis=1,
        )
        # Relative objective changes divide by ~1e-8 around f = 0: compare those loosely.
        np.testing.assert_allclose(state, want, rtol=1e-4, atol=1e-4, err_msg=f"t = {t}")


def test_gps_state_layout_and_zero_fill():
    assert features.GPS_STATE_DIM == 79 and features.PHI_DIM == 76
    assert (features.GRADIENT_INDEX, features.PREV_ACTION_INDEX) == (76, 77)
    assert features.TRUE_GRADIENT_INDEX == 78
    x, g = jnp.array([0.5, 1.0]), jnp.array([2.0, -1.0])
    state, _, _ = _gps_step(
        features.init_gps_history(x), features.init_average_history(jnp.zeros(())), 0,
        x, g, 1.0, jnp.zeros(2), jnp.ones(2),
    )
    np.testing.assert_allclose(state[:, features.PHI_OBJECTIVE], 0.0)
    np.testing.assert_allclose(state[:, features.PHI_ITERATE], 0.0)
    np.testing.assert_allclose(state[:, features.PHI_GRADIENT][:, 0], g / (jnp.abs(g) + 1))
    np.testing.assert_allclose(state[:, features.PHI_GRADIENT][:, 1:], 0.0)


def test_controller_sees_the_gps_state_of_its_own_rollout():
    """The controller transformation builds the same state from the realised trajectory."""
    steps, n = 32, 4
    rng = np.random.default_rng(3)
    gain = jnp.asarray(rng.normal(0, 0.05, (steps, 1, features.GPS_STATE_DIM)), jnp.float32)
    ctrl = LinearGaussianController(gain, jnp.zeros((steps, 1)), jnp.ones((steps, 1, 1)))
    tx = linear_gaussian_controller(ctrl)
    grads = rng.normal(size=(steps, n)).astype(np.float32)
    true_grads = rng.normal(size=(steps, n)).astype(np.float32)
    values = rng.uniform(1, 2, steps).astype(np.float32)
    x = np.zeros((steps, n), np.float32)
    x[0] = rng.normal(size=n)
    state = tx.init(jnp.asarray(x[0]))
    step = jax.jit(lambda s, g, p, v, gs: controller_step(ctrl, g, s, p, value=v, true_grad=gs))
    for t in range(steps):
        a, state, s = step(state, grads[t], x[t], values[t], true_grads[t])
        prev_action = x[t] - x[t - 1] if t else np.zeros(n)
        want = np.concatenate(
            [reference_phi(x, grads, values, t),
             np.stack([grads[t], prev_action, true_grads[t]], axis=1)], axis=1,
        )
        np.testing.assert_allclose(s, want, rtol=1e-4, atol=1e-4, err_msg=f"t = {t}")
        np.testing.assert_allclose(a, s @ gain[t, 0], rtol=1e-5, atol=1e-6)
        if t + 1 < steps:
            x[t + 1] = x[t] + np.asarray(a)


# ------------------------------------------------------------------------------------------------
# Properties.

_finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
_N = 6


@settings(max_examples=25, deadline=None)
@given(
    xs=st.lists(st.lists(_finite, min_size=_N, max_size=_N), min_size=8, max_size=8),
    gs=st.lists(st.lists(_finite, min_size=_N, max_size=_N), min_size=8, max_size=8),
    fs=st.lists(_finite, min_size=8, max_size=8),
)
def test_finite_inputs_give_finite_features(xs, gs, fs):
    x, g, f = (np.asarray(a, np.float32) for a in (xs, gs, fs))
    obs_history = features.init_observation_history(jnp.asarray(x[0]))
    history = features.init_gps_history(jnp.asarray(x[0]))
    objective_history = features.init_average_history(jnp.zeros(()))
    for t in range(len(f)):
        obs, obs_history = _observation_step(
            obs_history, t, f[t - 1] if t else 0.0, x[t], g[t], f[t]
        )
        state, history, objective_history = _gps_step(
            history, objective_history, t, x[t], g[t], f[t], g[t], g[t]
        )
        assert np.all(np.isfinite(obs)) and np.all(np.isfinite(state))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), perm_seed=st.integers(0, 2**31 - 1))
def test_permuting_coordinates_permutes_features(seed, perm_seed):
    x, g, f = _random_history(12, _N, seed)
    perm = np.random.default_rng(perm_seed).permutation(_N)
    outs = []
    for order in (np.arange(_N), perm):
        obs_history = features.init_observation_history(jnp.asarray(x[0, order]))
        history = features.init_gps_history(jnp.asarray(x[0, order]))
        objective_history = features.init_average_history(jnp.zeros(()))
        seq = []
        for t in range(len(f)):
            xt, gt = x[t, order], g[t, order]
            obs, obs_history = _observation_step(
                obs_history, t, f[t - 1] if t else 0.0, xt, gt, f[t]
            )
            state, history, objective_history = _gps_step(
                history, objective_history, t, xt, gt, f[t], gt, gt
            )
            seq.append(np.concatenate([obs, state], axis=1))
        outs.append(np.stack(seq))
    np.testing.assert_array_equal(outs[0][:, perm], outs[1])
