"""Training objectives: what ``train_lib.make_train_step`` minimises.

An objective is a function ``loss_fn(out: StepOutputs) -> (loss, metrics)``: a scalar to
differentiate and a dict of scalars that the trainer averages over the epoch and logs
(metrics.jsonl, TensorBoard, progress bar) and checkpoints, whatever their keys. Built
from the pure functions of ``bnn_jax.losses``:

* :func:`classification`: cross-entropy (optionally label-smoothed);
* :func:`distillation`: cross-entropy + lambda_detail * detail + lambda_semantic * semantic
  against a frozen teacher (method 3, ``docs/METHODS.md``), each term logged on its own.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import jax

from bnn_jax import losses


class StepOutputs(NamedTuple):
  """What an objective sees of one training batch.

  ``features``/``teacher_features`` are ``bnn_jax.models.features`` dicts (None when the
  objective did not ask for them); ``teacher_logits`` is None without a teacher.
  """
  logits: jax.Array
  labels: jax.Array
  features: Optional[dict] = None
  teacher_logits: Optional[jax.Array] = None
  teacher_features: Optional[dict] = None


class Objective(NamedTuple):
  """``loss_fn`` plus what it needs from the step (so the plain step stays plain)."""
  loss_fn: Callable[[StepOutputs], tuple[jax.Array, dict]]
  needs_features: bool = False
  needs_teacher: bool = False


def classification(num_classes: int, label_smoothing: float = 0.0) -> Objective:
  """Mean cross-entropy; metrics ``loss`` and ``accuracy``."""

  def loss_fn(out: StepOutputs):
    loss = losses.cross_entropy(out.logits, out.labels, num_classes, label_smoothing).mean()
    return loss, {"loss": loss, "accuracy": losses.accuracy(out.logits, out.labels)}

  return Objective(loss_fn)


def tap(features: dict, name: str) -> jax.Array:
  """A stage (``stage2``) or block (``stage1_block2``) output from a features dict."""
  for group in ("stages", "blocks"):
    if name in features[group]:
      return features[group][name]
  raise KeyError(name)


def distillation(num_classes: int, label_smoothing: float = 0.0, *,
                 semantic_weight: float = 0.0, kd_weight: float = 1.0,
                 cosine_weight: float = 1.0, temperature: float = 1.0,
                 detail_weight: float = 0.0, detail_kind: str = "attention",
                 taps: Sequence[tuple[str, str]] = ()) -> Objective:
  """CE + detail_weight * detail_penalty + semantic_weight * semantic_regularizer.

  ``taps``: (student tap, teacher tap) name pairs for the detail penalty (see
  :func:`tap`); the semantic term uses the logits and the penultimate vectors.
  Metrics: ``loss`` (the total), ``ce``, ``accuracy``, and per active term ``detail``,
  ``semantic``, ``kl``, ``cosine`` (unweighted values).
  """
  if detail_weight and not taps:
    raise ValueError("distill.detail_weight > 0 needs at least one tap (distill.detail_taps).")
  if detail_kind not in losses.DETAIL_LOSSES:
    raise ValueError(f"Unknown distill.detail_kind {detail_kind!r}; valid: "
                     f"{', '.join(losses.DETAIL_LOSSES)}.")
  use_cosine = bool(semantic_weight and cosine_weight)

  def loss_fn(out: StepOutputs):
    ce = losses.cross_entropy(out.logits, out.labels, num_classes, label_smoothing).mean()
    metrics = {"ce": ce, "accuracy": losses.accuracy(out.logits, out.labels)}
    total = ce
    if semantic_weight:
      if use_cosine:
        terms = losses.semantic_regularizer_terms(
            out.logits, out.teacher_logits, out.features["penultimate"],
            out.teacher_features["penultimate"], temperature, kd_weight, cosine_weight)
        metrics.update(kl=terms["kl"], cosine=terms["cosine"], semantic=terms["total"])
      else:  # KL only: no features needed
        kl = losses.distillation_kl(out.logits, out.teacher_logits, temperature)
        metrics.update(kl=kl, semantic=kd_weight * kl)
      total = total + semantic_weight * metrics["semantic"]
    if detail_weight:
      detail = losses.detail_penalty([tap(out.features, s) for s, _ in taps],
                                     [tap(out.teacher_features, t) for _, t in taps],
                                     kind=detail_kind)
      metrics["detail"] = detail
      total = total + detail_weight * detail
    metrics["loss"] = total
    return total, metrics

  return Objective(loss_fn, needs_features=bool(detail_weight or use_cosine),
                   needs_teacher=bool(semantic_weight or detail_weight))


def pair_taps(student_shapes: dict, teacher_shapes: dict, names: Sequence[str]
              ) -> list[tuple[str, str]]:
  """Pairs each student tap with the teacher *stage* of the same spatial size.

  ``student_shapes``/``teacher_shapes`` are features dicts of shapes (``jax.eval_shape``).
  The teacher stage of the same name wins when its size matches, else the last teacher
  stage of that size. Raises a ValueError naming the sizes when a tap has no partner or
  does not exist.
  """
  pairs = []
  for name in names:
    try:
      s_shape = tap(student_shapes, name).shape
    except KeyError:
      valid = sorted(student_shapes["stages"]) + sorted(student_shapes["blocks"])
      raise ValueError(f"distill.detail_taps: the student has no stage or block {name!r}; "
                       f"valid: {', '.join(valid)}.") from None
    same = [t for t, v in teacher_shapes["stages"].items() if v.shape[1:3] == s_shape[1:3]]
    if not same:
      sizes = {t: tuple(v.shape[1:3]) for t, v in teacher_shapes["stages"].items()}
      raise ValueError(f"distill.detail_taps: student tap {name!r} is {tuple(s_shape[1:3])} "
                       f"(HxW) but no teacher stage has that spatial size (teacher stages: "
                       f"{sizes}); pick taps whose sizes the teacher has.")
    pairs.append((name, name if name in same else same[-1]))
  return pairs


def from_config(config, num_classes: int, taps: Sequence[tuple[str, str]] = ()) -> Objective:
  """The objective ``config.distill`` describes (plain classification without a teacher).

  ``taps``: the paired detail taps (:func:`pair_taps`), needed when detail_weight > 0.
  """
  d = config.distill
  if not (d.semantic_weight or d.detail_weight):
    return classification(num_classes, config.label_smoothing)
  return distillation(num_classes, config.label_smoothing, semantic_weight=d.semantic_weight,
                      kd_weight=d.kd_weight, cosine_weight=d.cosine_weight,
                      temperature=d.temperature, detail_weight=d.detail_weight,
                      detail_kind=d.detail_kind, taps=taps)


def tap_names(text: str) -> list[str]:
  """"stage1, stage2" -> ["stage1", "stage2"]."""
  return [t.strip() for t in text.split(",") if t.strip()]
