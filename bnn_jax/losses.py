"""Losses: classification, and distillation from a real-valued teacher, as pure JAX.

Three families, all module-level pure functions that work under ``jit``, ``vmap`` and
``grad``:

* classification: ``cross_entropy`` (optionally label-smoothed) and ``accuracy``;
* detail (spatial) terms on paired intermediate feature maps, NHWC ``[B, H, W, C]``:
  ``attention_loss`` (attention transfer), ``gram_loss`` (Gram / texture statistics) and
  ``detail_penalty``, the mean over a list of paired taps;
* semantic terms on the outputs: ``distillation_kl`` (softened-logit KL),
  ``cosine_distance`` (penultimate feature direction) and ``semantic_regularizer``, their
  weighted sum; ``semantic_regularizer_terms`` returns every part for logging.

Every teacher input is wrapped in ``jax.lax.stop_gradient`` inside the function, so a
teacher passed by mistake with its parameters under ``grad`` still receives no gradient.
The distillation losses compute in float32 whatever the input dtype (bfloat16 features
squared and summed lose too much precision). Shape mismatches raise ``ValueError`` at
trace time, naming both shapes.

This module imports no Flax: any JAX user can call it.

>>> import jax.numpy as jnp
>>> f = jnp.array([3.0, 4.0]).reshape(1, 1, 2, 1)  # [B=1, H=1, W=2, C=1]
>>> attention_map(f)  # Q = (9, 16), ||Q||_2 = sqrt(81 + 256)
Array([[0.49026123, 0.87157553]], dtype=float32)
>>> float(attention_loss(f, 2.0 * f))  # scale-free: Q is normalised per sample
0.0
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import optax

Array = jax.Array

EPS = 1e-12  # lower bound for the L2 norms that normalise attention maps and vectors


def _stop(x) -> Array:
  return jax.lax.stop_gradient(jnp.asarray(x))


# --- classification ----------------------------------------------------------------


def cross_entropy(logits: Array, labels: Array, num_classes: int,
                  label_smoothing: float = 0.0) -> Array:
  """Per-example softmax cross-entropy with optional label smoothing.

  y = (1 - eps) onehot(label) + eps / K          (eps = label_smoothing, K = num_classes)
  CE = -sum_k y_k log softmax(logits)_k

  Args:
    logits: [B, K] unnormalised scores.
    labels: [B] integer class indices in [0, K).
    num_classes: K (a Python int).
    label_smoothing: eps in [0, 1); 0 gives plain one-hot targets.

  Returns:
    [B] per-example losses (average them yourself, e.g. with a mask).

  Source: label smoothing from Szegedy et al. 2016, "Rethinking the Inception
  architecture for computer vision"; the targets are ``optax.smooth_labels``.
  """
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def accuracy(logits: Array, labels: Array) -> Array:
  """Top-1 accuracy: mean_b 1[argmax_k logits[b, k] == labels[b]].

  Args:
    logits: [B, K]; labels: [B] integer class indices.

  Returns:
    A float32 scalar in [0, 1]. Ties go to the lowest index (``jnp.argmax``).
  """
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


# --- detail terms on feature maps ------------------------------------------------------


def _check_nhwc(name: str, student: Array, teacher: Array) -> None:
  if student.ndim != 4 or teacher.ndim != 4:
    raise ValueError(f"{name}: expected NHWC feature maps [B, H, W, C]; got student "
                     f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}.")
  if student.shape[0] != teacher.shape[0]:
    raise ValueError(f"{name}: batch sizes differ: student {tuple(student.shape)} vs "
                     f"teacher {tuple(teacher.shape)}.")


def attention_map(features: Array) -> Array:
  """Spatial attention map: squared activations summed over channels, L2-normalised.

  Q[b, p] = sum_c F[b, p, c]^2            (p = h * W + w, a flattened position)
  A[b]    = Q[b] / max(||Q[b]||_2, EPS)

  Computed in float32. An all-zero map gives zeros (and zero gradient), not NaN.
  A is unchanged when F is multiplied by any non-zero constant.

  Args:
    features: [B, H, W, C] (NHWC).

  Returns:
    [B, H * W] float32, each row of unit L2 norm (or all zero).

  Source: Zagoruyko & Komodakis 2017, "Paying more attention to attention" (attention
  transfer), the F_sum^p map with p = 2.
  """
  if features.ndim != 4:
    raise ValueError(f"attention_map: expected NHWC features [B, H, W, C]; got "
                     f"{tuple(features.shape)}.")
  f = jnp.asarray(features, jnp.float32)
  q = jnp.sum(jnp.square(f), axis=-1).reshape(f.shape[0], -1)
  return q / optax.safe_norm(q, EPS, axis=-1, keepdims=True)


def attention_loss(student_features: Array, teacher_features: Array) -> Array:
  """Attention-transfer loss between one student and one teacher feature map.

  L = mean_b || A_S[b] - A_T[b] ||_2          (A from ``attention_map``; not squared)

  Channel counts may differ (the map sums over channels); batch and spatial sizes must
  match, so a student tap must be paired with the teacher tap of the same resolution.
  Invariant to a positive rescaling of either map. The distance has gradient 0 (not NaN)
  where A_S = A_T. No gradient flows to the teacher.

  Args:
    student_features: [B, H, W, C_S] (NHWC).
    teacher_features: [B, H, W, C_T] (NHWC).

  Returns:
    A float32 scalar.

  Raises:
    ValueError: if the inputs are not 4-D or batch or spatial sizes differ.

  Sources: Zagoruyko & Komodakis 2017 (attention transfer, p = 2); Real-to-Binary
  (Martinez et al. 2020) matches these maps at the end of every block.
  """
  _check_nhwc("attention_loss", student_features, teacher_features)
  if student_features.shape[1:3] != teacher_features.shape[1:3]:
    raise ValueError(
        f"attention_loss: spatial sizes (H, W) differ: student "
        f"{tuple(student_features.shape)} vs teacher {tuple(teacher_features.shape)}; "
        f"taps must be paired by spatial size.")
  diff = attention_map(student_features) - attention_map(_stop(teacher_features))
  return jnp.mean(optax.safe_norm(diff, 0.0, axis=-1))


def gram_matrix(features: Array) -> Array:
  """Per-sample channel Gram matrix, normalised by the feature-map size.

  With F reshaped to [B, HW, C]:   G[b] = F[b]^T F[b] / (H W C)

  Computed in float32.

  Args:
    features: [B, H, W, C] (NHWC).

  Returns:
    [B, C, C] float32, symmetric.

  Source: Gatys et al. 2016, "Image style transfer using convolutional neural networks"
  (texture statistics; they normalise the loss by 4 N^2 M^2 instead of G by H W C).
  """
  if features.ndim != 4:
    raise ValueError(f"gram_matrix: expected NHWC features [B, H, W, C]; got "
                     f"{tuple(features.shape)}.")
  b, h, w, c = features.shape
  f = jnp.asarray(features, jnp.float32).reshape(b, h * w, c)
  return jnp.einsum("bpc,bpd->bcd", f, f) / (h * w * c)


def gram_loss(student_features: Array, teacher_features: Array) -> Array:
  """Gram-matrix (texture) loss between one student and one teacher feature map.

  L = mean_{b, i, j} (G_S[b, i, j] - G_T[b, i, j])^2       (G from ``gram_matrix``)

  Batch, spatial and channel sizes must all match (the Gram matrices are C x C).
  No gradient flows to the teacher.

  Args:
    student_features: [B, H, W, C] (NHWC).
    teacher_features: [B, H, W, C] (NHWC).

  Returns:
    A float32 scalar.

  Raises:
    ValueError: if the inputs are not 4-D or any size differs.

  Source: Gatys et al. 2016 (Gram matrices as texture statistics).
  """
  _check_nhwc("gram_loss", student_features, teacher_features)
  s, t = tuple(student_features.shape), tuple(teacher_features.shape)
  if s[3] != t[3]:
    raise ValueError(f"gram_loss: channel counts differ: student {s} vs teacher {t}; "
                     f"Gram matrices need equal channels (pair taps of equal width).")
  if s[1:3] != t[1:3]:
    raise ValueError(f"gram_loss: spatial sizes (H, W) differ: student {s} vs teacher "
                     f"{t}; taps must be paired by spatial size.")
  diff = gram_matrix(student_features) - gram_matrix(_stop(teacher_features))
  return jnp.mean(jnp.square(diff))


DETAIL_LOSSES = {"attention": attention_loss, "gram": gram_loss}


def detail_penalty(student_taps: Sequence[Array], teacher_taps: Sequence[Array],
                   kind: str = "attention") -> Array:
  """Mean of a detail loss over paired intermediate feature maps ("taps").

  P = (1 / N) sum_{i=1..N} loss(S_i, T_i),   loss = attention_loss | gram_loss

  Args:
    student_taps: N student feature maps, each [B, H_i, W_i, C_i] (NHWC).
    teacher_taps: N teacher feature maps, paired by position with ``student_taps``.
    kind: "attention" or "gram" (a Python string; static under ``jit``).

  Returns:
    A float32 scalar.

  Raises:
    ValueError: unknown ``kind``; no taps; different numbers of taps; or a pair whose
      shapes the chosen loss rejects.

  Sources: Zagoruyko & Komodakis 2017; Real-to-Binary (Martinez et al. 2020), which
  averages attention losses over every block; Gatys et al. 2016 for "gram".
  """
  if kind not in DETAIL_LOSSES:
    raise ValueError(f"Unknown detail loss kind {kind!r}; valid: {', '.join(DETAIL_LOSSES)}.")
  if hasattr(student_taps, "shape") or hasattr(teacher_taps, "shape"):
    raise ValueError("detail_penalty: pass sequences of feature maps (e.g. a tuple), "
                     "not a single array.")
  student_taps, teacher_taps = list(student_taps), list(teacher_taps)
  if len(student_taps) != len(teacher_taps):
    raise ValueError(f"detail_penalty: tap counts differ: {len(student_taps)} student vs "
                     f"{len(teacher_taps)} teacher taps.")
  if not student_taps:
    raise ValueError("detail_penalty: no taps given (empty sequences).")
  loss = DETAIL_LOSSES[kind]
  return sum(loss(s, t) for s, t in zip(student_taps, teacher_taps)) / len(student_taps)


# --- semantic terms on outputs -----------------------------------------------------------


def distillation_kl(student_logits: Array, teacher_logits: Array,
                    temperature: float = 1.0) -> Array:
  """Temperature-softened KL divergence from teacher to student, times T^2.

  p_T = softmax(z_T / T),  p_S = softmax(z_S / T)
  L   = T^2 * mean_b sum_k p_T[b, k] (log p_T[b, k] - log p_S[b, k])   = T^2 KL(p_T || p_S)

  The T^2 keeps gradient magnitudes comparable across temperatures. Computed in float32
  with log-softmax (no log of a rounded probability). No gradient flows to the teacher.

  Args:
    student_logits: [B, K].
    teacher_logits: [B, K].
    temperature: T > 0 (a Python float or a traced scalar).

  Returns:
    A float32 scalar, >= 0.

  Sources: Hinton et al. 2015, "Distilling the knowledge in a neural network";
  ReActNet's distributional loss (Liu et al. 2020) is the T = 1 case.
  """
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(f"distillation_kl: logit shapes differ: student "
                     f"{tuple(student_logits.shape)} vs teacher {tuple(teacher_logits.shape)}.")
  if isinstance(temperature, (int, float)) and temperature <= 0:
    raise ValueError(f"distillation_kl: temperature must be > 0; got {temperature}.")
  t = jnp.asarray(temperature, jnp.float32)
  log_p_s = jax.nn.log_softmax(jnp.asarray(student_logits, jnp.float32) / t, axis=-1)
  log_p_t = jax.nn.log_softmax(jnp.asarray(_stop(teacher_logits), jnp.float32) / t, axis=-1)
  kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
  return t * t * jnp.mean(kl)


def cosine_distance(student_vectors: Array, teacher_vectors: Array) -> Array:
  """Mean cosine distance between paired vectors.

  L = mean_b (1 - <s_b, t_b> / (max(||s_b||, EPS) max(||t_b||, EPS)))

  Scale-free: only the direction of each vector matters. A zero vector counts as
  distance 1 (and has zero gradient). Computed in float32. No gradient flows to the
  teacher.

  Args:
    student_vectors: [B, D], e.g. pooled penultimate features.
    teacher_vectors: [B, D], same shape (any trailing axes are flattened, so
      [B, 1, 1, D] also works).

  Returns:
    A float32 scalar in [0, 2].
  """
  if student_vectors.shape != teacher_vectors.shape:
    raise ValueError(f"cosine_distance: shapes differ: student "
                     f"{tuple(student_vectors.shape)} vs teacher "
                     f"{tuple(teacher_vectors.shape)}.")
  if student_vectors.ndim < 2:
    raise ValueError(f"cosine_distance: expected [B, D] vectors; got "
                     f"{tuple(student_vectors.shape)}.")
  b = student_vectors.shape[0]
  s = jnp.asarray(student_vectors, jnp.float32).reshape(b, -1)
  t = jnp.asarray(_stop(teacher_vectors), jnp.float32).reshape(b, -1)
  s = s / optax.safe_norm(s, EPS, axis=-1, keepdims=True)
  t = t / optax.safe_norm(t, EPS, axis=-1, keepdims=True)
  return jnp.mean(1.0 - jnp.sum(s * t, axis=-1))


def semantic_regularizer_terms(student_logits: Array, teacher_logits: Array,
                               student_features: Array, teacher_features: Array,
                               temperature: float = 1.0, kd_weight: float = 1.0,
                               cosine_weight: float = 1.0) -> dict[str, Array]:
  """``semantic_regularizer`` with its parts, each computed once, for logging.

  Returns:
    {"kl": distillation_kl(z_S, z_T, T),
     "cosine": cosine_distance(f_S, f_T),
     "total": kd_weight * kl + cosine_weight * cosine}     (float32 scalars, unweighted
    parts). Shapes and sources as in ``semantic_regularizer``.
  """
  kl = distillation_kl(student_logits, teacher_logits, temperature)
  cosine = cosine_distance(student_features, teacher_features)
  return {"kl": kl, "cosine": cosine, "total": kd_weight * kl + cosine_weight * cosine}


def semantic_regularizer(student_logits: Array, teacher_logits: Array,
                         student_features: Array, teacher_features: Array,
                         temperature: float = 1.0, kd_weight: float = 1.0,
                         cosine_weight: float = 1.0) -> Array:
  """Output-level distillation: softened-logit KL plus penultimate cosine distance.

  R = kd_weight * T^2 KL(softmax(z_T / T) || softmax(z_S / T))
      + cosine_weight * mean_b (1 - cos(f_S[b], f_T[b]))

  Use ``semantic_regularizer_terms`` to get the two parts as well (one computation).
  No gradient flows to the teacher.

  Args:
    student_logits, teacher_logits: [B, K].
    student_features, teacher_features: [B, D] penultimate (pooled) features.
    temperature: T > 0 for the KL term.
    kd_weight, cosine_weight: weights of the two terms (floats or traced scalars).

  Returns:
    A float32 scalar.

  Sources: Hinton et al. 2015 (KL with temperature); ReActNet (Liu et al. 2020) for the
  T = 1 distributional loss; see ``cosine_distance`` for the feature term.
  """
  return semantic_regularizer_terms(student_logits, teacher_logits, student_features,
                                    teacher_features, temperature, kd_weight,
                                    cosine_weight)["total"]


# --- optional ----------------------------------------------------------------------------


def centroid_compactness(features: Array, labels: Array, num_classes: int) -> Array:
  """(Optional, experimental) within-class spread of normalised features in a batch.

  z_b = f_b / max(||f_b||, EPS),  c_k = mean_{b: y_b = k} z_b   (batch centroid)
  L   = mean_b || z_b - c_{y_b} ||_2^2

  A class seen once in the batch contributes 0. The centroids are not stop-gradiented:
  L is the batch within-class variance of z and its gradient is that of the variance.
  Computed in float32.

  Args:
    features: [B, D] (trailing axes are flattened).
    labels: [B] integer class indices in [0, num_classes).
    num_classes: K (a Python int).

  Returns:
    A float32 scalar in [0, 1] (z lies on the unit sphere).

  Source: like center loss (Wen et al. 2016, "A discriminative feature learning
  approach for deep face recognition"), but with batch centroids instead of learned
  centres and on L2-normalised features.
  """
  b = features.shape[0]
  z = jnp.asarray(features, jnp.float32).reshape(b, -1)
  z = z / optax.safe_norm(z, EPS, axis=-1, keepdims=True)
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # [B, K]
  counts = jnp.sum(onehot, axis=0)                                   # [K]
  centroids = (onehot.T @ z) / jnp.maximum(counts, 1.0)[:, None]     # [K, D]
  return jnp.mean(jnp.sum(jnp.square(z - onehot @ centroids), axis=-1))
