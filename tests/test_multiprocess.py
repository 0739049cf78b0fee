"""A real two-process run: jax.distributed over 127.0.0.1 (gloo collectives on CPU).

Two ``train.py`` processes with one CPU device each against one process with two devices:
the same global batch, the same per-device batch, so the same training. The two-process run
is stopped by a SIGTERM to one process and started again (it resumes from the checkpoint
both processes wrote through orbax's multi-process path), so the comparison also covers the
stop and the resume.
VGG-Small keeps the compile short; the data-parallel machinery does not depend on the network.
"""

import json
import os
import socket
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest

from bnn_jax import checkpoints, train_lib
from helpers import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {"model.name": "vgg_small_bnn", "optim.name": "sgd", "optim.lr": 0.05,
            "data.train_subset": 2048}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def one_device_flags() -> str:
  """This session's XLA flags (conftest.py) with one CPU device instead of two."""
  flags = os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=2", "")
  return (flags + " --xla_force_host_platform_device_count=1").strip()


def launch_two_processes(cifar10_path, workdir, port: int) -> list[subprocess.Popen]:
  """Starts train.py as process 0 and 1 of 2 (the README's commands)."""
  flags = {"data.path": cifar10_path, "model.width": 0.125, "data.test_subset": 256,
           "batch_size": 64, "num_epochs": 2, "optim.schedule": "constant",
           "progress_bar": False, "log_every_steps": 4, **SETTINGS}
  args = [sys.executable, os.path.join(REPO, "train.py"), "--config",
          os.path.join(REPO, "configs", "quick_cpu.py"), "--workdir", workdir,
          *(f"--config.{k}={v}" for k, v in flags.items())]
  procs = []
  for pid in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=one_device_flags(),
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  return procs


def wait_all(procs, timeout: int = 240) -> list[str]:
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=timeout)[0])
  finally:
    for p in procs:
      p.kill()
  for pid, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f"process {pid} failed:\n{log[-3000:]}"
  return logs


def saved_steps(workdir):
  return sorted(checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"),
                                         read_only=True).all_steps())


def test_two_processes_equal_one_process_with_two_devices(cifar10_path, tmp_path):
  """2 epochs of 32 SGD steps; SIGTERM to process 1 alone in epoch 2: both processes save the
  same mid-epoch step and exit 0; the rerun resumes; the result equals one process with two
  devices running straight through (exactly, in practice: a sum of two numbers is the same
  whichever process adds them)."""
  assert jax.local_device_count() == 2
  workdir = str(tmp_path / "two_processes")
  procs = launch_two_processes(cifar10_path, workdir, free_port())
  deadline = time.time() + 240
  while 32 not in (saved_steps(workdir) if os.path.isdir(os.path.join(workdir, "checkpoints")) else []):
    assert all(p.poll() is None for p in procs) and time.time() < deadline, "no checkpoint 32"
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGTERM)
  stopped = wait_all(procs)
  assert "Connecting to JAX distributed service" in stopped[1]
  assert "SIGTERM received" in stopped[1] and "SIGTERM received" not in stopped[0]
  assert "after a stop signal in another process" in stopped[0]
  steps = saved_steps(workdir)
  assert steps[0] == 32 and 32 < steps[-1] < 64, steps
  stopped_at = steps[-1]
  resumed = wait_all(launch_two_processes(cifar10_path, workdir, free_port()))
  assert all(f"at step {stopped_at}." in log for log in resumed), resumed[0][-2000:]

  config = tiny_config(cifar10_path, num_devices=2, **SETTINGS)
  train_lib.train_and_evaluate(config, str(tmp_path / "one_process"))

  # Written once: one metrics record per epoch (process 0 only), no lost or repeated epoch.
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    two = [json.loads(line) for line in f]
  one = checkpoints.read_metrics(str(tmp_path / "one_process"))
  assert [r["epoch"] for r in two] == [1, 2]
  assert saved_steps(workdir)[-1] == 64
  # Eval sums over both processes (each evaluates half of the 256 test images).
  for a, b in zip(one, two):
    assert a["test/accuracy"] == pytest.approx(b["test/accuracy"], abs=1e-9)
    assert a["test/loss"] == pytest.approx(b["test/loss"], rel=1e-5)
    assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)

  p1 = jax.tree.map(np.asarray, checkpoints.load_run(str(tmp_path / "one_process")).params)
  p2 = jax.tree.map(np.asarray, checkpoints.load_run(workdir).params)
  init = train_lib.create_state(train_lib.build_model(config, 10), optax.sgd(0.0),
                                jax.random.key(config.seed)).params
  moved = max(float(np.abs(np.asarray(a) - b).max()) for a, b in
              zip(jax.tree.leaves(init), jax.tree.leaves(p1)))
  assert moved > 1e-2
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_half_declared_multi_process_run_is_a_clear_error(monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.delenv("JAX_PROCESS_ID", raising=False)
  with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
    train_lib.maybe_initialize_distributed()
