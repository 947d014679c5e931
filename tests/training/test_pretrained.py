"""The policies shipped in metaopt/assets: load, run through learned_opt, say how they were made."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metaopt
from metaopt.mlp_policy import is_mlp_policy, mlp_policy_sizes
from metaopt.policy import policy_hidden_size
from metaopt.pretrained import paper_lstm_info, paper_lstm_path, pretrained_info, pretrained_path
from metaopt.tasks.mlp import make_mlp_task, synthetic_classification


@pytest.mark.parametrize("which", ["pretrained", "paper_lstm"])
def test_shipped_policies_optimize_a_small_mlp(which):
    theta = metaopt.pretrained() if which == "pretrained" else metaopt.pretrained.paper_lstm()
    if which == "paper_lstm":
        assert policy_hidden_size(theta) == 128
    else:
        assert mlp_policy_sizes(theta) == (32,)
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


def test_pretrained_is_make_trains_scale_free_policy():
    """metaopt.pretrained() is the GPS-trained scale-free MLP, learned_opt()'s default, chosen on
    tuning seeds and ahead of every constant-rate tuned baseline on the held-out ones."""
    theta = metaopt.pretrained()
    assert is_mlp_policy(theta)
    assert pretrained_path().endswith("assets/scale_free.metaopt")
    assert metaopt.pretrained.scale_free is metaopt.pretrained.pretrained
    info = pretrained_info()
    assert "train_scale_free_gps.py" in info["command"]
    assert np.isfinite(info["selection_score_tuning_seeds_0_4"])
    held_out = info["held_out"]
    assert held_out["seeds"] == [100, 101, 102, 103, 104]
    for baseline in ("adagrad", "adam", "rmsprop", "momentum"):
        assert held_out["scale_free"]["final_mean"] < held_out[baseline]["final_mean"], baseline


def test_paper_lstm_info_names_the_command():
    info = paper_lstm_info()
    assert "metaopt" in info["command"] and "train" in info["command"]
    assert info["iterations"] >= 1
    assert paper_lstm_path().endswith("assets/paper_lstm.metaopt")


def test_missing_policy_file_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="make train"):
        metaopt.pretrained(tmp_path / "absent.metaopt")
    with pytest.raises(FileNotFoundError, match="make train-paper"):
        metaopt.pretrained.paper_lstm(tmp_path / "absent.metaopt")


def test_pretrained_is_exported():
    assert "pretrained" in metaopt.__all__
    theta = metaopt.pretrained()
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(theta))


@pytest.mark.parametrize("asset, run", [
    ("scale_free.metaopt", "results/scale-free-gps/policy.metaopt"),             # make train
    ("scale_free_family.metaopt", "results/scale-free-family-wide/policy.metaopt"),  # train-family
])
def test_shipped_policy_is_the_committed_runs_output(asset, run):
    """Provenance: each shipped file is byte for byte the policy its committed run chose."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    shipped = Path(metaopt.pretrained.__file__).parent / "assets" / asset
    assert shipped.read_bytes() == (root / run).read_bytes()
