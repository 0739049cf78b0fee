"""Fingerprints of the compiled training programs: did a change alter what XLA runs?

For each network, the gradient of a train-mode forward pass (BatchNorm statistics updated,
softmax cross-entropy) is jitted, compiled for this machine's backend, and its optimized HLO
text hashed with the source-location metadata removed (file names, line numbers, op names
change with every edit and do not change the program). Two commits with the same fingerprint
compile to the same program, so their speed on this backend is the same by construction, a
stronger statement than two noisy timings.

  python benchmarks/program_fingerprint.py                     # float32, width 0.25, batch 8
  git stash; python benchmarks/program_fingerprint.py; git stash pop   # compare with HEAD
"""

from __future__ import annotations

import argparse
import hashlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bnn_jax import models

NETWORKS = ("reactnet18", "reactnet18_bnfree", "resnet18_fda", "vgg_small_bnn", "resnet18_fp")
# lines of the HLO text that only say where an op came from
_LOCATION = re.compile(r', metadata=\{[^}]*\}|^HloModule [^\n]*$|^\d+ "[^\n]*$|^\d+ \{[^\n]*$',
                       re.MULTILINE)


def program_text(name: str, dtype: str, width: float, batch: int) -> str:
  """The optimized HLO of the network's train-mode gradient, without location metadata."""
  model = models.get_model(name, width=width, dtype=dtype)
  x = jnp.asarray(np.random.RandomState(0).randn(batch, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))

  def loss(params, batch_stats):
    logits, state = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                mutable=["batch_stats"])
    labels = jnp.zeros(batch, jnp.int32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), state

  lowered = jax.jit(jax.grad(loss, has_aux=True)).lower(variables["params"],
                                                        variables.get("batch_stats", {}))
  return _LOCATION.sub("", lowered.compile().as_text())


def fingerprint(text: str) -> str:
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--width", type=float, default=0.25)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--networks", default=",".join(NETWORKS))
  args = parser.parse_args(argv)
  print(f"{jax.devices()[0].platform}, jax {jax.__version__}, {args.dtype}, width "
        f"{args.width:g}, batch {args.batch}")
  for name in args.networks.split(","):
    text = program_text(name, args.dtype, args.width, args.batch)
    print(f"{name:20s} {fingerprint(text)}  ({text.count(chr(10)):,} lines)")


if __name__ == "__main__":
  main()
