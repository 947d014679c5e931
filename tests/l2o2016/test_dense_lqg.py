"""The GPS solvers on the dense 2016 problem: action_dim = d > 1, state s = [x; ∇f; a_prev]."""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from metaopt.gps import backward_pass, float64
from metaopt.l2o2016.gps import FlatProblem, Samples, fit_model, momentum_controllers, rollout
from tests.gps.helpers import random_dynamics


@flax.struct.dataclass
class QuadraticTask:
    """½ (x − m)ᵀ Q (x − m) over params {"x": (d,)}; batched with a leading axis."""

    q: jax.Array
    m: jax.Array

    def true_loss(self, params):
        r = params["x"] - self.m
        return 0.5 * r @ self.q @ r


def numpy_lqr(hessians, gradients, a_mats, b_mats, offsets, state_dim):
    """Textbook Riccati recursion for min Σ_t ½zᵀC_t z + c_tᵀz, s' = As + Ba + c (no noise)."""
    horizon = len(hessians)
    v_mat, v_vec = np.zeros((state_dim, state_dim)), np.zeros(state_dim)
    gains, biases = [None] * horizon, [None] * horizon
    for t in reversed(range(horizon)):
        q_mat, q_vec = hessians[t].copy(), gradients[t].copy()
        if t < horizon - 1:
            f_mat = np.concatenate([a_mats[t], b_mats[t]], 1)
            q_mat += f_mat.T @ v_mat @ f_mat
            q_vec += f_mat.T @ (v_vec + v_mat @ offsets[t])
        q_xx, q_xu = q_mat[:state_dim, :state_dim], q_mat[:state_dim, state_dim:]
        q_uu, q_u, q_x = q_mat[state_dim:, state_dim:], q_vec[state_dim:], q_vec[:state_dim]
        gains[t] = -np.linalg.solve(q_uu, q_xu.T)
        biases[t] = -np.linalg.solve(q_uu, q_u)
        v_mat = q_xx - gains[t].T @ q_uu @ gains[t]
        v_vec = q_x - gains[t].T @ q_uu @ biases[t]
    return np.stack(gains), np.stack(biases)


def test_lqr_with_vector_actions_matches_numpy_riccati():
    rng = np.random.default_rng(0)
    dim, horizon = 3, 6
    state_dim = 3 * dim
    dynamics = random_dynamics(rng, horizon, state_dim, dim)
    root = rng.normal(size=(horizon, dim, dim))
    hess = root @ np.swapaxes(root, -1, -2) + 0.5 * np.eye(dim)
    select = np.concatenate([np.eye(dim), np.zeros((dim, 2 * dim)), np.eye(dim)], 1)
    hessians = np.einsum("ik,tij,jl->tkl", select, hess, select)
    gradients = rng.normal(size=(horizon, state_dim + dim))
    from metaopt.gps import QuadraticCost
    cost = QuadraticCost(hessians, gradients, np.zeros(horizon))
    with float64():
        result = jax.device_get(jax.jit(backward_pass)(cost, dynamics))
    assert not bool(result.failed)
    assert result.controller.gain.shape == (horizon, dim, state_dim)
    gains, biases = numpy_lqr(hessians, gradients, *(np.asarray(x) for x in dynamics[:3]),
                              state_dim)
    np.testing.assert_allclose(result.controller.gain, gains, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(result.controller.bias, biases, rtol=1e-8, atol=1e-10)


def test_fitted_dynamics_and_cost_are_exact_on_a_quadratic():
    """On f = ½(x − m)ᵀQ(x − m): x' = x + a, a_prev' = a and ∇f' = Q(x + a − m) are linear, so the
    fit recovers them, and the cost model of f(x + a) is f itself."""
    rng = np.random.default_rng(1)
    dim, conditions, samples, horizon = 3, 2, 40, 5
    root = rng.normal(size=(conditions, dim, dim))
    q = root @ np.swapaxes(root, -1, -2) / dim + 0.5 * np.eye(dim)
    tasks = QuadraticTask(jnp.asarray(q, jnp.float32), jnp.asarray(rng.normal(size=(conditions,
                                                                                    dim)),
                                                                   jnp.float32))
    problem = FlatProblem(jax.flatten_util.ravel_pytree({"x": jnp.zeros(dim)})[1])
    x0 = jnp.asarray(rng.normal(size=(conditions, dim)), jnp.float32)
    ctrl = momentum_controllers(np.full(conditions, 0.1), np.full(conditions, 0.5), dim, horizon,
                                0.05)
    noise = jax.random.normal(jax.random.key(0), (conditions, samples, horizon, dim))
    data = rollout(problem, tasks, x0, ctrl, noise, history=4)
    assert isinstance(data, Samples) and data.states.shape == (conditions, samples, horizon + 1,
                                                               3 * dim)
    with float64():
        dynamics, cost = jax.device_get(fit_model(problem, tasks, data, prior_strength=0.0,
                                                  ridge=1e-9))
    # B is identified by the exploration noise; A only on the span the states cover (g is a
    # linear function of x here), so A is checked through its predictions.
    eye = np.eye(dim)
    eyes = np.broadcast_to(eye, q.shape)
    want_b = np.concatenate([eyes, q, eyes], 1)                            # (C, 3d, d)
    np.testing.assert_allclose(dynamics.action_matrix[:, :-1],
                               np.broadcast_to(want_b[:, None], (conditions, horizon - 1,
                                                                 3 * dim, dim)), atol=2e-3)
    states, actions = (np.asarray(x, np.float64) for x in (data.states, data.actions))
    predicted = (np.einsum("ctij,cntj->cnti", dynamics.state_matrix, states[:, :, :-1])
                 + np.einsum("ctij,cntj->cnti", dynamics.action_matrix, actions)
                 + dynamics.offset[:, None])
    np.testing.assert_allclose(predicted[:, :, :-1], states[:, :, 1:-1], atol=1e-3)
    # ℓ_t(s, a) = f(x + a): evaluate the quadratic at a random z and compare with f.
    z = rng.normal(size=4 * dim)
    for c in range(conditions):
        for t in range(horizon):
            model = 0.5 * z @ cost.hessian[c, t] @ z + cost.gradient[c, t] @ z + cost.constant[c, t]
            r = z[:dim] + z[3 * dim:] - np.asarray(tasks.m[c], np.float64)
            np.testing.assert_allclose(model, 0.5 * r @ q[c] @ r, rtol=1e-4, atol=1e-5)
