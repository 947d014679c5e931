"""``scale_free_opt``: the per-coordinate MLP policy on scale-free features, as an optax transformation.

Each coordinate's step is the policy's relative step (:mod:`metaopt.mlp_policy`) times its leaf's
parameter scale σ, fixed at ``init``: σ = RMS of the leaf's initial values, or, for a leaf that
starts at all zeros (a bias), the RMS over all initial parameters, or 1 when every parameter starts
at zero (then the step is in absolute units). Hence (tested):

* multiplying the loss by c > 0 leaves the whole trajectory unchanged (to float32 rounding);
* multiplying one (non-zero) leaf's parameters by c, with its gradients in the matching units
  (divided by c), multiplies its steps by c;
* |Δx| ≤ learning_rate · σ · e^LOG_STEP_MAX for any finite input.

Example::

  tx = metaopt.learned_opt(theta)                  # theta from init_mlp_policy / metaopt.load
  state = tx.init(params)
  updates, state = tx.update(grads, state, params, value=loss)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaopt import scale_free_features as sff
from metaopt.mlp_policy import Theta, mlp_policy_sizes, mlp_policy_steps
from metaopt.optimizers.guards import check_finite_weights, check_float_leaves, scalar_objective

__all__ = ["REFERENCE_FAN_IN", "ScaleFreeOptState", "check_fan_in_exponent", "fan_in",
           "fan_in_factor", "init_scale_free_state", "learning_rate_at", "parameter_scales",
           "scale_free_opt", "scale_free_update"]


# The fan-in of every matrix of the paper's training net (48-48-10), where the fan-in factor is 1.
REFERENCE_FAN_IN = 48


class ScaleFreeOptState(NamedTuple):
    """State of :func:`scale_free_opt`; every per-leaf field is one tree shaped like ``params``.

    Attributes:
      count: int32, number of finite ``value``s seen (the problem's step t).
      prev_value: float32, the last finite ``value``.
      trend: float32, EMA of the relative objective change (feature 5).
      leaf_count: per leaf int32, gradients folded into that leaf's moments.
      momentum: per leaf ``leaf.shape + (3,)`` float32, EMAs of ĝ at β = 0.5, 0.9, 0.99.
      magnitude: per leaf float32, EMA of |ĝ| (β = 0.999).
      scale: per leaf float32 scalar σ (module docs).
      nonfinite_count: int32, updates in which some leaf was skipped (non-finite input).
    """

    count: jax.Array
    prev_value: jax.Array
    trend: jax.Array
    leaf_count: Any
    momentum: Any
    magnitude: Any
    scale: Any
    nonfinite_count: jax.Array


def _rms(x) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    return jnp.sqrt(jnp.mean(x * x)) if x.size else jnp.zeros((), jnp.float32)


def fan_in(shape) -> int:
    """A leaf's fan-in: the product of all but its last dimension (a Dense kernel ``(in, out)``,
    a convolution kernel ``(h, w, in, out)``); 1 for a vector or scalar."""
    return math.prod(shape[:-1]) if len(shape) >= 2 else 1


def fan_in_factor(shape, fan_in_exponent: float) -> float:
    """(``REFERENCE_FAN_IN`` / fan-in)^``fan_in_exponent`` for a matrix, 1 for a vector or
    scalar (and for an exponent of 0)."""
    if fan_in_exponent == 0 or len(shape) < 2 or fan_in(shape) == 0:
        return 1.0
    return float((REFERENCE_FAN_IN / fan_in(shape)) ** fan_in_exponent)


def parameter_scales(params, *, fan_in_exponent: float = 0.0):
    """σ per leaf (module docs): its initial RMS, else the RMS of all parameters, else 1; a
    matrix's σ times :func:`fan_in_factor` (1 at the default exponent 0)."""
    leaves = jax.tree.leaves(params)
    total = sum(jnp.sum(jnp.square(jnp.asarray(x, jnp.float32))) for x in leaves)
    size = sum(x.size for x in leaves)
    overall = jnp.sqrt(total / size) if size else jnp.zeros((), jnp.float32)
    overall = jnp.where(overall > 0, overall, 1.0)

    def scale(x):
        rms = _rms(x)
        return jnp.where(rms > 0, rms, overall) * fan_in_factor(jnp.shape(x), fan_in_exponent)

    return jax.tree.map(scale, params)


def learning_rate_at(learning_rate, count) -> jax.Array:
    """``learning_rate`` (a number, array or schedule of the step count) at ``count``, float32."""
    value = learning_rate(count) if callable(learning_rate) else learning_rate
    return jnp.asarray(value, jnp.float32)


def check_fan_in_exponent(fan_in_exponent, *, owner: str = "learned_opt") -> float:
    """``fan_in_exponent`` as a float in [0, 1]; ValueError naming the problem otherwise."""
    try:
        value = float(fan_in_exponent)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: fan_in_exponent must be a number in [0, 1], got "
                         f"{fan_in_exponent!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{owner}: fan_in_exponent must be in [0, 1] (0: no fan-in scaling, "
                         f"0.5: steps ∝ 1/fan-in for He-initialised matrices), got {value}")
    return value


def init_scale_free_state(params, *, owner: str = "learned_opt",
                          fan_in_exponent: float = 0.0) -> ScaleFreeOptState:
    """The state ``scale_free_opt(θ).init(params)`` returns (for any step rule on these features)."""
    check_float_leaves(params, "params", owner=owner)
    fan_in_exponent = check_fan_in_exponent(fan_in_exponent, owner=owner)
    moments = lambda i: jax.tree.map(lambda x: sff.init_moments(x)[i], params)
    return ScaleFreeOptState(
        count=jnp.zeros((), jnp.int32), prev_value=jnp.zeros((), jnp.float32),
        trend=jnp.zeros((), jnp.float32),
        leaf_count=jax.tree.map(lambda _: jnp.zeros((), jnp.int32), params),
        momentum=moments(0), magnitude=moments(1),
        scale=parameter_scales(params, fan_in_exponent=fan_in_exponent),
        nonfinite_count=jnp.zeros((), jnp.int32))


StepRule = Callable[[int, jax.Array, jax.Array, jax.Array], jax.Array]


def scale_free_update(updates, state: ScaleFreeOptState, value, step_rule: StepRule, *,
                      owner: str = "learned_opt"):
    """One update on the scale-free features with any per-leaf step rule.

    ``step_rule(leaf_index, obs, scale, count)`` maps a leaf's features ``leaf.shape + (9,)``, its σ
    and the step count t to its step Δx (``leaf.shape``). :func:`scale_free_opt` passes the MLP
    policy's; GPS's controllers (``metaopt.scale_free_controller``) a linear-Gaussian one, so the
    policy and the controllers it imitates read exactly the same features.

    Returns:
      ``(steps, new_state, observations)``: ``observations`` is a list of the leaves' features in
      ``jax.tree.leaves`` order. Non-finite input: as :func:`scale_free_opt` (zero step, state kept).
    """
    value = scalar_objective(value, owner=owner)
    check_float_leaves(updates, "updates", owner=owner)
    grads, treedef = jax.tree.flatten(updates)
    try:
        fields = [treedef.flatten_up_to(getattr(state, name)) for name in
                  ("leaf_count", "momentum", "magnitude", "scale")]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{owner}: updates and the optimizer state must have the same tree "
                         f"structure (was the state made by init(params) for these params?): "
                         f"{err}") from err
    for g, m in zip(grads, fields[1], strict=True):
        if jnp.shape(m) != jnp.shape(g) + (len(sff.MOMENTUM_DECAYS),):
            raise ValueError(f"{owner}: a gradient leaf has shape {jnp.shape(g)} but its "
                             f"state {jnp.shape(m)[:-1]}: was the state made by init(params) "
                             "for these params?")
    value_ok = jnp.isfinite(value)
    change = sff.relative_objective_change(state.count, value, state.prev_value)
    trend = sff.objective_trend(state.trend, change)
    outs, observations = [], []
    for index, (g, n, m, v, s) in enumerate(zip(grads, *fields, strict=True)):
        obs, new_m, new_v = sff.scale_free_features(
            m, v, n, g, step=state.count, objective_change=change, trend=trend)
        ok = value_ok & jnp.all(jnp.isfinite(g))
        step = jnp.where(ok, step_rule(index, obs, s, state.count), 0.0)
        keep = lambda new, old, ok=ok: jnp.where(ok, new, old).astype(old.dtype)
        outs.append((step.astype(g.dtype), keep(n + 1, n), keep(new_m, m), keep(new_v, v), ~ok))
        observations.append(obs)
    steps, counts, momenta, seconds, skipped = (list(c) for c in zip(*outs, strict=True)) \
        if outs else ([], [], [], [], [])
    any_skipped = jnp.any(jnp.stack(skipped)) if skipped else jnp.zeros((), bool)
    new_state = ScaleFreeOptState(
        count=state.count + value_ok.astype(jnp.int32),
        prev_value=jnp.where(value_ok, value, state.prev_value),
        trend=jnp.where(value_ok, trend, state.trend),
        leaf_count=treedef.unflatten(counts), momentum=treedef.unflatten(momenta),
        magnitude=treedef.unflatten(seconds), scale=state.scale,
        nonfinite_count=state.nonfinite_count + any_skipped.astype(jnp.int32))
    return treedef.unflatten(steps), new_state, observations



def scale_free_opt(theta: Theta, *, learning_rate: optax.ScalarOrSchedule = 1.0,
                   fan_in_exponent: float = 0.0) -> optax.GradientTransformationExtraArgs:
    """The learned optimizer with scale-free features and a relative step (module docs).

    Args:
      theta: MLP policy weights (:func:`metaopt.mlp_policy.init_mlp_policy`, ``metaopt.load``).
      learning_rate: multiplies every step; a float, a scalar array (e.g. through
        ``optax.inject_hyperparams``) or a schedule of the step count. 1 is what meta-training
        used.
      fan_in_exponent: α ∈ [0, 1]; a matrix leaf's steps are multiplied by
        (48 / fan-in)^α (:func:`fan_in_factor`; 48 is the fan-in of every matrix of the paper's
        training net, where the factor is 1). 0, the default, is what meta-training used.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update(grads, state, params, *, value)``
      needs the keyword ``value`` (the minibatch objective); ``params`` is optional. A leaf whose
      gradient is not finite, or every leaf when ``value`` is not, takes a zero step and keeps its
      state; ``state.nonfinite_count`` counts such updates.

    Raises:
      ValueError: ``theta`` is not an MLP policy or holds NaN/inf; ``value`` missing or not a
        scalar; grads unlike the state.
      TypeError: a leaf is not floating point.
    """
    mlp_policy_sizes(theta)
    check_finite_weights(theta, fix="Load an intact policy (metaopt.load) or make one with "
                                    "metaopt.mlp_policy.init_mlp_policy.")

    fan_in_exponent = check_fan_in_exponent(fan_in_exponent)

    def init_fn(params):
        return init_scale_free_state(params, fan_in_exponent=fan_in_exponent)

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        lr = learning_rate_at(learning_rate, state.count)
        steps, new_state, _ = scale_free_update(
            updates, state, value,
            lambda leaf, obs, scale, count: lr * mlp_policy_steps(theta, obs, scale))
        return steps, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
