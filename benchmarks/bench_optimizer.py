"""Cost of the thesis transforms: Adam vs Adam + w_regularization + variant_cosine_momentum.

Both optimizers come from ``optim.build_optimizer`` with the trainer's defaults (Adam,
cosine schedule); the second has ``optim.w_reg.enabled`` and
``optim.cosine_momentum.enabled`` (the ``method1`` option of
``configs/reactnet18_cifar10.py``). Two rows:

* train step: the jitted single-device step on ReActNet-18 (float batch in memory);
* update only: ``tx.update`` + ``optax.apply_updates`` on the model's parameters, jitted.

  python benchmarks/bench_optimizer.py
  python benchmarks/bench_optimizer.py --width 1 --batch 256 --steps 20   # on a GPU
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
  common.add_flags(parser, steps=3, repeats=7)
  parser.add_argument("--batch", type=int, default=32, help="batch of the train-step row")
  parser.add_argument("--update-steps", type=int, default=50,
                      help="optimizer updates per timed repeat (they take milliseconds)")
  args = parser.parse_args()

  model = common.reactnet(args.width)
  txs = optimizers(args.batch)
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(args.batch, 32, 32, 3).astype(np.float32))
  y = jnp.asarray(rng.randint(0, 10, args.batch).astype(np.int32))
  template = common.init_state(model, txs["adam"])
  n_params = common.count_params(template.params)
  states = {name: common.fresh_copy(template, tx) for name, tx in txs.items()}

  step = common.jit_float_step()
  train = common.time_interleaved(
      {name: common.step_runner(step, state, x, y) for name, state in states.items()},
      args.steps, args.repeats, args.warmup)

  params = template.params
  grads = jax.tree.map(lambda p: 1e-3 * jnp.ones_like(p), params)
  update = common.time_interleaved(
      {name: common.step_runner(update_step(tx), (jax.tree.map(jnp.copy, params),
                                                   tx.init(params)), grads)
       for name, tx in txs.items()},
      args.update_steps, args.repeats, args.warmup)

  rows = [(f"train step (batch {args.batch})", *(1e3 * train.median(n) for n in txs),
           train.median("adam+transforms") / train.median("adam")),
          ("update only", *(1e3 * update.median(n) for n in txs),
           update.median("adam+transforms") / update.median("adam"))]
  common.print_table(
      f"Optimizer, ReActNet-18 width {args.width:g} ({n_params:,} params), ms per step",
      ("what", "adam ms", "adam+transforms ms", "ratio"), rows,
      notes=(f"ratio = (adam+transforms) / adam. Median of {args.repeats} alternating repeats "
             f"of {args.steps} train steps / {args.update_steps} updates.",
             f"Range over repeats, ms: train step: {train.spread()} | update: "
             f"{update.spread(digits=2)}."))


if __name__ == "__main__":
  main()
