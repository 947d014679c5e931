"""Meta-training of the LSTM optimizer by convolutional BADMM guided policy search.

``train(TrainConfig.tiny(), out_dir)`` runs the whole loop (rollouts, C-step, S-step, dual step)
with an Orbax checkpoint per iteration; see :mod:`metaopt.training.gps_loop`.
"""

from metaopt.training.gps_loop import TrainConfig, TrainState, gps_iteration, init_state, train
from metaopt.training.rollout import RolloutData, TrackedCoordinates, rollout, select_tracked

__all__ = [
    "RolloutData",
    "TrackedCoordinates",
    "TrainConfig",
    "TrainState",
    "gps_iteration",
    "init_state",
    "rollout",
    "select_tracked",
    "train",
]
