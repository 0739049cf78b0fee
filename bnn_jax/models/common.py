"""Pieces the CIFAR models share: the stage loop, the head, the binary-conv site, helpers.

Composition (flax ``examples/imagenet`` style): a network holds module *definitions*
(classes or ``functools.partial``) and passes them down to its blocks:

- ``presign``: the module that turns a real feature map into +-1 before every binary
  conv (``layers.RSign`` in ReActNet-18, ``layers.Sign`` in ResNet-18 BNN and VGG-Small,
  ``distribution.FDASign`` in the method-2 networks);
- ``excitation``: optional, maps the real conv input to per-channel scales that multiply
  the binary conv's output (``distribution.GroupExcitation``);
- ``refine``: optional, applied after the BN of every binary conv
  (``distribution.FeatureRefinement``).

Intermediate values are *sown* into the ``intermediates`` collection (free unless a caller
asks for them with ``mutable=["intermediates"]``); :func:`bnn_jax.models.features` turns
them into one documented dict.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnn_jax import layers

ModuleDef = Any


def scaled(channels: int, width: float) -> int:
  """Channel count under a width multiplier (at least 1)."""
  return max(1, int(round(channels * width)))


def batch_norm(train: bool, name: str | None = None, axis_name: str | None = None,
               dtype: Any = jnp.float32) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults (momentum 0.1 there = 0.9 here, eps 1e-5).

  ``dtype`` is the compute dtype of the normalization (its output); the batch statistics
  are reduced in float32 and the scale, bias and running statistics are float32
  (``param_dtype``), whatever the compute dtype (docs/METHODS.md, "Numerics").

  With ``axis_name`` (inside pmap) the batch statistics are averaged over the
  devices (synchronized BN): N devices then compute what one device would on
  the global batch. Without it they are per device, and the trainer averages
  the running statistics before evaluating and saving.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name,
                      axis_name=axis_name if train else None, dtype=dtype,
                      param_dtype=jnp.float32)


def hardtanh(x: jax.Array) -> jax.Array:
  return jnp.clip(x, -1.0, 1.0)


def avg_pool2(x: jax.Array) -> jax.Array:
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def global_avg_pool(x: jax.Array) -> jax.Array:
  return jnp.mean(x, axis=(1, 2))


# Real convs: operands and output in the model's dtype (Flax's convention: nn.Conv casts both
# operands to ``dtype``; the backend accumulates in float32), float32 parameters.
conv3x3 = functools.partial(nn.Conv, kernel_size=(3, 3), padding="SAME", use_bias=False,
                            param_dtype=jnp.float32)
conv1x1 = functools.partial(nn.Conv, kernel_size=(1, 1), padding="VALID", use_bias=False,
                            param_dtype=jnp.float32)


def signed_conv(x: jax.Array, features: int, strides: int, *, presign: ModuleDef,
                excitation: Optional[ModuleDef], binarize_weights: bool, dtype: Any,
                conv_name: str, sign_name: str, excitation_name: str,
                standardize_weights: bool = False) -> jax.Array:
  """One binary-conv site inside a block's compact ``__call__``:

    y = BinaryConv(presign(x)) [* excitation(x)]

  The pre-sign module and the excitation are the block's injected definitions; the
  BinaryConv (3x3, pad +1, mean|W| sign(W)) gets +-1 inputs, so its own input
  quantizer is off. Call it only from inside a compact method (the submodules bind to
  the calling module under the given names).
  """
  binary = presign(name=sign_name)(x)
  y = layers.BinaryConv(features, 3, strides, input_quantizer=None,
                        binarize_weights=binarize_weights,
                        standardize_weights=standardize_weights, dtype=dtype,
                        name=conv_name)(binary)
  if excitation is not None:
    y = y * layers.cast_to_activation(excitation(features=features, name=excitation_name)(x), y)
  return y


def run_stages(module: nn.Module, x: jax.Array, train: bool, stage_channels: Sequence[int],
               blocks_per_stage: Sequence[int], width: float,
               make_block: Callable[[int, int, str], nn.Module]) -> jax.Array:
  """The stage loop every residual network shares.

  Stage s (1-based) has ``blocks_per_stage[s-1]`` blocks of ``stage_channels[s-1] * width``
  channels; the first block of stages 2.. has stride 2. ``make_block(features, strides,
  name)`` returns the block module (named ``stage{s}_block{b}``); each stage's output is
  sown as ``intermediates/stage{s}``.
  """
  for s, (channels, blocks) in enumerate(zip(stage_channels, blocks_per_stage)):
    for b in range(blocks):
      strides = 2 if (s > 0 and b == 0) else 1
      x = make_block(scaled(channels, width), strides, f"stage{s + 1}_block{b + 1}")(x, train)
    module.sow("intermediates", f"stage{s + 1}", x)
  return x


def classifier_head(module: nn.Module, x: jax.Array, num_classes: int, pool: bool = True
                    ) -> jax.Array:
  """Global average pool (or flatten) in the network's compute dtype -> Dense(num_classes)
  in float32: the pooled vector is cast to float32, so the logits (and the loss) are float32.

  The pooled/flattened vector is sown as ``intermediates/penultimate`` (float32).
  """
  x = global_avg_pool(x) if pool else x.reshape((x.shape[0], -1))
  x = x.astype(jnp.float32)
  module.sow("intermediates", "penultimate", x)
  return nn.Dense(num_classes, name="head")(x)


def sow_output(module: nn.Module, y: jax.Array) -> jax.Array:
  """Sows a block's output as ``intermediates/<block path>/output`` and returns it."""
  module.sow("intermediates", "output", y)
  return y
