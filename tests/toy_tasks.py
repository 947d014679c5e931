"""Tiny tasks for tests: no data files, exact answers known."""

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class QuadraticTask:
    """f(x) = ½ Σ_i h_i (x_i − 1)², f̂ = f + noise·(x·ξ) with ξ ~ N(0, I) per step (zero mean)."""

    curvature: jax.Array
    noise: float = flax.struct.field(pytree_node=False, default=0.0)

    def init_params(self, key):
        return {"x": jax.random.normal(key, self.curvature.shape)}

    def true_loss(self, params):
        return 0.5 * jnp.sum(self.curvature * (params["x"] - 1.0) ** 2)

    def minibatch_objective(self, key):
        xi = jax.random.normal(key, self.curvature.shape)
        return lambda p: self.true_loss(p) + self.noise * jnp.dot(p["x"], xi)


def least_squares_problem(dtype=jnp.float32, seed=0):
    """A small least-squares problem with a matrix and a bias leaf: ``(params, loss_fn)``."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    inputs = jax.random.normal(k1, (32, 4))
    targets = inputs @ jax.random.normal(k2, (4, 3)) + 0.5
    params = {"w": jnp.zeros((4, 3), dtype), "b": jnp.zeros((3,), dtype)}

    def loss_fn(p):
        p = jax.tree.map(lambda a: a.astype(jnp.float32), p)
        return jnp.mean((inputs @ p["w"] + p["b"] - targets) ** 2)

    return params, loss_fn


def optax_step(tx, loss_fn, **extra):
    """One step ``(params, state) -> (params, state, value)`` of ``tx`` on ``loss_fn``, passing the
    loss as ``value=`` (and any ``extra`` keyword arguments) to ``tx.update``."""

    def step(params, state):
        value, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params, value=value, **extra)
        return optax.apply_updates(params, updates), state, value

    return step
