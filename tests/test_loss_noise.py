"""scale_by_loss_noise (metaopt.optimizers.loss_noise) and its selection script mode."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaopt.optimizers.loss_noise import loss_noise_level, scale_by_loss_noise
from tests.experiment_scripts import load_experiment

LEVELS = [0.1, 0.3, 0.5]


def numpy_multipliers(values, multipliers, levels, decay, warmup):
    """Independent transcription: the multiplier applied at each step of a value sequence."""
    count, prev, mean_square, out = 0, None, 0.0, []
    for v in values:
        if count >= warmup:
            level = np.sqrt(mean_square / (1 - decay ** count) / 2)
            out.append(np.exp(np.interp(np.log(max(level, 1e-12)), np.log(levels), np.log(multipliers))))
        else:
            out.append(1.0)
        if prev is not None and np.isfinite(v):
            r = (v - prev) / (0.5 * (abs(v) + abs(prev)))
            mean_square = decay * mean_square + (1 - decay) * r * r
            count += 1
        if np.isfinite(v):
            prev = v
    return np.asarray(out)


def applied_multipliers(values, tx):
    state = tx.init({"x": jnp.zeros(())})
    out = []
    for v in values:
        update, state = tx.update({"x": jnp.ones(())}, state, value=jnp.float32(v))
        out.append(float(update["x"]))
    return np.asarray(out), state


@settings(deadline=None, max_examples=20)
@given(st.lists(st.floats(0.05, 20.0), min_size=3, max_size=40),
       st.lists(st.floats(0.2, 5.0), min_size=3, max_size=3), st.integers(1, 5))
def test_multipliers_match_a_numpy_transcription(values, multipliers, warmup):
    tx = scale_by_loss_noise(multipliers, noise_levels=LEVELS, decay=0.9, warmup=warmup)
    got, _ = applied_multipliers(values, tx)
    expected = numpy_multipliers(values, multipliers, LEVELS, 0.9, warmup)
    np.testing.assert_allclose(got, expected, rtol=2e-4)


def test_the_level_measures_the_relative_noise_of_the_objective():
    # f̂ = 10 (1 + 0.2 ξ): consecutive independent draws, relative std 0.2 (Monte Carlo).
    rng = np.random.default_rng(0)
    values = 10.0 * (1.0 + 0.2 * rng.standard_normal(3000))
    tx = scale_by_loss_noise([1.0, 1.0, 1.0], noise_levels=LEVELS, decay=0.999)
    _, state = applied_multipliers(values, tx)
    assert float(loss_noise_level(state, 0.999)) == pytest.approx(0.2, rel=0.1)


def test_multiplying_the_objective_leaves_the_multipliers_unchanged():
    rng = np.random.default_rng(1)
    values = 2.0 + np.abs(rng.standard_normal(60))
    tx = scale_by_loss_noise([2.0, 1.0, 0.5], noise_levels=LEVELS, warmup=3)
    a, _ = applied_multipliers(values, tx)
    b, _ = applied_multipliers(1e4 * values, tx)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    assert not np.allclose(a, 1.0)          # the test is not vacuous: the multiplier moved


def test_a_quiet_objective_gets_the_low_noise_knot_and_a_noisy_one_the_high():
    quiet = np.linspace(10.0, 9.0, 50)
    noisy = np.tile([1.0, 3.0], 25)          # |r| = 1 every step: level √½ > 0.5
    tx = scale_by_loss_noise([3.0, 1.0, 0.25], noise_levels=LEVELS, warmup=5)
    assert applied_multipliers(quiet, tx)[0][-1] == pytest.approx(3.0, rel=1e-5)
    assert applied_multipliers(noisy, tx)[0][-1] == pytest.approx(0.25, rel=1e-5)


def test_a_non_finite_value_leaves_the_state_and_never_reaches_the_updates():
    tx = scale_by_loss_noise([2.0, 1.0, 0.5], noise_levels=LEVELS, warmup=1)
    got, state = applied_multipliers([1.0, 1.1, float("nan"), float("inf"), 1.2], tx)
    assert np.all(np.isfinite(got)) and int(state.count) == 2
    assert float(state.prev_value) == pytest.approx(1.2)


def test_it_chains_after_a_learned_step_and_jits():
    tx = optax.chain(optax.sgd(0.1), scale_by_loss_noise([1.0, 1.0, 1.0], noise_levels=LEVELS))
    params = {"x": jnp.ones(3)}
    state = tx.init(params)
    updates, state = jax.jit(lambda g, s, v: tx.update(g, s, params, value=v))(
        params, state, jnp.float32(1.0))
    np.testing.assert_allclose(updates["x"], -0.1 * np.ones(3), rtol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(multipliers=[1.0, -1.0, 1.0], noise_levels=LEVELS), "positive finite"),
    (dict(multipliers=[1.0, 1.0], noise_levels=LEVELS), "one per multiplier"),
    (dict(multipliers=[1.0, 1.0, 1.0], noise_levels=[0.3, 0.1, 0.5]), "strictly"),
    (dict(multipliers=[1.0, 1.0, 1.0], noise_levels=LEVELS, decay=1.0), "decay"),
    (dict(multipliers=[1.0, 1.0, 1.0], noise_levels=LEVELS, warmup=0), "warmup"),
])
def test_bad_arguments_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        scale_by_loss_noise(**kwargs)


def test_a_missing_value_is_refused():
    tx = scale_by_loss_noise([1.0, 1.0, 1.0], noise_levels=LEVELS)
    with pytest.raises(ValueError, match="value"):
        tx.update({"x": jnp.ones(())}, tx.init({"x": jnp.ones(())}))


def test_the_selection_script_chooses_loss_noise_knots(tmp_path, monkeypatch):
    script = load_experiment("schedule_selection")
    monkeypatch.setattr(sys, "argv", ["x", "--tiny", "--adapt", "loss-noise", "--sweeps", "1",
                                      "--log-step", "0.3", "--out", str(tmp_path)])
    script.main()
    doc = json.loads((tmp_path / "selection.json").read_text())
    assert doc["adapt"] == "loss-noise" and doc["noise_levels"] == list(script.NOISE_LEVELS)
    assert len(doc["search"]["best"]) == len(script.NOISE_LEVELS)
    assert doc["rows"]["chosen"]["criterion"] == pytest.approx(doc["search"]["score"], rel=1e-5)
    assert doc["rows"]["chosen"]["criterion"] <= doc["rows"]["constant"]["criterion"]
    monkeypatch.setattr(sys, "argv", ["x", "--tiny", "--adapt", "loss-noise", "--initial", "1",
                                      "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        script.main()


def test_the_suite_reads_a_loss_noise_selection_and_refuses_others(tmp_path):
    import argparse

    script = load_experiment("generalization_suite")
    parser = argparse.ArgumentParser()
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"adapt": "loss-noise", "search": {"best": [2.0, 1.0, 0.5]},
                                "noise_levels": LEVELS, "decay": 0.98, "warmup": 10}))
    assert script.chosen_loss_noise(str(good), parser) == {
        "multipliers": [2.0, 1.0, 0.5], "noise_levels": LEVELS, "decay": 0.98, "warmup": 10}
    horizon = tmp_path / "horizon.json"
    horizon.write_text(json.dumps({"adapt": "horizon", "search": {"best": [1.0, 1.0]},
                                   "fractions": [0.0, 1.0]}))
    for bad in (horizon, tmp_path / "absent.json"):
        with pytest.raises(SystemExit):
            script.chosen_loss_noise(str(bad), parser)
