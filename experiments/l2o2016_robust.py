"""The 2016 experiment on Geman-McClure robust linear regression (d = 3 + bias, 120 train / 100 test).

  .venv/bin/python experiments/l2o2016_robust.py          # full: results/l2o2016/robust/
  .venv/bin/python experiments/l2o2016_robust.py --tiny   # seconds (CI): results/l2o2016-quick/robust/

GPS-trained MLP and per-coordinate LSTM (`lstm_gps`) vs GD, momentum, CG, L-BFGS tuned on the
training objectives (and the shipped LSTM); `--gps-seeds 0,1,2` repeats GPS with other seeds (the
results were made so);
see metaopt/l2o2016/experiment.py for what is written.
"""

from metaopt.l2o2016.experiment import main

if __name__ == "__main__":
    main("robust")
