"""Random small GPS instances and dense NumPy brute-force references (float64)."""

import numpy as np

from metaopt.gps.types import LinearGaussianController, LinearGaussianDynamics, QuadraticCost


def random_spd(rng, shape, dim, scale=1.0, floor=0.1):
    root = rng.normal(size=(*shape, dim, dim))
    return scale * (root @ np.swapaxes(root, -1, -2) / dim + floor * np.eye(dim))


def random_dynamics(rng, horizon, state_dim, action_dim, batch=()):
    shape = (*batch, horizon)
    return LinearGaussianDynamics(
        state_matrix=0.9 * np.eye(state_dim) + 0.3 * rng.normal(size=(*shape, state_dim, state_dim))
        / np.sqrt(state_dim),
        action_matrix=rng.normal(size=(*shape, state_dim, action_dim)),
        offset=0.1 * rng.normal(size=(*shape, state_dim)),
        covariance=random_spd(rng, shape, state_dim, 0.05),
        initial_mean=rng.normal(size=(*batch, state_dim)),
        initial_covariance=random_spd(rng, batch, state_dim, 0.2),
    )


def random_cost(rng, horizon, dim, batch=()):
    shape = (*batch, horizon)
    return QuadraticCost(random_spd(rng, shape, dim), rng.normal(size=(*shape, dim)),
                         rng.normal(size=shape))


def random_controller(rng, horizon, state_dim, action_dim, batch=(), scale=0.3):
    shape = (*batch, horizon)
    return LinearGaussianController(
        gain=scale * rng.normal(size=(*shape, action_dim, state_dim)),
        bias=rng.normal(size=(*shape, action_dim)),
        covariance=random_spd(rng, shape, action_dim, 0.5),
    )


def tail_problem_solution(cost, dynamics, start, fixed_dim):
    """Brute-force the deterministic LQR tail problem from step ``start`` by its KKT system.

    Variables x = [s_start, a_start, s_{start+1}, a_{start+1}, …, s_{T−1}, a_{T−1}] (no batch axes);
    objective Σ_τ ½ z_τᵀC_τ z_τ + c_τᵀz_τ; constraints s_{τ+1} = A_τ s_τ + B_τ a_τ + c_τ. The first
    ``fixed_dim`` variables (dX: the state; dX + dU: state and action) are parameters p.

    Returns:
      (Y, y0, P, g): the optimal free variables are Y p + y0 (in x order, after the parameters),
      and the optimal cost as a function of p has Hessian P and gradient at 0 g.
    """
    hessians, gradients = np.asarray(cost.hessian), np.asarray(cost.gradient)
    a_mat, b_mat = np.asarray(dynamics.state_matrix), np.asarray(dynamics.action_matrix)
    offsets = np.asarray(dynamics.offset)
    horizon, dim = gradients.shape[-2:]
    state_dim = a_mat.shape[-1]
    steps = horizon - start
    n = steps * dim
    big_h = np.zeros((n, n))
    big_g = np.zeros(n)
    for i in range(steps):
        sl = slice(i * dim, (i + 1) * dim)
        big_h[sl, sl] = hessians[start + i]
        big_g[sl] = gradients[start + i]
    rows = []
    rhs = []
    for i in range(steps - 1):
        row = np.zeros((state_dim, n))
        t = start + i
        row[:, i * dim:i * dim + state_dim] = -a_mat[t]
        row[:, i * dim + state_dim:(i + 1) * dim] = -b_mat[t]
        row[:, (i + 1) * dim:(i + 1) * dim + state_dim] = np.eye(state_dim)
        rows.append(row)
        rhs.append(offsets[t])
    eq = np.concatenate(rows) if rows else np.zeros((0, n))
    eq_rhs = np.concatenate(rhs) if rhs else np.zeros(0)
    p, y = slice(0, fixed_dim), slice(fixed_dim, n)
    m = n - fixed_dim
    kkt = np.block([[big_h[y, y], eq[:, y].T], [eq[:, y], np.zeros((eq.shape[0],) * 2)]])
    # Right-hand sides: one per parameter direction (coefficients of p) plus the constant.
    rhs_p = np.concatenate([-big_h[y, p], -eq[:, p]])
    rhs_0 = np.concatenate([-big_g[y], eq_rhs])
    sol = np.linalg.solve(kkt, np.concatenate([rhs_p, rhs_0[:, None]], axis=1))
    y_gain, y0 = sol[:m, :fixed_dim], sol[:m, fixed_dim]
    embed = np.concatenate([np.eye(fixed_dim), y_gain])
    offset = np.concatenate([np.zeros(fixed_dim), y0])
    value_hessian = embed.T @ big_h @ embed
    value_gradient = embed.T @ (big_h @ offset + big_g)
    return y_gain, y0, value_hessian, value_gradient


def sample_trajectories(rng, controller, dynamics, count):
    """Sample ``count`` trajectories (no batch axes): states (count, T, dX), actions (count, T, dU)."""
    gain, bias, cov = (np.asarray(x) for x in controller)
    horizon, action_dim, state_dim = gain.shape
    state = rng.multivariate_normal(np.asarray(dynamics.initial_mean),
                                    np.asarray(dynamics.initial_covariance), size=count)
    states, actions = [], []
    for t in range(horizon):
        action = state @ gain[t].T + bias[t] + rng.multivariate_normal(
            np.zeros(action_dim), cov[t], size=count)
        states.append(state)
        actions.append(action)
        transition = np.concatenate([np.asarray(dynamics.state_matrix[t]),
                                     np.asarray(dynamics.action_matrix[t])], axis=1)
        state = (np.concatenate([state, action], 1) @ transition.T + np.asarray(dynamics.offset[t])
                 + rng.multivariate_normal(np.zeros(state_dim), np.asarray(dynamics.covariance[t]),
                                           size=count))
    return np.stack(states, 1), np.stack(actions, 1)


def gaussian_log_density(x, mean, cov):
    """log N(x; mean, cov) for x, mean (..., d) and cov (d, d)."""
    diff = x - mean
    chol = np.linalg.cholesky(cov)
    white = np.linalg.solve(chol, diff.T).T
    return (-0.5 * np.sum(white**2, -1) - np.log(np.diag(chol)).sum()
            - 0.5 * x.shape[-1] * np.log(2 * np.pi))
