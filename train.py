"""Trains a binary network: flags -> config -> bnn_jax.train_lib.train_and_evaluate.

  python train.py --config configs/quick_cpu.py --workdir runs/quick \
      --config.data.path=../shared/data/cifar-10-binary.tar.gz

Any config field can be overridden as --config.section.field=value; a rerun with
the same --workdir resumes from its latest checkpoint.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bnn_jax import xla_cpu

xla_cpu.add_tuned_flags()  # before JAX starts its backend; see bnn_jax/xla_cpu.py

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")


def parse_flags(argv):
  """absl flag parsing with a one-line error instead of a traceback for bad flags/config keys."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    msg = str(e).replace("\\n", " ").replace("\n", " ").strip("'\" ")
    sys.exit(f"train.py: bad command line: {msg}\n"
             f"Config keys are the fields of the --config file (see bnn_jax/config.py).")


class _QuietLibraries:
  """absl-logging filter: keeps orbax's per-save INFO chatter out of the training log."""

  def filter(self, record) -> bool:
    return record.levelno >= 30 or "/orbax/" not in record.pathname


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    sys.exit(f"train.py: unexpected arguments {argv[1:]}; flags look like --config.optim.lr=1e-3.")
  if _WORKDIR.value is None or flags.FLAGS["config"].value is None:
    sys.exit("train.py: --config and --workdir are required, e.g.\n"
             "  python train.py --config configs/quick_cpu.py --workdir runs/quick")
  config = _CONFIG.value
  if type(config).__name__ == "_ErrorConfig":  # the config file failed to load
    sys.exit(f"train.py: cannot load --config {flags.FLAGS['config'].config_filename}: "
             f"{getattr(config, '_error', 'unknown error')}")
  from bnn_jax import checkpoints, train_lib  # after flags: JAX reads XLA_FLAGS
  try:
    train_lib.train_and_evaluate(config, _WORKDIR.value)  # validates the config first
  except (ValueError, FileNotFoundError, checkpoints.CheckpointError,
          train_lib.NonFiniteError) as e:
    logging.error("%s", e)
    sys.exit(f"train.py: {e}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
