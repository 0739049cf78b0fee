"""ResNet-18 for CIFAR: full precision and binary.

Full precision (``ResNet18FP``): the standard CIFAR ResNet-18 (3x3 stem, no
max-pool, [2, 2, 2, 2] basic blocks, 64-128-256-512, 1x1 conv + BN downsample
shortcut); 11,173,962 parameters for 10 classes at width 1.

Binary (``ResNet18BNN``), the IR-Net / ReCU CIFAR layout: the same convolutions,
binary (sign inputs, mean|W| * sign(W) weights), each followed by BN and its own
shortcut (Bi-Real style), then hardtanh:
  h = hardtanh(BN(BinConv1(x)) + shortcut(x));  y = hardtanh(BN(BinConv2(h)) + h),
with BinConv(x) = BinaryConv(presign(x)) [* excitation(x)] and an optional refinement after
each BN (the injected definitions of ``bnn_jax.models.common``; the plain BNN uses
``layers.Sign``).
Stem, 1x1 downsample shortcuts and the classifier stay real-valued.
Sources: He et al. 2016; Qin et al. 2020 (IR-Net); Xu et al. 2021 (ReCU).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bnn_jax import layers
from bnn_jax.models.common import (ModuleDef, batch_norm, classifier_head, conv1x1, conv3x3,
                                   hardtanh, run_stages, scaled, signed_conv, sow_output)

STAGES = (64, 128, 256, 512)


def _shortcut(x, features: int, strides: int, train: bool, dtype, bn_axis_name):
  if strides == 1 and x.shape[-1] == features:
    return x
  x = conv1x1(features, strides=strides, dtype=dtype, name="shortcut_conv")(x)
  return batch_norm(train, "shortcut_bn", bn_axis_name, dtype)(x)


class BasicBlockFP(nn.Module):
  """y = ReLU(BN(conv2(ReLU(BN(conv1(x))))) + shortcut(x))."""
  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    y = conv3x3(self.features, strides=self.strides, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(batch_norm(train, "bn1", self.bn_axis_name, self.dtype)(y))
    y = conv3x3(self.features, dtype=self.dtype, name="conv2")(y)
    y = batch_norm(train, "bn2", self.bn_axis_name, self.dtype)(y)
    shortcut = _shortcut(x, self.features, self.strides, train, self.dtype, self.bn_axis_name)
    return sow_output(self, nn.relu(y + shortcut))


class BasicBlockBNN(nn.Module):
  """h = hardtanh(refine(BN(BinConv1(x))) + shortcut(x));  y = hardtanh(refine(BN(BinConv2(h))) + h)."""
  features: int
  strides: int = 1
  presign: ModuleDef = layers.Sign
  excitation: Optional[ModuleDef] = None
  refine: Optional[ModuleDef] = None
  binarize_weights: bool = True
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  def _branch(self, x, strides: int, i: int, train: bool):
    y = signed_conv(x, self.features, strides, presign=self.presign, excitation=self.excitation,
                    binarize_weights=self.binarize_weights, dtype=self.dtype,
                    conv_name=f"binary_conv{i}", sign_name=f"sign{i}",
                    excitation_name=f"excitation{i}")
    y = batch_norm(train, f"bn{i}", self.bn_axis_name, self.dtype)(y)
    return self.refine(name=f"refine{i}")(y) if self.refine is not None else y

  @nn.compact
  def __call__(self, x, train: bool):
    shortcut = _shortcut(x, self.features, self.strides, train, self.dtype, self.bn_axis_name)
    h = hardtanh(self._branch(x, self.strides, 1, train) + shortcut)
    return sow_output(self, hardtanh(self._branch(h, 1, 2, train) + h))


class ResNet18(nn.Module):
  """CIFAR ResNet-18: stem conv+BN+activation, [2, 2, 2, 2] ``block_cls`` blocks, head.

  ``block_kwargs`` go to every block (e.g. presign/excitation/refine for binary blocks).
  Returns logits; intermediates are sown (``models.features``).
  """
  block_cls: ModuleDef
  stem_activation: Callable = nn.relu
  block_kwargs: Any = None
  num_classes: int = 10
  width: float = 1.0
  blocks_per_stage: Sequence[int] = (2, 2, 2, 2)
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = conv3x3(scaled(STAGES[0], self.width), dtype=self.dtype, name="stem_conv")(x)
    x = self.stem_activation(batch_norm(train, "stem_bn", self.bn_axis_name, self.dtype)(x))
    extra = dict(self.block_kwargs or {})
    block = lambda features, strides, name: self.block_cls(
        features, strides, dtype=self.dtype, bn_axis_name=self.bn_axis_name, name=name, **extra)
    x = run_stages(self, x, train, STAGES, self.blocks_per_stage, self.width, block)
    return classifier_head(self, x, self.num_classes)
