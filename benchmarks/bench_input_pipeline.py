"""Does the input pipeline starve the train step? The trainer's real step vs a synthetic batch.

All three contenders run the trainer's own step, ``jax.pmap(train_lib.make_train_step(...))`` with
``donate_argnums=(0,)`` exactly as ``train_lib.train_and_evaluate`` builds it (model from
``train_lib.build_model``: synchronized BN over the pmap axis; Adam + cosine schedule from
``optim.build_optimizer``; state from ``train_lib.create_state``); only what they feed it differs:

real:       the uint8 CIFAR-10 training set resident on the device, fed per step the host's
            index slice (``data.train_batch_indices``) and a ``fold_in`` key; inside the
            step: gather by index, pad-4 crop + flip (``data.augment``), ``data.normalize``.
no-augment: the same with ``augment=False`` (gather + normalize only).
synthetic:  a float32 batch already on the device, handed to the step as a "dataset" of
            exactly one batch with indices 0..B-1, mean 0, std 1 and ``augment=False``:
            no augmentation and a gather/normalize of the batch itself (negligible).

ratio = real / synthetic images/s; 1.0 means the data path costs nothing.
(The step runs under pmap on 1 device, as the trainer does on this 2-core CPU machine.)

  python benchmarks/bench_input_pipeline.py --data /work/shared/data/cifar-10-binary.tar.gz
  python benchmarks/bench_input_pipeline.py --width 1 --batches 128,256,512 --steps 20   # GPU
"""

from __future__ import annotations

import argparse
import functools

import jax
import numpy as np

import common
from bnn_jax import config as config_lib
from bnn_jax import data, objectives, optim, train_lib

def data_runner(step, state, images, labels, indices):
  """Runs ``step`` as the trainer's loop does: host index slice + ``fold_in`` key per step.

  ``indices``: int32 ``[steps, devices, per_device_batch]``, cycled.
  """
  box = [state, 0]
  base_rng = jax.random.key(1)

  def run(n: int) -> None:
    state, i = box
    for _ in range(n):
      rng = jax.random.fold_in(base_rng, i)
      state, _, metrics = step(state, {}, images, labels, indices[i % len(indices)], rng)
      i += 1
    jax.block_until_ready((state, metrics))
    box[:] = [state, i]

  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_flags(parser, steps=2, repeats=5)
  parser.add_argument("--batches", default="32,64,128", help="comma-separated batch sizes")
  common.add_data_flag(parser)
  args = parser.parse_args()

  config = config_lib.base_config()
  config.model.width = args.width
  config.data.path = args.data
  ds = data.load_dataset(config.data)
  model = train_lib.build_model(config, ds.num_classes)  # synchronized BN over the pmap axis
  devices = jax.local_devices()[:1]
  put = functools.partial(common.replicate, devices=devices)  # see common.replicate
  pmap = functools.partial(jax.pmap, axis_name="batch", devices=devices, donate_argnums=(0,))
  images, labels = put(ds.train_images), put(ds.train_labels)
  n_train = len(ds.train_labels)

  def pmapped_step(mean, std, augment):
    return pmap(train_lib.make_train_step(objectives.classification(ds.num_classes),
                                          mean=tuple(mean), std=tuple(std), augment=augment),
                in_axes=(0, None, 0, 0, 0, None))

  steps = {"real": pmapped_step(ds.mean, ds.std, True),
           "no-augment": pmapped_step(ds.mean, ds.std, False),
           "synthetic": pmapped_step((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), False)}

  template = None
  rows, spreads = [], []
  for batch in common.batch_sizes(args.batches):
    tx, _ = optim.build_optimizer(config, data.steps_per_epoch(n_train, batch))
    if template is None:
      template = train_lib.create_state(model, tx, jax.random.key(config.seed))
    indices = data.train_batch_indices(0, 0, n_train, batch, len(devices))  # [steps, 1, batch]
    rng = np.random.RandomState(batch)
    # float pixels in [0, 255] units: normalize(mean 0, std 1) divides by 255.
    x = put(255.0 * rng.randn(batch, 32, 32, 3).astype(np.float32))
    y = put(rng.randint(0, ds.num_classes, batch).astype(np.int32))
    x_indices = np.arange(batch, dtype=np.int32)[None, None]  # [1 step, 1 device, batch]
    runners = {
        "real": data_runner(steps["real"], put(common.fresh_copy(template, tx)), images,
                            labels, indices),
        "no-augment": data_runner(steps["no-augment"], put(common.fresh_copy(template, tx)),
                                  images, labels, indices),
        "synthetic": data_runner(steps["synthetic"], put(common.fresh_copy(template, tx)),
                                 x, y, x_indices)}
    t = common.time_interleaved(runners, args.steps, args.repeats, args.warmup)
    ips = {name: batch / t.median(name) for name in runners}
    rows.append((batch, ips["real"], ips["no-augment"], ips["synthetic"],
                 ips["real"] / ips["synthetic"], ips["no-augment"] / ips["synthetic"]))
    spreads.append(f"batch {batch}: {t.spread()}")
    del runners

  common.print_table(
      f"Input pipeline, ReActNet-18 width {args.width:g}, pmapped train step on "
      f"{len(devices)} {devices[0].platform} device, images/s",
      ("batch", "real img/s", "no-augment img/s", "synthetic img/s", "ratio real/synthetic",
       "ratio no-augment/synthetic"), rows,
      notes=(f"real: uint8 CIFAR-10 ({n_train:,} training images) on the device, gather + "
             f"crop/flip + normalize inside the step; no-augment: gather + normalize; "
             f"synthetic: a float batch on the device. All: the trainer's pmapped "
             f"train_lib.make_train_step. "
             f"Median of {args.repeats} alternating repeats of {args.steps} steps after "
             f"{args.warmup} warm-up steps.",
             "Range over repeats, ms/step: " + " | ".join(spreads) + "."))


if __name__ == "__main__":
  main()
