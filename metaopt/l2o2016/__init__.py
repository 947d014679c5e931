"""The 2016 setting (Li & Malik, *Learning to Optimize*): dense-state GPS for 4-12-dimensional
objective families, the 50-softplus MLP policy as an optax transformation, and the experiments.

Modules: ``features`` (the H = 25 observation), ``policy`` (MLP, ``l2o2016_opt``, save/load),
``gps`` (dense MDGPS, for the MLP or the per-coordinate LSTM), ``s_step`` (the regression of either
policy onto the controllers), ``evaluate`` (curves over objective sets, tuning, margin of victory),
``experiment`` (one family end to end; ``experiments/l2o2016_*.py``).
"""
