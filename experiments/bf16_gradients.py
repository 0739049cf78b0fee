"""How far the bfloat16 policy moves a train step's gradient, against a control.

For one real CIFAR-10 batch and one set of ReActNet-18 weights (initial, or a finished run's
with --workdir), the cosine between float32 gradients and three others, per kind of parameter
(docs/METHODS.md, "Numerics"):

  bf16          the bfloat16 policy (every activation bfloat16, float32 sums);
  bf16 sums     the same forward pass with the first policy's bfloat16 sums of per-channel
                parameter gradients (the parameter cast before it is broadcast; until b41ed1c),
                against the bfloat16 policy: what those sums alone changed;
  input jitter  float32 again, the input images multiplied by (1 + 2^-9 * N(0, 1)) per pixel:
                the size of one bfloat16 rounding, as a control for how much any perturbation
                of that size moves a binary network's gradient.

  python experiments/bf16_gradients.py --data ../shared/data/cifar-10-binary.tar.gz
  python experiments/bf16_gradients.py --data ... --workdir runs/proxy/m3_r18_ce_s0  # trained
"""

from __future__ import annotations

import argparse
import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bnn_jax import checkpoints, data, layers, models


def _kind(path) -> str:
  """A parameter's kind: its leaf name, with the owning module's name for biases."""
  keys = [getattr(k, "key", str(k)) for k in path]
  if keys[-1] == "bias":
    return keys[-2].rstrip("0123456789_") + "/bias"
  return keys[-1]


def cosines(a, b) -> dict[str, float]:
  """Cosine between two gradient trees, pooled over the leaves of each kind."""
  sums = collections.defaultdict(lambda: np.zeros(3))
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    sums[_kind(path)] += (x @ y, x @ x, y @ y)
  return {k: s[0] / np.sqrt(s[1] * s[2]) for k, s in sorted(sums.items())}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True, help="cifar-10-binary.tar.gz")
  parser.add_argument("--model", default="reactnet18")
  parser.add_argument("--width", type=float, default=0.25)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default="",
                      help="a run of --model at --width: its latest weights instead of the init")
  args = parser.parse_args()

  train = data.load_cifar_binary(args.data)["train"]
  images, labels = train[0][:args.batch], train[1][:args.batch]     # (uint8 NHWC, labels)
  x = data.normalize(np.asarray(images), data.CIFAR10_MEAN, data.CIFAR10_STD)
  y = jnp.asarray(np.asarray(labels))
  init = models.get_model(args.model, width=args.width).init(jax.random.key(args.seed), x[:2])
  if args.workdir:
    run = checkpoints.load_run(args.workdir)
    init = {"params": run.params, "batch_stats": run.batch_stats}

  def grads(dtype, inputs):
    model = models.get_model(args.model, width=args.width, dtype=dtype)

    def loss(params):
      logits, _ = model.apply({**init, "params": params}, inputs, train=True,
                              mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return jax.jit(jax.grad(loss))(init["params"])

  g32 = grads("float32", x)
  g16 = grads("bfloat16", x)
  broadcast_first = layers.cast_to_activation
  layers.cast_to_activation = lambda p, like: p.astype(like.dtype)   # the first policy
  try:
    g16_sums = grads("bfloat16", x)
  finally:
    layers.cast_to_activation = broadcast_first
  noise = jax.random.normal(jax.random.key(args.seed + 1), x.shape)
  g32_jitter = grads("float32", x * (1.0 + 2.0 ** -9 * noise))

  rows = {"bf16 vs float32": cosines(g32, g16),
          "bf16 sums vs bf16": cosines(g16, g16_sums),
          "input jitter vs float32": cosines(g32, g32_jitter)}
  kinds = list(rows["bf16 vs float32"])
  weights = f"weights of {args.workdir}" if args.workdir else f"initial weights (seed {args.seed})"
  print(f"{args.model} width {args.width}, batch {args.batch}, {weights}: cosine of gradients, "
        f"per kind of parameter")
  print("| comparison | " + " | ".join(kinds) + " |")
  print("|---" * (len(kinds) + 1) + "|")
  for name, c in rows.items():
    print(f"| {name} | " + " | ".join(f"{c[k]:.3f}" for k in kinds) + " |")


if __name__ == "__main__":
  main()
