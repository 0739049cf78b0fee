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


def numpy_stats(w: np.ndarray, t: float = 1.0, near: float = 0.1) -> list[float]:
  a = np.abs(w)
  return [a.mean(), np.abs(a - t).mean(), (np.abs(a - t) <= near).mean(), (a > t).mean(),
          (w == 0).mean()]


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
  for r in history:   # epoch, step, train loss, train acc, test loss, test acc, ...
    row = rows[str(r["epoch"])]
    assert int(row[1]) == r["step"] == 8 * r["epoch"]
    assert row[5] == f"{r['test/accuracy']:.4f}"
  assert "mean||w|-t|" in section(out, "metrics history")[0]


def test_report_summary_section(cli_output):
  from bnn_jax.summary import summary
  out, _, _ = cli_output
  lines = section(out, "model summary")
  want = summary("reactnet18", width=0.125)
  total = next(line for line in lines if line.startswith("total")).split()
  assert total[1] == f"{want.params:,}" and total[2] == f"{want.binary_params:,}"
  assert f"binary-MAC ratio: {100 * want.binary_mac_ratio:.2f}%" in out


def test_report_layer_stats_equal_numpy(cli_output, run_and_params):
  out, _, _ = cli_output
  _, _, params = run_and_params
  kernels = binary_kernels(params[16])
  assert len(kernels) == 16  # ReActNet-18: one binary conv in each of 4 x 4 blocks
  rows = table_values(section(out, "latent binary weights"), set(kernels) | {"overall"}, 5)
  assert set(rows) == set(kernels) | {"overall"}
  for name, w in kernels.items():
    np.testing.assert_allclose(rows[name], numpy_stats(w), atol=5.01e-5, err_msg=name)
  everything = np.concatenate([w.ravel() for w in kernels.values()])
  np.testing.assert_allclose(rows["overall"], numpy_stats(everything), atol=5.01e-5)


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
  stats = table_values(section(out, "latent binary weights"), set(kernels), 5)
  for name, w in kernels.items():
    want = numpy_stats(w, t=0.04, near=0.01)
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
