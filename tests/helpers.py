"""What several test modules share: the small real-data training config."""

import os
import subprocess
import sys

from bnn_jax.config import base_config, set_key, set_model


def tiny_config(cifar10_path, model: str = "reactnet18", **overrides):
  """A width-0.125 network on 512 real CIFAR-10 images (256 test): 8 steps of 64 per epoch,
  2 epochs, Adam 2e-3 at a constant rate, no progress bar; ``overrides`` are dotted keys.

  The constant rate keeps the compiled step independent of the run's length, so the tests
  that train this network with the same data sizes share one compile (the session's
  persistent compilation cache, conftest.py).
  """
  c = base_config()
  set_model(c, model)
  c.model.width = 0.125
  c.data.path = cifar10_path
  c.data.train_subset = 512
  c.data.test_subset = 256
  c.batch_size = 64
  c.num_epochs = 2
  c.optim.lr = 2e-3
  c.optim.schedule = "constant"
  c.progress_bar = False
  c.log_every_steps = 4
  for key, value in overrides.items():
    set_key(c, key, value)
  return c


def check_on_two_devices(module: str, function: str) -> None:
  """Runs ``module.function()`` here when this process has 2 devices (the suite's
  conftest.py gives it 2), else in a fresh process started with 2 CPU devices."""
  import importlib

  import jax
  if jax.local_device_count() >= 2:
    getattr(importlib.import_module(module), function)()
    return
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(tests_dir), tests_dir,
                                       env.get("PYTHONPATH", "")])
  r = subprocess.run([sys.executable, "-c", f"import {module}; {module}.{function}()"],
                     env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-3000:]
