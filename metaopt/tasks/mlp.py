"""MLP classification objectives: the base learners that optimizers are trained and tested on.

A task is a pytree (its data arrays are leaves, its configuration is static), so it can be passed
into jitted functions without baking the dataset into the compiled program as a constant.

Example::

  task = make_mlp_task(x, y, widths=(48, 48, 10), batch_size=64)
  params = task.init_params(jax.random.key(0))
  loss = task.minibatch_loss(params, jax.random.key(1))   # f̂: objective on a sampled minibatch
  true = task.true_loss(params)                          # f: objective on the evaluation set
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "gelu": jax.nn.gelu,
}


@flax.struct.dataclass
class MLPTask:
    """Softmax cross-entropy of an MLP plus ℓ2 on its weight matrices (not biases).

    Attributes:
      x_train: ``(n, widths[0])`` inputs the minibatches are drawn from.
      y_train: ``(n,)`` integer labels in ``[0, widths[-1])``.
      x_eval, y_eval: the examples the true objective f is measured on: the whole training split,
        or a fixed subset of it (``eval_description`` says which).
      widths: layer widths, input first, classes last, e.g. ``(48, 48, 10)``.
      activation: hidden activation name (a key of ``ACTIVATIONS``).
      l2: coefficient λ of (λ/2)·Σ‖W‖².
      batch_size: minibatch size for f̂.
      eval_description: human-readable description of the evaluation set, for results files.
    """

    x_train: jax.Array
    y_train: jax.Array
    x_eval: jax.Array
    y_eval: jax.Array
    widths: tuple[int, ...] = flax.struct.field(pytree_node=False)
    activation: str = flax.struct.field(pytree_node=False, default="relu")
    l2: float = flax.struct.field(pytree_node=False, default=5e-4)
    batch_size: int = flax.struct.field(pytree_node=False, default=64)
    eval_description: str = flax.struct.field(pytree_node=False, default="full training split")

    @property
    def num_params(self) -> int:
        return sum(a * b + b for a, b in zip(self.widths[:-1], self.widths[1:], strict=True))

    def init_params(self, key: jax.Array) -> dict:
        """Seeded random initial parameters: LeCun-normal weights, zero biases.

        Returns ``{"layer_0": {"w": (in, out), "b": (out,)}, ...}``: one coordinate group per
        weight matrix and per bias vector.
        """
        params = {}
        keys = jax.random.split(key, len(self.widths) - 1)
        for i, (k, fan_in, fan_out) in enumerate(
            zip(keys, self.widths[:-1], self.widths[1:], strict=True)
        ):
            w = jax.random.normal(k, (fan_in, fan_out), jnp.float32) / np.sqrt(fan_in)
            params[f"layer_{i}"] = {"w": w, "b": jnp.zeros((fan_out,), jnp.float32)}
        return params

    def logits(self, params: dict, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        h = x
        n = len(self.widths) - 1
        for i in range(n):
            layer = params[f"layer_{i}"]
            h = h @ layer["w"].astype(h.dtype) + layer["b"].astype(h.dtype)
            if i < n - 1:
                h = act(h)
        return h

    def loss(self, params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
        """Mean cross-entropy on ``(x, y)`` plus the ℓ2 penalty on weights."""
        xent = optax.softmax_cross_entropy_with_integer_labels(self.logits(params, x), y).mean()
        sq = sum(jnp.sum(jnp.square(params[f"layer_{i}"]["w"].astype(jnp.float32)))
                 for i in range(len(self.widths) - 1))
        return xent + 0.5 * self.l2 * sq

    def sample_minibatch(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Draws ``batch_size`` training examples uniformly with replacement, inside jit."""
        idx = jax.random.randint(key, (self.batch_size,), 0, self.y_train.shape[0])
        return self.x_train[idx], self.y_train[idx]

    def minibatch_loss(self, params: dict, key: jax.Array) -> jax.Array:
        """f̂(params): the objective on the minibatch drawn with ``key``."""
        return self.loss(params, *self.sample_minibatch(key))

    def minibatch_objective(self, key: jax.Array):
        """f̂ as a function of the parameters, on the minibatch fixed by ``key`` (for line searches)."""
        x, y = self.sample_minibatch(key)
        return lambda params: self.loss(params, x, y)

    def true_loss(self, params: dict) -> jax.Array:
        """f(params): the objective on the evaluation set."""
        return self.loss(params, self.x_eval, self.y_eval)


def make_mlp_task(
    x_train,
    y_train,
    *,
    widths: Sequence[int],
    batch_size: int = 64,
    activation: str = "relu",
    l2: float = 5e-4,
    eval_subset: int | None = None,
    eval_seed: int = 0,
) -> MLPTask:
    """Builds an :class:`MLPTask`, checking the data against the architecture.

    Args:
      x_train: ``(n, widths[0])`` float inputs (already projected and standardised).
      y_train: ``(n,)`` integer labels.
      widths: layer widths, input first, number of classes last.
      batch_size: minibatch size of f̂.
      activation: one of ``ACTIVATIONS``.
      l2: ℓ2 coefficient on weight matrices.
      eval_subset: measure f on this many training examples (a fixed seeded subset) instead of the
        whole training split; ``None`` uses the whole split.
      eval_seed: seed of that subset.
    """
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2 or any(w <= 0 for w in widths):
        raise ValueError(
            f"widths must list at least an input and an output width, all positive; got {widths}. "
            "Example: widths=(48, 48, 10)."
        )
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}.")
    x = np.asarray(x_train)
    y = np.asarray(y_train)
    if x.ndim != 2 or x.shape[1] != widths[0]:
        raise ValueError(
            f"x_train has shape {x.shape} but widths[0] = {widths[0]}: inputs must be (n, {widths[0]}). "
            f"Project the data to {widths[0]} dimensions first (metaopt.data.project_and_standardize)."
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x_train must be floating point, got {x.dtype}; cast with x.astype(np.float32).")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y_train must be integer labels of shape ({x.shape[0]},); got {y.dtype} {y.shape}.")
    if y.size and (y.min() < 0 or y.max() >= widths[-1]):
        raise ValueError(
            f"labels span [{y.min()}, {y.max()}] but the net has {widths[-1]} outputs; "
            f"set widths[-1] to the number of classes ({int(y.max()) + 1})."
        )
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if not np.all(np.isfinite(x)):
        raise ValueError("x_train contains NaN or inf; clean the data before building a task.")
    if eval_subset is None or eval_subset >= x.shape[0]:
        x_eval, y_eval, desc = x, y, f"full training split ({x.shape[0]} examples)"
    else:
        idx = np.random.default_rng(eval_seed).choice(x.shape[0], eval_subset, replace=False)
        x_eval, y_eval = x[idx], y[idx]
        desc = f"fixed subset of {eval_subset} of {x.shape[0]} training examples (seed {eval_seed})"
    return MLPTask(
        x_train=jnp.asarray(x, jnp.float32),
        y_train=jnp.asarray(y, jnp.int32),
        x_eval=jnp.asarray(x_eval, jnp.float32),
        y_eval=jnp.asarray(y_eval, jnp.int32),
        widths=widths,
        activation=activation,
        l2=float(l2),
        batch_size=int(batch_size),
        eval_description=desc,
    )


def synthetic_classification(
    key: jax.Array, num_examples: int, dim: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """A small Gaussian-mixture classification set, for tests and smoke runs (no files needed)."""
    k_means, k_labels, k_noise = jax.random.split(key, 3)
    means = 2.0 * jax.random.normal(k_means, (num_classes, dim))
    y = jax.random.randint(k_labels, (num_examples,), 0, num_classes)
    x = means[y] + jax.random.normal(k_noise, (num_examples, dim))
    return np.asarray(x, np.float32), np.asarray(y, np.int32)
