"""The training config: every field with its default, and strict validation.

Experiment files in ``configs/`` start from ``base_config()`` and override
fields; the result is locked, so a typo (in a file or on the command line,
``--config.optim.lr=1e-3``) is an error that names the key and the closest
valid one instead of silently adding a field.
"""

from __future__ import annotations

import difflib
import math
import os
import sys
from typing import Any

import ml_collections

from bnn_jax import models
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
  c.model.dtype = "float32"            # compute dtype: float32 | bfloat16 (activations, BN, convs;
                                       # params, BN statistics, loss, optimizer stay float32)
  c.model.sync_batch_norm = True       # BN statistics over the global batch (same result on any device count)
  # The model's own options (bnn_jax.models.MODELS[name].options), e.g. binarize_weights
  # (False: ReActNet step 1) or the method-2 components; set_model() fills in all of them so
  # each can be overridden from the command line (--config.model.options.excitation=False).
  c.model.options = ml_collections.ConfigDict(models.default_options(c.model.name))

  # --- teacher and distillation (method 3; docs/METHODS.md) -------------------
  c.teacher = ml_collections.ConfigDict()
  c.teacher.workdir = ""               # a finished run of this project; "" = no teacher
  c.teacher.checkpoint = "best"        # best (by test accuracy) | latest
  c.distill = ml_collections.ConfigDict()
  c.distill.semantic_weight = 0.0      # lambda_semantic (needs a teacher)
  c.distill.kd_weight = 1.0            # semantic = kd_weight * T^2 KL(p_T || p_S)
  c.distill.cosine_weight = 1.0        #   + cosine_weight * (1 - cos) of the penultimate vectors
  c.distill.temperature = 1.0          # T
  c.distill.detail_weight = 0.0        # lambda_detail (needs a teacher)
  c.distill.detail_kind = "attention"  # attention | gram
  c.distill.detail_taps = "stage1,stage2"  # student stages/blocks, paired with the teacher
                                           # stage of the same spatial size

  c.data = default_data_config()
  c.optim = default_optim_config()

  # --- loop ----------------------------------------------------------------
  c.seed = 0
  c.batch_size = 256                   # global batch, split over all devices of all processes
  c.num_devices = 0                    # local devices to use; 0 = all (single-process runs only)
  c.num_epochs = 256
  c.label_smoothing = 0.0
  c.eval_every_epochs = 1
  c.weight_stats_every_epochs = 1      # latent-weight statistics (host, ~1-3 s at width 1)
  c.nan_policy = "stop"                # a NaN/inf loss or gradient: stop (no bad checkpoint) | skip the step
  c.init_from = ""                     # workdir whose latest params/batch_stats start this run (two-step)
  # t in the logged weight statistics (|w| vs +-t): a float, "mean_abs", or "auto" = the t of
  # the method-1 term in use (else mean_abs), bnn_jax.optim.logged_weight_target
  c.weight_target = ml_collections.FieldReference("auto", field_type=object)

  # --- output --------------------------------------------------------------
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.keep = 3                # last N checkpoints
  c.checkpoint.keep_best = 1           # plus the best N by test accuracy
  c.checkpoint.every_epochs = 1        # save after every Nth epoch and the last (a stop signal
                                       # saves at once whatever N is)
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


def set_key(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """``config["a.b.c"] = value`` for a dotted key (a missing section or field is a KeyError)."""
  *parents, leaf = key.split(".")
  section = config
  for p in parents:
    section = section[p]
  section[leaf] = value


def load_file(spec: str) -> ml_collections.ConfigDict:
  """The config of ``path/to/file.py[:options]``: the file's ``get_config(options)``, as
  ``train.py --config`` loads it (``get_config()`` when no options are given)."""
  import importlib.util
  path, _, options = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"No config file {path!r} (from {spec!r}); pass configs/NAME.py[:options].")
  # a config file may import its package's siblings (configs/vgg_small_cifar10.py imports
  # configs.reactnet18_cifar10), as it can under train.py run from the repository root
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:
    sys.path.insert(0, root)
  module_spec = importlib.util.spec_from_file_location(
      "bnn_jax_config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(options) if options else module.get_config()


def set_model(config: ml_collections.ConfigDict, name: str, **options) -> None:
  """Sets ``config.model.name`` and all of that model's options (defaults, then ``options``)."""
  full = models.check_options(name, options)
  with config.unlocked():
    config.model.name = name
    config.model.options = ml_collections.ConfigDict(full)


def validate(config: ml_collections.ConfigDict) -> None:
  """One check of a whole config before anything is built; ValueError naming the fix.

  Unknown keys (with the closest valid one), the model's options, and values that
  cannot train: non-positive or non-finite learning rate, batch size or epochs.
  """
  known = {k for k in _flatten(base_config()) if not k.startswith("model.options.")}
  given = {k for k in _flatten(config) if not k.startswith("model.options.")}
  unknown = sorted(given - known)
  if unknown:
    hints = []
    for key in unknown:
      close = difflib.get_close_matches(key, list(known), n=1)
      hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(f"Unknown config key(s): {', '.join(hints)}. Valid keys are listed in "
                     f"bnn_jax/config.py:base_config().")
  try:
    models.check_options(config.model.name, dict(config.model.options))
  except ValueError as e:
    raise ValueError(f"config.model.options: {e} Set the model with "
                     f"bnn_jax.config.set_model(config, name) in the config file.") from None
  if config.batch_size <= 0 or config.num_epochs <= 0:
    raise ValueError(f"batch_size and num_epochs must be positive, got {config.batch_size} "
                     f"and {config.num_epochs}.")
  lr = config.optim.lr
  if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
    raise ValueError(f"--config.optim.lr={lr} must be a finite number >= 0 (0 trains nothing; "
                     f"2e-3 is the Adam default for binary networks).")
  width = config.model.width
  if not (isinstance(width, (int, float)) and math.isfinite(width) and round(64 * width) >= 1):
    raise ValueError(f"--config.model.width={width} leaves the narrowest stage (64 channels at "
                     f"width 1) without a channel; use a width of at least 1/128 (e.g. 0.125).")
  models.compute_dtype(config.model.dtype)  # an unknown dtype names the valid ones
  for key in ("eval_every_epochs", "weight_stats_every_epochs", "checkpoint.every_epochs"):
    section, _, leaf = key.rpartition(".")
    value = (config[section] if section else config)[leaf]
    if not (isinstance(value, int) and value >= 1):
      raise ValueError(f"--config.{key}={value!r} must be a whole number >= 1.")
  if config.nan_policy not in ("stop", "skip"):
    raise ValueError(f"--config.nan_policy={config.nan_policy!r}; valid: stop, skip.")
  if config.teacher.checkpoint not in ("best", "latest"):
    raise ValueError(f"--config.teacher.checkpoint={config.teacher.checkpoint!r}: use best or latest.")
  if (config.distill.semantic_weight or config.distill.detail_weight) and not config.teacher.workdir:
    raise ValueError("distill.semantic_weight / distill.detail_weight need a teacher: set "
                     "--config.teacher.workdir to a finished full-precision run's workdir.")
