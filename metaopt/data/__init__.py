"""Datasets for meta-training and evaluation, as numpy arrays, with offline fallbacks.

Example::

    from metaopt.data import load_dataset, project_and_standardize

    ds = load_dataset("mnist")                    # TFDS if prepared, else a pinned offline copy
    ds48 = project_and_standardize(ds, dim=48)    # the paper's MNIST-48 meta-training inputs
"""

from metaopt.data.datasets import Dataset, available_datasets, load_dataset
from metaopt.data.projection import project_and_standardize, random_projection_matrix
from metaopt.data.sources import ChecksumError, DatasetUnavailableError

__all__ = [
    "ChecksumError",
    "Dataset",
    "DatasetUnavailableError",
    "available_datasets",
    "load_dataset",
    "project_and_standardize",
    "random_projection_matrix",
]
