"""Shared tiny GPS fixtures: one rollout of the tiny preset, reused by several tests."""

import jax
import jax.numpy as jnp
import pytest

from metaopt.training.gps_loop import TrainConfig, condition_key, init_state, make_task
from metaopt.training.rollout import rollout, select_tracked


@pytest.fixture(scope="session")
def tiny_config():
    return TrainConfig.tiny()


@pytest.fixture(scope="session")
def tiny_rollout(tiny_config):
    """(config, task, initial state, tracked coordinates, rollout data) of the tiny preset."""
    config = tiny_config
    task = make_task(config)
    state = init_state(config, task)
    tracked = select_tracked(jax.random.key(config.seed + 4),
                             task.init_params(jax.random.key(0)), config.num_tracked)
    init_key = jax.random.split(condition_key(config))[0]
    data = rollout(task, state.controller, init_key, jax.random.key(7),
                   jnp.asarray(tracked.index), num_samples=config.num_samples)
    return config, task, state, tracked, jax.device_get(data)
