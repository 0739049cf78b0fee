"""Tests for bnn_jax.weight_stats on hand-made params with known fractions and flips."""

import jax.numpy as jnp
import numpy as np
import pytest

from bnn_jax.weight_stats import flatten_stats, latent_weight_stats, quantization_error

BASIC = ("mean_abs", "mean_dist", "near_frac", "tail_frac", "zero_frac")


def _basic(d):
  return {k: d[k] for k in BASIC}

# Values exact in float32 (multiples of 1/16), t = 1, near = 0.1.
A = [0.0, 1.0, -1.0625, 0.9375, 2.0, -0.5, -1.5, 0.0]   # ||w| - 1| = 1, 0, 1/16, 1/16, 1, 1/2, 1/2, 1
B = [[1.0, -1.0], [0.5, 3.0]]                           # ||w| - 1| = 0, 0, 1/2, 2


def _params(a=A, b=B):
  return {"block1": {"BinaryConv_0": {"binary_kernel": jnp.array(a).reshape(1, 1, 2, 4)},
                     "BatchNorm_0": {"scale": jnp.full(4, 7.0), "bias": jnp.zeros(4)}},
          "head": {"BinaryDense_0": {"binary_kernel": jnp.array(b)},
                   "Dense_0": {"kernel": jnp.full((2, 2), 9.0), "bias": jnp.zeros(2)}},
          "stem": {"kernel": jnp.zeros((3, 3, 3, 4))}}


def test_fractions_by_hand():
  s = latent_weight_stats(_params(), target=1.0, near=0.1)
  assert set(s) == {"block1/BinaryConv_0", "head/BinaryDense_0", "overall"}
  a, b, o = s["block1/BinaryConv_0"], s["head/BinaryDense_0"], s["overall"]
  assert _basic(a) == pytest.approx({"mean_abs": 7 / 8, "mean_dist": 4.125 / 8, "near_frac": 3 / 8,
                             "tail_frac": 3 / 8, "zero_frac": 2 / 8})
  assert _basic(b) == pytest.approx({"mean_abs": 5.5 / 4, "mean_dist": 2.5 / 4, "near_frac": 2 / 4,
                             "tail_frac": 1 / 4, "zero_frac": 0.0})
  # overall weights layers by element count (8 + 4), not a mean of layer means
  assert _basic(o) == pytest.approx({"mean_abs": 12.5 / 12, "mean_dist": 6.625 / 12, "near_frac": 5 / 12,
                             "tail_frac": 4 / 12, "zero_frac": 2 / 12})
  assert all(type(v) is float for d in s.values() for v in d.values())


def test_other_target_and_near():
  # t = 0.5, near = 0.5: dists B = 0.5, 0.5, 0, 2.5 -> near 3/4, tail 3/4
  b = latent_weight_stats(_params(), target=0.5, near=0.5)["head/BinaryDense_0"]
  assert (b["mean_dist"], b["near_frac"], b["tail_frac"]) == pytest.approx((3.5 / 4, 3 / 4, 3 / 4))


def test_mean_abs_target_per_output_channel():
  # B columns (output channels): t = [0.75, 2.0]; dists 0.25, 0.25 | 1, 1; tail: 1 > 0.75, 3 > 2
  b = latent_weight_stats(_params(), target="mean_abs")["head/BinaryDense_0"]
  assert (b["mean_dist"], b["tail_frac"], b["near_frac"]) == pytest.approx((2.5 / 4, 2 / 4, 0.0))
  with pytest.raises(ValueError, match="mean_abs"):
    latent_weight_stats(_params(), target="median")


def test_flip_ratio_with_sign_of_zero_plus_one():
  prev_a = [-0.5,   # cur 0.0 (+1): flip
            0.2,    # cur 1.0: no
            0.1,    # cur -1.0625: flip
            0.9, -2.0,  # cur 0.9375: no; cur 2.0: flip
            -0.5, -1.5,
            0.3]    # cur 0.0 (+1), prev +: no
  prev_b = [[-0.0, -1.0], [0.5, 3.0]]   # -0.0 counts as +1: cur 1.0 is no flip
  s = latent_weight_stats(_params(), prev_params=_params(prev_a, prev_b))
  assert s["block1/BinaryConv_0"]["flip_ratio"] == 3 / 8
  assert s["head/BinaryDense_0"]["flip_ratio"] == 0.0
  assert s["overall"]["flip_ratio"] == 3 / 12
  assert "flip_ratio" not in latent_weight_stats(_params())["overall"]
  assert latent_weight_stats(_params(), prev_params=_params())["overall"]["flip_ratio"] == 0.0


def test_prev_params_of_another_model_raise():
  prev = _params()
  del prev["head"]
  with pytest.raises(ValueError, match="head/BinaryDense_0"):
    latent_weight_stats(_params(), prev_params=prev)


def test_no_binary_weights_and_numpy_input():
  assert latent_weight_stats({"Dense_0": {"kernel": np.ones((2, 2))}}) == {}
  s = latent_weight_stats({"fc": {"binary_kernel": np.array([0.0, -1.0])}})
  assert s["fc"]["zero_frac"] == 0.5 and s["fc"]["near_frac"] == 0.5


def test_flatten_stats_keys():
  s = latent_weight_stats(_params())
  flat = flatten_stats(s, "weights")
  assert flat["weights/block1/BinaryConv_0/tail_frac"] == s["block1/BinaryConv_0"]["tail_frac"]
  assert flat["weights/overall/mean_dist"] == s["overall"]["mean_dist"]
  assert len(flat) == 3 * 8
  assert "overall/zero_frac" in flatten_stats(s, "")


def test_quantization_error_by_hand_and_against_numpy():
  # A as [2, 4] (output channel = last axis), channels (0, 2), (1, -.5), (-1.0625, -1.5),
  # (.9375, 0); alpha = 1, .75, 1.28125, .46875; sign(0) = +1.
  # ||w - alpha sign(w)||^2 = 2 + .125 + .095703125 + .439453125 = 2.66015625
  # ||w||^2 = 4 + 1.25 + 3.37890625 + .87890625 = 9.5078125
  s = latent_weight_stats(_params())
  assert s["block1/BinaryConv_0"]["quant_error"] == pytest.approx(2.66015625 / 9.5078125)
  # |w| > alpha: 2 (ch0), 1 (ch1), 1.5 (ch2), .9375 (ch3) -> 4 of 8
  assert s["block1/BinaryConv_0"]["alpha_tail_frac"] == 0.5
  w = np.random.RandomState(0).randn(3, 3, 4, 5)
  alpha = np.abs(w).mean(axis=(0, 1, 2))
  want = np.sum((w - alpha * np.where(w >= 0, 1, -1)) ** 2) / np.sum(w ** 2)
  assert quantization_error(w) == pytest.approx(want)
  # overall pools the sums over layers (not a mean of ratios)
  b = np.array(B)
  b_err = np.sum((b - np.abs(b).mean(0) * np.where(b >= 0, 1, -1)) ** 2)
  assert s["overall"]["quant_error"] == pytest.approx((2.66015625 + b_err) /
                                                      (9.5078125 + np.sum(b ** 2)))


def test_quantization_error_is_zero_at_plus_minus_alpha():
  w = np.array([[0.25, -0.75], [-0.25, 0.75], [0.25, 0.75]])  # |w| constant per channel, exact
  assert quantization_error(w) == 0.0
  assert latent_weight_stats({"fc": {"binary_kernel": w}})["fc"]["quant_error"] == 0.0
  assert quantization_error(np.zeros((2, 2))) == 0.0


def test_channel_cv_by_hand_is_the_spread_of_w_over_t_for_any_channel_t():
  # channels (last axis): |w| = (1, 3) -> mean 2, std 1, CV 0.5; (2, 2) -> CV 0; (0, 0) -> 0
  w = np.array([[1.0, -2.0, 0.0], [-3.0, 2.0, 0.0]])
  s = latent_weight_stats({"fc": {"binary_kernel": w}})["fc"]
  assert s["channel_cv"] == pytest.approx(0.5 / 3)
  # the same spread whatever t per channel: scaling a channel's |w| leaves its CV
  scaled = w * np.array([7.0, 0.1, 1.0])
  assert latent_weight_stats({"fc": {"binary_kernel": scaled}})["fc"]["channel_cv"] == \
      pytest.approx(0.5 / 3)
  # "overall" averages over all channels of all layers: (0.5 + 0 + 0) + A's 4 channels
  a = np.array(A).reshape(2, 4)
  cv_a = np.abs(a).std(axis=0) / np.abs(a).mean(axis=0)
  both = latent_weight_stats({"fc": {"binary_kernel": w}, "c": {"binary_kernel": a}})
  assert both["c"]["channel_cv"] == pytest.approx(cv_a.mean())
  assert both["overall"]["channel_cv"] == pytest.approx((0.5 + cv_a.sum()) / 7)
