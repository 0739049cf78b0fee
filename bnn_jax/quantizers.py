"""Binarizers: sign with straight-through estimators, as pure JAX functions.

Every binarizer maps x to {-1, +1} in the forward pass with ``sign(0) = +1``
(``jnp.sign(0) == 0`` is a classic BNN bug: a packed bit cannot hold 0). They
differ only in the backward pass, the straight-through estimator (STE) that
replaces the zero-almost-everywhere derivative of sign.

Each function is a ``jax.custom_vjp``; only Python scalars (clip, beta) are
non-differentiable arguments, and the EDE's ``t`` and ``k`` are traced values so
a schedule can drive them. All work under ``jit``, ``vmap``, ``grad`` and ``pmap``.

This module imports no Flax: any JAX user can call it.

>>> import jax, jax.numpy as jnp
>>> x = jnp.array([-1.5, -0.5, 0.0, 0.3, 1.0, 2.0])
>>> sign(x)
Array([-1., -1.,  1.,  1.,  1.,  1.], dtype=float32)
>>> jax.grad(lambda v: approx_sign(v).sum())(x)
Array([0. , 1. , 2. , 1.4, 0. , 0. ], dtype=float32)
"""

from __future__ import annotations

import functools
from typing import Callable, Union

import jax
import jax.numpy as jnp

Array = jax.Array


def sign(x: Array) -> Array:
  """sign(x) in {-1, +1} with sign(0) = +1. No gradient (zero almost everywhere)."""
  one = jnp.ones((), x.dtype)            # +-1 made in x's dtype (no float32 detour)
  return jnp.where(x >= 0, one, -one)


# --- identity STE -------------------------------------------------------------


@jax.custom_vjp
def ste_sign(x: Array) -> Array:
  """Sign with the identity straight-through estimator.

  forward:  sign(x)          backward:  dL/dx = dL/dy
  Source: Bengio et al. 2013, "Estimating or propagating gradients through
  stochastic neurons".
  """
  return sign(x)


ste_sign.defvjp(lambda x: (sign(x), None), lambda _, g: (g,))


# --- clipped STE ----------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def clipped_ste_sign(x: Array, clip: float = 1.0) -> Array:
  """Sign with the clipped (hard-tanh) straight-through estimator.

  forward:  sign(x)          backward:  dL/dx = dL/dy * 1[|x| <= clip]
  Source: Hubara et al. 2016 (BinaryNet); larq's ``SteSign``.
  """
  return sign(x)


def _clipped_fwd(x, clip):
  return sign(x), x


def _clipped_bwd(clip, x, g):
  return (g * (jnp.abs(x) <= clip).astype(g.dtype),)


clipped_ste_sign.defvjp(_clipped_fwd, _clipped_bwd)


# --- ApproxSign -----------------------------------------------------------------


@jax.custom_vjp
def approx_sign(x: Array) -> Array:
  """Sign with the piecewise-quadratic ApproxSign estimator.

  forward:  sign(x)          backward:  dL/dx = dL/dy * max(0, 2 - 2|x|)
  (the derivative of 2x + x^2 sign(-x) on [-1, 1]).
  Source: Liu et al. 2018, Bi-Real Net; used by ReActNet (Liu et al. 2020).
  """
  return sign(x)


def _approx_fwd(x):
  return sign(x), x


def _approx_bwd(x, g):
  return (g * jnp.maximum(0.0, 2.0 - 2.0 * jnp.abs(x)).astype(g.dtype),)


approx_sign.defvjp(_approx_fwd, _approx_bwd)


# --- SwishSign ------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def swish_sign(x: Array, beta: float = 5.0) -> Array:
  """Sign with the SwishSign estimator.

  forward:  sign(x)
  backward: dL/dx = dL/dy * beta * (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x))
  (the derivative of 2 sigmoid(beta x) (1 + beta x (1 - sigmoid(beta x))) - 1).
  Source: Darabi et al. 2018, "BNN+: Improved binary network training".
  """
  return sign(x)


def _swish_fwd(x, beta):
  return sign(x), x


def _swish_bwd(beta, x, g):
  bx = beta * x
  grad = beta * (2.0 - bx * jnp.tanh(bx / 2.0)) / (1.0 + jnp.cosh(bx))
  return (g * grad.astype(g.dtype),)


swish_sign.defvjp(_swish_fwd, _swish_bwd)


# --- EDE (IR-Net) ---------------------------------------------------------------


@jax.custom_vjp
def ede_sign(x: Array, t: Array, k: Array) -> Array:
  """Sign with IR-Net's Error Decay Estimator.

  forward:  sign(x)          backward:  dL/dx = dL/dy * k t (1 - tanh^2(t x))
  IR-Net schedules t = T_min * 10^(i/N * log10(T_max/T_min)), k = max(1/t, 1)
  (T_min = 0.1, T_max = 10 over training); pass the current t, k here. No
  gradient flows to t or k.
  Source: Qin et al. 2020, "Forward and backward information retention" (IR-Net).
  """
  del t, k
  return sign(x)


def _ede_fwd(x, t, k):
  return sign(x), (x, t, k)


def _ede_bwd(res, g):
  x, t, k = res
  grad = k * t * (1.0 - jnp.tanh(t * x) ** 2)
  return (g * grad.astype(g.dtype), jnp.zeros_like(t), jnp.zeros_like(k))


ede_sign.defvjp(_ede_fwd, _ede_bwd)


def ede_schedule(progress: Array, t_min: float = 0.1, t_max: float = 10.0):
  """IR-Net's (t, k) at training progress in [0, 1]: t = t_min * (t_max/t_min)^progress, k = max(1/t, 1)."""
  t = t_min * (t_max / t_min) ** jnp.asarray(progress, jnp.float32)
  return t, jnp.maximum(1.0 / t, 1.0)


# --- weight binarizer -------------------------------------------------------------

SCALES = ("none", "tensor", "channel")


def weight_scale(w: Array, scale: str = "channel") -> Array:
  """alpha for alpha * sign(w), with the gradient stopped.

  "none": 1;  "tensor": mean|w|;  "channel": mean|w| over all axes but the last
  (the output channel of HWIO conv and (in, out) dense kernels).
  Source: XNOR-Net (Rastegari et al. 2016); ReActNet / Bi-Real use "channel".
  """
  if scale == "none":
    return jnp.ones((), w.dtype)
  if scale == "tensor":
    return jax.lax.stop_gradient(jnp.mean(jnp.abs(w)))
  if scale == "channel":
    axes = tuple(range(w.ndim - 1))
    return jax.lax.stop_gradient(jnp.mean(jnp.abs(w), axis=axes))
  raise ValueError(f"Unknown weight scale {scale!r}; valid: {', '.join(SCALES)}.")


def binarize_weight(w: Array, scale: str = "channel", clip: float = 1.0) -> Array:
  """alpha * sign(w) with a clipped STE on w and alpha from ``weight_scale``.

  forward: alpha * sign(w)     backward: dL/dw = alpha * dL/dy * 1[|w| <= clip]
  (alpha is a constant for the gradient).
  """
  return weight_scale(w, scale) * clipped_ste_sign(w, clip)


# --- registry ---------------------------------------------------------------------

Binarizer = Callable[[Array], Array]

_REGISTRY = {
    "sign": sign,
    "ste_sign": ste_sign,
    "clipped_ste_sign": clipped_ste_sign,
    "approx_sign": approx_sign,
    "swish_sign": swish_sign,
}


def names() -> tuple[str, ...]:
  """The names ``get`` accepts (plus "ede", which needs t and k)."""
  return tuple(_REGISTRY) + ("ede",)


def get(identifier: Union[None, str, Binarizer], **kwargs) -> Binarizer | None:
  """Look a binarizer up by name, pass a callable through, or return None.

  Keyword arguments bind the binarizer's scalars, e.g.
  ``get("clipped_ste_sign", clip=1.2)``, ``get("swish_sign", beta=10.0)``,
  ``get("ede", t=t, k=k)``.
  """
  if identifier is None or callable(identifier):
    if kwargs:
      raise ValueError("Keyword arguments need a binarizer name, not a callable or None.")
    return identifier
  if identifier == "ede":
    missing = {"t", "k"} - set(kwargs)
    if missing:
      raise ValueError(f"Binarizer 'ede' needs t and k (see ede_schedule); missing {sorted(missing)}.")
    return lambda x: ede_sign(x, kwargs["t"], kwargs["k"])
  if identifier not in _REGISTRY:
    raise ValueError(
        f"Unknown binarizer {identifier!r}; valid names: {', '.join(names())}.")
  fn = _REGISTRY[identifier]
  if not kwargs:
    return fn
  if identifier == "clipped_ste_sign" and set(kwargs) <= {"clip"}:
    return lambda x: clipped_ste_sign(x, kwargs.get("clip", 1.0))
  if identifier == "swish_sign" and set(kwargs) <= {"beta"}:
    return lambda x: swish_sign(x, kwargs.get("beta", 5.0))
  raise ValueError(f"Binarizer {identifier!r} takes no arguments {sorted(kwargs)}.")
