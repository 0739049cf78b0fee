"""Model registry and the one model factory.

``get_model(name, num_classes=10, width=1.0, dtype=float32, bn_axis_name=None, **options)``
builds a registered network; ``from_config(config.model, num_classes)`` does the same from a
training config (trainer, inspect and deploy all use it). Every model takes the common
arguments; model-specific *options* are validated against the model's own list
(``MODELS[name].options``, with their defaults), and an unknown one is an error naming the
valid ones.

Networks are composed from injected module definitions (``bnn_jax.models.common``): the
method-2 networks (``*_fda``) are the baseline networks with ``distribution.FDASign`` as
the pre-sign module, ``GroupExcitation`` scales and ``FeatureRefinement`` after each BN.

Intermediate values: every model sows, into the ``intermediates`` collection, each stage
output, each block output, the real input of every activation sign and the penultimate
vector; :func:`features` returns them as one dict (see its docstring for the layout).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnn_jax import layers
from bnn_jax.models.common import hardtanh
from bnn_jax.models.reactnet import ReActBlock, ReActNet18, ReActNet18BNFree
from bnn_jax.models.resnet import BasicBlockBNN, BasicBlockFP, ResNet18
from bnn_jax.models.vgg import VGGSmall

FDA_OPTIONS = {
    "mean_variance": True,      # x' = gamma (x - mu) / sigma + beta, per-sample statistics
    "stats": "hw",              # "hw": per channel over H, W; "chw": over C, H, W
    "zero_point": True,         # sign(x' - theta_c [- theta_dyn])
    "dynamic_threshold": False,  # theta_dyn from a tanh group excitation of the input
    "excitation": True,         # sigmoid group-excitation scales on each binary conv output
    "groups": 4,                # G: channel groups of the excitation MLPs
    "reduction": 4,             # r: bottleneck reduction of the excitation MLPs
    "refinement": True,         # shift -> PReLU -> shift after each binary conv's BN
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """How to build one registered model: ``build(common, **options)`` and the option defaults."""
  build: Callable[..., nn.Module]
  options: Mapping[str, Any]
  doc: str


def _fda_parts(base_presign, mean_variance, stats, zero_point, dynamic_threshold, excitation,
               groups, reduction, refinement) -> dict:
  """The (presign, excitation, refine) definitions of a method-2 network.

  With mean_variance, zero_point and dynamic_threshold all off the pre-sign module is the
  base network's own (RSign or Sign), so "all off" is the baseline network exactly.
  """
  from bnn_jax import distribution
  presign = base_presign
  if mean_variance or zero_point or dynamic_threshold:
    presign = functools.partial(distribution.FDASign, mean_variance=mean_variance, stats=stats,
                                zero_point=zero_point, dynamic_threshold=dynamic_threshold,
                                groups=groups, reduction=reduction)
  return {
      "presign": presign,
      "excitation": functools.partial(distribution.GroupExcitation, groups=groups,
                                      reduction=reduction, mode="scale") if excitation else None,
      "refine": distribution.FeatureRefinement if refinement else None,
  }


def _reactnet18(common, binarize_weights=True, **fda):
  parts = _fda_parts(layers.RSign, **fda) if fda else {}
  return ReActNet18(binarize_weights=binarize_weights, **common, **parts)


def _reactnet18_bnfree(common, binarize_weights=True, alpha=0.2):
  common = {k: v for k, v in common.items() if k != "bn_axis_name"}  # it has no BN
  return ReActNet18BNFree(binarize_weights=binarize_weights, alpha=alpha, **common)


def _resnet18_fp(common):
  return ResNet18(block_cls=BasicBlockFP, stem_activation=nn.relu, **common)


def _resnet18_bnn(common, binarize_weights=True, **fda):
  parts = _fda_parts(layers.Sign, **fda) if fda else {}
  return ResNet18(block_cls=BasicBlockBNN, stem_activation=hardtanh,
                  block_kwargs={"binarize_weights": binarize_weights, **parts}, **common)


def _vgg_small_bnn(common, binarize_weights=True, **fda):
  parts = _fda_parts(layers.Sign, **fda) if fda else {}
  return VGGSmall(binary=True, binarize_weights=binarize_weights, **common, **parts)


def _vgg_small_fp(common):
  return VGGSmall(binary=False, **common)


MODELS: dict[str, ModelSpec] = {
    "reactnet18": ModelSpec(_reactnet18, {"binarize_weights": True},
                            "ReActNet-18 (RSign -> BinaryConv -> BN -> + shortcut -> RPReLU)"),
    "reactnet18_bnfree": ModelSpec(_reactnet18_bnfree, {"binarize_weights": True, "alpha": 0.2},
                                   "ReActNet-18 without BatchNorm (method 1)"),
    "reactnet18_fda": ModelSpec(_reactnet18, {"binarize_weights": True, **FDA_OPTIONS},
                                "ReActNet-18 + feature distribution adjustment (method 2)"),
    "resnet18_fp": ModelSpec(_resnet18_fp, {}, "full-precision CIFAR ResNet-18"),
    "resnet18_bnn": ModelSpec(_resnet18_bnn, {"binarize_weights": True},
                              "binary ResNet-18 (IR-Net / ReCU layout)"),
    "resnet18_fda": ModelSpec(_resnet18_bnn, {"binarize_weights": True, **FDA_OPTIONS},
                              "binary ResNet-18 + feature distribution adjustment (method 2)"),
    "vgg_small_bnn": ModelSpec(_vgg_small_bnn, {"binarize_weights": True}, "binary VGG-Small"),
    "vgg_small_fda": ModelSpec(_vgg_small_bnn, {"binarize_weights": True, **FDA_OPTIONS},
                               "binary VGG-Small + feature distribution adjustment (method 2)"),
    "vgg_small_fp": ModelSpec(_vgg_small_fp, {}, "full-precision VGG-Small"),
}

COMMON_ARGS = ("num_classes", "width", "dtype", "bn_axis_name")


def default_options(name: str) -> dict:
  """The model's options with their defaults (a copy)."""
  return dict(_spec(name).options)


def _spec(name: str) -> ModelSpec:
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}.")
  return MODELS[name]


def check_options(name: str, options: Mapping[str, Any]) -> dict:
  """The model's full options: defaults updated with ``options``; unknown keys are an error."""
  spec = _spec(name)
  unknown = sorted(set(options) - set(spec.options))
  if unknown:
    valid = ", ".join(sorted(spec.options)) or "none"
    raise ValueError(f"Unknown option(s) {', '.join(map(repr, unknown))} for model {name!r}; "
                     f"its options are: {valid} (besides {', '.join(COMMON_ARGS)}).")
  return {**spec.options, **options}


COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_dtype(dtype: Any) -> jnp.dtype:
  """The network's compute dtype (docs/METHODS.md, "Numerics"): float32 or bfloat16."""
  try:
    name = jnp.dtype(dtype).name
  except TypeError:
    name = str(dtype)
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"Unknown model dtype {dtype!r}; valid: {', '.join(COMPUTE_DTYPES)} "
                     f"(--config.model.dtype).")
  return jnp.dtype(name)


def get_model(name: str, *, num_classes: int = 10, width: float = 1.0, dtype: Any = jnp.float32,
              bn_axis_name: Optional[str] = None, **options) -> nn.Module:
  """Builds a registered model: common arguments plus the model's own options."""
  options = check_options(name, options)
  common = {"num_classes": int(num_classes), "width": float(width), "dtype": compute_dtype(dtype),
            "bn_axis_name": bn_axis_name}
  return _spec(name).build(common, **options)


def from_config(model_config: Mapping[str, Any], num_classes: Optional[int] = None,
                bn_axis_name: Optional[str] = None) -> nn.Module:
  """The model a training config (``config.model``, or its JSON in a run's config.json) describes.

  ``num_classes`` defaults to ``model_config["num_classes"]``. Older run configs that have a
  top-level ``binarize_weights`` instead of ``options`` are read too.
  """
  options = dict(model_config.get("options", None) or {})
  if "binarize_weights" in model_config and "binarize_weights" in _spec(model_config["name"]).options:
    options.setdefault("binarize_weights", bool(model_config["binarize_weights"]))
  if num_classes is None:
    num_classes = model_config.get("num_classes", -1)
    if num_classes in (None, -1):
      raise ValueError("num_classes is not set in the model config; pass it.")
  return get_model(model_config["name"], num_classes=num_classes,
                   width=model_config.get("width", 1.0),
                   dtype=model_config.get("dtype", "float32"), bn_axis_name=bn_axis_name,
                   **options)


def features(intermediates: Mapping[str, Any]) -> dict:
  """One dict of a model's sown intermediates (``mutable=["intermediates"]``).

  Returns ``{"stages": {"stage1": [B,H,W,C], ...}, "blocks": {"stage1_block1": [B,H,W,C],
  ...}, "presign": {"stage1_block1/rsign": [B,H,W,C_in], ...}, "penultimate": [B,D]}``:
  the output of every stage (VGG-Small: after each pooling layer) and block (VGG-Small: each
  ``layer{i}``), the real input of every activation sign (what the sign thresholds at 0; the
  key is the sign module's path) and the vector fed to the classifier. Shapes at width w,
  CIFAR input: ReActNet-18 stages [B,32,32,64w], [B,16,16,128w], [B,8,8,256w], [B,4,4,512w],
  penultimate [B,512w]; ResNet-18 the same; VGG-Small stages [B,16,16,128w], [B,8,8,256w],
  [B,4,4,512w], penultimate [B,8192w].
  """
  out = {"stages": {}, "blocks": {}, "presign": {}, "penultimate": None}

  def walk(node, path):
    for key, value in node.items():
      if isinstance(value, tuple):  # a sown value (a tuple of one per call)
        value = value[0]
        if not path and key == "penultimate":
          out["penultimate"] = value
        elif not path:
          out["stages"][key] = value
        elif key == "output":
          out["blocks"]["/".join(path)] = value
        elif key == "presign":
          out["presign"]["/".join(path)] = value
      else:
        walk(value, path + [key])

  walk(intermediates, [])
  return out


def apply_with_features(model: nn.Module, variables, x: jax.Array, train: bool = False,
                        mutable=()) -> tuple:
  """``(logits, features(...), other_mutated)``: apply with the intermediates collected."""
  out, state = model.apply(variables, x, train=train, mutable=["intermediates", *mutable])
  state = dict(state)
  inter = state.pop("intermediates", {})
  return out, features(inter), state


__all__ = ["MODELS", "ModelSpec", "FDA_OPTIONS", "get_model", "from_config", "default_options",
           "check_options", "features", "apply_with_features", "ReActNet18", "ReActNet18BNFree",
           "ResNet18", "VGGSmall", "ReActBlock", "BasicBlockBNN", "BasicBlockFP"]
