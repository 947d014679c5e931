"""Array containers shared by the GPS solvers, the controller transformation and meta-training.

Shapes use: ``T`` time steps, ``dX`` per-coordinate state width, ``dU`` action width (1 for a
coordinate's step), and leading batch axes ``...`` (coordinate groups, optionally conditions).
"""

import contextlib
from typing import NamedTuple

import jax
import jax.numpy as jnp


class LinearGaussianController(NamedTuple):
    """Time-varying linear-Gaussian controller ψ(a | s, t) = N(K_t s + k_t, G_t).

    Attributes:
      gain: K, ``(..., T, dU, dX)``.
      bias: k, ``(..., T, dU)``.
      covariance: G, ``(..., T, dU, dU)``, symmetric positive definite.
    """

    gain: jax.Array
    bias: jax.Array
    covariance: jax.Array


class LinearGaussianDynamics(NamedTuple):
    """Local dynamics p(s_{t+1} | s_t, a_t) = N(A_t s_t + B_t a_t + c_t, F_t) and the initial state.

    Attributes:
      state_matrix: A, ``(..., T, dX, dX)``.
      action_matrix: B, ``(..., T, dX, dU)``.
      offset: c, ``(..., T, dX)``.
      covariance: F, ``(..., T, dX, dX)``.
      initial_mean: ``(..., dX)``.
      initial_covariance: ``(..., dX, dX)``.
    """

    state_matrix: jax.Array
    action_matrix: jax.Array
    offset: jax.Array
    covariance: jax.Array
    initial_mean: jax.Array
    initial_covariance: jax.Array


class RegressionMoments(NamedTuple):
    """Streaming sufficient statistics of points y (e.g. y = [s_t; a_t; s_{t+1}]).

    Accumulated per (group, time step) during rollouts; two accumulators over the same index
    merge by addition (``jax.tree.map(jnp.add, ...)``, ``jax.lax.psum``), so a rollout never keeps
    the points themselves.

    Attributes:
      count: total weight of the points seen, ``(...,)``.
      first: Σ w·y, ``(..., D)``.
      second: Σ w·y yᵀ, ``(..., D, D)``.
    """

    count: jax.Array
    first: jax.Array
    second: jax.Array


class QuadraticCost(NamedTuple):
    """Per-step quadratic cost ℓ_t(z) = ½ zᵀ C_t z + c_tᵀ z + c⁰_t over z = [s; a].

    Attributes:
      hessian: C, ``(..., T, dX + dU, dX + dU)``, symmetric.
      gradient: c, ``(..., T, dX + dU)``.
      constant: c⁰, ``(..., T)``.
    """

    hessian: jax.Array
    gradient: jax.Array
    constant: jax.Array


class BadmmDuals(NamedTuple):
    """BADMM coupling between the controller and the policy, tied within a group.

    Attributes:
      multiplier: λ_t, ``(..., T, dU)``; the controller's cost gains −λ_tᵀ a.
      penalty: ν_t, ``(..., T)``; weight of KL(ψ ‖ π_lin) in the controller's cost.
    """

    multiplier: jax.Array
    penalty: jax.Array


class StateActionMarginals(NamedTuple):
    """Gaussian marginals N(μ_t, Σ_t) of z_t = [s_t; a_t] under a controller and dynamics.

    Attributes:
      mean: ``(..., T, dX + dU)``.
      covariance: ``(..., T, dX + dU, dX + dU)``.
    """

    mean: jax.Array
    covariance: jax.Array


def float64() -> contextlib.AbstractContextManager:
    """Context manager enabling float64 for the GPS solves (``jax.enable_x64(True)``, scoped).

    The dynamics fit, LQG and η search compute in ``solve_dtype()``: float64 inside this context,
    float32 outside it. Call (and trace) them inside it; the rest of the library stays float32::

        with metaopt.gps.float64():
            result = jax.device_get(jax.jit(eta_search)(...))

    Bring float64 results out as NumPy (``jax.device_get``) or keep them inside the context: a
    JAX operation on them outside it truncates them to float32 (with a warning).
    """
    return jax.enable_x64(True)


def solve_dtype():
    """The dtype of the GPS solves: float64 when x64 is enabled, else float32."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def to_solve_dtype(tree):
    """Cast every array leaf of ``tree`` (``None`` leaves stay) to ``solve_dtype()``."""
    dtype = solve_dtype()
    return jax.tree.map(lambda x: jnp.asarray(x).astype(dtype), tree)


def symmetrize(matrix: jax.Array) -> jax.Array:
    """½(M + Mᵀ) over the last two axes."""
    return 0.5 * (matrix + jnp.swapaxes(matrix, -1, -2))
