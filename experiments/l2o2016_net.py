"""The 2016 experiment on 2-2-2 ReLU net classifier (12 parameters, 80 train / 100 test).

  .venv/bin/python experiments/l2o2016_net.py          # full: results/l2o2016/net/
  .venv/bin/python experiments/l2o2016_net.py --tiny   # seconds (CI): results/l2o2016-quick/net/

GPS-trained MLP and per-coordinate LSTM (`lstm_gps`) vs GD, momentum, CG, L-BFGS tuned on the
training objectives (and the shipped LSTM); `--gps-seeds 0,1,2` repeats GPS with other seeds (the
results were made so);
see metaopt/l2o2016/experiment.py for what is written.
"""

from metaopt.l2o2016.experiment import main

if __name__ == "__main__":
    main("net")
