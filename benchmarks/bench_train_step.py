"""Train-step images/s: bnn_jax ReActNet-18 (jitted, one device) vs the same network in PyTorch.

Both sides: BatchNorm in train mode, binary weights and activations with their STEs,
softmax cross-entropy, Adam (lr 1e-3, no weight decay), one step on a float batch that
is already in memory (no data pipeline: see bench_input_pipeline.py for that). JAX: the
step jitted with the train state donated (as the trainer's), NHWC, XLA's CPU thread pool
(all cores). PyTorch (``torch_reactnet.py``): eager, NCHW, float ``nn.Conv2d`` weights
binarized in ``forward`` with the same STEs, plain ``torch.optim.Adam``,
``torch.set_num_threads(--threads)`` (default: all cores).

Before timing, the PyTorch model is loaded with the JAX model's weights, and one
train-mode forward and backward pass on the same batch is compared: logits and the loss
gradient of every parameter must agree (the script stops otherwise), so both sides
compute the same function. The two sides are then timed interleaved in this process
(see ``common.time_interleaved``); medians are reported.

  python benchmarks/bench_train_step.py                         # width 0.25, batches 32,64,128
  python benchmarks/bench_train_step.py --xla-flags=            # the same, XLA's default flags
  python benchmarks/bench_train_step.py --width 1 --batches 32,128 --steps 1 --repeats 5
  python benchmarks/bench_train_step.py --width 1 --batches 128,256 --torch-device cuda \
      --xla-flags= --dtypes float32,bfloat16                                  # GPU

``--dtypes bfloat16``: the JAX model computes in bfloat16 (``model.dtype``; parameters, BN
statistics and Adam stay float32, as in the trainer) and the PyTorch step runs under
``torch.autocast(dtype=torch.bfloat16)``. The same-function check is made once, in float32
at the highest matmul precision (GPUs otherwise use TF32 for float32 convolutions).
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

import common
import torch_reactnet
from bnn_jax import losses, models, train_lib


def torch_runner(model, opt, x, y, dtype: str = "float32"):
  """n eager PyTorch train steps (forward, cross-entropy, backward, Adam); ``dtype``
  bfloat16 runs forward and loss under autocast."""
  autocast = dtype == "bfloat16"

  def run(n: int) -> None:
    for _ in range(n):
      opt.zero_grad(set_to_none=True)
      with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = F.cross_entropy(model(x), y)
      loss.backward()
      opt.step()
    if x.is_cuda:
      torch.cuda.synchronize()
  return run


def check_same_function(model, state, torch_model, batch: int = 16) -> tuple[bool, float, float]:
  """Loads the JAX weights into ``torch_model``; compares one train-mode forward and backward
  with ``common.same_function`` (logits, and the whole gradient of the mean cross-entropy)."""
  torch_reactnet.load_flax_params(torch_model, state.params)
  rng = np.random.RandomState(0)
  x = rng.randn(batch, 32, 32, 3).astype(np.float32)
  y = rng.randint(0, 10, batch).astype(np.int32)

  def loss_fn(params):
    logits, _ = model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                            train=True, mutable=["batch_stats"])
    return losses.cross_entropy(logits, y, 10).mean(), logits

  with jax.default_matmul_precision("highest"):
    (_, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(state.params)
  torch_model.train()
  torch_model.zero_grad(set_to_none=True)
  out = torch_model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
  F.cross_entropy(out, torch.from_numpy(y).long()).backward()
  pairs = list(torch_reactnet.flax_pairs(torch_model, grads))
  result = common.same_function(logits, out.detach().numpy(),
                                [np.asarray(g) for _, g in pairs],
                                [param.grad.numpy() for param, _ in pairs])
  torch_model.zero_grad(set_to_none=True)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_flags(parser, steps=2, repeats=7)
  parser.add_argument("--batches", default="32,64,128", help="comma-separated batch sizes")
  parser.add_argument("--threads", type=int, default=os.cpu_count(),
                      help="torch.set_num_threads (default: all cores, as XLA uses)")
  parser.add_argument("--torch-device", default="cpu", help="cpu or cuda")
  parser.add_argument("--dtypes", default="float32",
                      help="comma-separated compute dtypes: float32, bfloat16")
  parser.add_argument("--xla-flags", default=common.TUNED_XLA_FLAGS,
                      help="appended to $XLA_FLAGS for the JAX side (default: the CPU tuning "
                           "of common.TUNED_XLA_FLAGS; '' for XLA's defaults)")
  args = parser.parse_args()
  common.use_xla_flags(args.xla_flags)
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  dev = torch.device(args.torch_device)

  model = common.reactnet(args.width)
  tx = optax.adam(1e-3)
  torch_model = torch_reactnet.ReActNet18(10, args.width)
  template = common.init_state(model, tx)
  n_jax = common.count_params(template.params)
  n_torch = torch_reactnet.num_params(torch_model)
  if n_jax != n_torch:
    raise SystemExit(f"parameter counts differ: jax {n_jax}, torch {n_torch}")
  same, logits_diff, grad_diff = check_same_function(model, template, torch_model)
  if not same:
    raise SystemExit(f"the two models compute different functions: logits differ by "
                     f"{logits_diff:.2e} (relative to the largest), the whole gradient by "
                     f"{grad_diff:.2e} (relative norm); common.same_function allows 1e-3 and "
                     f"1e-2")

  step = common.jit_float_step()
  rows, spreads = [], []
  dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
  for dtype, batch in [(d, b) for d in dtypes for b in common.batch_sizes(args.batches)]:
    if dtype not in ("float32", "bfloat16"):
      raise SystemExit(f"--dtypes: {dtype!r} is not float32 or bfloat16")
    rng = np.random.RandomState(batch)
    x = rng.randn(batch, 32, 32, 3).astype(np.float32)
    y = rng.randint(0, 10, batch).astype(np.int32)
    state = common.fresh_copy(template)
    if dtype != "float32":
      state = state.replace(apply_fn=models.get_model(
          "reactnet18", num_classes=10, width=args.width, dtype=dtype).apply)
    torch_model = torch_reactnet.ReActNet18(10, args.width)
    torch_reactnet.load_flax_params(torch_model, template.params)
    torch_model.to(dev).train()
    opt = torch.optim.Adam(torch_model.parameters(), lr=1e-3)
    x_torch = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(dev)  # NCHW
    y_torch = torch.from_numpy(y).long().to(dev)
    runners = {"jax": common.step_runner(step, state, jnp.asarray(x), jnp.asarray(y)),
               "torch": torch_runner(torch_model, opt, x_torch, y_torch, dtype)}
    t = common.time_interleaved(runners, args.steps, args.repeats, args.warmup)
    jax_ips, torch_ips = batch / t.median("jax"), batch / t.median("torch")
    jax_best, torch_best = batch / t.best("jax"), batch / t.best("torch")
    rows.append((dtype, batch, jax_ips, torch_ips, jax_ips / torch_ips,
                 jax_best, torch_best, jax_best / torch_best))
    spreads.append(f"{dtype} batch {batch}: {t.spread()}")
    del state, runners  # free the buffers before the next batch

  common.print_table(
      f"Train step, ReActNet-18 width {args.width:g} ({n_jax:,} params), images/s",
      ("dtype", "batch", "jax img/s", "torch img/s", "ratio jax/torch", "jax best", "torch best",
       "ratio best"), rows,
      notes=(f"torch {torch.__version__} eager on {args.torch_device}, "
             f"{torch.get_num_threads()} threads. img/s: median of {args.repeats} alternating "
             f"repeats of {args.steps} steps after {args.warmup} warm-up steps; best: the "
             f"fastest repeat. Logits of the two models with the same weights agree to "
             f"{logits_diff:.1e} (relative to the largest), the whole loss gradient to "
             f"{grad_diff:.1e} (relative norm).",
             "Range over repeats, ms/step: " + " | ".join(spreads) + "."))


if __name__ == "__main__":
  main()
