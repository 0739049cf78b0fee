"""The ablation runner's arms are valid configs; the table builder computes what it says."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "experiments"))
import proxy  # noqa: E402
import tables  # noqa: E402

from bnn_jax import config as config_lib  # noqa: E402


@pytest.mark.parametrize("arm", sorted(proxy.ARMS))
def test_every_arm_is_a_valid_proxy_config(arm):
  model, options, overrides = proxy.ARMS[arm]
  c = proxy.proxy_config("cifar.tar.gz", model, options, 1, overrides, runs="/r")
  config_lib.validate(c)
  # Adam 2e-3 everywhere; the Bop arms train the binary kernels by Bop and the rest by it
  optimizer = "bop" if arm.startswith("bop_") else "adam"
  assert (c.model.width, c.batch_size, c.num_epochs, c.optim.name, c.optim.lr, c.seed) == (
      0.25, 128, 4, optimizer, 2e-3, 1)
  assert c.data.train_subset <= 0 and c.data.augment  # all 50,000 images, crop + flip
  if c.teacher.workdir:
    assert c.teacher.workdir.startswith("/r/")


def _write(results, name, accs, **last):
  os.makedirs(results / name)
  with open(results / name / "metrics.jsonl", "w") as f:
    for e, a in enumerate(accs):
      f.write(json.dumps({"epoch": e + 1, "test/accuracy": a,
                          **(last if e == len(accs) - 1 else {})}) + "\n")


def test_method2_table_means_ranges_and_gap(tmp_path):
  _write(tmp_path, "m2_fp_s0", [0.5, 0.80])
  _write(tmp_path, "m2_bnn_s0", [0.4, 0.70], **{"balance/overall/entropy": 0.9})
  _write(tmp_path, "m2_bnn_s1", [0.5, 0.74], **{"balance/overall/entropy": 0.8})
  text = tables.table("method2", str(tmp_path))
  bnn = next(line for line in text.splitlines() if line.startswith("| m2_bnn "))
  # mean per epoch (45, 72), final 72 (70-74), gap 80 - 72 = +8, entropy mean 0.85
  assert bnn == "| m2_bnn | 0, 1 | 45.00 / 72.00 | **72.00** (70.00-74.00) | +8.00 | 0.850 |"
  assert "| m2_all | (not run yet) |" in text
