"""Nonlinear conjugate gradient as an optax transformation (optax has none).

Variant: Polak–Ribière with non-negative β ("PR+", Nocedal & Wright eq. 5.45), restarting to
steepest descent whenever the conjugate direction is not a descent direction. The step length comes
from optax's zoom line search (strong Wolfe conditions) on the objective passed as ``value_fn``, or
is a fixed learning rate, as in the 2016 paper's Table 1.

Example::

  tx = conjugate_gradient()                      # line search; needs value, grad, value_fn
  state = tx.init(params)
  value, grad = jax.value_and_grad(f)(params)
  updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=f)
  params = optax.apply_updates(params, updates)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree


class ScaleByConjugateGradientState(NamedTuple):
    """State of :func:`scale_by_conjugate_gradient`.

    Attributes:
      previous_grad: gradient at the previous iterate (zeros before the first update).
      direction: previous search direction p, in gradient sign convention.
      count: number of updates so far.
    """

    previous_grad: optax.Updates
    direction: optax.Updates
    count: jax.Array


def scale_by_conjugate_gradient() -> optax.GradientTransformation:
    """Turns gradients into PR+ conjugate directions (gradient sign: negate to descend).

    p₀ = g₀;  β_t = max(0, g_tᵀ(g_t − g_{t−1}) / ‖g_{t−1}‖²);  p_t = g_t + β_t p_{t−1},
    reset to p_t = g_t when g_tᵀp_t ≤ 0 so −p_t is always a descent direction.
    """

    def init_fn(params):
        zeros = optax.tree.zeros_like(params)
        return ScaleByConjugateGradientState(zeros, zeros, jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        g, g_prev, p_prev = updates, state.previous_grad, state.direction
        prev_sq = optax.tree.vdot(g_prev, g_prev)
        numer = optax.tree.vdot(g, optax.tree.sub(g, g_prev))
        beta = jnp.where(prev_sq > 0, numer / jnp.where(prev_sq > 0, prev_sq, 1.0), 0.0)
        beta = jnp.where(state.count > 0, jnp.maximum(beta, 0.0), 0.0)
        direction = jax.tree.map(lambda gi, pi: gi + (beta * pi).astype(gi.dtype), g, p_prev)
        is_descent = optax.tree.vdot(g, direction) > 0
        direction = jax.tree.map(lambda d, gi: jnp.where(is_descent, d, gi), direction, g)
        new_state = ScaleByConjugateGradientState(g, direction, state.count + 1)
        return direction, new_state

    return optax.GradientTransformation(init_fn, update_fn)


def conjugate_gradient(
    learning_rate: optax.ScalarOrSchedule | None = None,
    *,
    max_learning_rate: float | jax.Array | None = None,
    max_linesearch_steps: int = 15,
) -> optax.GradientTransformationExtraArgs:
    """Nonlinear conjugate gradient (PR+), with a zoom line search or a fixed step.

    Args:
      learning_rate: fixed step length; ``None`` (default) uses optax's zoom line search, which
        then needs ``value``, ``grad`` and ``value_fn`` as keyword arguments of ``update``.
      max_learning_rate: cap on the line search's step length (the tuned knob in metaopt's
        baselines); ``None`` for no cap.
      max_linesearch_steps: function evaluations the line search may spend per step.
    """
    if learning_rate is None:
        step = optax.chain(
            optax.scale(-1.0),
            optax.scale_by_zoom_linesearch(
                max_linesearch_steps=max_linesearch_steps,
                max_learning_rate=max_learning_rate,
                curv_rtol=0.1,  # CG needs a tighter curvature condition than quasi-Newton (N&W §5.2)
            ),
        )
    else:
        step = optax.scale_by_learning_rate(learning_rate)
    return optax.chain(scale_by_conjugate_gradient(), step)
