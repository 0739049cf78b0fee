"""VGG-Small for CIFAR: full precision and binary.

conv 128-128-256-256-512-512 (3x3), max-pool 2x2 after convs 1, 3 and 5
(0-indexed), each conv followed by BN and the activation, then a real Dense
classifier on the flattened 4x4x512 map. Binary version: conv 0 stays real,
convs 1-5 are binary (``presign`` then a BinaryConv with mean|W| * sign(W), optional
excitation scales, optional refinement after the BN), activation hardtanh; full
precision: ReLU. Layer i is the module ``layer{i}``. 4,660,106 parameters for 10
classes at width 1. Source: Zhang et al. 2018 (LQ-Nets); IR-Net / ReCU use it for CIFAR BNNs.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from bnn_jax import layers
from bnn_jax.models.common import (ModuleDef, batch_norm, classifier_head, conv3x3, hardtanh,
                                   scaled, signed_conv, sow_output)

CHANNELS = (128, 128, 256, 256, 512, 512)
POOL_AFTER = (1, 3, 5)


class VGGLayer(nn.Module):
  """act(refine(BN(pool(conv(x))))), conv real or binary (BinaryConv(presign(x)) [* excitation(x)])."""
  features: int
  pool: bool = False
  binary: bool = True
  activation: Callable = hardtanh
  presign: ModuleDef = layers.Sign
  excitation: Optional[ModuleDef] = None
  refine: Optional[ModuleDef] = None
  binarize_weights: bool = True
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    if self.binary:
      x = signed_conv(x, self.features, 1, presign=self.presign, excitation=self.excitation,
                      binarize_weights=self.binarize_weights, dtype=self.dtype,
                      conv_name="binary_conv", sign_name="sign", excitation_name="excitation")
    else:
      x = conv3x3(self.features, dtype=self.dtype, name="conv")(x)
    if self.pool:
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = batch_norm(train, "bn", self.bn_axis_name, self.dtype)(x)
    if self.binary and self.refine is not None:
      x = self.refine(name="refine")(x)
    return sow_output(self, self.activation(x))


class VGGSmall(nn.Module):
  """VGG-Small; ``binary=True`` binarizes convs 1-5. Sown stages stage1..stage3 are the
  maps after each pooling layer, ``penultimate`` the flattened map."""
  num_classes: int = 10
  width: float = 1.0
  binary: bool = True
  presign: ModuleDef = layers.Sign
  excitation: Optional[ModuleDef] = None
  refine: Optional[ModuleDef] = None
  binarize_weights: bool = True
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, channels in enumerate(CHANNELS):
      binary = self.binary and i > 0
      x = VGGLayer(scaled(channels, self.width), pool=i in POOL_AFTER, binary=binary,
                   activation=hardtanh if self.binary else nn.relu,
                   presign=self.presign, excitation=self.excitation, refine=self.refine,
                   binarize_weights=self.binarize_weights, dtype=self.dtype,
                   bn_axis_name=self.bn_axis_name, name=f"layer{i}")(x, train)
      if i in POOL_AFTER:
        self.sow("intermediates", f"stage{POOL_AFTER.index(i) + 1}", x)
    return classifier_head(self, x, self.num_classes, pool=False)
