# Two commands: `make train` (the main job) and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install train train-tpu train-quick train-l2l train-scale-free train-paper train-family generalization test test-slow experiments bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Main job: GPS meta-training of the scale-free MLP policy on the paper's task (48-48-10 on
# MNIST-48, T = 400; controllers on the policy's own features, pathwise C-step judged on fresh
# samples, regression S-step; ~25 min, 2 GB on 2 cores), then the policy chosen on the tuning seeds
# against the tuned baselines of results/baselines (tuned first if absent) on held-out seeds.
# Checkpoints every iteration; `make train RESUME=--resume` continues an interrupted run.
train: install
	test -f results/baselines/results.json || $(PY) -m metaopt.cli baselines --config paper --out results/baselines
	$(PY) experiments/train_scale_free_gps.py --budget-minutes 24 --out results/scale-free-gps $(RESUME)
	$(PY) -m metaopt.cli eval --policy results/scale-free-gps/policy.metaopt --out results/scale-free-gps/eval

# The paper's configuration: GPS for the 128-cell LSTM on the paper's features Ψ (its controllers
# on the 79-entry GPS state), the same pathwise C-step (~25 min, 4.7 GB), into results/train.
train-paper: install
	test -f results/baselines/results.json || $(PY) -m metaopt.cli baselines --config paper --out results/baselines
	$(PY) -m metaopt.cli train --config paper --out results/train $(RESUME)

# The paper configuration over every visible accelerator (TPU chips or GPUs; every host's with
# MESH_ARGS=--distributed on a pod / cluster): N = 10 x device count samples split over the devices,
# S-step minibatch 64 x device count (metaopt.training.mesh). Install the accelerator's jaxlib first
# (README, "Scaling out"). `make train-tpu RESUME=--resume` continues an interrupted run.
train-tpu: install
	test -f results/baselines/results.json || $(PY) -m metaopt.cli baselines --config paper --out results/baselines
	$(PY) -m metaopt.cli train --config paper --mesh --out results/train-tpu $(RESUME) $(MESH_ARGS)

train-quick: install
	$(PY) -m metaopt.cli train --config quick --out results/train-quick $(RESUME)

test: install
	$(PY) -m pytest -q -n 2

test-slow: install
	$(PY) -m pytest -q -m slow

# The paper's Figs 1-5 (results/fig1..fig5) from the shipped GPS policy and L2L weights, then the
# 2016 experiments (results/l2o2016). Baselines are tuned first if results/baselines is absent.
# About 45 min on 2 CPU cores (figures; reruns reuse finished curves) + 50 min (2016, 3 GPS seeds).
FIGURES := fig1_other_datasets fig2_larger_nets fig3_small_minibatch \
           fig4_larger_nets_small_minibatch fig5_long_horizon
experiments: install
	test -f results/baselines/results.json || $(PY) experiments/baselines.py --config paper --out results/baselines
	for f in $(FIGURES); do $(PY) experiments/$$f.py || exit 1; done
	for f in logistic robust net; do $(PY) experiments/l2o2016_$$f.py --gps-seeds 0,1,2 || exit 1; done

# The scale-free MLP policy (learned_opt()'s default) by exact BPTT on the paper's task (~25 min),
# then its suite over the training task, Figs 1-5 reports and least squares (~5 min).
train-scale-free: install
	$(PY) experiments/train_scale_free.py --budget-minutes 25
	$(PY) experiments/scale_free_suite.py --policy results/scale-free-bptt/policy.metaopt

# Issue 17: GPS over the mnist-wide family of training conditions (metaopt.training.families),
# fine-tuning the shipped single-task policy (~37 min, 3.1 GB, 2 cores; the policy shipped as
# metaopt.pretrained.scale_free_family()), then the generalisation suite: Figs 1-5 and held-out
# nets, baselines tuned on the training objective and on each test task (~19 min, 5 min when an
# earlier table.json of the same protocol supplies the baseline columns); then the optimizer
# settings (fan-in exponent x step multiplier) chosen on the training family (~8 min) and the
# suite at them (~8 min, baseline columns reused).
# `make train-family RESUME=--resume` continues an interrupted run.
train-family: install
	test -f results/baselines/results.json || $(PY) -m metaopt.cli baselines --config paper --out results/baselines
	$(PY) experiments/train_scale_free_family.py --family mnist-wide --budget-minutes 35 --out results/scale-free-family-wide $(RESUME)
	$(MAKE) generalization

generalization: install
	test -f results/baselines/results.json || $(PY) -m metaopt.cli baselines --config paper --out results/baselines
	$(PY) experiments/generalization_suite.py --policy results/scale-free-family-wide/policy.metaopt --out results/generalization-wide --also "family-trained (mnist)=results/scale-free-family/policy.metaopt"
	mkdir -p results/generalization-fan-in
	$(PY) experiments/family_selection.py --family mnist-wider --policy mnist-wide=results/scale-free-family-wide/policy.metaopt --fan-in-exponents 0,0.5,1 --learning-rates 1,1.4,2 --out results/generalization-fan-in/selection.json
	test -f results/generalization-fan-in/table.json || cp results/generalization-wide/table.json results/generalization-fan-in/
	$(PY) experiments/generalization_suite.py --policy results/scale-free-family-wide/policy.metaopt --out results/generalization-fan-in --selection results/generalization-fan-in/selection.json
	$(PY) experiments/schedule_selection.py --family mnist-wider --out results/schedule-selection
	mkdir -p results/generalization-schedule
	test -f results/generalization-schedule/table.json || cp results/generalization-fan-in/table.json results/generalization-schedule/
	$(PY) experiments/generalization_suite.py --policy results/scale-free-family-wide/policy.metaopt --out results/generalization-schedule --selection results/generalization-fan-in/selection.json --schedule results/schedule-selection/selection.json
	$(PY) experiments/schedule_selection.py --adapt loss-noise --family mnist-wider-probes --initial 1.6 1.6 1.3 1 0.6 --sweeps 6 --log-step 0.2 --out results/loss-noise-selection
	mkdir -p results/generalization-loss-noise
	test -f results/generalization-loss-noise/table.json || cp results/generalization-schedule/table.json results/generalization-loss-noise/
	$(PY) experiments/generalization_suite.py --policy results/scale-free-family-wide/policy.metaopt --out results/generalization-loss-noise --selection results/generalization-fan-in/selection.json --schedule results/schedule-selection/selection.json --loss-noise results/loss-noise-selection/selection.json

# Re-meta-train the L2L baseline (Andrychowicz et al. 2016) into metaopt/assets/l2l.metaopt (~35 min).
train-l2l: install
	$(PY) experiments/train_l2l.py --budget-minutes 30

bench: install
	$(PY) benchmarks/rollout.py
	$(PY) benchmarks/step_overhead.py
	$(PY) benchmarks/cstep.py
	$(PY) benchmarks/policy_cost.py

lint: install
	$(VENV)/bin/ruff check metaopt tests benchmarks experiments

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
