"""Model registry: ``get_model(name, num_classes=10, width=1.0, **kwargs)``."""

from __future__ import annotations

import functools

import flax.linen as nn

from bnn_jax.models.reactnet import ReActNet18, ReActNet18BNFree
from bnn_jax.models.resnet import ResNet18BNN, ResNet18FP
from bnn_jax.models.vgg import VGGSmall

MODELS = {
    "reactnet18": ReActNet18,
    "reactnet18_bnfree": ReActNet18BNFree,
    "resnet18_bnn": ResNet18BNN,
    "resnet18_fp": ResNet18FP,
    "vgg_small_bnn": functools.partial(VGGSmall, binary=True),
    "vgg_small_fp": functools.partial(VGGSmall, binary=False),
}


def get_model(name: str, **kwargs) -> nn.Module:
  """Builds a registered model; kwargs go to its constructor (num_classes, width, ...)."""
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}.")
  try:
    return MODELS[name](**kwargs)
  except TypeError as e:
    raise ValueError(f"Bad arguments for model {name!r}: {e}") from None


__all__ = ["MODELS", "get_model", "ReActNet18", "ReActNet18BNFree", "ResNet18BNN",
           "ResNet18FP", "VGGSmall"]
