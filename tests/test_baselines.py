"""Each baseline: decreases a convex quadratic, and equals a hand-written NumPy update for 3 steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metaopt.optimizers.baselines import BASELINES, make_baseline
from metaopt.optimizers.conjugate_gradient import conjugate_gradient

H = np.array([[3.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.5]])
X0 = np.array([1.0, -2.0, 0.5])


def f(x):
    return 0.5 * x @ jnp.asarray(H) @ x


def grad_np(x):
    return H @ x


def run_optax(tx, steps=3, x0=X0):
    """Iterates of ``tx`` on f, compiled once (lax.scan)."""

    def step(carry, _):
        x, state = carry
        v, g = jax.value_and_grad(f)(x)
        u, state = tx.update(g, state, x, value=v, grad=g, value_fn=f)
        x = optax.apply_updates(x, u)
        return (x, state), x

    x = jnp.asarray(x0, jnp.float64)
    return np.asarray(jax.jit(lambda x: jax.lax.scan(step, (x, tx.init(x)), length=steps)[1])(x))


# --- independent NumPy transcriptions (textbook / optax-documented defaults) -------------------

def np_sgd(lr, steps=3):
    x, out = X0.copy(), []
    for _ in range(steps):
        x = x - lr * grad_np(x)
        out.append(x.copy())
    return np.stack(out)


def np_momentum(lr, mu, steps=3):
    x, v, out = X0.copy(), np.zeros(3), []
    for _ in range(steps):
        v = mu * v + grad_np(x)
        x = x - lr * v
        out.append(x.copy())
    return np.stack(out)


def np_adam(lr, b1=0.9, b2=0.999, eps=1e-8, steps=3):
    x, m, s, out = X0.copy(), np.zeros(3), np.zeros(3), []
    for t in range(1, steps + 1):
        g = grad_np(x)
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * g**2
        x = x - lr * (m / (1 - b1**t)) / (np.sqrt(s / (1 - b2**t)) + eps)
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
    ],
    ids=["sgd", "momentum", "adam", "adagrad", "rmsprop", "lbfgs-fixed-step", "cg-fixed-step"],
)
def test_matches_numpy_for_three_steps(tx, reference):
    np.testing.assert_allclose(run_optax(tx), reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_tuned_baseline_decreases_a_convex_quadratic(name):
    spec = BASELINES[name]
    grid = {k: jnp.asarray([p[k] for p in spec.grid_points()]) for k in spec.grid}

    def final_value(hp):
        x = jnp.asarray(X0)
        tx = spec.factory(**hp)

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


def test_baselines_accept_traced_hyperparameters():
    @jax.jit
    @jax.vmap
    def final(lr):
        return run_traced(make_baseline("adam", learning_rate=lr))

    def run_traced(tx):
        x = jnp.asarray(X0)
        state = tx.init(x)
        for _ in range(3):
            v, g = jax.value_and_grad(f)(x)
            u, state = tx.update(g, state, x, value=v, grad=g, value_fn=f)
            x = optax.apply_updates(x, u)
        return x  # traced once under jit: the Python loop unrolls into one program

    expected = np.stack([np_adam(0.05)[-1], np_adam(0.01)[-1]])
    np.testing.assert_allclose(final(jnp.array([0.05, 0.01])), expected, rtol=1e-10)
