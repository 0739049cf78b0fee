"""Aggregate training throughput of 1, 2, 4 full runs sharing one accelerator as processes.

Should the full-scale queue (experiments/full_scale.py) run its runs one after another, or
several at once? For each count K in ``--procs``, K ``train.py`` processes of the same recipe
start together, each in its own workdir, with ``--epochs`` epochs and
``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (they share the GPU's memory). Each process's rate is
the median ``images_per_sec`` of its epochs 2.. (epoch 1 compiles); the aggregate is their
sum, which the table compares with K = 1. Writes ``concurrency.json`` and ``concurrency.md``
to ``--out``.

  python benchmarks/bench_concurrency.py --out $OUT --data /tmp/c10.tar.gz          # GPU
  python benchmarks/bench_concurrency.py --out /tmp/c --tiny --procs 1,2            # CPU test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.width=0.125", "--config.data.train_subset=512",
        "--config.data.test_subset=256", "--config.batch_size=64"]


def run_together(count: int, args, root: str) -> list[dict]:
  """Starts ``count`` train.py processes at once; returns each one's metrics records."""
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  procs = []
  for i in range(count):
    workdir = os.path.join(root, f"k{count}_{i}")
    cmd = [sys.executable, os.path.join(REPO, "train.py"), "--config", args.config,
           "--workdir", workdir, f"--config.data.path={args.data}",
           f"--config.num_epochs={args.epochs}", "--config.progress_bar=False",
           f"--config.seed={i}", *(TINY if args.tiny else []), *args.set]
    log = open(workdir + ".log", "w")
    procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env),
                  log, workdir))
  records = []
  for proc, log, workdir in procs:
    proc.wait()
    log.close()
    if proc.returncode != 0:
      with open(workdir + ".log") as f:
        tail = f.read()[-2000:]
      raise SystemExit(f"train.py ({count} at once) exited {proc.returncode}:\n{tail}")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      records.append([json.loads(line) for line in f if line.strip()])
  return records


def summarize(count: int, records: list[list[dict]]) -> dict:
  """Per-process median images/s over epochs 2.., and their sum."""
  rates = [statistics.median(r["images_per_sec"] for r in recs[1:]) for recs in records]
  return {"processes": count, "per_process_img_s": rates, "aggregate_img_s": sum(rates)}


def markdown(result: dict) -> str:
  base = result["rows"][0]["aggregate_img_s"] / result["rows"][0]["processes"]
  lines = [f"### Runs sharing one device: {result['config']} ({result['device']}, "
           f"{result['date']})", "",
           "| processes | img/s each | aggregate img/s | vs one run |", "|---:|---:|---:|---:|"]
  for r in result["rows"]:
    each = ", ".join(f"{x:,.0f}" for x in r["per_process_img_s"])
    lines.append(f"| {r['processes']} | {each} | {r['aggregate_img_s']:,.0f} | "
                 f"{r['aggregate_img_s'] / base:.2f}x |")
  lines += ["", f"Median images/s of epochs 2-{result['epochs']} per process (epoch 1 "
                f"compiles); overrides: {' '.join(result['overrides']) or 'none'}."]
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/reactnet18_cifar10.py")
  common.add_data_flag(parser)
  parser.add_argument("--procs", default="1,2,4", help="comma-separated process counts")
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--set", nargs="*", default=[],
                      help="extra train.py flags, e.g. --config.model.dtype=bfloat16")
  parser.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
  parser.add_argument("--tiny", action="store_true", help="width 0.125, 512 images: CPU test")
  args = parser.parse_args(argv)
  counts = [int(k) for k in args.procs.split(",") if k.strip()]
  if not counts or min(counts) < 1 or args.epochs < 2:
    parser.error("--procs needs counts >= 1 and --epochs >= 2 (epoch 1 compiles)")
  if not os.path.isfile(args.data):
    parser.error(f"no CIFAR-10 archive at {args.data}; pass --data")
  import jax  # the device line only; the runs are separate processes
  dev = jax.devices()[0]
  with tempfile.TemporaryDirectory() as root:
    rows = [summarize(k, run_together(k, args, root)) for k in counts]
  result = {"date": time.strftime("%Y-%m-%d"), "device": f"{dev.platform} ({dev.device_kind})",
            "config": args.config, "epochs": args.epochs,
            "overrides": (TINY if args.tiny else []) + args.set, "rows": rows}
  text = markdown(result)
  common.write_report(args.out, "concurrency", result, text)
  print(text)
  return result


if __name__ == "__main__":
  main()
