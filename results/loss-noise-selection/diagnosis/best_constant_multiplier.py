import functools, json, time, sys
import numpy as np, jax, jax.numpy as jnp, optax
from metaopt.evaluation.schedule_search import schedule_scores, criterion
from metaopt.evaluation.tuning import seed_keys
from metaopt.learned_optimizer import learned_opt
from metaopt.pretrained import scale_free_family_info
from metaopt.serialization import load
from metaopt.training.families import FAMILIES, FamilyMember

alpha = scale_free_family_info().get("fan_in_exponent", 0.0)
theta = load("metaopt/assets/scale_free_family.metaopt")
make = functools.partial(learned_opt, theta, fan_in_exponent=alpha)
members = list(FAMILIES["mnist-wider"]) + [
    FamilyMember("48-48-10 relu, minibatch 32, projection 7", batch_size=32, projection_seed=7),
    FamilyMember("48-48-10 relu, minibatch 128, projection 8", batch_size=128, projection_seed=8),
    FamilyMember("48-48-10 relu, minibatch 16, projection 9", batch_size=16, projection_seed=9),
    FamilyMember("100-200-10 relu, minibatch 64, projection 10", input_dim=100, hidden=(200,), projection_seed=10),
    FamilyMember("100-200-10 relu, minibatch 10, projection 11", input_dim=100, hidden=(200,), batch_size=10, projection_seed=11),
    FamilyMember("48-48-10 tanh, minibatch 64, projection 12", activation="tanh", projection_seed=12),
]
mults = np.array([0.6, 0.8, 1.0, 1.25, 1.6, 2.0, 2.5])
H, seeds = 400, (0, 1, 2, 3, 4)

def stats_unroll(tx, task, key, betas=(0.9, 0.99)):
    init_key, data_key = jax.random.split(key)
    params = task.init_params(init_key)
    st = tx.init(params)
    z = jax.tree.map(jnp.zeros_like, params)
    def step(carry, k):
        p, s, ms, v, t = carry
        vf = task.minibatch_objective(k)
        val, g = jax.value_and_grad(vf)(p)
        u, s = tx.update(g, s, p, value=val, grad=g, value_fn=vf)
        t = t + 1
        ms = tuple(jax.tree.map(lambda a, b: b * a + (1 - b) * gg, m, g) if False else
                   jax.tree.map(lambda a, gg, b=b: b * a + (1 - b) * gg, m, g) for m, b in zip(ms, betas))
        v = tuple(jax.tree.map(lambda a, gg, b=b: b * a + (1 - b) * gg * gg, vv, g) for vv, b in zip(v, betas))
        rhos = []
        for m, vv, b in zip(ms, v, betas):
            per = [jnp.sum(mm ** 2) / (1 - b ** t) ** 2 / (jnp.sum(x) / (1 - b ** t)) for mm, x in
                   zip(jax.tree.leaves(m), jax.tree.leaves(vv))]
            rhos.append(jnp.exp(jnp.mean(jnp.log(jnp.stack(per)))))
        return (optax.apply_updates(p, u), s, ms, v, t), jnp.stack(rhos)
    init = (params, st, (z, z), (z, z), 0)
    _, rho = jax.lax.scan(step, init, jax.random.split(data_key, H))
    return rho

out = {}
t0 = time.time()
for mem in members:
    task = mem.task()
    sc = schedule_scores(make, [task], mults[:, None] * np.ones((1, 5)), horizon=H, seeds=seeds)
    crit = [float(criterion(sc["final"][i:i+1], sc["area"][i:i+1])[0]) for i in range(len(mults))]
    rho = jax.jit(jax.vmap(lambda k: stats_unroll(make(), task, k)))(seed_keys(seeds))
    rho = np.asarray(rho).mean(0)  # (H, 2)
    out[mem.name] = {"crit": crit, "final": sc["final"][:, 0].tolist(), "area": sc["area"][:, 0].tolist(),
                     "rho90": rho[:, 0].tolist(), "rho99": rho[:, 1].tolist()}
    best = mults[int(np.argmin(crit))]
    print(f"{mem.name:48s} best c {best:.2f} crit " + " ".join(f"{c:.4f}" for c in crit)
          + " | rho90 t=20,50,100,200,400: " + " ".join(f"{rho[t-1,0]:.3f}" for t in (20,50,100,200,400))
          + " | rho99: " + " ".join(f"{rho[t-1,1]:.3f}" for t in (20,50,100,200,400)),
          f"({time.time()-t0:.0f}s)", flush=True)
json.dump(out, open("/tmp/nd/diag.json", "w"))
