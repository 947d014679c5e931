"""Per-coordinate features of the optimisation history (Li & Malik 2017, §3.6; SPEC §1, §3).

Two feature sets, both pure jit-able functions that broadcast elementwise over a leaf's
coordinates (so a whole weight matrix is processed at once, and they also work under ``jax.vmap``):

* **Observation Ψ** (``OBS_DIM = 3`` per coordinate), the learned policy's input at step t::

    ψ1 = (f̂(t) − f̂(t−1)) / f̂(t−1)                                  (same for every coordinate)
    ψ2 = ĝ(t) / (|ĝ(max(t−1, 0))| + 1)
    ψ3 = |x(max(t−1, 1)) − x(max(t−2, 0))| / (|x(t) − x(t−1)| + 0.1)

  It needs only x(t−1), x(t−1) − x(t−2), |ĝ(t−1)| and f̂(t−1): see :class:`ObservationHistory`.

* **GPS state** (``GPS_STATE_DIM = 79`` per coordinate), used only by the linear-Gaussian
  controllers during meta-training: ``s = [Φ (76), ĝ(t), a(t−1), g*(t)]`` with
  ``Φ = [25 objective-change, 26 gradient, 25 iterate-change]`` built from the 3-step running
  averages x̄, ḡ, f̄ at stride-5 lags (SPEC §1; the third block is our reading).

The public functions are jitted and broadcast over any leading shape, so they also run under
``jax.vmap`` and inside other jitted code (where they are inlined).

Conventions (all marked "ours" where the papers are silent):

* t counts the observations already folded into a history (0 for the first step).
* Any feature with a negative time index is 0 (the paper's zero-fill rule).
* Relative objective changes divide by ``max(|f|, OBJECTIVE_EPS)`` instead of ``f``: identical to
  the paper for positive objectives above 1e-8, finite when the objective is 0, and "a decrease is
  negative" also for negative objectives.

History cost of the GPS state (float32): every step t needs the averages at ``t − 5j`` for
``j = 0..26`` (lag 26 only through the clamped denominator of the last gradient feature once
t ≥ 130), and consecutive steps use all five residues mod 5, so each of ḡ and x̄ keeps the last
130 averages in a ``(5, 26)`` ring (residue class × slot) plus the two previous raw values for the
3-step mean: 2 · (130 + 2) floats = 1056 bytes per parameter, plus 4 bytes for a(t−1) held by the
controller. The objective ring is one scalar history per problem. The observation Ψ costs
x(t−1) (leaf dtype) + 2 float32 per parameter (12 bytes for float32 leaves).

Example::

  hist = init_observation_history(x)
  psi1 = relative_objective_change(count, value, prev_value)
  obs, hist = observation_features(hist, x, grad, psi1)   # obs: x.shape + (3,)
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

OBS_DIM = 3
LAG_STRIDE = 5
SLOTS_PER_RESIDUE = 26  # stored past averages per residue class: lags 5, 10, ..., 130
NUM_LAGS = SLOTS_PER_RESIDUE + 1  # lags 0..26 (in units of LAG_STRIDE), 0 = the current step

PHI_OBJECTIVE_DIM = 25
PHI_GRADIENT_DIM = 26
PHI_ITERATE_DIM = 25
PHI_DIM = PHI_OBJECTIVE_DIM + PHI_GRADIENT_DIM + PHI_ITERATE_DIM  # 76
GPS_STATE_DIM = PHI_DIM + 3  # 79

PHI_OBJECTIVE = slice(0, PHI_OBJECTIVE_DIM)
PHI_GRADIENT = slice(PHI_OBJECTIVE_DIM, PHI_OBJECTIVE_DIM + PHI_GRADIENT_DIM)
PHI_ITERATE = slice(PHI_OBJECTIVE_DIM + PHI_GRADIENT_DIM, PHI_DIM)
GRADIENT_INDEX = PHI_DIM  # ĝ(t), the minibatch gradient
PREV_ACTION_INDEX = PHI_DIM + 1  # a(t−1), the last step
TRUE_GRADIENT_INDEX = PHI_DIM + 2  # g*(t), the true-objective gradient (privileged)

OBJECTIVE_EPS = 1e-8
GRADIENT_OFFSET = 1.0  # the "+ 1" of ψ2 / Φ2
STEP_OFFSET = 0.1  # the "+ 0.1" of ψ3 / Φ3

_F32 = jnp.float32

__all__ = [
    "GPS_STATE_DIM",
    "GRADIENT_INDEX",
    "OBS_DIM",
    "PHI_DIM",
    "PHI_GRADIENT",
    "PHI_ITERATE",
    "PHI_OBJECTIVE",
    "PREV_ACTION_INDEX",
    "TRUE_GRADIENT_INDEX",
    "AverageHistory",
    "GPSHistory",
    "ObservationHistory",
    "gps_state",
    "gradient_iterate_features",
    "init_average_history",
    "init_gps_history",
    "init_observation_history",
    "lagged_averages",
    "objective_features",
    "observation_features",
    "push_average",
    "relative_objective_change",
]


def _relative_change(new, old):
    return (new - old) / jnp.maximum(jnp.abs(old), OBJECTIVE_EPS)


def _zeros_with_trailing(x, trailing, dtype=_F32):
    # Built from ``x`` so that a sharded leaf yields equally sharded history (sharding in types).
    base = jnp.zeros_like(x, dtype=dtype)
    return jnp.broadcast_to(base.reshape(base.shape + (1,) * len(trailing)), x.shape + trailing)


# ------------------------------------------------------------------------------------------------
# Observation Ψ (the policy's input).


class ObservationHistory(NamedTuple):
    """What Ψ needs from the past, per leaf.

    Attributes:
      count: int32 scalar, observations folded in so far (the leaf's t).
      prev_iterate: x(t−1), in the leaf's dtype (exact, so differences are exact).
      prev_delta: float32, x(t−1) − x(t−2) (0 until t ≥ 2).
      prev_grad_abs: float32, |ĝ(t−1)|.
    """

    count: jax.Array
    prev_iterate: jax.Array
    prev_delta: jax.Array
    prev_grad_abs: jax.Array


def init_observation_history(x) -> ObservationHistory:
    """Empty Ψ history for a leaf shaped like ``x`` (array or ``jax.ShapeDtypeStruct``)."""
    return ObservationHistory(
        count=jnp.zeros((), jnp.int32),
        prev_iterate=jnp.zeros_like(x),
        prev_delta=jnp.zeros_like(x, dtype=_F32),
        prev_grad_abs=jnp.zeros_like(x, dtype=_F32),
    )


@jax.jit
def relative_objective_change(count, value, prev_value) -> jax.Array:
    """ψ1: (f̂(t) − f̂(t−1)) / f̂(t−1), 0 at t = 0 (``count`` = number of earlier values)."""
    value = jnp.asarray(value, _F32)
    return jnp.where(count > 0, _relative_change(value, jnp.asarray(prev_value, _F32)), 0.0)


@jax.jit
def observation_features(history: ObservationHistory, x, grad, objective_change):
    """Ψ for every coordinate of one leaf, and the history advanced by one step.

    Args:
      history: the leaf's :class:`ObservationHistory` at step t.
      x: iterate x(t), any float dtype.
      grad: minibatch gradient ĝ(t), same shape.
      objective_change: ψ1 (scalar), from :func:`relative_objective_change`.

    Returns:
      ``(obs, new_history)`` with ``obs`` of shape ``x.shape + (3,)`` in float32.
    """
    t = history.count
    g = grad.astype(_F32)
    delta = (x - history.prev_iterate).astype(_F32)  # x(t) − x(t−1), garbage at t = 0
    psi1 = jnp.zeros_like(g) + jnp.asarray(objective_change, _F32)  # keeps g's sharding
    prev_grad_abs = jnp.where(t > 0, history.prev_grad_abs, jnp.abs(g))
    psi2 = g / (prev_grad_abs + GRADIENT_OFFSET)
    numerator = jnp.where(t > 1, history.prev_delta, delta)  # x(max(t−1,1)) − x(max(t−2,0))
    psi3 = jnp.where(t > 0, jnp.abs(numerator) / (jnp.abs(delta) + STEP_OFFSET), 0.0)
    obs = jnp.stack([psi1, psi2, psi3], axis=-1)
    new_history = ObservationHistory(
        count=t + 1,
        prev_iterate=jnp.asarray(x, history.prev_iterate.dtype),
        prev_delta=jnp.where(t > 0, delta, 0.0),
        prev_grad_abs=jnp.abs(g),
    )
    return obs, new_history


# ------------------------------------------------------------------------------------------------
# 3-step running averages at stride-5 lags (the GPS state Φ).


class AverageHistory(NamedTuple):
    """The last 130 three-step running averages of one quantity, per coordinate.

    The average of step s sits in ``ring[..., s % 5, (s // 5) % 26]``: at step t the residue
    class ``t % 5`` holds exactly the averages at t − 5, …, t − 130 that Φ needs, and the slot
    of t − 130 is the one step t overwrites.

    Attributes:
      ring: float32, ``(..., 5, 26)``.
      recent: float32, ``(..., 2)``: the raw values at t − 1 and t − 2 (0 before the start).
    """

    ring: jax.Array
    recent: jax.Array


def init_average_history(x) -> AverageHistory:
    """Empty running-average history for a quantity shaped like ``x``."""
    return AverageHistory(
        ring=_zeros_with_trailing(x, (LAG_STRIDE, SLOTS_PER_RESIDUE)),
        recent=_zeros_with_trailing(x, (2,)),
    )


def lagged_averages(history: AverageHistory, count, value):
    """Running averages at the lags Φ uses.

    Args:
      history: the quantity's :class:`AverageHistory` at step t (``count`` = t).
      count: t.
      value: the raw value at t.

    Returns:
      ``(lags, average)``: ``lags[..., j]`` = average at t − 5j for j = 0..26 (stale values where
      t − 5j < 0: callers mask them), and ``average`` = the running average at t.
    """
    value = jnp.asarray(value, _F32)
    average = (value + history.recent[..., 0] + history.recent[..., 1]) / jnp.minimum(
        count + 1, 3
    ).astype(_F32)
    residue = count % LAG_STRIDE
    block = count // LAG_STRIDE
    same_residue = jax.lax.dynamic_index_in_dim(history.ring, residue, axis=-2, keepdims=False)
    slots = (block - jnp.arange(1, NUM_LAGS)) % SLOTS_PER_RESIDUE
    past = jnp.take(same_residue, slots, axis=-1, mode="clip")
    return jnp.concatenate([average[..., None], past], axis=-1), average


def push_average(history: AverageHistory, count, value, average) -> AverageHistory:
    """Stores step t's raw ``value`` and running ``average`` (t = ``count``)."""
    residue = count % LAG_STRIDE
    slot = (count // LAG_STRIDE) % SLOTS_PER_RESIDUE
    ring = history.ring.at[..., residue, slot].set(average)
    recent = jnp.stack([jnp.asarray(value, _F32), history.recent[..., 0]], axis=-1)
    return AverageHistory(ring=ring, recent=recent)


def _lag_is_defined(count, first_lag, num):
    """Whether t − 5(first_lag + i) ≥ 0 for i = 0..num−1."""
    return count - LAG_STRIDE * (first_lag + jnp.arange(num)) >= 0


@jax.jit
def objective_features(history: AverageHistory, count, value):
    """Φ's first block (25 values, shared by all coordinates) and the advanced history.

    ``(f̄(t−5i) − f̄(t−5(i+1))) / f̄(t−5(i+1))`` for i = 0..24, 0 where t − 5(i+1) < 0.
    """
    lags, average = lagged_averages(history, count, value)
    n = PHI_OBJECTIVE_DIM
    phi = _relative_change(lags[..., :n], lags[..., 1 : n + 1])
    phi = jnp.where(_lag_is_defined(count, 1, n), phi, 0.0)
    return phi, push_average(history, count, value, average)


class GPSHistory(NamedTuple):
    """What Φ's gradient and iterate blocks need, per leaf (see :class:`AverageHistory`).

    Attributes:
      count: int32 scalar, the leaf's t.
      grads: running averages ḡ of the minibatch gradient.
      iterates: running averages x̄ of the iterate.
    """

    count: jax.Array
    grads: AverageHistory
    iterates: AverageHistory


def init_gps_history(x) -> GPSHistory:
    """Empty GPS-state history for a leaf shaped like ``x``."""
    return GPSHistory(
        count=jnp.zeros((), jnp.int32),
        grads=init_average_history(x),
        iterates=init_average_history(x),
    )


@jax.jit
def gradient_iterate_features(history: GPSHistory, x, grad):
    """Φ's gradient (26) and iterate-change (25) blocks for one leaf, and the advanced history.

    Returns:
      ``(phi_gradient, phi_iterate, new_history)``, shapes ``x.shape + (26,)``, ``(25,)``.
    """
    t = history.count
    g_lags, g_avg = lagged_averages(history.grads, t, grad)
    x_lags, x_avg = lagged_averages(history.iterates, t, jnp.asarray(x, _F32))

    # ḡ(t−5i) / (|ḡ(max(t−5(i+1), t mod 5))| + 1): the clamped index is lag min(i+1, t // 5).
    n = PHI_GRADIENT_DIM
    denominator_lag = jnp.minimum(jnp.arange(1, n + 1), t // LAG_STRIDE)
    denominators = jnp.take(g_lags, denominator_lag, axis=-1, mode="clip")
    phi_gradient = g_lags[..., :n] / (jnp.abs(denominators) + GRADIENT_OFFSET)
    phi_gradient = jnp.where(_lag_is_defined(t, 0, n), phi_gradient, 0.0)

    # |x̄(t−5(i+1)) − x̄(t−5(i+2))| / (|x̄(t−5i) − x̄(t−5(i+1))| + 0.1)
    n = PHI_ITERATE_DIM
    changes = jnp.abs(x_lags[..., :-1] - x_lags[..., 1:])  # |x̄(t−5j) − x̄(t−5(j+1))|, j=0..25
    phi_iterate = changes[..., 1 : n + 1] / (changes[..., :n] + STEP_OFFSET)
    phi_iterate = jnp.where(_lag_is_defined(t, 2, n), phi_iterate, 0.0)

    new_history = GPSHistory(
        count=t + 1,
        grads=push_average(history.grads, t, grad, g_avg),
        iterates=push_average(history.iterates, t, x, x_avg),
    )
    return phi_gradient, phi_iterate, new_history


@jax.jit
def gps_state(
    history: GPSHistory, phi_objective, x, grad, prev_action, true_grad
) -> tuple[jax.Array, GPSHistory]:
    """The GPS state ``[Φ, ĝ, a(t−1), g*]`` of every coordinate of one leaf.

    Args:
      history: the leaf's :class:`GPSHistory` at step t.
      phi_objective: ``(25,)`` from :func:`objective_features` (shared by all leaves).
      x, grad, prev_action, true_grad: x(t), ĝ(t), a(t−1), g*(t), shaped like the leaf.

    Returns:
      ``(state, new_history)`` with ``state`` of shape ``x.shape + (GPS_STATE_DIM,)``, float32.
    """
    g = jnp.asarray(grad, _F32)
    phi_gradient, phi_iterate, new_history = gradient_iterate_features(history, x, g)
    phi_objective = jnp.zeros_like(g)[..., None] + jnp.asarray(phi_objective, _F32)
    extras = jnp.stack(
        [g, jnp.asarray(prev_action, _F32), jnp.asarray(true_grad, _F32)], axis=-1
    )
    state = jnp.concatenate([phi_objective, phi_gradient, phi_iterate, extras], axis=-1)
    return state, new_history
