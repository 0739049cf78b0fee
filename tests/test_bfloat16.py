"""bfloat16 end to end: ``--config.model.dtype=bfloat16`` trains, resumes and exports.

What runs in bfloat16 (docs/METHODS.md, "Numerics"): the operands of every conv (binary and
real) and of the binary dense layers, rounded from float32; the convs accumulate and return
float32. BatchNorm (statistics and affine), the activations between layers (RSign/RPReLU,
residual adds), the head, the losses, the optimizer and the latent weights stay float32, and
the checkpoint holds float32 values only. The binary convs are therefore exact (+-1 operands,
float32 sums); only the real convs (stem, shortcuts) round.
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

  # The exported packed model equals the bfloat16 model (the near-tie rule of test_deploy.py).
  images = np.asarray(data.load_cifar_binary(cifar10_path)["test"][0][:1000])
  run = checkpoints.load_run(straight)
  variables = {"params": run.params, "batch_stats": run.batch_stats}
  bf16_logits = float_logits(get_model("reactnet18", width=0.125, dtype="bfloat16"), variables,
                             images)
  pm = deploy.pack(straight)            # dtype from the run's config.json
  assert pm.meta["dtype"] == "bfloat16"
  assert any(op.get("operands") == "bfloat16" for op in pm.ops if op["op"] == "conv")
  check_agreement(bf16_logits, *pm.logits_and_margins(images))


def test_packing_an_unsupported_dtype_is_a_clear_error():
  with pytest.raises(ValueError, match="float16 model"):
    deploy.pack({"params": {}}, model="vgg_small_bnn", width=0.125, dtype="float16")
