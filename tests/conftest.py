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
