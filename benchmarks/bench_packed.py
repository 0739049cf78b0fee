"""Packed XNOR-popcount layers against float layers of the same shape, on this machine.

Each row times two jitted functions on the same +-1 data, interleaved in one process
(``common.time_interleaved``, medians):

* float:  the float32 layer as the training model runs it: ``x @ w`` / a 3x3 conv
  (``lax.conv_general_dilated``, padding the +-1 input with +1) on +-1 activations and
  alpha * sign(W) weights;
* packed: what ``bnn_jax.packed`` runs: threshold + pack the float activations into
  uint32 (``sign_bits``: the cost of binarizing the input is included), then
  K - 2 * popcount(a XOR w) (``binary_dense`` / ``binary_conv``) and the per-channel
  scale to float.

Bytes are the weights only: float32 4 * K * N against the packed words 4 * ceil(K/32) * N
per tap. The whole ReActNet-18 rows run the Flax model in eval mode (uint8 images,
normalization inside) against ``bnn_jax.deploy.pack`` of the same variables; bytes are
its float32 parameters against the packed model's arrays. The packed and float outputs
are checked to agree before timing.

  python benchmarks/bench_packed.py                   # all rows, a few minutes on 2 cores
  python benchmarks/bench_packed.py --only dense --repeats 9
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import common
from bnn_jax import deploy, models, packed


def _runner(fn, *args):
  def run(n: int) -> None:
    out = None
    for _ in range(n):
      out = fn(*args)
    jax.block_until_ready(out)
  return run


def dense_case(k: int, n: int, batch: int, rng: np.random.Generator):
  x = np.where(rng.standard_normal((batch, k)) >= 0, 1.0, -1.0).astype(np.float32)
  w = rng.standard_normal((k, n)).astype(np.float32)
  alpha = np.abs(w).mean(0)
  wf = jnp.asarray(np.where(w >= 0, 1.0, -1.0) * alpha, jnp.float32)
  wp = jnp.asarray(packed.pack_kernel(w))
  zeros, flips = jnp.zeros(k, jnp.float32), jnp.zeros(k, bool)
  float_fn = jax.jit(lambda x, w: x @ w)

  @jax.jit
  def packed_fn(x, wp, alpha):
    bits = packed.sign_bits(x, zeros, flips)
    return packed.binary_dense(bits, wp, k).astype(jnp.float32) * alpha

  xj, aj = jnp.asarray(x), jnp.asarray(alpha)
  ref, got = np.asarray(float_fn(xj, wf)), np.asarray(packed_fn(xj, wp, aj))
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3 * np.abs(ref).max())
  return (_runner(float_fn, xj, wf), _runner(packed_fn, xj, wp, aj),
          4 * k * n, int(np.asarray(wp).nbytes))


def conv_case(c: int, hw: int, batch: int, rng: np.random.Generator):
  x = np.where(rng.standard_normal((batch, hw, hw, c)) >= 0, 1.0, -1.0).astype(np.float32)
  w = rng.standard_normal((3, 3, c, c)).astype(np.float32)
  alpha = np.abs(w).mean((0, 1, 2))
  wf = jnp.asarray(np.where(w >= 0, 1.0, -1.0) * alpha, jnp.float32)
  wp = jnp.asarray(packed.pack_kernel(w))
  zeros, flips = jnp.zeros(c, jnp.float32), jnp.zeros(c, bool)

  @jax.jit
  def float_fn(x, w):
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=1.0)
    return lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

  @jax.jit
  def packed_fn(x, wp, alpha):
    bits = packed.sign_bits(x, zeros, flips)
    return packed.binary_conv(bits, wp, 9 * c).astype(jnp.float32) * alpha

  xj, aj = jnp.asarray(x), jnp.asarray(alpha)
  ref, got = np.asarray(float_fn(xj, wf)), np.asarray(packed_fn(xj, wp, aj))
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3 * np.abs(ref).max())
  return (_runner(float_fn, xj, wf), _runner(packed_fn, xj, wp, aj),
          4 * 9 * c * c, int(np.asarray(wp).nbytes))


def reactnet_case(batch: int, rng: np.random.Generator, width: float = 1.0):
  from bnn_jax import data
  model = models.get_model("reactnet18", width=width)
  # rbg key: jit(model.init) with the default threefry key compiles ~5x slower on CPU.
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0, impl="rbg"), jnp.zeros((1, 32, 32, 3)))
  images = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
  mean, std = data.CIFAR10_MEAN, data.CIFAR10_STD
  float_fn = jax.jit(lambda v, im: model.apply(v, data.normalize(im, mean, std), train=False))
  pm = deploy.pack(variables, model="reactnet18", width=width, batch_size=batch)
  packed_fn, arrays = pm.program()  # the jitted program, without the host-side chunking
  im = jnp.asarray(images)
  ref, got = np.asarray(float_fn(variables, im)), np.asarray(packed_fn(arrays, im))
  agree = float(np.mean(ref.argmax(-1) == got.argmax(-1)))
  if agree < 0.95:
    raise AssertionError(f"packed and float ReActNet-18 disagree on {1 - agree:.1%} of images")
  float_bytes = 4 * sum(int(np.size(a)) for a in jax.tree.leaves(variables["params"]))
  return (_runner(float_fn, variables, im), _runner(packed_fn, arrays, im), float_bytes,
          pm.nbytes()["total"])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default="dense,conv,model",
                      help="comma-separated subset of dense,conv,model")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--batches", default="1,64")
  args = parser.parse_args()
  only = set(args.only.split(","))
  batches = [int(b) for b in args.batches.split(",")]
  rng = np.random.default_rng(0)
  cases = []
  for b in batches:
    if "dense" in only:
      cases += [(f"dense 512x512", b, functools.partial(dense_case, 512, 512, b)),
                (f"dense 4096x4096", b, functools.partial(dense_case, 4096, 4096, b))]
    if "conv" in only:
      cases += [(f"conv3x3 64->64, 32x32", b, functools.partial(conv_case, 64, 32, b)),
                (f"conv3x3 256->256, 8x8", b, functools.partial(conv_case, 256, 8, b))]
    if "model" in only:
      cases += [(f"reactnet18 (width 1)", b, functools.partial(reactnet_case, b))]
  cases.sort(key=lambda c: (c[0].split()[0], c[0], c[1]))
  rows = []
  for name, batch, make in cases:
    float_run, packed_run, float_bytes, packed_bytes = make(rng=rng)
    # Few steps per repeat for the slow rows, more for the fast ones.
    probe = common.time_interleaved({"f": float_run}, steps=1, repeats=1, warmup=1).median("f")
    steps = max(1, min(50, int(0.2 / max(probe, 1e-5))))
    t = common.time_interleaved({"float": float_run, "packed": packed_run}, steps=steps,
                                repeats=args.repeats)
    f_ms, p_ms = 1e3 * t.median("float"), 1e3 * t.median("packed")
    rows.append((name, batch, f"{f_ms:.3f}", f"{p_ms:.3f}", f"{f_ms / p_ms:.2f}x",
                 f"{float_bytes:,}", f"{packed_bytes:,}", f"{float_bytes / packed_bytes:.1f}x"))
    print(" ".join(map(str, rows[-1])), flush=True)
  common.print_table(
      "Packed XNOR-popcount vs float32 layers (ms per call, median)",
      ("layer", "batch", "float ms", "packed ms", "speed-up (float/packed)", "float bytes",
       "packed bytes", "bytes ratio"), rows,
      notes=("Packed includes thresholding and packing the float input into uint32 bits; "
             "bytes are the weights (the whole model: float32 params vs the packed file's "
             "arrays).",))


if __name__ == "__main__":
  main()
