"""Meta-training over a device mesh (``metaopt.training.mesh``) on 8 virtual CPU devices.

The device count is fixed when JAX starts and this session has already imported it, so the
check runs in a subprocess with ``--xla_force_host_platform_device_count=8``.
"""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=8 "
                               "--xla_cpu_multi_thread_eigen=false")
    import json, sys
    import jax, numpy as np
    from metaopt.training import TrainConfig, train
    from metaopt.training.mesh import samples_mesh, sharded_rollout
    from metaopt.training.gps_loop import init_state, make_task

    mesh = samples_mesh()
    assert mesh.size == 8 and mesh.axis_names == ("samples",), mesh
    # N = 8 samples (one per device); S-step minibatch 12 on 8 devices exercises the padding.
    config = TrainConfig.tiny(num_samples=8, s_step_iterations=20, s_step_batch_size=12)

    # N must split evenly over the devices: a clear error, before anything is compiled.
    task = make_task(config)
    try:
        sharded_rollout(mesh, task, init_state(config, task).controller, jax.random.key(0),
                        jax.random.key(1), np.zeros((4, 8), np.int32), num_samples=4)
        raise AssertionError("N = 4 on 8 devices did not raise")
    except ValueError as err:
        assert "multiple of the mesh's 8 devices" in str(err), err

    theta_1, log_1 = train(config)
    theta_8, log_8 = train(config, sys.argv[1], mesh=mesh)
    assert sorted(os.listdir(sys.argv[1])) == ["1", "2"], os.listdir(sys.argv[1])

    # atol 1e-5: the S-step runs in whitened units, which amplifies the float32 summation-order
    # differences of the moments (measured: one of 4,480 weights off by 2.5e-6).
    for a, b in zip(jax.tree.leaves(theta_1), jax.tree.leaves(theta_8), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert len(log_1) == len(log_8) == 2
    for e1, e8 in zip(log_1, log_8):
        assert e1.keys() == e8.keys()
        for key, value in e1.items():
            exact = value is None or isinstance(value, (bool, int, str)) or (
                isinstance(value, list) and isinstance(value[0], bool))
            if exact:
                assert value == e8[key], (key, value, e8[key])
            else:
                np.testing.assert_allclose(e8[key], value, rtol=1e-4, atol=1e-7, err_msg=key)
    # Not trivially equal: the sharded run took another path (moments summed across devices).
    print("max |theta diff|", max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                                  for a, b in zip(jax.tree.leaves(theta_1), jax.tree.leaves(theta_8))))
    print("OK")
    """
)


def _repo_root():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_sharded_training_matches_unsharded_on_8_devices(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([_repo_root(), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "checkpoints")],
                            capture_output=True, text=True, env=env, timeout=400)
    assert result.returncode == 0 and "OK" in result.stdout, (result.stdout[-2000:]
                                                              + result.stderr[-4000:])


MULTI_PROCESS_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=2 "
                               "--xla_cpu_multi_thread_eigen=false")
    from metaopt.training.mesh import initialize_distributed, samples_mesh
    assert initialize_distributed()          # from JAX_COORDINATOR_ADDRESS & co.
    import jax, numpy as np
    from metaopt.training import TrainConfig, train
    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 4, 2)
    config = TrainConfig.tiny(num_samples=4, s_step_iterations=10, iterations=1)
    theta, log = train(config, sys.argv[1], mesh=samples_mesh())
    theta, log = train(TrainConfig.tiny(num_samples=4, s_step_iterations=10, iterations=2),
                       sys.argv[1], resume=True, mesh=samples_mesh())
    assert len(log) == 2
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(theta)])
    np.save(sys.argv[2] + f"/theta_{jax.process_index()}.npy", flat)
    print("OK", jax.process_index())
    """
)


@pytest.mark.slow
def test_two_processes_train_and_resume_through_orbax(tmp_path):
    """2 processes × 2 virtual CPU devices (gloo collectives): both end with the same policy."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
           "JAX_NUM_PROCESSES": "2",
           "PYTHONPATH": os.pathsep.join([_repo_root(), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "-c", MULTI_PROCESS_SCRIPT, str(tmp_path / "checkpoints"), str(tmp_path)]
    procs = [subprocess.Popen(args, env={**env, "JAX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0 and "OK" in out, out[-1000:] + err[-4000:]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
    theta_0, theta_1 = (np.load(tmp_path / f"theta_{i}.npy") for i in range(2))
    np.testing.assert_array_equal(theta_0, theta_1)
