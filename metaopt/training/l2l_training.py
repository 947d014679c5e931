"""Meta-training a learned optimizer by truncated back-propagation through time (BPTT).

By default the optimizer is :func:`metaopt.optimizers.l2l.l2l_opt` (the L2L baseline); any factory
``optimizer(theta) → GradientTransformationExtraArgs`` with ``update(grads, state, params, *,
value)`` works the same way (e.g. ``metaopt.learned_opt`` with a scale-free MLP policy, to measure
what its function class reaches when optimised directly).

As Andrychowicz et al. 2016: a batch of optimizees (fresh random x_0 each) is optimised by the
L2L net for ``horizon`` steps; every ``truncation`` steps the meta-loss

  L(θ) = Σ_{k=1..truncation} f̂_k(x_k)     (minibatch objectives along the truncation)

is back-propagated through the unrolled steps into θ, with the optimizee gradients and minibatch
objectives fed to the optimizer treated as constants (``stop_gradient``: no second derivatives),
and θ takes one Adam step.
The optimizee state (x, LSTM memory, last gradient) carries over to the next truncation.

Pure pieces (jit-compiled, ``lax.scan`` over time, ``vmap`` over the optimizee batch):
:func:`init_optimizees`, :func:`truncation_loss`, :func:`make_meta_step`, :func:`make_evaluator`;
:func:`train_l2l` is the Python driver (progress bar, log, best-checkpoint selection).

Example::

  task = make_dataset_task(TrainConfig.paper(), eval_subset=5000)
  result = train_l2l(task, L2LTrainConfig(trajectories=100), select_task=task)
  result["best_theta"], result["log"]
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from metaopt.evaluation.tuning import seed_keys
from metaopt.evaluation.unroll import unroll
from metaopt.optimizers.guards import all_finite
from metaopt.optimizers.l2l import init_l2l, l2l_opt

__all__ = [
    "L2LTrainConfig",
    "OptimizeeState",
    "evaluate_seeds",
    "init_optimizees",
    "make_evaluator",
    "make_meta_step",
    "train_l2l",
    "truncation_loss",
]


@dataclasses.dataclass(frozen=True)
class L2LTrainConfig:
    """Attributes:
    horizon: optimizee steps per trajectory (the paper's T = 400).
    truncation: steps per meta-update (BPTT length, 20 as Andrychowicz et al.).
    batch_size: optimizees per meta-step (vmapped; the meta-loss is their mean).
    trajectories: number of optimizee trajectories (batches of ``batch_size``) to train on.
    learning_rate: Adam step size on θ.
    select_every: evaluate θ on the selection seeds every this many trajectories (0: never).
    select_seeds: seeds of the selection runs (``jax.random.key(seed)`` as in tuning).
    max_seconds: stop after this much wall time (the best θ so far is kept).
    seed: seeds θ's initialisation and the training optimizees (keys disjoint from the seeds).
    second_order: keep the optimizee gradients and objectives fed to the optimizer in the
      back-propagation (exact meta-gradient, Hessian-vector products; the L2L paper drops them).
    """

    horizon: int = 400
    truncation: int = 20
    batch_size: int = 4
    trajectories: int = 100
    learning_rate: float = 1e-3
    select_every: int = 10
    select_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    max_seconds: float = math.inf
    seed: int = 0
    second_order: bool = False


class OptimizeeState(NamedTuple):
    """One optimizee between truncations (a leading batch axis when batched).

    Attributes:
      params: the iterate x_t.
      opt_state: the L2L optimizer's state (LSTM memory per coordinate).
      grad: ∇f̂_t(x_t), already computed (the loss at x_t belongs to the previous truncation).
      value: f̂_t(x_t), passed to the optimizer as ``value``.
      step: int32 t.
      data_key: seeds the minibatch of every step (``fold_in(data_key, t)``).
    """

    params: Any
    opt_state: Any
    grad: Any
    value: jax.Array
    step: jax.Array
    data_key: jax.Array


def _minibatch_key(data_key, step):
    return jax.random.fold_in(data_key, step)


def init_optimizees(theta: Any, task: Any, keys: jax.Array, optimizer: Callable = l2l_opt
                    ) -> OptimizeeState:
    """Fresh optimizees, one per key (``keys``: ``(batch,)``): random x_0, fresh optimizer state."""

    def one(key):
        init_key, data_key = jax.random.split(key)
        params = task.init_params(init_key)
        value, grad = jax.value_and_grad(task.minibatch_loss)(params, _minibatch_key(data_key, 0))
        opt_state = optimizer(theta).init(params)
        return OptimizeeState(params, opt_state, grad, value, jnp.zeros((), jnp.int32), data_key)

    return jax.vmap(one)(keys)


def truncation_loss(
    theta: Any, task: Any, state: OptimizeeState, truncation: int, optimizer: Callable = l2l_opt,
    second_order: bool = False,
) -> tuple[jax.Array, OptimizeeState]:
    """Σ_{k=1..truncation} f̂(x_{t+k}) for one optimizee, differentiable in ``theta``.

    Returns ``(meta_loss, state after the truncation)``; the gradients fed to the optimizer are
    ``stop_gradient``-ed, so d(meta_loss)/dθ has no second derivatives of f̂, unless
    ``second_order`` (then the meta-gradient is exact).
    """
    tx = optimizer(theta)

    def step(carry, _):
        params, opt_state, grad, value, t = carry
        updates, opt_state = tx.update(grad, opt_state, params, value=value)
        params = optax.apply_updates(params, updates)
        value, grad = jax.value_and_grad(task.minibatch_loss)(
            params, _minibatch_key(state.data_key, t + 1)
        )
        stop = (lambda a: a) if second_order else jax.lax.stop_gradient
        return (params, opt_state, stop(grad), stop(value), t + 1), value

    carry = (state.params, state.opt_state, state.grad, state.value, state.step)
    (params, opt_state, grad, value, t), values = jax.lax.scan(step, carry, length=truncation)
    return jnp.sum(values), OptimizeeState(params, opt_state, grad, value, t, state.data_key)


def make_meta_step(meta_tx: optax.GradientTransformation, truncation: int,
                   optimizer: Callable = l2l_opt, second_order: bool = False):
    """A jitted meta-update ``(theta, meta_state, task, states) → (theta, meta_state, states, info)``.

    ``states`` is a batched :class:`OptimizeeState`; the meta-loss is the batch mean of
    :func:`truncation_loss`. A meta-gradient with NaN/inf is not applied (``info["applied"]``
    False); the optimizees still advance.
    """

    def batch_loss(theta, task, states):
        losses, new_states = jax.vmap(
            lambda s: truncation_loss(theta, task, s, truncation, optimizer, second_order)
        )(states)
        return jnp.mean(losses), (losses, new_states)

    @jax.jit
    def meta_step(theta, meta_state, task, states):
        (loss, (losses, new_states)), grads = jax.value_and_grad(batch_loss, has_aux=True)(
            theta, task, states
        )
        new_states = jax.lax.stop_gradient(new_states)
        ok = all_finite(grads) & jnp.isfinite(loss)
        updates, new_meta_state = meta_tx.update(grads, meta_state, theta)
        new_theta = optax.apply_updates(theta, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        info = {"meta_loss": loss, "losses": losses, "applied": ok,
                "grad_norm": optax.tree.norm(grads)}
        return keep(new_theta, theta), keep(new_meta_state, meta_state), new_states, info

    return meta_step


@functools.lru_cache(maxsize=8)
def make_evaluator(num_steps: int, eval_every: int = 10, optimizer: Callable = l2l_opt):
    """A jitted ``(theta, task, keys) → (num_keys, num_steps // eval_every + 1)`` true-loss curves.

    Same protocol as :func:`metaopt.evaluation.tuning.run_grid` (``unroll`` per key), with θ an
    argument so that evaluating many checkpoints compiles once (cached per schedule).
    """

    @jax.jit
    def evaluate(theta, task, keys):
        tx = optimizer(theta)
        return jax.vmap(
            lambda k: unroll(tx, task, k, num_steps=num_steps, eval_every=eval_every).true_loss
        )(keys)

    return evaluate


def _final_score(curves: np.ndarray) -> float:
    final = curves[:, -1]
    return float(final.mean()) if np.all(np.isfinite(final)) else math.inf


def train_l2l(
    task: Any,
    config: L2LTrainConfig,
    *,
    select_task: Any | None = None,
    theta: Any | None = None,
    progress: bool = True,
    optimizer: Callable = l2l_opt,
    init_theta: Callable[[jax.Array], Any] = init_l2l,
    description: str = "L2L meta-training",
    on_new_best: Callable[[Any, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Meta-trains L2L on ``task``; keeps the θ with the best mean final true objective on
    ``select_task`` (default ``task``) over ``config.select_seeds``.

    Returns a dict: ``theta`` (last), ``best_theta``, ``best_score``, ``best_trajectory``,
    ``log`` (per trajectory: mean meta-loss per truncation and optimizee, the last truncation's,
    skipped meta-updates, wall time), ``selection`` (per evaluation: trajectory, score),
    ``seconds_per_truncation`` (steady state) and ``wall_time_s``. ``optimizer`` and
    ``init_theta`` (a fresh θ from a key, used when ``theta`` is None) default to L2L's.
    ``on_new_best(theta, entry)`` is called whenever a selection run improves on the best (e.g. to
    save it as training goes).
    """
    if config.horizon % config.truncation:
        raise ValueError(f"horizon {config.horizon} must be a multiple of truncation "
                         f"{config.truncation}.")
    start = time.perf_counter()
    key = jax.random.key(10_000 + config.seed)
    init_key, data_root = jax.random.split(key)
    theta = init_theta(init_key) if theta is None else theta
    meta_tx = optax.adam(config.learning_rate)
    meta_state = meta_tx.init(theta)
    meta_step = make_meta_step(meta_tx, config.truncation, optimizer, config.second_order)
    select_task = task if select_task is None else select_task
    evaluate = make_evaluator(config.horizon, 10, optimizer)
    select_keys = seed_keys(config.select_seeds)
    init = jax.jit(init_optimizees, static_argnums=3)
    truncations = config.horizon // config.truncation

    def select(trajectory):
        curves = np.asarray(evaluate(theta, select_task, select_keys))
        return {"trajectory": trajectory, "score": _final_score(curves)}

    selection, log, timings = [], [], []
    best = select(0) if config.select_every else {"trajectory": 0, "score": math.inf}
    if config.select_every:
        selection.append(best)
    best_theta = theta
    bar = tqdm(range(config.trajectories), desc=description, unit="traj",
               disable=not progress)
    for trajectory in bar:
        keys = jax.random.split(jax.random.fold_in(data_root, trajectory), config.batch_size)
        states = init(theta, task, keys, optimizer)
        losses, skipped = [], 0
        for _ in range(truncations):
            t0 = time.perf_counter()
            theta, meta_state, states, info = meta_step(theta, meta_state, task, states)
            loss = float(info["meta_loss"])
            timings.append(time.perf_counter() - t0)
            skipped += int(not bool(info["applied"]))
            losses.append(loss / config.truncation)
            if not math.isfinite(loss):
                break  # the optimizees diverged: start a fresh trajectory
        log.append({
            "trajectory": trajectory + 1,
            "mean_minibatch_loss": float(np.mean(losses)),
            "last_truncation_loss": losses[-1],
            "truncations": len(losses),
            "skipped_meta_updates": skipped,
            "wall_s": round(time.perf_counter() - start, 2),
        })
        bar.set_postfix(loss=f"{log[-1]['mean_minibatch_loss']:.4f}", best=f"{best['score']:.4f}")
        done = trajectory + 1 == config.trajectories
        out_of_time = time.perf_counter() - start > config.max_seconds
        if config.select_every and ((trajectory + 1) % config.select_every == 0 or done
                                    or out_of_time):
            entry = select(trajectory + 1)
            selection.append(entry)
            if entry["score"] < best["score"]:
                best, best_theta = entry, theta
                if on_new_best is not None:
                    on_new_best(theta, entry)
        if out_of_time:
            break
    steady = timings[1:] if len(timings) > 1 else timings
    return {
        "theta": theta,
        "best_theta": best_theta,
        "best_score": best["score"],
        "best_trajectory": best["trajectory"],
        "log": log,
        "selection": selection,
        "seconds_per_truncation": float(np.median(steady)) if steady else math.nan,
        "wall_time_s": time.perf_counter() - start,
    }


def evaluate_seeds(theta: Any, task: Any, seeds: Sequence[int], num_steps: int,
                   eval_every: int = 10, optimizer: Callable = l2l_opt) -> np.ndarray:
    """True-objective curves ``(len(seeds), num_steps // eval_every + 1)`` on ``task``."""
    return np.asarray(make_evaluator(num_steps, eval_every, optimizer)(theta, task,
                                                                       seed_keys(seeds)))
