"""Pieces the CIFAR models share."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


def scaled(channels: int, width: float) -> int:
  """Channel count under a width multiplier (at least 1)."""
  return max(1, int(round(channels * width)))


def batch_norm(train: bool, name: str | None = None, axis_name: str | None = None) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults (momentum 0.1 there = 0.9 here, eps 1e-5).

  With ``axis_name`` (inside pmap) the batch statistics are averaged over the
  devices (synchronized BN): N devices then compute what one device would on
  the global batch. Without it they are per device, and the trainer averages
  the running statistics before evaluating and saving.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name,
                      axis_name=axis_name if train else None)


def hardtanh(x: jax.Array) -> jax.Array:
  return jnp.clip(x, -1.0, 1.0)


def avg_pool2(x: jax.Array) -> jax.Array:
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def global_avg_pool(x: jax.Array) -> jax.Array:
  return jnp.mean(x, axis=(1, 2))


conv3x3 = functools.partial(nn.Conv, kernel_size=(3, 3), padding="SAME", use_bias=False)
conv1x1 = functools.partial(nn.Conv, kernel_size=(1, 1), padding="VALID", use_bias=False)
