"""``learned_opt``: a meta-trained policy shipped as an optax gradient transformation."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaopt import features
from metaopt.features import OBS_DIM
from metaopt.fused_policy import fused_policy_available, fused_policy_step
from metaopt.mlp_policy import is_mlp_policy
from metaopt.optimizers.guards import check_finite_weights, check_float_leaves, scalar_objective
from metaopt.policy import LSTMCarry, Theta, apply_policy, init_carry, policy_hidden_size
from metaopt.scale_free_optimizer import learning_rate_at, scale_free_opt

__all__ = ["LearnedOptState", "learned_opt"]


class LearnedOptState(NamedTuple):
    """State of :func:`learned_opt` with the paper's LSTM policy, laid out the optax way: every
    per-leaf field is one tree shaped like ``params`` (so ``optax.tree_utils.tree_get``, flax
    ``nnx.Optimizer`` and Orbax see plain trees).

    Attributes:
      count: int32, number of finite ``value``s seen (the objective's step index t).
      prev_value: float32, the last finite ``value`` f̂(t−1).
      leaf_count: per leaf int32, observations folded into that leaf's history (it stops while
        the leaf is skipped for a non-finite gradient).
      prev_iterate: per leaf x(t−1), in the leaf's dtype.
      prev_delta: per leaf float32 x(t−1) − x(t−2).
      prev_grad_abs: per leaf float32 |ĝ(t−1)|.
      cell, hidden: per leaf the policy's LSTM memory, ``leaf.shape + (H,)`` float32.
      nonfinite_count: int32, number of updates in which some leaf was skipped because its
        gradient, its parameters or ``value`` were not finite.
    """

    count: jax.Array
    prev_value: jax.Array
    leaf_count: Any
    prev_iterate: Any
    prev_delta: Any
    prev_grad_abs: Any
    cell: Any
    hidden: Any
    nonfinite_count: jax.Array


_HISTORY_FIELDS = ("leaf_count", "prev_iterate", "prev_delta", "prev_grad_abs")


# On a single CPU device the policy step runs as one fused kernel (metaopt.fused_policy, ~1.4x
# faster than XLA's matmul + loop fusions at a few thousand coordinates). Without it, leaves of
# at least 4 chunks run chunk by chunk (~1.3-1.5x faster than whole for tens of thousands).
# Accelerators, and meshes (where slicing a sharded leaf into chunks would make the partitioner
# replicate its carry, and a custom call would gather it), take leaves whole through XLA.
_CPU_CHUNK_SIZE = 1024


def _chunk_on_cpu(leaf) -> bool:
    return (
        jax.default_backend() == "cpu"
        and jax.device_count() == 1
        and leaf.size >= 4 * _CPU_CHUNK_SIZE
    )


_F32_MAX = float(jnp.finfo(jnp.float32).max)
# Cap on the stored |x(t) − x(t−1)|: then ψ3 = |x(t) − x(t−1)| / (|x(t+1) − x(t)| + 0.1) < max.
_DELTA_LIMIT = _F32_MAX / 16


def _observation_limit(theta: Theta) -> jax.Array:
    """Largest |Ψ_k| fed to the policy, so that no gate pre-activation can overflow (ours).

    Ψ is finite but may reach float32's maximum (e.g. ψ1 when f̂ jumps from ~0 to 1e30). With
    weights above 1 two such products could overflow to +inf and −inf and give a NaN gate. Capping
    each |Ψ_k| at ``max / (4 · max(Σ_k max_j |W_kj|, 1))`` keeps Σ_k Ψ_k W_kj within a quarter of
    float32's range; it changes Ψ only where |Ψ_k W_kj| would exceed ~1e37, where the gates are
    saturated anyway.
    """
    rows = jnp.abs(jnp.asarray(theta["gates"]["kernel"][:OBS_DIM], jnp.float32))
    weight = jnp.sum(jnp.max(rows, axis=-1)) if rows.size else jnp.zeros((), jnp.float32)
    return _F32_MAX / (4.0 * jnp.maximum(weight, 1.0))


def learned_opt(theta: Theta | None = None, *, learning_rate: optax.ScalarOrSchedule = 1.0,
                fan_in_exponent: float = 0.0) -> optax.GradientTransformationExtraArgs:
    """The learned optimizer: one policy step per coordinate (SPEC §1, §4).

    ``theta`` is either the paper's LSTM policy (below) or a scale-free MLP policy
    (:mod:`metaopt.mlp_policy`; then this returns :func:`metaopt.scale_free_optimizer.scale_free_opt`,
    whose step is relative to each leaf's parameter scale); ``None`` loads the shipped scale-free
    policy (``metaopt.pretrained()``; the paper's GPS-trained LSTM is
    ``metaopt.pretrained.paper_lstm()``). ``learning_rate`` multiplies every step (a float, a scalar array,
    e.g. through ``optax.inject_hyperparams``, or a schedule of the step count); meta-training
    used 1.

    Every coordinate j of every leaf observes Ψ_j(t) (3 features: relative change of the
    minibatch objective, gradient over previous |gradient| + 1, previous step over latest
    step; see :mod:`metaopt.features`) and feeds it, with its own LSTM memory, to the shared
    policy ``theta``, whose output is the step Δx_j directly (no learning rate).

    Args:
      theta: policy weights, from :func:`metaopt.policy.init_policy`, :func:`metaopt.load`
        or meta-training; ``None`` for the shipped one.
      learning_rate: multiplier of the policy's step (see above).
      fan_in_exponent: scale-free MLP policies only: a matrix's steps times
        (48 / fan-in)^α (:func:`metaopt.scale_free_optimizer.fan_in_factor`); 0 (default) is
        what meta-training used.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. ``update(grads, state, params, *, value)``
      needs ``params`` (the iterate x(t)) and the keyword ``value`` (the minibatch objective
      f̂(x(t)), a scalar); other keyword arguments are accepted and ignored. Leaves may be
      float32, bfloat16 or float64: features and the policy run in float32 and the updates
      come back in each gradient leaf's dtype.

    Non-finite inputs: a leaf whose gradient or parameters contain NaN/inf (or whose float32
    features overflow), or every leaf when ``value`` is NaN/inf, takes a zero step and keeps its
    history and LSTM memory untouched (a non-finite ``value`` also leaves ``count``/``prev_value``
    untouched); ``state.nonfinite_count`` counts the updates in which this happened. Otherwise
    the step is finite whatever the magnitudes (huge, denormal): features are capped before the
    policy (see ``_observation_limit``) and a change of x that overflows float32 is stored
    capped at float32 max / 16, so the state never holds NaN/inf and finite parameters stay
    finite after ``optax.apply_updates``. Zero-size and scalar leaves are fine.

    Speed: on a single CPU device the policy step runs as a fused C++ kernel
    (:mod:`metaopt.fused_policy`, built on first use; ``METAOPT_FUSED_POLICY=0`` turns it off),
    elsewhere through XLA; both compute the same function to float32 rounding.

    State memory: per parameter, the LSTM carry (2·H float32 = 1024 bytes for H = 128) plus
    x(t−1) in the leaf dtype and two float32 (12 bytes for float32 leaves).

    Raises:
      ValueError: ``theta`` does not have the policy's structure or holds NaN/inf weights;
        ``value`` or ``params`` missing; ``value`` not a scalar; a gradient leaf shaped unlike
        its parameter leaf, or the state made for other parameters.
      TypeError: a leaf is not floating point; ``value`` is not a real number.

    Example::

      tx = metaopt.learned_opt(theta)     # no clipping: what the evaluations ran
      state = tx.init(params)
      loss, grads = jax.value_and_grad(loss_fn)(params, batch)
      updates, state = tx.update(grads, state, params, value=loss)
      params = optax.apply_updates(params, updates)
    """
    if theta is None:
        from metaopt.pretrained import pretrained

        theta = pretrained()
    if is_mlp_policy(theta):
        return scale_free_opt(theta, learning_rate=learning_rate,
                              fan_in_exponent=fan_in_exponent)
    if fan_in_exponent != 0:
        raise ValueError("learned_opt: fan_in_exponent applies to scale-free MLP policies; the "
                         "paper's LSTM policy steps in absolute units. Leave it at 0.")
    hidden_size = policy_hidden_size(theta)
    check_finite_weights(theta, fix="Load an intact policy (metaopt.load) or the one shipped "
                                    "(metaopt.pretrained()).")

    def init_fn(params):
        check_float_leaves(params, "params", owner="learned_opt")
        history = lambda name: jax.tree.map(
            lambda x: getattr(features.init_observation_history(x), name), params)
        carry = lambda i: jax.tree.map(lambda x: init_carry(x, hidden_size)[i], params)
        return LearnedOptState(
            count=jnp.zeros((), jnp.int32),
            prev_value=jnp.zeros((), jnp.float32),
            leaf_count=jax.tree.map(lambda _: jnp.zeros((), jnp.int32), params),
            prev_iterate=history("prev_iterate"),
            prev_delta=history("prev_delta"),
            prev_grad_abs=history("prev_grad_abs"),
            cell=carry(0),
            hidden=carry(1),
            nonfinite_count=jnp.zeros((), jnp.int32),
        )

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del extra_args
        value = scalar_objective(value, owner="learned_opt")
        if params is None:
            raise ValueError(
                "learned_opt needs the current parameters: call "
                "tx.update(grads, state, params, value=loss)."
            )
        check_float_leaves(updates, "updates", owner="learned_opt")
        check_float_leaves(params, "params", owner="learned_opt")

        paths_and_grads, treedef = jax.tree_util.tree_flatten_with_path(updates)
        grad_leaves = [grad for _, grad in paths_and_grads]
        try:
            param_leaves = treedef.flatten_up_to(params)
            histories = [features.ObservationHistory(*fields) for fields in zip(
                *(treedef.flatten_up_to(getattr(state, name)) for name in _HISTORY_FIELDS),
                strict=True)]
            carries = [LSTMCarry(*c) for c in zip(treedef.flatten_up_to(state.cell),
                                                  treedef.flatten_up_to(state.hidden), strict=True)]
        except (TypeError, ValueError) as err:
            raise ValueError(
                "learned_opt: updates, params and the optimizer state must have the same "
                f"tree structure (was the state made by init(params) for these params?): {err}"
            ) from err

        for (path, grad), x, history in zip(paths_and_grads, param_leaves, histories, strict=True):
            shapes = {jnp.shape(grad), jnp.shape(x), jnp.shape(history.prev_iterate)}
            if len(shapes) != 1:
                raise ValueError(
                    f"learned_opt: leaf {jax.tree_util.keystr(path) or '<root>'} has gradient shape "
                    f"{jnp.shape(grad)}, parameter shape {jnp.shape(x)} and state shape "
                    f"{jnp.shape(history.prev_iterate)}; they must be equal (was the state made by "
                    "init(params) for these params?)."
                )

        value_ok = jnp.isfinite(value)
        objective_change = features.relative_objective_change(state.count, value, state.prev_value)
        obs_limit = _observation_limit(theta)
        use_fused_kernel = fused_policy_available(theta)
        lr = learning_rate_at(learning_rate, state.count)
        new_updates, new_histories, new_carries, skipped = [], [], [], []
        for grad, x, history, carry in zip(
            grad_leaves, param_leaves, histories, carries, strict=True
        ):
            obs, new_history = features.observation_features(history, x, grad, objective_change)
            ok = value_ok & jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(obs))  # covers grad
            # x(t) − x(t−1) may overflow float32 while Ψ stays finite (ψ3 → 0). Stored as inf, it
            # would make every later ψ3 inf and freeze the leaf: store it capped instead.
            new_history = new_history._replace(
                prev_delta=jnp.clip(new_history.prev_delta, -_DELTA_LIMIT, _DELTA_LIMIT)
            )
            capped = jnp.clip(obs, -obs_limit, obs_limit)
            if use_fused_kernel:
                new_carry, step = fused_policy_step(theta, carry, capped, active=ok)
            else:
                chunk_size = _CPU_CHUNK_SIZE if _chunk_on_cpu(grad) else None
                new_carry, step = apply_policy(
                    theta, carry, capped, active=ok, chunk_size=chunk_size
                )
            keep = lambda new, old, ok=ok: jnp.where(ok, new, old).astype(old.dtype)
            new_updates.append((lr * step).astype(grad.dtype))
            new_histories.append(jax.tree.map(keep, new_history, history))
            new_carries.append(new_carry)
            skipped.append(~ok)

        any_skipped = jnp.any(jnp.stack(skipped)) if skipped else jnp.zeros((), bool)
        field = lambda items, i: treedef.unflatten([item[i] for item in items])
        new_state = LearnedOptState(
            count=state.count + value_ok.astype(jnp.int32),
            prev_value=jnp.where(value_ok, value, state.prev_value),
            **{name: field(new_histories, i) for i, name in enumerate(_HISTORY_FIELDS)},
            cell=field(new_carries, 0),
            hidden=field(new_carries, 1),
            nonfinite_count=state.nonfinite_count + any_skipped.astype(jnp.int32),
        )
        return treedef.unflatten(new_updates), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
