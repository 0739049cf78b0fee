"""The train step before and after the pluggable-objective refactor, in one run.

"before": the trainer's step as it was until 2026-12-02 (commit 6a79e64), copied here as
the reference: data path, hard-coded cross-entropy, pmean, update. "after":
``train_lib.make_train_step(objectives.classification(10))``, which also adds the metrics
to the epoch's running sums on device. Same model (ReActNet-18, synchronized BN), Adam,
real CIFAR-10 indices with crop + flip, one CPU device, pmapped as the trainer does;
alternating repeats (``common.time_interleaved``), medians.

  python benchmarks/bench_step_refactor.py --width 0.25 --batches 128
"""

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import common
from bnn_jax import config as config_lib
from bnn_jax import data, losses, objectives, optim, train_lib

def step_before(state, images, labels, indices, rng, *, mean, std, augment, num_classes,
                axis_name="batch"):
  """The pre-refactor ``train_lib.train_step`` (6a79e64), verbatim in substance."""
  x = images[indices]
  if augment:
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, indices)
    x = data.augment_each(keys, x)
  x = data.normalize(x, mean, std)
  y = labels[indices]

  def loss_fn(params):
    logits, new_vars = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x,
                                      train=True, mutable=["batch_stats"])
    loss = losses.cross_entropy(logits, y, num_classes).mean()
    return loss, (logits, new_vars["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, axis_name)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = jax.lax.pmean({"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)},
                          axis_name)
  return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                       opt_state=opt_state), metrics


def before_runner(step, state, images, labels, indices):
  """The pre-refactor loop: fold_in key per step, metrics accumulated on the host each step
  (as its ``_accumulate`` did)."""
  box = [state, 0, {}]
  base = jax.random.key(1)

  def run(n):
    state, i, sums = box
    for _ in range(n):
      state, metrics = step(state, images, labels, indices[i % len(indices)],
                            jax.random.fold_in(base, i))
      sums = {k: sums.get(k, 0.0) + metrics[k][0] for k in metrics}
      i += 1
    jax.block_until_ready((state, sums))
    box[:] = [state, i, sums]

  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_flags(parser, steps=3, repeats=7)
  parser.add_argument("--batches", default="128")
  common.add_data_flag(parser)
  args = parser.parse_args()
  common.use_xla_flags(common.TUNED_XLA_FLAGS)  # what train.py runs with
  config = config_lib.base_config()
  config.model.width = args.width
  config.data.path = args.data
  ds = data.load_dataset(config.data)
  model = train_lib.build_model(config, ds.num_classes)
  devices = jax.local_devices()[:1]
  put = functools.partial(common.replicate, devices=devices)
  pmap = functools.partial(jax.pmap, axis_name="batch", devices=devices)
  images, labels = put(ds.train_images), put(ds.train_labels)
  kw = dict(mean=tuple(ds.mean), std=tuple(ds.std), augment=True)
  before = pmap(functools.partial(step_before, num_classes=10, **kw), donate_argnums=(0,),
                in_axes=(0, 0, 0, 0, None))
  after = pmap(train_lib.make_train_step(objectives.classification(10), **kw),
               donate_argnums=(0, 1), in_axes=(0, 0, 0, 0, 0, None))
  rows, spreads = [], []
  for batch in common.batch_sizes(args.batches):
    tx, _ = optim.build_optimizer(config, data.steps_per_epoch(len(ds.train_labels), batch))
    template = common.init_state(model, tx)
    indices = data.train_batch_indices(0, 0, len(ds.train_labels), batch, 1)
    zeros = put({"loss": np.float32(0), "accuracy": np.float32(0), "nonfinite": np.float32(0)})
    runners = {"before": before_runner(before, put(common.fresh_copy(template, tx)), images,
                                       labels, indices),
               "after": common.train_step_runner(after, put(common.fresh_copy(template, tx)),
                                                 zeros, images, labels, indices)}
    t = common.time_interleaved(runners, args.steps, args.repeats, args.warmup)
    ips = {k: batch / t.median(k) for k in runners}
    rows.append((batch, ips["before"], ips["after"], t.median("after") / t.median("before")))
    spreads.append(f"batch {batch}: {t.spread()}")
  common.print_table(
      f"Train step before/after the objective refactor, ReActNet-18 width {args.width:g}, "
      f"1 {devices[0].platform} device",
      ("batch", "before img/s", "after img/s", "time ratio after/before"), rows,
      notes=(f"Median of {args.repeats} alternating repeats of {args.steps} steps after "
             f"{args.warmup} warm-up steps. {common.machine_line()}",
             "Range over repeats, ms/step: " + " | ".join(spreads) + "."))


if __name__ == "__main__":
  main()
