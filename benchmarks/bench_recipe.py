"""Trainer epochs of the full ReActNet-18 recipe against its PyTorch twin, per dtype and batch.

The question of the GPU-speed work (docs/BENCHMARKS.md section 9): how many images/s does
the real trainer (``train_lib.train_and_evaluate``, the recipe of
``configs/reactnet18_cifar10.py``: width 1, Adam + cosine, crop + flip on the device) reach in
float32 and bfloat16 at batch 256 and 512, and how does that compare with the PyTorch
ReActNet-18 a user would pick (``torch_reactnet.py``, its data on the same device): eager and
``torch.compile``, float32 and bf16 autocast, channels-last.

For every (batch, dtype), the first batch's rows first: the trainer runs ``--epochs`` epochs;
after each, every PyTorch variant of the same dtype (``torch.compile`` only at
``--compiled-batches``: its compile takes about a minute per row) trains one epoch (``bench_epoch.TorchLoop``), so the sides alternate
on the same machine state. Epoch 1 is a warm-up (compiles) and is not reported; the table gives
the median img/s over the other epochs, and each jax/torch ratio. Before any timing, the two
models are checked to compute the same function in float32 (logits and the whole gradient,
``bench_train_step.check_same_function``). Writes ``recipe_bench.json`` and
``recipe_bench.md`` to ``--out``.

  python benchmarks/bench_recipe.py --out $OUT                    # GPU: 2 dtypes x 2 batches
  python benchmarks/bench_recipe.py --out /tmp/b --tiny           # CPU smoke test (small sizes)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import types

import torch

import bench_epoch
import bench_train_step
import common
import torch_reactnet
from bnn_jax import data

TORCH_VARIANTS = ("eager", "compiled")


def trainer_config(args, dtype: str, batch: int):
  """The ReActNet-18 recipe's trainer settings (bench_epoch's: Adam 2e-3, cosine, crop +
  flip) at this dtype and batch."""
  c = bench_epoch.trainer_config(types.SimpleNamespace(
      width=args.width, data=args.data, train_subset=args.train_subset, batch=batch,
      epochs=args.epochs))
  c.model.dtype = dtype
  c.data.test_subset = args.test_subset
  c.checkpoint.every_epochs = args.epochs       # untimed host work: once, at the end
  c.weight_stats_every_epochs = args.epochs
  return c


def bench_one(args, ds, dtype: str, batch: int) -> dict:
  """One (dtype, batch): trainer epochs alternating with one epoch of each torch variant."""
  loop_args = types.SimpleNamespace(batch=batch, width=args.width, epochs=args.epochs)
  variants = [v for v in args.torch
              if v != "compiled" or not args.compiled_batches or batch in args.compiled_batches]
  loops = {v: bench_epoch.TorchLoop(loop_args, ds, device=args.torch_device, dtype=dtype,
                                    compile=v == "compiled", channels_last=args.channels_last)
           for v in variants}
  torch_s = {v: [] for v in loops}

  def torch_epochs():
    for v, loop in loops.items():
      torch_s[v].append(loop.epoch())

  jax_s = bench_epoch.jax_epochs(trainer_config(args, dtype, batch), torch_epochs)
  images = data.steps_per_epoch(len(ds.train_labels), batch) * batch
  ips = lambda seconds: images / statistics.median(seconds[1:])
  row = {"dtype": dtype, "batch": batch, "images_per_epoch": images,
         "jax_epoch_s": jax_s, "jax_img_s": ips(jax_s)}
  for v, seconds in torch_s.items():
    row[f"torch_{v}_epoch_s"] = seconds
    row[f"torch_{v}_img_s"] = ips(seconds)
    row[f"ratio_vs_torch_{v}"] = row["jax_img_s"] / row[f"torch_{v}_img_s"]
  return row


def markdown(result: dict) -> str:
  variants = result["torch_variants"]
  head = ["dtype", "batch", "jax img/s", "jax s/epoch"]
  for v in variants:
    head += [f"torch {v} img/s", f"jax / torch {v}"]
  lines = [f"### Trainer epochs, ReActNet-18 width {result['width']:g}, "
           f"{result['train_images']:,} CIFAR-10 images ({result['machine']}, {result['date']})",
           "", "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
  for r in result["rows"]:
    cells = [r["dtype"], str(r["batch"]), f"{r['jax_img_s']:,.0f}",
             f"{statistics.median(r['jax_epoch_s'][1:]):.2f}"]
    for v in variants:
      measured = f"torch_{v}_img_s" in r
      cells += [f"{r[f'torch_{v}_img_s']:,.0f}" if measured else "-",
                f"{r[f'ratio_vs_torch_{v}']:.2f}" if measured else "-"]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", f"torch {result['torch']} on {result['torch_device']}"
            f"{', channels-last' if result['channels_last'] else ''}; bfloat16 rows: the "
            f"trainer's model.dtype=bfloat16 against torch.autocast(bfloat16). Median of epochs "
            f"2-{result['epochs']} (epoch 1 compiles). Same function checked in float32 first: "
            f"logits agree to {result['same_function']['logits']:.1e}, the gradient to "
            f"{result['same_function']['gradient']:.1e}."]
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--width", type=float, default=1.0)
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--batches", default="256,512")
  parser.add_argument("--train-subset", type=int, default=0,
                      help="training images per epoch (0: all 50,000)")
  parser.add_argument("--test-subset", type=int, default=1000)
  parser.add_argument("--epochs", type=int, default=3,
                      help="epochs per (dtype, batch); the first is a warm-up")
  parser.add_argument("--torch", default=None,
                      help=f"comma-separated PyTorch variants: {', '.join(TORCH_VARIANTS)} "
                           f"(default both; eager with --tiny)")
  parser.add_argument("--compiled-batches", default="256",
                      help="batch sizes with a torch.compile row ('' for all): its compile "
                           "takes about a minute per (dtype, batch)")
  parser.add_argument("--torch-device", default="cuda" if torch.cuda.is_available() else "cpu")
  parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
  parser.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
  parser.add_argument("--tiny", action="store_true",
                      help="CPU smoke test: width 0.125, 1,024 images, batch 128, 2 epochs, eager")
  common.add_data_flag(parser)
  args = parser.parse_args(argv)
  if args.tiny:
    args.width, args.train_subset, args.test_subset, args.epochs = 0.125, 1024, 256, 2
    args.batches = "128"
  args.torch = args.torch or ("eager" if args.tiny else ",".join(TORCH_VARIANTS))
  args.torch = [v.strip() for v in args.torch.split(",") if v.strip()]
  args.compiled_batches = common.batch_sizes(args.compiled_batches) \
      if args.compiled_batches.strip() else []
  dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
  bad = [v for v in args.torch if v not in TORCH_VARIANTS] + \
      [d for d in dtypes if d not in ("float32", "bfloat16")]
  if bad:
    parser.error(f"unknown --torch variant or --dtypes value(s) {bad}; valid: "
                 f"{', '.join(TORCH_VARIANTS)} and float32, bfloat16")
  if args.epochs < 2:
    parser.error("--epochs must be at least 2 (the first is a warm-up)")

  ds = data.load_dataset(trainer_config(args, "float32", 128).data)
  model = common.reactnet(args.width)
  import optax
  same, logits_diff, grad_diff = bench_train_step.check_same_function(
      model, common.init_state(model, optax.adam(1e-3)),
      torch_reactnet.ReActNet18(10, args.width))
  if not same:
    raise SystemExit(f"the two models compute different functions: logits {logits_diff:.2e}, "
                     f"gradient {grad_diff:.2e} (common.same_function allows 1e-3 and 1e-2)")
  result = {"date": time.strftime("%Y-%m-%d"), "machine": common.machine_line(),
            "torch": torch.__version__, "torch_device": args.torch_device,
            "channels_last": args.channels_last, "torch_variants": args.torch,
            "width": args.width, "train_images": len(ds.train_labels), "epochs": args.epochs,
            "same_function": {"logits": logits_diff, "gradient": grad_diff}, "rows": []}
  for batch in common.batch_sizes(args.batches):    # the first batch's rows first: with a
    for dtype in dtypes:                              # time-out, the headline rows are in
      result["rows"].append(bench_one(args, ds, dtype, batch))
      text = markdown(result)           # written after every row: a time-out keeps the rest
      common.write_report(args.out, "recipe_bench", result, text)
  print(text)
  return result


if __name__ == "__main__":
  main()
