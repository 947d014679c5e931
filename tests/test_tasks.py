import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaopt.tasks import make_mlp_task, synthetic_classification
from metaopt.tasks.l2o2016 import SPLIT_SIZES, objective_split


@pytest.fixture(scope="module")
def data():
    return synthetic_classification(jax.random.key(0), 500, 6, 3)


def numpy_mlp_loss(params, x, y, l2):
    """Independent NumPy transcription: ReLU MLP, softmax cross-entropy, (λ/2)·Σ‖W‖²."""
    h = x.astype(np.float64)
    layers = [params[k] for k in sorted(params)]
    for i, layer in enumerate(layers):
        h = h @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    h = h - h.max(1, keepdims=True)
    logp = h - np.log(np.exp(h).sum(1, keepdims=True))
    xent = -logp[np.arange(len(y)), y].mean()
    return xent + 0.5 * l2 * sum(np.sum(np.asarray(la["w"], np.float64) ** 2) for la in layers)


def test_loss_matches_numpy(data):
    x, y = data
    task = make_mlp_task(x, y, widths=(6, 5, 4, 3), batch_size=8, l2=1e-2)
    params = task.init_params(jax.random.key(1))
    assert task.num_params == 6 * 5 + 5 + 5 * 4 + 4 + 4 * 3 + 3
    np.testing.assert_allclose(task.true_loss(params), numpy_mlp_loss(params, x, y, 1e-2), rtol=1e-5)


def test_minibatch_objective_is_unbiased_estimate_of_true_objective(data):
    x, y = data
    task = make_mlp_task(x, y, widths=(6, 8, 3), batch_size=16)
    params = task.init_params(jax.random.key(2))
    keys = jax.random.split(jax.random.key(3), 4000)
    samples = np.asarray(jax.vmap(lambda k: task.minibatch_loss(params, k))(keys))
    stderr = samples.std() / np.sqrt(len(samples))
    assert abs(samples.mean() - float(task.true_loss(params))) < 4 * stderr
    # The closure form used by line searches evaluates the same minibatch.
    k = keys[0]
    assert float(task.minibatch_objective(k)(params)) == pytest.approx(float(task.minibatch_loss(params, k)))


def test_eval_subset_is_fixed_and_described(data):
    x, y = data
    a = make_mlp_task(x, y, widths=(6, 3), eval_subset=100, eval_seed=5)
    b = make_mlp_task(x, y, widths=(6, 3), eval_subset=100, eval_seed=5)
    assert a.x_eval.shape == (100, 6)
    np.testing.assert_array_equal(a.x_eval, b.x_eval)
    assert "subset of 100" in a.eval_description
    full = make_mlp_task(x, y, widths=(6, 3))
    assert "full training split" in full.eval_description


def test_init_is_seeded(data):
    x, y = data
    task = make_mlp_task(x, y, widths=(6, 4, 3))
    p1, p2 = task.init_params(jax.random.key(0)), task.init_params(jax.random.key(0))
    p3 = task.init_params(jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, p1, p2)
    assert not np.allclose(p1["layer_0"]["w"], p3["layer_0"]["w"])
    assert set(p1) == {"layer_0", "layer_1"} and set(p1["layer_0"]) == {"w", "b"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(widths=(6,)), "at least an input and an output"),
        (dict(widths=(6, 0, 3)), "positive"),
        (dict(widths=(7, 3)), r"Project the data to 7"),
        (dict(widths=(6, 2)), "number of classes"),
        (dict(widths=(6, 3), activation="swishy"), "unknown activation"),
        (dict(widths=(6, 3), batch_size=0), "batch_size"),
    ],
)
def test_bad_configuration_gives_clear_error(data, kwargs, match):
    x, y = data
    with pytest.raises(ValueError, match=match):
        make_mlp_task(x, y, **kwargs)


def test_bad_data_gives_clear_error(data):
    x, y = data
    with pytest.raises(TypeError, match="floating point"):
        make_mlp_task(x.astype(np.int32), y, widths=(6, 3))
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        make_mlp_task(bad, y, widths=(6, 3))
    with pytest.raises(ValueError, match="integer labels"):
        make_mlp_task(x, y.astype(np.float32), widths=(6, 3))


def test_minibatch_sampling_is_jittable_and_no_host_round_trip(data):
    x, y = data
    task = make_mlp_task(x, y, widths=(6, 3), batch_size=8)
    params = task.init_params(jax.random.key(0))
    grad = jax.jit(jax.grad(lambda p, t, k: t.minibatch_loss(p, k)))(params, task, jax.random.key(1))
    assert jax.tree.map(jnp.shape, grad) == jax.tree.map(jnp.shape, params)


@pytest.mark.parametrize("family", sorted(SPLIT_SIZES))
def test_2016_families_have_paper_sizes_and_finite_objectives(family):
    train, test = objective_split(family, "train"), objective_split(family, "test")
    assert jax.tree.leaves(train)[0].shape[0] == SPLIT_SIZES[family][0]
    assert jax.tree.leaves(test)[0].shape[0] == SPLIT_SIZES[family][1]
    assert not np.allclose(jax.tree.leaves(train)[0][0], jax.tree.leaves(test)[0][0])

    def loss_and_grad(task):
        p = task.init_params(jax.random.key(0))
        return jax.value_and_grad(task.true_loss)(p)

    values, grads = jax.jit(jax.vmap(loss_and_grad))(train)
    assert np.all(np.isfinite(values))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_2016_family_data_shapes():
    logistic = objective_split("logistic", "train")
    assert logistic.x.shape[1:] == (100, 3) and set(np.unique(logistic.y)) == {0, 1}
    net = objective_split("net", "train")
    # Every net objective has both labels present.
    assert all(len(np.unique(net.y[i])) == 2 for i in range(net.y.shape[0]))
    params = jax.tree.map(lambda a: a[0], net).init_params(jax.random.key(0))
    assert sum(p.size for p in jax.tree.leaves(params)) == 12
