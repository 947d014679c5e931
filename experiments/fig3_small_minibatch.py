"""Li & Malik 2017 Fig 3: 48-48-C nets, minibatch 10 (noisier gradients than in meta-training), 400
steps.

  .venv/bin/python experiments/fig3_small_minibatch.py  # writes results/fig3/
  .venv/bin/python experiments/fig3_small_minibatch.py  --tiny  # CI smoke run, < 1 min

The protocol, optimizers and outputs are described in `metaopt/evaluation/figures.py`.
"""

import sys

from metaopt.evaluation.figures import main

if __name__ == "__main__":
    main("fig3", sys.argv[1:])
