"""The C-step's model of one GPS iteration, fit from a rollout: dynamics, tied cost, E[g* | s].

Per (group, t): linear-Gaussian dynamics of the model state (the 79-wide GPS state, or the 78
observable entries when the controllers may not read g*), the tied cost w_t·(g*·a + ½ h a²)
with g* or its regression on the state, optional corrections measured against the real
objective (curvature calibration, collective gradient response), and the checks that decide
whether a rollout can be used at all. Solves run in float64 inside ``metaopt.gps.float64()``.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from metaopt import features
from metaopt.gps import (
    LinearGaussianController,
    LinearGaussianDynamics,
    fit_conditional_mean,
    fit_dynamics,
    select_moments,
    tied_coordinate_cost,
)
from metaopt.training.curvature import calibrate_to_realized_change
from metaopt.training.rollout import RolloutData

STATE_DIM = features.GPS_STATE_DIM


def model_state_dim(config) -> int:
    """dM: the width of the state the C-step's model and controllers use (79, or 78 without g*)."""
    return STATE_DIM if config.privileged_gradient else STATE_DIM - 1


def to_model(controller: LinearGaussianController, dim: int) -> LinearGaussianController:
    """The controller on the model's first ``dim`` state entries (dropped columns must be 0)."""
    return controller._replace(gain=controller.gain[..., :dim])


def from_model(controller: LinearGaussianController) -> LinearGaussianController:
    """A model-space controller as a GPS-state controller (zero gain on the entries it lacks)."""
    missing = STATE_DIM - controller.gain.shape[-1]
    pad = [(0, 0)] * (controller.gain.ndim - 1) + [(0, missing)]
    return controller._replace(gain=np.pad(np.asarray(controller.gain), pad))


# Two jits, not one: on jaxlib 0.10.2 CPU a single program holding both Cholesky chains (dynamics
# and E[g* | s]) deadlocked in execution (0 % CPU, never returned); separately they take < 1 s.
@partial(jax.jit, static_argnames=("prior_strength", "ridge", "privileged_gradient"))
def _fit_dynamics(moments, *, prior_strength, ridge, privileged_gradient):
    if privileged_gradient:
        return fit_dynamics(moments, STATE_DIM, prior_strength=prior_strength, ridge=ridge)
    observable = list(range(STATE_DIM - 1))
    # y = [s_t (79); a_t; s_{t+1} (79)]: keep [s_t without g*; a_t; s_{t+1} without g*].
    kept = observable + [STATE_DIM] + [STATE_DIM + 1 + i for i in observable]
    return fit_dynamics(select_moments(moments, kept), STATE_DIM - 1,
                        prior_strength=prior_strength, ridge=ridge)


@partial(jax.jit, static_argnames=("prior_strength", "ridge"))
def _fit_gradient_model(moments, *, prior_strength, ridge):
    return fit_conditional_mean(moments, range(STATE_DIM - 1), [STATE_DIM - 1],
                                prior_strength=prior_strength, ridge=ridge)


@partial(jax.jit, static_argnames=("state_dim",))
def _tied_cost(curvature, gradient_model, *, state_dim):
    return tied_coordinate_cost(curvature, state_dim, gradient_model=gradient_model)


def fit_model(data: RolloutData, *, prior_strength: float, ridge: float,
              privileged_gradient: bool = False):
    """Dynamics, tied cost and gradient model ``(G, T, ...)`` of a rollout (inside ``float64()``).

    ``privileged_gradient=False``: the model's state drops g* (the last GPS-state entry); the
    dynamics are fit on the rest and the cost's g* is E[g* | s] regressed per (g, t) with the same
    prior. True: the full GPS state, g* itself in the cost (gradient model M = e_g*, m = 0).

    Returns:
      ``(dynamics, cost, (M (G, T, 1, dM), m (G, T, 1)))``, on the device.
    """
    dynamics = _fit_dynamics(data.moments, prior_strength=prior_strength, ridge=ridge,
                             privileged_gradient=privileged_gradient)
    dtype = dynamics.offset.dtype
    shape = dynamics.offset.shape[:-1]
    if privileged_gradient:
        gradient_model = (jnp.zeros(shape + (1, STATE_DIM), dtype).at[..., -1].set(1.0),
                          jnp.zeros(shape + (1,), dtype))
    else:
        gradient_model = _fit_gradient_model(data.moments, prior_strength=prior_strength,
                                             ridge=ridge)
    cost = _tied_cost(jnp.asarray(data.curvature, dtype), gradient_model,
                      state_dim=dynamics.offset.shape[-1])
    return dynamics, cost, gradient_model


@jax.jit
def calibrate_curvature(data: RolloutData) -> tuple[RolloutData, jax.Array]:
    """``data`` with h_{g,t} scaled to the realised objective changes, and the scale κ ``(T,)``."""
    gradient, action = STATE_DIM - 1, STATE_DIM      # g* in s_t, and a_t, in y = [s_t; a_t; s']
    second = data.moments.second
    curvature, kappa = calibrate_to_realized_change(
        data.curvature, data.true_objective, second[..., gradient, action],
        second[..., action, action])
    return data._replace(curvature=curvature), kappa


def collective_response(dynamics: LinearGaussianDynamics, curvature, controller,
                        state_dim: int) -> LinearGaussianDynamics:
    """Dynamics whose gradient rows respond to the action with the measured curvature (ours).

    The pooled regression identifies B only from exploration noise, which is independent across
    coordinates, so it sees the diagonal Hessian (measured B on g*: 0.002-0.015 against curvature
    0.03-0.4 along the steps) and credits the collective descent (g* shrinks because every
    coordinate steps along it) to A. Here the rows of ĝ(t+1), g*(t+1) and the newest 3-step
    gradient average get B = r·h_{g,t} (r = 1, 1, 1/3), and A, c are corrected by −ΔB·K_t, −ΔB·k_t
    with the sampling controller (K_t, k_t), so the mean prediction under that controller is
    unchanged while another controller's steps move the gradient as the curvature says.

    Args: dynamics ``(G, T, ...)`` (model state), curvature ``(G, T)``, controller on the model
      state, state_dim dM.
    """
    rows = {features.GRADIENT_INDEX: 1.0, features.PHI_GRADIENT.start: 1.0 / 3.0}
    if state_dim > features.TRUE_GRADIENT_INDEX:
        rows[features.TRUE_GRADIENT_INDEX] = 1.0
    state_matrix = np.array(dynamics.state_matrix)
    action_matrix = np.array(dynamics.action_matrix)
    offset = np.array(dynamics.offset)
    gain = np.asarray(controller.gain, state_matrix.dtype)[..., 0, :]       # (G, T, dM)
    bias = np.asarray(controller.bias, state_matrix.dtype)[..., 0]          # (G, T)
    for row, weight in rows.items():
        change = weight * np.asarray(curvature, state_matrix.dtype) - action_matrix[..., row, 0]
        action_matrix[..., row, 0] += change
        state_matrix[..., row, :] -= change[..., None] * gain
        offset[..., row] -= change * bias
    return dynamics._replace(state_matrix=state_matrix, action_matrix=action_matrix, offset=offset)


def rollout_fault(data: RolloutData, divergence_ratio: float) -> str | None:
    """Why a rollout cannot be used for a GPS update (non-finite or diverged), or ``None``."""
    objective = np.asarray(data.true_objective, np.float64)
    if not np.all(np.isfinite(objective)):
        return "the controllers' samples reached a non-finite true objective"
    numbers = [data.curvature, *jax.tree.leaves(data.moments)]
    if not all(np.all(np.isfinite(np.asarray(x))) for x in numbers):
        return "non-finite regression moments or curvature (overflowing states)"
    start, end = objective[:, 0].mean(), objective[:, -1].mean()
    if end > divergence_ratio * start:
        return f"the samples diverged: mean f(x_T) = {end:.4g} > {divergence_ratio} × f(x_0) = {start:.4g}"
    return None

