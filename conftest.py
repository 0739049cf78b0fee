"""Root pytest configuration: two real XLA CPU devices for every test process.

Set before anything imports JAX, so pmap tests run over 2 devices for real
(``--xla_force_host_platform_device_count``); single-device code paths take
``jax.local_devices()[:1]``.
"""
import os

_flag = "--xla_force_host_platform_device_count=2"
if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

# The CPU tuning train.py applies (bnn_jax/xla_cpu.py), so tests run what users run.
from bnn_jax import xla_cpu  # noqa: E402  (imports jax; its backend starts later)

xla_cpu.add_tuned_flags()
