"""Run configurations as code. ``CONFIGS[name]`` is what ``metaopt <command> --config name`` uses."""

from __future__ import annotations

import ast
import dataclasses

from metaopt.optimizers.baselines import BASELINES


@dataclasses.dataclass(frozen=True)
class BaselineSuiteConfig:
    """Tune every hand-designed baseline on one training task, then evaluate the tuned settings.

    Tuning picks the lowest mean final true objective over ``tuning_seeds``; the reported curves
    are re-run on ``eval_seeds`` (other initialisations and minibatch orders).
    """

    dataset: str = "mnist"
    input_dim: int = 48
    hidden: tuple[int, ...] = (48,)
    batch_size: int = 64
    activation: str = "relu"
    l2: float = 5e-4
    num_steps: int = 400
    eval_every: int = 10
    eval_subset: int | None = None
    projection_seed: int = 0
    tuning_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    eval_seeds: tuple[int, ...] = (100, 101, 102, 103, 104)
    baselines: tuple[str, ...] = tuple(BASELINES)
    grid_batch_size: int = 4


CONFIGS: dict[str, BaselineSuiteConfig] = {
    # The paper's training objective: 48-48-10 on MNIST projected to 48, minibatch 64, 400 steps.
    "paper": BaselineSuiteConfig(),
    # Seconds, offline everywhere: sklearn's 8×8 digits, short horizon, two seeds.
    "quick": BaselineSuiteConfig(dataset="digits", num_steps=60, eval_every=10,
                                 tuning_seeds=(0, 1), eval_seeds=(100, 101)),
}


def get_config(name: str) -> BaselineSuiteConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose one of {sorted(CONFIGS)}.")
    return CONFIGS[name]


def parse_named_paths(items, option: str) -> dict[str, str]:
    """``["NAME=PATH", ...]`` (the scripts' repeatable policy options) as ``{NAME: PATH}``;
    ValueError naming ``option``, the item and the fix."""
    named = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{option} {item!r}: give NAME=PATH")
        named[name] = path
    return named


def parse_overrides(items, config_cls) -> dict:
    """``["name=literal", ...]`` (the scripts' ``--set``) as field overrides of the dataclass
    ``config_cls``; ValueError naming the item and the fix."""
    fields = [f.name for f in dataclasses.fields(config_cls)]
    overrides = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in fields:
            raise ValueError(f"--set {item}: no such {config_cls.__name__} field; choose from "
                             f"{', '.join(fields)}")
        try:
            overrides[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"--set {item}: the value must be a Python literal (1e-3, True, "
                             "(32,))") from None
    return overrides
