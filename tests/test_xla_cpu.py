"""The CPU XLA tuning: added once, kept with other flags, opt-out, version-gated."""

import importlib.metadata

from bnn_jax import xla_cpu


def test_adds_the_flag_once_after_existing_flags():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  assert xla_cpu.add_tuned_flags(env)
  assert xla_cpu.add_tuned_flags(env)
  flags = env["XLA_FLAGS"].split()
  assert flags[0] == "--xla_force_host_platform_device_count=2"
  assert flags.count(xla_cpu.TUNED_FLAGS[0]) == 1 and len(flags) == 2


def test_opt_out_leaves_flags_alone():
  env = {"BNN_JAX_XLA_DEFAULTS": "1"}
  assert not xla_cpu.add_tuned_flags(env)
  assert "XLA_FLAGS" not in env


def test_other_jaxlib_versions_get_no_flags(monkeypatch):
  monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.9.9")
  env = {}
  assert not xla_cpu.add_tuned_flags(env) and env == {}


def test_this_process_runs_with_the_flag():
  """conftest.py applied it before JAX started, and JAX accepted it (jax 0.10.2 pinned)."""
  import os

  import jax.numpy as jnp
  assert xla_cpu.TUNED_FLAGS[0] in os.environ["XLA_FLAGS"]
  assert float(jnp.ones(3).sum()) == 3.0
