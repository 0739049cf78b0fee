"""The trainer end to end on the real CIFAR-10 (small slices, small widths)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest

from bnn_jax import checkpoints, optim, train_lib
from helpers import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING_KEYS = ("images_per_sec", "epoch_seconds")


def final_params(workdir):
  return jax.tree.map(np.asarray, checkpoints.load_run(workdir).params)


def comparable(history):
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]


def assert_trees_close(a, b, **tol):
  chex_like = jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  assert chex_like, "parameter trees differ in structure"
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, **tol)


def run_train_py(args, env=None, **kwargs):
  env = {**os.environ, **(env or {})}
  return subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), *args], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          **kwargs)


def cli_args(cifar10_path, workdir, **flags):
  """train.py arguments for tiny_config(cifar10_path, **flags): quick_cpu.py with overrides."""
  values = {"data.path": cifar10_path, "model.width": 0.125, "data.train_subset": 512,
            "data.test_subset": 256, "batch_size": 64, "num_epochs": 2, "optim.lr": 0.002,
            "optim.schedule": "constant",
            "progress_bar": False, "log_every_steps": 4, **flags}
  return (["--config", os.path.join(REPO, "configs", "quick_cpu.py"), "--workdir", workdir]
          + [f"--config.{k}={v}" for k, v in values.items()])


def wait_for_checkpoint(proc, workdir, step, timeout=300):
  deadline = time.time() + timeout
  while not os.path.isdir(os.path.join(workdir, "checkpoints", str(step))):
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < deadline, f"no checkpoint at step {step} after {timeout} s"
    time.sleep(0.05)


def saved_steps(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


@pytest.mark.xdist_group("run_2048")
def test_learns_on_real_cifar10(run_2048):
  """ReActNet-18 width 0.125, 64 steps on 2,048 training images (the run_2048 fixture); test on
  1,000 held-out test images.

  Chance is 10%; a classifier at chance scores above 18% on 1,000 images with probability
  < 1e-14 (binomial, sd 0.95%), so the bar cannot pass by luck (measured: 23%).
  """
  workdir, record = run_2048
  assert record["test/accuracy"] > 0.18, record
  history = checkpoints.read_metrics(workdir)
  assert [r["epoch"] for r in history] == [1, 2]
  assert history[-1]["train/loss"] < history[0]["train/loss"]
  # the weight statistics are logged every epoch, overall and per binary layer: some signs
  # flip between epochs, but far from all
  assert 0.0 < history[-1]["weights/overall/flip_ratio"] < 0.3
  assert "weights/overall/flip_ratio" not in history[0]  # no previous epoch to compare with
  assert any(k.startswith("weights/stage4_block4") for k in history[-1])
  # activation balance: one fraction of +1 per sign (16), and the mean entropy in bits
  p_plus = {k: v for k, v in history[-1].items() if k.endswith("/p_plus") and "overall" not in k}
  assert len(p_plus) == 16 and all(0.0 < p < 1.0 for p in p_plus.values())
  assert 0.5 < history[-1]["balance/overall/entropy"] <= 1.0
  written = json.load(open(os.path.join(workdir, "config.json")))
  assert written["model"]["num_classes"] == 10 and written["data"]["train_subset"] == 2048
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))


def test_bn_free_model_trains_with_method1_and_agc(cifar10_path, tmp_path):
  """The BN-free recipe end to end: no batch_stats anywhere, finite loss, weight stats logged;
  the ``on_epoch_end`` hook sees the logged record."""
  config = tiny_config(cifar10_path, num_epochs=1, **{
      "model.name": "reactnet18_bnfree", "optim.agc_clip": 0.02, "optim.w_reg.enabled": True,
      "optim.cosine_momentum.enabled": True, "data.train_subset": 256})
  seen = []
  record = train_lib.train_and_evaluate(config, str(tmp_path), on_epoch_end=seen.append)
  assert np.isfinite(record["train/loss"]) and np.isfinite(record["test/loss"])
  assert "weights/overall/mean_dist" in record
  # the epoch hook got each epoch's record, the one metrics.jsonl holds
  assert seen == [record] and checkpoints.read_metrics(str(tmp_path)) == [record]
  run = checkpoints.load_run(str(tmp_path))
  assert not jax.tree.leaves(run.batch_stats)
  init = train_lib.create_state(train_lib.build_model(config, 10), optax.sgd(0.0),
                                jax.random.key(config.seed)).params
  moved = [float(np.abs(np.asarray(a) - b).max()) for a, b in
           zip(jax.tree.leaves(init), jax.tree.leaves(run.params))]
  assert min(moved) > 0.0  # every parameter trained (the BN-free path has no dead branch)


def test_two_devices_equal_one_device(cifar10_path, tmp_path):
  """Same global batch over 1 and 2 devices (synchronized BN): the same training.

  Not bit-equal: the per-device batch (64 vs 32) changes the float summation order, and
  binary activations can turn a last-bit difference into a flipped sign that grows step
  by step (measured: 4% of the parameter movement after 8 steps). After 2 steps the two
  runs differ by 1e-6 of how far the parameters moved, while a real data-parallel bug is
  of the order of the movement (unsynchronised BN: 0.29). Plain SGD: Adam's first steps
  are lr * g / |g| per element and would turn rounding in near-zero gradients into full steps.
  """
  assert jax.local_device_count() == 2
  sgd = {"optim.name": "sgd", "optim.lr": 0.05, "num_epochs": 1, "data.train_subset": 128}
  one = tiny_config(cifar10_path, num_devices=1, **sgd)
  two = tiny_config(cifar10_path, num_devices=2, **sgd)
  r1 = train_lib.train_and_evaluate(one, str(tmp_path / "one"))
  r2 = train_lib.train_and_evaluate(two, str(tmp_path / "two"))
  p1, p2 = final_params(tmp_path / "one"), final_params(tmp_path / "two")
  init = train_lib.create_state(train_lib.build_model(one, 10), optax.sgd(0.0),
                                jax.random.key(one.seed)).params
  sq = lambda tree: sum(float(np.sum(np.square(x))) for x in jax.tree.leaves(tree))
  moved = sq(jax.tree.map(lambda a, b: np.asarray(a) - b, init, p1)) ** 0.5
  apart = sq(jax.tree.map(lambda a, b: a - b, p1, p2)) ** 0.5
  assert moved > 1e-2 and apart < 1e-4 * moved, (moved, apart)
  assert abs(r1["train/loss"] - r2["train/loss"]) < 1e-5
  assert abs(r1["test/accuracy"] - r2["test/accuracy"]) <= 1 / 256  # at most one borderline image


def test_killed_run_resumes_to_the_same_result(cifar10_path, tmp_path, tiny_run):
  """SIGKILL after epoch 1's checkpoint, rerun: same params and metrics as an uninterrupted
  run (the tiny_run fixture: the same config, 2 epochs straight through)."""
  workdir = str(tmp_path / "killed")
  proc = run_train_py(cli_args(cifar10_path, workdir))
  wait_for_checkpoint(proc, workdir, 8)
  proc.send_signal(signal.SIGKILL)  # epoch 2 is still to come: its eval, stats and 8 steps
  proc.wait()
  assert saved_steps(workdir)[-1] < 16

  train_lib.train_and_evaluate(tiny_config(cifar10_path), workdir)  # the rerun resumes
  assert_trees_close(final_params(tiny_run), final_params(workdir), rtol=1e-6, atol=1e-7)
  resumed = comparable(checkpoints.read_metrics(workdir))
  straight = comparable(checkpoints.read_metrics(tiny_run))
  assert [r["epoch"] for r in resumed] == [1, 2]  # no duplicate or lost epoch record
  for got, want in zip(resumed, straight):
    assert got == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_sparse_checkpoints_and_weight_statistics(cifar10_path, tmp_path, tiny_run):
  """checkpoint.every_epochs=2 and weight_stats_every_epochs=2 over 3 epochs: checkpoints after
  epochs 2 and 3 (the last), statistics in the records of epochs 2 and 3, each flip ratio the
  sign changes during its own epoch; epochs 1-2 are the tiny_run fixture's (constant lr: the
  same steps), whose checkpoints at steps 8 and 16 give epoch 2's flips by hand."""
  workdir = str(tmp_path / "sparse")
  config = tiny_config(cifar10_path, num_epochs=3, weight_stats_every_epochs=2,
                       **{"checkpoint.every_epochs": 2})
  train_lib.train_and_evaluate(config, workdir)
  assert saved_steps(workdir) == [16, 24]
  history = checkpoints.read_metrics(workdir)
  assert [("weights/overall/mean_abs" in r) for r in history] == [False, True, True]
  def signs(step):
    params = checkpoints.load_run(tiny_run, step=step).params
    return [np.asarray(w) >= 0 for w, binary in zip(jax.tree.leaves(params),
                                                     jax.tree.leaves(optim.binary_mask(params)))
            if binary]
  changed = sum(int((a != b).sum()) for a, b in zip(signs(8), signs(16)))
  assert history[1]["weights/overall/flip_ratio"] == pytest.approx(
      changed / sum(a.size for a in signs(8)))
  assert 0 <= history[2]["weights/overall/flip_ratio"] <= 1
  epoch2 = checkpoints.load_run(workdir, step=16).params
  assert_trees_close(final_params(tiny_run), jax.tree.map(np.asarray, epoch2), rtol=1e-6,
                     atol=1e-7)
  for key, bad in (("checkpoint.every_epochs", 0), ("weight_stats_every_epochs", -2)):
    c = tiny_config(cifar10_path, **{key: bad})
    with pytest.raises(ValueError, match=f"{key}={bad}.*whole number >= 1"):
      train_lib.train_and_evaluate(c, str(tmp_path / "bad"))


@pytest.mark.xdist_group("run_2048")
def test_sigterm_saves_mid_epoch_and_resumes_exactly(cifar10_path, tmp_path, run_2048):
  """SIGTERM during epoch 2 (32 steps each): a mid-epoch checkpoint, then an exact resume."""
  sizes = {"data.train_subset": 2048, "data.test_subset": 1000}   # those of run_2048
  config = tiny_config(cifar10_path, num_epochs=2, **sizes)
  straight_dir, straight = run_2048

  workdir = str(tmp_path / "stopped")
  proc = run_train_py(cli_args(cifar10_path, workdir, **sizes))
  wait_for_checkpoint(proc, workdir, 32)  # end of epoch 1; epoch 2 takes seconds more
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  steps = saved_steps(workdir)
  assert "SIGTERM received" in out and 32 < steps[-1] < 64, (steps, out[-2000:])
  resumed = train_lib.train_and_evaluate(config, workdir)
  assert_trees_close(final_params(straight_dir), final_params(workdir), rtol=1e-6, atol=1e-7)
  assert resumed["test/accuracy"] == pytest.approx(straight["test/accuracy"])
  assert resumed["train/loss"] == pytest.approx(straight["train/loss"], rel=1e-5)


# --- bad input ------------------------------------------------------------------------


def test_unknown_config_key_on_the_command_line_is_named(tmp_path):
  proc = run_train_py(["--config", "configs/quick_cpu.py", "--workdir", str(tmp_path),
                       "--config.optim.lrr=0.1"])
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode != 0
  assert "bad command line" in out and "lrr" in out and 'Did you mean "lr"' in out
  assert "Traceback" not in out


def test_unknown_config_key_in_code_is_named(cifar10_path, tmp_path):
  config = tiny_config(cifar10_path)
  config.unlock()
  config.optim.learning_rate = 0.1
  with pytest.raises(ValueError, match=r"Unknown config key\(s\): 'optim.learning_rate'"):
    train_lib.train_and_evaluate(config, str(tmp_path))


def test_indivisible_batch_is_a_clear_error(cifar10_path, tmp_path):
  config = tiny_config(cifar10_path, batch_size=63)
  with pytest.raises(ValueError, match=r"batch_size=63 is not divisible by 2 devices; use a multiple of 2 \(e.g. 64\)"):
    train_lib.train_and_evaluate(config, str(tmp_path))


def test_missing_data_is_a_clear_error(tmp_path):
  config = tiny_config(str(tmp_path / "nowhere" / "cifar-10-binary.tar.gz"))
  with pytest.raises(FileNotFoundError, match="nowhere"):
    train_lib.train_and_evaluate(config, str(tmp_path / "run"))


def test_truncated_checkpoint_is_a_clear_error(cifar10_path, tmp_path):
  config = tiny_config(cifar10_path, num_epochs=1)
  train_lib.train_and_evaluate(config, str(tmp_path))
  step_dir = tmp_path / "checkpoints" / "8" / "state"
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as f:  # truncate the largest data file to half
    f.truncate(os.path.getsize(biggest) // 2)
  config.num_epochs = 2
  with pytest.raises(checkpoints.CheckpointError, match=r"(?s)step 8 .* damaged.*rm -r .*no other checkpoint"):
    train_lib.train_and_evaluate(config, str(tmp_path))


def test_two_step_init_from_starts_from_step_one(cifar10_path, tmp_path):
  """ReActNet step 2 (binary weights) starts from step 1's parameters (real weights): the
  state the trainer sets up for step 2 holds them, at step 0 (a new run, not a resume)."""
  step1 = tiny_config(cifar10_path, num_epochs=1, **{"model.options.binarize_weights": False,
                                                     "data.train_subset": 256})
  train_lib.train_and_evaluate(step1, str(tmp_path / "step1"))
  step2 = tiny_config(cifar10_path, num_epochs=1, init_from=str(tmp_path / "step1"),
                      **{"data.train_subset": 256})
  with contextlib.ExitStack() as stack:
    run = train_lib.setup(step2, str(tmp_path / "step2"), stack)
  assert run.start_step == 0 and int(run.state.step[0]) == 0
  started = jax.tree.map(lambda v: np.asarray(v[0]), run.state.params)
  assert_trees_close(final_params(tmp_path / "step1"), started, rtol=0, atol=0)
  init = train_lib.create_state(train_lib.build_model(step2, 10), optax.sgd(0.0),
                                jax.random.key(step2.seed)).params
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(init), jax.tree.leaves(started)))  # not a fresh init

  wider = tiny_config(cifar10_path, num_epochs=1, init_from=str(tmp_path / "step1"),
                      **{"model.width": 0.25, "data.train_subset": 256})
  with pytest.raises(ValueError, match="do not match"):
    train_lib.train_and_evaluate(wider, str(tmp_path / "wider"))
