# Two commands: `make train` (the main job) and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install train train-quick test test-slow experiments bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Main job. Until GPS meta-training lands this tunes and evaluates the hand-designed baselines.
train: install
	$(PY) -m metaopt.cli baselines --config paper --out results/baselines

train-quick: install
	$(PY) -m metaopt.cli baselines --config quick --out results/baselines-quick

test: install
	$(PY) -m pytest -q -n 2

test-slow: install
	$(PY) -m pytest -q -m slow

experiments: install
	$(PY) experiments/baselines.py --out results/baselines

bench: install
	$(PY) benchmarks/rollout.py

lint: install
	$(VENV)/bin/ruff check metaopt tests benchmarks experiments

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
