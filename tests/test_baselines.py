"""Each baseline: decreases a convex quadratic, and equals a hand-written NumPy update for 3 steps.
The cosine-decayed ones follow optax's cosine schedule, tune with traced peaks, and keep their
horizon ``decay_steps`` static through tuning, results files and ``make_baseline``."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from toy_tasks import QuadraticTask

from metaopt.configs import get_config
from metaopt.evaluation.baseline_suite import _at_grid_edge, run_baseline_suite
from metaopt.evaluation.tuning import run_grid, tune
from metaopt.evaluation.unroll import unroll
from metaopt.optimizers.baselines import BASELINES, make_baseline
from metaopt.optimizers.conjugate_gradient import conjugate_gradient

H = np.array([[3.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.5]])
X0 = np.array([1.0, -2.0, 0.5])


def f(x):
    return 0.5 * x @ jnp.asarray(H) @ x


def grad_np(x):
    return H @ x


COSINE = ("adam_cosine", "momentum_cosine")


def run_optax(tx, steps=3, x0=X0, fn=f):
    """Iterates of ``tx`` on ``fn``, compiled once (lax.scan)."""

    def step(carry, _):
        x, state = carry
        v, g = jax.value_and_grad(fn)(x)
        u, state = tx.update(g, state, x, value=v, grad=g, value_fn=fn)
        x = optax.apply_updates(x, u)
        return (x, state), x

    x = jnp.asarray(x0, jnp.float64)
    return np.asarray(jax.jit(lambda x: jax.lax.scan(step, (x, tx.init(x)), length=steps)[1])(x))


# --- independent NumPy transcriptions (textbook / optax-documented defaults) -------------------

def np_cosine(peak, horizon):
    """The cosine decay to 0 over ``horizon`` steps, written out: lr at update t (0-based)."""
    return lambda t: peak * 0.5 * (1 + math.cos(math.pi * min(t, horizon) / horizon))


def _rate(lr, t):
    return lr(t) if callable(lr) else lr


def np_sgd(lr, steps=3):
    x, out = X0.copy(), []
    for _ in range(steps):
        x = x - lr * grad_np(x)
        out.append(x.copy())
    return np.stack(out)


def np_momentum(lr, mu, steps=3):
    x, v, out = X0.copy(), np.zeros(3), []
    for t in range(steps):
        v = mu * v + grad_np(x)
        x = x - _rate(lr, t) * v
        out.append(x.copy())
    return np.stack(out)


def np_adam(lr, b1=0.9, b2=0.999, eps=1e-8, steps=3):
    x, m, s, out = X0.copy(), np.zeros(3), np.zeros(3), []
    for t in range(1, steps + 1):
        g = grad_np(x)
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * g**2
        x = x - _rate(lr, t - 1) * (m / (1 - b1**t)) / (np.sqrt(s / (1 - b2**t)) + eps)
        out.append(x.copy())
    return np.stack(out)


def np_adagrad(lr, init=0.1, eps=1e-7, steps=3):
    x, acc, out = X0.copy(), np.full(3, init), []
    for _ in range(steps):
        g = grad_np(x)
        acc = acc + g**2
        x = x - lr * g / np.sqrt(acc + eps)
        out.append(x.copy())
    return np.stack(out)


def np_rmsprop(lr, decay=0.9, eps=1e-8, steps=3):
    x, nu, out = X0.copy(), np.zeros(3), []
    for _ in range(steps):
        g = grad_np(x)
        nu = decay * nu + (1 - decay) * g**2
        x = x - lr * g / np.sqrt(nu + eps)  # optax's default puts ε inside the root
        out.append(x.copy())
    return np.stack(out)


def np_lbfgs_fixed_step(lr, memory=10, steps=3):
    """Two-loop recursion, initial Hessian γI with γ = sᵀy / yᵀy, and γ = min(1, 1/‖g‖) on the
    first step (optax's documented choice)."""
    x, out, s_list, y_list = X0.copy(), [], [], []
    g = grad_np(x)
    for _ in range(steps):
        q = g.copy()
        alphas = []
        for s, y in reversed(list(zip(s_list, y_list, strict=True))):
            a = (s @ q) / (y @ s)
            alphas.append(a)
            q = q - a * y
        if s_list:
            gamma = (s_list[-1] @ y_list[-1]) / (y_list[-1] @ y_list[-1])
        else:
            gamma = min(1.0, 1.0 / np.linalg.norm(g))
        r = gamma * q
        for (s, y), a in zip(zip(s_list, y_list, strict=True), reversed(alphas), strict=True):
            b = (y @ r) / (y @ s)
            r = r + s * (a - b)
        x_new = x - lr * r
        g_new = grad_np(x_new)
        s_list.append(x_new - x)
        y_list.append(g_new - g)
        s_list, y_list = s_list[-memory:], y_list[-memory:]
        x, g = x_new, g_new
        out.append(x.copy())
    return np.stack(out)


def np_cg_fixed_step(lr, steps=3):
    """Polak–Ribière+ with restart when the direction is not a descent direction."""
    x, out, g_prev, p = X0.copy(), [], None, None
    for _ in range(steps):
        g = grad_np(x)
        if g_prev is None:
            p = g
        else:
            beta = max(0.0, g @ (g - g_prev) / (g_prev @ g_prev))
            p = g + beta * p
            if g @ p <= 0:
                p = g
        x = x - lr * p
        g_prev = g
        out.append(x.copy())
    return np.stack(out)


@pytest.fixture(autouse=True, scope="module")
def float64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize(
    "tx, reference",
    [
        (make_baseline("sgd", learning_rate=0.1), np_sgd(0.1)),
        (make_baseline("momentum", learning_rate=0.1, momentum=0.9), np_momentum(0.1, 0.9)),
        (make_baseline("adam", learning_rate=0.05), np_adam(0.05)),
        (make_baseline("adagrad", learning_rate=0.3), np_adagrad(0.3)),
        (make_baseline("rmsprop", learning_rate=0.01), np_rmsprop(0.01)),
        (optax.lbfgs(learning_rate=0.2, linesearch=None), np_lbfgs_fixed_step(0.2)),
        (conjugate_gradient(learning_rate=0.2), np_cg_fixed_step(0.2)),
        (make_baseline("momentum_cosine", learning_rate=0.1, momentum=0.9, decay_steps=2),
         np_momentum(np_cosine(0.1, 2), 0.9)),
        (make_baseline("adam_cosine", learning_rate=0.05, decay_steps=2),
         np_adam(np_cosine(0.05, 2))),
    ],
    ids=["sgd", "momentum", "adam", "adagrad", "rmsprop", "lbfgs-fixed-step", "cg-fixed-step",
         "momentum-cosine", "adam-cosine"],
)
def test_matches_numpy_for_three_steps(tx, reference):
    np.testing.assert_allclose(run_optax(tx), reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_tuned_baseline_decreases_a_convex_quadratic(name):
    spec = BASELINES[name]
    points = spec.grid_points(num_steps=30)   # sets decay_steps = 30 where there is one
    grid = {k: jnp.asarray([p[k] for p in points]) for k in spec.grid}
    fixed = {k: v for k, v in points[0].items() if k not in spec.grid}
    assert fixed == ({"decay_steps": 30} if name in COSINE else {})

    def final_value(hp):
        x = jnp.asarray(X0)
        tx = spec.factory(**hp, **fixed)

        def step(carry, _):
            x, state = carry
            v, g = jax.value_and_grad(f)(x)
            u, state = tx.update(g, state, x, value=v, grad=g, value_fn=f)
            return (optax.apply_updates(x, u), state), None

        return f(jax.lax.scan(step, (x, tx.init(x)), length=30)[0][0])

    finals = np.asarray(jax.jit(jax.vmap(final_value))(grid))
    assert np.nanmin(finals) < 0.1 * float(f(jnp.asarray(X0)))


@pytest.mark.parametrize("tx", [conjugate_gradient(), optax.lbfgs()], ids=["cg", "lbfgs"])
def test_line_search_methods_solve_a_quadratic_in_about_n_steps(tx):
    traj = run_optax(tx, steps=10)
    assert float(f(traj[-1])) < 1e-9 * float(f(jnp.asarray(X0)))


def test_make_baseline_errors():
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline("newton")
    with pytest.raises(TypeError, match="missing"):
        make_baseline("momentum", learning_rate=0.1)
    with pytest.raises(TypeError, match="unknown"):
        make_baseline("sgd", learning_rate=0.1, momentum=0.9)
    # The horizon is a required hyperparameter of the cosine baselines, and only of them.
    with pytest.raises(TypeError, match=r"missing \['decay_steps'\], unknown \[\]"):
        make_baseline("adam_cosine", learning_rate=0.01)
    with pytest.raises(TypeError, match=r"missing \[\], unknown \['momentum'\]"):
        make_baseline("adam_cosine", learning_rate=0.01, decay_steps=400, momentum=0.9)
    with pytest.raises(TypeError, match=r"missing \['decay_steps', 'momentum'\]"):
        make_baseline("momentum_cosine", learning_rate=0.01)
    with pytest.raises(TypeError, match=r"unknown \['decay_steps'\]"):
        make_baseline("adam", learning_rate=0.01, decay_steps=400)
    with pytest.raises(TypeError, match="decay_steps .* must be a Python int"):
        make_baseline("adam_cosine", learning_rate=0.01, decay_steps=400.0)
    with pytest.raises(ValueError, match="positive"):
        make_baseline("adam_cosine", learning_rate=0.01, decay_steps=0)
    with pytest.raises(TypeError, match=r"grid_points\(num_steps=...\)"):
        BASELINES["momentum_cosine"].grid_points()


def run_traced(tx):
    """Three steps of ``tx`` on f from X0 (under jit the Python loop unrolls into one program)."""
    x = jnp.asarray(X0)
    state = tx.init(x)
    for _ in range(3):
        v, g = jax.value_and_grad(f)(x)
        u, state = tx.update(g, state, x, value=v, grad=g, value_fn=f)
        x = optax.apply_updates(x, u)
    return x


def test_baselines_accept_traced_hyperparameters():
    @jax.jit
    @jax.vmap
    def final(lr):
        return run_traced(make_baseline("adam", learning_rate=lr))

    expected = np.stack([np_adam(0.05)[-1], np_adam(0.01)[-1]])
    np.testing.assert_allclose(final(jnp.array([0.05, 0.01])), expected, rtol=1e-10)


# --- cosine decay to 0 over the horizon ------------------------------------------------------

C = np.array([0.5, -2.0, 1.0])


def linear(x):
    return jnp.asarray(C) @ x


@pytest.mark.parametrize("mu", [0.0, 0.9])
def test_momentum_cosine_steps_are_the_optax_cosine_schedule(mu):
    """On f(x) = c·x the gradient is c at every step, so the step at t is −lr_t·v_t with
    v_t = μ v_{t−1} + c and lr_t = optax.cosine_decay_schedule(peak, T)(t): 0 from t = T on."""
    peak, horizon, steps = 0.3, 5, 8
    tx = make_baseline("momentum_cosine", learning_rate=peak, momentum=mu, decay_steps=horizon)
    xs = run_optax(tx, steps=steps, fn=linear)
    taken = np.diff(np.concatenate([X0[None], xs]), axis=0)
    schedule = optax.cosine_decay_schedule(init_value=peak, decay_steps=horizon)
    lr = np.array([float(schedule(t)) for t in range(steps)])
    np.testing.assert_allclose(lr, [np_cosine(peak, horizon)(t) for t in range(steps)],
                               atol=1e-12)
    assert lr[0] == peak and np.all(lr[horizon:] == 0)   # optax holds the final value, 0
    v = np.cumsum(mu ** np.arange(steps))[:, None] * C   # v_t = Σ_{k≤t} μ^k c
    np.testing.assert_allclose(taken, -lr[:, None] * v, rtol=1e-10, atol=1e-15)
    assert np.all(taken[horizon:] == 0)                  # a longer run stops at T


def test_adam_cosine_is_optax_adam_with_the_cosine_schedule():
    peak, horizon, steps = 0.05, 4, 7
    ours = run_optax(make_baseline("adam_cosine", learning_rate=peak, decay_steps=horizon),
                     steps=steps)
    direct = run_optax(optax.adam(optax.cosine_decay_schedule(peak, horizon)), steps=steps)
    np.testing.assert_allclose(ours, direct, rtol=1e-12)
    np.testing.assert_allclose(ours, np_adam(np_cosine(peak, horizon), steps=steps), rtol=1e-10)
    np.testing.assert_array_equal(ours[horizon:], ours[horizon - 1:horizon].repeat(3, 0))
    # A constant rate moves on where the decayed one has stopped.
    assert not np.allclose(ours, np_adam(peak, steps=steps))


@pytest.mark.parametrize("name", COSINE)
def test_cosine_baselines_accept_traced_peaks_under_vmap(name):
    spec = BASELINES[name]
    extra = {"momentum": 0.9} if name == "momentum_cosine" else {}
    reference = np_momentum if name == "momentum_cosine" else np_adam
    peaks = jnp.array([0.05, 0.01, 0.2])

    @jax.jit
    @jax.vmap
    def last(peak):
        return run_traced(spec.factory(learning_rate=peak, decay_steps=4, **extra))

    args = (0.9,) if extra else ()
    expected = np.stack([reference(np_cosine(float(p), 4), *args)[-1] for p in peaks])
    np.testing.assert_allclose(last(peaks), expected, rtol=1e-10)
    with pytest.raises(TypeError, match="must be a Python int"):   # the horizon is never traced
        jax.jit(lambda steps: spec.factory(learning_rate=0.1, decay_steps=steps, **extra)
                .init(jnp.zeros(3)))(4)


@pytest.mark.parametrize("name", COSINE)
def test_cosine_baselines_tune_with_traced_peaks_and_a_static_horizon(name):
    spec = BASELINES[name]
    task = QuadraticTask(curvature=jnp.array([1.0, 0.3, 0.1, 0.03]))
    points = spec.grid_points(num_steps=20)
    points = [p for p in points if p.get("momentum", 0.9) == 0.9][::2]   # fewer, still several
    result = tune(spec.factory, points, task, [0, 1], num_steps=20, eval_every=10,
                  grid_batch_size=2)
    assert all(p["decay_steps"] == 20 for p in result.grid)
    assert result.best["decay_steps"] == 20 and np.isfinite(result.scores[result.best_index])
    assert len(set(np.round(result.scores[np.isfinite(result.scores)], 6))) > 2   # peaks matter
    for i in (0, result.best_index):                  # a traced row equals a plain one-off run
        single = unroll(make_baseline(name, **result.grid[i]), task, jax.random.key(1),
                        num_steps=20, eval_every=10)
        np.testing.assert_allclose(result.curves[i, 1], single.true_loss, rtol=2e-5)


def test_run_grid_runs_each_static_horizon_as_its_own_program():
    spec = BASELINES["adam_cosine"]
    task = QuadraticTask(curvature=jnp.array([1.0, 0.3]))
    grid = [{"learning_rate": 0.1, "decay_steps": 10}, {"learning_rate": 0.1, "decay_steps": 20},
            {"learning_rate": 0.3, "decay_steps": 10}]
    curves = run_grid(spec.factory, grid, task, [0], num_steps=20, eval_every=10)
    for point, row in zip(grid, curves, strict=True):
        alone = run_grid(spec.factory, [point], task, [0], num_steps=20, eval_every=10)[0]
        np.testing.assert_array_equal(row, alone)
    assert not np.allclose(curves[0], curves[1]) and not np.allclose(curves[0], curves[2])


def test_a_tuned_row_with_decay_steps_round_trips():
    """What results.json stores is what make_baseline, the figure scripts and the training job
    (``run_grid(spec.factory, [hyperparams])``) take back."""
    spec = BASELINES["momentum_cosine"]
    point = spec.grid_points(num_steps=400)[12]
    row = json.loads(json.dumps({"hyperparams": point}))["hyperparams"]
    assert row == point and type(row["decay_steps"]) is int and row["decay_steps"] == 400
    tx = make_baseline("momentum_cosine", **row)
    direct = optax.sgd(optax.cosine_decay_schedule(row["learning_rate"], 400),
                       momentum=row["momentum"])
    np.testing.assert_allclose(run_optax(tx, steps=5), run_optax(direct, steps=5), rtol=1e-12)
    task = QuadraticTask(curvature=jnp.array([1.0, 0.3]))
    curves = run_grid(spec.factory, [row], task, [0, 1], num_steps=20, eval_every=10)
    assert curves.shape == (1, 2, 3) and np.all(np.isfinite(curves))
    # Only tuned knobs can sit at a grid edge; the fixed horizon never does.
    interior = {"learning_rate": 0.03, "momentum": 0.9, "decay_steps": 400}
    assert not _at_grid_edge(interior, spec.grid)
    assert _at_grid_edge({**interior, "learning_rate": max(spec.grid["learning_rate"])}, spec.grid)
    assert _at_grid_edge({**interior, "momentum": 0.99}, spec.grid)


def test_cosine_grids_extend_the_constant_rate_grids_upward():
    for cosine, constant in (("adam_cosine", "adam"), ("momentum_cosine", "momentum")):
        grid, base = BASELINES[cosine].grid, BASELINES[constant].grid
        assert set(grid) == set(base) and BASELINES[cosine].horizon == "decay_steps"
        lrs, base_lrs = grid["learning_rate"], base["learning_rate"]
        assert lrs[:-1] == base_lrs                             # one half-decade more upward
        assert lrs[-1] / base_lrs[-1] in (pytest.approx(3.0), pytest.approx(10 / 3))
        assert grid.get("momentum") == base.get("momentum")
        assert "cosine decay to 0 over the horizon" in BASELINES[cosine].description
    assert {"adam_cosine", "momentum_cosine", "adam", "momentum", "sgd", "adagrad", "rmsprop",
            "lbfgs", "conjugate_gradient"} == set(get_config("paper").baselines)


def test_suite_sets_the_horizon_and_records_it(tmp_path):
    config = dataclasses.replace(get_config("quick"), num_steps=10, eval_every=5,
                                 baselines=("adam_cosine",), tuning_seeds=(0,), eval_seeds=(7,))
    with jax.enable_x64(False):
        out = run_baseline_suite(config, tmp_path)
    row = json.loads(out["paths"]["json"].read_text())["optimizers"]["adam_cosine"]
    assert row["hyperparams"]["decay_steps"] == 10
    assert set(row["hyperparams"]) == {"learning_rate", "decay_steps"}
    assert row["at_grid_edge"] == (row["hyperparams"]["learning_rate"]
                                   in (1e-4, max(BASELINES["adam_cosine"].grid["learning_rate"])))
    assert all(p["decay_steps"] == 10 for p in row["grid"])
    assert np.all(np.isfinite(np.asarray(row["true_loss"])))
