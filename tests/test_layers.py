"""Binary layers against independent NumPy computations."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_jax import layers


def np_sign(x):
  return np.where(x >= 0, 1.0, -1.0)


def np_conv_same(x, w, pad_value, stride=1):
  """Direct NHWC/HWIO conv, 'SAME' padding with a constant, written with loops over taps."""
  kh, kw, _, cout = w.shape
  ph, pw = (kh - 1) // 2, (kw - 1) // 2
  xp = np.pad(x, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)), constant_values=pad_value)
  n, h, wd, _ = x.shape
  out = np.zeros((n, h, wd, cout))
  for i in range(kh):
    for j in range(kw):
      out += np.einsum("nhwc,co->nhwo", xp[:, i:i + h, j:j + wd, :], w[i, j])
  return out[:, ::stride, ::stride, :]


@pytest.mark.parametrize("stride", [1, 2])
def test_binary_conv_equals_alpha_times_conv_of_signs(stride):
  x = np.random.RandomState(0).randn(2, 6, 6, 5).astype(np.float32)
  x[0, 0, 0, 0] = 0.0  # sign(0) = +1
  layer = layers.BinaryConv(4, 3, stride, input_quantizer="approx_sign")
  variables = layer.init(jax.random.key(0), x)
  w = np.asarray(variables["params"]["binary_kernel"])
  y = np.asarray(layer.apply(variables, x))
  alpha = np.abs(w).mean(axis=(0, 1, 2))
  expect = alpha * np_conv_same(np_sign(x), np_sign(w), pad_value=1.0, stride=stride)
  np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-5)
  # Every output is alpha_c times an integer of the right parity (sum of 3*3*5 = 45 terms of +-1).
  counts = y / alpha
  np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)
  assert np.all(np.round(counts) % 2 == 1)
  # Zero padding would differ at the border: the +1 padding is deliberate.
  zero_padded = alpha * np_conv_same(np_sign(x), np_sign(w), pad_value=0.0, stride=stride)
  assert not np.allclose(y, zero_padded, atol=1e-3)


def test_binary_conv_without_weight_binarization_keeps_the_latent_weights():
  x = np.random.RandomState(1).randn(1, 4, 4, 3).astype(np.float32)
  layer = layers.BinaryConv(2, 3, binarize_weights=False, input_quantizer=None, pad_value=0.0)
  v = layer.init(jax.random.key(0), x)
  ref = nn.Conv(2, (3, 3), padding="SAME", use_bias=False).apply(
      {"params": {"kernel": v["params"]["binary_kernel"]}}, x)
  np.testing.assert_allclose(layer.apply(v, x), ref, rtol=1e-5, atol=1e-5)


def test_binary_dense_and_its_gradient():
  x = jnp.array([[0.5, -0.2, 0.0, 2.0]])
  layer = layers.BinaryDense(3, input_quantizer="approx_sign")
  v = layer.init(jax.random.key(0), x)
  w = np.asarray(v["params"]["binary_kernel"])
  alpha = np.abs(w).mean(0)
  np.testing.assert_allclose(layer.apply(v, x), alpha * (np_sign(np.asarray(x)) @ np_sign(w)), rtol=1e-6)
  # d/dx sum(y) = ApproxSign'(x) * sum_o alpha_o sign(w_io)
  gx = jax.grad(lambda xx: jnp.sum(layer.apply(v, xx)))(x)
  approx = np.maximum(0, 2 - 2 * np.abs(np.asarray(x)))
  np.testing.assert_allclose(gx, approx * (np_sign(w) @ alpha)[None], rtol=1e-5, atol=1e-6)
  assert "binary_kernel" in v["params"] and "kernel" not in v["params"]


def test_rsign_threshold_and_rprelu():
  x = jnp.array([[-0.3, 0.1, 0.6]])
  rsign = layers.RSign()
  v = rsign.init(jax.random.key(0), x)
  v = {"params": {"threshold": {"bias": jnp.array([0.5, -0.2, 0.0])}}}
  # sign(x + b): -0.3+0.5=0.2 -> +1, 0.1-0.2=-0.1 -> -1, 0.6 -> +1
  np.testing.assert_array_equal(rsign.apply(v, x), [[1, -1, 1]])
  # ApproxSign backward at x + b
  g = jax.grad(lambda xx: jnp.sum(rsign.apply(v, xx)))(x)
  np.testing.assert_allclose(g, [[2 - 0.4, 2 - 0.2, 2 - 1.2]], rtol=1e-5)

  rprelu = layers.RPReLU()
  p = rprelu.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, p["params"]) == {
      "shift_in": {"bias": (3,)}, "slope": (3,), "shift_out": {"bias": (3,)}}
  p = {"params": {"shift_in": {"bias": jnp.array([0.1, 0.1, -1.0])}, "slope": jnp.array([0.25, 0.5, 0.25]),
                  "shift_out": {"bias": jnp.array([1.0, 0.0, 0.0])}}}
  # PReLU(x + b0) + b1: (-0.2 -> -0.05) + 1 = 0.95; 0.2 -> 0.2; (-0.4 -> -0.1)
  np.testing.assert_allclose(rprelu.apply(p, x), [[0.95, 0.2, -0.1]], rtol=1e-6)


def test_scaled_std_conv_standardizes_weights():
  x = np.random.RandomState(2).randn(64, 8, 8, 16).astype(np.float32)
  layer = layers.ScaledStdConv(32, 3, use_bias=False)
  v = layer.init(jax.random.key(0), x)
  w = np.asarray(v["params"]["kernel"])
  w_hat = np.asarray(layers.standardize_weight(jnp.asarray(w)))
  # per output channel: mean 0, and N * var = 1 with N = 3*3*16
  np.testing.assert_allclose(w_hat.mean(axis=(0, 1, 2)), 0, atol=1e-6)
  np.testing.assert_allclose((w_hat ** 2).sum(axis=(0, 1, 2)), 1, rtol=1e-3)
  y = np.asarray(layer.apply(v, x))
  np.testing.assert_allclose(y, np_conv_same(x, w_hat, 0.0), rtol=1e-4, atol=1e-4)
  # unit-variance input, interior pixels -> roughly unit-variance output
  assert 0.8 < y[:, 1:-1, 1:-1].var() < 1.2
