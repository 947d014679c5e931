"""The 2016 observation against a direct NumPy transcription of its definition."""

import numpy as np
import pytest

from metaopt.l2o2016 import features


def numpy_observation(values, grads, t, history):
    """o_t from the full lists f(x_0..x_t), ∇f(x_0..x_t) (paper §5, zero before t = 0)."""
    changes = [(values[t] - values[t - i]) / (abs(values[t - i]) + 1e-8) if t - i >= 0 else 0.0
               for i in range(1, history + 1)]
    dim = len(grads[0])
    past = [grads[t - i] if t - i >= 0 else np.zeros(dim) for i in range(0, history + 1)]
    return np.concatenate([np.asarray(changes), np.concatenate(past)])


@pytest.mark.parametrize("history", [3, features.HISTORY])
def test_matches_numpy_before_and_after_the_history_fills(history):
    rng = np.random.default_rng(0)
    dim, steps = 4, history + 6
    values = rng.uniform(0.1, 2.0, steps)
    grads = rng.normal(size=(steps, dim))
    hist = features.init_history(dim, history)
    for t in range(steps):
        hist = features.push(hist, values[t], grads[t])
        obs = np.asarray(features.observation(hist))
        assert obs.shape == (features.observation_dim(dim, history),)
        np.testing.assert_allclose(obs, numpy_observation(values, grads, t, history), rtol=1e-5,
                                   atol=1e-6)


def test_zero_fill_at_t0():
    hist = features.push(features.init_history(2, 5), 1.5, np.array([1.0, -2.0]))
    obs = np.asarray(features.observation(hist))
    np.testing.assert_array_equal(obs[:5], 0.0)                      # no past objective
    np.testing.assert_array_equal(obs[5:7], [1.0, -2.0])             # current gradient
    np.testing.assert_array_equal(obs[7:], 0.0)                      # no past gradients


def test_dim_round_trip():
    assert features.dim_from_observation(features.observation_dim(12)) == 12
    with pytest.raises(ValueError):
        features.dim_from_observation(features.observation_dim(4) + 1)
