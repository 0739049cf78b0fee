"""Deployment: BatchNorm folding, bit packing, XNOR-popcount inference, export.

From a float checkpoint to the "BN-equivalent" packed network (``pack``) and a
file (``export``), run by ``load_packed`` (re-exported from the flax-free
``bnn_jax.packed`` runtime).

**Conversion per module, not per network.** ``pack`` builds the Flax model with the
one model factory (``models.from_config``), traces it (``summary.trace_modules``: every
module call, its type, fields and shapes) and converts it from the root module down:
each module is converted by the rule registered for its *type* in :data:`RULES`
(``{type name: rule}``), in the spirit of a graph converter's patterns (Larq Compute
Engine's converter). A network rule converts its stem, dispatches each block by the
block's type and adds the head; a block rule converts its own dataflow (adds,
shortcuts) and dispatches its submodules by type: the pre-sign module (``RSign``,
``Sign``, ``FDASign``), the ``BinaryConv``, the excitation (``GroupExcitation``),
``BatchNorm``, the refinement (``FeatureRefinement``/``RPReLU``, one rule). A new module
needs only its own rule (``@rule("MyBlock", container=True)`` or ``RULES["MyBlock"] =
fn``); a module type without one is a ``ValueError`` naming its path and type, and so
is any traced module no rule converted, or any parameter no rule used (``check_all_used``).

Values between rules: a real feature map is a :class:`Real`, a register plus a
*pending* per-channel affine (and an optional per-sample gate and hardtanh):
BatchNorm and the binary conv's scale alpha are not emitted as ops but composed into
the pending affine, so the consumer decides how to fold them. Packed +-1 maps are
:class:`Bits`.

* **A BatchNorm that feeds a sign** becomes one per-channel threshold. With
  mul_c = gamma_c / sqrt(var_c + eps) and d_c = beta_c - mean_c * mul_c, and the
  binary conv before it giving alpha_c * n (n the integer +-1 dot product,
  alpha_c = mean|W_c| > 0),
      sign(BN(alpha_c n)) = sign(a_c n + d_c),  a_c = alpha_c * mul_c,
  is -1 (bit 1) exactly where n < t_c = -d_c / a_c, or where n > t_c when a_c < 0
  (a negative BN scale flips the comparison), and constant when a_c = 0. An
  RSign threshold, sign(x + b_c), is the threshold t_c = -b_c on x. A hardtanh
  between them keeps the sign (VGG-Small: BN -> hardtanh -> Sign is one threshold),
  and max-pooling between the conv and the BN commutes with n -> alpha_c n
  (alpha > 0), so it runs on the integers. This fold needs a plain per-channel
  sign (``Sign``/``RSign``, or an ``FDASign`` with only its zero point on); a
  refinement or excitation in between, or an ``FDASign`` with per-sample statistics,
  gets the real value instead.
* **Any other BatchNorm** is folded into the layer before it: after a binary
  conv into the per-channel scale and bias applied to the integer dot product
  (y = a_c n + d_c); after a real conv into its kernel and a bias
  (W'_c = mul_c W_c, b'_c = d_c) -- a last pass fuses each pending affine into
  the conv that produced its input when nothing else reads that conv's output.
* **Method 2** (``FDASign``, ``GroupExcitation``, ``FeatureRefinement``): the
  per-sample mean-variance adjustment plus the zero point and the dynamic threshold
  are a per-sample, per-channel threshold on the real input of the sign, computed at
  run time (op ``fda_sign``: bit = x' - theta - theta_dyn < 0 with
  x' = gamma (x - mu) / sqrt(var + eps) + beta, mu and var per sample); the dynamic
  threshold and the excitation scales are a grouped squeeze-and-excitation of the real
  input (op ``excite``); the scales multiply the integer dot product as a per-sample
  gate of its affine; the refinement is an ``rprelu`` op.
* **Binary weights** are packed, bit 1 = -1, along the input channels into uint32
  (``bnn_jax.packed.pack_kernel``); binary convs and dense layers compute
  K - 2 popcount(a XOR w). The stem, the real shortcuts (1x1 convs) and the
  classifier stay float32.

The packed model computes the same function as the float model in eval mode
(``use_running_average``) up to float32 summation order: the integer dot products
are exact, the folded scales differ from the float model's in the last bits.
A sign whose argument lies within that rounding of 0 can come out differently;
see ``tests/test_deploy.py`` for the measured agreement.

Tested models (:data:`SUPPORTED_MODELS`): ``reactnet18``, ``reactnet18_bnfree``,
``reactnet18_fda``, ``resnet18_bnn``, ``resnet18_fda``, ``vgg_small_bnn``,
``vgg_small_fda`` (any width, classes and options); any other composition of the
module types in :data:`RULES` converts too (``pack(variables, model=flax_module)``).
Rules refuse settings they cannot pack exactly (zero padding, weights not binarized,
a binarizer that is not sign, ...).

This module imports no Flax at import time (only ``pack``/``export`` do), so
``from bnn_jax.deploy import load_packed`` needs jax and numpy only.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Optional, Sequence

import numpy as np

from bnn_jax.packed import (FORMAT, FORMAT_VERSION, PackedModel, PackedModelError, load_packed,
                            pack_kernel, read_meta)

__all__ = ["export", "pack", "load_packed", "read_meta", "PackedModel", "PackedModelError",
           "SUPPORTED_MODELS", "FORMAT_VERSION", "RULES", "rule", "Real", "Bits",
           "dataset_normalization"]

SUPPORTED_MODELS = ("reactnet18", "reactnet18_bnfree", "reactnet18_fda", "resnet18_bnn",
                    "resnet18_fda", "vgg_small_bnn", "vgg_small_fda")
BINARY_TYPES = ("BinaryConv", "BinaryDense")


def dataset_normalization(dataset: str = "cifar10") -> tuple[tuple, tuple]:
  """(mean, std) in [0, 1] units that the trainer normalizes ``dataset`` with."""
  from bnn_jax import data
  table = {"cifar10": (data.CIFAR10_MEAN, data.CIFAR10_STD),
           "cifar100": (data.CIFAR100_MEAN, data.CIFAR100_STD)}
  if dataset not in table:
    raise ValueError(f"No normalization known for dataset {dataset!r} (known: "
                     f"{', '.join(table)}); pass normalization=(mean, std).")
  return tuple(table[dataset][0]), tuple(table[dataset][1])


# --- values flowing between rules ---------------------------------------------------------


@dataclasses.dataclass(eq=False)
class Real:
  """A real feature map: ``act(reg * scale * gate + bias)``, the part after ``reg`` pending.

  ``scale``, ``bias``: per-channel float64 arrays (or scalars), None = 1 / 0; ``gate``: a
  register holding a per-sample, per-channel multiplier [B, 1, 1, C] (the excitation
  scales, >= 0); ``act``: None or "hardtanh". Pending parts are folded by the consumer
  (a sign into its threshold, a conv into its weights) or emitted by ``_Builder.real``.
  ``name`` names the arrays of the pending affine.
  """
  reg: str
  scale: Any = None
  bias: Any = None
  gate: Optional[str] = None
  act: Optional[str] = None
  name: str = ""
  materialized: Optional[str] = None   # the register of the whole value, once emitted

  @property
  def pending(self) -> bool:
    return (self.scale is not None or self.bias is not None or self.gate is not None
            or self.act is not None)


@dataclasses.dataclass(frozen=True)
class Bits:
  """A +-1 feature map packed along its channels (``packed.pack_bits``) in register ``reg``."""
  reg: str


# --- the rule table ----------------------------------------------------------------------------

Rule = Callable[["_Builder", str, Any], Any]
RULES: dict[str, Rule] = {}
CONTAINERS: set[str] = set()   # types whose rule dispatches its children itself


def rule(*types: str, container: bool = False):
  """Registers the decorated ``fn(builder, path, value) -> value`` as the rule of ``types``.

  A ``container`` rule converts its children by dispatching them (``builder.convert``);
  any other rule owns its whole subtree (e.g. ``RSign`` reads its ``threshold`` child's
  bias itself).
  """
  def register(fn: Rule) -> Rule:
    for t in types:
      RULES[t] = fn
      (CONTAINERS.add if container else CONTAINERS.discard)(t)
    return fn
  return register


# --- building the program ----------------------------------------------------------


class _Builder:
  """Collects ops and arrays, dispatches modules to rules, records what was used."""

  def __init__(self, params: dict, batch_stats: dict, calls: dict,
               conv_operands: str = "float32"):
    self.conv_operands = conv_operands   # "bfloat16": real convs round their operands (below)
    self.params = params
    self.batch_stats = batch_stats
    self.calls = calls
    self.ops: list[dict] = []
    self.arrays: dict[str, np.ndarray] = {}
    self.binary: list[str] = []
    self.used: set[tuple[str, str]] = set()
    self.converted: set[str] = set()
    self.conv64: dict[str, tuple[np.ndarray, np.ndarray]] = {}   # conv out -> (w, b) float64
    self.affine64: dict[str, tuple[Any, Any]] = {}               # affine out -> (scale, bias)
    self._n = 0

  # modules
  def convert(self, path: str, x: Any) -> Any:
    """Converts the module at ``path`` by its type's rule; returns the rule's value."""
    call = self.calls.get(path)
    if call is None:
      raise ValueError(f"Cannot pack {path or 'the model'}: no such module call in the trace.")
    fn = RULES.get(call.type)
    if fn is None:
      raise ValueError(f"Cannot pack {path or 'the model'}: no conversion rule for module type "
                       f"{call.type} (supported: {', '.join(sorted(RULES))}).")
    self.converted.add(path)
    if call.type not in CONTAINERS:
      self.converted.update(p for p in self.calls if p.startswith(f"{path}/" if path else ""))
    return fn(self, path, x)

  def has(self, path: str) -> bool:
    return path in self.calls

  def call(self, path: str):
    return self.calls[path]

  def attrs(self, path: str) -> dict:
    return self.calls[path].attrs

  def children(self, path: str) -> list:
    """The direct submodules of ``path`` in call(-finish) order."""
    prefix = f"{path}/" if path else ""
    return [c for p, c in self.calls.items()
            if p and p != path and p.startswith(prefix) and "/" not in p[len(prefix):]]

  # variables
  def var(self, path: str, collection: str = "params") -> np.ndarray:
    node = self.params if collection == "params" else self.batch_stats
    for key in path.split("/"):
      if not hasattr(node, "keys") or key not in node:
        raise ValueError(f"The checkpoint has no {collection} {path!r}; does it belong to "
                         f"this model (name, width, classes)?")
      node = node[key]
    self.used.add((collection, path))
    return np.asarray(node, np.float64)

  # program
  def array(self, name: str, value, dtype=np.float32, binary: bool = False) -> str:
    base, i = name, 1
    while name in self.arrays:
      i += 1
      name = f"{base}_{i}"
    self.arrays[name] = np.ascontiguousarray(np.asarray(value).astype(dtype))
    if binary:
      self.binary.append(name)
    return name

  def reg(self) -> str:
    self._n += 1
    return f"r{self._n}"

  def op(self, op_name: str, inp, **attrs) -> str:
    out = attrs.pop("out", None) or self.reg()
    self.ops.append({"op": op_name, "in": inp, "out": out, **attrs})
    return out

  # real values
  def real(self, v: Real) -> str:
    """The register of ``v`` with everything pending emitted (once per value)."""
    if isinstance(v, Bits):
      raise ValueError("A +-1 (packed) value where a real one is needed.")
    if v.materialized is not None:
      return v.materialized
    reg = v.reg
    if v.scale is not None or v.bias is not None or v.gate is not None:
      extra = {}
      if v.scale is not None:
        extra["scale"] = self.array(f"{v.name}/scale", np.ravel(v.scale))
      if v.bias is not None:
        extra["bias"] = self.array(f"{v.name}/bias", np.ravel(v.bias))
      reg = self.op("affine", [reg, v.gate] if v.gate is not None else reg, **extra)
      self.affine64[reg] = (v.scale, v.bias)
    if v.act == "hardtanh":
      reg = self.op("hardtanh", reg)
    elif v.act is not None:
      raise ValueError(f"Unknown pending activation {v.act!r}.")
    v.materialized = reg
    return reg

  def affine(self, v: Real, scale, bias, name: str) -> Real:
    """``v * scale + bias`` (per channel; None = 1 / 0), pending."""
    if v.act is not None or v.materialized is not None:
      v = Real(self.real(v))
    s = v.scale if scale is None else (scale if v.scale is None else v.scale * scale)
    d = v.bias
    if d is not None and scale is not None:
      d = d * scale
    if bias is not None:
      d = bias if d is None else d + bias
    return Real(v.reg, s, d, v.gate, None, name)

  def gated(self, v: Real, gate: str, name: str) -> Real:
    """``v * gate`` (gate a register [B, 1, 1, C] >= 0), pending."""
    if v.bias is not None or v.gate is not None or v.act is not None or v.materialized:
      v = Real(self.real(v))
    return Real(v.reg, v.scale, None, gate, None, name or v.name)

  def activation(self, v: Real, kind: str) -> Real:
    if v.act is not None or v.materialized is not None:
      v = Real(self.real(v))
    return dataclasses.replace(v, act=kind, materialized=None)

  # checks
  def check_all_converted(self) -> None:
    missed = [c for p, c in self.calls.items() if p not in self.converted]
    if missed:
      parent = missed[0].path.rsplit("/", 1)[0] if "/" in missed[0].path else ""
      ptype = self.calls[parent].type if parent in self.calls else "?"
      raise ValueError(f"Cannot pack {missed[0].path}: no rule converted this "
                       f"{missed[0].type} module (the rule of {parent or 'the model'}, "
                       f"a {ptype}, does not use it); {len(missed)} module(s) left over: "
                       f"{', '.join(c.path for c in missed[:5])}.")

  def check_all_used(self, model_name: str) -> None:
    missing = []
    for collection, tree in (("params", self.params), ("batch_stats", self.batch_stats)):
      for path in _leaf_paths(tree):
        if (collection, path) not in self.used:
          missing.append(f"{collection}/{path}")
    if missing:
      raise ValueError(f"Packing {model_name} did not use {len(missing)} variable(s) "
                       f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); the "
                       f"model has layers bnn_jax.deploy does not know how to pack.")

  # the last pass
  def finish(self, output: str) -> None:
    """Fuses affines into their producing convs, names the output "logits", drops unused arrays."""
    uses: dict[str, int] = {}
    for op in self.ops:
      for name in _ins(op):
        uses[name] = uses.get(name, 0) + 1
    uses[output] = uses.get(output, 0) + 1
    producer = {op["out"]: i for i, op in enumerate(self.ops)}
    dropped = set()
    for i, op in enumerate(self.ops):
      if op["op"] != "affine":
        continue
      ins = _ins(op)
      src, gate = ins[0], (ins[1] if len(ins) > 1 else None)
      j = producer.get(src)
      if j is None or uses.get(src) != 1:
        continue
      prod = self.ops[j]
      if prod["op"] == "bconv" and "scale" not in prod and "bias" not in prod:
        merged = dict(prod, out=op["out"], **{k: op[k] for k in ("scale", "bias") if k in op})
        if gate is not None:
          merged["in"] = [prod["in"], gate]
      elif prod["op"] == "conv" and gate is None and src in self.conv64:
        w, b = self.conv64[src]
        scale, bias = self.affine64[op["out"]]
        scale = np.ones(w.shape[-1]) if scale is None else np.broadcast_to(scale, w.shape[-1:])
        bias = np.zeros(w.shape[-1]) if bias is None else bias
        self.arrays[prod["w"]] = np.asarray(w * scale, np.float32)
        self.arrays[prod["b"]] = np.asarray(b * scale + bias, np.float32)
        merged = dict(prod, out=op["out"])
      else:
        continue
      self.ops[i] = merged   # at the affine's place: every input of both is defined by then
      dropped.add(j)
    self.ops = [op for j, op in enumerate(self.ops) if j not in dropped]
    for op in self.ops:   # the output register is called "logits"
      op["in"] = _rename(op["in"], output, "logits")
      if op["out"] == output:
        op["out"] = "logits"
    referenced = {v for op in self.ops for k, v in op.items()
                  if k not in ("op", "in", "out") and isinstance(v, str)}
    self.arrays = {k: v for k, v in self.arrays.items() if k in referenced}
    self.binary = [k for k in self.binary if k in referenced]


def _ins(op: dict) -> list[str]:
  return [op["in"]] if isinstance(op["in"], str) else list(op["in"])


def _rename(names, old: str, new: str):
  if isinstance(names, str):
    return new if names == old else names
  return [new if n == old else n for n in names]


def _leaf_paths(tree, prefix: str = "") -> list[str]:
  if tree is None:
    return []
  if not hasattr(tree, "keys"):
    return [prefix]
  out = []
  for key in tree.keys():
    out += _leaf_paths(tree[key], f"{prefix}/{key}" if prefix else key)
  return out


def _join(path: str, name: str) -> str:
  return f"{path}/{name}" if path else name


def _name(call) -> str:
  return call.path.rsplit("/", 1)[-1]


def _real_input(path: str, x) -> Real:
  if not isinstance(x, Real):
    raise ValueError(f"Cannot pack {path}: it gets a packed +-1 input where a real one is "
                     f"expected.")
  return x


# --- helpers: thresholds, BN, weights ---------------------------------------------------------


def _threshold(a: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(t, flip) such that sign(a n + d) = -1 exactly where n < t (n > t where flip)."""
  a, d = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(d, np.float64))
  with np.errstate(divide="ignore", invalid="ignore"):
    t = np.where(a != 0, -d / np.where(a != 0, a, 1.0), 0.0)
  # a == 0: the sign is that of d for every input: always -1 (t = +inf) or always +1 (-inf).
  t = np.where(a == 0, np.where(d < 0, np.inf, -np.inf), t)
  return t, a < 0


def _sign(b: _Builder, x: Real, name: str, channels: int) -> Bits:
  """Bits of sign(x) (sign(0) = +1), x's pending per-channel affine folded into the threshold."""
  x = _real_input(name, x)
  if x.gate is not None or x.materialized is not None:
    reg, a, d = b.real(x), 1.0, 0.0
  else:   # a pending hardtanh keeps the sign: sign(clip(z, -1, 1)) = sign(z)
    reg = x.reg
    a = 1.0 if x.scale is None else x.scale
    d = 0.0 if x.bias is None else x.bias
  t, flip = _threshold(np.broadcast_to(a, (channels,)), np.broadcast_to(d, (channels,)))
  return Bits(b.op("sign", reg, threshold=b.array(f"{name}/threshold", t),
                   flip=b.array(f"{name}/flip", flip, np.bool_)))


def _check_binarizer(path: str, binarizer, field: str = "binarizer") -> None:
  """The forward pass must be sign with sign(0) = +1: any binarizer of ``bnn_jax.quantizers``."""
  from bnn_jax import quantizers
  names = quantizers.names()
  if isinstance(binarizer, str) and binarizer in names:
    return
  if callable(binarizer) and any(binarizer is getattr(quantizers, n, None) for n in names):
    return
  raise ValueError(f"Cannot pack {path}: its {field} is {binarizer!r}; a packed bit needs a "
                   f"binarizer of bnn_jax.quantizers ({', '.join(names)}), whose forward pass "
                   f"is sign(x) with sign(0) = +1.")


def _bn(b: _Builder, path: str) -> tuple[np.ndarray, np.ndarray]:
  """(mul, d) with BN(y) = mul * y + d, in float64."""
  attrs = b.attrs(path)
  if attrs.get("axis", -1) not in (-1, len(b.call(path).in_shape) - 1):
    raise ValueError(f"Cannot pack {path}: BatchNorm over axis {attrs.get('axis')} (only the "
                     f"channel axis, -1, folds per channel).")
  eps = float(attrs.get("epsilon", 1e-5))
  mean = b.var(f"{path}/mean", "batch_stats")
  var = b.var(f"{path}/var", "batch_stats")
  mul = 1.0 / np.sqrt(var + eps)
  if attrs.get("use_scale", True):
    mul = mul * b.var(f"{path}/scale")
  d = -mean * mul
  if attrs.get("use_bias", True):
    d = d + b.var(f"{path}/bias")
  return mul, d


def _pads(kernel: tuple[int, int], padding) -> list[list[int]]:
  if padding == "VALID" or padding == 0:
    return [[0, 0], [0, 0]]
  if padding == "SAME":
    return [[(k - 1) // 2, k // 2] for k in kernel]
  if isinstance(padding, int):
    return [[padding, padding]] * 2
  raise ValueError(f"Cannot pack a binary conv with padding {padding!r}.")


def _pair(v) -> list[int]:
  return [v, v] if isinstance(v, int) else list(v)


def _binary_weights(b: _Builder, path: str) -> tuple[np.ndarray, np.ndarray]:
  """(latent kernel as binarized, alpha per output channel) of a BinaryConv/BinaryDense."""
  attrs = b.attrs(path)
  problems = []
  if not attrs.get("binarize_weights", True):
    problems.append("its weights are not binarized (binarize_weights=False: ReActNet step 1); "
                    "train or load the step-2 model with binary weights")
  if "pad_value" in attrs and attrs.get("pad_value") != 1.0:
    problems.append(f"it pads with {attrs.get('pad_value')} (packed bits can only pad with +1: "
                    f"pad_value=1)")
  if attrs.get("use_bias", False):
    problems.append("it has a bias")
  if problems:
    raise ValueError(f"Cannot pack {path}: {'; '.join(problems)}.")
  w = b.var(f"{path}/binary_kernel")
  gain = None
  if attrs.get("standardize_weights", False):
    import jax.numpy as jnp
    from bnn_jax.layers import standardize_weight
    w = np.asarray(standardize_weight(jnp.asarray(w, jnp.float32)), np.float64)
    gain = b.var(f"{path}/gain")
  scale = attrs.get("weight_scale", "channel")
  axes = tuple(range(w.ndim - 1))
  if scale == "channel":
    alpha = np.mean(np.abs(w), axis=axes)
  elif scale == "tensor":
    alpha = np.full(w.shape[-1], np.mean(np.abs(w)))
  elif scale == "none":
    alpha = np.ones(w.shape[-1])
  else:
    raise ValueError(f"Cannot pack {path}: unknown weight_scale {scale!r}.")
  if gain is not None:
    alpha = alpha * gain
  return w, alpha


def _binary_input(b: _Builder, path: str, x) -> Bits:
  """The +-1 input of a binary layer: Bits from a sign module, or its own input_quantizer's."""
  quantizer = b.attrs(path).get("input_quantizer")
  if quantizer is None:
    if not isinstance(x, Bits):
      raise ValueError(f"Cannot pack {path}: it has no input_quantizer but its input is real "
                       f"(not produced by a sign module).")
    return x
  if isinstance(x, Bits):
    raise ValueError(f"Cannot pack {path}: its input_quantizer {quantizer!r} gets an input "
                     f"that is already +-1.")
  _check_binarizer(path, quantizer, "input_quantizer")
  return _sign(b, x, f"{path}/input", b.call(path).in_shape[-1])


# --- leaf rules ------------------------------------------------------------------------------


@rule("BinaryConv")
def _binary_conv_rule(b: _Builder, path: str, x) -> Real:
  """Packed XNOR-popcount conv: integer dot products, alpha pending."""
  bits = _binary_input(b, path, x)
  w, alpha = _binary_weights(b, path)
  attrs = b.attrs(path)
  kh, kw = w.shape[:2]
  wname = b.array(f"{path}/w", pack_kernel(w), np.uint32, binary=True)
  out = b.op("bconv", bits.reg, w=wname, k=int(kh * kw * w.shape[2]),
             strides=_pair(attrs["strides"]), pads=_pads((kh, kw), attrs["padding"]))
  return Real(out, scale=alpha, name=path)


@rule("BinaryDense")
def _binary_dense_rule(b: _Builder, path: str, x) -> Real:
  bits = _binary_input(b, path, x)
  w, alpha = _binary_weights(b, path)
  wname = b.array(f"{path}/w", pack_kernel(w), np.uint32, binary=True)
  return Real(b.op("bdense", bits.reg, w=wname, k=int(w.shape[0])), scale=alpha, name=path)


@rule("Conv", "ScaledStdConv")
def _real_conv_rule(b: _Builder, path: str, x) -> Real:
  """Real conv (``nn.Conv`` or ``ScaledStdConv``); a pending input scale goes into its kernel."""
  x = _real_input(path, x)
  call = b.call(path)
  attrs = call.attrs
  w = b.var(f"{path}/kernel")
  if call.type == "ScaledStdConv":
    # In float32 exactly as the module computes it, so an unfolded stem is bit-identical.
    import jax.numpy as jnp
    from bnn_jax.layers import standardize_weight
    w = np.asarray(standardize_weight(jnp.asarray(w, jnp.float32)) *
                   jnp.asarray(b.var(f"{path}/gain"), jnp.float32), np.float64)
  elif (attrs.get("feature_group_count", 1) != 1
        or attrs.get("kernel_dilation") not in (None, 1, (1, 1))
        or attrs.get("input_dilation") not in (None, 1, (1, 1))):
    raise ValueError(f"Cannot pack {path}: grouped or dilated convs are not supported.")
  # A pending per-channel input scale (no shift: zero padding stays zero) folds into the kernel,
  # except where the model rounds the conv's operands to bfloat16: the packed conv then rounds
  # the same input and kernel values, and nothing is folded into them (here or in ``finish``).
  rounded = b.conv_operands == "bfloat16"
  if (x.scale is not None and x.bias is None and x.gate is None and x.act is None
      and x.materialized is None and not rounded):
    w = w * np.reshape(np.asarray(x.scale, np.float64), (-1, 1))
    reg = x.reg
  else:
    reg = b.real(x)
  bias = b.var(f"{path}/bias") if attrs.get("use_bias") else np.zeros(w.shape[-1])
  padding = attrs["padding"]
  padding = padding if isinstance(padding, str) else \
      [[padding, padding]] * 2 if isinstance(padding, int) else [list(p) for p in padding]
  strides = attrs.get("strides") or 1
  out = b.op("conv", reg, w=b.array(f"{path}/w", w), b=b.array(f"{path}/b", bias),
             strides=_pair(strides), padding=padding,
             **({"operands": "bfloat16"} if rounded else {}))
  if not rounded:
    b.conv64[out] = (w, bias)
  return Real(out, name=path)


@rule("Dense")
def _dense_rule(b: _Builder, path: str, x) -> Real:
  x = _real_input(path, x)
  attrs = b.attrs(path)
  w = b.var(f"{path}/kernel")
  extra = {"b": b.array(f"{path}/b", b.var(f"{path}/bias"))} if attrs.get("use_bias", True) else {}
  return Real(b.op("dense", b.real(x), w=b.array(f"{path}/w", w), **extra), name=path)


@rule("BatchNorm")
def _batch_norm_rule(b: _Builder, path: str, x) -> Real:
  """Eval-mode BN: a pending per-channel affine (folded into a threshold, a scale or a kernel)."""
  mul, d = _bn(b, path)
  return b.affine(_real_input(path, x), mul, d, path)


@rule("RPReLU", "FeatureRefinement")
def _rprelu_rule(b: _Builder, path: str, x) -> Real:
  """PReLU_c(x + shift_in_c) + shift_out_c (RPReLU; FeatureRefinement is the same form)."""
  reg = b.real(_real_input(path, x))
  return Real(b.op("rprelu", reg,
                   shift_in=b.array(f"{path}/shift_in", b.var(f"{path}/shift_in/bias")),
                   slope=b.array(f"{path}/slope", b.var(f"{path}/slope")),
                   shift_out=b.array(f"{path}/shift_out", b.var(f"{path}/shift_out/bias"))),
              name=path)


@rule("Sign")
def _sign_rule(b: _Builder, path: str, x) -> Bits:
  """sign(x): threshold 0 on x, i.e. on x's pending affine (a preceding BN, ...)."""
  _check_binarizer(path, b.attrs(path).get("binarizer", "approx_sign"))
  return _sign(b, x, path, b.call(path).in_shape[-1])


@rule("RSign")
def _rsign_rule(b: _Builder, path: str, x) -> Bits:
  """sign(x + b_c): the threshold -b_c on x."""
  x = b.affine(_real_input(path, x), None, b.var(f"{path}/threshold/bias"), path)
  return _sign(b, x, path, b.call(path).in_shape[-1])


@rule("FDASign")
def _fda_sign_rule(b: _Builder, path: str, x) -> Bits:
  """Method 2's sign: sign(x' - theta_c - theta_dyn), x' per-sample mean-variance adjusted.

  Without per-sample parts (no mean_variance, no dynamic_threshold) it is RSign's
  per-channel threshold theta_c; otherwise an ``fda_sign`` op on the real input.
  """
  x = _real_input(path, x)
  attrs = b.attrs(path)
  _check_binarizer(path, attrs.get("binarizer", "approx_sign"))
  channels = b.call(path).in_shape[-1]
  ndim = len(b.call(path).in_shape)
  theta = None
  if attrs["zero_point"] or attrs["dynamic_threshold"]:
    theta = b.var(f"{path}/zero_point/theta")
  if not attrs["mean_variance"] and not attrs["dynamic_threshold"]:
    if theta is not None:
      x = b.affine(x, None, -theta, path)
    return _sign(b, x, path, channels)
  reg = b.real(x)
  inputs = [reg]
  if attrs["dynamic_threshold"]:
    exc = _join(path, "threshold_excitation")
    if b.attrs(exc).get("mode") != "offset":
      raise ValueError(f"Cannot pack {exc}: a dynamic threshold must be a GroupExcitation "
                       f"in mode 'offset'.")
    inputs.append(b.convert(exc, Real(reg)))
  extra = {}
  if attrs["mean_variance"]:
    mv = _join(path, "mean_variance")
    if b.call(mv).type != "MeanVarianceAdjust":
      raise ValueError(f"Cannot pack {mv}: expected a MeanVarianceAdjust, got "
                       f"{b.call(mv).type}.")
    stats = b.attrs(mv).get("axes", "hw")
    if stats not in ("hw", "chw"):
      raise ValueError(f"Cannot pack {mv}: unknown statistics axes {stats!r}.")
    extra = {"axes": list(range(1, ndim - 1 if stats == "hw" else ndim)),
             "eps": float(b.attrs(mv).get("eps", 1e-5)),
             "gamma": b.array(f"{mv}/gamma", b.var(f"{mv}/gamma")),
             "beta": b.array(f"{mv}/beta", b.var(f"{mv}/beta"))}
  if theta is not None:
    extra["theta"] = b.array(f"{path}/theta", theta)
  return Bits(b.op("fda_sign", inputs[0] if len(inputs) == 1 else inputs, **extra))


@rule("GroupExcitation")
def _group_excitation_rule(b: _Builder, path: str, x) -> str:
  """Grouped SE of the real input: the register of its [B, 1, 1, C_out] scales or offsets."""
  attrs = b.attrs(path)
  mode = attrs.get("mode", "scale")
  if mode not in ("scale", "offset"):
    raise ValueError(f"Cannot pack {path}: unknown excitation mode {mode!r}.")
  reg = b.real(_real_input(path, x))
  extra = {}
  if mode == "offset":
    extra["bound"] = b.array(f"{path}/bound", b.var(f"{path}/bound"))
  return b.op("excite", reg, mode=mode,
              w1=b.array(f"{path}/w1", b.var(f"{path}/reduce/kernel")),
              b1=b.array(f"{path}/b1", b.var(f"{path}/reduce/bias")),
              w2=b.array(f"{path}/w2", b.var(f"{path}/expand/kernel")),
              b2=b.array(f"{path}/b2", b.var(f"{path}/expand/bias")), **extra)


# --- block rules ------------------------------------------------------------------------------


def _signed_conv(b: _Builder, block: str, x: Real, sign: str, conv: str, excitation: str) -> Real:
  """``models.common.signed_conv``: BinaryConv(presign(x)) [* excitation(x)], by the types."""
  y = b.convert(_join(block, conv), b.convert(_join(block, sign), x))
  exc = _join(block, excitation)
  if b.has(exc):
    if b.attrs(exc).get("mode", "scale") != "scale":
      raise ValueError(f"Cannot pack {exc}: the excitation of a binary conv must be in mode "
                       f"'scale' (sigmoid), not {b.attrs(exc).get('mode')!r}.")
    y = b.gated(y, b.convert(exc, x), y.name)
  return y


def _pool(b: _Builder, v: Real, kind: str) -> Real:
  """2x2 pooling; on the raw register when it commutes with what is pending."""
  if kind == "max":   # commutes with a monotone pending part: scale >= 0, gate >= 0, hardtanh
    commutes = v.scale is None or bool(np.all(np.asarray(v.scale) >= 0))
  else:               # avg commutes with an affine (and a spatially constant gate)
    commutes = v.act is None
  if commutes and v.materialized is None:
    return dataclasses.replace(v, reg=b.op("pool", v.reg, kind=kind, window=2))
  return Real(b.op("pool", b.real(v), kind=kind, window=2))


def _add(b: _Builder, x: Real, y: Real, coef: float = 1.0) -> Real:
  extra = {"coef": float(coef)} if coef != 1.0 else {}
  return Real(b.op("add", [b.real(x), b.real(y)], **extra))


def _activation(b: _Builder, where: str, v: Real, fn) -> Real:
  from bnn_jax.models.common import hardtanh
  if fn is hardtanh:
    return b.activation(v, "hardtanh")
  raise ValueError(f"Cannot pack {where}: activation {getattr(fn, '__name__', fn)!r} "
                   f"(packable: hardtanh).")


def _bn_refine(b: _Builder, block: str, y: Real, bn: str, refine: str) -> Real:
  y = b.convert(_join(block, bn), y)
  if b.has(_join(block, refine)):
    y = b.convert(_join(block, refine), y)
  return y


@rule("ReActBlock", container=True)
def _react_block_rule(b: _Builder, path: str, x) -> Real:
  """y = RPReLU(refine(BN(BinaryConv(presign(x)) [* excitation(x)])) + shortcut(x))."""
  x = Real(b.real(_real_input(path, x)))   # read by the sign site and the shortcut
  y = _signed_conv(b, path, x, "rsign", "binary_conv", "excitation")
  y = _bn_refine(b, path, y, "bn", "refine")
  shortcut = x
  if b.has(_join(path, "shortcut_conv")):
    pooled = _pool(b, x, "avg") if b.attrs(path)["strides"] != 1 else x
    shortcut = b.convert(_join(path, "shortcut_conv"), pooled)
    shortcut = b.convert(_join(path, "shortcut_bn"), shortcut)
  return b.convert(_join(path, "rprelu"), _add(b, y, shortcut))


@rule("ReActBlockBNFree", container=True)
def _react_block_bnfree_rule(b: _Builder, path: str, x) -> Real:
  """h = x / beta;  y = shortcut(h) + alpha * RPReLU(BinaryConv_ws(presign(h)))."""
  attrs = b.attrs(path)
  x = Real(b.real(_real_input(path, x)))
  h = b.affine(x, 1.0 / float(attrs["beta"]), None, path)   # pending: folds into the sign/conv
  y = _signed_conv(b, path, h, "rsign", "binary_conv", "excitation")
  y = b.convert(_join(path, "rprelu"), y)
  shortcut = x
  if b.has(_join(path, "shortcut_conv")):
    pooled = _pool(b, h, "avg") if attrs["strides"] != 1 else h
    shortcut = b.convert(_join(path, "shortcut_conv"), pooled)
  return _add(b, shortcut, y, coef=float(attrs["alpha"]))


@rule("BasicBlockBNN", container=True)
def _basic_block_bnn_rule(b: _Builder, path: str, x) -> Real:
  """h = hardtanh(refine1(BN1(conv1(x))) + shortcut(x)); y = hardtanh(refine2(BN2(conv2(h))) + h).

  conv_i(x) is the sign site ``sign{i}`` -> ``binary_conv{i}`` [* ``excitation{i}``(x)].
  """
  x = Real(b.real(_real_input(path, x)))
  shortcut = x
  if b.has(_join(path, "shortcut_conv")):
    shortcut = b.convert(_join(path, "shortcut_bn"), b.convert(_join(path, "shortcut_conv"), x))
  y = _signed_conv(b, path, x, "sign1", "binary_conv1", "excitation1")
  y = _bn_refine(b, path, y, "bn1", "refine1")
  h = Real(b.real(b.activation(_add(b, y, shortcut), "hardtanh")))
  y = _signed_conv(b, path, h, "sign2", "binary_conv2", "excitation2")
  y = _bn_refine(b, path, y, "bn2", "refine2")
  return b.activation(_add(b, y, h), "hardtanh")


@rule("VGGLayer", container=True)
def _vgg_layer_rule(b: _Builder, path: str, x) -> Real:
  """act(refine(BN(pool(conv(x))))), conv real or BinaryConv(presign(x)) [* excitation(x)].

  The activation stays pending, so a following plain sign folds BN -> hardtanh -> sign
  into one threshold on the (pooled) integer dot products.
  """
  x = _real_input(path, x)
  attrs = b.attrs(path)
  if b.has(_join(path, "binary_conv")):
    y = _signed_conv(b, path, x, "sign", "binary_conv", "excitation")
  else:
    y = b.convert(_join(path, "conv"), x)
  if attrs.get("pool"):
    y = _pool(b, y, "max")
  y = _bn_refine(b, path, y, "bn", "refine")
  return _activation(b, path, y, attrs["activation"])


# --- network rules -----------------------------------------------------------------------------


def _head(b: _Builder, path: str, x: Real, pool: bool) -> Real:
  """``models.common.classifier_head``: global average pool (or flatten), then the Dense."""
  reg = b.op("mean_hw" if pool else "flatten", b.real(x))
  return b.convert(_join(path, "head"), Real(reg))


@rule("ReActNet18", "ReActNet18BNFree", "ResNet18", container=True)
def _residual_network_rule(b: _Builder, path: str, x) -> Real:
  """stem_* modules [-> stem_activation] -> stage{s}_block{b} (each by its type) -> head."""
  kids = b.children(path)
  for kid in kids:
    if _name(kid).startswith("stem_"):
      x = b.convert(kid.path, x)
  act = b.attrs(path).get("stem_activation")
  if act is not None:
    x = _activation(b, f"{path or 'the model'} (stem_activation)", x, act)
  for kid in kids:
    if re.fullmatch(r"stage\d+_block\d+", _name(kid)):
      x = b.convert(kid.path, x)
  return _head(b, path, x, pool=True)


@rule("VGGSmall", container=True)
def _vgg_network_rule(b: _Builder, path: str, x) -> Real:
  """layer0..layer5 (each by its type) -> flatten -> head."""
  for kid in b.children(path):
    if re.fullmatch(r"layer\d+", _name(kid)):
      x = b.convert(kid.path, x)
  return _head(b, path, x, pool=False)


# --- public API ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Source:
  model_name: str
  model_config: Optional[dict]   # {name, width, num_classes, options} for models.from_config
  flax_model: Any
  variables: dict
  normalization: tuple
  dataset: Optional[str]
  origin: dict


def _resolve(checkpoint_or_variables, model, width, num_classes, normalization, dataset,
             step, options: dict) -> _Source:
  from bnn_jax import checkpoints, models
  obj = checkpoint_or_variables
  origin = {}
  mcfg: dict = {}
  if isinstance(obj, (str, os.PathLike)):
    obj = checkpoints.load_run(os.fspath(obj), step)
  if isinstance(obj, checkpoints.RunCheckpoint):
    config = obj.config or {}
    origin = {"workdir": os.path.abspath(obj.workdir), "step": int(obj.step)}
    variables = {"params": obj.params}
    if obj.batch_stats:
      variables["batch_stats"] = obj.batch_stats
    mcfg = dict(config.get("model", {}) or {})
    if model is None:
      model = mcfg.get("name")
      if model is None:
        raise ValueError(f"{obj.workdir} has no config.json naming the model; pass "
                         f"model=NAME (one of {', '.join(SUPPORTED_MODELS)}).")
    elif model != mcfg.get("name"):
      mcfg = {}   # another model than the run's: its config says nothing about it
    binarize = (mcfg.get("options") or {}).get("binarize_weights", mcfg.get("binarize_weights"))
    if binarize is False and options.get("binarize_weights") is not True:
      raise ValueError(f"{obj.workdir} trained with binarize_weights=False (ReActNet step 1): "
                       f"its weights are real; export the step-2 run.")
    if dataset is None:
      dataset = config.get("data", {}).get("dataset")
  elif hasattr(obj, "keys") and "params" in obj:
    variables = {k: obj[k] for k in ("params", "batch_stats") if k in obj and obj[k]}
  else:
    raise TypeError("export/pack take a run's workdir, a bnn_jax.checkpoints.RunCheckpoint or a "
                    "variables dict {'params': ..., 'batch_stats': ...}; got "
                    f"{type(obj).__name__}.")
  if model is None:
    raise ValueError(f"Name the model: model=NAME (one of {', '.join(SUPPORTED_MODELS)}).")
  head = variables["params"].get("head", {}) if hasattr(variables["params"], "get") else {}
  if num_classes is None and mcfg.get("num_classes", -1) not in (None, -1):
    num_classes = mcfg["num_classes"]
  if isinstance(model, str):
    if model not in models.MODELS:
      raise ValueError(f"Cannot pack model {model!r}; packable models: "
                       f"{', '.join(SUPPORTED_MODELS)}.")
    if num_classes is None:
      if "kernel" not in head:
        raise ValueError("Pass num_classes: the variables have no head/kernel to read it from.")
      num_classes = int(np.shape(head["kernel"])[-1])
    opts = dict(mcfg.get("options") or {})
    if "binarize_weights" in mcfg and "binarize_weights" in models.default_options(model):
      opts.setdefault("binarize_weights", bool(mcfg["binarize_weights"]))   # older run configs
    opts.update(options)
    model_config = {"name": model, "width": float(mcfg.get("width") or 1.0 if width is None
                                                  else width),
                    "num_classes": int(num_classes), "dtype": str(mcfg.get("dtype") or "float32"),
                    "options": models.check_options(model, opts)}
    flax_model = models.from_config(model_config)
    name = model
  else:   # a Flax module, configured
    if options or width is not None:
      raise ValueError("Options and width are for a model given by name; pass the module "
                       "configured.")
    flax_model, model_config, name = model, None, type(model).__name__
    num_classes = getattr(model, "num_classes", num_classes)
  if normalization is None:
    normalization = dataset_normalization(dataset or ("cifar100" if num_classes == 100
                                                      else "cifar10"))
  mean, std = (tuple(float(v) for v in normalization[0]),
               tuple(float(v) for v in normalization[1]))
  return _Source(name, model_config, flax_model, variables, (mean, std), dataset, origin)


def pack(checkpoint_or_variables: Any, *, model: Any = None,
         width: Optional[float] = None, num_classes: Optional[int] = None,
         normalization: Optional[tuple] = None, dataset: Optional[str] = None,
         step: Optional[int] = None, input_shape: Sequence[int] = (32, 32, 3),
         batch_size: int = 256, dtype: Optional[str] = None, **options) -> PackedModel:
  """Builds the packed, BN-folded model in memory (``export`` writes it to a file).

  Args:
    checkpoint_or_variables: a run's workdir (path), a ``checkpoints.RunCheckpoint``,
      or ``{"params": ..., "batch_stats": ...}``.
    model, width, num_classes: the model; read from the run's config.json when given
      a run, else ``model`` is required (a registered name, or a configured Flax module
      made of module types in :data:`RULES`), width defaults to 1 and num_classes to the
      classifier's output size.
    normalization: ``(mean, std)`` per channel in [0, 1] units; default the dataset's
      (``dataset``, from the config, else cifar10 / cifar100 by num_classes).
    step: the checkpoint step of a run (default: latest).
    dtype: "float32" (default, whatever dtype the run trained in: the packed model is the
      float32 evaluation of the weights) or "bfloat16": the real convs (stem, shortcuts)
      round their input and kernel to bfloat16; the binary convs are exact either way. A
      run trained in bfloat16 computes every activation in bfloat16, which the packed
      runtime does not reproduce (docs/DEPLOY.md, "bfloat16 models").
    options: the model's options (``models.MODELS[name].options``, e.g.
      ``dynamic_threshold=True``); a run's config.json supplies its own.

  Returns:
    A :class:`bnn_jax.packed.PackedModel`: ``model(uint8 images) -> logits``.
  """
  import jax
  from bnn_jax import __version__
  from bnn_jax.summary import trace_modules

  if dtype is not None:
    _check_dtype(dtype)
  src = _resolve(checkpoint_or_variables, model, width, num_classes, normalization, dataset,
                 step, options)
  variables = jax.tree.map(np.asarray, src.variables)
  described = src.model_name + (
      f"({', '.join(f'{k}={v!r}' for k, v in src.model_config.items() if k != 'name')})"
      if src.model_config else "")
  shape = (1,) + tuple(input_shape)

  def refuse_full_precision(calls):
    if src.model_config is not None and not any(c.type in BINARY_TYPES for c in calls.values()):
      raise ValueError(f"Cannot pack model {src.model_name!r}: it has no binary layers (full "
                       f"precision: nothing to pack); packable models: "
                       f"{', '.join(SUPPORTED_MODELS)}.")

  try:
    calls = trace_modules(src.flax_model, shape, variables)
  except Exception as e:  # flax's ScopeParamShapeError & co., from deep inside the model
    refuse_full_precision(trace_modules(src.flax_model, shape))   # the model itself, abstract
    raise ValueError(
        f"The variables do not fit {described}: {type(e).__name__}: "
        f"{str(e).splitlines()[0][:300]} -- does it belong to this model (name, width, "
        f"classes, options)? Pass model=, width=, num_classes= to match the checkpoint."
    ) from None
  refuse_full_precision(calls)
  dtype = _check_dtype(dtype or "float32")
  b = _Builder(variables["params"], variables.get("batch_stats", {}), calls,
               conv_operands=dtype)
  x = b.op("normalize", "input", mean=b.array("input/mean", src.normalization[0]),
           std=b.array("input/std", src.normalization[1]))
  out = b.convert("", Real(x, name="input"))
  logits = b.real(_real_input("the model", out))
  b.check_all_converted()
  b.check_all_used(src.model_name)
  b.finish(logits)
  float32_param_bytes = 4 * sum(int(np.size(a)) for a in jax.tree.leaves(variables["params"]))
  cfg = src.model_config or {}
  meta = {
      "format": FORMAT, "format_version": FORMAT_VERSION, "bnn_jax_version": __version__,
      "model": src.model_name, "width": cfg.get("width", getattr(src.flax_model, "width", None)),
      "num_classes": cfg.get("num_classes", getattr(src.flax_model, "num_classes", None)),
      "options": cfg.get("options", {}),
      "model_config": {k: v for k, v in cfg.items() if k != "dtype"} or None, "dtype": dtype,
      "input_shape": list(input_shape), "input_dtype": "uint8",
      "normalization": {"mean": list(src.normalization[0]), "std": list(src.normalization[1]),
                        "dataset": src.dataset, "formula": "(images / 255 - mean) / std"},
      "output": "logits", "binary_arrays": b.binary,
      "float32_param_bytes": float32_param_bytes, "source": src.origin,
  }
  return PackedModel(b.ops, b.arrays, meta, batch_size=batch_size)


def _check_dtype(dtype) -> str:
  dtype = str(np.dtype(dtype).name if not isinstance(dtype, str) else dtype)
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"Cannot pack a {dtype} model: the packed runtime reproduces float32 and "
                     f"bfloat16 models; pass dtype='float32' or 'bfloat16'.")
  return dtype


def export(checkpoint_or_variables: Any, path: str, **kwargs) -> dict:
  """Writes the packed model and its metadata to one file (see ``bnn_jax.packed``).

  Takes what :func:`pack` takes (a run's workdir, a ``RunCheckpoint`` or a variables
  dict, plus ``model=``, ``width=``, options ... where needed). Read it back with
  :func:`load_packed`, which needs only jax and numpy.

  Returns:
    ``{"path", "file_bytes", "binary_bytes", "float_bytes", "float32_param_bytes"}``:
    the file size, the bytes of its packed +-1 weights and of everything else (folded
    scales, thresholds, stem, shortcuts, classifier), and the float32 size of the
    checkpoint's parameters for comparison.
  """
  packed = pack(checkpoint_or_variables, **kwargs)
  size = packed.save(os.fspath(path))
  nbytes = packed.nbytes()
  return {"path": os.fspath(path), "file_bytes": size, "binary_bytes": nbytes["binary"],
          "float_bytes": nbytes["float"],
          "float32_param_bytes": packed.meta["float32_param_bytes"]}
