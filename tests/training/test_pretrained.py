"""The policy shipped in metaopt/assets: loads, runs through learned_opt, says how it was made."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metaopt
from metaopt.policy import policy_hidden_size
from metaopt.pretrained import pretrained_info, pretrained_path
from metaopt.tasks.mlp import make_mlp_task, synthetic_classification


def test_pretrained_policy_optimizes_a_small_mlp():
    theta = metaopt.pretrained()
    assert policy_hidden_size(theta) == 128
    x, y = synthetic_classification(jax.random.key(0), 256, 8, 3)
    task = make_mlp_task(x, y, widths=(8, 16, 3), batch_size=32)
    params = task.init_params(jax.random.key(1))
    tx = optax.chain(optax.clip_by_global_norm(1.0), metaopt.learned_opt(theta))

    @jax.jit
    def step(params, state, key):
        value, grads = jax.value_and_grad(task.minibatch_objective(key))(params)
        updates, state = tx.update(grads, state, params, value=value)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    start = float(task.true_loss(params))
    for key in jax.random.split(jax.random.key(2), 50):
        params, state = step(params, state, key)
    end = float(task.true_loss(params))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params))
    assert end < 0.8 * start, (start, end)


def test_pretrained_info_names_the_command():
    info = pretrained_info()
    assert "metaopt" in info["command"] and "train" in info["command"]
    assert info["iterations"] >= 1


def test_missing_policy_file_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="make train-paper"):
        metaopt.pretrained(tmp_path / "absent.metaopt")
    assert pretrained_path().endswith("assets/policy.metaopt")


def test_pretrained_is_exported():
    assert "pretrained" in metaopt.__all__
    theta = metaopt.pretrained()
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(theta))
