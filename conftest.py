"""Root pytest configuration: two real XLA CPU devices for every test process.

Set before anything imports JAX, so pmap tests run over 2 devices for real
(``--xla_force_host_platform_device_count``); single-device code paths take
``jax.local_devices()[:1]``.
"""
import os


def _add_xla_flag(flag: str) -> None:
  """Appends ``flag`` to ``XLA_FLAGS`` unless a value for it is already set there."""
  flags = os.environ.get("XLA_FLAGS", "")
  if flag.split("=")[0] not in flags:
    os.environ["XLA_FLAGS"] = (flags + " " + flag).strip()


_add_xla_flag("--xla_force_host_platform_device_count=2")

# The suite compiles many different small programs and runs each briefly, so it asks XLA for
# less backend (LLVM) optimization: compiles are shorter, the fused elementwise kernels run
# slower (a width-0.25 batch-128 step: about 2.3x), results are the same (a tiny ReActNet-18
# run gave bit-identical losses; one-off timings of 2026-12-03). Users' runs keep XLA's
# default. Subprocesses (train.py) inherit it through the environment.
_add_xla_flag("--xla_backend_optimization_level=0")

# One persistent XLA compilation cache for the whole test session (and the train.py
# subprocesses it starts, which inherit the environment): the many tiny runs of the same
# model compile once. It changes no result, only the time (about 3x less per repeated run).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  import tempfile

  _cache = tempfile.mkdtemp(prefix="bnn_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# The CPU tuning train.py applies (bnn_jax/xla_cpu.py), so tests run what users run.
from bnn_jax import xla_cpu  # noqa: E402  (imports jax; its backend starts later)

xla_cpu.add_tuned_flags()


# The tests that train for longest go first, so that under `-n 2` (pytest-xdist) no worker is
# left with a long test at the end while the other idles. Stable: the order is otherwise kept.
_LONG_FIRST = ("test_multiprocess.py", "test_train.py", "test_distill.py", "test_bfloat16.py",
               "test_reliability.py", "test_train_step.py")


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(_LONG_FIRST)}
  items.sort(key=lambda item: rank.get(item.fspath.basename, len(rank)))
