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

``--only fda`` times two *packed* models against each other instead: ``resnet18_fda``
(method 2 with every component on, dynamic threshold included: per-sample statistics,
excitations, refinement) against ``resnet18_bnn``, the same width (``--width``) and
batch, on the same random images; each is checked against its float model first.

  python benchmarks/bench_packed.py                   # dense, conv, model rows: a few minutes
  python benchmarks/bench_packed.py --only dense --repeats 9
  python benchmarks/bench_packed.py --only fda --width 0.25 --batches 64 --repeats 3
"""

from __future__ import annotations

import argparse
import functools
from typing import Sequence

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
  model, variables = _init("reactnet18", width)
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


def _init(name: str, width: float, **options):
  model = models.get_model(name, width=width, **options)
  # rbg key: jit(model.init) with the default threefry key compiles ~5x slower on CPU.
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0, impl="rbg"), jnp.zeros((1, 32, 32, 3)))
  return model, variables


def fda_case(batch: int, rng: np.random.Generator, width: float = 0.25):
  """Packed resnet18_bnn against packed resnet18_fda (every method-2 component on)."""
  from bnn_jax import data
  images = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
  im = jnp.asarray(images)
  out = {}
  for name, options in (("resnet18_bnn", {}), ("resnet18_fda", {"dynamic_threshold": True})):
    model, variables = _init(name, width, **options)
    pm = deploy.pack(variables, model=name, width=width, batch_size=batch, **options)
    packed_fn, arrays = pm.program()
    float_fn = jax.jit(lambda v, x: model.apply(
        v, data.normalize(x, data.CIFAR10_MEAN, data.CIFAR10_STD), train=False))
    agree = float(np.mean(np.asarray(float_fn(variables, im)).argmax(-1) ==
                          np.asarray(packed_fn(arrays, im)).argmax(-1)))
    if agree < 0.95:
      raise AssertionError(f"packed and float {name} disagree on {1 - agree:.1%} of images")
    out[name] = (_runner(packed_fn, arrays, im), pm.nbytes()["total"], len(pm.ops))
  return out


def run_fda(batches: Sequence[int], width: float, repeats: int, rng: np.random.Generator):
  rows = []
  for b in batches:
    case = fda_case(b, rng, width)
    (bnn_run, bnn_bytes, bnn_ops), (fda_run, fda_bytes, fda_ops) = (
        case["resnet18_bnn"], case["resnet18_fda"])
    probe = common.time_interleaved({"f": fda_run}, steps=1, repeats=1, warmup=1).median("f")
    steps = max(1, min(50, int(0.2 / max(probe, 1e-5))))
    t = common.time_interleaved({"bnn": bnn_run, "fda": fda_run}, steps=steps, repeats=repeats)
    b_ms, f_ms = 1e3 * t.median("bnn"), 1e3 * t.median("fda")
    rows.append((f"resnet18 (width {width:g})", b, f"{b_ms:.3f}", f"{f_ms:.3f}",
                 f"{f_ms / b_ms:.2f}x", f"{bnn_bytes:,}", f"{fda_bytes:,}",
                 f"{bnn_ops} / {fda_ops}"))
    print(" ".join(map(str, rows[-1])), flush=True)
  common.print_table(
      "Packed resnet18_fda vs packed resnet18_bnn (ms per call, median)",
      ("model", "batch", "bnn packed ms", "fda packed ms", "fda / bnn", "bnn packed bytes",
       "fda packed bytes", "ops bnn / fda"), rows,
      notes=(f"Random init (rbg key 0), random uint8 images; resnet18_fda with every method-2 "
             f"component on (mean_variance, zero_point, dynamic_threshold, excitation, "
             f"refinement); {repeats} repeats, {t.spread(1)} ms.",))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default="dense,conv,model",
                      help="comma-separated subset of dense,conv,model,fda (fda: packed "
                           "resnet18_fda vs packed resnet18_bnn)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--batches", default="1,64")
  parser.add_argument("--width", type=float, default=None,
                      help="width of the whole-model rows (default: 1 for model, 0.25 for fda)")
  args = parser.parse_args()
  only = set(args.only.split(","))
  unknown = only - {"dense", "conv", "model", "fda"}
  if unknown:
    parser.error(f"unknown --only value(s) {sorted(unknown)}")
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
      width = 1.0 if args.width is None else args.width
      cases += [(f"reactnet18 (width {width:g})", b,
                 functools.partial(reactnet_case, b, width=width))]
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
  if "fda" in only:
    run_fda(batches, 0.25 if args.width is None else args.width, args.repeats, rng)
  if not cases:
    return
  common.print_table(
      "Packed XNOR-popcount vs float32 layers (ms per call, median)",
      ("layer", "batch", "float ms", "packed ms", "speed-up (float/packed)", "float bytes",
       "packed bytes", "bytes ratio"), rows,
      notes=("Packed includes thresholding and packing the float input into uint32 bits; "
             "bytes are the weights (the whole model: float32 params vs the packed file's "
             "arrays).",))


if __name__ == "__main__":
  main()
