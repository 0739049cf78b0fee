"""Binarizers: forward values, STE gradients against their docstring formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_jax import quantizers as q

POINTS = np.array([-1.5, -0.5, 0.0, 0.3, 1.0, 2.0], np.float32)


def grad_of(fn, x=POINTS):
  return np.asarray(jax.grad(lambda v: jnp.sum(fn(v)))(jnp.asarray(x)))


# NumPy references written from the docstrings.
def ref_swish(x, beta):
  bx = beta * x
  return beta * (2 - bx * np.tanh(bx / 2)) / (1 + np.cosh(bx))


def ref_ede(x, t, k):
  return k * t * (1 - np.tanh(t * x) ** 2)


@pytest.mark.parametrize("name", ["sign", "ste_sign", "clipped_ste_sign", "approx_sign", "swish_sign"])
def test_forward_is_sign_with_zero_positive(name):
  y = np.asarray(q.get(name)(jnp.asarray(POINTS)))
  np.testing.assert_array_equal(y, [-1, -1, 1, 1, 1, 1])
  assert q.get(name)(jnp.zeros(())) == 1.0  # sign(0) = +1, unlike jnp.sign


def test_ste_gradients_at_hand_picked_points():
  # identity STE: 1 everywhere
  np.testing.assert_array_equal(grad_of(q.ste_sign), np.ones(6))
  # clipped: 1[|x| <= 1] -> -1.5:0, -0.5:1, 0:1, 0.3:1, 1.0:1 (boundary included), 2.0:0
  np.testing.assert_array_equal(grad_of(q.clipped_ste_sign), [0, 1, 1, 1, 1, 0])
  np.testing.assert_array_equal(grad_of(lambda v: q.clipped_ste_sign(v, 0.4)), [0, 0, 1, 1, 0, 0])
  # ApproxSign: max(0, 2 - 2|x|) -> 0, 1, 2, 1.4, 0, 0
  np.testing.assert_allclose(grad_of(q.approx_sign), [0, 1, 2, 1.4, 0, 0], atol=1e-6)
  # sign has no gradient
  np.testing.assert_array_equal(grad_of(q.sign), np.zeros(6))


@pytest.mark.parametrize("beta", [2.0, 5.0, 10.0])
def test_swish_sign_gradient(beta):
  np.testing.assert_allclose(grad_of(lambda v: q.swish_sign(v, beta)), ref_swish(POINTS, beta),
                             rtol=1e-5, atol=1e-6)
  # At 0 the SwishSign derivative peaks at beta (2 * beta / 2).
  assert abs(grad_of(lambda v: q.swish_sign(v, beta), np.zeros(1))[0] - beta) < 1e-5


def test_swish_gradient_matches_its_smooth_forward():
  # The backward formula is the derivative of 2 sigmoid(bx)(1 + bx(1 - sigmoid(bx))) - 1.
  beta = 5.0
  smooth = lambda x: 2 * jax.nn.sigmoid(beta * x) * (1 + beta * x * (1 - jax.nn.sigmoid(beta * x))) - 1
  np.testing.assert_allclose(grad_of(lambda v: q.swish_sign(v, beta)), grad_of(smooth), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("progress", [0.0, 0.5, 1.0])
def test_ede_gradient_and_schedule(progress):
  t, k = q.ede_schedule(progress)
  # IR-Net: t from 0.1 to 10 geometrically, k = max(1/t, 1)
  expect_t = 0.1 * 100 ** progress
  assert np.isclose(float(t), expect_t, rtol=1e-5) and np.isclose(float(k), max(1 / expect_t, 1.0), rtol=1e-5)
  g = grad_of(lambda v: q.ede_sign(v, t, k))
  np.testing.assert_allclose(g, ref_ede(POINTS, float(t), float(k)), rtol=1e-5, atol=1e-5)
  # No gradient flows to t or k.
  gt, gk = jax.grad(lambda t_, k_: jnp.sum(q.ede_sign(jnp.asarray(POINTS), t_, k_)), (0, 1))(t, k)
  assert float(gt) == 0.0 and float(gk) == 0.0


def test_weight_binarizer_scales_and_gradient():
  w = jnp.array([[0.5, -2.0], [-0.1, 0.0], [1.5, 0.3]])  # (in=3, out=2)
  # per output channel: mean|w| = (0.5+0.1+1.5)/3 = 0.7 and (2+0+0.3)/3 = 2.3/3
  alpha = np.array([0.7, 2.3 / 3])
  np.testing.assert_allclose(q.binarize_weight(w, "channel"), alpha * np.array([[1, -1], [-1, 1], [1, 1]]), rtol=1e-6)
  np.testing.assert_allclose(q.binarize_weight(w, "tensor"), 4.4 / 6 * np.sign(np.asarray(w) + 1e-9), rtol=1e-6)
  np.testing.assert_array_equal(q.binarize_weight(w, "none"), [[1, -1], [-1, 1], [1, 1]])
  # gradient: alpha (stopped) * 1[|w| <= 1]
  g = jax.grad(lambda v: jnp.sum(q.binarize_weight(v, "channel")))(w)
  np.testing.assert_allclose(g, alpha * np.array([[1, 0], [1, 1], [0, 1]]), rtol=1e-6)
  with pytest.raises(ValueError, match="valid: none, tensor, channel"):
    q.binarize_weight(w, "row")


def test_registry_errors_name_the_valid_binarizers():
  with pytest.raises(ValueError, match="Unknown binarizer 'aprox_sign'.*approx_sign"):
    q.get("aprox_sign")
  with pytest.raises(ValueError, match="needs t and k"):
    q.get("ede")
  assert q.get(None) is None
  assert q.get(q.approx_sign) is q.approx_sign
  np.testing.assert_array_equal(grad_of(q.get("clipped_ste_sign", clip=0.4)), [0, 0, 1, 1, 0, 0])
  assert set(q.names()) >= {"ste_sign", "clipped_ste_sign", "approx_sign", "swish_sign", "ede"}


@pytest.mark.parametrize("name", ["ste_sign", "clipped_ste_sign", "approx_sign", "swish_sign", "ede"])
def test_jit_vmap_and_pmap_agree_with_eager(name):
  kw = {"t": jnp.float32(1.0), "k": jnp.float32(1.0)} if name == "ede" else {}
  fn = q.get(name, **kw)
  x = jnp.linspace(-2, 2, 16).reshape(2, 8)
  grad = lambda v: jax.grad(lambda u: jnp.sum(fn(u) * u))(v)
  eager = grad(x)
  close = lambda a: np.testing.assert_allclose(a, eager, rtol=1e-6, atol=1e-6)
  close(jax.jit(grad)(x))
  close(jax.vmap(grad)(x))
  assert jax.local_device_count() == 2, "conftest.py should give 2 CPU devices"
  close(jax.pmap(grad)(x))


def test_pmap_pmean_gradient_equals_single_device_gradient():
  """Mean of per-device gradients (pmean) equals the gradient of the mean loss on one device."""
  from flax import jax_utils

  from bnn_jax import layers
  layer = layers.BinaryDense(4)
  x = jax.random.normal(jax.random.key(0), (8, 6))
  params = layer.init(jax.random.key(1), x)
  loss = lambda p, xb: jnp.mean((layer.apply(p, xb) - 0.5) ** 2)
  single = jax.jit(jax.grad(loss))(params, x)
  per_device = jax.pmap(lambda p, xb: jax.lax.pmean(jax.grad(loss)(p, xb), "d"), axis_name="d")
  replicated = jax_utils.replicate(params)
  multi = per_device(replicated, x.reshape(2, 4, 6))
  for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(multi)):
    np.testing.assert_allclose(b[0], a, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(b[0], b[1])
