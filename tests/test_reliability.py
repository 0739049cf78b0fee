"""Non-finite losses: stop without a bad checkpoint, or skip the step; strict metrics.jsonl."""

import json
import math

import jax
import numpy as np
import pytest

from bnn_jax import checkpoints, train_lib
from helpers import tiny_config


def config_for(cifar10_path, **overrides):
  """A width-0.125 ReActNet-18 on 256 images: 4 SGD steps of 64 per epoch, 1 epoch."""
  return tiny_config(cifar10_path, **{
      "data.train_subset": 256, "data.test_subset": 128, "num_epochs": 1, "optim.name": "sgd",
      "optim.lr": 0.05, "optim.schedule": "constant", "log_every_steps": 2, **overrides})


def strict_records(workdir):
  def refuse(token):
    raise ValueError(f"non-standard JSON token {token}")
  with open(f"{workdir}/metrics.jsonl") as f:
    return [json.loads(line, parse_constant=refuse) for line in f if line.strip()]


def test_divergence_mid_run_stops_and_keeps_the_last_good_checkpoint(cifar10_path, tmp_path):
  workdir = str(tmp_path)
  train_lib.train_and_evaluate(config_for(cifar10_path), workdir)  # epoch 1: fine, step 4
  # epoch 2 with an absurd learning rate: the parameters overflow within a step or two
  diverging = config_for(cifar10_path, num_epochs=2, **{"optim.lr": 1e38})
  with pytest.raises(train_lib.NonFiniteError,
                     match=r"NaN/inf in epoch 2, between steps 5 and 6 \(learning rate 1e\+38\)"
                           r".*last good checkpoint \(step 4\).*nan_policy=skip"):
    train_lib.train_and_evaluate(diverging, workdir)
  run = checkpoints.load_run(workdir)
  assert run.steps == [4] and run.step == 4
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(run.params))
  assert [r["epoch"] for r in strict_records(workdir)] == [1]


def test_skip_policy_leaves_the_state_unchanged_and_counts_the_steps(cifar10_path, tmp_path):
  config = config_for(cifar10_path, nan_policy="skip", **{"optim.lr": 1e38})
  record = train_lib.train_and_evaluate(config, str(tmp_path / "skip"))
  assert record["train/nonfinite_steps"] >= 3  # from the first or second step on
  [rec] = strict_records(tmp_path / "skip")   # strict JSON: NaN became null
  assert rec["train/nonfinite_steps"] == record["train/nonfinite_steps"]
  assert rec["train/loss"] is None or math.isfinite(rec["train/loss"])
  params = checkpoints.load_run(str(tmp_path / "skip")).params
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params))


def test_bad_nan_policy_is_named(cifar10_path, tmp_path):
  with pytest.raises(ValueError, match=r"nan_policy='ignore'; valid: stop, skip"):
    train_lib.train_and_evaluate(config_for(cifar10_path, nan_policy="ignore"), str(tmp_path))


def test_strict_json_turns_non_finite_numbers_into_null():
  line = train_lib.strict_json({"a": float("nan"), "b": float("inf"), "c": 1.5, "d": "x"})
  assert json.loads(line) == {"a": None, "b": None, "c": 1.5, "d": "x"}
