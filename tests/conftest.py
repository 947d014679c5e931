import os

# pytest -n 2 runs two workers on two cores: keep XLA's CPU matmuls single-threaded per worker.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
