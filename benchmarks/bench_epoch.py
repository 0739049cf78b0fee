"""Whole training epochs: the real trainer against a PyTorch loop with its own data path.

What a user waits for is the epoch, not the step. Both sides train ReActNet-18 (width
``--width``) on the same real CIFAR-10 training images (``--train-subset`` of them, class
balanced, from the archive), batch ``--batch``, Adam 2e-3 with cosine decay, pad-4 random
crop + horizontal flip per image, normalization, cross-entropy:

jax:    ``bnn_jax.train_lib.train_and_evaluate`` itself (pmapped step on the CPU device,
        uint8 data resident on the device, augmentation inside the step, the loop's
        per-step key, logging, metrics and checkpoint at each epoch end). Its epoch time is
        ``epoch_seconds`` from metrics.jsonl: the training loop only, as for torch.
step:   the same trainer step alone, fed as the loop feeds it (``common.train_step_runner``:
        host index row and ``fold_in`` key per step), for as many steps as an epoch has: the
        difference to "jax" is what the loop costs around the step. Likewise for torch, its
        step alone on one ready float batch: the difference is its data path.
torch:  ``torch_reactnet.ReActNet18`` (eager, NCHW), ``torch.optim.Adam`` + a per-step
        ``CosineAnnealingLR``, the uint8 images in a tensor, per batch: index, zero-pad 4,
        random crop and flip per image (batched tensor ops in the training thread: on 2 cores
        DataLoader workers would only take cores from the step), normalize.

The sides alternate epoch by epoch in this process: the trainer's ``on_epoch_end`` hook runs
one PyTorch epoch after each trainer epoch, so jax epoch k and torch epoch k see the same
machine state (on a shared machine, load drifts over minutes: run one after the other, the
sides once measured 1.25x and 0.97x on the same day). The first pair is a warm-up (JAX
compiles in it) and is not reported; the table gives the median of the other epochs and the
median of the per-pair ratios, each pair's ratio in the notes.

  python benchmarks/bench_epoch.py                                  # width 0.25, 12,800 images
  python benchmarks/bench_epoch.py --train-subset 50000 --epochs 2  # full CIFAR-10 epochs
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time

import jax
import numpy as np
import torch
import torch.nn.functional as F

import bench_train_step
import common
import torch_reactnet
from bnn_jax import checkpoints, data, objectives, optim, train_lib
from bnn_jax.config import base_config, set_model


def trainer_config(args):
  c = base_config()
  set_model(c, "reactnet18")
  c.model.width = args.width
  c.data.path = args.data
  c.data.train_subset = args.train_subset
  c.data.test_subset = 1000
  c.batch_size = args.batch
  c.num_epochs = args.epochs
  c.optim.name = "adam"
  c.optim.lr = 2e-3
  c.optim.schedule = "cosine"
  c.progress_bar = False
  return c


def jax_epochs(config, after_each_epoch=None) -> list[float]:
  """Trains with the real trainer, calling ``after_each_epoch()`` at each epoch end; returns
  the epoch_seconds of every epoch."""
  workdir = tempfile.mkdtemp(prefix="bench_epoch_")
  hook = None if after_each_epoch is None else (lambda record: after_each_epoch())
  train_lib.train_and_evaluate(config, workdir, on_epoch_end=hook)
  return [r["epoch_seconds"] for r in checkpoints.read_metrics(workdir)]


def jax_step_alone(config, ds, steps: int) -> float:
  """Seconds for ``steps`` calls of the trainer's pmapped step, fed as the loop feeds it."""
  devices = jax.local_devices()[:1]
  put = lambda tree: common.replicate(tree, devices)
  spe = data.steps_per_epoch(len(ds.train_labels), config.batch_size)
  tx, _ = optim.build_optimizer(config, spe)
  state = train_lib.create_state(train_lib.build_model(config, ds.num_classes), tx,
                                 jax.random.key(config.seed))
  step = jax.pmap(train_lib.make_train_step(objectives.classification(ds.num_classes),
                                            mean=tuple(ds.mean), std=tuple(ds.std),
                                            augment=True),
                  axis_name=train_lib.AXIS, devices=devices, donate_argnums=(0, 1),
                  in_axes=(0, 0, 0, 0, 0, None))
  sums = {k: np.zeros((), np.float32) for k in ("loss", "accuracy", "nonfinite")}
  indices = data.train_batch_indices(config.seed, 0, len(ds.train_labels), config.batch_size, 1)
  run = common.train_step_runner(step, put(state), put(sums), put(ds.train_images),
                                 put(ds.train_labels), indices)
  run(2)  # compiles (twice: see common.add_flags)
  t0 = time.perf_counter()
  run(steps)
  return time.perf_counter() - t0


class TorchLoop:
  """A plain PyTorch training loop over the same uint8 images; ``epoch()`` trains one epoch
  and returns its seconds.

  On ``device`` (the uint8 images live there and are cropped there, as the trainer keeps its
  data on its device); ``dtype="bfloat16"`` runs forward and loss under
  ``torch.autocast``; ``compile`` wraps the model in ``torch.compile``; ``channels_last``
  stores the model and every batch channels-last (the layout cuDNN prefers for bf16).
  """

  def __init__(self, args, ds, device: str = "cpu", dtype: str = "float32",
               compile: bool = False, channels_last: bool = False):
    torch.manual_seed(0)
    self.batch = args.batch
    self.device = torch.device(device)
    self.autocast = dtype == "bfloat16"
    self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
    self.model = torch_reactnet.ReActNet18(ds.num_classes, args.width).to(
        self.device, memory_format=self.memory_format)
    self.forward = torch.compile(self.model) if compile else self.model
    self.steps = len(ds.train_labels) // args.batch
    self.opt = torch.optim.Adam(self.model.parameters(), lr=2e-3)
    self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt,
                                                            T_max=self.steps * args.epochs)
    to = lambda a: torch.from_numpy(a).to(self.device)
    self.images = to(ds.train_images).permute(0, 3, 1, 2).contiguous()  # uint8, NCHW
    self.labels = to(ds.train_labels.astype(np.int64))
    self.mean = torch.tensor(ds.mean, device=self.device).view(1, 3, 1, 1)
    self.std = torch.tensor(ds.std, device=self.device).view(1, 3, 1, 1)
    self.model.train()

  def batch_at(self, idx):
    """Pad 4, random crop and flip per image, normalize: [B, 3, 32, 32] float."""
    dev, n = self.device, len(idx)
    rows = torch.arange(32, device=dev).view(1, 32)
    x = F.pad(self.images[idx], (4, 4, 4, 4))                     # [B, 3, 40, 40] uint8
    dy, dx = torch.randint(0, 9, (2, n), device=dev)
    ys = (dy.view(-1, 1) + rows).view(-1, 1, 32, 1)              # per-image crop rows
    xs = (dx.view(-1, 1) + rows)
    flip = torch.rand(n, device=dev) < 0.5
    xs = torch.where(flip.view(-1, 1), xs.flip(1), xs).view(-1, 1, 1, 32)
    b = torch.arange(n, device=dev).view(-1, 1, 1, 1)
    x = x[b, torch.arange(3, device=dev).view(1, 3, 1, 1), ys, xs]
    x = (x.float() / 255.0 - self.mean) / self.std
    return x.contiguous(memory_format=self.memory_format)

  def epoch(self) -> float:
    t0 = time.perf_counter()
    order = torch.randperm(len(self.labels), device=self.device)
    for i in range(self.steps):
      idx = order[i * self.batch:(i + 1) * self.batch]
      x = self.batch_at(idx)
      self.opt.zero_grad(set_to_none=True)
      with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
        loss = F.cross_entropy(self.forward(x), self.labels[idx])
      loss.backward()
      self.opt.step()
      self.sched.step()
    if self.device.type == "cuda":
      torch.cuda.synchronize()
    return time.perf_counter() - t0


def torch_step_alone(args, ds, steps: int) -> float:
  """Seconds for ``steps`` PyTorch train steps on one fixed, ready float batch (no data path)."""
  torch.manual_seed(0)
  model = torch_reactnet.ReActNet18(ds.num_classes, args.width)
  opt = torch.optim.Adam(model.parameters(), lr=2e-3)
  x = torch.randn(args.batch, 3, 32, 32)
  y = torch.from_numpy(ds.train_labels[:args.batch].astype(np.int64))
  model.train()
  run = bench_train_step.torch_runner(model, opt, x, y)
  run(2)
  t0 = time.perf_counter()
  run(steps)
  return time.perf_counter() - t0


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--width", type=float, default=0.25)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--train-subset", type=int, default=12800,
                      help="training images per epoch (50000: the full CIFAR-10)")
  parser.add_argument("--epochs", type=int, default=5,
                      help="epochs per side, alternating; the first pair is a warm-up")
  parser.add_argument("--threads", type=int, default=os.cpu_count(),
                      help="torch.set_num_threads (default: all cores, as XLA uses)")
  parser.add_argument("--no-step", action="store_true", help="skip the step-alone rows")
  parser.add_argument("--xla-flags", default=common.TUNED_XLA_FLAGS,
                      help="appended to $XLA_FLAGS (default: the CPU tuning train.py adds)")
  common.add_data_flag(parser)
  args = parser.parse_args()
  if args.epochs < 2:
    parser.error("--epochs must be at least 2 (the first is a warm-up)")
  common.use_xla_flags(args.xla_flags)
  torch.set_num_threads(args.threads)

  config = trainer_config(args)
  ds = data.load_dataset(config.data)
  n = len(ds.train_labels)
  steps = data.steps_per_epoch(n, args.batch)
  images = steps * args.batch

  torch_loop, torch_s = TorchLoop(args, ds), []
  jax_s = jax_epochs(config, after_each_epoch=lambda: torch_s.append(torch_loop.epoch()))
  step_s = None if args.no_step else jax_step_alone(config, ds, steps)
  torch_step_s = None if args.no_step else torch_step_alone(args, ds, steps)

  jax_t = statistics.median(jax_s[1:])
  torch_t = statistics.median(torch_s[1:])
  pair_ratios = [t / j for j, t in zip(jax_s[1:], torch_s[1:])]
  rows = [("jax (train_lib.train_and_evaluate)", jax_t, images / jax_t, torch_t / jax_t),
          ("torch (plain loop)", torch_t, images / torch_t, 1.0)]
  if step_s is not None:
    rows.insert(1, ("jax step alone, as fed by the loop", step_s, images / step_s,
                    torch_t / step_s))
    rows.append(("torch step alone, one ready batch", torch_step_s, images / torch_step_s,
                 torch_t / torch_step_s))
  fmt = lambda xs: ", ".join(f"{x:.1f}" for x in xs)
  common.print_table(
      f"Training epochs, ReActNet-18 width {args.width:g}, batch {args.batch}, {images:,} "
      f"real CIFAR-10 images per epoch ({steps} steps), Adam + cosine, crop + flip",
      ("contender", "s/epoch", "img/s", "speed vs torch"), rows,
      notes=(f"Median of epochs 2-{args.epochs} (epoch 1 is a warm-up); the sides alternate "
             f"epoch by epoch. Every epoch, s: jax {fmt(jax_s)}; torch {fmt(torch_s)}. "
             f"Per-pair speed vs torch: {', '.join(f'{r:.2f}' for r in pair_ratios)} "
             f"(median {statistics.median(pair_ratios):.2f}, range {min(pair_ratios):.2f}-"
             f"{max(pair_ratios):.2f})."
             + ("" if step_s is None else f" Steps alone: jax {step_s:.1f} s, torch "
                                           f"{torch_step_s:.1f} s for {steps} steps."),
             f"torch {torch.__version__}, {torch.get_num_threads()} threads."))
  if not math.isfinite(jax_t) or not math.isfinite(torch_t):
    raise SystemExit("a side did not time")


if __name__ == "__main__":
  main()
