"""Li & Malik 2017 Fig 5: 100-200-C nets, minibatch 64, 800 steps (twice the meta-training horizon).

  .venv/bin/python experiments/fig5_long_horizon.py  # writes results/fig5/
  .venv/bin/python experiments/fig5_long_horizon.py  --tiny  # CI smoke run, < 1 min

The protocol, optimizers and outputs are described in `metaopt/evaluation/figures.py`.
"""

import sys

from metaopt.evaluation.figures import main

if __name__ == "__main__":
    main("fig5", sys.argv[1:])
