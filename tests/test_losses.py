"""Losses: values against NumPy references written from the docstring formulas, hand-computed
tiny cases, zero at student == teacher, scale invariance, no teacher gradient, error messages,
and jit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnn_jax import losses as L

def feats(shape, seed):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# --- NumPy references (from the docstrings) ---------------------------------------------


def ref_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def ref_cross_entropy(logits, labels, k, eps):
  y = np.eye(k)[labels] * (1 - eps) + eps / k
  return -(y * ref_log_softmax(logits.astype(np.float64))).sum(-1)


def ref_attention_map(f):
  q = (f.astype(np.float64) ** 2).sum(-1).reshape(f.shape[0], -1)
  return q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)


def ref_attention_loss(s, t):
  return np.linalg.norm(ref_attention_map(s) - ref_attention_map(t), axis=-1).mean()


def ref_gram(f):
  b, h, w, c = f.shape
  f = f.astype(np.float64).reshape(b, h * w, c)
  return np.einsum("bpc,bpd->bcd", f, f) / (h * w * c)


def ref_gram_loss(s, t):
  return ((ref_gram(s) - ref_gram(t)) ** 2).mean()


def ref_kl(zs, zt, temp):
  ls, lt = ref_log_softmax(zs.astype(np.float64) / temp), ref_log_softmax(zt.astype(np.float64) / temp)
  return temp ** 2 * (np.exp(lt) * (lt - ls)).sum(-1).mean()


def ref_cosine(s, t):
  s, t = s.astype(np.float64), t.astype(np.float64)
  cos = (s * t).sum(-1) / (np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1))
  return (1 - cos).mean()


def ref_compactness(f, y, k):
  z = f.astype(np.float64) / np.linalg.norm(f, axis=-1, keepdims=True)
  total = 0.0
  for b in range(len(y)):
    c = z[y == y[b]].mean(0)
    total += ((z[b] - c) ** 2).sum()
  return total / len(y)


S4 = feats((3, 4, 5, 6), 1)       # student tap [B, H, W, C]
T4 = feats((3, 4, 5, 8), 2)       # teacher tap, more channels
T4_SAME_C = feats((3, 4, 5, 6), 3)
LOGITS_S = feats((5, 10), 4) * 3
LOGITS_T = feats((5, 10), 5) * 3
VEC_S = feats((5, 16), 6)
VEC_T = feats((5, 16), 7)


# --- classification ------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_matches_numpy_and_optax(eps):
  labels = np.array([0, 3, 9, 3, 1])
  got = np.asarray(L.cross_entropy(LOGITS_S, labels, 10, eps))
  assert got.shape == (5,)
  np.testing.assert_allclose(got, ref_cross_entropy(LOGITS_S, labels, 10, eps), rtol=1e-5, atol=1e-5)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, 10), eps)
  np.testing.assert_allclose(got, optax.softmax_cross_entropy(LOGITS_S, targets), rtol=1e-6)
  if eps == 0.0:
    np.testing.assert_allclose(
        got, optax.softmax_cross_entropy_with_integer_labels(LOGITS_S, labels), rtol=1e-5)


def test_cross_entropy_hand_case():
  # logits (0, 0), label 0: -log(1/2) = ln 2; with eps = 0.1, K = 2 targets are (0.95, 0.05),
  # and both log-probs are -ln 2, so the loss is still ln 2.
  z = np.zeros((1, 2), np.float32)
  assert float(L.cross_entropy(z, np.array([0]), 2)[0]) == pytest.approx(math.log(2), rel=1e-6)
  assert float(L.cross_entropy(z, np.array([0]), 2, 0.1)[0]) == pytest.approx(math.log(2), rel=1e-6)


def test_accuracy():
  logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 1.0, 5.0], [1.0, 0.0, 0.0]])
  acc = L.accuracy(logits, np.array([0, 1, 0, 2]))  # right, right, wrong, wrong
  assert acc.shape == () and float(acc) == 0.5


# --- detail terms ---------------------------------------------------------------------------


def test_attention_map_hand_case():
  # F [B=1, H=1, W=2, C=2] = ((1, 0), (0, 1)) -> Q = (1, 1) -> A = (1/sqrt 2, 1/sqrt 2).
  f = np.array([[[[1.0, 0.0], [0.0, 1.0]]]], np.float32)
  np.testing.assert_allclose(L.attention_map(f), [[1 / math.sqrt(2)] * 2], rtol=1e-6)
  # F [1, 1, 2, 1] = (3, 4) -> Q = (9, 16) -> A = (9, 16) / sqrt(337).
  f = np.array([3.0, 4.0], np.float32).reshape(1, 1, 2, 1)
  np.testing.assert_allclose(L.attention_map(f), [[9 / math.sqrt(337), 16 / math.sqrt(337)]],
                             rtol=1e-6)


def test_attention_map_matches_numpy_and_zero_map_is_zero():
  a = np.asarray(L.attention_map(S4))
  assert a.shape == (3, 20) and a.dtype == np.float32
  np.testing.assert_allclose(a, ref_attention_map(S4), rtol=1e-5, atol=1e-7)
  z = jnp.zeros((2, 3, 3, 4))
  np.testing.assert_array_equal(L.attention_map(z), np.zeros((2, 9)))
  g = jax.grad(lambda f: L.attention_loss(f, T4[:2, :3, :3]))(z)
  assert np.all(np.isfinite(g))
  # bfloat16 input is computed in float32
  assert L.attention_map(S4.astype(jnp.bfloat16)).dtype == jnp.float32


def test_attention_loss_hand_case():
  # student F_S [1, 1, 2, 1] = (1, 0): Q_S = (1, 0), A_S = (1, 0).
  # teacher F_T [1, 1, 2, 2] = ((1, 0), (0, 1)): Q_T = (1, 1), A_T = (1, 1) / sqrt 2.
  # ||A_S - A_T||^2 = (1 - 1/sqrt 2)^2 + 1/2 = 2 - sqrt 2  ->  loss = sqrt(2 - sqrt 2) = 0.76537
  s = np.array([1.0, 0.0], np.float32).reshape(1, 1, 2, 1)
  t = np.array([[[[1.0, 0.0], [0.0, 1.0]]]], np.float32)
  assert float(L.attention_loss(s, t)) == pytest.approx(math.sqrt(2 - math.sqrt(2)), rel=1e-6)


def test_attention_loss_matches_numpy():
  np.testing.assert_allclose(L.attention_loss(S4, T4), ref_attention_loss(S4, T4), rtol=1e-5)


@pytest.mark.parametrize("c", [1e-2, 7.5])
def test_attention_loss_scale_invariant(c):
  base = float(L.attention_loss(S4, T4))
  assert float(L.attention_loss(c * S4, T4)) == pytest.approx(base, rel=1e-5)
  assert float(L.attention_loss(S4, c * T4)) == pytest.approx(base, rel=1e-5)


def test_gram_hand_case():
  # F_S [1, 1, 2, 1] = (1, 2): G_S = (1 + 4) / (H W C = 2) = 2.5
  # F_T [1, 1, 2, 1] = (0, 1): G_T = 1 / 2 = 0.5           ->  loss = (2.5 - 0.5)^2 = 4
  s = np.array([1.0, 2.0], np.float32).reshape(1, 1, 2, 1)
  t = np.array([0.0, 1.0], np.float32).reshape(1, 1, 2, 1)
  np.testing.assert_allclose(L.gram_matrix(s), [[[2.5]]])
  assert float(L.gram_loss(s, t)) == pytest.approx(4.0)


def test_gram_matches_numpy():
  g = np.asarray(L.gram_matrix(S4))
  assert g.shape == (3, 6, 6)
  np.testing.assert_allclose(g, ref_gram(S4), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(L.gram_loss(S4, T4_SAME_C), ref_gram_loss(S4, T4_SAME_C), rtol=1e-5)


@pytest.mark.parametrize("kind", ["attention", "gram"])
def test_detail_penalty_is_mean_over_taps(kind):
  ss = (S4, feats((3, 2, 2, 6), 8))
  ts = (T4_SAME_C, feats((3, 2, 2, 6), 9))
  ref = {"attention": ref_attention_loss, "gram": ref_gram_loss}[kind]
  want = (ref(ss[0], ts[0]) + ref(ss[1], ts[1])) / 2
  np.testing.assert_allclose(L.detail_penalty(ss, ts, kind), want, rtol=1e-5)
  np.testing.assert_allclose(L.detail_penalty(list(ss), list(ts), kind), want, rtol=1e-5)


# --- semantic terms --------------------------------------------------------------------------


def test_distillation_kl_hand_case():
  # z_S = (0, 0) -> p_S = (1/2, 1/2);  z_T = (ln 3, 0) -> p_T = (3/4, 1/4)
  # KL(p_T || p_S) = 3/4 ln(3/2) + 1/4 ln(1/2)
  zs = np.zeros((1, 2), np.float32)
  zt = np.array([[math.log(3.0), 0.0]], np.float32)
  want = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
  assert float(L.distillation_kl(zs, zt)) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_distillation_kl_matches_numpy(temp):
  np.testing.assert_allclose(L.distillation_kl(LOGITS_S, LOGITS_T, temp),
                             ref_kl(LOGITS_S, LOGITS_T, temp), rtol=1e-5)


def test_cosine_distance_hand_case_and_numpy():
  # s = (1, 0), t = (1, 1): cos = 1 / sqrt 2 -> 1 - 1/sqrt 2;  s = (0, 2), t = (0, 5): 0.
  s = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
  t = np.array([[1.0, 1.0], [0.0, 5.0]], np.float32)
  assert float(L.cosine_distance(s, t)) == pytest.approx((1 - 1 / math.sqrt(2)) / 2, rel=1e-6)
  np.testing.assert_allclose(L.cosine_distance(VEC_S, VEC_T), ref_cosine(VEC_S, VEC_T), rtol=1e-5)


def test_semantic_regularizer_is_weighted_sum_and_terms_agree():
  args = (LOGITS_S, LOGITS_T, VEC_S, VEC_T)
  terms = L.semantic_regularizer_terms(*args, temperature=2.0, kd_weight=0.3, cosine_weight=2.0)
  assert set(terms) == {"kl", "cosine", "total"}
  np.testing.assert_allclose(terms["kl"], ref_kl(LOGITS_S, LOGITS_T, 2.0), rtol=1e-5)
  np.testing.assert_allclose(terms["cosine"], ref_cosine(VEC_S, VEC_T), rtol=1e-5)
  want = 0.3 * ref_kl(LOGITS_S, LOGITS_T, 2.0) + 2.0 * ref_cosine(VEC_S, VEC_T)
  np.testing.assert_allclose(terms["total"], want, rtol=1e-5)
  np.testing.assert_allclose(
      L.semantic_regularizer(*args, temperature=2.0, kd_weight=0.3, cosine_weight=2.0), want,
      rtol=1e-5)


def test_centroid_compactness():
  f = feats((8, 5), 10)
  y = np.array([0, 1, 0, 2, 1, 0, 3, 3])
  np.testing.assert_allclose(L.centroid_compactness(f, y, 4), ref_compactness(f, y, 4), rtol=1e-5)
  # hand case: two unit vectors of one class, (1, 0) and (0, 1): centroid (1/2, 1/2),
  # each squared distance 1/4 + 1/4 = 1/2; a lone class-1 vector contributes 0 -> (1/2 + 1/2) / 3.
  f = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]], np.float32)
  assert float(L.centroid_compactness(f, np.array([0, 0, 1]), 2)) == pytest.approx(1 / 3, rel=1e-6)


# --- properties shared by every distillation loss ----------------------------------------------

# name -> (fn(student, teacher), student, teacher-like-but-different)
PAIRED = {
    "attention_loss": (L.attention_loss, S4, T4),
    "gram_loss": (L.gram_loss, S4, T4_SAME_C),
    "detail_attention": (lambda s, t: L.detail_penalty((s, s[:, :2, :2]), (t, t[:, :2, :2])),
                         S4, T4),
    "detail_gram": (lambda s, t: L.detail_penalty((s, s[:, :2]), (t, t[:, :2]), "gram"),
                    S4, T4_SAME_C),
    "distillation_kl_T1": (L.distillation_kl, LOGITS_S, LOGITS_T),
    "distillation_kl_T4": (lambda s, t: L.distillation_kl(s, t, 4.0), LOGITS_S, LOGITS_T),
    "cosine_distance": (L.cosine_distance, VEC_S, VEC_T),
    "semantic_regularizer": (
        lambda s, t: L.semantic_regularizer(s[0], t[0], s[1], t[1], temperature=2.0),
        (LOGITS_S, VEC_S), (LOGITS_T, VEC_T)),
}


@pytest.mark.parametrize("name", list(PAIRED))
def test_zero_when_student_equals_teacher(name):
  fn, s, _ = PAIRED[name]
  assert abs(float(fn(s, s))) < 1e-6


@pytest.mark.parametrize("name", list(PAIRED))
def test_no_gradient_to_teacher_and_finite_student_gradient(name):
  fn, s, t = PAIRED[name]
  grad = jax.jit(jax.grad(fn, argnums=(0, 1)))  # one compile for both calls below
  g_s, g_t = grad(s, t)
  for leaf in jax.tree.leaves(g_t):
    np.testing.assert_array_equal(leaf, np.zeros_like(leaf))
  leaves = jax.tree.leaves(g_s)
  assert all(np.all(np.isfinite(x)) for x in leaves)
  assert any(np.any(x != 0) for x in leaves)
  # at student == teacher the gradient is finite (the safe norm has no NaN at 0)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(grad(s, s)))


@pytest.mark.parametrize("name", list(PAIRED))
def test_jit_matches_eager(name):
  fn, s, t = PAIRED[name]
  np.testing.assert_allclose(jax.jit(fn)(s, t), fn(s, t), rtol=1e-6)


def test_jit_with_static_and_traced_arguments():
  labels = np.array([0, 3, 9, 3, 1])
  ce = jax.jit(L.cross_entropy, static_argnames=("num_classes", "label_smoothing"))
  np.testing.assert_allclose(ce(LOGITS_S, labels, num_classes=10, label_smoothing=0.1),
                             L.cross_entropy(LOGITS_S, labels, 10, 0.1), rtol=1e-6)
  np.testing.assert_allclose(jax.jit(L.accuracy)(LOGITS_S, labels), L.accuracy(LOGITS_S, labels))
  np.testing.assert_allclose(jax.jit(L.attention_map)(S4), L.attention_map(S4), rtol=1e-6)
  dp = jax.jit(L.detail_penalty, static_argnames=("kind",))
  np.testing.assert_allclose(dp((S4,), (T4_SAME_C,), kind="gram"),
                             L.gram_loss(S4, T4_SAME_C), rtol=1e-6)
  # temperature and weights may be traced (e.g. driven by a schedule)
  kl = jax.jit(L.distillation_kl)(LOGITS_S, LOGITS_T, jnp.float32(4.0))
  np.testing.assert_allclose(kl, ref_kl(LOGITS_S, LOGITS_T, 4.0), rtol=1e-5)
  terms = jax.jit(L.semantic_regularizer_terms)(LOGITS_S, LOGITS_T, VEC_S, VEC_T,
                                                jnp.float32(2.0), jnp.float32(0.5),
                                                jnp.float32(1.5))
  np.testing.assert_allclose(terms["total"], 0.5 * terms["kl"] + 1.5 * terms["cosine"], rtol=1e-6)
  y = np.array([0, 1, 0, 1, 1])
  cc = jax.jit(L.centroid_compactness, static_argnames=("num_classes",))
  np.testing.assert_allclose(cc(VEC_S, y, num_classes=2), L.centroid_compactness(VEC_S, y, 2),
                             rtol=1e-6)


# --- errors ------------------------------------------------------------------------------------


def test_attention_loss_spatial_mismatch():
  with pytest.raises(ValueError, match=r"\(3, 4, 5, 6\).*\(3, 2, 5, 8\).*paired by spatial size"):
    L.attention_loss(S4, T4[:, :2])


def test_gram_loss_channel_mismatch():
  with pytest.raises(ValueError, match=r"channel counts differ.*\(3, 4, 5, 6\).*\(3, 4, 5, 8\)"):
    L.gram_loss(S4, T4)
  with pytest.raises(ValueError, match="spatial sizes"):
    L.gram_loss(S4, T4_SAME_C[:, :2])


def test_detail_penalty_errors():
  with pytest.raises(ValueError, match=r"Unknown detail loss kind 'l2'; valid: attention, gram"):
    L.detail_penalty((S4,), (T4,), kind="l2")
  with pytest.raises(ValueError, match=r"tap counts differ: 2 student vs 1 teacher"):
    L.detail_penalty((S4, S4), (T4,))
  with pytest.raises(ValueError, match="no taps"):
    L.detail_penalty((), ())
  with pytest.raises(ValueError, match="sequences"):
    L.detail_penalty(S4, T4)


def test_shape_errors_in_other_losses():
  with pytest.raises(ValueError, match="NHWC"):
    L.attention_loss(VEC_S, VEC_T)
  with pytest.raises(ValueError, match="batch sizes differ"):
    L.attention_loss(S4, T4[:2])
  with pytest.raises(ValueError, match=r"cosine_distance: shapes differ"):
    L.cosine_distance(VEC_S, VEC_T[:, :8])
  with pytest.raises(ValueError, match=r"logit shapes differ"):
    L.distillation_kl(LOGITS_S, LOGITS_T[:, :5])
  with pytest.raises(ValueError, match="temperature must be > 0"):
    L.distillation_kl(LOGITS_S, LOGITS_T, 0.0)
