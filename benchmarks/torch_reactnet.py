"""ReActNet-18 (CIFAR) in PyTorch: the baseline for ``bench_train_step.py``.

The same network as ``bnn_jax.models.ReActNet18``, layer for layer, written the usual
PyTorch way (NCHW, float ``nn.Conv2d`` weights binarized in ``forward``):

- stem: 3x3 conv (3 -> 64w, no bias) -> BN;
- 4 stages x 4 blocks (64, 128, 256, 512) x width, stride 2 in the first block of stages 2-4;
  block: y = RPReLU(BN(BinaryConv(RSign(x))) + shortcut(x)), shortcut = identity or
  AvgPool2 -> 1x1 conv -> BN;
- head: global average pool -> Linear.

BinaryConv: the binarized input is padded with +1 (not 0), the kernel is
mean|w| per output channel (no gradient) * sign(w) with the clipped STE
(dL/dw = dL/dsign * 1[|w| <= 1]); RSign = sign(x + b_c) with the ApproxSign STE
(dL/dx = dL/dy * max(0, 2 - 2|x + b_c|)); sign(0) = +1. RPReLU = PReLU_c(x + b1_c) + b2_c.
Same parameter count as the Flax model (``bench_train_step.py`` asserts it).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

STAGES = (64, 128, 256, 512)


def scaled(channels: int, width: float) -> int:
  """As ``bnn_jax.models.common.scaled``."""
  return max(1, int(round(channels * width)))


def _sign(x: torch.Tensor) -> torch.Tensor:
  return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class ApproxSign(torch.autograd.Function):
  """forward sign(x); backward dL/dx = dL/dy * max(0, 2 - 2|x|) (Bi-Real Net)."""

  @staticmethod
  def forward(ctx, x):
    ctx.save_for_backward(x)
    return _sign(x)

  @staticmethod
  def backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return grad * torch.clamp(2.0 - 2.0 * x.abs(), min=0.0)


class ClippedSign(torch.autograd.Function):
  """forward sign(w); backward dL/dw = dL/dy * 1[|w| <= 1]."""

  @staticmethod
  def forward(ctx, w):
    ctx.save_for_backward(w)
    return _sign(w)

  @staticmethod
  def backward(ctx, grad):
    (w,) = ctx.saved_tensors
    return grad * (w.abs() <= 1.0).to(grad.dtype)


class BinaryConv2d(nn.Conv2d):
  """3x3 conv on an already binarized input, padded with +1; weights mean|w| * sign(w)."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__(cin, cout, 3, stride, padding=0, bias=False)

  def forward(self, x):
    alpha = self.weight.abs().mean(dim=(1, 2, 3), keepdim=True).detach()
    w = alpha * ClippedSign.apply(self.weight)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), value=1.0), w, stride=self.stride)


class RSign(nn.Module):
  def __init__(self, channels: int):
    super().__init__()
    self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

  def forward(self, x):
    return ApproxSign.apply(x + self.bias)


class RPReLU(nn.Module):
  def __init__(self, channels: int):
    super().__init__()
    self.shift_in = nn.Parameter(torch.zeros(1, channels, 1, 1))
    self.prelu = nn.PReLU(channels, init=0.25)
    self.shift_out = nn.Parameter(torch.zeros(1, channels, 1, 1))

  def forward(self, x):
    return self.prelu(x + self.shift_in) + self.shift_out


class ReActBlock(nn.Module):
  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.rsign = RSign(cin)
    self.conv = BinaryConv2d(cin, cout, stride)
    self.bn = nn.BatchNorm2d(cout)
    self.shortcut = nn.Identity()
    if stride != 1 or cin != cout:
      self.shortcut = nn.Sequential(
          nn.AvgPool2d(2) if stride != 1 else nn.Identity(),
          nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
    self.rprelu = RPReLU(cout)

  def forward(self, x):
    return self.rprelu(self.bn(self.conv(self.rsign(x))) + self.shortcut(x))


class ReActNet18(nn.Module):
  def __init__(self, num_classes: int = 10, width: float = 1.0, blocks_per_stage=(4, 4, 4, 4)):
    super().__init__()
    c = scaled(STAGES[0], width)
    self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
    blocks = []
    for s, (channels, n) in enumerate(zip(STAGES, blocks_per_stage)):
      for b in range(n):
        cout = scaled(channels, width)
        blocks.append(ReActBlock(c, cout, 2 if (s > 0 and b == 0) else 1))
        c = cout
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(c, num_classes)

  def forward(self, x):
    x = self.blocks(self.stem(x))
    return self.head(x.mean(dim=(2, 3)))


def num_params(model: nn.Module) -> int:
  """Trainable parameters (BN running statistics are buffers, not counted)."""
  return sum(p.numel() for p in model.parameters())


def flax_pairs(model: ReActNet18, tree) -> list[tuple[nn.Parameter, torch.Tensor]]:
  """(torch parameter, the Flax leaf in its layout) for every parameter of ``model``.

  ``tree`` is the Flax ``params`` of ``bnn_jax.models.ReActNet18`` or anything of the
  same structure (its gradient). Kernels HWIO -> OIHW, Dense (in, out) -> (out, in),
  per-channel biases -> (1, C, 1, 1). Every torch parameter is covered exactly once.
  """
  t = lambda a: torch.from_numpy(np.array(a, np.float32))
  conv = lambda k: t(k).permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
  channel = lambda v: t(v).reshape(1, -1, 1, 1)

  pairs = [(model.stem[0].weight, conv(tree["stem_conv"]["kernel"])),
           (model.stem[1].weight, t(tree["stem_bn"]["scale"])),
           (model.stem[1].bias, t(tree["stem_bn"]["bias"]))]
  names = sorted((k for k in tree if k.startswith("stage")),
                 key=lambda k: (int(k[5]), int(k[12:])))  # stage{s}_block{b}
  for block, name in zip(model.blocks, names, strict=True):
    p = tree[name]
    pairs += [(block.rsign.bias, channel(p["rsign"]["threshold"]["bias"])),
              (block.conv.weight, conv(p["binary_conv"]["binary_kernel"])),
              (block.bn.weight, t(p["bn"]["scale"])), (block.bn.bias, t(p["bn"]["bias"]))]
    if "shortcut_conv" in p:
      pairs += [(block.shortcut[1].weight, conv(p["shortcut_conv"]["kernel"])),
                (block.shortcut[2].weight, t(p["shortcut_bn"]["scale"])),
                (block.shortcut[2].bias, t(p["shortcut_bn"]["bias"]))]
    pairs += [(block.rprelu.shift_in, channel(p["rprelu"]["shift_in"]["bias"])),
              (block.rprelu.prelu.weight, t(p["rprelu"]["slope"])),
              (block.rprelu.shift_out, channel(p["rprelu"]["shift_out"]["bias"]))]
  pairs += [(model.head.weight, t(tree["head"]["kernel"]).T.contiguous()),
            (model.head.bias, t(tree["head"]["bias"]))]
  covered = {id(p) for p, _ in pairs}
  assert len(covered) == len(pairs) == len(list(model.parameters())), "parameter mapping"
  assert covered == {id(p) for p in model.parameters()}, "parameter mapping"
  for param, value in pairs:
    assert param.shape == value.shape, (tuple(param.shape), tuple(value.shape))
  return pairs


def load_flax_params(model: ReActNet18, params) -> None:
  """Copies the Flax ``ReActNet18`` parameters into ``model``."""
  with torch.no_grad():
    for param, value in flax_pairs(model, params):
      param.copy_(value.to(param.device))
