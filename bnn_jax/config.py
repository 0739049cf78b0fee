"""The training config: every field with its default, and strict validation.

Experiment files in ``configs/`` start from ``base_config()`` and override
fields; the result is locked, so a typo (in a file or on the command line,
``--config.optim.lr=1e-3``) is an error that names the key and the closest
valid one instead of silently adding a field.
"""

from __future__ import annotations

import difflib
from typing import Any

import ml_collections

from bnn_jax.data import default_data_config
from bnn_jax.optim import default_optim_config


def base_config() -> ml_collections.ConfigDict:
  """All fields the trainer reads, with defaults (a small ReActNet-18 on CIFAR-10)."""
  c = ml_collections.ConfigDict()

  # --- model ---------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.name = "reactnet18"          # bnn_jax.models.MODELS
  c.model.width = 1.0                  # channel multiplier
  c.model.num_classes = -1             # -1: from the dataset (written resolved to config.json)
  c.model.binarize_weights = True      # False: ReActNet step 1 (binary activations, real weights)
  c.model.dtype = "float32"            # "bfloat16" computes convs in bf16 (params stay float32)
  c.model.sync_batch_norm = True       # BN statistics over the global batch (same result on any device count)

  c.data = default_data_config()
  c.optim = default_optim_config()

  # --- loop ----------------------------------------------------------------
  c.seed = 0
  c.batch_size = 256                   # global batch, split over all devices of all processes
  c.num_devices = 0                    # local devices to use; 0 = all (single-process runs only)
  c.num_epochs = 256
  c.label_smoothing = 0.0
  c.eval_every_epochs = 1
  c.init_from = ""                     # workdir whose latest params/batch_stats start this run (two-step)
  c.weight_target = 1.0                # t in the logged weight statistics (|w| vs +-t)

  # --- output --------------------------------------------------------------
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.keep = 3                # last N checkpoints
  c.checkpoint.keep_best = 1           # plus the best N by test accuracy
  c.progress_bar = True
  c.log_every_steps = 50               # TensorBoard train scalars
  return c


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks the config so new keys cannot be added by mistake."""
  config.lock()
  return config


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for keys the trainer does not know, naming the closest valid key."""
  known = _flatten(base_config())
  given = _flatten(config)
  unknown = sorted(set(given) - set(known))
  if unknown:
    hints = []
    for key in unknown:
      close = difflib.get_close_matches(key, list(known), n=1)
      hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(f"Unknown config key(s): {', '.join(hints)}. Valid keys are listed in "
                     f"bnn_jax/config.py:base_config().")
  if config.batch_size <= 0 or config.num_epochs <= 0:
    raise ValueError(f"batch_size and num_epochs must be positive, got {config.batch_size} "
                     f"and {config.num_epochs}.")
