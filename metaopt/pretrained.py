"""The meta-trained policy shipped inside the package (``metaopt/assets/policy.metaopt``).

Example::

  import optax, metaopt
  tx = metaopt.learned_opt(metaopt.pretrained())      # the paper's GPS-trained LSTM
  tx = metaopt.learned_opt()                          # the default: scale_free() below
  tx = metaopt.learned_opt(metaopt.pretrained.scale_free_family())   # for tasks unlike MNIST-48
  l2l_theta = metaopt.pretrained.pretrained_l2l()    # the shipped L2L baseline
  metaopt.pretrained.pretrained_info()               # how the shipped policy was made

``metaopt.pretrained`` is this module, and calling it is calling ``pretrained()``: both
``metaopt.pretrained(path)`` and ``metaopt.pretrained.pretrained_path()`` work, as does
``from metaopt.pretrained import pretrained``.

``metaopt/assets/policy.json`` records the command, configuration and training log summary of the
run that produced the file (``pretrained_info()`` returns it).
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

POLICY_FILE = "policy.metaopt"
INFO_FILE = "policy.json"
L2L_FILE = "l2l.metaopt"   # the L2L baseline (Andrychowicz et al. 2016): experiments/train_l2l.py
# The default of metaopt.learned_opt(): the scale-free MLP policy, GPS-trained by `make train`.
SCALE_FREE_FILE = "scale_free.metaopt"
SCALE_FREE_INFO_FILE = "scale_free.json"
# The same policy fine-tuned by GPS over a family of training conditions (`make train-family`).
SCALE_FREE_FAMILY_FILE = "scale_free_family.metaopt"
SCALE_FREE_FAMILY_INFO_FILE = "scale_free_family.json"

__all__ = ["L2L_FILE", "POLICY_FILE", "SCALE_FREE_FILE", "pretrained", "pretrained_info",
           "pretrained_l2l", "pretrained_l2l_path", "pretrained_path", "scale_free",
           "scale_free_family", "scale_free_family_info", "scale_free_info", "scale_free_path"]


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
    """Where the shipped policy file lives (it may be absent in a source checkout)."""
    return _asset(POLICY_FILE)


def pretrained(path: str | os.PathLike | None = None) -> Theta:
    """Loads the shipped meta-trained policy (or the policy file at ``path``).

    Raises:
      FileNotFoundError: the file is absent, with how to make one.
      metaopt.PolicyFileError: the file is not a readable policy of this format version.
    """
    return _load_file(path, pretrained_path(), load, (
        "pretrained policy at {path}. Meta-train one with `make train-paper` (or `metaopt "
        f"train --config paper --out results/train`) and copy results/train/{POLICY_FILE} there, "
        "or load your own file with metaopt.load(path)."))


def scale_free_path() -> str:
    """Where the shipped scale-free MLP policy (``learned_opt()``'s default) lives."""
    return _asset(SCALE_FREE_FILE)


def scale_free(path: str | os.PathLike | None = None) -> Theta:
    """Loads the shipped scale-free MLP policy, the default of ``metaopt.learned_opt()`` (or the
    file at ``path``). It was meta-trained by guided policy search (``make train``,
    ``metaopt.training.scale_free_gps``): ``scale_free_info()`` says how.

    Raises:
      FileNotFoundError: the file is absent, with how to make one.
      metaopt.PolicyFileError: the file is not a readable policy of this format version.
    """
    return _load_file(path, scale_free_path(), load, (
        "scale-free policy at {path}. Meta-train one with `make train` and copy "
        "results/scale-free-gps/policy.metaopt there, or load your own file with "
        "metaopt.load(path)."))


def scale_free_info() -> dict[str, Any]:
    """How the shipped scale-free policy was made, from ``scale_free.json``."""
    return _info(SCALE_FREE_INFO_FILE)


def scale_free_family(path: str | os.PathLike | None = None) -> Theta:
    """Loads the scale-free policy fine-tuned over the mnist-wide family of training conditions
    (or the file at ``path``): ahead of the single-task ``scale_free()`` on 14 of the 17 tasks of
    the generalisation suite in final f (15 in area), behind it on the training task itself
    (``scale_free_family_info()``).

    Raises:
      FileNotFoundError: the file is absent, with how to make one.
      metaopt.PolicyFileError: the file is not a readable policy of this format version.
    """
    return _load_file(path, _asset(SCALE_FREE_FAMILY_FILE), load, (
        "family-trained scale-free policy at {path}. Meta-train one with `make train-family` and "
        "copy results/scale-free-family/policy.metaopt there, or load your own file with "
        "metaopt.load(path)."))


def scale_free_family_info() -> dict[str, Any]:
    """How the family-trained policy was made and how it did, from ``scale_free_family.json``."""
    return _info(SCALE_FREE_FAMILY_INFO_FILE)


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


def pretrained_info() -> dict[str, Any]:
    """How the shipped policy was made (command, configuration, results), from ``policy.json``."""
    return _info(INFO_FILE)


class _CallableModule(types.ModuleType):
    """This module, callable: ``metaopt.pretrained(path)`` is ``pretrained(path)``.

    The package attribute ``metaopt.pretrained`` is the module (so that
    ``metaopt.pretrained.pretrained_l2l()`` works) and callers of ``metaopt.pretrained()`` keep
    working.
    """

    def __call__(self, path: str | os.PathLike | None = None) -> Theta:
        return pretrained(path)


sys.modules[__name__].__class__ = _CallableModule
