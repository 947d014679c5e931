"""The meta-trained policies shipped inside the package (``metaopt/assets/``).

Example::

  import optax, metaopt
  tx = metaopt.learned_opt(metaopt.pretrained())     # the shipped policy: `make train`'s output
  tx = metaopt.learned_opt()                         # the same (learned_opt()'s default)
  tx = metaopt.pretrained.scale_free_family_opt()    # for nets unlike MNIST 48-48-10
  tx = metaopt.pretrained.scale_free_family_opt(horizon=400)  # with its schedule over 400 steps
  tx = metaopt.learned_opt(metaopt.pretrained.paper_lstm())  # the paper's LSTM, by the same GPS
  l2l_theta = metaopt.pretrained.pretrained_l2l()   # the shipped L2L baseline
  metaopt.pretrained.pretrained_info()              # how the shipped policy was made

``metaopt.pretrained()`` is the scale-free MLP policy meta-trained by guided policy search on the
paper's task (``make train``, ``metaopt.training.scale_free_gps``; ``scale_free()`` is another
name for it). ``metaopt.pretrained`` is this module, and calling it is calling ``pretrained()``:
``metaopt.pretrained(path)``, ``metaopt.pretrained.pretrained_path()`` and ``from
metaopt.pretrained import pretrained`` all work. Each policy file has a JSON next to it with the
command, configuration and results of the run that made it (``*_info()`` returns it).
"""

from __future__ import annotations

import json
import os
import sys
import types
from importlib import resources
from typing import Any

from metaopt.policy import Theta
from metaopt.serialization import load

# metaopt.pretrained() and learned_opt()'s default: the scale-free MLP policy (`make train`).
SCALE_FREE_FILE = "scale_free.metaopt"
SCALE_FREE_INFO_FILE = "scale_free.json"
# The same policy fine-tuned by GPS over a family of training conditions (`make train-family`).
SCALE_FREE_FAMILY_FILE = "scale_free_family.metaopt"
SCALE_FREE_FAMILY_INFO_FILE = "scale_free_family.json"
# The paper's 128-cell LSTM on its features Ψ, by GPS (`make train-paper`).
PAPER_LSTM_FILE = "paper_lstm.metaopt"
PAPER_LSTM_INFO_FILE = "paper_lstm.json"
L2L_FILE = "l2l.metaopt"   # the L2L baseline (Andrychowicz et al. 2016): experiments/train_l2l.py

__all__ = ["L2L_FILE", "PAPER_LSTM_FILE", "SCALE_FREE_FILE", "paper_lstm", "paper_lstm_info",
           "paper_lstm_path", "pretrained", "pretrained_info", "pretrained_l2l",
           "pretrained_l2l_path", "pretrained_path", "scale_free", "scale_free_family",
           "scale_free_family_info", "scale_free_family_opt", "scale_free_info",
           "scale_free_path"]


def _asset(name: str) -> str:
    return os.fspath(resources.files("metaopt") / "assets" / name)


def _load_file(path, default: str, loader, missing: str):
    """``loader(path or default)``; FileNotFoundError ``"no {missing} at …"`` naming the file."""
    path = default if path is None else os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {missing.format(path=path)}")
    return loader(path)


def _info(name: str) -> dict[str, Any]:
    path = resources.files("metaopt") / "assets" / name
    if not path.is_file():
        raise FileNotFoundError(f"no {name} next to the shipped policy ({path}).")
    return json.loads(path.read_text())


def pretrained_path() -> str:
    """Where the shipped policy (``metaopt.pretrained()``, the scale-free MLP) lives."""
    return _asset(SCALE_FREE_FILE)


def pretrained(path: str | os.PathLike | None = None) -> Theta:
    """Loads the shipped policy, the default of ``metaopt.learned_opt()`` (or the file at
    ``path``): the scale-free MLP policy meta-trained by guided policy search on the paper's task
    (``make train``, ``metaopt.training.scale_free_gps``); ``pretrained_info()`` says how.

    Raises:
      FileNotFoundError: the file is absent, with how to make one.
      metaopt.PolicyFileError: the file is not a readable policy of this format version.
    """
    return _load_file(path, pretrained_path(), load, (
        "pretrained policy at {path}. Meta-train one with `make train` and copy "
        "results/scale-free-gps/policy.metaopt there, or load your own file with "
        "metaopt.load(path)."))


def pretrained_info() -> dict[str, Any]:
    """How the shipped policy was made (command, configuration, results), from
    ``scale_free.json``."""
    return _info(SCALE_FREE_INFO_FILE)


# The shipped policy by what it is (the names README used before it became pretrained()).
scale_free = pretrained
scale_free_path = pretrained_path
scale_free_info = pretrained_info


def paper_lstm_path() -> str:
    """Where the paper's GPS-trained 128-cell LSTM lives."""
    return _asset(PAPER_LSTM_FILE)


def paper_lstm(path: str | os.PathLike | None = None) -> Theta:
    """Loads the paper's policy (or the file at ``path``): the 128-cell per-coordinate LSTM on the
    paper's features Ψ, meta-trained by GPS on the paper's task (``make train-paper``). It ends
    above ``pretrained()`` on the training task and on every figure task (README, "Results").

    Raises:
      FileNotFoundError: the file is absent, with how to make one.
      metaopt.PolicyFileError: the file is not a readable policy of this format version.
    """
    return _load_file(path, paper_lstm_path(), load, (
        "paper LSTM policy at {path}. Meta-train one with `make train-paper` (or `metaopt "
        "train --config paper --out results/train`) and copy results/train/policy.metaopt "
        f"there as {PAPER_LSTM_FILE}, or load your own file with metaopt.load(path)."))


def paper_lstm_info() -> dict[str, Any]:
    """How the shipped paper LSTM was made, from ``paper_lstm.json``."""
    return _info(PAPER_LSTM_INFO_FILE)


def scale_free_family(path: str | os.PathLike | None = None) -> Theta:
    """Loads the scale-free policy fine-tuned over the mnist-wide family of training conditions
    (or the file at ``path``): ahead of the single-task ``pretrained()`` on 14 of the 17 tasks of
    the generalisation suite in final f (15 in area), behind it on the training task itself
    (``scale_free_family_info()``).

    Raises:
      FileNotFoundError: the file is absent, with how to make one.
      metaopt.PolicyFileError: the file is not a readable policy of this format version.
    """
    return _load_file(path, _asset(SCALE_FREE_FAMILY_FILE), load, (
        "family-trained scale-free policy at {path}. Meta-train one with `make train-family` and "
        "copy results/scale-free-family-wide/policy.metaopt there, or load your own file with "
        "metaopt.load(path)."))


def scale_free_family_info() -> dict[str, Any]:
    """How the family-trained policy was made and how it did, from ``scale_free_family.json``."""
    return _info(SCALE_FREE_FAMILY_INFO_FILE)


def scale_free_family_opt(*, learning_rate=1.0, horizon: int | None = None,
                          loss_noise: bool = True):
    """``learned_opt(scale_free_family(), fan_in_exponent=α)`` at the α it ships with
    (``scale_free_family_info()["fan_in_exponent"]``, chosen on the training family's tuning
    seeds): each matrix's step times (48 / fan-in)^α. The optimizer to use on nets unlike the
    paper's 48-48-10 (README, "Generalisation").

    Args:
      learning_rate: multiplies every step (a float or a schedule of the step count).
      horizon: the number of steps the run will take, when known. Then the step is also
        multiplied by the shipped schedule over t / horizon
        (``scale_free_family_info()["horizon_schedule"]``, chosen on the training family's tuning
        seeds by ``experiments/schedule_selection.py``); steps past the horizon keep its last
        multiplier. ``None``: a constant step.
      loss_noise: also multiply the step by the shipped function of the measured minibatch-loss
        noise (``scale_free_family_info()["loss_noise_scaling"]``, ``scale_by_loss_noise``, chosen
        on training-side MNIST conditions by ``experiments/schedule_selection.py --adapt
        loss-noise``): larger steps at large minibatches, smaller at small ones. ``False``: the
        policy's step alone.

    Example::

      tx = metaopt.pretrained.scale_free_family_opt()
      tx = metaopt.pretrained.scale_free_family_opt(horizon=400)   # a 400-step run
      tx = metaopt.pretrained.scale_free_family_opt(loss_noise=False)   # the policy's step only
      updates, state = tx.update(grads, tx.init(params), params, value=loss)

    Raises:
      ValueError: ``horizon`` is not a positive int, or the shipped info has no schedule.
    """
    from metaopt.learned_optimizer import learned_opt
    from metaopt.optimizers.horizon_schedule import horizon_schedule
    from metaopt.scale_free_optimizer import learning_rate_at

    info = scale_free_family_info()
    if horizon is not None:
        knots = info.get("horizon_schedule")
        if not knots:
            raise ValueError("scale_free_family_opt: the shipped scale_free_family.json has no "
                             "horizon_schedule; run experiments/schedule_selection.py and add "
                             "its choice, or call without horizon= for a constant step.")
        schedule = horizon_schedule(knots["multipliers"], horizon=horizon,
                                    fractions=knots["fractions"])
        base = learning_rate
        learning_rate = lambda count: learning_rate_at(base, count) * schedule(count)
    tx = learned_opt(scale_free_family(), learning_rate=learning_rate,
                     fan_in_exponent=info.get("fan_in_exponent", 0.0))
    scaling = info.get("loss_noise_scaling") if loss_noise else None
    if scaling:
        import optax

        from metaopt.optimizers.loss_noise import scale_by_loss_noise

        tx = optax.chain(tx, scale_by_loss_noise(
            scaling["multipliers"], noise_levels=scaling["noise_levels"],
            decay=scaling["decay"], warmup=scaling["warmup"]))
    return tx


def pretrained_l2l_path() -> str:
    """Where the shipped L2L baseline weights live."""
    return _asset(L2L_FILE)


def pretrained_l2l(path: str | os.PathLike | None = None):
    """Loads the shipped meta-trained L2L baseline (or the file at ``path``) for ``l2l_opt``.

    Raises:
      FileNotFoundError: the file is absent, with how to make one.
      metaopt.PolicyFileError: not an L2L weights file of this format version.
    """
    from metaopt.serialization import load_l2l

    return _load_file(path, pretrained_l2l_path(), load_l2l, (
        "L2L weights at {path}. Meta-train them with `python experiments/train_l2l.py` "
        "(writes metaopt/assets/l2l.metaopt)."))


class _CallableModule(types.ModuleType):
    """This module, callable: ``metaopt.pretrained(path)`` is ``pretrained(path)``.

    The package attribute ``metaopt.pretrained`` is the module (so that
    ``metaopt.pretrained.pretrained_l2l()`` works) and callers of ``metaopt.pretrained()`` keep
    working.
    """

    def __call__(self, path: str | os.PathLike | None = None) -> Theta:
        return pretrained(path)


sys.modules[__name__].__class__ = _CallableModule
