"""Distillation from a frozen teacher run (method 3) through the real trainer."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from bnn_jax import checkpoints, objectives, train_lib
from helpers import tiny_config


def student_config(cifar10_path, teacher_dir, **distill):
  """A width-0.125 ReActNet-18 student on 256 images: 4 steps of 64 per epoch, constant lr."""
  return tiny_config(cifar10_path, **{
      "data.train_subset": 256, "data.test_subset": 128, "optim.schedule": "constant",
      "teacher.workdir": teacher_dir, "distill.semantic_weight": 1.0,
      "distill.detail_weight": 10.0, **{f"distill.{k}": v for k, v in distill.items()}})


def test_distillation_logs_each_term_resumes_exactly_and_never_saves_the_teacher(
    cifar10_path, tiny_run, tmp_path):
  config = student_config(cifar10_path, tiny_run)
  straight = train_lib.train_and_evaluate(config, str(tmp_path / "straight"))
  for key in ("train/loss", "train/ce", "train/kl", "train/cosine", "train/semantic",
              "train/detail"):
    assert np.isfinite(straight[key]), key
  # total = ce + 1.0 * semantic + 10 * detail, and semantic = kl + cosine (epoch means)
  assert straight["train/loss"] == pytest.approx(
      straight["train/ce"] + straight["train/semantic"] + 10 * straight["train/detail"], rel=1e-5)
  assert straight["train/semantic"] == pytest.approx(
      straight["train/kl"] + straight["train/cosine"], rel=1e-5)

  one_epoch = student_config(cifar10_path, tiny_run)
  one_epoch.num_epochs = 1
  train_lib.train_and_evaluate(one_epoch, str(tmp_path / "resumed"))
  resumed = train_lib.train_and_evaluate(config, str(tmp_path / "resumed"))
  a = checkpoints.load_run(str(tmp_path / "straight"))
  b = checkpoints.load_run(str(tmp_path / "resumed"))
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
  assert resumed["train/loss"] == pytest.approx(straight["train/loss"], rel=1e-5)
  assert resumed["test/accuracy"] == pytest.approx(straight["test/accuracy"])

  # the checkpoint is the student's alone: same tree as a run without a teacher
  student = train_lib.create_state(train_lib.build_model(config, 10), optax_sgd(),
                                   jax.random.key(0))
  assert jax.tree.structure(a.params) == jax.tree.structure(student.params)
  teacher = checkpoints.load_run(tiny_run)
  assert jax.tree.structure(teacher.params) == jax.tree.structure(a.params)  # same model kind,
  assert not any(np.array_equal(np.asarray(t), np.asarray(s))  # ... yet nothing of it saved
                 for t, s in zip(jax.tree.leaves(teacher.params), jax.tree.leaves(a.params))
                 if np.size(t) > 8)


def optax_sgd():
  import optax
  return optax.sgd(0.0)


def test_missing_teacher_directory_is_a_clear_error(cifar10_path, tmp_path):
  config = student_config(cifar10_path, str(tmp_path / "no_teacher"))
  with pytest.raises(FileNotFoundError, match=r"teacher.workdir=.*no_teacher: no such directory; "
                                              r"train the teacher first"):
    train_lib.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")  # nothing trained


def test_teacher_of_another_dataset_is_a_clear_error(cifar10_path, tiny_run, tmp_path):
  other = tmp_path / "teacher_c100"
  shutil.copytree(tiny_run, other)
  cfg = json.load(open(other / "config.json"))
  cfg["data"]["dataset"] = "cifar100"
  json.dump(cfg, open(other / "config.json", "w"))
  config = student_config(cifar10_path, str(other))
  with pytest.raises(ValueError, match="trained on 'cifar100' but this run trains on 'cifar10'"):
    train_lib.train_and_evaluate(config, str(tmp_path / "run"))


def test_unknown_tap_is_a_clear_error(cifar10_path, tiny_run, tmp_path):
  config = student_config(cifar10_path, tiny_run, detail_taps="stage1,stage9")
  with pytest.raises(ValueError, match=r"the student has no stage or block 'stage9'; valid: "
                                       r"stage1, stage2"):
    train_lib.train_and_evaluate(config, str(tmp_path / "run"))


def test_taps_pair_by_spatial_size_and_mismatches_are_named():
  shape = lambda *s: jax.ShapeDtypeStruct(s, np.float32)
  student = {"stages": {"stage1": shape(2, 32, 32, 16), "stage2": shape(2, 16, 16, 32)},
             "blocks": {"stage1_block2": shape(2, 32, 32, 16)}}
  vgg_teacher = {"stages": {"stage1": shape(2, 16, 16, 32), "stage2": shape(2, 8, 8, 64),
                            "stage3": shape(2, 4, 4, 128)}, "blocks": {}}
  resnet_teacher = {"stages": {"stage1": shape(2, 32, 32, 64), "stage2": shape(2, 16, 16, 128)},
                    "blocks": {}}
  assert objectives.pair_taps(student, resnet_teacher, ["stage1", "stage1_block2"]) == [
      ("stage1", "stage1"), ("stage1_block2", "stage1")]
  assert objectives.pair_taps(student, vgg_teacher, ["stage2"]) == [("stage2", "stage1")]
  with pytest.raises(ValueError, match=r"student tap 'stage1' is \(32, 32\) \(HxW\) but no "
                                       r"teacher stage has that spatial size"):
    objectives.pair_taps(student, vgg_teacher, ["stage1"])
