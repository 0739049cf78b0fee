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
import jax.numpy as jnp

from bnn_jax import layers
from bnn_jax.models.common import (ModuleDef, avg_pool2, batch_norm, classifier_head, conv1x1,
                                   conv3x3, run_stages, scaled, signed_conv, sow_output)

STAGES = (64, 128, 256, 512)


class ReActBlock(nn.Module):
  """y = RPReLU(refine(BN(BinaryConv(presign(x)) [* excitation(x)])) + shortcut(x))."""
  features: int
  strides: int = 1
  presign: ModuleDef = layers.RSign
  excitation: Optional[ModuleDef] = None
  refine: Optional[ModuleDef] = None
  binarize_weights: bool = True
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    y = signed_conv(x, self.features, self.strides, presign=self.presign,
                    excitation=self.excitation, binarize_weights=self.binarize_weights,
                    dtype=self.dtype, conv_name="binary_conv", sign_name="rsign",
                    excitation_name="excitation")
    y = batch_norm(train, "bn", self.bn_axis_name, self.dtype)(y)
    if self.refine is not None:
      y = self.refine(name="refine")(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = avg_pool2(x) if self.strides != 1 else x
      shortcut = conv1x1(self.features, dtype=self.dtype, name="shortcut_conv")(shortcut)
      shortcut = batch_norm(train, "shortcut_bn", self.bn_axis_name, self.dtype)(shortcut)
    return sow_output(self, layers.RPReLU(name="rprelu")(y + shortcut))


class ReActBlockBNFree(nn.Module):
  """h = x / beta;  y = shortcut(h) + alpha * RPReLU(BinaryConv_ws(presign(h)))."""
  features: int
  strides: int = 1
  alpha: float = 0.2
  beta: float = 1.0
  presign: ModuleDef = layers.RSign
  binarize_weights: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    del train
    h = x / self.beta
    y = signed_conv(h, self.features, self.strides, presign=self.presign, excitation=None,
                    binarize_weights=self.binarize_weights, dtype=self.dtype,
                    conv_name="binary_conv", sign_name="rsign", excitation_name="excitation",
                    standardize_weights=True)
    y = layers.RPReLU(name="rprelu")(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = avg_pool2(h) if self.strides != 1 else h
      shortcut = layers.ScaledStdConv(self.features, 1, padding="VALID", dtype=self.dtype,
                                      name="shortcut_conv")(shortcut)
    # The skip path stays an identity (no activation on the sum): with RPReLU on
    # the sum, each block would shrink the variance and the signal would vanish.
    return sow_output(self, shortcut + self.alpha * y)


class ReActNet18(nn.Module):
  """ReActNet-18 (CIFAR) with BatchNorm: stem conv+BN, 4 x 4 ``block_cls`` blocks, head.

  ``presign``/``excitation``/``refine`` are handed to every block (see
  ``bnn_jax.models.common``). Returns logits; intermediates are sown (``models.features``).
  """
  num_classes: int = 10
  width: float = 1.0
  blocks_per_stage: Sequence[int] = (4, 4, 4, 4)
  block_cls: ModuleDef = ReActBlock
  presign: ModuleDef = layers.RSign
  excitation: Optional[ModuleDef] = None
  refine: Optional[ModuleDef] = None
  binarize_weights: bool = True
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = conv3x3(scaled(STAGES[0], self.width), dtype=self.dtype, name="stem_conv")(x)
    x = batch_norm(train, "stem_bn", self.bn_axis_name, self.dtype)(x)
    block = lambda features, strides, name: self.block_cls(
        features, strides, presign=self.presign, excitation=self.excitation, refine=self.refine,
        binarize_weights=self.binarize_weights, dtype=self.dtype,
        bn_axis_name=self.bn_axis_name, name=name)
    x = run_stages(self, x, train, STAGES, self.blocks_per_stage, self.width, block)
    return classifier_head(self, x, self.num_classes)


class ReActNet18BNFree(nn.Module):
  """ReActNet-18 (CIFAR) without any BatchNorm (see module docstring)."""
  num_classes: int = 10
  width: float = 1.0
  blocks_per_stage: Sequence[int] = (4, 4, 4, 4)
  alpha: float = 0.2
  presign: ModuleDef = layers.RSign
  binarize_weights: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = layers.ScaledStdConv(scaled(STAGES[0], self.width), 3, dtype=self.dtype,
                             name="stem_conv")(x)
    expected_var = [1.0]  # Var[x] at the next block's input, tracked analytically

    def block(features, strides, name):
      beta = expected_var[0] ** 0.5
      # Only strided blocks have a (variance-resetting) shortcut conv: the stem already
      # has stage 1's width.
      expected_var[0] = (1.0 if strides != 1 else expected_var[0]) + self.alpha ** 2
      return ReActBlockBNFree(features, strides, self.alpha, beta, self.presign,
                              self.binarize_weights, self.dtype, name=name)

    x = run_stages(self, x, train, STAGES, self.blocks_per_stage, self.width, block)
    return classifier_head(self, x, self.num_classes)
