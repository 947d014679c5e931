"""metaopt.save / metaopt.load: round trip, versioning, corrupt and truncated files."""

import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaopt.learned_optimizer import learned_opt
from metaopt.policy import init_policy
from metaopt.serialization import (
    FORMAT_VERSION,
    MAGIC,
    PolicyFileError,
    load,
    read_header,
    save,
)

THETA = init_policy(jax.random.key(0))


def _rewrite_header(path, edit):
    data = path.read_bytes()
    (n,) = struct.unpack_from("<Q", data, len(MAGIC))
    start = len(MAGIC) + 8
    header = json.loads(data[start : start + n])
    edit(header)
    new = json.dumps(header).encode()
    path.write_bytes(MAGIC + struct.pack("<Q", len(new)) + new + data[start + n :])


def test_round_trip_and_header(tmp_path):
    path = tmp_path / "policy.metaopt"
    save(path, THETA, metadata={"trained_on": "test"})
    theta = load(path)
    assert jax.tree.structure(theta) == jax.tree.structure(THETA)
    for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(THETA), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == jnp.float32
    header = read_header(str(path))
    assert header["format_version"] == FORMAT_VERSION
    assert header["architecture"]["hidden_size"] == 128
    assert header["features"]["dim"] == 3
    assert header["metadata"] == {"trained_on": "test"}
    assert path.stat().st_size < 400_000  # ~67k float32 weights plus a small header
    params = {"w": jnp.ones((3, 2))}
    tx = learned_opt(theta)
    updates, _ = tx.update(params, tx.init(params), params, value=1.0)
    assert updates["w"].shape == (3, 2)


def test_other_hidden_size_round_trips(tmp_path):
    small = init_policy(jax.random.key(1), hidden_size=16)
    save(tmp_path / "p", small)
    assert load(tmp_path / "p")["head"]["kernel"].shape == (16, 1)


def test_other_format_version_is_refused(tmp_path):
    path = tmp_path / "policy.metaopt"
    save(path, THETA)
    _rewrite_header(path, lambda h: h.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(PolicyFileError, match=rf"format version {FORMAT_VERSION + 1}.*reads"):
        load(path)


@pytest.mark.parametrize("cut", [5, len(MAGIC) + 4, len(MAGIC) + 30, -10, -1])
def test_truncated_file_names_the_file(tmp_path, cut):
    path = tmp_path / "policy.metaopt"
    save(path, THETA)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(PolicyFileError, match="policy.metaopt"):
        load(path)


def test_corrupt_files_name_the_file(tmp_path):
    path = tmp_path / "flipped.metaopt"
    save(path, THETA)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PolicyFileError, match="flipped.metaopt.*corrupt"):
        load(path)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(PolicyFileError, match="notes.txt is not a metaopt policy file"):
        load(other)
    garbage_header = tmp_path / "header.metaopt"
    garbage_header.write_bytes(MAGIC + struct.pack("<Q", 4) + b"\xff{{{" + b"x")
    with pytest.raises(PolicyFileError, match="header.metaopt has a corrupt header"):
        load(garbage_header)


def test_mismatched_architecture_is_refused(tmp_path):
    path = tmp_path / "policy.metaopt"
    save(path, THETA)
    _rewrite_header(path, lambda h: h["architecture"].update(hidden_size=64))
    with pytest.raises(PolicyFileError, match="128 LSTM cells"):
        load(path)
    _rewrite_header(path, lambda h: h["architecture"].update(name="mlp"))
    with pytest.raises(PolicyFileError, match="'mlp'"):
        load(path)


def test_save_rejects_non_policies(tmp_path):
    with pytest.raises(ValueError, match="init_policy"):
        save(tmp_path / "x", {"w": jnp.zeros(3)})
    assert not list(tmp_path.iterdir())


def test_pretrained_is_callable_and_a_module():
    """README's ``metaopt.pretrained.pretrained_l2l()`` and the many ``metaopt.pretrained()``
    callers both work (the package attribute is the callable module, not the function)."""
    import metaopt
    from metaopt.pretrained import pretrained, pretrained_info, pretrained_l2l, pretrained_path

    theta = metaopt.pretrained()
    assert jax.tree.structure(metaopt.pretrained.paper_lstm()) == jax.tree.structure(THETA)
    direct = pretrained()
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(theta),
                                                     jax.tree.leaves(direct), strict=True))
    assert metaopt.pretrained.pretrained is pretrained
    assert metaopt.pretrained.pretrained_l2l is pretrained_l2l
    assert metaopt.pretrained.pretrained_path() == pretrained_path()
    assert metaopt.pretrained.pretrained_info() == pretrained_info()
    assert jax.tree.leaves(metaopt.pretrained.pretrained_l2l())
    with pytest.raises(FileNotFoundError, match="no pretrained policy"):
        metaopt.pretrained("/nonexistent/absent.metaopt")
    from metaopt import pretrained as attribute

    assert attribute is metaopt.pretrained and callable(attribute)
    assert "pretrained" in metaopt.__all__
