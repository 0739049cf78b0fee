"""VGG-Small for CIFAR: full precision and binary.

conv 128-128-256-256-512-512 (3x3), max-pool 2x2 after convs 1, 3 and 5
(0-indexed), each conv followed by BN and the activation, then a real Dense
classifier on the flattened 4x4x512 map. Binary version: conv 0 stays real,
convs 1-5 are binary (sign inputs, mean|W| * sign(W)), activation hardtanh;
full precision: ReLU. 4,660,106 parameters for 10 classes at width 1.
Source: Zhang et al. 2018 (LQ-Nets); IR-Net / ReCU use it for CIFAR BNNs.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from bnn_jax import layers
from bnn_jax.models.common import batch_norm, conv3x3, hardtanh, scaled

CHANNELS = (128, 128, 256, 256, 512, 512)
POOL_AFTER = (1, 3, 5)


class VGGSmall(nn.Module):
  """VGG-Small; ``binary=True`` binarizes convs 1-5. Features: stage1..stage3 are
  the maps after each pooling, penultimate the flattened map."""
  num_classes: int = 10
  width: float = 1.0
  binary: bool = True
  input_quantizer: str = "approx_sign"
  binarize_weights: bool = True
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    features = {}
    for i, channels in enumerate(CHANNELS):
      c = scaled(channels, self.width)
      if i == 0 or not self.binary:
        x = conv3x3(c, dtype=self.dtype, name=f"conv{i}")(x)
      else:
        x = layers.BinaryConv(c, 3, input_quantizer=self.input_quantizer,
                              binarize_weights=self.binarize_weights, dtype=self.dtype,
                              name=f"binary_conv{i}")(x)
      if i in POOL_AFTER:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = batch_norm(train, f"bn{i}", self.bn_axis_name)(x)
      x = hardtanh(x) if self.binary else nn.relu(x)
      if i in POOL_AFTER:
        features[f"stage{POOL_AFTER.index(i) + 1}"] = x
    x = x.reshape((x.shape[0], -1)).astype(jnp.float32)
    features["penultimate"] = x
    logits = nn.Dense(self.num_classes, name="head")(x)
    return (logits, features) if return_features else logits
