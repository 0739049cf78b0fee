"""XLA flags that make the CPU backend faster for these networks (set before JAX starts).

jax 0.10.2 runs CPU convolutions through YNNPACK, whose weight-gradient convolutions scale
badly with the batch (measured: 97 -> 744 ms per ReActNet-18 step from batch 32 to 128,
width 0.25). ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` sends them
back to XLA's own convolutions: 1.4x faster at batch 128, no change at 32
(``benchmarks/bench_xla_flags.py``, docs/BENCHMARKS.md). The flag is experimental and
jaxlib rejects flags it does not know at startup, so it is added only for the jaxlib
version it was measured on; it does nothing on GPU/TPU. ``BNN_JAX_XLA_DEFAULTS=1`` opts out.
"""

from __future__ import annotations

import importlib.metadata
import os

TUNED_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
MEASURED_ON_JAXLIB = ("0.10.2",)


def add_tuned_flags(environ=os.environ) -> bool:
  """Appends ``TUNED_FLAGS`` to ``XLA_FLAGS`` (call before the first JAX computation).

  Returns True when the flags were added (or were already there).
  """
  if environ.get("BNN_JAX_XLA_DEFAULTS") == "1":
    return False
  try:
    if importlib.metadata.version("jaxlib") not in MEASURED_ON_JAXLIB:
      return False
  except importlib.metadata.PackageNotFoundError:
    return False
  flags = environ.get("XLA_FLAGS", "")
  missing = [f for f in TUNED_FLAGS if f.split("=")[0] not in flags]
  if missing:
    environ["XLA_FLAGS"] = " ".join([flags, *missing]).strip()
  return True
