"""A least-squares task whose parameters live at a chosen scale (ours; issue 16's unit test in the wild).

f(x) = ½ · mean_i (a_iᵀ x / s − b_i)²  over n rows, x_0 = s · N(0, I), minibatches of rows. The
problem in the variable z = x / s is the same for every s; only the units of x change, so an
optimizer whose steps follow the parameters' scale behaves identically for every s, while one with
an absolute step (SGD, Adam, the paper's LSTM) must be retuned.

Example::

  task = least_squares_task(jax.random.key(0), scale=1e-3)
  x0 = task.init_params(jax.random.key(1))
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class LeastSquaresTask:
    """Attributes: ``a`` ``(n, d)``, ``b`` ``(n,)``; ``scale`` s; ``batch_size`` rows per f̂."""

    a: jax.Array
    b: jax.Array
    scale: float = flax.struct.field(pytree_node=False, default=1.0)
    batch_size: int = flax.struct.field(pytree_node=False, default=10)
    eval_description: str = flax.struct.field(pytree_node=False, default="all rows")

    def init_params(self, key: jax.Array) -> dict:
        return {"x": self.scale * jax.random.normal(key, (self.a.shape[1],), jnp.float32)}

    def loss(self, params, a, b) -> jax.Array:
        r = a @ (params["x"] / self.scale) - b
        return 0.5 * jnp.mean(r * r)

    def minibatch_objective(self, key: jax.Array):
        idx = jax.random.randint(key, (self.batch_size,), 0, self.b.shape[0])
        return lambda params: self.loss(params, self.a[idx], self.b[idx])

    def minibatch_loss(self, params, key: jax.Array) -> jax.Array:
        return self.minibatch_objective(key)(params)

    def true_loss(self, params) -> jax.Array:
        return self.loss(params, self.a, self.b)


def least_squares_task(key: jax.Array, *, scale: float = 1.0, rows: int = 100, dim: int = 20,
                       batch_size: int = 10, noise: float = 0.1) -> LeastSquaresTask:
    """A random well-posed instance: Gaussian rows, b = A z* + noise."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}.")
    ka, kz, kn = jax.random.split(key, 3)
    a = jax.random.normal(ka, (rows, dim), jnp.float32) / jnp.sqrt(dim)
    b = a @ jax.random.normal(kz, (dim,)) + noise * jax.random.normal(kn, (rows,))
    return LeastSquaresTask(a, b, scale=float(scale), batch_size=batch_size)
