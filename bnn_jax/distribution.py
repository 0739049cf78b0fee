"""Feature distribution adjustment: Flax modules that shape what the sign sees.

A binary activation keeps one bit of a real value: sign(x) = +1 where x >= 0.
If a channel's activations are mostly on one side of 0, that bit carries almost
no information (all +1 or all -1). The modules here move and rescale the
*distribution* of each sample's features before the sign, and refine it after
the binary conv, so the bits stay informative:

- :class:`MeanVarianceAdjust`: per-sample mean/variance normalisation, then a
  learnable per-channel affine (before the sign).
- :class:`ZeroPointSign`: sign around a learnable per-channel zero point, plus
  an optional input-dependent offset (the sign itself).
- :class:`GroupExcitation`: grouped squeeze-and-excitation giving per-sample,
  per-channel scales (after the binary conv) or threshold offsets (for
  :class:`ZeroPointSign`).
- :class:`FeatureRefinement`: shift -> PReLU -> shift on the binary conv's
  branch after its BN (the RPReLU form).
- :class:`FDASign`: the pre-sign module that combines them; a drop-in for
  ``layers.RSign`` before every binary conv.

Shapes are NHWC: x is [B, H, W, C]. Parameters are float32 and per channel (the
last axis). Every sign goes through a binarizer of ``bnn_jax.quantizers`` (by
name, via ``quantizers.get``), so sign(0) = +1 everywhere.

Method 2 of the thesis; published as "Feature distribution guided binary neural
networks", Control and Decision, 2024, 39(6). See ``docs/METHODS.md``.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnn_jax import layers
from bnn_jax import quantizers

Binarizer = Union[str, Callable[[jax.Array], jax.Array]]

STATS = ("hw", "chw")
MODES = ("scale", "offset")


def _stat_axes(stats: str, ndim: int) -> tuple[int, ...]:
  """Axes of the per-sample statistics: "hw" all but batch and channel, "chw" all but batch."""
  if stats not in STATS:
    raise ValueError(f"Unknown statistics axes {stats!r}; valid values: {', '.join(STATS)} "
                     f"('hw': per sample and channel over H, W; 'chw': per sample over C, H, W).")
  if ndim < 3:
    raise ValueError(f"Expected an input with batch, spatial and channel axes (NHWC), got "
                     f"{ndim} dimensions.")
  last = ndim - 1 if stats == "hw" else ndim
  return tuple(range(1, last))


def _binarizer(identifier: Binarizer) -> Callable[[jax.Array], jax.Array]:
  """``quantizers.get(identifier)``, refusing None (these modules always binarize)."""
  fn = quantizers.get(identifier)  # unknown names raise the registry's ValueError
  if fn is None:
    raise ValueError(f"A binarizer is required (a name or a callable); valid names: "
                     f"{', '.join(quantizers.names())}.")
  return fn


class MeanVarianceAdjust(nn.Module):
  """Per-sample standardisation with a learnable per-channel affine.

  x'[b,h,w,c] = gamma_c * (x[b,h,w,c] - mu) / sqrt(var + eps) + beta_c

  with mu and the biased variance var computed per sample, in float32:
    "hw":  mu[b,c], var[b,c] over (h, w)     -> each channel of each sample
    "chw": mu[b],   var[b]   over (h, w, c)  -> each sample as a whole.
  Shapes: x [B, H, W, C] -> x' [B, H, W, C] (x.dtype); gamma, beta [C], init 1, 0.

  A positive per-sample scale and any per-sample shift of x (per sample and
  channel for "hw") leave x' unchanged up to eps, so sign(x') is +1 for about
  half of each channel whatever the input's offset: with gamma = 1, beta = 0
  the sign threshold sits at the sample's own mean; beta_c / gamma_c moves it.

  Closest published sources: ReCU (Xu et al. 2021, "ReCU: Reviving the dead
  weights in binary neural networks") balances the *weights* before the sign
  for maximal bit entropy; this applies the argument to activations, per
  sample. Per-sample, data-driven scaling as in Real-to-Binary (Martinez et al.
  2020). The statistics are those of instance norm ("hw", Ulyanov et al. 2016)
  and layer norm ("chw", Ba et al. 2016).

  Attributes:
    axes: "hw" or "chw", which axes the statistics are taken over.
    eps: added to the variance.
  """
  axes: str = "hw"
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    reduce = _stat_axes(self.axes, x.ndim)
    c = x.shape[-1]
    gamma = self.param("gamma", nn.initializers.ones, (c,))
    beta = self.param("beta", nn.initializers.zeros, (c,))
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mu = jnp.mean(xf, axis=reduce, keepdims=True)
    var = jnp.mean(jnp.square(xf - mu), axis=reduce, keepdims=True)
    y = (xf - mu) * jax.lax.rsqrt(var + self.eps)
    return (gamma * y + beta).astype(x.dtype)


class ZeroPointSign(nn.Module):
  """Sign around a learnable per-channel zero point and an optional dynamic offset.

  forward:  y = sign(x - theta_c - theta_dyn)   (+1 where x >= theta_c + theta_dyn)
  backward: the binarizer's estimator at u = x - theta_c - theta_dyn
            (ApproxSign by default: dL/du = dL/dy * max(0, 2 - 2|u|)),
            dL/dtheta_c = -sum over b, h, w of dL/du.
  Shapes: x [B, H, W, C]; theta [C], init 0; theta_dyn None or broadcastable to
  x, typically [B, 1, 1, C] from ``GroupExcitation(mode="offset")``.

  ``presign`` returns u itself (the real value the sign sees), for activation
  statistics; ``__call__`` is ``binarizer(presign(x, theta_dyn))``.

  Closest published sources: ReActNet's RSign, sign(x + b_c) (Liu et al. 2020,
  eq. 3; here theta_c = -b_c); for theta_dyn, SD-BNN's input-dependent shift
  before the sign (Xue et al. 2021, "Self-distribution binary neural
  networks") and INSTA-BNN's instance-aware thresholds (Lee et al. 2023).

  Attributes:
    binarizer: a name in ``quantizers.names()`` (through ``quantizers.get``,
      which raises a ValueError listing the valid names) or a callable.
  """
  binarizer: Binarizer = "approx_sign"

  @nn.compact
  def presign(self, x: jax.Array, theta_dyn: Optional[jax.Array] = None) -> jax.Array:
    """u = x - theta_c - theta_dyn, the input of the sign."""
    theta = self.param("theta", nn.initializers.zeros, (x.shape[-1],))
    u = x - layers.cast_to_activation(theta, x)
    if theta_dyn is not None:
      u = u - layers.cast_to_activation(theta_dyn, x)
    return u

  def __call__(self, x: jax.Array, theta_dyn: Optional[jax.Array] = None) -> jax.Array:
    binarize = _binarizer(self.binarizer)
    return binarize(self.presign(x, theta_dyn))


class GroupDense(nn.Module):
  """G independent dense layers on G channel groups, as one einsum.

  y[b, g, :] = x[b, g, :] @ kernel[g] + bias[g]
  Shapes: x [B, G, I] -> y [B, G, O]; kernel [G, I, O] (LeCun normal per group,
  fan-in I), bias [G, O], init 0. Named ``kernel`` so ``optim.real_kernel_mask``
  applies weight decay to it like any real-valued kernel.
  """
  features: int
  kernel_init: layers.Initializer = nn.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal", in_axis=-2, out_axis=-1, batch_axis=(0,))

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    g, i = x.shape[-2:]
    kernel = self.param("kernel", self.kernel_init, (g, i, self.features))
    bias = self.param("bias", nn.initializers.zeros, (g, self.features))
    return jnp.einsum("bgi,gio->bgo", x, kernel.astype(x.dtype)) + bias.astype(x.dtype)


class GroupExcitation(nn.Module):
  """Grouped squeeze-and-excitation: per-sample, per-channel scales or offsets.

  s[b, :]  = mean over (h, w) of x[b, h, w, :]                      [B, C_in]
  s_g      = s[b, g*C_in/G : (g+1)*C_in/G]                          G groups of C_in/G
  z_g      = relu(s_g @ W1_g + b1_g) @ W2_g + b2_g                  [B, C_out/G]
  z        = concat_g z_g                                           [B, C_out]
  "scale":  out = sigmoid(z)                    in (0, 1)
  "offset": out = tanh(z) * bound_c             in (-|bound_c|, |bound_c|)
  returned as [B, 1, 1, C_out] in float32 (or x's dtype if wider): the consumer casts it
  with ``layers.cast_to_activation``, so its gradient is summed over (h, w) in float32.
  Groups are contiguous channel blocks; hidden = max(1, C_in // (G * reduction)).

  Params: ``reduce/kernel`` W1 [G, C_in/G, hidden], ``reduce/bias`` [G, hidden],
  ``expand/kernel`` W2 [G, hidden, C_out/G], ``expand/bias`` [G, C_out/G]
  (see :class:`GroupDense`), and in "offset" mode ``bound`` [C_out], init
  ``bound_init``. G = 1 is the ungrouped SE block.

  Use: "scale" multiplies the binary conv's output, y = BinaryConv(x_b) * out
  (the scales depend on the real-valued input x of the block); "offset" gives
  theta_dyn of :class:`ZeroPointSign`.

  Closest published sources: Real-to-Binary's data-driven channel rescaling
  (Martinez et al. 2020: GAP -> Dense(C/r, ReLU) -> Dense(C, sigmoid));
  Squeeze-and-Excitation (Hu et al. 2018); SD-BNN (Xue et al. 2021) and
  INSTA-BNN (Lee et al. 2023) for input-dependent thresholds.

  Attributes:
    features: output channels C_out.
    groups: G; must divide C_in and C_out.
    reduction: bottleneck ratio r.
    mode: "scale" or "offset".
    bound_init: initial bound_c of the "offset" mode.
  """
  features: int
  groups: int = 4
  reduction: int = 4
  mode: str = "scale"
  bound_init: float = 0.1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.mode not in MODES:
      raise ValueError(f"Unknown GroupExcitation mode {self.mode!r}; valid values: "
                       f"{', '.join(MODES)}.")
    c_in, c_out, g = x.shape[-1], self.features, self.groups
    if g < 1 or c_in % g or c_out % g:
      raise ValueError(f"groups={g} must be a positive divisor of the input channels "
                       f"(C_in={c_in}) and of the output channels (features={c_out}).")
    if self.reduction < 1:
      raise ValueError(f"reduction must be >= 1, got {self.reduction}.")
    hidden = max(1, c_in // (g * self.reduction))
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    s = jnp.mean(x.astype(dtype), axis=tuple(range(1, x.ndim - 1)))   # [B, C_in]
    s = s.reshape(s.shape[0], g, c_in // g)
    h = nn.relu(GroupDense(hidden, name="reduce")(s))
    z = GroupDense(c_out // g, name="expand")(h).reshape(s.shape[0], c_out)
    if self.mode == "scale":
      out = jax.nn.sigmoid(z)
    else:
      bound = self.param("bound", nn.initializers.constant(self.bound_init), (c_out,))
      out = jnp.tanh(z) * bound
    return out.reshape((s.shape[0],) + (1,) * (x.ndim - 2) + (c_out,))


class FeatureRefinement(layers.RPReLU):
  """Feature refinement after a binary conv: shift -> per-channel PReLU -> shift.

  y = PReLU_c(x + b_in,c) + b_out,c,  PReLU_c(u) = u if u >= 0 else slope_c * u
  Shapes: x [B, H, W, C] -> y [B, H, W, C]; params ``shift_in/bias`` [C] (init 0),
  ``slope`` [C] (init ``init_slope`` = 0.25), ``shift_out/bias`` [C] (init 0).

  This is exactly ReActNet's RPReLU form (Liu et al. 2020, eq. 4), so it is that
  layer under the name of its job here. Where it goes: after the BN of each
  binary conv, on the residual branch, before the shortcut is added:
  y = shortcut(x) + FeatureRefinement(BN(BinaryConv(FDASign(x)))). It re-centres
  and reshapes each channel of the binary conv's output (whose distribution
  the binary weights and signs have distorted) before it is merged with the
  real-valued shortcut. In ReActNet-18, whose block already ends with RPReLU
  after the addition, it adds a second, per-branch refinement before the
  addition, not a stacked copy of that one.
  """


class FDASign(nn.Module):
  """Feature-distribution-adjusted sign: the pre-sign module, in place of RSign.

  x'        = MeanVarianceAdjust(stats)(x)             if mean_variance else x
  theta_dyn = GroupExcitation(C, mode="offset")(x)     if dynamic_threshold else 0
  u         = x' - theta_c - theta_dyn                 if zero_point or dynamic_threshold
            = x'                                       otherwise
  y         = binarizer(u)                              in {-1, +1}, sign(0) = +1
  Shapes: x [B, H, W, C] -> y [B, H, W, C]; theta_dyn [B, 1, 1, C].

  The excitation reads the block input x, not x': with "hw" statistics the
  spatial mean of x' is beta_c for every sample, so it would carry nothing
  per sample. ``theta`` exists whenever ``zero_point or dynamic_threshold``.
  With every option off this is ``quantizers.get(binarizer)(x)``, no params.

  Submodules: "mean_variance" (:class:`MeanVarianceAdjust`), "zero_point"
  (:class:`ZeroPointSign`), "threshold_excitation" (:class:`GroupExcitation`).
  Sows u as ``("intermediates", "presign")`` (flax ``self.sow``: returned only
  when ``mutable=["intermediates"]``) so that the balance of the signs,
  mean(u >= 0) per channel, can be measured.

  Method 2 of the thesis ("Feature distribution guided binary neural
  networks", Control and Decision 2024, 39(6); ``docs/METHODS.md``); closest
  published sources are listed on each submodule (ReCU, ReActNet's RSign,
  Real-to-Binary, INSTA-BNN).

  Attributes:
    mean_variance: use :class:`MeanVarianceAdjust`.
    stats: its statistics axes, "hw" or "chw" (checked even while
      mean_variance is off).
    zero_point: learnable per-channel threshold theta_c.
    dynamic_threshold: input-dependent threshold theta_dyn.
    groups, reduction: of the threshold excitation.
    binarizer: a name in ``quantizers.names()`` or a callable.
  """
  mean_variance: bool = True
  stats: str = "hw"
  zero_point: bool = True
  dynamic_threshold: bool = False
  groups: int = 4
  reduction: int = 4
  binarizer: Binarizer = "approx_sign"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    binarize = _binarizer(self.binarizer)
    _stat_axes(self.stats, x.ndim)  # a bad value fails even while mean_variance is off
    u = x
    if self.mean_variance:
      u = MeanVarianceAdjust(axes=self.stats, name="mean_variance")(x)
    theta_dyn = None
    if self.dynamic_threshold:
      theta_dyn = GroupExcitation(features=x.shape[-1], groups=self.groups,
                                  reduction=self.reduction, mode="offset",
                                  name="threshold_excitation")(x)
    if self.zero_point or self.dynamic_threshold:
      u = ZeroPointSign(binarizer=self.binarizer, name="zero_point").presign(u, theta_dyn)
    self.sow("intermediates", "presign", u)
    return binarize(u)
