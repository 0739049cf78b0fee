"""Feature distribution adjustment modules against NumPy written from their docstrings."""

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_jax import distribution, layers, quantizers

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_CIFAR10 = os.path.join(_REPO, "..", "shared", "data", "cifar-10-binary.tar.gz")

TOL = dict(rtol=1e-5, atol=1e-5)
BINARIZERS = [n for n in quantizers.names() if n != "ede"]


# --- NumPy references (float64), one per docstring formula -----------------------------


def np_sign(x):
  return np.where(x >= 0, 1.0, -1.0)


def np_mean_variance(x, gamma, beta, axes, eps=1e-5):
  red = (1, 2) if axes == "hw" else (1, 2, 3)
  x = np.asarray(x, np.float64)
  mu = x.mean(axis=red, keepdims=True)
  var = ((x - mu) ** 2).mean(axis=red, keepdims=True)
  return gamma * (x - mu) / np.sqrt(var + eps) + beta


def np_group_excitation(x, p, groups, mode):
  """Loops over the groups with plain matrix products."""
  s = np.asarray(x, np.float64).mean(axis=(1, 2))               # [B, C_in]
  cin_g = s.shape[1] // groups
  outs = []
  for g in range(groups):
    sg = s[:, g * cin_g:(g + 1) * cin_g]
    h = np.maximum(0.0, sg @ p["reduce"]["kernel"][g] + p["reduce"]["bias"][g])
    outs.append(h @ p["expand"]["kernel"][g] + p["expand"]["bias"][g])
  z = np.concatenate(outs, axis=1)                                # [B, C_out]
  out = 1.0 / (1.0 + np.exp(-z)) if mode == "scale" else np.tanh(z) * p["bound"]
  return out[:, None, None, :]


def np_rprelu(x, p):
  u = x + p["shift_in"]["bias"]
  return np.where(u >= 0, u, p["slope"] * u) + p["shift_out"]["bias"]


def perturb(variables, seed, scale=0.5):
  """Every parameter moved by scale * N(0, 1), so no test relies on the init values."""
  leaves, tree = jax.tree.flatten(flax.core.unfreeze(variables))
  rng = np.random.RandomState(seed)
  leaves = [np.asarray(l) + scale * rng.randn(*np.shape(l)).astype(np.float32) for l in leaves]
  return jax.tree.unflatten(tree, [jnp.asarray(l, jnp.float32) for l in leaves])


def to_np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def randn(seed, *shape, mean=0.0):
  return (np.random.RandomState(seed).randn(*shape) + mean).astype(np.float32)


# --- MeanVarianceAdjust ----------------------------------------------------------------


@pytest.mark.parametrize("axes", ["hw", "chw"])
def test_mean_variance_adjust_matches_numpy(axes):
  x = randn(0, 2, 3, 4, 5, mean=2.0) * np.array([0.5, 1.0, 2.0, 3.0, 0.1], np.float32)
  m = distribution.MeanVarianceAdjust(axes=axes)
  v = m.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, v) == {"params": {"gamma": (5,), "beta": (5,)}}
  np.testing.assert_array_equal(v["params"]["gamma"], np.ones(5))
  np.testing.assert_array_equal(v["params"]["beta"], np.zeros(5))
  v = perturb(v, 1)
  p = to_np(v["params"])
  y = jax.jit(m.apply)(v, x)
  assert y.shape == x.shape and y.dtype == jnp.float32
  np.testing.assert_allclose(y, np_mean_variance(x, p["gamma"], p["beta"], axes), **TOL)


@pytest.mark.parametrize("axes,per_channel", [("hw", False), ("hw", True), ("chw", False)])
def test_mean_variance_adjust_ignores_per_sample_scale_and_shift(axes, per_channel):
  b, c = 3, 4
  x = randn(2, b, 5, 5, c)
  rng = np.random.RandomState(3)
  shape = (b, 1, 1, c) if per_channel else (b, 1, 1, 1)
  a = rng.uniform(0.5, 3.0, shape).astype(np.float32)     # a_b > 0
  shift = rng.uniform(-3.0, 3.0, shape).astype(np.float32)
  m = distribution.MeanVarianceAdjust(axes=axes)
  v = perturb(m.init(jax.random.key(0), x), 4)
  np.testing.assert_allclose(m.apply(v, a * x + shift), m.apply(v, x), rtol=1e-4, atol=1e-4)
  if axes == "chw":  # a per-channel scale is not a per-sample one: "chw" keeps channel contrasts
    a_c = np.array([1.0, 2.0, 0.5, 3.0], np.float32)
    assert not np.allclose(m.apply(v, a_c * x), m.apply(v, x), atol=1e-2)


def _cifar10_path():
  path = os.path.abspath(os.environ.get("BNN_JAX_CIFAR10") or _DEFAULT_CIFAR10)
  if not os.path.isfile(path):
    pytest.skip(f"CIFAR-10 binary archive not found at {path} (set BNN_JAX_CIFAR10).")
  return path


def test_mean_variance_adjust_balances_signs_on_cifar10_activations():
  from bnn_jax import data
  images = data.load_cifar_binary(_cifar10_path())["test"][0][:64]
  pixels = images.astype(np.float32) / 255.0                      # [64, 32, 32, 3] in [0, 1]
  # "Activations": a random 3x3 conv of the pixels. Their sign is fixed per channel mostly by
  # the sum of the channel's weights (the pixels are all >= 0): heavily unbalanced.
  w = jax.random.normal(jax.random.key(0), (3, 3, 3, 16))
  acts = jax.lax.conv_general_dilated(pixels, w, (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  m = distribution.MeanVarianceAdjust(axes="hw")
  for x, before_min_dev in ((pixels, 0.49), (acts, 0.25)):
    before = np.mean(np.asarray(x) >= 0, axis=(0, 1, 2))            # +1 fraction per channel
    after = np.mean(np.asarray(m.apply(m.init(jax.random.key(0), x), x)) >= 0, axis=(0, 1, 2))
    assert np.mean(np.abs(before - 0.5)) > before_min_dev, before
    np.testing.assert_allclose(after, 0.5, atol=0.1)
  assert np.all(np.asarray(pixels) >= 0)                          # raw pixels: all +1
  # The sown pre-sign value tells the same balance as the signs themselves.
  fda = distribution.FDASign()
  v = perturb(fda.init(jax.random.key(0), acts), 5, scale=0.05)
  y, state = fda.apply(v, acts, mutable=["intermediates"])
  (pre,) = state["intermediates"]["presign"]
  np.testing.assert_array_equal(np.asarray(pre) >= 0, np.asarray(y) > 0)
  np.testing.assert_allclose(np.mean(np.asarray(y) > 0, axis=(0, 1, 2)), 0.5, atol=0.15)


# --- ZeroPointSign -----------------------------------------------------------------


def test_zero_point_sign_matches_numpy_forward_and_backward():
  x = randn(6, 2, 3, 3, 4)
  theta_dyn = randn(7, 2, 1, 1, 4) * 0.3
  m = distribution.ZeroPointSign()
  v = m.init(jax.random.key(0), x, theta_dyn)
  assert jax.tree.map(jnp.shape, v) == {"params": {"theta": (4,)}}
  np.testing.assert_array_equal(v["params"]["theta"], np.zeros(4))
  v = perturb(v, 8)
  theta = np.asarray(v["params"]["theta"], np.float64)
  u = x - theta - theta_dyn
  np.testing.assert_array_equal(m.apply(v, x, theta_dyn), np_sign(u))
  np.testing.assert_array_equal(m.apply(v, x), np_sign(x - theta))
  np.testing.assert_allclose(m.apply(v, x, theta_dyn, method="presign"), u, **TOL)
  # ApproxSign: dL/dtheta_c = -sum_{b,h,w} r * max(0, 2 - 2|u|) for L = sum(r * y).
  r = randn(9, *x.shape)
  grad = jax.grad(lambda p: jnp.sum(r * m.apply({"params": p}, x, theta_dyn)))(v["params"])
  expect = -(r * np.maximum(0.0, 2.0 - 2.0 * np.abs(u))).sum(axis=(0, 1, 2))
  np.testing.assert_allclose(grad["theta"], expect, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("binarizer", BINARIZERS)
def test_zero_point_sign_maps_zero_to_plus_one(binarizer):
  theta = np.array([0.0, 0.5, -0.25], np.float32)
  theta_dyn = np.array([[[[0.0, 0.25, 0.5]]]], np.float32)
  x = theta + theta_dyn + np.zeros((1, 2, 2, 3), np.float32)     # u = 0 exactly
  m = distribution.ZeroPointSign(binarizer=binarizer)
  v = {"params": {"theta": jnp.asarray(theta)}}
  np.testing.assert_array_equal(m.apply(v, x, jnp.asarray(theta_dyn)), np.ones_like(x))
  np.testing.assert_array_equal(m.apply(v, x - 1e-3, jnp.asarray(theta_dyn)), -np.ones_like(x))


# --- GroupExcitation ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["scale", "offset"])
@pytest.mark.parametrize("groups", [1, 2])
def test_group_excitation_matches_numpy(mode, groups):
  cin, cout = 8, 4
  x = randn(10, 3, 2, 2, cin, mean=0.5)
  m = distribution.GroupExcitation(features=cout, groups=groups, reduction=2, mode=mode)
  v = m.init(jax.random.key(0), x)
  hidden = max(1, cin // (groups * 2))
  cin_g, cout_g = cin // groups, cout // groups
  shapes = {"reduce": {"kernel": (groups, cin_g, hidden), "bias": (groups, hidden)},
            "expand": {"kernel": (groups, hidden, cout_g), "bias": (groups, cout_g)}}
  if mode == "offset":
    shapes["bound"] = (cout,)
    np.testing.assert_allclose(v["params"]["bound"], 0.1 * np.ones(cout))
  assert jax.tree.map(jnp.shape, v["params"]) == shapes
  # G = 1: 8*4 + 4 + 4*4 + 4 = 56 (+ 4 bound);  G = 2: 2*4*2 + 2*2 + 2*2*2 + 2*2 = 32 (+ 4).
  n = sum(np.size(l) for l in jax.tree.leaves(v))
  assert n == {1: 56, 2: 32}[groups] + (4 if mode == "offset" else 0)
  v = perturb(v, 11)
  y = m.apply(v, x)
  assert y.shape == (3, 1, 1, cout)
  np.testing.assert_allclose(y, np_group_excitation(x, to_np(v["params"]), groups, mode), **TOL)


def test_group_excitation_groups_are_independent_and_hidden_is_at_least_one():
  m = distribution.GroupExcitation(features=4, groups=2, reduction=16, mode="scale")
  x = randn(12, 2, 2, 2, 4)
  v = perturb(m.init(jax.random.key(0), x), 13)
  assert v["params"]["reduce"]["kernel"].shape == (2, 2, 1)   # hidden = max(1, 4 // 32) = 1
  x2 = x.copy()
  x2[..., 2:] += 5.0                                           # change only group 1's inputs
  y, y2 = np.asarray(m.apply(v, x)), np.asarray(m.apply(v, x2))
  np.testing.assert_array_equal(y[..., :2], y2[..., :2])       # group 0's outputs unchanged
  assert not np.allclose(y[..., 2:], y2[..., 2:])


# --- FeatureRefinement -------------------------------------------------------------


def test_feature_refinement_is_rprelu():
  assert issubclass(distribution.FeatureRefinement, layers.RPReLU)
  x = randn(14, 2, 3, 3, 4)
  x[0, 0, 0, 0] = 0.0
  m = distribution.FeatureRefinement()
  v = m.init(jax.random.key(0), x)
  ref = layers.RPReLU().init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, ref)
  np.testing.assert_allclose(v["params"]["slope"], 0.25 * np.ones(4))
  v = perturb(v, 15)
  np.testing.assert_allclose(m.apply(v, x), np_rprelu(x, to_np(v["params"])), **TOL)
  np.testing.assert_array_equal(m.apply(v, x), layers.RPReLU().apply(v, x))


# --- FDASign -----------------------------------------------------------------------


@pytest.mark.parametrize("stats", ["hw", "chw"])
def test_fdasign_matches_numpy_composition_and_sows_the_presign(stats):
  c = 8
  x = randn(16, 2, 3, 3, c, mean=1.0)
  m = distribution.FDASign(stats=stats, dynamic_threshold=True, groups=2, reduction=2)
  v = m.init(jax.random.key(0), x)
  assert set(v["params"]) == {"mean_variance", "zero_point", "threshold_excitation"}
  v = perturb(v, 17, scale=0.3)
  p = to_np(v["params"])
  xp = np_mean_variance(x, p["mean_variance"]["gamma"], p["mean_variance"]["beta"], stats)
  theta_dyn = np_group_excitation(x, p["threshold_excitation"], 2, "offset")  # reads x, not x'
  u = xp - p["zero_point"]["theta"] - theta_dyn
  y, state = jax.jit(lambda v, x: m.apply(v, x, mutable=["intermediates"]))(v, x)
  (pre,) = state["intermediates"]["presign"]
  np.testing.assert_allclose(pre, u, **TOL)
  decided = np.abs(u) > 1e-4                                  # away from float ties at 0
  np.testing.assert_array_equal(np.asarray(y)[decided], np_sign(u)[decided])
  np.testing.assert_array_equal(y, np_sign(np.asarray(pre)))
  assert set(np.unique(np.asarray(y))) <= {-1.0, 1.0}
  # Without mutable=["intermediates"] nothing extra comes back.
  np.testing.assert_array_equal(m.apply(v, x), y)


@pytest.mark.parametrize("binarizer", BINARIZERS)
def test_fdasign_with_everything_off_is_the_plain_binarizer(binarizer):
  x = randn(18, 2, 3, 3, 4)
  x[0, 0, 0, :2] = 0.0
  m = distribution.FDASign(mean_variance=False, zero_point=False, dynamic_threshold=False,
                           binarizer=binarizer)
  v = m.init(jax.random.key(0), x)
  assert not v.get("params")
  fn = quantizers.get(binarizer)
  np.testing.assert_array_equal(m.apply(v, x), fn(x))
  r = randn(19, *x.shape)
  np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(r * m.apply(v, x)))(jnp.asarray(x)),
                             jax.grad(lambda x: jnp.sum(r * fn(x)))(jnp.asarray(x)), **TOL)


@pytest.mark.parametrize("options,expected", [
    (dict(zero_point=False), {"mean_variance"}),
    (dict(mean_variance=False), {"zero_point"}),
    (dict(mean_variance=False, zero_point=False, dynamic_threshold=True),
     {"zero_point", "threshold_excitation"}),
])
def test_fdasign_creates_only_the_submodules_it_uses(options, expected):
  v = distribution.FDASign(groups=2, **options).init(jax.random.key(0), randn(20, 1, 2, 2, 4))
  assert set(v["params"]) == expected


def live_relus(v, *path):
  """Bottleneck biases set to +1 so no ReLU of the tiny excitation is dead by chance."""
  v = flax.core.unfreeze(v)
  p = v["params"]
  for k in path:
    p = p[k]
  p["reduce"]["bias"] = jnp.ones_like(p["reduce"]["bias"])
  return v


def test_gradients_reach_every_parameter():
  x = randn(21, 2, 4, 4, 8, mean=0.5)
  r = randn(22, 2, 4, 4, 8)
  fda = distribution.FDASign(dynamic_threshold=True, groups=2, reduction=2)
  v = live_relus(perturb(fda.init(jax.random.key(0), x), 23, scale=0.1), "threshold_excitation")
  grads = jax.grad(lambda p: jnp.sum(r * fda.apply({"params": p}, x)))(v["params"])
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)) and np.any(np.asarray(g) != 0), jax.tree_util.keystr(path)
  # Scale mode: the scales multiply a binary conv's output, y = BinaryConv(x) * s(x).
  conv = layers.BinaryConv(8, 3)
  ex = distribution.GroupExcitation(features=8, groups=2, reduction=2, mode="scale")
  cv = conv.init(jax.random.key(1), x)
  ev = live_relus(perturb(ex.init(jax.random.key(2), x), 24, scale=0.1))

  def loss(p):
    return jnp.sum(r * conv.apply(cv, x) * ex.apply({"params": p}, x))

  grads = jax.grad(loss)(ev["params"])
  assert set(grads) == {"reduce", "expand"}
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)) and np.any(np.asarray(g) != 0), jax.tree_util.keystr(path)


# --- errors --------------------------------------------------------------------------


X = np.zeros((1, 2, 2, 6), np.float32)


@pytest.mark.parametrize("module,pattern", [
    (distribution.GroupExcitation(features=6, groups=4), r"groups=4.*C_in=6.*features=6"),
    (distribution.GroupExcitation(features=4, groups=3), r"groups=3.*C_in=6.*features=4"),
    (distribution.FDASign(dynamic_threshold=True, groups=4), r"groups=4.*C_in=6"),
    (distribution.MeanVarianceAdjust(axes="nhw"), r"'nhw'.*hw, chw"),
    (distribution.FDASign(stats="c"), r"'c'.*hw, chw"),
    (distribution.FDASign(stats="c", mean_variance=False), r"'c'.*hw, chw"),
    (distribution.GroupExcitation(features=6, groups=2, mode="gate"), r"'gate'.*scale, offset"),
    (distribution.ZeroPointSign(binarizer="sgn"), r"Unknown binarizer 'sgn'.*approx_sign"),
    (distribution.FDASign(binarizer="sgn"), r"Unknown binarizer 'sgn'.*approx_sign"),
    (distribution.FDASign(binarizer=None, mean_variance=False, zero_point=False),
     r"binarizer is required"),
])
def test_clear_errors(module, pattern):
  with pytest.raises(ValueError, match=pattern):
    module.init(jax.random.key(0), X)
