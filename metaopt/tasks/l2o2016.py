"""The three objective families of *Learning to Optimize* (Li & Malik 2016), as batched tasks.

Each generator returns one task pytree whose data leaves carry a leading ``num_objectives`` axis,
so a whole train or test set is evaluated with ``jax.vmap(..., in_axes=(task_axes, ...))``; index
it with ``jax.tree.map(lambda a: a[i], tasks)`` for one objective. Gradients are full-batch and
deterministic, as in the paper (``minibatch_objective`` ignores its key).

Example::

  train = logistic_regression_family(seed=0, num_objectives=90)
  one = jax.tree.map(lambda a: a[0], train)
  one.true_loss(one.init_params(jax.random.key(1)))
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

# Train / test set sizes of the 2016 paper (§6.4 of reference/paper.md); the net's test size is
# not restated there, we use 100 like the others.
SPLIT_SIZES = {"logistic": (90, 100), "robust": (120, 100), "net": (80, 100)}


class _FullBatchTask:
    """Shared protocol: f̂ = f (full batch), as the 2016 objectives are deterministic."""

    def minibatch_objective(self, key: jax.Array):
        del key
        return self.true_loss

    def minibatch_loss(self, params, key: jax.Array) -> jax.Array:
        del key
        return self.true_loss(params)


@flax.struct.dataclass
class LogisticRegressionTask(_FullBatchTask):
    """−mean log-likelihood of logistic regression + (λ/2)‖w‖². x: ``(n, d)``, y: ``(n,)`` in {0, 1}."""

    x: jax.Array
    y: jax.Array
    l2: float = flax.struct.field(pytree_node=False, default=5e-4)

    def init_params(self, key):
        return {"w": jax.random.normal(key, (self.x.shape[-1],)), "b": jnp.zeros(())}

    def true_loss(self, params):
        logits = self.x @ params["w"] + params["b"]
        nll = optax.sigmoid_binary_cross_entropy(logits, self.y.astype(logits.dtype)).mean()
        return nll + 0.5 * self.l2 * jnp.sum(params["w"] ** 2)


@flax.struct.dataclass
class RobustRegressionTask(_FullBatchTask):
    """Geman–McClure robust linear regression: mean r² / (c² + r²), r = y − wᵀx − b."""

    x: jax.Array
    y: jax.Array
    c: float = flax.struct.field(pytree_node=False, default=1.0)

    def init_params(self, key):
        return {"w": jax.random.normal(key, (self.x.shape[-1],)), "b": jnp.zeros(())}

    def true_loss(self, params):
        r2 = (self.y - self.x @ params["w"] - params["b"]) ** 2
        return jnp.mean(r2 / (self.c**2 + r2))


@flax.struct.dataclass
class TwoLayerNetTask(_FullBatchTask):
    """ReLU hidden layer, softmax output, cross-entropy + (λ/2)(‖W‖² + ‖U‖²)."""

    x: jax.Array
    y: jax.Array
    hidden: int = flax.struct.field(pytree_node=False, default=2)
    num_classes: int = flax.struct.field(pytree_node=False, default=2)
    l2: float = flax.struct.field(pytree_node=False, default=5e-4)

    def init_params(self, key):
        k1, k2 = jax.random.split(key)
        d = self.x.shape[-1]
        return {
            "W": jax.random.normal(k1, (d, self.hidden)) / jnp.sqrt(d),
            "b": jnp.zeros((self.hidden,)),
            "U": jax.random.normal(k2, (self.hidden, self.num_classes)) / jnp.sqrt(self.hidden),
            "c": jnp.zeros((self.num_classes,)),
        }

    def true_loss(self, params):
        h = jax.nn.relu(self.x @ params["W"] + params["b"])
        logits = h @ params["U"] + params["c"]
        xent = optax.softmax_cross_entropy_with_integer_labels(logits, self.y).mean()
        return xent + 0.5 * self.l2 * (jnp.sum(params["W"] ** 2) + jnp.sum(params["U"] ** 2))


def _mixture_points(rng: np.random.Generator, num_components: int, points_each: int, dim: int,
                    identity_cov: bool = False) -> np.ndarray:
    """``(num_components, points_each, dim)`` points of Gaussians with random means N(0, 2²I) and
    random covariances L Lᵀ/d + 0.1 I (L standard normal), or identity covariances."""
    mean = 2.0 * rng.standard_normal((num_components, 1, dim))
    z = rng.standard_normal((num_components, points_each, dim))
    if identity_cov:
        return mean + z
    chol = np.linalg.cholesky(
        np.einsum("cij,ckj->cik", f := rng.standard_normal((num_components, dim, dim)), f) / dim
        + 0.1 * np.eye(dim))
    return mean + np.einsum("cpj,cij->cpi", z, chol)


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def logistic_regression_family(seed, num_objectives: int, *, dim: int = 3,
                               points_per_class: int = 50, l2: float = 5e-4):
    """Two Gaussians with random means and covariances, ``points_per_class`` each, label = which."""
    rng = _rng(seed)
    x = np.stack([_mixture_points(rng, 2, points_per_class, dim).reshape(-1, dim)
                  for _ in range(num_objectives)])
    y = np.broadcast_to(np.repeat(np.arange(2), points_per_class), x.shape[:2])
    return LogisticRegressionTask(x=jnp.asarray(x, jnp.float32), y=jnp.asarray(y, jnp.int32), l2=l2)


def robust_regression_family(seed, num_objectives: int, *, dim: int = 3, clusters: int = 4,
                             points_per_cluster: int = 25, c: float = 1.0, noise: float = 1.0):
    """Four identity-covariance Gaussians; each cluster's labels are its points projected on its
    own random vector plus its own random bias, plus i.i.d. Gaussian noise (so one line fits badly)."""
    rng = _rng(seed)
    xs, ys = [], []
    for _ in range(num_objectives):
        x = _mixture_points(rng, clusters, points_per_cluster, dim, identity_cov=True)
        w, b = rng.standard_normal((clusters, dim)), rng.standard_normal((clusters, 1))
        y = np.einsum("cpd,cd->cp", x, w) + b + noise * rng.standard_normal((clusters, points_per_cluster))
        xs.append(x.reshape(-1, dim))
        ys.append(y.reshape(-1))
    return RobustRegressionTask(x=jnp.asarray(np.stack(xs), jnp.float32),
                                y=jnp.asarray(np.stack(ys), jnp.float32), c=c)


def two_layer_net_family(seed, num_objectives: int, *, dim: int = 2, hidden: int = 2,
                         num_classes: int = 2, clusters: int = 4, points_per_cluster: int = 25,
                         l2: float = 5e-4):
    """Four Gaussians with random means and covariances; each gets a random label, not all equal."""
    rng = _rng(seed)
    xs, ys = [], []
    for _ in range(num_objectives):
        labels = rng.integers(0, num_classes, clusters)
        while np.all(labels == labels[0]):
            labels = rng.integers(0, num_classes, clusters)
        xs.append(_mixture_points(rng, clusters, points_per_cluster, dim).reshape(-1, dim))
        ys.append(np.repeat(labels, points_per_cluster))
    return TwoLayerNetTask(x=jnp.asarray(np.stack(xs), jnp.float32),
                           y=jnp.asarray(np.stack(ys), jnp.int32),
                           hidden=hidden, num_classes=num_classes, l2=l2)


FAMILIES = {"logistic": logistic_regression_family, "robust": robust_regression_family,
            "net": two_layer_net_family}


def objective_split(family: str, split: str, *, seed: int = 0):
    """The train or test set of a family with the paper's sizes; train and test never share a key."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {sorted(FAMILIES)}.")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    n_train, n_test = SPLIT_SIZES[family]
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    return FAMILIES[family](rng, n_train if split == "train" else n_test)
