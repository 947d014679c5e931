"""The ceiling of the family policy's function class, by exact BPTT over a family (issue 17).

  .venv/bin/python experiments/family_bptt_ceiling.py --budget-minutes 30 \
      --out results/family-bptt-ceiling
  .venv/bin/python experiments/family_bptt_ceiling.py --tiny --out /tmp/fbc     # ~1 min

Before calling the family GPS's remaining losses a limit of the policy, measure what the same
π (same features, same 32-unit MLP, same optimizer settings) reaches when it is optimised
directly: starting from ``--init-policy``, each meta-update takes the exact gradient (second
derivatives kept) of the mean minibatch f̂ over one whole 400-step run of two optimizees of
one family member, members in turn (``metaopt.training.l2l_training.make_meta_step`` with
``optimizer=learned_opt(·, fan_in_exponent=α)``; Adam on θ). Every ``--select-every``
meta-updates π is scored as the family GPS scores it (``scale_free_family.tuning_score``: the
geometric mean over the members of the final f on tuning seeds 0-4); the best π is kept. This
is a measurement, not the shipped method: the held-out suite is run on its output separately.
The meta-loss is each member's own mean f̂, unweighted (Adam on θ normalises the overall gradient
scale, not the members' relative scale; here their f̂ differ by less than 2×).
"""

import argparse
import json
import time
from pathlib import Path

import jax
import optax

from metaopt.evaluation.report import git_commit, machine_description
from metaopt.serialization import load, save
from metaopt.training.families import FAMILIES, family_conditions
from metaopt.training.l2l_training import init_optimizees, make_meta_step
from metaopt.training.scale_free_family import FamilyCondition, tuning_score
from metaopt.training.scale_free_gps import ScaleFreeGPSConfig, scored_optimizer


def _tiny_conditions():
    from metaopt.tasks import make_mlp_task, synthetic_classification

    x, y = synthetic_classification(jax.random.key(0), 128, 6, 3)
    return [FamilyCondition("6-8-3 mb16", make_mlp_task(x, y, widths=(6, 8, 3), batch_size=16)),
            FamilyCondition("6-5-5-3 mb4", make_mlp_task(x, y, widths=(6, 5, 5, 3),
                                                         batch_size=4))]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="mnist-wider", choices=sorted(FAMILIES))
    parser.add_argument("--init-policy", default="metaopt/assets/scale_free_family.metaopt")
    parser.add_argument("--fan-in-exponent", type=float, default=0.5)
    parser.add_argument("--meta-learning-rate", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=2, help="optimizees per meta-update")
    parser.add_argument("--select-every", type=int, default=35)
    parser.add_argument("--budget-minutes", type=float, default=30.0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tiny", action="store_true", help="two synthetic members, 10 steps")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    horizon = 10 if args.tiny else 400
    conditions = _tiny_conditions() if args.tiny else family_conditions(args.family)
    config = ScaleFreeGPSConfig(horizon=horizon, fan_in_exponent=args.fan_in_exponent,
                                select_seeds=(0, 1) if args.tiny else (0, 1, 2, 3, 4))
    optimizer = scored_optimizer(args.fan_in_exponent)
    meta_tx = optax.adam(args.meta_learning_rate)
    meta_step = make_meta_step(meta_tx, horizon, optimizer, second_order=True)
    init = jax.jit(init_optimizees, static_argnums=3)
    theta = load(args.init_policy)
    meta_state = meta_tx.init(theta)
    best_score, per_condition = tuning_score(config, conditions, theta)
    best_theta, selection, log = theta, [{"update": 0, "score": best_score, "finals": [
        f for f, _ in per_condition]}], []
    print(f"start: score {best_score:.4f} | " + " ".join(f"{f:.4f}" for f, _ in per_condition),
          flush=True)
    root = jax.random.key(20_000)
    update, budget = 0, args.budget_minutes * 60
    while time.perf_counter() - start < budget and not (args.tiny and update >= 4):
        c = update % len(conditions)
        keys = jax.random.split(jax.random.fold_in(root, update), args.batch_size)
        task = conditions[c].task
        states = init(theta, task, keys, optimizer)
        t0 = time.perf_counter()
        theta, meta_state, _, info = meta_step(theta, meta_state, task, states)
        loss = float(info["meta_loss"]) / horizon
        update += 1
        log.append({"update": update, "member": conditions[c].name, "meta_loss": loss,
                    "applied": bool(info["applied"]),
                    "seconds": round(time.perf_counter() - t0, 2)})
        if update % (2 if args.tiny else args.select_every) == 0:
            score, per_condition = tuning_score(config, conditions, theta)
            selection.append({"update": update, "score": score,
                              "finals": [f for f, _ in per_condition]})
            print(f"update {update} ({time.perf_counter() - start:.0f} s): score {score:.4f} | "
                  + " ".join(f"{f:.4f}" for f, _ in per_condition), flush=True)
            if score < best_score:
                best_score, best_theta = score, theta
    save(out / "policy.metaopt", best_theta, metadata={
        "trained_by": "exact BPTT over a family (experiments/family_bptt_ceiling.py): a "
                      "ceiling measurement, not GPS", "family": args.family,
        "init_policy": args.init_policy, "fan_in_exponent": args.fan_in_exponent,
        "selection_score_tuning_seeds": best_score})
    (out / "training_log.json").write_text(json.dumps({
        "args": vars(args), "members": [c.name for c in conditions], "selection": selection,
        "best_score": best_score, "log": log, "wall_time_s": round(time.perf_counter() - start),
        "commit": git_commit(), "machine": machine_description()}, indent=1))
    print(f"best score {best_score:.4f} (start {selection[0]['score']:.4f}) after {update} "
          f"meta-updates; "
          f"wrote {out}/policy.metaopt, training_log.json")


if __name__ == "__main__":
    main()
