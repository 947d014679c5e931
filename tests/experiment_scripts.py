"""Load a script of ``experiments/`` as a module, so tests can call its ``main`` and helpers."""

import importlib.util
from pathlib import Path

EXPERIMENTS = Path(__file__).parents[1] / "experiments"


def load_experiment(name: str):
    """The module ``experiments/<name>.py`` (executed, its ``main`` not run)."""
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
