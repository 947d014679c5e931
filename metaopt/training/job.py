"""The ``metaopt train`` job: GPS meta-training, then the learned policy against tuned baselines.

``run_train_job("paper", "results/train")`` meta-trains on the paper's task (``TrainConfig.paper``)
with an Orbax checkpoint per iteration under ``<out>/checkpoints`` (``resume=True`` continues
from the latest one), writes each iteration's policy to ``<out>/policies/iter_NNN.metaopt`` and
to ``<out>/policy.metaopt`` (``metaopt.save``) the one with the lowest mean final f on the tuning
seeds (``select_policy``; never the held-out seeds), then runs the deterministic mean of that
policy (``learned_opt``) and every tuned baseline on held-out seeds (initialisation and minibatch
order never seen in meta-training) with the true objective on the whole training split.

Written into ``out``: ``results.json``, ``summary.csv``, ``curves.png`` (``write_report``),
``training_log.json`` and ``training_log.png`` (the per-iteration GPS log).

``mesh=True`` splits the rollouts' samples and the S-step's minibatches over every visible device
(``metaopt.training.mesh``), with N and the S-step minibatch grown with the device count
(``scale_to_mesh``); with several processes only process 0 writes these files.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from metaopt.evaluation.report import write_report
from metaopt.evaluation.tuning import read_tuned_baselines, run_grid, seed_keys, tune
from metaopt.evaluation.unroll import eval_steps, unroll
from metaopt.learned_optimizer import learned_opt
from metaopt.optimizers.baselines import BASELINES
from metaopt.serialization import save
from metaopt.training.gps_loop import TrainConfig, make_dataset_task, make_task, train
from metaopt.training.mesh import is_main_process, samples_mesh, scale_to_mesh

LEARNED = "learned_gps"


@dataclasses.dataclass(frozen=True)
class TrainJobConfig:
    """Meta-training hyperparameters plus how the result is evaluated.

    Attributes:
      train: the GPS run.
      eval_seeds: held-out seeds: ``jax.random.key(seed)`` seeds x_0 and the minibatch order
        exactly as in ``metaopt.evaluation`` (meta-training uses ``key(train.seed + 1)``).
      eval_every: true-objective period of the evaluation curves (over ``train.horizon`` steps).
      baselines_file: ``results.json`` of ``metaopt baselines`` whose tuned hyperparameters are
        re-run on ``eval_seeds``; ``None`` tunes ``baselines`` here on ``tuning_seeds``.
      baselines, tuning_seeds: used when ``baselines_file`` is ``None``.
    """

    train: TrainConfig
    eval_seeds: tuple[int, ...] = (100, 101, 102, 103, 104)
    eval_every: int = 10
    baselines_file: str | None = None
    baselines: tuple[str, ...] = tuple(BASELINES)
    tuning_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)


TRAIN_CONFIGS: dict[str, TrainJobConfig] = {
    # The paper's task; tuned baselines from `metaopt baselines --config paper`.
    "paper": TrainJobConfig(TrainConfig.paper(), baselines_file="results/baselines/results.json"),
    # Seconds: the tiny synthetic preset, three baselines tuned here on two seeds.
    "quick": TrainJobConfig(TrainConfig.tiny(), eval_seeds=(100, 101), eval_every=5,
                            baselines=("sgd", "momentum", "adam"), tuning_seeds=(0, 1)),
}


def get_train_config(name: str) -> TrainJobConfig:
    if name not in TRAIN_CONFIGS:
        raise ValueError(f"unknown train config {name!r}; choose one of {sorted(TRAIN_CONFIGS)}.")
    return TRAIN_CONFIGS[name]


def evaluation_task(config: TrainConfig):
    """The meta-training task with the true objective on the whole training split."""
    if config.dataset is None:
        return make_task(dataclasses.replace(config, train_eval_subset=None))
    return make_dataset_task(config, eval_subset=None)


def _log_fields(entry: dict) -> dict:
    return {
        "ctrl": f"{entry['controller_objective']:.4f}",
        "pi": f"{entry['policy_objective']:.4f}",
        "pi_T": f"{entry['policy_final_objective']:.4f}",
        "kl/eps": f"{np.sum(entry['kl']) / np.sum(entry['kl_budget']):.2f}",
        "real/pred": f"{entry.get('realized_improvement', np.nan):.4f}/"
                     f"{entry.get('predicted_improvement', np.nan):.4f}",
        "s_loss": f"{entry['s_step_loss_after']:.2e}",
    }


def _baseline_settings(job: TrainJobConfig, task, num_steps: int) -> dict[str, dict]:
    """Tuned hyperparameters per baseline: from ``baselines_file`` or tuned here."""
    if job.baselines_file is not None:
        path = Path(job.baselines_file)
        expected = {"dataset": job.train.dataset, "batch_size": job.train.batch_size,
                    "num_steps": num_steps, "input_dim": job.train.widths[0],
                    "hidden": list(job.train.widths[1:-1]), "l2": job.train.l2,
                    "activation": job.train.activation,
                    "projection_seed": job.train.projection_seed}
        rows = read_tuned_baselines(path, expected,
                                    purpose="the baselines this training job compares against")
        return {name: {"hyperparams": row["hyperparams"], "tuned_in": str(path),
                       "tuning_final_mean": row.get("tuning_final_mean")}
                for name, row in rows.items()}
    settings = {}
    for name in job.baselines:
        spec = BASELINES[name]
        result = tune(spec.factory, spec.grid_points(num_steps=num_steps), task, job.tuning_seeds,
                      num_steps=num_steps, eval_every=job.eval_every)
        settings[name] = {"hyperparams": result.best, "tuned_in": "this job",
                          "tuning_final_mean": float(result.scores[result.best_index])}
    return settings


def evaluate_against_baselines(theta, job: TrainJobConfig, out_dir, *, meta: dict) -> dict:
    """Curves of π's mean and each tuned baseline on ``job.eval_seeds``; writes the report."""
    config = job.train
    task = evaluation_task(config)
    num_steps = config.horizon
    steps = eval_steps(num_steps, job.eval_every)
    curves, details = {}, {}
    curves[LEARNED] = run_grid(lambda: learned_opt(theta), [{}], task, job.eval_seeds,
                               num_steps=num_steps, eval_every=job.eval_every)[0]
    details[LEARNED] = {"description": "GPS-trained LSTM, deterministic mean (learned_opt)",
                        "hyperparams": {}}
    for name, setting in _baseline_settings(job, task, num_steps).items():
        spec = BASELINES[name]
        curves[name] = run_grid(spec.factory, [setting["hyperparams"]], task, job.eval_seeds,
                                num_steps=num_steps, eval_every=job.eval_every)[0]
        details[name] = {"description": spec.description, **setting}
    finals = {n: float(np.mean(c[:, -1])) for n, c in curves.items()}
    best_baseline = min((n for n in finals if n != LEARNED), key=lambda n: finals[n])
    widths = "-".join(map(str, task.widths))
    verdict = {
        "learned_final_mean": finals[LEARNED],
        "best_baseline": best_baseline,
        "best_baseline_final_mean": finals[best_baseline],
        "beats_every_baseline_at_final_step": bool(
            all(finals[LEARNED] < v for n, v in finals.items() if n != LEARNED)),
    }
    paths = write_report(
        out_dir, curves=curves, steps=steps, details=details,
        meta={**meta, "task": f"{widths} {config.activation} MLP on "
                              f"{config.dataset or 'synthetic data'}, minibatch "
                              f"{config.batch_size}, l2 {config.l2}",
              "true_objective_on": task.eval_description, "eval_seeds": list(job.eval_seeds),
              "verdict": verdict},
        title=f"GPS-learned optimizer vs tuned baselines: {widths}, {num_steps} steps "
              f"(mean ± std, {len(job.eval_seeds)} held-out seeds)")
    return {"paths": paths, "curves": curves, "verdict": verdict}


def select_policy(job: TrainJobConfig, candidates: dict[str, object]):
    """The policy with the lowest mean final true objective on ``job.tuning_seeds``.

    Args:
      candidates: label → θ (e.g. "iteration 3" → that iteration's policy).

    Selection never sees ``job.eval_seeds`` (the held-out seeds the report uses): the tuning seeds
    are the ones the baselines were tuned on, so the policy is chosen as they were.

    Returns:
      ``(label, theta, scores)`` with scores label → {"final": …, "auc": …}.
    """
    task = evaluation_task(job.train)
    keys = seed_keys(job.tuning_seeds)

    @jax.jit   # θ is an argument: one compilation for every candidate
    def curves_of(theta, keys, task):
        return jax.vmap(lambda k: unroll(learned_opt(theta), task, k, num_steps=job.train.horizon,
                                         eval_every=job.eval_every).true_loss)(keys)

    scores = {}
    for label, theta in candidates.items():
        curves = np.asarray(curves_of(theta, keys, task))
        final = curves[:, -1]
        scores[label] = {"final": float(np.mean(final)) if np.all(np.isfinite(final)) else np.inf,
                         "auc": float(np.mean(np.sum(curves, -1)))}
    best = min(scores, key=lambda k: scores[k]["final"])
    return best, candidates[best], scores


def plot_training_log(path, log: list[dict]) -> None:
    """Per GPS iteration: objectives and imitation gap, predicted vs realised improvement of each
    C-step, KL vs budget, step multiplier and ν, S-step loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    it = [e["iteration"] for e in log]
    get = lambda key: [e.get(key, np.nan) for e in log]
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    ax = axes[0, 0]
    ax.plot(it, get("controller_objective"), "o-", label="controllers ψ (samples)")
    ax.plot(it, get("policy_objective"), "s-", label="π mean")
    ax.plot(it, get("policy_final_objective"), "^-", label="π mean, f(x_T)")
    rolled = [e["iteration"] for e in log if e.get("rolled_back")]
    if rolled:
        ax.plot(rolled, [np.nanmin(get("controller_objective"))] * len(rolled), "rx",
                label="rolled back")
    ax.set(title="true objective on the training condition", ylabel="mean over t of f(x_t)")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    ax.plot(it, get("imitation_gap"), "o-", color="C3")
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set(title="imitation gap: π − controllers", ylabel="Δ mean_t f")
    ax = axes[0, 2]
    # Entry i judges the C-step of iteration i − 1 on iteration i's fresh samples.
    judged = [i - 1 for i in it]
    ax.plot(judged, get("predicted_improvement"), "o-", label="predicted by the C-step")
    ax.plot(judged, get("realized_improvement"), "s-", label="realised on fresh samples (CRN)")
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set(title="improvement of J per C-step", ylabel="fall of mean_t f")
    ax.legend(fontsize=7)
    ax = axes[1, 0]
    ax.plot(it, [np.sum(e["kl"]) for e in log], "o-", label="Σ_g KL(ψ_new‖ψ)")
    ax.plot(it, [np.sum(e["kl_budget"]) for e in log], "--", label="Σ_g budget")
    ax.set_yscale("log")
    ax.set(title="C-step trust region", ylabel="nats")
    ax.legend(fontsize=7)
    ax = axes[1, 1]
    ax.plot(it, [np.mean(e["step_multiplier"]) for e in log], "o-", label="step multiplier")
    ax.plot(it, [np.mean(e["penalty"]) for e in log], "s-", label="ν (mean)")
    ax.set_yscale("log")
    ax.set(title="trust-region scale and coupling", ylabel="value (log)")
    ax.legend(fontsize=7)
    ax = axes[1, 2]
    ax.plot(it, get("s_step_loss_before"), "o-", label="before")
    ax.plot(it, get("s_step_loss_after"), "s-", label="after")
    ax.set_yscale("log")
    ax.set(title="S-step loss", ylabel="weighted squared error")
    ax.legend(fontsize=7)
    for a in axes.flat:
        a.set_xlabel("GPS iteration")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_train_job(name: str, out_dir, *, resume: bool = False, progress: bool = True,
                  iterations: int | None = None, mesh: bool = False,
                  samples_per_device: int | None = None) -> dict:
    """Meta-train with ``TRAIN_CONFIGS[name]`` into ``out_dir``, then evaluate (module docs).

    ``iterations`` overrides the preset's count (e.g. to stop a resumed run early and evaluate).
    ``mesh``: train over every device of every process (module docs); ``samples_per_device``
    (default: the preset's N) sets N = it × device count. A process other than 0 returns after
    training, with ``paths`` and ``verdict`` None.
    """
    job = get_train_config(name)
    if iterations is not None:
        job = dataclasses.replace(job, train=dataclasses.replace(job.train, iterations=iterations))
    device_mesh = samples_mesh() if mesh else None
    if device_mesh is not None:
        job = dataclasses.replace(job, train=scale_to_mesh(job.train, device_mesh.size,
                                                           samples_per_device))
    main = is_main_process()
    config = job.train
    out = Path(out_dir)
    if main:
        (out / "policies").mkdir(parents=True, exist_ok=True)
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if resume and timings_path.exists() else {}
    start = time.perf_counter()
    bar = tqdm(total=config.iterations, desc=f"GPS ({name})", unit="it",
               disable=not progress or not main)

    def on_iteration(state, entry, seconds):
        if not main:
            return
        timings[str(entry["iteration"])] = round(seconds, 2)
        timings_path.write_text(json.dumps(timings, indent=1))
        save(out / "policies" / f"iter_{int(state.iteration):03d}.metaopt", state.theta,
             metadata={"config": name, "iteration": int(state.iteration)})
        bar.n = int(state.iteration)
        bar.set_postfix(_log_fields(entry) | {"s/it": f"{seconds:.0f}"})

    sharding = {} if device_mesh is None else {"mesh": device_mesh}
    theta, log = train(config, out / "checkpoints", resume=resume, callback=on_iteration,
                       max_to_keep=None, **sharding)
    bar.n = len(log)
    bar.refresh()
    bar.close()
    train_seconds = time.perf_counter() - start
    if not main:
        return {"log": log, "paths": None, "verdict": None,
                "wall_time_s": time.perf_counter() - start}
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    config_dict = dataclasses.asdict(config)
    from metaopt.serialization import load

    candidates = {f"iteration {i}": load(p) for i, p in sorted(
        (int(p.stem.split("_")[1]), p) for p in (out / "policies").glob("iter_*.metaopt"))
        if i <= len(log)}
    candidates[f"iteration {len(log)}"] = theta       # the final state's policy
    chosen, theta, selection = select_policy(job, candidates)
    save(out / "policy.metaopt", theta,
         metadata={"config": name, "iterations": len(log), "train_config": config_dict,
                   "chosen": chosen, "selection": "lowest mean final f on the tuning seeds "
                   f"{list(job.tuning_seeds)} (never the held-out eval seeds)",
                   "tuning_scores": selection})
    with open(out / "training_log.json", "w") as fh:
        json.dump({"config": name, "train_config": config_dict,
                   "seconds_per_iteration": timings, "entries": log}, fh, indent=1)
    plot_training_log(out / "training_log.png", log)
    meta = {"job": "train", "config": name, "train_config": config_dict,
            "iterations": len(log), "seconds_per_iteration": timings,
            "policy": {"chosen": chosen, "tuning_seeds": list(job.tuning_seeds),
                       "tuning_scores": selection},
            "train_wall_time_s_this_process": round(train_seconds, 1),
            "peak_rss_gb_after_training": round(peak_rss_gb, 2),
            "jax_devices": [str(d) for d in jax.devices()]}
    if device_mesh is not None:
        meta["mesh"] = {"devices": device_mesh.size, "processes": jax.process_count(),
                        "axis": device_mesh.axis_names[0]}
    result = evaluate_against_baselines(theta, job, out, meta=meta)
    result["log"] = log
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    result["wall_time_s"] = time.perf_counter() - start
    return result


__all__ = ["TRAIN_CONFIGS", "TrainJobConfig", "evaluate_against_baselines", "get_train_config",
           "plot_training_log", "run_train_job", "select_policy"]
