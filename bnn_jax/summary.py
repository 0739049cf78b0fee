"""Model summary: per layer the parameters, how many are binary, memory and MACs.

``summary(model, variables=None, input_shape=(1, 32, 32, 3))`` traces the model once
with ``jax.eval_shape`` (no computation, no weights needed) and intercepts every
module call to learn its type, attributes and output shape, then counts per layer:

  params        trainable parameters (the ``params`` collection)
  binary        of those, the ones stored as +-1 at inference: the ``binary_kernel``
                of a ``BinaryConv`` / ``BinaryDense`` with ``binarize_weights=True``
  float32 KiB   every variable of the layer (params and BatchNorm running stats) at 4 bytes
  packed KiB    binary kernels at 1 bit, packed into uint32 words along the input
                channels (ceil(C_in / 32) words per tap and output channel, as
                ``bnn_jax.packed`` stores them), everything else still at 4 bytes
  binary MACs   multiply-accumulates per image of binary layers (XNOR-popcount at
                inference); conv: H_out * W_out * kh * kw * C_in * C_out, dense: C_in * C_out
  float MACs    the same for real-valued convs and dense layers

BatchNorm, RSign, RPReLU and pooling are counted as parameters and memory but no
MACs (per-element work, folded or negligible next to the convs). A ``BinaryConv``
fed by ``RSign`` (ReActNet: ``input_quantizer=None``) still counts as binary: its
input is already +-1. The per-channel scale alpha = mean|W| is computed from the
latent weights and not a parameter; at deployment it is folded into the next
BatchNorm (``bnn_jax.deploy``), so it is not counted here.

This mirrors larq's ``larq.models.summary`` (which counts 1-bit parameters and
memory per layer), with MACs as in Bethge et al. / Bi-Real Net's OPs accounting.

>>> print(summary("reactnet18", width=0.125))   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bnn_jax import models

BINARY_KERNEL = "binary_kernel"

# Module types that are one row each (their sub-modules are folded into the row).
LAYER_TYPES = ("Conv", "ConvTranspose", "Dense", "DenseGeneral", "BatchNorm", "LayerNorm",
               "GroupNorm", "BinaryConv", "BinaryDense", "RSign", "RPReLU", "LearnableBias",
               "ScaledStdConv", "Embed", "PReLU")
CONV_TYPES = ("Conv", "BinaryConv", "ScaledStdConv")
DENSE_TYPES = ("Dense", "BinaryDense")
BINARY_TYPES = ("BinaryConv", "BinaryDense")


@dataclasses.dataclass
class ModuleCall:
  """One traced module call: its type, field values and input/output shapes."""
  path: str
  type: str
  attrs: dict
  in_shape: Optional[tuple]
  out_shape: Optional[tuple]


def _shape(x) -> Optional[tuple]:
  return tuple(x.shape) if hasattr(x, "shape") else None


def trace_modules(model: nn.Module, input_shape: Sequence[int] = (1, 32, 32, 3),
                  variables: Any = None, **apply_kwargs) -> dict[str, ModuleCall]:
  """{module path: ModuleCall} for every module ``__call__`` in ``model.apply``.

  Runs under ``jax.eval_shape``: nothing is computed. Paths join the module
  names with "/" (the same as the parameter tree); the order is the order in
  which calls *finish* (children before their parent). ``variables`` defaults
  to the abstract result of ``model.init``.
  """
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  if variables is None:
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  calls: dict[str, ModuleCall] = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__":
      mod = context.module
      path = "/".join(mod.path)
      if path not in calls:  # a shared module called twice keeps its first call
        attrs = {f.name: getattr(mod, f.name) for f in dataclasses.fields(mod)
                 if f.name not in ("parent", "name")}
        calls[path] = ModuleCall(path, type(mod).__name__, attrs,
                                 _shape(args[0]) if args else None,
                                 _shape(out[0] if isinstance(out, tuple) else out))
    return out

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(v, x, **apply_kwargs), variables, x)
  return calls


@dataclasses.dataclass
class LayerSummary:
  name: str
  kind: str
  output_shape: Optional[tuple]
  params: int
  binary_params: int
  float32_bytes: int
  packed_bytes: int
  binary_macs: int
  float_macs: int


@dataclasses.dataclass
class ModelSummary:
  """Rows per layer plus totals; ``str()`` gives the table."""
  model: str
  input_shape: tuple
  layers: list

  def total(self, field: str) -> int:
    return sum(getattr(row, field) for row in self.layers)

  @property
  def params(self) -> int:
    return self.total("params")

  @property
  def binary_params(self) -> int:
    return self.total("binary_params")

  @property
  def float32_bytes(self) -> int:
    return self.total("float32_bytes")

  @property
  def packed_bytes(self) -> int:
    return self.total("packed_bytes")

  @property
  def binary_macs(self) -> int:
    return self.total("binary_macs")

  @property
  def float_macs(self) -> int:
    return self.total("float_macs")

  @property
  def binary_mac_ratio(self) -> float:
    """Binary MACs / all MACs."""
    macs = self.binary_macs + self.float_macs
    return self.binary_macs / macs if macs else 0.0

  @property
  def compression(self) -> float:
    """float32 bytes / packed bytes."""
    return self.float32_bytes / self.packed_bytes if self.packed_bytes else 1.0

  def to_dict(self) -> dict:
    return {"model": self.model, "input_shape": list(self.input_shape),
            "layers": [dataclasses.asdict(r) for r in self.layers],
            "totals": {k: getattr(self, k) for k in (
                "params", "binary_params", "float32_bytes", "packed_bytes", "binary_macs",
                "float_macs", "binary_mac_ratio", "compression")}}

  def table(self) -> str:
    head = ("layer", "kind", "output", "params", "binary", "float32 KiB", "packed KiB",
            "binary MACs", "float MACs")
    rows = [(r.name, r.kind, "x".join(map(str, r.output_shape[1:])) if r.output_shape else "",
             f"{r.params:,}", f"{r.binary_params:,}", f"{r.float32_bytes / 1024:,.1f}",
             f"{r.packed_bytes / 1024:,.1f}", f"{r.binary_macs:,}", f"{r.float_macs:,}")
            for r in self.layers]
    rows.append(("total", "", "", f"{self.params:,}", f"{self.binary_params:,}",
                 f"{self.float32_bytes / 1024:,.1f}", f"{self.packed_bytes / 1024:,.1f}",
                 f"{self.binary_macs:,}", f"{self.float_macs:,}"))
    widths = [max(len(str(row[i])) for row in rows + [head]) for i in range(len(head))]
    left = (0, 1, 2)
    fmt = lambda row: "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w)
                                for i, (c, w) in enumerate(zip(row, widths)))
    rule = "-" * len(fmt(head))
    lines = [f"Model: {self.model}, input {'x'.join(map(str, self.input_shape[1:]))}, "
             f"MACs per image", rule, fmt(head), rule]
    lines += [fmt(r) for r in rows[:-1]] + [rule, fmt(rows[-1]), rule]
    binary_share = self.binary_params / self.params if self.params else 0.0
    lines.append(f"binary parameters: {self.binary_params:,} of {self.params:,} "
                 f"({100 * binary_share:.2f}%)")
    lines.append(f"binary-MAC ratio: {100 * self.binary_mac_ratio:.2f}% of "
                 f"{self.binary_macs + self.float_macs:,} MACs are binary")
    lines.append(f"memory: float32 {self.float32_bytes / 2**20:,.3f} MiB, packed "
                 f"{self.packed_bytes / 2**20:,.3f} MiB ({self.compression:.1f}x smaller)")
    return "\n".join(lines)

  def __str__(self) -> str:
    return self.table()


def _subtree(tree: Any, path: str) -> Any:
  node = tree
  for key in path.split("/") if path else []:
    if not isinstance(node, dict) and not hasattr(node, "keys"):
      return None
    if key not in node:
      return None
    node = node[key]
  return node


def _leaves_with_names(tree: Any, direct_only: bool = False) -> list[tuple[str, Any]]:
  """[(leaf name, leaf)] under ``tree`` (only its direct array children if ``direct_only``)."""
  if tree is None:
    return []
  if hasattr(tree, "shape"):
    return [("", tree)]
  out = []
  for key in tree.keys():
    value = tree[key]
    if hasattr(value, "shape"):
      out.append((key, value))
    elif not direct_only:
      out.extend(_leaves_with_names(value))
  return out


def _packed_bytes(shape: tuple) -> int:
  """Bytes of a +-1 kernel packed along its input axis (second to last) into uint32 words."""
  if len(shape) < 2:
    return 4 * math.ceil(int(np.prod(shape)) / 32)
  cin = shape[-2]
  others = int(np.prod(shape)) // cin
  return 4 * others * math.ceil(cin / 32)


def _kind(call: ModuleCall, kernel_shape: Optional[tuple]) -> str:
  a = call.attrs
  if call.type in CONV_TYPES and kernel_shape is not None:
    strides = a.get("strides", 1)
    s = strides if isinstance(strides, int) else (strides[0] if strides else 1)
    return f"{call.type} {kernel_shape[0]}x{kernel_shape[1]}/{s}"
  if call.type in BINARY_TYPES and not a.get("binarize_weights", True):
    return f"{call.type} (real weights)"
  return call.type


def _rows(calls: dict[str, ModuleCall], variables: Any) -> list[LayerSummary]:
  # Rows: the outermost calls of a known layer type, and any other module that owns
  # variables directly (a user's own layer), in call order of their first leaf.
  params = variables.get("params", {}) if hasattr(variables, "get") else {}
  layer_paths = [p for p, c in calls.items() if c.type in LAYER_TYPES]
  outer = [p for p in layer_paths
           if not any(p.startswith(q + "/") for q in layer_paths if q != p)]
  rows = []
  for path, call in calls.items():
    in_layer = any(path.startswith(q + "/") for q in outer)
    if path in outer:
      direct_only = False
    elif not in_layer and call.type not in LAYER_TYPES:
      direct_only = True
    else:
      continue
    var_leaves = []
    for collection in variables.keys():
      var_leaves += [(collection, n, v) for n, v in
                     _leaves_with_names(_subtree(variables[collection], path), direct_only)]
    if not var_leaves:
      continue
    param_leaves = [(n, v) for c, n, v in var_leaves if c == "params"]
    binary_kernel = _subtree(params, f"{path}/{BINARY_KERNEL}" if path else BINARY_KERNEL)
    is_binary = (call.type in BINARY_TYPES and call.attrs.get("binarize_weights", True)
                 and binary_kernel is not None)
    kernel = binary_kernel if binary_kernel is not None else _subtree(params, f"{path}/kernel")
    kshape = tuple(kernel.shape) if kernel is not None and not direct_only else None
    n_params = sum(int(np.prod(v.shape)) for _, v in param_leaves)
    n_binary = int(np.prod(kshape)) if is_binary else 0
    f32 = 4 * sum(int(np.prod(v.shape)) for _, _, v in var_leaves)
    packed = f32 - 4 * n_binary + (_packed_bytes(kshape) if is_binary else 0)
    macs = 0
    if kshape is not None and call.out_shape is not None:
      if call.type in CONV_TYPES and len(kshape) == 4:
        macs = int(np.prod(call.out_shape[1:-1])) * int(np.prod(kshape))
      elif call.type in DENSE_TYPES or len(kshape) == 2:
        macs = int(np.prod(call.out_shape[1:-1] or (1,))) * int(np.prod(kshape))
    rows.append(LayerSummary(path, _kind(call, kshape), call.out_shape, n_params, n_binary,
                             f32, packed, macs if is_binary else 0, 0 if is_binary else macs))
  return rows


def summary(model: Union[str, nn.Module], variables: Any = None,
            input_shape: Sequence[int] = (1, 32, 32, 3), **model_kwargs) -> ModelSummary:
  """Per-layer summary of a model (see the module docstring for the columns).

  Args:
    model: a registered model name (``bnn_jax.models.MODELS``; ``model_kwargs`` go
      to ``get_model``, e.g. ``width=0.25, num_classes=100``) or a Flax module.
    variables: the model's variables (``{"params": ..., "batch_stats": ...}``); by
      default their shapes from ``model.init`` (counts do not depend on the values).
    input_shape: NHWC shape of one batch; MACs are per image.

  Returns:
    A :class:`ModelSummary`: ``print()`` it for the table; ``.binary_mac_ratio``,
    ``.params``, ``.packed_bytes``, ... for the totals; ``.to_dict()`` for JSON.
  """
  name = model if isinstance(model, str) else type(model).__name__
  if isinstance(model, str):
    model = models.get_model(model, **model_kwargs)
  elif model_kwargs:
    raise ValueError("model_kwargs are for a model given by name; pass the module configured.")
  input_shape = tuple(input_shape)
  if variables is None:
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  else:
    variables = {k: v for k, v in dict(variables).items()}
  calls = trace_modules(model, input_shape, variables)
  return ModelSummary(name, input_shape, _rows(calls, variables))


class _CallableModule(types.ModuleType):
  """``bnn_jax.summary(...)`` calls :func:`summary` even when the attribute is this module.

  Importing the submodule ``bnn_jax.summary`` (``bnn_jax.deploy`` does) makes the
  package attribute ``bnn_jax.summary`` the module, replacing the lazily exported
  function; a callable module keeps ``bnn_jax.summary("reactnet18")`` working either way.
  """

  def __call__(self, *args, **kwargs) -> ModelSummary:
    return summary(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
