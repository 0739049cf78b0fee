"""``bnn_jax.curves`` and ``python -m bnn_jax.inspect --curves`` on synthetic result folders.

Each run folder holds only metrics.jsonl and config.json (as experiments/results/<arm>_s<seed>/
does); the values are dyadic fractions so means over seeds are exact in float64.
"""

from __future__ import annotations

import json
import os
import struct
import sys

import numpy as np
import pytest

from bnn_jax import curves
from bnn_jax import inspect as inspect_cli

# run name -> {epoch: test/accuracy}; None: a record without it (not evaluated that epoch)
RUNS = {
    "m2_bnn_s0": {1: 0.25, 2: 0.5, 3: 0.625, 4: 0.75},
    "m2_bnn_s1": {1: 0.125, 2: 0.5, 3: 0.5, 4: 0.875},
    "m2_bnn_s2": {1: 0.375, 2: 0.25, 3: None, 4: 0.5},  # epoch 3 not evaluated
    "m2_fp_s0": {1: 0.5, 2: 0.75},
    "m2_fp_s1": {1: 0.25, 2: 0.75, 3: 0.875},           # one epoch further than s0
    "base": {1: 0.0625},                                 # no seed suffix: its own arm
}


def write_run(root, name: str, acc: dict) -> str:
  d = os.path.join(root, name)
  os.makedirs(d)
  with open(os.path.join(d, "metrics.jsonl"), "w") as f:
    for epoch, a in acc.items():
      r = {"epoch": epoch, "step": 10 * epoch, "train/loss": 1.0 / epoch, "lr": 0.1}
      if a is not None:
        r.update({"test/accuracy": a, "test/loss": 1.0 - a, "balance/overall/entropy": 1 - a / 2})
      f.write(json.dumps(r) + "\n")
  with open(os.path.join(d, "config.json"), "w") as f:
    json.dump({"model": {"name": "reactnet18", "width": 0.125, "num_classes": 10}}, f)
  return d


@pytest.fixture
def runs(tmp_path) -> list[str]:
  return [write_run(tmp_path, name, acc) for name, acc in RUNS.items()]


def png_text(path: str) -> dict:
  blob = open(path, "rb").read()
  assert blob[:8] == b"\x89PNG\r\n\x1a\n"
  pos, text = 8, {}
  while pos < len(blob):
    length, kind = struct.unpack(">I4s", blob[pos:pos + 8])
    if kind == b"tEXt":
      key, _, value = blob[pos + 8:pos + 8 + length].partition(b"\0")
      text[key.decode("latin-1")] = value.decode("latin-1")
    pos += 12 + length
  return text


def test_default_grouping_strips_the_seed_suffix():
  assert curves.arm_of("m2_bnn_s0") == "m2_bnn"
  assert curves.arm_of("m2_bnn_s12") == "m2_bnn"
  assert curves.arm_of("a_adam") == "a_adam"
  assert curves.arm_of("m2_s0_bnn") == "m2_s0_bnn"        # only a trailing suffix
  assert curves.arm_of("m2_bnn_s0", r"^(m2)_") == "m2"    # first group
  assert curves.arm_of("m2_bnn_s0", r"bnn|fp") == "bnn"   # no group: the match
  assert curves.arm_of("base", r"^(m2)_") == "base"       # no match: its own arm
  with pytest.raises(curves.CurvesError, match="not a regular expression"):
    curves.arm_of("x", "(")


def test_mean_min_max_over_seeds_per_epoch(runs, tmp_path):
  png = tmp_path / "out" / "top1.png"
  arms = curves.curves(runs, str(png))
  assert list(arms) == ["m2_bnn", "m2_fp", "base"]
  bnn = arms["m2_bnn"]
  assert bnn.runs == ["m2_bnn_s0", "m2_bnn_s1", "m2_bnn_s2"]
  np.testing.assert_array_equal(bnn.epochs, [1, 2, 3, 4])
  np.testing.assert_array_equal(bnn.mean, [0.25, 1.25 / 3, 0.5625, 2.125 / 3])
  assert bnn.mean[1] == np.mean([0.5, 0.5, 0.25]) and bnn.mean[3] == np.mean([0.75, 0.875, 0.5])
  np.testing.assert_array_equal(bnn.min, [0.125, 0.25, 0.5, 0.5])
  np.testing.assert_array_equal(bnn.max, [0.375, 0.5, 0.625, 0.875])
  np.testing.assert_array_equal(bnn.n, [3, 3, 2, 3])   # s2 has no test accuracy at epoch 3
  fp = arms["m2_fp"]
  np.testing.assert_array_equal(fp.epochs, [1, 2, 3])
  np.testing.assert_array_equal(fp.mean, [0.375, 0.75, 0.875])
  np.testing.assert_array_equal(fp.min, [0.25, 0.75, 0.875])
  np.testing.assert_array_equal(fp.max, [0.5, 0.75, 0.875])
  np.testing.assert_array_equal(fp.n, [2, 2, 1])
  assert arms["base"].best() == (1, 0.0625) and bnn.best() == (4, bnn.mean[3])
  assert png.stat().st_size > 1000
  assert png_text(str(png))["Description"] == "metric=test/accuracy; arms=m2_bnn,m2_fp,base"


def test_other_metric_and_group_by(runs):
  arms = curves.curves(runs, None, metric="balance/overall/entropy", group_by=r"^(m2)_")
  assert list(arms) == ["m2", "base"] and len(arms["m2"].runs) == 5
  np.testing.assert_array_equal(arms["m2"].epochs, [1, 2, 3, 4])
  e1 = [1 - RUNS[n][1] / 2 for n in RUNS if n.startswith("m2")]
  assert arms["m2"].mean[0] == np.mean(e1)
  assert arms["m2"].min[0] == min(e1) and arms["m2"].max[0] == max(e1)
  np.testing.assert_array_equal(arms["m2"].n, [5, 5, 3, 3])


def test_cli_writes_png_and_prints_the_arms(runs, tmp_path, capsys):
  png = tmp_path / "curves.png"
  assert inspect_cli.main(["--curves", str(png), *runs]) == 0
  out = capsys.readouterr().out.splitlines()
  assert png.stat().st_size > 0
  rows = {line.split()[0]: line.split() for line in out[3:] if line and line[0] != " "}
  # arm, runs at the last epoch, last epoch, mean, min, max there, best mean, its epoch
  assert rows["m2_bnn"] == ["m2_bnn", "3", "4", "0.7083", "0.5000", "0.8750", "0.7083", "4"]
  assert rows["m2_fp"] == ["m2_fp", "1", "3", "0.8750", "0.8750", "0.8750", "0.8750", "3"]
  assert "  m2_bnn: m2_bnn_s0, m2_bnn_s1, m2_bnn_s2" in out
  assert out[-1] == f"wrote {png}: 3 arms, 6 runs"
  # --metric and --group-by; a run without the metric is skipped and named
  png2 = tmp_path / "entropy.png"
  lonely = write_run(tmp_path, "no_eval_s0", {1: None})
  assert inspect_cli.main(["--curves", str(png2), *runs, lonely, "--metric",
                           "balance/overall/entropy", "--group-by", r"^(m2_\w+?)_s\d+$"]) == 0
  out = capsys.readouterr().out
  assert "skipped (no 'balance/overall/entropy' in metrics.jsonl): no_eval_s0" in out
  assert png_text(str(png2))["Description"] == \
      "metric=balance/overall/entropy; arms=m2_bnn,m2_fp,base"


def test_cli_errors_are_one_line(runs, tmp_path, capsys):
  def error(argv) -> str:
    assert inspect_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bnn_jax.inspect: error: "), err
    return err[0]

  png = str(tmp_path / "x.png")
  empty = tmp_path / "empty_s0"
  empty.mkdir()
  assert "has no metrics.jsonl" in error(["--curves", png, *runs, str(empty)])
  msg = error(["--curves", png, *runs, "--metric", "test/top5"])
  assert "no run has 'test/top5'" in msg and "test/accuracy" in msg and "train/loss" in msg
  assert "not --compare" in error(["--curves", png, *runs, "--compare", "3"])
  assert "not a regular expression" in error(["--curves", png, *runs, "--group-by", "("])
  assert "several go with --curves" in error(runs[:2])
  assert "go with --curves" in error([runs[0], "--metric", "test/loss"])
  assert not os.path.exists(png)


def test_missing_matplotlib_is_a_clear_user_error(runs, tmp_path, monkeypatch, capsys):
  # sys.modules[name] = None makes `import name` raise ImportError, as on a machine without it.
  monkeypatch.setitem(sys.modules, "matplotlib", None)
  rc = inspect_cli.main(["--curves", str(tmp_path / "c.png"), *runs])
  err = capsys.readouterr().err
  assert rc == 2 and not (tmp_path / "c.png").exists()
  assert "--curves needs matplotlib" in err and "pip install 'bnn_jax[plot]'" in err
