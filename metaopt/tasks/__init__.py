"""Base-learner objectives: MLP classifiers on (projected) datasets and the 2016 objective families."""

from metaopt.tasks.least_squares import LeastSquaresTask, least_squares_task
from metaopt.tasks.mlp import ACTIVATIONS, MLPTask, make_mlp_task, synthetic_classification


def dataset_task(
    dataset: str,
    *,
    input_dim: int = 48,
    hidden: tuple[int, ...] = (48,),
    batch_size: int = 64,
    activation: str = "relu",
    l2: float = 5e-4,
    eval_subset: int | None = None,
    projection_seed: int = 0,
    cache_dir=None,
) -> MLPTask:
    """An MLP task on a dataset projected to ``input_dim`` and standardised (SPEC §5).

    The output width is the dataset's number of classes: ``dataset_task("cifar10", input_dim=100,
    hidden=(200,))`` is the paper's 100-200-10 net.
    """
    from metaopt.data import load_dataset, project_and_standardize

    ds = project_and_standardize(load_dataset(dataset, cache_dir=cache_dir), input_dim,
                                 seed=projection_seed)
    return make_mlp_task(
        ds.x_train, ds.y_train, widths=(input_dim, *hidden, ds.num_classes),
        batch_size=batch_size, activation=activation, l2=l2, eval_subset=eval_subset,
    )


__all__ = ["ACTIVATIONS", "LeastSquaresTask", "MLPTask", "dataset_task", "least_squares_task",
           "make_mlp_task", "synthetic_classification"]
