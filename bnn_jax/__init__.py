"""bnn_jax: binary neural networks (1-bit weights and activations) in JAX/Flax.

The pure core (``quantizers``, ``optim``, ``weight_stats``) imports no Flax.
TensorFlow is imported only on the TFDS data path, never by ``import bnn_jax``.
``get_model`` and ``summary`` (Flax) are imported on first use, so
``from bnn_jax.deploy import load_packed`` runs an exported model with jax and
numpy only.
"""

from __future__ import annotations

import importlib
from typing import Any

from bnn_jax import quantizers

__version__ = "0.1.0"

# name -> (module, attribute): imported on first access (PEP 562).
_LAZY = {
    "get_model": ("bnn_jax.models", "get_model"),
    "summary": ("bnn_jax.summary", "summary"),
}

__all__ = ["get_model", "quantizers", "summary", "__version__"]


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'bnn_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_LAZY))
