"""``python -m bnn_jax.inspect`` on a real tiny training run (the ``tiny_run`` fixture).

Every number the CLI prints is checked against an independent NumPy computation
from the checkpoint's params (read back with orbax) or against metrics.jsonl.
The CLI is run as a subprocess, as a user runs it; one call covers the report,
--compare, --plot and --export (each start imports JAX, Flax and orbax).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

from bnn_jax import checkpoints, data, deploy
from bnn_jax import inspect as inspect_cli
from bnn_jax.models import get_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_IMAGES = 256


def run_cli(*args, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "bnn_jax.inspect", *map(str, args)],
                        capture_output=True, text=True, cwd=REPO, timeout=timeout)


def binary_kernels(params, prefix=()) -> dict[str, np.ndarray]:
  """{"stage1_block1/binary_conv": kernel} by walking the nested dict by hand."""
  out = {}
  for key in params:
    value = params[key]
    if key == "binary_kernel":
      out["/".join(prefix)] = np.asarray(value, np.float64)
    elif hasattr(value, "keys"):
      out.update(binary_kernels(value, prefix + (key,)))
  return out


def numpy_stats(w: np.ndarray, t: float = 1.0, near: float = 0.1,
                optional: tuple = ()) -> list[float]:
  """mean|w|, mean||w|-t|, near, tail, zeros [, e_q, |w|>alpha: the ``optional`` ones]."""
  a = np.abs(w)
  out = [a.mean(), np.abs(a - t).mean(), (np.abs(a - t) <= near).mean(), (a > t).mean(),
         (w == 0).mean()]
  alpha = a.reshape(-1, w.shape[-1]).mean(0)   # per output channel (the last axis)
  extra = {"e_q": ((w - alpha * np.where(w >= 0, 1, -1)) ** 2).sum() / (w ** 2).sum(),
           "|w|>alpha": (a > alpha).mean()}
  return out + [extra[k] for k in optional]


def optional_stat_columns(lines: list[str]) -> tuple:
  """The optional statistics columns the weights table shows (newer weight_stats)."""
  header = next(line for line in lines if line.startswith("layer")).split()
  return tuple(label for label in ("e_q", "|w|>alpha") if label in header)


def section(out: str, title: str) -> list[str]:
  """The lines of the ``== title ...`` section of the CLI output."""
  lines = out.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith(f"== {title}"))
  end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("== ")), len(lines))
  return lines[start + 1:end]


def table_values(lines: list[str], names, ncols: int) -> dict[str, list[float]]:
  """{row name: its last ``ncols`` numbers} for the rows whose first cell is in ``names``."""
  rows = {}
  for line in lines:
    cells = line.split()
    if cells and cells[0] in names:
      rows[cells[0]] = [float(c) for c in cells[-ncols:]]
  return rows


def png_info(path: str) -> tuple[int, int, dict]:
  """(width, height, {tEXt key: value}) read from the PNG chunks."""
  blob = open(path, "rb").read()
  assert blob[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
  pos, text, size = 8, {}, None
  while pos < len(blob):
    length, kind = struct.unpack(">I4s", blob[pos:pos + 8])
    body = blob[pos + 8:pos + 8 + length]
    if kind == b"IHDR":
      size = struct.unpack(">II", body[:8])
    elif kind == b"tEXt":
      key, _, value = body.partition(b"\0")
      text[key.decode("latin-1")] = value.decode("latin-1")
    pos += 12 + length
  return size[0], size[1], text


@pytest.fixture(scope="module")
def run_and_params(tiny_run):
  history = checkpoints.read_metrics(tiny_run)
  steps = [r["step"] for r in history]
  assert steps == [8, 16], steps
  params = {s: jax.tree.map(np.asarray, checkpoints.load_run(tiny_run, s).params) for s in steps}
  return tiny_run, history, params


@pytest.fixture(scope="module")
def cli_output(run_and_params, tmp_path_factory):
  workdir, _, _ = run_and_params
  out_dir = tmp_path_factory.mktemp("inspect")
  plot, export = out_dir / "hist.png", out_dir / "model.npz"
  result = run_cli(workdir, "--compare", 8, "--plot", plot, "--export", export)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  return result.stdout, str(plot), str(export)


def test_report_step_config_and_history(cli_output, run_and_params):
  out, _, _ = cli_output
  workdir, history, _ = run_and_params
  assert f"run: {workdir}" in out
  assert re.search(r"^step: 16 \(epoch 2\)$", out, re.M)
  assert "checkpoint steps: 8, 16" in out
  config = section(out, "config")
  assert "  model.name = 'reactnet18'" in config and "  model.width = 0.125" in config
  assert "  data.train_subset = 512" in config and "  batch_size = 64" in config
  best = max(history, key=lambda r: r["test/accuracy"])
  assert (f"best test accuracy: {best['test/accuracy']:.4f} (epoch {best['epoch']}, "
          f"step {best['step']})") in out
  last = history[-1]
  assert f"last test accuracy: {last['test/accuracy']:.4f} (epoch 2, step 16)" in out
  rows = {line.split()[0]: line.split() for line in section(out, "metrics history")[2:]
          if line.split() and line.split()[0].isdigit()}
  assert set(rows) == {"1", "2"}
  header = section(out, "metrics history")[0]
  keys = [c[0] for c in inspect_cli.history_columns(history)]
  # the columns follow the keys the run logged; up to the activation entropy every record
  # has a value (flips starts at epoch 2), so a row's cells line up with the columns there
  assert keys[:7] == ["epoch", "step", "train/loss", "train/accuracy", "test/loss",
                      "test/accuracy", "balance/overall/entropy"], keys
  assert header.split()[:2] == ["epoch", "step"]
  for label in ("train loss", "train acc", "test loss", "test acc", "act H", "flips",
                "mean||w|-t|", "lr", "img/s"):
    assert label in header, label
  for r in history:
    row = rows[str(r["epoch"])]
    assert int(row[1]) == r["step"] == 8 * r["epoch"]
    for i, key in enumerate(keys[2:7], 2):
      assert row[i] == f"{r[key]:.4f}", key


def test_report_summary_section(cli_output):
  from bnn_jax.summary import summary
  out, _, _ = cli_output
  lines = section(out, "model summary")
  assert lines[0].startswith("Model: reactnet18, input 32x32x3")
  want = summary("reactnet18", width=0.125)
  total = next(line for line in lines if line.startswith("total")).split()
  assert total[1] == f"{want.params:,}" and total[2] == f"{want.binary_params:,}"
  assert f"binary-MAC ratio: {100 * want.binary_mac_ratio:.2f}%" in out


def test_report_layer_stats_equal_numpy(cli_output, run_and_params):
  out, _, _ = cli_output
  _, _, params = run_and_params
  kernels = binary_kernels(params[16])
  assert len(kernels) == 16  # ReActNet-18: one binary conv in each of 4 x 4 blocks
  lines = section(out, "latent binary weights")
  optional = optional_stat_columns(lines)
  assert "e_q" in optional  # weight_stats has quant_error: the table shows it
  rows = table_values(lines, set(kernels) | {"overall"}, 5 + len(optional))
  assert set(rows) == set(kernels) | {"overall"}
  for name, w in kernels.items():
    np.testing.assert_allclose(rows[name], numpy_stats(w, optional=optional), atol=5.01e-5,
                               err_msg=name)
  # overall: the means pool the weights; e_q pools the squared errors and norms
  everything = np.concatenate([w.ravel() for w in kernels.values()])
  want = numpy_stats(everything)
  if "e_q" in optional:
    want.append(sum(numpy_stats(w, optional=("e_q",))[-1] * (w ** 2).sum()
                    for w in kernels.values()) / (everything ** 2).sum())
  if "|w|>alpha" in optional:
    want.append(sum(numpy_stats(w, optional=("|w|>alpha",))[-1] * w.size
                    for w in kernels.values()) / everything.size)
  np.testing.assert_allclose(rows["overall"], want, atol=5.01e-5)


def test_compare_flip_ratio_equals_numpy(cli_output, run_and_params):
  out, _, _ = cli_output
  _, _, params = run_and_params
  new, old = binary_kernels(params[16]), binary_kernels(params[8])
  rows = table_values(section(out, "compare"), set(new) | {"overall"}, 1)
  flips = {k: ((new[k] >= 0) != (old[k] >= 0)) for k in new}   # sign(0) = +1
  for name, f in flips.items():
    assert abs(rows[name][0] - f.mean()) <= 5.01e-7, name
  overall = np.concatenate([f.ravel() for f in flips.values()]).mean()
  assert overall > 0, "the two checkpoints should differ (training flips some signs)"
  assert abs(rows["overall"][0] - overall) <= 5.01e-7


def test_compare_with_itself_is_zero_and_other_target(run_and_params, capsys):
  # In-process (same code path as the CLI, without another JAX start-up); a step folder
  # as the path, a non-default band that makes near/tail fractions non-trivial.
  workdir, _, params = run_and_params
  step_dir = os.path.join(workdir, "checkpoints", "16")
  assert inspect_cli.main([step_dir, "--compare", step_dir, "--target", "0.04", "--near",
                           "0.01", "--no-config", "--no-summary"]) == 0
  out = capsys.readouterr().out
  assert re.search(r"^step: 16 ", out, re.M)
  kernels = binary_kernels(params[16])
  rows = table_values(section(out, "compare"), set(kernels) | {"overall"}, 1)
  assert len(rows) == 17 and all(v == [0.0] for v in rows.values())
  lines = section(out, "latent binary weights")
  optional = optional_stat_columns(lines)
  stats = table_values(lines, set(kernels), 5 + len(optional))
  for name, w in kernels.items():
    want = numpy_stats(w, t=0.04, near=0.01, optional=optional)
    assert 0 < want[2] < 1 and 0 < want[3] < 1  # near and tail fractions are exercised
    np.testing.assert_allclose(stats[name], want, atol=5.01e-5, err_msg=name)


def test_plot_writes_png_with_one_panel_per_binary_layer(cli_output, run_and_params):
  out, plot, _ = cli_output
  _, _, params = run_and_params
  layers = list(binary_kernels(params[16]))
  width, height, text = png_info(plot)
  assert f"wrote {plot}: {len(layers)} histogram panels" in out
  assert text["Description"] == f"panels={len(layers)}; layers={','.join(layers)}"
  assert (width, height) == (4 * 256, 4 * 192)  # a 4 x 4 grid of 3.2 x 2.4 inch panels at 80 dpi


def test_export_loads_and_predicts_like_the_float_model(cli_output, run_and_params,
                                                        cifar10_path):
  out, _, path = cli_output
  workdir, _, _ = run_and_params
  assert f"wrote {path}: {os.path.getsize(path):,} bytes" in out
  pm = deploy.load_packed(path)
  assert pm.meta["model"] == "reactnet18" and pm.meta["width"] == 0.125
  assert pm.meta["source"] == {"workdir": os.path.abspath(workdir), "step": 16}
  images = data.load_cifar_binary(cifar10_path)["test"][0][:N_IMAGES]
  run = checkpoints.load_run(workdir)
  model = get_model("reactnet18", width=0.125)
  variables = {"params": run.params, "batch_stats": run.batch_stats}
  fl = np.asarray(jax.jit(lambda v, x: model.apply(
      v, data.normalize(x, data.CIFAR10_MEAN, data.CIFAR10_STD), train=False))(variables, images))
  pk, margins = pm.logits_and_margins(images)
  # Equal classes except at near ties (a sign input within float32 rounding of its
  # threshold; see test_deploy.py, where image 102 is one): at most 1% of the images.
  mismatch = np.flatnonzero(pk.argmax(-1) != fl.argmax(-1))
  assert len(mismatch) <= N_IMAGES // 100 and (margins[mismatch] < 1e-5).all(), mismatch
  close = np.abs(pk - fl).max(-1) <= 1e-4
  assert close.mean() >= 0.95, np.abs(pk - fl).max(-1)
  assert (margins[~close] < 1e-5).all()


def test_not_a_run_is_a_one_line_error(tmp_path, capsys):
  empty = tmp_path / "not_a_run"
  empty.mkdir()
  (empty / "notes.txt").write_text("hello")
  result = run_cli(empty, timeout=120)
  assert result.returncode == 2, (result.stdout, result.stderr)
  assert "Traceback" not in result.stderr and result.stdout == ""
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("bnn_jax.inspect: error: ")
  assert str(empty) in lines[0] and "holds no checkpoint" in lines[0] and "--workdir" in lines[0]
  # a missing path, a missing step (in-process: the same main())
  missing = tmp_path / "missing"
  assert inspect_cli.main([str(missing)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and str(missing) in err[0] and "does not exist" in err[0]


def test_damaged_checkpoint_is_a_one_line_error(run_and_params, tmp_path):
  workdir, _, _ = run_and_params
  copy = tmp_path / "damaged_run"
  shutil.copytree(workdir, copy)
  state = copy / "checkpoints" / "16" / "state"
  damaged = 0
  for root, _, files in os.walk(state):
    for name in files:
      if name not in ("commit_success.txt",):
        with open(os.path.join(root, name), "r+b") as f:
          size = os.path.getsize(f.name)
          f.write(b"\x5a" * max(size, 16))
        damaged += 1
  assert damaged
  result = run_cli(copy, "--no-config", "--no-summary", timeout=120)
  assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
  assert "Traceback" not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("bnn_jax.inspect: error: ")
  assert "damaged" in lines[0] and str(state.parent) in lines[0]

def test_missing_step_is_an_error_and_other_steps_read(run_and_params, capsys):
  workdir, _, _ = run_and_params
  assert inspect_cli.main([workdir, "--step", "12", "--no-config", "--no-summary"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "No checkpoint at step 12" in err[0] and "[8, 16]" in err[0]
  assert inspect_cli.main([workdir, "--step", "8", "--no-config", "--no-summary"]) == 0
  assert re.search(r"^step: 8 \(epoch 1\)$", capsys.readouterr().out, re.M)


# --- history columns, activation balance, factory (in-process, no training) ---------------


def entropy_bits(p: float) -> float:
  return float(-sum(q * np.log2(q) for q in (p, 1 - p) if q > 0))


def test_report_activation_balance_equals_metrics(cli_output, run_and_params):
  out, _, _ = cli_output
  _, history, _ = run_and_params
  last = history[-1]
  signs = [k[len("balance/"):-len("/p_plus")] for k in last
           if k.startswith("balance/") and k.endswith("/p_plus") and "/overall/" not in k]
  assert len(signs) == 16 and all(s.endswith("/rsign") for s in signs), signs
  lines = section(out, "activation balance")
  assert lines[0].startswith(f"epoch {last['epoch']} (step {last['step']})")
  rows = table_values(lines, set(signs) | {"overall"}, 2)
  assert set(rows) == set(signs) | {"overall"}
  for name in signs:
    p = last[f"balance/{name}/p_plus"]
    assert 0 <= p <= 1
    assert rows[name] == [float(f"{p:.4f}"), float(f"{last[f'balance/{name}/entropy']:.4f}")]
    assert abs(last[f"balance/{name}/entropy"] - entropy_bits(p)) < 1e-9
  ps = [last[f"balance/{n}/p_plus"] for n in signs]
  assert abs(last["balance/overall/p_plus"] - np.mean(ps)) < 1e-9
  assert abs(last["balance/overall/entropy"] - np.mean([entropy_bits(p) for p in ps])) < 1e-9
  assert rows["overall"] == [float(f"{last['balance/overall/p_plus']:.4f}"),
                             float(f"{last['balance/overall/entropy']:.4f}")]


def test_history_columns_follow_the_logged_keys():
  # A distillation run: extra train/ keys, quant error; epoch 1 was not evaluated.
  history = [
      {"epoch": 1, "step": 10, "train/loss": 1.5, "train/accuracy": 0.25, "train/ce": 1.25,
       "train/kl": 0.125, "lr": 0.001, "images_per_sec": 100.0,
       "weights/overall/quant_error": 0.5, "weights/overall/mean_dist": 0.75},
      {"epoch": 2, "step": 20, "train/cosine": 0.0625, "train/loss": 1.0, "train/accuracy": 0.5,
       "train/ce": 0.875, "train/kl": 0.0625, "train/semantic": 0.03125, "train/detail": 2.0,
       "test/loss": 1.125, "test/accuracy": 0.375, "balance/overall/entropy": 0.96875,
       "weights/overall/quant_error": 0.25, "weights/overall/flip_ratio": 0.015625,
       "weights/overall/mean_dist": 0.5, "lr": 0.0005, "images_per_sec": 120.0},
  ]
  cols = inspect_cli.history_columns(history)
  assert [c[0] for c in cols] == [
      "epoch", "step", "train/loss", "train/accuracy", "train/ce", "train/kl", "train/cosine",
      "train/semantic", "train/detail", "test/loss", "test/accuracy", "balance/overall/entropy",
      "weights/overall/quant_error", "weights/overall/flip_ratio", "weights/overall/mean_dist",
      "lr", "images_per_sec"]
  assert [c[1] for c in cols][2:9] == ["train loss", "train acc", "train ce", "train kl",
                                       "train cosine", "train semantic", "train detail"]
  assert "e_q" in [c[1] for c in cols] and "act H" in [c[1] for c in cols]
  lines = inspect_cli.history_section(checkpoints.RunCheckpoint(
      workdir="w", step=20, params={}, batch_stats={}, opt_state=None, meta={}, config=None,
      history=history, steps=[20]))
  assert lines[2].split() == ["1", "10", "1.5000", "0.2500", "1.2500", "0.1250", "0.5000",
                              "0.7500", "0.001", "100.0"]  # blanks where epoch 1 has no value
  assert lines[3].split() == ["2", "20", "1.0000", "0.5000", "0.8750", "0.0625", "0.0625",
                              "0.0312", "2.0000", "1.1250", "0.3750", "0.9688", "0.2500",
                              "0.0156", "0.5000", "0.0005", "120.0"]
  assert "best test accuracy: 0.3750 (epoch 2, step 20)" in lines


def fake_run(history=(), config=None, params=None) -> checkpoints.RunCheckpoint:
  return checkpoints.RunCheckpoint(workdir="w", step=1, params=params or {}, batch_stats={},
                                   opt_state=None, meta={}, config=config,
                                   history=list(history), steps=[1])


def test_balance_of_a_method2_model_from_the_trainer_keys():
  # The keys the trainer writes (train_lib.balance_record) for the sign paths of a method-2
  # VGG-Small (from its sown intermediates, shapes only); the last record with balance keys
  # is used (epoch 3 was not evaluated).
  from bnn_jax import models, train_lib
  m = models.get_model("vgg_small_fda", width=0.125)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
  v = jax.eval_shape(lambda x: m.init(jax.random.key(0), x), x)
  signs = list(jax.eval_shape(lambda v, x: models.apply_with_features(m, v, x)[1]["presign"],
                              v, x))
  assert len(signs) == 5, signs
  ps = [0.5, 0.25, 1.0, 0.0, 0.75]
  history = [{"epoch": 1, "step": 5, **train_lib.balance_record(dict(zip(signs, [0.5] * 5)))},
             {"epoch": 2, "step": 10, **train_lib.balance_record(dict(zip(signs, ps)))},
             {"epoch": 3, "step": 15, "train/loss": 1.0}]
  record, layers = inspect_cli.balance_table(history)
  assert record is history[1]
  assert list(layers) == signs + ["overall"]
  for name, p in zip(signs, ps):
    assert layers[name] == {"p_plus": p, "entropy": entropy_bits(p)}
  assert layers["overall"]["p_plus"] == np.mean(ps)
  assert abs(layers["overall"]["entropy"] - np.mean([entropy_bits(p) for p in ps])) < 1e-12
  lines = inspect_cli.balance_section(fake_run(history))
  assert lines[0].startswith("epoch 2 (step 10)")
  rows = table_values(lines, set(signs) | {"overall"}, 2)
  assert rows["layer1/sign"] == [0.5, 1.0] and rows[signs[3]] == [0.0, 0.0]
  assert rows[signs[1]] == [0.25, float(f"{entropy_bits(0.25):.4f}")]
  assert rows["overall"] == [0.5, float(f"{np.mean([entropy_bits(p) for p in ps]):.4f}")]
  # no balance keys (a full-precision model, an older run): one explanatory line
  none = inspect_cli.balance_section(fake_run([{"epoch": 1, "test/accuracy": 0.5}]))
  assert len(none) == 1 and none[0].startswith("(no balance/ records")


def test_model_from_config_old_and_new_layouts():
  # new layout: options; num_classes resolved
  name, m = inspect_cli.build_model(fake_run(config={"model": {
      "name": "resnet18_fda", "width": 0.25, "num_classes": 100, "dtype": "float32",
      "sync_batch_norm": True, "options": {"binarize_weights": True, "groups": 2}}}))
  assert name == "resnet18_fda" and m.num_classes == 100 and m.width == 0.25
  # old layout: top-level binarize_weights, num_classes -1 (read from the classifier)
  params = {"head": {"kernel": np.zeros((64, 10), np.float32)}}
  name, m = inspect_cli.build_model(fake_run(config={"model": {
      "name": "reactnet18", "width": 0.125, "num_classes": -1, "binarize_weights": False}},
      params=params))
  assert name == "reactnet18" and m.num_classes == 10 and m.binarize_weights is False
  assert inspect_cli.build_model(fake_run(config={})) == (None, None)
  # a config the factory rejects: the summary section says so in one line
  lines = inspect_cli.summary_section(fake_run(config={"model": {
      "name": "reactnet18", "num_classes": 10, "options": {"no_such_option": 1}}}))
  assert len(lines) == 1 and lines[0].startswith("(no summary") and "no_such_option" in lines[0]


def test_weights_section_shows_quant_error_when_present():
  params = {"a": {"binary_kernel": np.ones((3, 3, 2, 4), np.float32)},
            "b": {"binary_kernel": np.ones((8, 4), np.float32)}}
  base = {"mean_abs": 1.0, "mean_dist": 0.0, "near_frac": 1.0, "tail_frac": 0.0, "zero_frac": 0.0}
  stats = {"a": {**base, "quant_error": 0.125}, "b": {**base, "quant_error": 0.25},
           "overall": {**base, "quant_error": 0.15625}}
  lines = inspect_cli.weights_section(fake_run(params=params), stats, 1.0, 0.1)
  header = next(line for line in lines if line.startswith("layer"))
  assert header.split()[-1] == "e_q" and "e_q = ||w - alpha sign(w)||^2" in lines[1]
  rows = table_values(lines, {"a", "b", "overall"}, 6)
  assert [r[-1] for r in (rows["a"], rows["b"], rows["overall"])] == [0.125, 0.25, 0.1562]
  without = inspect_cli.weights_section(fake_run(params=params),
                                        {k: base for k in stats}, 1.0, 0.1)
  assert without[1].startswith("layer") and "e_q" not in without[1]
  assert "alpha" not in without[0]


def test_curves_of_result_folders_without_checkpoints(run_and_params, tmp_path, capsys):
  # The tiny run's metrics.jsonl + config.json copied as experiments/results/ does it:
  # two "seeds" of one arm (the same file twice: min = max = mean).
  workdir, history, _ = run_and_params
  dirs = []
  for seed in (0, 1):
    d = tmp_path / f"tiny_s{seed}"
    d.mkdir()
    for f in ("metrics.jsonl", "config.json"):
      shutil.copy(os.path.join(workdir, f), d / f)
    dirs.append(str(d))
  png = tmp_path / "curves.png"
  assert inspect_cli.main(["--curves", str(png), *dirs]) == 0
  out = capsys.readouterr().out
  assert f"wrote {png}: 1 arm, 2 runs" in out and "tiny: tiny_s0, tiny_s1" in out
  assert png.stat().st_size > 0 and png_info(str(png))[2]["Description"] == \
      "metric=test/accuracy; arms=tiny"
  arms = inspect_cli.curves_lib.curves(dirs, None, metric="balance/overall/entropy")
  want = [r["balance/overall/entropy"] for r in history]
  np.testing.assert_array_equal(arms["tiny"].mean, want)
  np.testing.assert_array_equal(arms["tiny"].epochs, [1, 2])
