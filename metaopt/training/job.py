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

from metaopt.evaluation.eval_command import LEARNED, learned_and_baseline_curves, verdict_of
from metaopt.evaluation.report import write_report
from metaopt.evaluation.tuning import read_tuned_baselines, seed_keys, tune
from metaopt.evaluation.unroll import eval_steps, unroll
from metaopt.learned_optimizer import learned_opt
from metaopt.optimizers.baselines import BASELINES
from metaopt.serialization import save
from metaopt.training.gps_loop import TrainConfig, make_dataset_task, make_task, train
from metaopt.training.mesh import is_main_process, samples_mesh, scale_to_mesh


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


def check_baselines_file(job: TrainJobConfig) -> None:
    """Raises (FileNotFoundError / ValueError) now if ``job.baselines_file`` cannot be used, so that
    a missing or mismatched report fails before training rather than after it."""
    if job.baselines_file is not None:
        _baseline_settings(job, None, job.train.horizon)


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
    curves, details = learned_and_baseline_curves(
        theta, _baseline_settings(job, task, num_steps), task, job.eval_seeds,
        num_steps=num_steps, eval_every=job.eval_every,
        description="GPS-trained LSTM, deterministic mean (learned_opt)")
    verdict = verdict_of(curves)
    widths = "-".join(map(str, task.widths))
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


def iteration_number(label) -> int | None:
    """k of ``select_policy``'s label "iteration k"; None for anything else."""
    parts = str(label).split()
    return int(parts[-1]) if len(parts) == 2 and parts[0] == "iteration" and parts[1].isdigit() \
        else None


def shipped_choice(run_dir) -> tuple[str | None, str | None]:
    """Which policy a ``run_train_job`` folder shipped, as ``(label, where it is recorded)``:
    ``policy.metaopt``'s metadata ``"chosen"``, else ``results.json``'s ``meta.policy.chosen``;
    ``(None, None)`` when neither says (runs older than ``select_policy``)."""
    from metaopt.serialization import PolicyFileError, read_header

    run = Path(run_dir)
    try:
        label = (read_header(run / "policy.metaopt").get("metadata") or {}).get("chosen")
        if label:
            return str(label), "policy.metaopt metadata"
    except (OSError, PolicyFileError):
        pass
    try:
        label = ((json.loads((run / "results.json").read_text()).get("meta") or {})
                 .get("policy") or {}).get("chosen")
    except (OSError, ValueError, AttributeError):
        label = None
    return (str(label), "results.json meta.policy") if label else (None, None)


def plot_training_log(path, log: list[dict], *, chosen_iteration: int | None = None):
    """Per GPS iteration: objectives and imitation gap, predicted vs realised improvement of each
    C-step, KL vs budget, step multiplier and ν, S-step loss. Returns the saved Figure.

    The x axis is the log's 0-based ``entry["iteration"]``; iteration i's S-step writes
    ``policies/iter_{i+1:03d}.metaopt`` (``select_policy``'s label "iteration i+1").
    ``chosen_iteration``: the shipped policy's label number k ("iteration k" in
    ``policy.metaopt``'s metadata, ``policies/iter_00k.metaopt``): the entry k − 1 that made it is
    marked on every panel. Without it, an entry with a true ``"shipped"`` field is marked.
    Log y only on panels whose values are positive and span a decade; a panel with no finite
    value says so instead of drawing empty (or crashing on) log axes.
    """
    from metaopt.evaluation.report import (
        fit_suptitle,
        log_scale_helps,
        new_figure,
        set_iteration_ticks,
    )

    nan = float("nan")
    it = [int(e["iteration"]) for e in log]
    get = lambda key: np.asarray([e.get(key, nan) for e in log], np.float64)
    per_group = lambda key, reduce: np.asarray(
        [reduce(np.asarray(e.get(key, nan), np.float64)) for e in log], np.float64)
    shipped_x, shipped_file = None, None
    if chosen_iteration is not None:
        shipped_x, shipped_file = int(chosen_iteration) - 1, int(chosen_iteration)
    else:
        flagged = [e for e in log if e.get("shipped")]
        if flagged:
            shipped_x = int(flagged[0]["iteration"])
            shipped_file = shipped_x + 1
    # Entry i judges the C-step of iteration i − 1 on iteration i's fresh samples.
    judged = [i - 1 for i in it]
    predicted, realized = get("predicted_improvement"), get("realized_improvement")
    xs = set(it) | {j for j, p, r in zip(judged, predicted, realized, strict=True)
                    if np.isfinite(p) or np.isfinite(r)}

    fig = new_figure(figsize=(15, 8.2))
    axes = fig.subplots(2, 3)
    panels = []   # (ax, title, ylabel, xlabel, [(x, y, style, label, color)])
    objective = [(it, get("controller_objective"), "o-", "controllers ψ (samples)", "C0"),
                 (it, get("policy_objective"), "s-", "π mean, mean_t f", "C1"),
                 (it, get("policy_final_objective"), "^-", "π mean, final f(x_T)", "C2")]
    panels.append((axes[0, 0], "true objective on the training condition", "f (training condition)",
                   "GPS iteration", objective))
    panels.append((axes[0, 1], "imitation gap: π − controllers", "Δ mean_t f (π − ψ)",
                   "GPS iteration", [(it, get("imitation_gap"), "o-", None, "C3")]))
    panels.append((axes[0, 2], "improvement of J per C-step", "fall of mean_t f",
                   "GPS iteration of the C-step judged",
                   [(judged, predicted, "o-", "predicted by the C-step", "C0"),
                    (judged, realized, "s-", "realised on fresh samples (CRN)", "C1")]))
    panels.append((axes[1, 0], "C-step trust region", "KL (nats)", "GPS iteration",
                   [(it, per_group("kl", np.sum), "o-", "Σ_g KL(ψ_new‖ψ)", "C0"),
                    (it, per_group("kl_budget", np.sum), "--", "Σ_g budget", "C1")]))
    # ν is orders of magnitude below the multiplier: its own (right-hand) axis, not a shared one
    coupling = axes[1, 1].twinx()
    panels.append((axes[1, 1], "trust-region scale and coupling", "step multiplier (mean)",
                   "GPS iteration",
                   [(it, per_group("step_multiplier", np.mean), "o-", "step multiplier", "C0")]))
    panels.append((coupling, "", "ν, BADMM penalty (mean over groups)", "",
                   [(it, per_group("penalty", np.mean), "s-", "ν", "C1")]))
    panels.append((axes[1, 2], "S-step loss", "weighted squared error", "GPS iteration",
                   [(it, get("s_step_loss_before"), "o-", "before", "C0"),
                    (it, get("s_step_loss_after"), "s-", "after", "C1")]))
    for ax, title, ylabel, xlabel, series in panels:
        finite = [y for _, y, *_ in series if np.isfinite(y).any()]
        log_y = log_scale_helps(*finite)
        for x, y, style, label, color in series:   # a series without data stays off the legend
            ax.plot(x, y, style, label=label if np.isfinite(y).any() else None, color=color)
        if not finite and ax is not coupling:
            ax.text(0.5, 0.7, "no finite values in this log", transform=ax.transAxes,
                    ha="center", va="center", color="0.4", gid="no-data")
        if log_y:
            ax.set_yscale("log")
        if (ax is axes[0, 1] or ax is axes[0, 2]) and not log_y:
            ax.axhline(0.0, color="k", lw=0.5)
        ax.set_ylabel(ylabel + (" (log scale)" if log_y else ""))
        if ax is coupling or ax is axes[1, 1]:   # two axes: each label in its line's colour
            ax.yaxis.label.set_color("C1" if ax is coupling else "C0")
        if ax is coupling:
            continue
        ax.set_title(title, fontsize=11)
        ax.set_xlabel(xlabel)
        set_iteration_ticks(ax, xs)
        ax.grid(True, which="both", alpha=0.3)
        if shipped_x is not None and shipped_x in it:
            ax.axvline(shipped_x, color="gold", lw=7, alpha=0.45, zorder=0, gid="shipped",
                       label=(f"shipped π (iter_{shipped_file:03d})" if ax is axes[0, 0]
                              else None))
    rolled = [e["iteration"] for e in log if e.get("rolled_back")]
    ax = axes[0, 0]
    if rolled and np.isfinite(get("controller_objective")).any():
        ax.plot(rolled, [np.nanmin(get("controller_objective"))] * len(rolled), "rx",
                label="rolled back")
    if shipped_x is not None and shipped_x in it:
        final = get("policy_final_objective")[it.index(shipped_x)]
        if np.isfinite(final):
            ax.plot([shipped_x], [final], "*", color="darkgoldenrod", ms=16, zorder=6)
    for ax, *_ in panels:
        # the twin-axis panel has none: "best" would ignore the other axis's line and cover it;
        # its y labels, coloured as the lines, say which is which
        handles, labels = ax.get_legend_handles_labels()
        if labels and ax is not coupling and ax is not axes[1, 1]:
            ax.legend(handles, labels, fontsize=7)
    title = f"GPS training log: {len(log)} iteration(s)"
    if shipped_x is not None:
        where = (f"made by GPS iteration {shipped_x} (marked)" if shipped_x in it
                 else "not in this log")
        title += (f"; shipped policy: iteration {shipped_file} "
                  f"(policies/iter_{shipped_file:03d}.metaopt), {where}")
    fit_suptitle(fig, title, fontsize=12)
    fig.savefig(path, dpi=110)
    return fig


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
    plot_training_log(out / "training_log.png", log, chosen_iteration=iteration_number(chosen))
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


__all__ = ["LEARNED", "TRAIN_CONFIGS", "TrainJobConfig", "check_baselines_file",
           "evaluate_against_baselines", "get_train_config", "iteration_number",
           "plot_training_log", "run_train_job", "select_policy", "shipped_choice"]
