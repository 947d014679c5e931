# Two commands: `make train` (the main job) and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install train train-tpu train-quick test test-slow experiments bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Main job: GPS meta-training on the paper's task (48-48-10 on MNIST-48, T = 400), then the
# learned policy vs the tuned baselines of results/baselines (tuned first if absent) on held-out
# seeds. Checkpoints every iteration; `make train RESUME=--resume` continues an interrupted run.
train: install
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

experiments: install
	$(PY) experiments/baselines.py --config paper --out results/baselines

bench: install
	$(PY) benchmarks/rollout.py
	$(PY) benchmarks/step_overhead.py
	$(PY) benchmarks/cstep.py

lint: install
	$(VENV)/bin/ruff check metaopt tests benchmarks experiments

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
