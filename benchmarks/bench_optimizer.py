"""Cost of the thesis transforms: Adam vs Adam + w_regularization + variant_cosine_momentum.

Both optimizers come from ``optim.build_optimizer`` with the trainer's defaults (Adam,
lr 1e-3, cosine schedule); the second has ``optim.w_reg.enabled`` and
``optim.cosine_momentum.enabled`` (the ``method1`` option of
``configs/reactnet18_cifar10.py``), so its chain is
w_regularization -> variant_cosine_momentum -> adam. Rows:

* train step, one per ``--widths``: the jitted single-device step on ReActNet-18
  (BN train mode, float batch in memory, state donated), both optimizers interleaved;
* update only: ``tx.update`` + ``optax.apply_updates`` jitted alone (params and optimizer
  state donated) on the parameters of the full-width (width 1) ReActNet-18 with a fixed
  random gradient: the transforms' own cost without the conv noise.

  python benchmarks/bench_optimizer.py                        # widths 0.25,1 at batch 64
  python benchmarks/bench_optimizer.py --widths 1 --batch 256 --steps 20   # on a GPU
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import common
from bnn_jax import config as config_lib
from bnn_jax import optim


def optimizers(batch: int) -> dict[str, optax.GradientTransformation]:
  out = {}
  for name, transforms in (("adam", False), ("adam+transforms", True)):
    config = config_lib.base_config()
    config.optim.w_reg.enabled = transforms
    config.optim.cosine_momentum.enabled = transforms
    out[name], _ = optim.build_optimizer(config, 50_000 // batch)
  return out


def update_step(tx: optax.GradientTransformation):
  """(params, opt_state), grads -> ((params, opt_state), None), jitted, the carry donated."""
  def step(carry, grads):
    params, opt_state = carry
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None
  return jax.jit(step, donate_argnums=(0,))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_flags(parser, steps=2, repeats=7)
  parser.add_argument("--widths", default="0.25,1",
                      help="comma-separated ReActNet-18 widths of the train-step rows")
  parser.add_argument("--batch", type=int, default=64, help="batch of the train-step rows")
  parser.add_argument("--update-steps", type=int, default=50,
                      help="optimizer updates per timed repeat (they take milliseconds)")
  parser.add_argument("--update-width", type=float, default=1.0,
                      help="width of the model whose parameters the update-only row uses")
  args = parser.parse_args()

  txs = optimizers(args.batch)
  names = list(txs)
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(args.batch, 32, 32, 3).astype(np.float32))
  y = jnp.asarray(rng.randint(0, 10, args.batch).astype(np.int32))
  step = common.jit_float_step()
  rows, spreads = [], []
  for width in (float(w) for w in args.widths.split(",")):
    template = common.init_state(common.reactnet(width), txs["adam"])
    n_params = common.count_params(template.params)
    train = common.time_interleaved(
        {name: common.step_runner(step, common.fresh_copy(template, tx), x, y)
         for name, tx in txs.items()},
        args.steps, args.repeats, args.warmup)
    rows.append((f"train step, width {width:g} ({n_params / 1e6:.2f} M params), batch "
                 f"{args.batch}", *(1e3 * train.median(n) for n in names),
                 train.median(names[1]) / train.median(names[0])))
    spreads.append(f"train step width {width:g}: {train.spread()}")
    del template, train

  params = common.init_state(common.reactnet(args.update_width), txs["adam"]).params
  n_params = common.count_params(params)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  grads = jax.tree.unflatten(treedef, [1e-3 * jax.random.normal(k, p.shape, p.dtype)
                                       for k, p in zip(keys, leaves)])
  update = common.time_interleaved(
      {name: common.step_runner(update_step(tx), (jax.tree.map(jnp.copy, params),
                                                   tx.init(params)), grads)
       for name, tx in txs.items()},
      args.update_steps, args.repeats, args.warmup)
  rows.append((f"update only, width {args.update_width:g} ({n_params / 1e6:.2f} M params)",
               *(1e3 * update.median(n) for n in names),
               update.median(names[1]) / update.median(names[0])))
  spreads.append(f"update only: {update.spread(digits=2)}")

  common.print_table(
      "Optimizer: Adam vs Adam + w_regularization + variant_cosine_momentum, ReActNet-18, "
      "ms per step",
      ("what", "adam ms", "adam+transforms ms", "ratio"), rows,
      notes=(f"ratio = (adam+transforms) / adam, of medians over {args.repeats} alternating "
             f"repeats of {args.steps} train steps / {args.update_steps} updates, after "
             f"{args.warmup} warm-up steps.",
             "Range over repeats, ms: " + " | ".join(spreads) + "."))


if __name__ == "__main__":
  main()
