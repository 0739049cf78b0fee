"""Bit-packed inference runtime: XNOR-popcount layers and the exported-model file.

This file needs nothing but ``jax`` and ``numpy`` (and the standard library): it
imports nothing else from ``bnn_jax``, so it can be copied alone next to an
exported model and run where Flax, optax or TensorFlow are not installed.
``bnn_jax.deploy`` builds the packed model from a checkpoint (BN folding,
packing) and writes it; this module reads it back and runs it.

Bits. A +-1 value is one bit: **bit 1 means -1, bit 0 means +1** (so sign(0) = +1
is bit 0). Bits are packed along the channel (input-feature) axis into
``uint32`` words, channel ``c`` in bit ``c % 32`` of word ``c // 32``; a channel
count that is not a multiple of 32 is padded with bit 0 in both activations and
weights, which XOR to 0 and so add nothing. For K true channels (times the kernel
taps), the +-1 dot product is

    sum_k a_k w_k = K - 2 * popcount(a XOR w)

(each disagreeing pair contributes -1 instead of +1), computed with
``jax.lax.population_count``. A binary conv pads its *binarized* input with +1,
i.e. with zero words, exactly what the float model's ``BinaryConv(pad_value=1)``
feeds, so the packed and float models compute the same integers.

The model is a short program: a list of ops over named registers (see
``OPS``) plus a dict of arrays, run by :class:`PackedModel`. The file is an
uncompressed ``.npz`` (a zip of ``.npy`` arrays, each CRC-checked on read) with
one extra member, ``__meta__``, the UTF-8 JSON metadata: format name and
version, model name, width, classes, options, input normalization, the ops, and
the list of arrays. :func:`load_packed` refuses an unknown format version or a
damaged file with :class:`PackedModelError`, naming the path and the fix.

Format versions. 2 (written now) adds the per-sample ops of the method-2 (``*_fda``)
networks: ``fda_sign`` (per-sample mean-variance adjustment and zero point, then the
sign: :func:`fda_presign`), ``excite`` (grouped squeeze-and-excitation:
:func:`group_excitation`), and a second input of ``affine``/``bconv``, a per-sample,
per-channel gate that multiplies the scaled output. Version 1 files (the plain BNNs)
use a subset of version 2 with the same meaning and are still read.

>>> import numpy as np
>>> x = np.array([[1., -1., 1., 1.]]); w = np.array([[1.], [1.], [-1.], [1.]])
>>> a, b = pack_signs(x), pack_signs(w.T)          # (1, 1) words each
>>> int(binary_dense(a, b.T, k=4)[0, 0]), int((x @ w)[0, 0])
(0, 0)
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

FORMAT = "bnn_jax.packed"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)   # version 1 is a subset of version 2 (no fda_sign/excite/gates)
META_KEY = "__meta__"
WORD_BITS = 32

Array = Any


class PackedModelError(ValueError):
  """An exported model file that cannot be used; the message names the path and the fix."""

  def __init__(self, path: str, message: str):
    self.path = path
    super().__init__(f"{path}: {message}")


# --- bits -----------------------------------------------------------------------


def num_words(channels: int) -> int:
  """uint32 words that hold ``channels`` bits."""
  return -(-int(channels) // WORD_BITS)


def pack_bits(bits: Array) -> Array:
  """Packs a boolean array along its last axis into uint32 words (bit 1 = True = -1).

  ``(..., C) -> (..., ceil(C / 32))``; channel c is bit c % 32 of word c // 32,
  missing channels of the last word are 0 (+1). Works on NumPy and JAX arrays
  (returns the same kind).
  """
  xp = jnp if isinstance(bits, jax.Array) else np
  c = bits.shape[-1]
  words = num_words(c)
  pad = words * WORD_BITS - c
  b = xp.asarray(bits).astype(xp.uint32)
  if pad:
    b = xp.concatenate([b, xp.zeros(b.shape[:-1] + (pad,), xp.uint32)], axis=-1)
  b = b.reshape(b.shape[:-1] + (words, WORD_BITS))
  shifts = xp.arange(WORD_BITS, dtype=xp.uint32)
  return xp.sum(b << shifts, axis=-1, dtype=xp.uint32)


def unpack_bits(words: Array, channels: int) -> np.ndarray:
  """Inverse of :func:`pack_bits`: ``(..., W) uint32 -> (..., channels)`` bool (True = -1)."""
  w = np.asarray(words, np.uint32)
  bits = (w[..., None] >> np.arange(WORD_BITS, dtype=np.uint32)) & 1
  return bits.reshape(w.shape[:-1] + (-1,))[..., :channels].astype(bool)


def pack_signs(x: Array) -> Array:
  """Packs sign(x) along the last axis (sign(0) = +1, so bit = x < 0)."""
  return pack_bits(x < 0)


def pack_kernel(w: Array) -> np.ndarray:
  """Packs the signs of a latent kernel along its input axis (second to last).

  Conv HWIO ``(kh, kw, cin, cout) -> (kh, kw, ceil(cin/32), cout)``; dense
  ``(cin, cout) -> (ceil(cin/32), cout)``.
  """
  w = np.asarray(w)
  return np.moveaxis(pack_signs(np.moveaxis(w, -2, -1)), -1, -2)


# --- XNOR-popcount layers -----------------------------------------------------------


def _popcount_xor(a: Array, w: Array) -> Array:
  return lax.population_count(a ^ w).astype(jnp.int32)


def binary_dense(x: Array, w: Array, k: int) -> Array:
  """+-1 matrix product from packed bits: ``(N, Wd) x (Wd, M) -> (N, M)`` int32.

  out[n, m] = k - 2 * sum_j popcount(x[n, j] XOR w[j, m]), k the true (unpadded)
  input size. Accumulates one word column at a time (elementwise ops that XLA
  fuses into a single loop); a ``fori_loop`` beyond 32 words keeps the graph small.
  """
  x = jnp.asarray(x, jnp.uint32)
  w = jnp.asarray(w, jnp.uint32)
  n_words = x.shape[-1]
  if n_words <= 32:
    acc = _popcount_xor(x[:, 0:1], w[0])
    for j in range(1, n_words):
      acc = acc + _popcount_xor(x[:, j:j + 1], w[j])
  else:
    def body(j, acc):
      return acc + _popcount_xor(lax.dynamic_slice_in_dim(x, j, 1, axis=1), w[j])
    acc = lax.fori_loop(0, n_words, body, jnp.zeros((x.shape[0], w.shape[1]), jnp.int32))
  return k - 2 * acc


def binary_conv(x: Array, w: Array, k: int, strides: Sequence[int] = (1, 1),
                pads: Sequence[Sequence[int]] = ((1, 1), (1, 1))) -> Array:
  """+-1 convolution from packed bits, NHWC: ``(N, H, W, Wd) x (kh, kw, Wd, M)`` -> int32.

  The input is padded spatially with zero words (+1, as ``BinaryConv``'s
  ``pad_value=1``), then out = k - 2 * sum over taps and words of
  popcount(patch XOR w), k = kh * kw * true input channels.
  """
  x = jnp.asarray(x, jnp.uint32)
  w = jnp.asarray(w, jnp.uint32)
  kh, kw, n_words, _ = w.shape
  (pt, pb), (pl, pr) = pads
  sh, sw = strides
  x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  ho = (x.shape[1] - kh) // sh + 1
  wo = (x.shape[2] - kw) // sw + 1
  acc = None
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
      for c in range(n_words):
        term = _popcount_xor(patch[..., c:c + 1], w[i, j, c])
        acc = term if acc is None else acc + term
  return k - 2 * acc


def sign_bits(x: Array, threshold: Array, flip: Array) -> Array:
  """Per-channel threshold sign, packed: bit (= -1) where x < t, or x > t where ``flip``.

  This is sign(a_c * x + d_c) with sign(0) = +1 for t = -d_c / a_c (flip where
  a_c < 0): a BatchNorm feeding a sign folded into one number per channel.
  """
  x = x.astype(jnp.float32)
  neg = jnp.where(flip, x > threshold, x < threshold)
  return pack_bits(neg)


def fda_presign(x: Array, axes: Sequence[int] = (1, 2), eps: float = 1e-5,
                gamma: Optional[Array] = None, beta: Optional[Array] = None,
                theta: Optional[Array] = None, theta_dyn: Optional[Array] = None) -> Array:
  """u = x' - theta_c - theta_dyn, the real value a method-2 sign (``FDASign``) thresholds at 0.

  x' = gamma_c (x - mu) / sqrt(var + eps) + beta_c with mu and the biased var per sample
  over ``axes`` ((1, 2): per sample and channel over H, W, "hw"; (1, 2, 3): per sample,
  "chw") when ``gamma`` is given, else x' = x. ``theta`` [C] is the zero point,
  ``theta_dyn`` [B, 1, 1, C] the dynamic threshold. Equivalently bit (-1) where
  x < mu + sqrt(var + eps) (theta_c + theta_dyn - beta_c) / gamma_c (> for gamma_c < 0):
  a per-sample, per-channel threshold on the real input. Computed in float32 in the float
  model's order (``distribution.MeanVarianceAdjust`` then ``ZeroPointSign``), so the bits
  agree with it up to the rounding of the statistics.
  """
  u = x.astype(jnp.float32)
  if gamma is not None:
    axes = tuple(axes)
    mu = jnp.mean(u, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(u - mu), axis=axes, keepdims=True)
    u = gamma * ((u - mu) * lax.rsqrt(var + eps)) + beta
  if theta is not None:
    u = u - theta
  if theta_dyn is not None:
    u = u - theta_dyn
  return u


def group_excitation(x: Array, w1: Array, b1: Array, w2: Array, b2: Array, mode: str = "scale",
                     bound: Optional[Array] = None) -> Array:
  """Grouped squeeze-and-excitation (``GroupExcitation``): [B, H, W, C_in] -> [B, 1, 1, C_out].

  s = mean over H, W of x, split into G = w1.shape[0] contiguous groups; per group
  z_g = relu(s_g @ w1[g] + b1[g]) @ w2[g] + b2[g]; out = sigmoid(z) ("scale") or
  tanh(z) * bound ("offset"). w1 [G, C_in/G, hidden], w2 [G, hidden, C_out/G].
  """
  s = jnp.mean(x.astype(jnp.float32), axis=tuple(range(1, x.ndim - 1)))
  g = w1.shape[0]
  s = s.reshape(s.shape[0], g, s.shape[-1] // g)
  h = jax.nn.relu(jnp.einsum("bgi,gio->bgo", s, w1) + b1)
  z = (jnp.einsum("bgi,gio->bgo", h, w2) + b2).reshape(s.shape[0], -1)
  if mode == "scale":
    out = jax.nn.sigmoid(z)
  elif mode == "offset":
    out = jnp.tanh(z) * bound
  else:
    raise ValueError(f"Unknown excitation mode {mode!r} (scale, offset).")
  return out.reshape((s.shape[0],) + (1,) * (x.ndim - 2) + (out.shape[-1],))


# --- the program -----------------------------------------------------------------------


def _conv(x, w, strides, padding, operands: str = "float32"):
  """A real conv, float32 out; ``operands="bfloat16"`` rounds x and w to bfloat16 first
  (float32 accumulation), as a bfloat16 model's convs do."""
  pad = padding if isinstance(padding, str) else [tuple(p) for p in padding]
  dtype = jnp.dtype(operands)
  return lax.conv_general_dilated(x.astype(dtype), w.astype(dtype), tuple(strides), pad,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  preferred_element_type=jnp.float32)


def _pool(x, kind: str, window: int):
  dims = (1, window, window, 1)
  if kind == "max":
    init = jnp.array(-jnp.inf if jnp.issubdtype(x.dtype, jnp.floating)
                     else jnp.iinfo(x.dtype).min, x.dtype)
    return lax.reduce_window(x, init, lax.max, dims, dims, "VALID")
  return lax.reduce_window(x, jnp.array(0, x.dtype), lax.add, dims, dims, "VALID") / (window ** 2)


def _affine(x, scale, bias, gate=None):
  """x * scale [* gate] + bias in float32 (gate: a per-sample, per-channel [B, 1, 1, C])."""
  y = x.astype(jnp.float32)
  if scale is not None:
    y = y * scale
  if gate is not None:
    y = y * gate
  if bias is not None:
    y = y + bias
  return y


def _inputs(op: dict, env: dict) -> list:
  names = op["in"]
  return [env[names]] if isinstance(names, str) else [env[name] for name in names]


def _sign_input(op: dict, env: dict, p: Callable[[Optional[str]], Any]):
  """(value, threshold) of a sign op: its bits are -1 where value < threshold (> if flipped)."""
  if op["op"] == "sign":
    return env[op["in"]].astype(jnp.float32), p(op["threshold"])
  ins = _inputs(op, env)
  u = fda_presign(ins[0], op.get("axes", (1, 2)), op.get("eps", 1e-5), p(op.get("gamma")),
                  p(op.get("beta")), p(op.get("theta")), ins[1] if len(ins) > 1 else None)
  return u, jnp.zeros((), jnp.float32)


def _run_op(op: dict, env: dict, p: Callable[[Optional[str]], Any]):
  kind = op["op"]
  x = env[op["in"]] if isinstance(op.get("in"), str) else None
  if kind == "normalize":
    return (x.astype(jnp.float32) / 255.0 - p(op["mean"])) / p(op["std"])
  if kind == "conv":
    y = _conv(x, p(op["w"]), op["strides"], op["padding"], op.get("operands", "float32"))
    return y if op.get("b") is None else y + p(op["b"])
  if kind == "sign":
    return sign_bits(x, p(op["threshold"]), p(op["flip"]))
  if kind == "fda_sign":
    u, _ = _sign_input(op, env, p)
    return pack_bits(u < 0)
  if kind == "excite":
    return group_excitation(x, p(op["w1"]), p(op["b1"]), p(op["w2"]), p(op["b2"]),
                            op.get("mode", "scale"), p(op.get("bound")))
  if kind in ("bconv", "bdense", "affine"):
    ins = _inputs(op, env)   # [x] or [x, gate]
    gate = ins[1] if len(ins) > 1 else None
    y = ins[0]
    if kind == "bconv":
      y = binary_conv(y, p(op["w"]), op["k"], op["strides"], op["pads"])
    elif kind == "bdense":
      y = binary_dense(y, p(op["w"]), op["k"])
    if kind != "affine" and op.get("scale") is None and op.get("bias") is None and gate is None:
      return y
    return _affine(y, p(op.get("scale")), p(op.get("bias")), gate)
  if kind == "add":
    a, b = (env[name] for name in op["in"])
    coef = op.get("coef", 1.0)
    return a + (b if coef == 1.0 else coef * b)
  if kind == "rprelu":
    y = x + p(op["shift_in"])
    y = jnp.where(y >= 0, y, p(op["slope"]) * y)
    return y + p(op["shift_out"])
  if kind == "hardtanh":
    return jnp.clip(x, -1.0, 1.0)
  if kind == "pool":
    return _pool(x, op["kind"], op["window"])
  if kind == "mean_hw":
    return jnp.mean(x, axis=(1, 2))
  if kind == "flatten":
    return x.reshape((x.shape[0], -1))
  if kind == "dense":
    y = x.astype(jnp.float32) @ p(op["w"])
    return y if op.get("b") is None else y + p(op["b"])
  raise ValueError(f"Unknown op {kind!r}")


OPS = ("normalize", "conv", "sign", "fda_sign", "excite", "bconv", "bdense", "affine", "add",
       "rprelu", "hardtanh", "pool", "mean_hw", "flatten", "dense")
OPS_V1 = ("normalize", "conv", "sign", "bconv", "bdense", "affine", "add", "rprelu", "hardtanh",
          "pool", "mean_hw", "flatten", "dense")
SIGN_OPS = ("sign", "fda_sign")


def run_program(ops: Sequence[dict], arrays: dict, images: Array, output: str = "logits",
                margins: bool = False):
  """Runs ``ops`` on ``images`` (register "input"); returns register ``output``.

  With ``margins``, returns ``(output, margin)``: per image the smallest distance
  |x - t| of any input of a sign op to its threshold (in that op's input units; for
  ``fda_sign`` |u| of :func:`fda_presign`; +inf if none), i.e. how close the image
  came to a different bit somewhere. A float implementation of the same network
  (other summation order) can disagree only where this is within its rounding error.
  """
  env = {"input": images}
  p = lambda name: None if name is None else arrays[name]
  uses: dict[str, int] = {}
  for op in ops:
    for name in [op["in"]] if isinstance(op["in"], str) else op["in"]:
      uses[name] = uses.get(name, 0) + 1
  one = jnp.minimum(images.reshape(-1)[0].astype(jnp.int32), 0) + 1  # 1, unknown to XLA
  margin = jnp.full((images.shape[0],), jnp.inf, jnp.float32)
  for op in ops:
    if margins and op["op"] in SIGN_OPS:
      x, t = _sign_input(op, env, p)
      dist = jnp.where(jnp.isfinite(t), jnp.abs(x - t), jnp.inf)
      margin = jnp.minimum(margin, jnp.min(dist.reshape(dist.shape[0], -1), axis=1))
    out = _run_op(op, env, p)
    env[op["out"]] = _materialize(out, one) if uses.get(op["out"], 0) > 1 else out
  return (env[output], margin) if margins else env[output]


def _materialize(x: Array, one: Array) -> Array:
  """``x``, computed once into a buffer of its own.

  A register read by two ops (a residual stream: the next sign and the next add)
  is otherwise fused by XLA into both consumers, recomputing its whole producer
  chain, binary convs included, in each: quadratic work along a stage (2.7x
  slower for ReActNet-18 at batch 64). ``optimization_barrier`` does not stop
  that fusion on CPU; a while loop with a trip count XLA cannot see (``one`` is
  1 at run time) does, at the cost of one buffer.
  """
  def body(carry):
    i, value, _ = carry
    return i + 1, value, value
  return lax.while_loop(lambda c: c[0] < one, body, (jnp.int32(0), x, jnp.zeros_like(x)))[2]


class PackedModel:
  """A packed network: ``model(images)`` -> float32 logits (NumPy).

  ``images``: uint8 NHWC ``(N, H, W, C)`` (or one ``(H, W, C)`` image) as the
  dataset stores them; normalization is part of the model. Inputs are run in
  chunks of ``batch_size`` (the last one padded, so one compiled shape serves
  every call). ``classes(images)`` gives the argmax.
  """

  def __init__(self, ops: Sequence[dict], arrays: dict, meta: dict, batch_size: int = 256):
    self.ops = [dict(op) for op in ops]
    self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
    self.meta = dict(meta)
    self.batch_size = int(batch_size)
    self._device_arrays = None
    output = self.meta.get("output", "logits")
    self._fn = jax.jit(lambda arrays, images: run_program(self.ops, arrays, images, output))
    self._fn_margins = jax.jit(lambda arrays, images: run_program(
        self.ops, arrays, images, output, margins=True))

  @property
  def input_shape(self) -> tuple:
    return tuple(self.meta.get("input_shape", (32, 32, 3)))

  def __call__(self, images: Array) -> np.ndarray:
    return self._run(images, self._fn)

  predict = __call__

  def program(self) -> tuple[Callable, dict]:
    """``(fn, arrays)``: the jitted ``fn(arrays, images) -> logits`` without host-side
    chunking or checks, and the device arrays (for benchmarks and embedding in a larger jit)."""
    if self._device_arrays is None:
      self._device_arrays = {k: jnp.asarray(v) for k, v in self.arrays.items()}
    return self._fn, self._device_arrays

  def logits_and_margins(self, images: Array) -> tuple[np.ndarray, np.ndarray]:
    """(logits, margin): margin per image as in :func:`run_program` with ``margins``."""
    return self._run(images, self._fn_margins)

  def _run(self, images: Array, fn):
    images = np.asarray(images)
    if images.dtype != np.uint8:
      raise TypeError(
          f"A packed model takes uint8 images as the dataset stores them (0-255, NHWC), got "
          f"{images.dtype}; pass the raw images: normalization is built into the model.")
    single = images.ndim == len(self.input_shape)
    if single:
      images = images[None]
    if images.shape[1:] != self.input_shape:
      raise ValueError(f"Expected images of shape (N, {', '.join(map(str, self.input_shape))}), "
                       f"got {images.shape}.")
    _, arrays = self.program()
    n, bs = len(images), min(self.batch_size, max(len(images), 1))
    outs = []
    for start in range(0, n, bs):
      chunk = images[start:start + bs]
      if len(chunk) < bs:
        chunk = np.concatenate([chunk, np.zeros((bs - len(chunk),) + chunk.shape[1:], np.uint8)])
      out = jax.tree.map(lambda a: np.asarray(a)[:min(bs, n - start)], fn(arrays, chunk))
      outs.append(out)
    if not outs:
      raise ValueError("No images given.")
    out = jax.tree.map(lambda *parts: np.concatenate(parts), *outs)
    return jax.tree.map(lambda a: a[0], out) if single else out

  def classes(self, images: Array) -> np.ndarray:
    """Predicted class per image (argmax of the logits)."""
    return np.argmax(self(images), axis=-1)

  def nbytes(self) -> dict:
    """Bytes of the arrays: {"binary", "float", "total"} (binary = packed +-1 weights)."""
    binary = sum(self.arrays[name].nbytes for name in self.meta.get("binary_arrays", []))
    total = sum(a.nbytes for a in self.arrays.values())
    return {"binary": binary, "float": total - binary, "total": total}

  def save(self, path: str) -> int:
    """Writes the model to ``path`` (an uncompressed ``.npz``, atomically); returns its size."""
    meta = dict(self.meta, format=FORMAT, format_version=FORMAT_VERSION, ops=self.ops,
                arrays={k: {"dtype": str(v.dtype), "shape": list(v.shape)}
                        for k, v in self.arrays.items()})
    blob = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), np.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".packed-", suffix=".npz")
    try:
      with os.fdopen(fd, "wb") as f:
        np.savez(f, **{META_KEY: blob}, **self.arrays)
      os.replace(tmp, path)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise
    return os.path.getsize(path)


def read_meta(path: str) -> dict:
  """The metadata of an exported file, checked for format and version (arrays not read)."""
  return _read(path, arrays=False)[0]


def load_packed(path: str, batch_size: int = 256) -> PackedModel:
  """Loads a file written by ``bnn_jax.deploy.export``; returns its ``predict(images)``.

  The returned :class:`PackedModel` is called on uint8 NHWC images and returns
  float32 logits; ``.classes(images)`` the predicted classes, ``.meta`` the
  metadata. Raises :class:`PackedModelError` (naming the path and the fix) for a
  missing, damaged or truncated file, or one of another format version.
  """
  meta, arrays = _read(path, arrays=True)
  return PackedModel(meta["ops"], arrays, meta, batch_size=batch_size)


_REEXPORT = ("re-export it from its checkpoint: `python -m bnn_jax.inspect RUN_DIR --export FILE`"
             " (or bnn_jax.deploy.export)")


def _read(path: str, arrays: bool) -> tuple[dict, dict]:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise PackedModelError(path, "no such file; pass the path that bnn_jax.deploy.export wrote.")
  damaged = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError,
             UnicodeDecodeError, json.JSONDecodeError)
  try:
    with np.load(path, allow_pickle=False) as npz:
      if META_KEY not in npz.files:
        raise PackedModelError(path, f"not a packed bnn_jax model (no {META_KEY} entry); "
                                     f"{_REEXPORT}.")
      meta = json.loads(npz[META_KEY].tobytes().decode("utf-8"))
      _check_meta(path, meta)
      out = {}
      if arrays:
        for name, spec in meta["arrays"].items():
          a = npz[name]
          if str(a.dtype) != spec["dtype"] or list(a.shape) != spec["shape"]:
            raise PackedModelError(path, f"array {name!r} is {a.dtype}{list(a.shape)}, the "
                                         f"metadata says {spec['dtype']}{spec['shape']}: the "
                                         f"file is damaged; {_REEXPORT}.")
          out[name] = a
  except PackedModelError:
    raise
  except damaged as e:
    raise PackedModelError(
        path, f"the file is damaged or truncated and cannot be read ({type(e).__name__}: "
              f"{str(e)[:200]}); {_REEXPORT}.") from e
  return meta, out


def _check_meta(path: str, meta: Any) -> None:
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise PackedModelError(path, f"not a packed bnn_jax model (format "
                                 f"{meta.get('format') if isinstance(meta, dict) else None!r}, "
                                 f"expected {FORMAT!r}); {_REEXPORT}.")
  version = meta.get("format_version")
  if version not in READABLE_VERSIONS:
    raise PackedModelError(
        path, f"format version {version!r}, but this bnn_jax reads version {FORMAT_VERSION} "
              f"(and the older {', '.join(map(str, READABLE_VERSIONS[:-1]))}); load it with the "
              f"bnn_jax version that wrote it (bnn_jax {meta.get('bnn_jax_version', '?')}), or "
              f"{_REEXPORT}.")
  for key in ("ops", "arrays"):
    if key not in meta:
      raise PackedModelError(path, f"metadata lacks {key!r}: the file is damaged; {_REEXPORT}.")
  known = OPS_V1 if version == 1 else OPS
  unknown = sorted({op.get("op") for op in meta["ops"]} - set(known))
  if unknown:
    raise PackedModelError(path, f"uses ops {unknown} this runtime does not know; load it with "
                                 f"a newer bnn_jax or {_REEXPORT}.")
