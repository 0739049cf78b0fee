"""bfloat16 end to end: ``--config.model.dtype=bfloat16`` trains, resumes and exports.

What runs in bfloat16 (docs/METHODS.md, "Numerics"; tests/test_precision.py checks where):
every activation, conv and BatchNorm output, RSign/RPReLU, the residual adds and the method-2
modules; the binary convs' +-1 sums are exact before their rounding. Parameters, BN running
statistics, gradients, the optimizer state, the logits and the loss stay float32, and the
checkpoint holds float32 values only. The packed export is the float32 evaluation of the
trained weights (the packed runtime does not round activations to bfloat16).
"""

import os
import shutil

import jax
import numpy as np
import pytest

from bnn_jax import checkpoints, data, deploy, train_lib
from bnn_jax.models import get_model
from helpers import tiny_config
from test_deploy import check_agreement, float_logits

BF16 = {"model.dtype": "bfloat16", "data.train_subset": 2048, "data.test_subset": 1000}


@pytest.mark.xdist_group("run_2048")   # shares the float32 twin with test_train.py
def test_bfloat16_learns_like_float32_resumes_exactly_and_packs(cifar10_path, tmp_path,
                                                                 run_2048):
  f32_dir, f32 = run_2048     # the same run in float32
  straight = str(tmp_path / "straight")
  record = train_lib.train_and_evaluate(tiny_config(cifar10_path, num_epochs=2, **BF16), straight)
  # A copy of the run as a stop after epoch 1 leaves it (its epoch-2 checkpoint removed, as
  # for a damaged one) resumes from the epoch-1 checkpoint and ends where the straight run did.
  split = str(tmp_path / "split")
  shutil.copytree(straight, split)
  shutil.rmtree(os.path.join(split, "checkpoints", "64"))
  resumed = train_lib.train_and_evaluate(tiny_config(cifar10_path, num_epochs=2, **BF16), split)
  a, b = checkpoints.load_run(split), checkpoints.load_run(straight)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    assert np.asarray(x).dtype == np.float32          # float32 latent weights in the checkpoint
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  assert resumed["test/accuracy"] == pytest.approx(record["test/accuracy"])
  assert [r["epoch"] for r in checkpoints.read_metrics(split)] == [1, 2]
  assert 64 in checkpoints.Checkpointer(os.path.join(split, "checkpoints"),
                                       read_only=True).all_steps()   # epoch 2 trained again

  # Learns: the loss falls, test top-1 (1,000 held-out images) well above chance (10%; 18% is
  # 8 sd above it), and close to the float32 run's. Tolerances: the mean training loss of
  # epoch 2 within 0.05 of float32's (measured 0.002 apart), test top-1 within 6 points (two
  # runs that differ only in rounding end ~2 points apart, one sd, at this size).
  history = checkpoints.read_metrics(straight)
  assert history[1]["train/loss"] < history[0]["train/loss"]
  assert record["test/accuracy"] > 0.18, record
  assert abs(record["train/loss"] - f32["train/loss"]) < 0.05, (record, f32)
  assert abs(record["test/accuracy"] - f32["test/accuracy"]) < 0.06, (record, f32)

  # The exported packed model is the float32 evaluation of the bfloat16-trained weights: equal
  # to it under the near-tie rule of test_deploy.py. That evaluation scores like the bfloat16
  # model it was trained as: top-1 on the 1,000 test images within 5 points (the two
  # evaluations of one set of weights differ only by rounding, which flips signs at near
  # ties; measured 30.4% vs 29.7% on another small run, docs/METHODS.md "Numerics"; 5 points
  # is about 3.5 sd of the binomial noise of 1,000 images at this accuracy).
  images, labels = (np.asarray(a[:1000]) for a in data.load_cifar_binary(cifar10_path)["test"])
  run = checkpoints.load_run(straight)
  variables = {"params": run.params, "batch_stats": run.batch_stats}
  f32_logits = float_logits(get_model("reactnet18", width=0.125, dtype="float32"), variables,
                            images)
  bf16_logits = float_logits(get_model("reactnet18", width=0.125, dtype="bfloat16"), variables,
                             images)
  pm = deploy.pack(straight)
  assert pm.meta["dtype"] == "float32"
  check_agreement(f32_logits, *pm.logits_and_margins(images))
  top1 = lambda logits: float(np.mean(np.argmax(logits, -1) == labels))
  assert abs(top1(f32_logits) - top1(bf16_logits)) < 0.05, (top1(f32_logits), top1(bf16_logits))
  assert top1(bf16_logits) == pytest.approx(record["test/accuracy"], abs=0.01)  # the trainer's
  # the bfloat16 conv-operand rounding stays available on request
  pm16 = deploy.pack(straight, dtype="bfloat16")
  assert any(op.get("operands") == "bfloat16" for op in pm16.ops if op["op"] == "conv")


def test_packing_an_unsupported_dtype_is_a_clear_error():
  with pytest.raises(ValueError, match="float16 model"):
    deploy.pack({"params": {}}, model="vgg_small_bnn", width=0.125, dtype="float16")
