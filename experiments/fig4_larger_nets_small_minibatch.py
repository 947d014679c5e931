"""Li & Malik 2017 Fig 4: 100-200-C nets and minibatch 10, 400 steps.

  .venv/bin/python experiments/fig4_larger_nets_small_minibatch.py  # writes results/fig4/
  .venv/bin/python experiments/fig4_larger_nets_small_minibatch.py  --tiny  # CI smoke run, < 1 min

The protocol, optimizers and outputs are described in `metaopt/evaluation/figures.py`.
"""

import sys

from metaopt.evaluation.figures import main

if __name__ == "__main__":
    main("fig4", sys.argv[1:])
