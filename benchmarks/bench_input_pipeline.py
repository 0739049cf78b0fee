"""Does the input pipeline starve the train step? The trainer's real step vs a synthetic batch.

real:      what ``train_lib.train_and_evaluate`` runs: ``jax.pmap(train_lib.train_step)``
           on the uint8 CIFAR-10 training set resident on the device, fed per step the
           host's index slice (``data.train_batch_indices``) and a ``fold_in`` key; inside
           the step: gather by index, pad-4 crop + flip (``data.augment``), ``data.normalize``.
synthetic: the same pmapped step (same model, synchronized BN, Adam from
           ``optim.build_optimizer``, gradient ``pmean``) on a float batch already on the
           device: no indices, no gather, no augmentation, no normalization.

ratio = real / synthetic images/s; 1.0 means the data path costs nothing.

  python benchmarks/bench_input_pipeline.py --data ../shared/data/cifar-10-binary.tar.gz
  python benchmarks/bench_input_pipeline.py --width 1 --batches 128,256,512 --steps 20   # GPU
"""

from __future__ import annotations

import argparse
import functools
import os

import jax
import numpy as np
from flax import jax_utils

import common
from bnn_jax import config as config_lib
from bnn_jax import data, optim, train_lib

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                            "cifar-10-binary.tar.gz")


def real_runner(step, state, images, labels, indices):
  """Runs ``step`` as the trainer's loop does: host index slice + ``fold_in`` key per step."""
  box = [state, 0]
  base_rng = jax.random.key(1)

  def run(n: int) -> None:
    state, i = box
    for _ in range(n):
      rng = jax.random.fold_in(base_rng, i)
      state, metrics = step(state, images, labels, indices[i % len(indices)], rng)
      i += 1
    jax.block_until_ready((state, metrics))
    box[:] = [state, i]

  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_flags(parser, steps=2, repeats=5)
  parser.add_argument("--batches", default="32,64,128", help="comma-separated batch sizes")
  parser.add_argument("--data", default=os.environ.get("BNN_JAX_CIFAR10", DEFAULT_DATA),
                      help="CIFAR-10 binary archive (default: $BNN_JAX_CIFAR10 or "
                           "../shared/data/cifar-10-binary.tar.gz)")
  args = parser.parse_args()

  config = config_lib.base_config()
  config.model.width = args.width
  config.data.path = args.data
  ds = data.load_dataset(config.data)
  model = train_lib.build_model(config, ds.num_classes)  # synchronized BN over the pmap axis
  devices = jax.local_devices()[:1]
  put = functools.partial(jax_utils.replicate, devices=devices)
  pmap = functools.partial(jax.pmap, axis_name="batch", devices=devices, donate_argnums=(0,))
  images, labels = put(ds.train_images), put(ds.train_labels)
  n_train = len(ds.train_labels)

  real_step = pmap(functools.partial(
      train_lib.train_step, mean=tuple(ds.mean), std=tuple(ds.std), augment=True,
      num_classes=ds.num_classes, label_smoothing=0.0), in_axes=(0, 0, 0, 0, None))
  synthetic_step = pmap(functools.partial(common.float_train_step,
                                          num_classes=ds.num_classes, axis_name="batch"))

  template = None
  rows, spreads = [], []
  for batch in common.batch_sizes(args.batches):
    tx, _ = optim.build_optimizer(config, data.steps_per_epoch(n_train, batch))
    if template is None:
      template = common.init_state(model, tx)
    state = common.fresh_copy(template, tx)  # put() copies it to the device
    indices = data.train_batch_indices(0, 0, n_train, batch, len(devices))  # [steps, 1, batch]
    rng = np.random.RandomState(batch)
    x = put(rng.randn(batch, 32, 32, 3).astype(np.float32))
    y = put(rng.randint(0, ds.num_classes, batch).astype(np.int32))
    runners = {"real": real_runner(real_step, put(state), images, labels, indices),
               "synthetic": common.step_runner(synthetic_step, put(state), x, y)}
    t = common.time_interleaved(runners, args.steps, args.repeats, args.warmup)
    real, synthetic = batch / t.median("real"), batch / t.median("synthetic")
    rows.append((batch, real, synthetic, real / synthetic))
    spreads.append(f"batch {batch}: {t.spread()}")

  common.print_table(
      f"Input pipeline, ReActNet-18 width {args.width:g}, pmapped train step on "
      f"{len(devices)} {devices[0].platform} device, images/s",
      ("batch", "real img/s", "synthetic img/s", "ratio real/synthetic"), rows,
      notes=(f"real: uint8 CIFAR-10 ({n_train:,} training images) on the device, gather + "
             f"crop/flip + normalize inside the step; synthetic: a float batch on the device. "
             f"Median of {args.repeats} alternating repeats of {args.steps} steps after "
             f"{args.warmup} warm-up steps.",
             "Range over repeats, ms/step: " + " | ".join(spreads) + "."))


if __name__ == "__main__":
  main()
