"""metaopt: learned optimizers by guided policy search, shipped as optax transformations.

Example::

  import optax, metaopt
  tx = metaopt.learned_opt()    # the shipped policy, metaopt.pretrained(); or learned_opt(
                                # metaopt.load(path)), learned_opt(metaopt.pretrained.paper_lstm())
                                # for the paper's GPS-trained LSTM
  state = tx.init(params)
  updates, state = tx.update(grads, state, params, value=loss)
  params = optax.apply_updates(params, updates)
"""

# The module itself, callable (metaopt.pretrained() loads the shipped policy) and with its
# functions as attributes (metaopt.pretrained.paper_lstm(), .pretrained_l2l(), .pretrained_info(), ...).
from metaopt import pretrained
from metaopt.controller import linear_gaussian_controller, momentum_controller
from metaopt.features import GPS_STATE_DIM
from metaopt.learned_optimizer import LearnedOptState, learned_opt
from metaopt.mlp_policy import init_mlp_policy
from metaopt.policy import init_policy
from metaopt.scale_free_optimizer import ScaleFreeOptState
from metaopt.serialization import PolicyFileError, load, save

__version__ = "0.1.0"

__all__ = [
    "GPS_STATE_DIM",
    "LearnedOptState",
    "PolicyFileError",
    "ScaleFreeOptState",
    "init_mlp_policy",
    "init_policy",
    "learned_opt",
    "linear_gaussian_controller",
    "load",
    "momentum_controller",
    "pretrained",
    "save",
]
