"""ReActNet-18 for CIFAR, with BatchNorm and BN-free.

Layout (as in "BNN - BN = ?" and Bi-Real Net): real 3x3 stem conv(3->64); 4 stages
of 4 blocks, 64-128-256-512 channels, one binary 3x3 conv per block; the first
block of stages 2-4 has stride 2. Head: global average pool -> Dense.

With BN (``ReActNet18``), block:  y = RPReLU(BN(BinaryConv(RSign(x))) + shortcut(x)),
shortcut = identity, or AvgPool2 -> 1x1 conv -> BN on the real input when downsampling.

BN-free (``ReActNet18BNFree``), NF-ResNet style: h = x / beta,
y = shortcut + alpha * RPReLU(BinaryConv_ws(RSign(h))), beta = sqrt(expected Var[x]),
with Var tracked analytically (+alpha^2 per block, reset to 1 + alpha^2 after a
downsampling block, whose shortcut AvgPool2 -> ScaledStdConv1x1 reads h).
Binary convs use scaled weight standardization, the stem and shortcuts
``ScaledStdConv``. Source: Chen et al. 2021, "BNN - BN = ?"; Brock et al. 2021.

Weights: mean|W| per output channel * sign(W), clipped STE; activations: RSign
(ApproxSign STE). Sources: Liu et al. 2020 (ReActNet), Liu et al. 2018 (Bi-Real).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnn_jax import layers
from bnn_jax.models.common import avg_pool2, batch_norm, conv1x1, conv3x3, global_avg_pool, scaled

STAGES = (64, 128, 256, 512)


class ReActBlock(nn.Module):
  features: int
  strides: int = 1
  binarize_weights: bool = True
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    y = layers.RSign(name="rsign")(x)
    y = layers.BinaryConv(self.features, 3, self.strides, input_quantizer=None,
                          binarize_weights=self.binarize_weights, dtype=self.dtype,
                          name="binary_conv")(y)
    y = batch_norm(train, "bn", self.bn_axis_name)(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = avg_pool2(x) if self.strides != 1 else x
      shortcut = conv1x1(self.features, dtype=self.dtype, name="shortcut_conv")(shortcut)
      shortcut = batch_norm(train, "shortcut_bn", self.bn_axis_name)(shortcut)
    return layers.RPReLU(name="rprelu")(y + shortcut)


class ReActBlockBNFree(nn.Module):
  features: int
  strides: int = 1
  alpha: float = 0.2
  beta: float = 1.0
  binarize_weights: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    del train
    h = x / self.beta
    y = layers.RSign(name="rsign")(h)
    y = layers.BinaryConv(self.features, 3, self.strides, input_quantizer=None,
                          binarize_weights=self.binarize_weights, standardize_weights=True,
                          dtype=self.dtype, name="binary_conv")(y)
    y = layers.RPReLU(name="rprelu")(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = avg_pool2(h) if self.strides != 1 else h
      shortcut = layers.ScaledStdConv(self.features, 1, padding="VALID", dtype=self.dtype,
                                      name="shortcut_conv")(shortcut)
    # The skip path stays an identity (no activation on the sum): with RPReLU on
    # the sum, each block would shrink the variance and the signal would vanish.
    return shortcut + self.alpha * y


class ReActNet18(nn.Module):
  """ReActNet-18 (CIFAR) with BatchNorm. ``__call__`` returns logits, or
  (logits, features) with features = {stage1..stage4, penultimate}."""
  num_classes: int = 10
  width: float = 1.0
  blocks_per_stage: Sequence[int] = (4, 4, 4, 4)
  binarize_weights: bool = True
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    features = {}
    x = conv3x3(scaled(STAGES[0], self.width), dtype=self.dtype, name="stem_conv")(x)
    x = batch_norm(train, "stem_bn", self.bn_axis_name)(x)
    for s, (channels, blocks) in enumerate(zip(STAGES, self.blocks_per_stage)):
      for b in range(blocks):
        strides = 2 if (s > 0 and b == 0) else 1
        x = ReActBlock(scaled(channels, self.width), strides, self.binarize_weights,
                       self.dtype, self.bn_axis_name, name=f"stage{s + 1}_block{b + 1}")(x, train)
      features[f"stage{s + 1}"] = x
    return _head(self, x, features, return_features)


class ReActNet18BNFree(nn.Module):
  """ReActNet-18 (CIFAR) without any BatchNorm (see module docstring)."""
  num_classes: int = 10
  width: float = 1.0
  blocks_per_stage: Sequence[int] = (4, 4, 4, 4)
  alpha: float = 0.2
  binarize_weights: bool = True
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None  # accepted for a uniform interface; there is no BN

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    features = {}
    x = layers.ScaledStdConv(scaled(STAGES[0], self.width), 3, dtype=self.dtype,
                             name="stem_conv")(x)
    expected_var = 1.0
    for s, (channels, blocks) in enumerate(zip(STAGES, self.blocks_per_stage)):
      for b in range(blocks):
        strides = 2 if (s > 0 and b == 0) else 1
        downsample = strides != 1 or x.shape[-1] != scaled(channels, self.width)
        x = ReActBlockBNFree(scaled(channels, self.width), strides, self.alpha,
                             expected_var ** 0.5, self.binarize_weights, self.dtype,
                             name=f"stage{s + 1}_block{b + 1}")(x, train)
        expected_var = (1.0 if downsample else expected_var) + self.alpha ** 2
      features[f"stage{s + 1}"] = x
    return _head(self, x, features, return_features)


def _head(module: nn.Module, x: jax.Array, features: dict, return_features: bool):
  """Global average pool -> Dense(num_classes), in float32."""
  pooled = global_avg_pool(x).astype(jnp.float32)
  features["penultimate"] = pooled
  logits = nn.Dense(module.num_classes, name="head")(pooled)
  return (logits, features) if return_features else logits
