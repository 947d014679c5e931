"""The 2016 experiment on logistic regression (d = 3 + bias, 90 train / 100 test objectives).

  .venv/bin/python experiments/l2o2016_logistic.py          # full: results/l2o2016/logistic/
  .venv/bin/python experiments/l2o2016_logistic.py --tiny   # seconds (CI): results/l2o2016-quick/logistic/

GPS-trained MLP and per-coordinate LSTM (`lstm_gps`) vs GD, momentum, CG, L-BFGS tuned on the
training objectives (and the shipped LSTM); `--gps-seeds 0,1,2` repeats GPS with other seeds (the
results were made so);
see metaopt/l2o2016/experiment.py for what is written.
"""

from metaopt.l2o2016.experiment import main

if __name__ == "__main__":
    main("logistic")
