"""Li & Malik 2017 Fig 2: 100-200-C nets (about 8x the parameters of the training net), minibatch
64, 400 steps.

  .venv/bin/python experiments/fig2_larger_nets.py  # writes results/fig2/
  .venv/bin/python experiments/fig2_larger_nets.py  --tiny  # CI smoke run, < 1 min

The protocol, optimizers and outputs are described in `metaopt/evaluation/figures.py`.
"""

import sys

from metaopt.evaluation.figures import main

if __name__ == "__main__":
    main("fig2", sys.argv[1:])
