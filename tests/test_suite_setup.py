"""The test runner itself: what the suite's speed and sharing rely on."""

import os

import pytest


@pytest.mark.xdist_group("probe")
def test_xdist_groups_reach_one_worker(request):
  """Under ``-n 2 --dist loadgroup`` (pyproject.toml) pytest-xdist sends the tests of one
  ``xdist_group`` to one worker by suffixing their node ids with ``@group``; the
  run_2048 tests rely on it to train their shared run once. pytest 9.2.0 with
  pytest-xdist 3.8.0 drops the suffix, and each worker silently trained the run again
  (found 2026-12-03; requirements.txt pins pytest 9.1.1)."""
  if not os.environ.get("PYTEST_XDIST_WORKER") or not request.config.getvalue("loadgroup"):
    pytest.skip("only meaningful under pytest-xdist with --dist loadgroup")
  assert request.node.nodeid.endswith("@probe"), (
      f"pytest-xdist did not group this test (node id {request.node.nodeid!r}): this pytest / "
      f"pytest-xdist pair breaks --dist loadgroup; install the pins of requirements.txt")
