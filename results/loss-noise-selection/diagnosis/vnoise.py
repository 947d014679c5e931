import functools, json, sys
import numpy as np, jax
sys.path.insert(0, "/tmp/nd")
from metaopt.evaluation.unroll import unroll
from metaopt.evaluation.tuning import seed_keys
from metaopt.evaluation.generalization import suite_tasks
from metaopt.learned_optimizer import learned_opt
from metaopt.pretrained import scale_free_family_info
from metaopt.serialization import load
from metaopt.training.families import FAMILIES, FamilyMember
alpha = scale_free_family_info().get("fan_in_exponent", 0.0)
make = functools.partial(learned_opt, load("metaopt/assets/scale_free_family.metaopt"), fan_in_exponent=alpha)
exec(open("/tmp/nd/members.py").read())
items = [(m.name, m.task(), 400) for m in members] + [(s.name, s.task(), s.num_steps) for s in suite_tasks()]
res = {}
for name, task, H in items:
    H = min(H, 400)
    mb = np.asarray(jax.jit(jax.vmap(lambda k: unroll(make(), task, k, num_steps=H).minibatch_loss))(seed_keys((0,1,2,3,4))))
    r = np.diff(mb, axis=1) / (0.5 * (mb[:, 1:] + mb[:, :-1]))
    def w(a, b): return float(np.sqrt(np.mean(r[:, a:b] ** 2) / 2))
    # log-value noise: std of log f̂ around a 21-step moving average
    lg = np.log(mb)
    k = 21
    ker = np.ones(k) / k
    sm = np.stack([np.convolve(x, ker, mode="valid") for x in lg])
    dev = lg[:, k // 2: k // 2 + sm.shape[1]] - sm
    res[name] = dict(d10_50=w(0, 50), d50_150=w(50, 150), d150_400=w(150, 400), ma=float(dev[:, 40:].std()))
    print(f"{name:55s} diff-noise 0-50 {res[name]['d10_50']:.3f} 50-150 {res[name]['d50_150']:.3f} 150-400 {res[name]['d150_400']:.3f}  ma {res[name]['ma']:.3f}", flush=True)
json.dump(res, open("/tmp/nd/vnoise.json", "w"))
