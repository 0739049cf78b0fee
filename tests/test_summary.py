"""bnn_jax.summary: parameter, memory and MAC counts against hand arithmetic.

All models are traced with jax.eval_shape (no compilation), so this file runs in seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnn_jax
from bnn_jax.layers import BinaryConv, BinaryDense
from bnn_jax.summary import ModelSummary, summary


def real_param_count(name: str, **kwargs) -> int:
  model = bnn_jax.get_model(name, **kwargs)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes["params"]))


def row(s: ModelSummary, name: str):
  return next(r for r in s.layers if r.name == name)


def test_reactnet18_width1_by_hand():
  s = summary("reactnet18")
  # Params. Block c_in -> c_out: RSign c_in + binary 3x3 conv 9 c_in c_out + BN 2 c_out
  # + RPReLU 3 c_out (+ 1x1 shortcut c_in c_out + BN 2 c_out in the first block of a stage).
  #   stem 3*3*3*64 + BN 128                                    =      1,856
  #   stage1 4 x (64 + 36,864 + 128 + 192)                      =    148,992
  #   stage2 (64 + 73,728 + 256 + 384 + 8,192 + 256)
  #          + 3 x (128 + 147,456 + 256 + 384)                  =    527,552
  #   stage3 (128 + 294,912 + 512 + 768 + 32,768 + 512)
  #          + 3 x (256 + 589,824 + 512 + 768)                  =  2,103,680
  #   stage4 (256 + 1,179,648 + 1,024 + 1,536 + 131,072 + 1,024)
  #          + 3 x (512 + 2,359,296 + 1,024 + 1,536)            =  8,401,664
  #   head 512*10 + 10                                          =      5,130
  assert s.params == 11_188_874 == real_param_count("reactnet18")
  # Binary: the 16 binary 3x3 kernels.
  binary = 4 * 36_864 + 73_728 + 3 * 147_456 + 294_912 + 3 * 589_824 + 1_179_648 + 3 * 2_359_296
  assert s.binary_params == binary == 10_985_472
  # MACs per 32x32 image: output pixels x kernel size.
  binary_macs = (4 * 1024 * 36_864 + 256 * (73_728 + 3 * 147_456) + 64 * (294_912 + 3 * 589_824)
                 + 16 * (1_179_648 + 3 * 2_359_296))
  float_macs = 1024 * 1_728 + 256 * 8_192 + 64 * 32_768 + 16 * 131_072 + 5_120
  assert (s.binary_macs, s.float_macs) == (binary_macs, float_macs) == (547_356_672, 8_066_048)
  assert s.binary_mac_ratio == pytest.approx(binary_macs / (binary_macs + float_macs))
  # Memory: every variable at 4 bytes (params + BN mean/var over 4,800 BN channels);
  # packed: binary kernels at 1 bit (all C_in are multiples of 32: no padding words).
  bn_stats = 2 * (64 + 4 * 64 + 5 * 128 + 5 * 256 + 5 * 512)
  assert s.float32_bytes == 4 * (11_188_874 + bn_stats)
  assert s.packed_bytes == 4 * (11_188_874 - binary + bn_stats) + binary // 8
  r = row(s, "stage2_block1/binary_conv")
  assert (r.kind, r.output_shape, r.params, r.binary_params) == \
      ("BinaryConv 3x3/2", (1, 16, 16, 128), 73_728, 73_728)
  assert (r.float32_bytes, r.packed_bytes, r.binary_macs, r.float_macs) == \
      (4 * 73_728, 73_728 // 8, 256 * 73_728, 0)
  r = row(s, "stage2_block1/shortcut_conv")
  assert (r.kind, r.params, r.binary_params, r.binary_macs, r.float_macs) == \
      ("Conv 1x1/1", 8_192, 0, 0, 256 * 8_192)
  r = row(s, "stage1_block1/bn")
  assert (r.params, r.float32_bytes, r.packed_bytes, r.binary_macs + r.float_macs) == \
      (128, 4 * 256, 4 * 256, 0)


def test_packed_bytes_pad_input_channels_to_whole_words():
  # width 0.125: stage 1 has 8 channels, stored in one 32-bit word per tap and output.
  s = summary("reactnet18", width=0.125)
  r = row(s, "stage1_block1/binary_conv")
  assert r.binary_params == 3 * 3 * 8 * 8
  assert r.packed_bytes == 3 * 3 * 8 * 1 * 4     # 9 taps x 8 outputs x 1 word
  r = row(s, "stage4_block2/binary_conv")       # 64 -> 64: two words, no padding
  assert r.packed_bytes == 3 * 3 * 64 * 64 // 8
  assert s.params == real_param_count("reactnet18", width=0.125)


@pytest.mark.parametrize("name", ["resnet18_bnn", "vgg_small_bnn", "reactnet18_bnfree",
                                  "resnet18_fp"])
def test_totals_equal_the_model_for_every_model(name):
  s = summary(name, width=0.25)
  assert s.params == real_param_count(name, width=0.25)
  assert s.binary_params <= s.params and s.packed_bytes <= s.float32_bytes
  if name.endswith("_fp"):
    assert s.binary_params == 0 and s.binary_macs == 0 and s.compression == 1.0
  else:
    assert s.binary_params > 0.9 * s.params and s.binary_mac_ratio > 0.9


def test_vgg_small_by_hand():
  # conv0..conv5 = 128-128-256-256-512-512 (conv0 real), 2x2 max-pool after conv1, 3, 5
  # (so convs 0-1 run at 32x32, 2-3 at 16x16, 4-5 at 8x8); head 4*4*512 = 8,192 -> 10.
  s = summary("vgg_small_bnn")
  binary = 9 * (128 * 128 + 128 * 256 + 256 * 256 + 256 * 512 + 512 * 512)
  assert s.binary_params == binary
  binary_macs = 9 * (1024 * 128 * 128 + 256 * 128 * 256 + 256 * 256 * 256 + 64 * 256 * 512
                     + 64 * 512 * 512)
  float_macs = 1024 * 27 * 128 + 8192 * 10
  assert (s.binary_macs, s.float_macs) == (binary_macs, float_macs)


class _Tiny(nn.Module):
  """A user's own model: real conv, binary conv, binary dense, real dense."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3), name="conv")(x)                              # 3*3*3*8 + 8
    x = BinaryConv(40, kernel_size=3, strides=2, name="bconv")(x)        # 3*3*8*40
    x = nn.BatchNorm(use_running_average=not train, name="bn")(x)         # 2*40 (+ 2*40 stats)
    x = x.mean(axis=(1, 2))
    x = BinaryDense(33, name="bdense")(x)                                # 40*33
    return nn.Dense(10, name="head")(x)                                  # 33*10 + 10


def test_user_module_by_hand():
  s = summary(_Tiny(), input_shape=(1, 8, 8, 3))
  assert [r.name for r in s.layers] == ["conv", "bconv", "bn", "bdense", "head"]
  assert s.params == 224 + 2880 + 80 + 1320 + 340
  assert s.binary_params == 2880 + 1320
  # bconv: 4x4 output pixels; words: ceil(8/32) = 1 per tap and output; bdense: 2 words x 33
  assert row(s, "bconv").packed_bytes == 9 * 40 * 4
  assert row(s, "bdense").packed_bytes == 33 * 2 * 4
  assert s.binary_macs == 16 * 2880 + 1320
  assert s.float_macs == 64 * 216 + 330
  assert s.float32_bytes == 4 * (224 + 2880 + 160 + 1320 + 340)
  table = str(s)
  assert "binary-MAC ratio:" in table and "bconv" in table and "BinaryConv 3x3/2" in table
  d = s.to_dict()
  json.dumps(d)
  assert d["totals"]["params"] == s.params and len(d["layers"]) == 5


def test_exported_from_the_package_and_import_stays_light():
  assert bnn_jax.summary("reactnet18", width=0.125).params == \
      summary("reactnet18", width=0.125).params
  # A fresh interpreter: `import bnn_jax` loads no Flax/TF/orbax; bnn_jax.summary is callable
  # even after the submodule bnn_jax.summary was imported by something else first.
  code = ("import sys, bnn_jax\n"
          "heavy = [m for m in ('flax', 'tensorflow', 'orbax', 'optax') if m in sys.modules]\n"
          "print('HEAVY', heavy)\n"
          "import bnn_jax.deploy, bnn_jax.summary\n"
          "from bnn_jax.summary import trace_modules\n"
          "print('PARAMS', bnn_jax.summary('reactnet18', width=0.125).params)\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "HEAVY []" in out.stdout
  assert f"PARAMS {real_param_count('reactnet18', width=0.125)}" in out.stdout
