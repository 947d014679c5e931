"""The three objective families of *Learning to Optimize* (Li & Malik 2016), as batched tasks.

Each generator returns one task pytree whose data leaves carry a leading ``num_objectives`` axis,
so a whole train or test set is evaluated with ``jax.vmap(..., in_axes=(task_axes, ...))``; index
it with ``jax.tree.map(lambda a: a[i], tasks)`` for one objective. Gradients are full-batch and
deterministic, as in the paper (``minibatch_objective`` ignores its key).

Example::

  train = logistic_regression_family(jax.random.key(0), 90)
  one = jax.tree.map(lambda a: a[0], train)
  one.true_loss(one.init_params(jax.random.key(1)))
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
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


def _random_gaussian(key, dim):
    """A random mean (N(0, 2²I)) and covariance (L Lᵀ/d + 0.1 I, L standard normal)."""
    k_mean, k_cov = jax.random.split(key)
    mean = 2.0 * jax.random.normal(k_mean, (dim,))
    chol = jax.random.normal(k_cov, (dim, dim)) / jnp.sqrt(dim)
    return mean, chol @ chol.T + 0.1 * jnp.eye(dim)


def _mixture_points(key, num_components, points_each, dim, identity_cov=False):
    keys = jax.random.split(key, num_components)

    def component(k):
        k_g, k_x = jax.random.split(k)
        mean, cov = _random_gaussian(k_g, dim)
        cov = jnp.eye(dim) if identity_cov else cov
        return jax.random.multivariate_normal(k_x, mean, cov, (points_each,))

    return jax.vmap(component)(keys)  # (num_components, points_each, dim)


def logistic_regression_family(key, num_objectives: int, *, dim: int = 3,
                               points_per_class: int = 50, l2: float = 5e-4):
    """Two Gaussians with random means and covariances, ``points_per_class`` each, label = which."""

    def one(k):
        x = _mixture_points(k, 2, points_per_class, dim).reshape(-1, dim)
        y = jnp.repeat(jnp.arange(2), points_per_class)
        return x, y

    x, y = jax.vmap(one)(jax.random.split(key, num_objectives))
    return LogisticRegressionTask(x=x, y=y.astype(jnp.int32), l2=l2)


def robust_regression_family(key, num_objectives: int, *, dim: int = 3, clusters: int = 4,
                             points_per_cluster: int = 25, c: float = 1.0, noise: float = 1.0):
    """Four identity-covariance Gaussians; each cluster's labels are its points projected on its
    own random vector plus its own random bias, plus i.i.d. Gaussian noise (so one line fits badly)."""

    def one(k):
        k_x, k_w, k_b, k_n = jax.random.split(k, 4)
        x = _mixture_points(k_x, clusters, points_per_cluster, dim, identity_cov=True)
        w = jax.random.normal(k_w, (clusters, dim))
        b = jax.random.normal(k_b, (clusters,))
        y = jnp.einsum("cpd,cd->cp", x, w) + b[:, None]
        y = y + noise * jax.random.normal(k_n, y.shape)
        return x.reshape(-1, dim), y.reshape(-1)

    x, y = jax.vmap(one)(jax.random.split(key, num_objectives))
    return RobustRegressionTask(x=x, y=y, c=c)


def two_layer_net_family(key, num_objectives: int, *, dim: int = 2, hidden: int = 2,
                         num_classes: int = 2, clusters: int = 4, points_per_cluster: int = 25,
                         l2: float = 5e-4):
    """Four Gaussians with random means and covariances; each gets a random label, not all equal."""

    def one(k):
        k_x, k_y = jax.random.split(k)
        x = _mixture_points(k_x, clusters, points_per_cluster, dim)
        labels = jax.random.randint(k_y, (clusters,), 0, num_classes)
        # Ensure at least two distinct labels: if all equal, flip the last cluster's label.
        labels = labels.at[-1].set(jnp.where(jnp.all(labels == labels[0]),
                                             (labels[0] + 1) % num_classes, labels[-1]))
        return x.reshape(-1, dim), jnp.repeat(labels, points_per_cluster)

    x, y = jax.vmap(one)(jax.random.split(key, num_objectives))
    return TwoLayerNetTask(x=x, y=y.astype(jnp.int32), hidden=hidden, num_classes=num_classes, l2=l2)


FAMILIES = {"logistic": logistic_regression_family, "robust": robust_regression_family,
            "net": two_layer_net_family}


def objective_split(family: str, split: str, *, seed: int = 0):
    """The train or test set of a family with the paper's sizes; train and test never share a key."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {sorted(FAMILIES)}.")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    n_train, n_test = SPLIT_SIZES[family]
    key = jax.random.fold_in(jax.random.key(seed), 0 if split == "train" else 1)
    return FAMILIES[family](key, n_train if split == "train" else n_test)
