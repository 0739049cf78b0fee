"""Flax linen layers over the binarizers in ``bnn_jax.quantizers``.

A binary layer is the float layer plus two fields in the same place in every
layer: ``input_quantizer`` (a binarizer name, callable, or None for real inputs)
and the weight binarizer (``binarize_weights``, ``weight_scale``, ``weight_clip``).
Latent weights are stored under the parameter name ``binary_kernel`` (the
convention ``bnn_jax.optim.binary_mask`` selects on), also while
``binarize_weights=False`` (ReActNet's step 1), so a step-2 run can be
initialised from a step-1 checkpoint name for name.

Padding: zero padding would feed 0 into a "binary" conv, which a packed kernel
cannot represent. ``BinaryConv`` pads the *binarized* input with ``pad_value``
(default +1, as larq's ``pad_values=1``), so the float and packed models agree.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnn_jax import quantizers

Initializer = Callable[..., jax.Array]
Quantizer = Union[None, str, Callable[[jax.Array], jax.Array]]

default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def _pair(v: Union[int, Sequence[int]]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


def cast_to_activation(p: jax.Array, x: jax.Array) -> jax.Array:
  """A float32 parameter (or per-sample scale) ``p`` as an operand of activation ``x``:
  broadcast to ``x.shape`` first, then cast to ``x.dtype``.

  In this order the backward pass casts the cotangent to float32 *before* summing it over the
  broadcast axes (batch, height, width), so the parameter's gradient is a float32 sum. Cast
  first, ``p.astype(bfloat16) + x`` makes that gradient a bfloat16 sum of ~10^5 terms (0.45
  relative error on a [128, 16, 16, 64] map; docs/METHODS.md, "Numerics"). XLA fuses the
  broadcast and the cast into the consumer, so neither is materialized. A no-op when the
  dtypes already agree (float32 programs are unchanged).
  """
  if p.dtype == x.dtype:
    return p
  return jnp.broadcast_to(p, x.shape).astype(x.dtype)


def standardize_weight(w: jax.Array, eps: float = 1e-4) -> jax.Array:
  """Scaled weight standardization per output channel (last axis).

  w_hat = (w - mean_c(w)) / sqrt(N * var_c(w) + eps), N = fan-in (all axes but
  the last), so a unit-variance input gives a unit-variance output.
  Source: Qiao et al. 2019 (WS); Brock et al. 2021 (NF-ResNets, "scaled WS").
  """
  axes = tuple(range(w.ndim - 1))
  fan_in = 1
  for a in axes:
    fan_in *= w.shape[a]
  mean = jnp.mean(w, axis=axes, keepdims=True)
  var = jnp.var(w, axis=axes, keepdims=True)
  return (w - mean) * jax.lax.rsqrt(fan_in * var + eps)


class BinaryConv(nn.Module):
  """2-D conv with binarized inputs and weights (NHWC, HWIO kernel).

  y = conv(pad(q_in(x), pad_value), alpha * sign(w)), alpha per output channel
  = mean|w| by default (stop-gradient), clipped STE on w.
  With ``standardize_weights`` the latent w is first put through scaled weight
  standardization times a learnable per-channel gain (BN-free networks).

  With ``dtype=bfloat16`` computed as alpha * conv(., sign(w)): the conv's operands are exact
  +-1 in bfloat16 and its sums come out in bfloat16 (the backend accumulates in float32, so
  the integer sum is rounded once), alpha (and gain) multiplies them in float32, as in the
  packed model, and the product is rounded to bfloat16, the network's compute dtype. All
  operands stay bfloat16 in the backward pass too (docs/METHODS.md, "Numerics"). In float32,
  alpha stays folded into the kernel (the same function; the
  multiply on the conv output instead cost 17% of a CPU train step: 88 vs 105 img/s,
  ReActNet-18 width 0.25, batch 128, a one-off timing of the jitted step).
  """
  features: int
  kernel_size: Union[int, Sequence[int]] = 3
  strides: Union[int, Sequence[int]] = 1
  padding: Union[str, int] = "SAME"
  input_quantizer: Quantizer = "approx_sign"
  binarize_weights: bool = True
  weight_scale: str = "channel"
  weight_clip: float = 1.0
  pad_value: float = 1.0
  standardize_weights: bool = False
  use_bias: bool = False
  kernel_init: Initializer = default_kernel_init
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = _pair(self.kernel_size)
    w = self.param("binary_kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
    if self.standardize_weights:
      w = standardize_weight(w)
    w, scale = _factored_weight(w, self.binarize_weights, self.weight_scale, self.weight_clip)
    if self.standardize_weights:
      scale = scale * self.param("gain", nn.initializers.ones, (self.features,))
    w, scale = _fold_if_float32(w, scale, self.dtype)
    quantize = quantizers.get(self.input_quantizer)
    if quantize is not None:
      x = quantize(x)
    x = pad_input(x, (kh, kw), self.padding, self.pad_value)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), w.astype(self.dtype), window_strides=_pair(self.strides),
        padding="VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y * scale
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y.astype(self.dtype)


def _fold_if_float32(w: jax.Array, scale: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
  """(w * scale, 1) for float32 compute, else (w, scale) unchanged (see ``BinaryConv``)."""
  if jnp.dtype(dtype) == jnp.float32:
    return w * scale, jnp.ones((), jnp.float32)
  return w, scale


def _factored_weight(w: jax.Array, binarize: bool, scale: str, clip: float
                     ) -> tuple[jax.Array, jax.Array]:
  """(kernel, per-output-channel factor) with kernel * factor = ``binarize_weight(w)``
  (kernel = the clipped-STE sign(w), factor = alpha) or, unbinarized, (w, 1)."""
  if not binarize:
    return w, jnp.ones((), jnp.float32)
  return quantizers.clipped_ste_sign(w, clip), quantizers.weight_scale(w, scale)


def pad_input(x: jax.Array, kernel_size: tuple[int, int], padding: Union[str, int],
              value: float) -> jax.Array:
  """Pads NHWC ``x`` spatially with ``value`` as "SAME" (or an int, or "VALID") would."""
  if padding == "VALID" or padding == 0:
    return x
  if padding == "SAME":
    pads = [((k - 1) // 2, k // 2) for k in kernel_size]
  elif isinstance(padding, int):
    pads = [(padding, padding)] * 2
  else:
    raise ValueError(f"padding must be 'SAME', 'VALID' or an int, got {padding!r}.")
  return jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=value)


class BinaryDense(nn.Module):
  """Dense layer with binarized inputs and weights: y = q_in(x) @ (alpha * sign(w)),
  in bfloat16 computed as alpha * (q_in(x) @ sign(w)) in float32 (as ``BinaryConv``)."""
  features: int
  input_quantizer: Quantizer = "approx_sign"
  binarize_weights: bool = True
  weight_scale: str = "channel"
  weight_clip: float = 1.0
  use_bias: bool = False
  kernel_init: Initializer = default_kernel_init
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    w = self.param("binary_kernel", self.kernel_init, (x.shape[-1], self.features))
    w, scale = _factored_weight(w, self.binarize_weights, self.weight_scale, self.weight_clip)
    w, scale = _fold_if_float32(w, scale, self.dtype)
    quantize = quantizers.get(self.input_quantizer)
    if quantize is not None:
      x = quantize(x)
    y = jnp.matmul(x.astype(self.dtype), w.astype(self.dtype)) * scale
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y.astype(self.dtype)


class LearnableBias(nn.Module):
  """x + b, b learnable per channel (last axis), initialised to 0 (ReActNet's "move")."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return x + cast_to_activation(self.param("bias", nn.initializers.zeros, (x.shape[-1],)), x)


class RSign(nn.Module):
  """ReActNet's RSign: sign(x + b_c) with a learnable per-channel threshold.

  forward: +1 where x >= -b_c else -1    backward: ApproxSign, max(0, 2 - 2|x + b_c|)
  Source: Liu et al. 2020, "ReActNet", eq. 3.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shifted = LearnableBias(name="threshold")(x)
    self.sow("intermediates", "presign", shifted)
    return quantizers.approx_sign(shifted)


class Sign(nn.Module):
  """A parameter-free activation binarizer: ``quantizers.get(binarizer)(x)``, sign(0) = +1.

  The pre-sign module of ResNet-18 BNN and VGG-Small (IR-Net / ReCU layout), where the
  sign has no learnable threshold. Sows its input as ``intermediates/.../presign``.
  """
  binarizer: str = "approx_sign"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    self.sow("intermediates", "presign", x)
    return quantizers.get(self.binarizer)(x)


class RPReLU(nn.Module):
  """ReActNet's RPReLU: PReLU_c(x - gamma_c) + zeta_c, slope per channel (init 0.25).

  Source: Liu et al. 2020, "ReActNet", eq. 4.
  """
  init_slope: float = 0.25

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    x = LearnableBias(name="shift_in")(x)
    slope = cast_to_activation(
        self.param("slope", nn.initializers.constant(self.init_slope), (c,)), x)
    x = jnp.where(x >= 0, x, slope * x)
    return LearnableBias(name="shift_out")(x)


class ScaledStdConv(nn.Module):
  """Real-valued conv with scaled weight standardization and a learnable gain.

  y = conv(x, gain_c * (w - mean_c) / sqrt(N var_c + eps)) + b. Keeps
  activations at unit variance without BatchNorm (BN-free networks).
  Source: Brock et al. 2021, "Characterizing signal propagation ..." (NF-ResNets);
  Chen et al. 2021, "BNN - BN = ?".
  """
  features: int
  kernel_size: Union[int, Sequence[int]] = 3
  strides: Union[int, Sequence[int]] = 1
  padding: Union[str, int] = "SAME"
  use_bias: bool = True
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = _pair(self.kernel_size)
    w = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
    gain = self.param("gain", nn.initializers.ones, (self.features,))
    w = standardize_weight(w) * gain
    pad = self.padding if isinstance(self.padding, str) else [(self.padding,) * 2] * 2
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), w.astype(self.dtype), _pair(self.strides), pad,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      y = y + cast_to_activation(self.param("bias", nn.initializers.zeros, (self.features,)), y)
    return y
