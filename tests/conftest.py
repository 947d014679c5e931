import os

# Tests run on CPU in float32 unless a test opts in; keep XLA from grabbing every core per worker.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
