"""Seeded Gaussian random projection plus per-dimension standardisation (Li & Malik's MNIST-48).

Example::

    from metaopt.data import load_dataset, project_and_standardize

    ds = project_and_standardize(load_dataset("digits"), dim=48, seed=0)
    ds.x_train.shape, ds.x_test.shape          # ((1500, 48), (297, 48))
"""

from __future__ import annotations

import numpy as np

from metaopt.data.datasets import Dataset

# float64 intermediates cost little at (n, 48) and keep "constant column" detection exact.
_ROWS_PER_CHUNK = 8192
# A dimension is treated as constant when its spread is below float32 resolution of its values,
# or below an absolute floor (as scikit-learn's StandardScaler does) so that subnormal noise on
# the training split is never blown up into huge test features.
_CONSTANT_RTOL = 1e-7
_CONSTANT_ATOL = 10 * np.finfo(np.float64).eps


def random_projection_matrix(input_dim: int, output_dim: int, *, seed: int = 0) -> np.ndarray:
    """The (input_dim, output_dim) float64 Gaussian matrix, N(0, 1/input_dim), from Generator(seed).

    >>> random_projection_matrix(784, 48, seed=0).shape
    (784, 48)
    """
    rng = np.random.default_rng(seed)
    return rng.standard_normal((input_dim, output_dim)) / np.sqrt(input_dim)


def _project(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    out = np.empty((x.shape[0], matrix.shape[1]), np.float64)
    for start in range(0, x.shape[0], _ROWS_PER_CHUNK):
        stop = start + _ROWS_PER_CHUNK
        out[start:stop] = np.asarray(x[start:stop], np.float64) @ matrix
    return out


def project_and_standardize(ds: Dataset, dim: int, *, seed: int = 0) -> Dataset:
    """Projects both splits with one seeded Gaussian matrix, then standardises each dimension.

    Mean and standard deviation are computed on the training split only and applied to both
    splits, so test data never leaks into the features. A dimension that is constant on the
    training split (spread below float32 resolution, or std < 2e-15) is only centred, never
    divided by ~0.

    Args:
      ds: a Dataset with 2-D `x_train`/`x_test` of the same width d.
      dim: output width (the network's input width, 48 in the paper).
      seed: seed of `numpy.random.Generator` drawing the (d, dim) matrix.

    Returns:
      The Dataset with float32 `x_train` (n_train, dim) and `x_test` (n_test, dim); labels, name
      and source unchanged.

    Example::

        ds48 = project_and_standardize(load_dataset("mnist"), 48, seed=0)
    """
    if int(dim) != dim or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if ds.x_train.ndim != 2 or ds.x_test.ndim != 2 or ds.x_train.shape[1] != ds.x_test.shape[1]:
        raise ValueError(
            f"x_train/x_test must be 2-D with equal widths, got {ds.x_train.shape} and "
            f"{ds.x_test.shape}"
        )
    if ds.x_train.shape[0] == 0:
        raise ValueError("cannot standardise with an empty training split")
    matrix = random_projection_matrix(ds.x_train.shape[1], int(dim), seed=seed)
    train = _project(ds.x_train, matrix)
    test = _project(ds.x_test, matrix)
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    constant = (std < _CONSTANT_ATOL) | (std <= _CONSTANT_RTOL * np.abs(train).max(axis=0))
    scale = np.where(constant, 1.0, std)
    return ds._replace(
        x_train=((train - mean) / scale).astype(np.float32),
        x_test=((test - mean) / scale).astype(np.float32),
    )
