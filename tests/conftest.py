"""Shared test fixtures: the real CIFAR-10 binary archive."""

import os

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_CIFAR10 = os.path.join(_REPO, "..", "shared", "data", "cifar-10-binary.tar.gz")


@pytest.fixture(scope="session")
def cifar10_path() -> str:
  """Absolute path of cifar-10-binary.tar.gz: $BNN_JAX_CIFAR10, else <repo>/../shared/data/.

  Fails (never skips) when the file is missing: CI has it, and the data tests are the only
  check that the loader reads the real dataset.
  """
  path = os.path.abspath(os.environ.get("BNN_JAX_CIFAR10") or _DEFAULT_CIFAR10)
  if not os.path.isfile(path):
    pytest.fail(f"CIFAR-10 binary archive not found at {path}. Put the official "
                f"cifar-10-binary.tar.gz at <repo>/../shared/data/ or set BNN_JAX_CIFAR10 "
                f"to its path.", pytrace=False)
  return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, cifar10_path) -> str:
  """Workdir of a real tiny training run, shared by the inspect and deploy tests and the
  uninterrupted reference of the killed-run test.

  ReActNet-18 at width 0.125 on 512 class-balanced CIFAR-10 training images (256 test
  images), batch 64, 2 epochs: 8 steps per epoch, checkpoints at steps 8 and 16 (both
  kept), config.json and two metrics.jsonl records. About 30-60 s on 2 CPU cores.
  """
  from bnn_jax import train_lib
  from helpers import tiny_config

  c = tiny_config(cifar10_path, **{"checkpoint.keep": 5, "log_every_steps": 8})
  workdir = str(tmp_path_factory.mktemp("tiny_run"))
  train_lib.train_and_evaluate(c, workdir)
  return workdir


@pytest.fixture(scope="session")
def run_2048(tmp_path_factory, cifar10_path):
  """(workdir, last record) of ReActNet-18 width 0.125, float32, 2 epochs of 32 steps on
  2,048 real training images (1,000 test), constant Adam 2e-3: the learning test's run, the
  uninterrupted reference of the SIGTERM test and the float32 twin of the bfloat16 test. Its
  users carry ``@pytest.mark.xdist_group("run_2048")`` so that under ``-n 2 --dist loadgroup``
  (pyproject.toml) one worker trains it once."""
  from bnn_jax import train_lib
  from helpers import tiny_config

  workdir = str(tmp_path_factory.mktemp("run_2048"))
  config = tiny_config(cifar10_path, num_epochs=2,
                       **{"data.train_subset": 2048, "data.test_subset": 1000})
  return workdir, train_lib.train_and_evaluate(config, workdir)
