"""Deployment: BatchNorm folding, bit packing, XNOR-popcount inference, export.

From a float checkpoint to the "BN-equivalent" packed network (``pack``) and a
file (``export``), run by ``load_packed`` (re-exported from the flax-free
``bnn_jax.packed`` runtime):

* **A BatchNorm that feeds a sign** becomes one per-channel threshold. With
  mul_c = gamma_c / sqrt(var_c + eps) and d_c = beta_c - mean_c * mul_c, and the
  binary conv before it giving alpha_c * n (n the integer +-1 dot product,
  alpha_c = mean|W_c| > 0),
      sign(BN(alpha_c n)) = sign(a_c n + d_c),  a_c = alpha_c * mul_c,
  is -1 (bit 1) exactly where n < t_c = -d_c / a_c, or where n > t_c when a_c < 0
  (a negative BN scale flips the comparison), and constant when a_c = 0. An
  RSign threshold, sign(x + b_c), is the threshold t_c = -b_c on x. Max-pooling
  between the conv and the BN (VGG-Small) commutes with n -> alpha_c n (alpha > 0),
  so it runs on the integers.
* **Any other BatchNorm** is folded into the layer before it: after a binary
  conv into the per-channel scale and bias applied to the integer dot product
  (y = a_c n + d_c); after a real conv into its kernel and a bias
  (W'_c = mul_c W_c, b'_c = d_c).
* **Binary weights** are packed, bit 1 = -1, along the input channels into uint32
  (``bnn_jax.packed.pack_kernel``); binary convs and dense layers compute
  K - 2 popcount(a XOR w). The stem, the real shortcuts (1x1 convs) and the
  classifier stay float32.

The packed model computes the same function as the float model in eval mode
(``use_running_average``) up to float32 summation order: the integer dot products
are exact, the folded scales differ from the float model's in the last bits.
A sign whose argument lies within that rounding of 0 can come out differently;
see ``tests/test_deploy.py`` for the measured agreement.

Supported models: ``reactnet18``, ``reactnet18_bnfree``, ``resnet18_bnn``,
``vgg_small_bnn`` (any width, classes, ``blocks_per_stage``). The converter reads
each module's settings from a trace of the Flax model and refuses settings it
cannot pack exactly (zero padding, weights not binarized, ...); it also checks
that it used every parameter, so a changed model is an error, not a silent
mismatch.

This module imports no Flax at import time (only ``pack``/``export`` do), so
``from bnn_jax.deploy import load_packed`` needs jax and numpy only.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Optional, Sequence, Union

import numpy as np

from bnn_jax.packed import (FORMAT, FORMAT_VERSION, PackedModel, PackedModelError, load_packed,
                            num_words, pack_kernel, read_meta)

__all__ = ["export", "pack", "load_packed", "read_meta", "PackedModel", "PackedModelError",
           "SUPPORTED_MODELS", "FORMAT_VERSION", "dataset_normalization"]

SUPPORTED_MODELS = ("reactnet18", "reactnet18_bnfree", "resnet18_bnn", "vgg_small_bnn")


def dataset_normalization(dataset: str = "cifar10") -> tuple[tuple, tuple]:
  """(mean, std) in [0, 1] units that the trainer normalizes ``dataset`` with."""
  from bnn_jax import data
  table = {"cifar10": (data.CIFAR10_MEAN, data.CIFAR10_STD),
           "cifar100": (data.CIFAR100_MEAN, data.CIFAR100_STD)}
  if dataset not in table:
    raise ValueError(f"No normalization known for dataset {dataset!r} (known: "
                     f"{', '.join(table)}); pass normalization=(mean, std).")
  return tuple(table[dataset][0]), tuple(table[dataset][1])


# --- building the program ----------------------------------------------------------


class _Builder:
  """Collects ops and arrays, and records which parameters were used."""

  def __init__(self, params: dict, batch_stats: dict, calls: dict):
    self.params = params
    self.batch_stats = batch_stats
    self.calls = calls
    self.ops: list[dict] = []
    self.arrays: dict[str, np.ndarray] = {}
    self.binary: list[str] = []
    self.used: set[tuple[str, str]] = set()
    self._n = 0

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

  def has(self, path: str) -> bool:
    return path in self.calls

  def attrs(self, path: str) -> dict:
    return self.calls[path].attrs

  # program
  def array(self, name: str, value, dtype=np.float32, binary: bool = False) -> str:
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

  def check_all_used(self, model_name: str) -> None:
    missing = []
    for collection, tree in (("params", self.params), ("batch_stats", self.batch_stats)):
      for path in _leaf_paths(tree):
        if (collection, path) not in self.used:
          missing.append(f"{collection}/{path}")
    if missing:
      raise ValueError(f"The {model_name} converter did not use {len(missing)} variable(s) "
                       f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); the "
                       f"model has layers bnn_jax.deploy does not know how to pack.")


def _leaf_paths(tree, prefix: str = "") -> list[str]:
  if tree is None:
    return []
  if not hasattr(tree, "keys"):
    return [prefix]
  out = []
  for key in tree.keys():
    out += _leaf_paths(tree[key], f"{prefix}/{key}" if prefix else key)
  return out


def _bn(b: _Builder, path: str) -> tuple[np.ndarray, np.ndarray]:
  """(mul, d) with BN(y) = mul * y + d, in float64."""
  attrs = b.attrs(path)
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


def _threshold(a: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(t, flip) such that sign(a n + d) = -1 exactly where n < t (n > t where flip)."""
  a, d = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(d, np.float64))
  with np.errstate(divide="ignore", invalid="ignore"):
    t = np.where(a != 0, -d / np.where(a != 0, a, 1.0), 0.0)
  # a == 0: the sign is that of d for every input: always -1 (t = +inf) or always +1 (-inf).
  t = np.where(a == 0, np.where(d < 0, np.inf, -np.inf), t)
  return t, a < 0


def _sign(b: _Builder, x: str, name: str, a, d) -> str:
  t, flip = _threshold(a, d)
  return b.op("sign", x, threshold=b.array(f"{name}/threshold", t),
              flip=b.array(f"{name}/flip", flip, np.bool_))


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


def _binary_weights(b: _Builder, path: str, expect_input_quantizer: bool) -> tuple[np.ndarray, np.ndarray]:
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
  if expect_input_quantizer != (attrs.get("input_quantizer") is not None):
    problems.append(f"its input_quantizer is {attrs.get('input_quantizer')!r}")
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


def _bconv(b: _Builder, x: str, path: str, scale=None, bias=None,
           expect_input_quantizer: bool = False) -> tuple[str, np.ndarray]:
  """Packed binary conv; returns (register, alpha). Integer output unless scale/bias given."""
  w, alpha = _binary_weights(b, path, expect_input_quantizer)
  attrs = b.attrs(path)
  kh, kw = w.shape[:2]
  wname = b.array(f"{path}/w", pack_kernel(w), np.uint32, binary=True)
  extra = {}
  if scale is not None:
    extra["scale"] = b.array(f"{path}/scale", scale)
  if bias is not None:
    extra["bias"] = b.array(f"{path}/bias", bias)
  out = b.op("bconv", x, w=wname, k=int(kh * kw * w.shape[2]), strides=_pair(attrs["strides"]),
             pads=_pads((kh, kw), attrs["padding"]), **extra)
  return out, alpha


def _alpha(b: _Builder, path: str, expect_input_quantizer: bool = False) -> np.ndarray:
  return _binary_weights(b, path, expect_input_quantizer)[1]


def _conv(b: _Builder, x: str, path: str, bn: Optional[str] = None, in_scale: float = 1.0) -> str:
  """Real conv (``nn.Conv`` or ``ScaledStdConv``) with the following BN folded in."""
  call = b.calls[path]
  attrs = call.attrs
  w = b.var(f"{path}/kernel")
  if call.type == "ScaledStdConv":
    # In float32 exactly as the module computes it, so an unfolded stem is bit-identical.
    import jax.numpy as jnp
    from bnn_jax.layers import standardize_weight
    w = np.asarray(standardize_weight(jnp.asarray(w, jnp.float32)) *
                   jnp.asarray(b.var(f"{path}/gain"), jnp.float32), np.float64)
  elif call.type != "Conv":
    raise ValueError(f"Cannot pack {path}: a {call.type} where a Conv was expected.")
  elif attrs.get("feature_group_count", 1) != 1 or attrs.get("kernel_dilation") not in (None, 1, (1, 1)):
    raise ValueError(f"Cannot pack {path}: grouped or dilated convs are not supported.")
  w = w * in_scale
  bias = b.var(f"{path}/bias") if attrs.get("use_bias") else np.zeros(w.shape[-1])
  if bn is not None:
    mul, d = _bn(b, bn)
    w = w * mul
    bias = bias * mul + d
  padding = attrs["padding"]
  padding = padding if isinstance(padding, str) else \
      [[padding, padding]] * 2 if isinstance(padding, int) else [list(p) for p in padding]
  strides = attrs.get("strides") or 1
  return b.op("conv", x, w=b.array(f"{path}/w", w), b=b.array(f"{path}/b", bias),
              strides=_pair(strides), padding=padding)


def _rprelu(b: _Builder, x: str, path: str) -> str:
  return b.op("rprelu", x, shift_in=b.array(f"{path}/shift_in", b.var(f"{path}/shift_in/bias")),
              slope=b.array(f"{path}/slope", b.var(f"{path}/slope")),
              shift_out=b.array(f"{path}/shift_out", b.var(f"{path}/shift_out/bias")))


def _head(b: _Builder, x: str, pool: bool = True) -> str:
  x = b.op("mean_hw", x) if pool else b.op("flatten", x)
  return b.op("dense", x, w=b.array("head/w", b.var("head/kernel")),
              b=b.array("head/b", b.var("head/bias")), out="logits")


def _blocks(b: _Builder) -> list[str]:
  """Block paths in call order."""
  return [p for p in b.calls if re.fullmatch(r"stage\d+_block\d+", p)]


# --- one converter per architecture ------------------------------------------------------


def _reactnet18(b: _Builder, x: str) -> str:
  x = _conv(b, x, "stem_conv", "stem_bn")
  for p in _blocks(b):
    strides = b.attrs(p)["strides"]
    s = _sign(b, x, f"{p}/rsign", 1.0, b.var(f"{p}/rsign/threshold/bias"))
    alpha = _alpha(b, f"{p}/binary_conv")
    mul, d = _bn(b, f"{p}/bn")
    y, _ = _bconv(b, s, f"{p}/binary_conv", scale=alpha * mul, bias=d)
    shortcut = x
    if b.has(f"{p}/shortcut_conv"):
      pooled = b.op("pool", x, kind="avg", window=2) if strides != 1 else x
      shortcut = _conv(b, pooled, f"{p}/shortcut_conv", f"{p}/shortcut_bn")
    x = _rprelu(b, b.op("add", [y, shortcut]), f"{p}/rprelu")
  return _head(b, x)


def _reactnet18_bnfree(b: _Builder, x: str) -> str:
  x = _conv(b, x, "stem_conv")
  for p in _blocks(b):
    attrs = b.attrs(p)
    beta, res_alpha, strides = float(attrs["beta"]), float(attrs["alpha"]), attrs["strides"]
    # RSign(x / beta) = sign(x / beta + b) = sign(x + beta b): threshold -beta b on x.
    s = _sign(b, x, f"{p}/rsign", 1.0, beta * b.var(f"{p}/rsign/threshold/bias"))
    alpha = _alpha(b, f"{p}/binary_conv")
    y, _ = _bconv(b, s, f"{p}/binary_conv", scale=alpha)
    y = _rprelu(b, y, f"{p}/rprelu")
    shortcut = x
    if b.has(f"{p}/shortcut_conv"):
      pooled = b.op("pool", x, kind="avg", window=2) if strides != 1 else x
      shortcut = _conv(b, pooled, f"{p}/shortcut_conv", in_scale=1.0 / beta)
    x = b.op("add", [shortcut, y], coef=res_alpha)
  return _head(b, x)


def _resnet18_bnn(b: _Builder, x: str) -> str:
  x = b.op("hardtanh", _conv(b, x, "stem_conv", "stem_bn"))
  for p in _blocks(b):
    c_in = b.calls[f"{p}/binary_conv1"].in_shape[-1]
    s = _sign(b, x, f"{p}/sign1", 1.0, np.zeros(c_in))
    mul, d = _bn(b, f"{p}/bn1")
    y, _ = _bconv(b, s, f"{p}/binary_conv1", scale=_alpha(b, f"{p}/binary_conv1", True) * mul,
                  bias=d, expect_input_quantizer=True)
    shortcut = _conv(b, x, f"{p}/shortcut_conv", f"{p}/shortcut_bn") \
        if b.has(f"{p}/shortcut_conv") else x
    h = b.op("hardtanh", b.op("add", [y, shortcut]))
    s = _sign(b, h, f"{p}/sign2", 1.0, np.zeros(b.calls[f"{p}/binary_conv2"].in_shape[-1]))
    mul, d = _bn(b, f"{p}/bn2")
    y, _ = _bconv(b, s, f"{p}/binary_conv2", scale=_alpha(b, f"{p}/binary_conv2", True) * mul,
                  bias=d, expect_input_quantizer=True)
    x = b.op("hardtanh", b.op("add", [y, h]))
  return _head(b, x)


def _vgg_small_bnn(b: _Builder, x: str) -> str:
  convs = [p for p in b.calls if re.fullmatch(r"(binary_)?conv\d+", p)]
  convs.sort(key=lambda p: int(re.search(r"\d+$", p).group()))
  if not convs or convs[0].startswith("binary_"):
    raise ValueError("Cannot pack this VGG: its first conv is expected to be real.")
  for i, path in enumerate(convs):
    bn = f"bn{re.search(r'[0-9]+$', path).group()}"
    pooled = b.calls[bn].in_shape[1:3] != b.calls[path].out_shape[1:3]
    next_binary = i + 1 < len(convs) and convs[i + 1].startswith("binary_")
    if i + 1 < len(convs) and not next_binary:
      raise ValueError(f"Cannot pack this VGG: {convs[i + 1]} is real (a full-precision VGG "
                       f"has nothing to pack).")
    mul, d = _bn(b, bn)
    if path.startswith("binary_"):
      y, alpha = _bconv(b, x, path, expect_input_quantizer=True)  # int32 dot products
      a = alpha * mul   # BN(alpha n) = (alpha mul) n + d; max-pool commutes with alpha > 0
    else:
      y = _conv(b, x, path)
      a = mul
    if pooled:
      y = b.op("pool", y, kind="max", window=2)
    if next_binary:   # BN -> hardtanh -> sign: one threshold (hardtanh keeps the sign)
      x = _sign(b, y, bn, a, d)
    else:
      x = b.op("hardtanh", b.op("affine", y, scale=b.array(f"{bn}/scale", a),
                                bias=b.array(f"{bn}/bias", d)))
  return _head(b, x, pool=False)


_CONVERTERS = {"reactnet18": _reactnet18, "reactnet18_bnfree": _reactnet18_bnfree,
               "resnet18_bnn": _resnet18_bnn, "vgg_small_bnn": _vgg_small_bnn}


# --- public API ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Source:
  model_name: str
  model_kwargs: dict
  variables: dict
  normalization: tuple
  dataset: Optional[str]
  origin: dict


def _resolve(checkpoint_or_variables, model, width, num_classes, normalization, dataset,
             step) -> _Source:
  from bnn_jax import checkpoints
  obj = checkpoint_or_variables
  origin = {}
  config = None
  if isinstance(obj, (str, os.PathLike)):
    obj = checkpoints.load_run(os.fspath(obj), step)
  if isinstance(obj, checkpoints.RunCheckpoint):
    config = obj.config or {}
    origin = {"workdir": os.path.abspath(obj.workdir), "step": int(obj.step)}
    variables = {"params": obj.params}
    if obj.batch_stats:
      variables["batch_stats"] = obj.batch_stats
    mcfg = config.get("model", {})
    if model is None:
      model = mcfg.get("name")
      if model is None:
        raise ValueError(f"{obj.workdir} has no config.json naming the model; pass "
                         f"model=NAME (one of {', '.join(SUPPORTED_MODELS)}).")
    if width is None:
      width = mcfg.get("width")
    if num_classes is None and mcfg.get("num_classes", -1) not in (None, -1):
      num_classes = mcfg.get("num_classes")
    if mcfg.get("binarize_weights") is False:
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
  if model not in _CONVERTERS:
    raise ValueError(f"Cannot pack model {model!r}; packable models: "
                     f"{', '.join(SUPPORTED_MODELS)}.")
  head = variables["params"].get("head", {}) if hasattr(variables["params"], "get") else {}
  if num_classes is None:
    if "kernel" not in head:
      raise ValueError("Pass num_classes: the variables have no head/kernel to read it from.")
    num_classes = int(np.shape(head["kernel"])[-1])
  if normalization is None:
    normalization = dataset_normalization(dataset or ("cifar100" if num_classes == 100
                                                      else "cifar10"))
  mean, std = (tuple(float(v) for v in normalization[0]),
               tuple(float(v) for v in normalization[1]))
  kwargs = {"num_classes": int(num_classes), "width": float(1.0 if width is None else width)}
  return _Source(model, kwargs, variables, (mean, std), dataset, origin)


def pack(checkpoint_or_variables: Any, *, model: Optional[str] = None,
         width: Optional[float] = None, num_classes: Optional[int] = None,
         normalization: Optional[tuple] = None, dataset: Optional[str] = None,
         step: Optional[int] = None, input_shape: Sequence[int] = (32, 32, 3),
         batch_size: int = 256, **model_kwargs) -> PackedModel:
  """Builds the packed, BN-folded model in memory (``export`` writes it to a file).

  Args:
    checkpoint_or_variables: a run's workdir (path), a ``checkpoints.RunCheckpoint``,
      or ``{"params": ..., "batch_stats": ...}``.
    model, width, num_classes: the model; read from the run's config.json when given
      a run, else ``model`` is required, width defaults to 1 and num_classes to the
      classifier's output size.
    normalization: ``(mean, std)`` per channel in [0, 1] units; default the dataset's
      (``dataset``, from the config, else cifar10 / cifar100 by num_classes).
    step: the checkpoint step of a run (default: latest).
    model_kwargs: more constructor arguments (e.g. ``blocks_per_stage``).

  Returns:
    A :class:`bnn_jax.packed.PackedModel`: ``model(uint8 images) -> logits``.
  """
  import jax
  from bnn_jax import __version__, models
  from bnn_jax.summary import trace_modules

  src = _resolve(checkpoint_or_variables, model, width, num_classes, normalization, dataset, step)
  kwargs = {**src.model_kwargs, **model_kwargs}
  flax_model = models.get_model(src.model_name, **kwargs)
  variables = jax.tree.map(np.asarray, src.variables)
  try:
    calls = trace_modules(flax_model, (1,) + tuple(input_shape), variables)
  except Exception as e:  # flax's ScopeParamShapeError & co., from deep inside the model
    raise ValueError(
        f"The variables do not fit {src.model_name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}): "
        f"{type(e).__name__}: {str(e).splitlines()[0][:300]} -- does it belong to this model "
        f"(name, width, classes)? Pass model=, width=, num_classes= to match the checkpoint."
    ) from None
  b = _Builder(variables["params"], variables.get("batch_stats", {}), calls)
  x = b.op("normalize", "input", mean=b.array("input/mean", src.normalization[0]),
           std=b.array("input/std", src.normalization[1]))
  _CONVERTERS[src.model_name](b, x)
  b.check_all_used(src.model_name)
  float32_param_bytes = 4 * sum(int(np.size(a)) for a in jax.tree.leaves(variables["params"]))
  meta = {
      "format": FORMAT, "format_version": FORMAT_VERSION, "bnn_jax_version": __version__,
      "model": src.model_name, "width": kwargs["width"], "num_classes": kwargs["num_classes"],
      "model_kwargs": {k: v for k, v in kwargs.items()
                       if isinstance(v, (int, float, str, bool, list, tuple))},
      "input_shape": list(input_shape), "input_dtype": "uint8",
      "normalization": {"mean": list(src.normalization[0]), "std": list(src.normalization[1]),
                        "dataset": src.dataset, "formula": "(images / 255 - mean) / std"},
      "output": "logits", "binary_arrays": b.binary,
      "float32_param_bytes": float32_param_bytes, "source": src.origin,
  }
  return PackedModel(b.ops, b.arrays, meta, batch_size=batch_size)


def export(checkpoint_or_variables: Any, path: str, **kwargs) -> dict:
  """Writes the packed model and its metadata to one file (see ``bnn_jax.packed``).

  Takes what :func:`pack` takes (a run's workdir, a ``RunCheckpoint`` or a variables
  dict, plus ``model=``, ``width=``, ... where needed). Read it back with
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
