"""Training families as configurations (issue 17): named tuples of GPS conditions.

``"paper"`` is the paper's single task (48-48-10 ReLU on MNIST-48, minibatch 64, SPEC §1);
``"mnist"`` is a family on the same dataset (other projections, widths, depths, activations and
minibatch sizes), never on a test dataset (digits, Fashion-MNIST); ``"mnist-wide"`` adds a member
with a 100-dimensional projection, ``"mnist-wider"`` a 256-wide layer and minibatch 5.
Parameter-scale augmentation is not a member: the scale-free policy is invariant to a
tensor's scale by construction (a hypothesis test in ``tests/test_scale_free.py``), so a
rescaled copy of a member would be the same condition.

Example::

  conditions = family_conditions("mnist")     # [FamilyCondition(name, task, init_step_size)]
"""

from __future__ import annotations

import dataclasses

from metaopt.training.scale_free_family import FamilyCondition

__all__ = ["FAMILIES", "FamilyMember", "family_conditions"]


@dataclasses.dataclass(frozen=True)
class FamilyMember:
    """One condition: ``metaopt.tasks.dataset_task`` arguments, f measured on ``eval_subset``
    training examples (the cost of every step's f grows with it)."""

    name: str
    dataset: str = "mnist"
    input_dim: int = 48
    hidden: tuple[int, ...] = (48,)
    activation: str = "relu"
    batch_size: int = 64
    projection_seed: int = 0
    l2: float = 5e-4
    eval_subset: int = 2000
    init_step_size: float = 0.05

    def task(self, cache_dir=None):
        from metaopt.tasks import dataset_task

        return dataset_task(self.dataset, input_dim=self.input_dim, hidden=self.hidden,
                            batch_size=self.batch_size, activation=self.activation, l2=self.l2,
                            eval_subset=self.eval_subset, projection_seed=self.projection_seed,
                            cache_dir=cache_dir)


FAMILIES: dict[str, tuple[FamilyMember, ...]] = {
    "paper": (FamilyMember("48-48-10 relu, minibatch 64", eval_subset=5000),),
    "mnist": (
        FamilyMember("48-48-10 relu, minibatch 64"),
        FamilyMember("48-48-10 relu, minibatch 10, projection 1", batch_size=10,
                     projection_seed=1),
        FamilyMember("48-32-32-10 tanh, minibatch 32, projection 2", hidden=(32, 32),
                     activation="tanh", batch_size=32, projection_seed=2),
        FamilyMember("48-128-10 relu, minibatch 10, projection 3", hidden=(128,), batch_size=10,
                     projection_seed=3),
    ),
}
# "mnist" plus a wider-input member (fan-ins 100 and 128; Fig 4's test nets are 100-200-C).
FAMILIES["mnist-wide"] = FAMILIES["mnist"] + (
    FamilyMember("100-128-10 relu, minibatch 10, projection 4", input_dim=100, hidden=(128,),
                 batch_size=10, projection_seed=4),
)
# "mnist-wide" plus a 256-wide layer (fan-in above the test nets' 200) and minibatch 5 (below
# every figure task's), on three hidden layers: the two regimes where "mnist-wide" loses most.
FAMILIES["mnist-wider"] = FAMILIES["mnist-wide"] + (
    FamilyMember("100-256-10 relu, minibatch 10, projection 5", input_dim=100, hidden=(256,),
                 batch_size=10, projection_seed=5),
    FamilyMember("64-64-64-10 relu, minibatch 5, projection 6", input_dim=64, hidden=(64, 64),
                 batch_size=5, projection_seed=6),
)
# "mnist-wider" plus six MNIST probes spanning minibatch 16-128, a 100-200 net at minibatch 64 and
# 10, and tanh at minibatch 64 (projections 7-12): more training-side noise levels for choosing
# the loss-noise multiplier (experiments/schedule_selection.py --adapt loss-noise); not used for
# meta-training.
FAMILIES["mnist-wider-probes"] = FAMILIES["mnist-wider"] + (
    FamilyMember("48-48-10 relu, minibatch 32, projection 7", batch_size=32, projection_seed=7),
    FamilyMember("48-48-10 relu, minibatch 128, projection 8", batch_size=128, projection_seed=8),
    FamilyMember("48-48-10 relu, minibatch 16, projection 9", batch_size=16, projection_seed=9),
    FamilyMember("100-200-10 relu, minibatch 64, projection 10", input_dim=100, hidden=(200,),
                 projection_seed=10),
    FamilyMember("100-200-10 relu, minibatch 10, projection 11", input_dim=100, hidden=(200,),
                 batch_size=10, projection_seed=11),
    FamilyMember("48-48-10 tanh, minibatch 64, projection 12", activation="tanh",
                 projection_seed=12),
)


def family_conditions(name: str, cache_dir=None) -> list[FamilyCondition]:
    """The GPS conditions of family ``name`` (a key of ``FAMILIES``), their tasks loaded."""
    if name not in FAMILIES:
        raise ValueError(f"no training family {name!r}; choose from {', '.join(FAMILIES)}")
    return [FamilyCondition(m.name, m.task(cache_dir), m.init_step_size) for m in FAMILIES[name]]
