"""The 2016 observation of an iterate history (Li & Malik 2016, §5; reference/paper.md §6.2).

With history length H and problem dimension d, the policy observes at step t

    o_t = [ (f_t − f_{t−i}) / (|f_{t−i}| + 1e-8)   for i = 1..H      (H numbers),
            ∇f(x_t)                                                   (d numbers),
            ∇f(x_{t−i})                            for i = 1..H      (H·d numbers) ],

with every entry whose index t − i is negative set to 0 ("the historical dimensions start at
zero"). The location x_t itself is not observed. The paper's "change … relative to the objective
value at the i-th most recent location" is read as the relative difference above (ours: the
text is ambiguous between a difference and a ratio); the current gradient is included, as in the
authors' code (CUR_GRAD + PAST_GRADS).

Example::

  hist = init_history(dim=4)
  hist = push(hist, f0, g0)          # after evaluating f, ∇f at x_0
  o0 = observation(hist)             # (H + (H + 1)·d,)
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

HISTORY = 25
_EPS = 1e-8


class History(NamedTuple):
    """The last H + 1 objective values and gradients, newest first.

    Attributes:
      values: ``(H + 1,)``, values[i] = f(x_{t−i}) (0 where t − i < 0).
      grads: ``(H + 1, d)``, grads[i] = ∇f(x_{t−i}) (0 where t − i < 0).
      count: int32, number of pushes (t + 1 after pushing step t).
    """

    values: jax.Array
    grads: jax.Array
    count: jax.Array


def observation_dim(dim: int, history: int = HISTORY) -> int:
    """H + (H + 1)·d."""
    return history + (history + 1) * dim


def dim_from_observation(obs_dim: int, history: int = HISTORY) -> int:
    """d such that ``observation_dim(d, history) == obs_dim``; ValueError if none."""
    dim, rest = divmod(obs_dim - history, history + 1)
    if rest or dim < 1:
        raise ValueError(f"observation width {obs_dim} does not match history {history}.")
    return dim


def init_history(dim: int, history: int = HISTORY, dtype=jnp.float32) -> History:
    """Empty history for a d-dimensional problem."""
    return History(jnp.zeros((history + 1,), dtype), jnp.zeros((history + 1, dim), dtype),
                   jnp.zeros((), jnp.int32))


@jax.jit
def push(hist: History, value: jax.Array, grad: jax.Array) -> History:
    """Shift in f(x_t) (scalar) and ∇f(x_t) ``(d,)`` as the newest entry."""
    values = jnp.concatenate([jnp.asarray(value, hist.values.dtype)[None], hist.values[:-1]])
    grads = jnp.concatenate([jnp.asarray(grad, hist.grads.dtype)[None], hist.grads[:-1]])
    return History(values, grads, hist.count + 1)


@jax.jit
def observation(hist: History) -> jax.Array:
    """o_t ``(H + (H + 1)·d,)`` of a history whose newest entry is step t (module docs)."""
    horizon = hist.values.shape[0] - 1
    lag = jnp.arange(1, horizon + 1)
    valid = lag < hist.count                        # step t − i exists: i ≤ t = count − 1
    past = hist.values[1:]
    change = (hist.values[0] - past) / (jnp.abs(past) + _EPS)
    change = jnp.where(valid, change, 0.0)
    grad_valid = jnp.arange(horizon + 1) < hist.count
    grads = jnp.where(grad_valid[:, None], hist.grads, 0.0)
    return jnp.concatenate([change, grads.reshape(-1)])
