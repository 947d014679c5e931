"""Li & Malik 2017 Fig 1: 48-48-C nets on other datasets (Fashion-MNIST, 8x8 digits; CIFAR-10/100
when TFDS has them), minibatch 64, 400 steps.

  .venv/bin/python experiments/fig1_other_datasets.py  # writes results/fig1/
  .venv/bin/python experiments/fig1_other_datasets.py  --tiny  # CI smoke run, < 1 min

The protocol, optimizers and outputs are described in `metaopt/evaluation/figures.py`.
"""

import sys

from metaopt.evaluation.figures import main

if __name__ == "__main__":
    main("fig1", sys.argv[1:])
