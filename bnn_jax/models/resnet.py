"""ResNet-18 for CIFAR: full precision and binary.

Full precision (``ResNet18FP``): the standard CIFAR ResNet-18 (3x3 stem, no
max-pool, [2, 2, 2, 2] basic blocks, 64-128-256-512, 1x1 conv + BN downsample
shortcut); 11,173,962 parameters for 10 classes at width 1.

Binary (``ResNet18BNN``), the IR-Net / ReCU CIFAR layout: the same convolutions,
binary (sign inputs, mean|W| * sign(W) weights), each followed by BN and its own
shortcut (Bi-Real style), then hardtanh:
  h = hardtanh(BN(BinConv1(x)) + shortcut(x));  y = hardtanh(BN(BinConv2(h)) + h).
Stem, 1x1 downsample shortcuts and the classifier stay real-valued.
Sources: He et al. 2016; Qin et al. 2020 (IR-Net); Xu et al. 2021 (ReCU).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bnn_jax import layers
from bnn_jax.models.common import batch_norm, conv1x1, conv3x3, hardtanh, scaled
from bnn_jax.models.reactnet import _head

STAGES = (64, 128, 256, 512)


def _shortcut(x, features: int, strides: int, train: bool, dtype, bn_axis_name):
  if strides == 1 and x.shape[-1] == features:
    return x
  x = conv1x1(features, strides=strides, dtype=dtype, name="shortcut_conv")(x)
  return batch_norm(train, "shortcut_bn", bn_axis_name)(x)


class BasicBlockFP(nn.Module):
  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    y = conv3x3(self.features, strides=self.strides, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(batch_norm(train, "bn1", self.bn_axis_name)(y))
    y = conv3x3(self.features, dtype=self.dtype, name="conv2")(y)
    y = batch_norm(train, "bn2", self.bn_axis_name)(y)
    return nn.relu(y + _shortcut(x, self.features, self.strides, train, self.dtype, self.bn_axis_name))


class BasicBlockBNN(nn.Module):
  features: int
  strides: int = 1
  input_quantizer: str = "approx_sign"
  binarize_weights: bool = True
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda strides, name: layers.BinaryConv(
        self.features, 3, strides, input_quantizer=self.input_quantizer,
        binarize_weights=self.binarize_weights, dtype=self.dtype, name=name)
    h = batch_norm(train, "bn1", self.bn_axis_name)(conv(self.strides, "binary_conv1")(x))
    h = hardtanh(h + _shortcut(x, self.features, self.strides, train, self.dtype, self.bn_axis_name))
    y = batch_norm(train, "bn2", self.bn_axis_name)(conv(1, "binary_conv2")(h))
    return hardtanh(y + h)


class _ResNet18(nn.Module):
  num_classes: int = 10
  width: float = 1.0
  blocks_per_stage: Sequence[int] = (2, 2, 2, 2)
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  def block(self, features: int, strides: int, name: str) -> nn.Module:
    raise NotImplementedError

  def activation(self, x):
    raise NotImplementedError

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    features = {}
    x = conv3x3(scaled(STAGES[0], self.width), dtype=self.dtype, name="stem_conv")(x)
    x = self.activation(batch_norm(train, "stem_bn", self.bn_axis_name)(x))
    for s, (channels, blocks) in enumerate(zip(STAGES, self.blocks_per_stage)):
      for b in range(blocks):
        strides = 2 if (s > 0 and b == 0) else 1
        x = self.block(scaled(channels, self.width), strides, f"stage{s + 1}_block{b + 1}")(x, train)
      features[f"stage{s + 1}"] = x
    return _head(self, x, features, return_features)


class ResNet18FP(_ResNet18):
  """Full-precision CIFAR ResNet-18 (the teacher and the reference for the gap)."""

  def block(self, features, strides, name):
    return BasicBlockFP(features, strides, self.dtype, self.bn_axis_name, name=name)

  def activation(self, x):
    return nn.relu(x)


class ResNet18BNN(_ResNet18):
  """Binary CIFAR ResNet-18 (IR-Net / ReCU layout)."""
  input_quantizer: str = "approx_sign"
  binarize_weights: bool = True

  def block(self, features, strides, name):
    return BasicBlockBNN(features, strides, self.input_quantizer, self.binarize_weights,
                         self.dtype, self.bn_axis_name, name=name)

  def activation(self, x):
    return hardtanh(x)
