"""Where a train step's time goes: the trainer's own compiled step, its XLA program, a trace.

For a training config (default: the full ReActNet-18 recipe), this builds the trainer's
pmapped step exactly as ``train_lib.setup`` does (real CIFAR-10, device-resident uint8 data,
augmentation inside the step), then reports:

* the compiled program: XLA's cost analysis (flops and bytes accessed per step), the number
  of fusions, of layout transposes and copies in the optimized HLO;
* the step's wall time (median of ``--steps`` steps after 2 warm-up steps) and what it
  implies: images/s, achieved bytes/s against ``--peak-gbps`` (the device's memory
  bandwidth: H100 SXM 3,350, H200 4,800 GB/s) and flops/s;
* a ``jax.profiler`` trace of ``--trace-steps`` steps: the top operations by total time
  (on a GPU the device's kernels; on the CPU XLA's thread-pool operations), each with its
  share of the traced busy time and its count per step.

Writes ``profile.json`` and ``profile.md`` to ``--out`` (and keeps the trace there unless
``--no-keep-trace``); prints the Markdown.

  python benchmarks/profile_step.py --out /tmp/prof                          # GPU, full recipe
  python benchmarks/profile_step.py --out /tmp/prof --set model.dtype=bfloat16
  python benchmarks/profile_step.py --out /tmp/prof --tiny                   # CPU smoke test
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

import jax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root: configs/ and bnn_jax/

import common  # noqa: E402  (benchmarks/common.py)
from bnn_jax import data, train_lib  # noqa: E402
from bnn_jax.config import load_file, set_key, validate  # noqa: E402

TINY = {"model.width": 0.125, "data.train_subset": 512, "data.test_subset": 256,
        "batch_size": 64}


def load_config(spec: str, overrides: dict):
  """A config file (``path.py[:options]``) with dotted-key overrides, validated."""
  config = load_file(spec)
  with config.unlocked():
    for key, value in overrides.items():
      set_key(config, key, value)
  config.progress_bar = False
  validate(config)
  return config


def parse_overrides(pairs: list[str]) -> dict:
  """``["a.b=1", ...]`` -> ``{"a.b": 1, ...}`` (JSON values, else the string)."""
  out = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep:
      raise SystemExit(f"--set {pair!r}: expected key=value")
    try:
      out[key] = json.loads(value)
    except json.JSONDecodeError:
      out[key] = value
  return out


def hlo_counts(hlo_text: str) -> dict:
  """Fusions, transposes and copies in an optimized HLO module's text (entry + nested)."""
  return {"fusions": len(re.findall(r"\bfusion\(", hlo_text)),
          "transposes": len(re.findall(r"\btranspose\(", hlo_text)),
          "copies": len(re.findall(r"\bcopy\(", hlo_text)),
          "convolutions": len(re.findall(r"\bconvolution\(", hlo_text)),
          "custom_calls": len(re.findall(r"\bcustom-call\(", hlo_text))}


def top_operations(trace_path: str, steps: int, top: int = 15) -> tuple[list[dict], str]:
  """(rows, where) from a ``*.trace.json.gz`` of ``jax.profiler``: complete events summed by
  name on the device's timelines (``/device:...`` processes) or, with no device timeline (the
  CPU), on XLA's thread-pool threads; each row: name, total ms, share, calls per step."""
  with gzip.open(trace_path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  processes = {e["pid"]: e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name"}
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  device_pids = {p for p, name in processes.items() if name.startswith("/device:")}
  # GPU: the kernels on the device's stream timelines (its "XLA Ops"/"XLA Modules" lines
  # repeat them as spans); CPU: XLA's thread-pool operations, not the executor spans that
  # contain them
  streams = {key for key, name in threads.items() if key[0] in device_pids and "Stream" in name}
  if device_pids:
    keep = (lambda e: (e["pid"], e["tid"]) in streams) if streams else \
        (lambda e: e["pid"] in device_pids)
    where = "device kernels"
  else:
    keep = lambda e: ("XLA" in threads.get((e["pid"], e["tid"]), "")
                      and not e["name"].startswith("ThunkExecutor"))
    where = "XLA CPU thread-pool operations"
  totals, counts = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and keep(e):
      totals[e["name"]] += e.get("dur", 0.0)
      counts[e["name"]] += 1
  busy = sum(totals.values()) or 1.0
  rows = [{"name": name, "total_ms": us / 1e3, "share": us / busy, "per_step": counts[name] / steps}
          for name, us in totals.most_common(top)]
  return rows, where


def profile(config, out: str, steps: int, trace_steps: int, peak_gbps: float,
            keep_trace: bool) -> dict:
  with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as workdir:
    run = train_lib.setup(config, workdir, stack)
    n_dev = len(run.devices)
    indices = data.train_batch_indices(config.seed, 0, len(run.ds.train_labels),
                                       config.batch_size, n_dev)
    state = run.state
    rng = jax.random.key(0)

    # the metric sums are donated and returned by every step: carried, as the trainer's loop
    # carries them through an epoch (no host-to-device copy inside the timed steps)
    sums = train_lib.replicate(run.zero_sums, run.devices)

    def one(i, state, sums):
      return run.p_train(state, sums, *run.train_data, indices[i % len(indices)], rng)

    compiled = run.p_train.lower(state, sums, *run.train_data, indices[0], rng).compile()
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    counts = hlo_counts(compiled.as_text())
    for i in range(2):                                     # warm-up (pmap compiles twice)
      state, sums, metrics = one(i, state, sums)
    jax.block_until_ready(metrics)
    times = []
    for i in range(steps):
      t0 = time.perf_counter()
      state, sums, metrics = one(i, state, sums)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t0)
    trace_dir = os.path.join(out, "trace")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=False):
      for i in range(trace_steps):
        state, sums, metrics = one(i, state, sums)
      jax.block_until_ready(metrics)
    trace_files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"),
                                   recursive=True))
    top, where = top_operations(trace_files[-1], trace_steps) if trace_files else ([], "none")
    if not keep_trace:
      import shutil
      shutil.rmtree(trace_dir, ignore_errors=True)
  step_s = statistics.median(times)
  bytes_step = float(cost.get("bytes accessed", float("nan")))
  flops_step = float(cost.get("flops", float("nan")))
  dev = jax.devices()[0]
  return {
      "date": time.strftime("%Y-%m-%d"), "device": f"{dev.platform} ({dev.device_kind})",
      "devices": n_dev, "jax": jax.__version__, "model": config.model.name,
      "width": config.model.width, "dtype": config.model.dtype, "batch": config.batch_size,
      "step_ms": 1e3 * step_s, "images_per_sec": config.batch_size / step_s,
      "flops_per_step": flops_step, "bytes_per_step": bytes_step,
      "achieved_gbps": bytes_step / step_s / 1e9, "peak_gbps": peak_gbps,
      "bandwidth_share": bytes_step / step_s / 1e9 / peak_gbps,
      "memory_bound_step_ms": 1e3 * bytes_step / (peak_gbps * 1e9),
      "tflops": flops_step / step_s / 1e12, "hlo": counts, "trace_where": where,
      "trace_steps": trace_steps, "top_operations": top,
  }


def markdown(r: dict) -> str:
  lines = [f"### Train step profile: {r['model']} width {r['width']:g}, {r['dtype']}, batch "
           f"{r['batch']} ({r['device']}, jax {r['jax']}, {r['date']})", "",
           "| step | img/s | bytes/step | achieved | at peak bandwidth | TFLOP/s | fusions | "
           "transposes | copies |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
           f"| {r['step_ms']:.2f} ms | {r['images_per_sec']:,.0f} | "
           f"{r['bytes_per_step'] / 1e9:.2f} GB | {r['achieved_gbps']:,.0f} GB/s "
           f"({100 * r['bandwidth_share']:.0f}% of {r['peak_gbps']:,.0f}) | "
           f"{r['memory_bound_step_ms']:.2f} ms | {r['tflops']:.1f} | {r['hlo']['fusions']} | "
           f"{r['hlo']['transposes']} | {r['hlo']['copies']} |", "",
           f"Top {len(r['top_operations'])} {r['trace_where']} over {r['trace_steps']} traced "
           f"steps:", "", "| operation | total ms | share | per step |", "|:---|---:|---:|---:|"]
  for op in r["top_operations"]:
    lines.append(f"| `{op['name'][:80]}` | {op['total_ms']:.2f} | {100 * op['share']:.1f}% | "
                 f"{op['per_step']:g} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/reactnet18_cifar10.py")
  common.add_data_flag(parser)
  parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
  parser.add_argument("--out", default=os.environ.get("OUT", "profile_out"))
  parser.add_argument("--steps", type=int, default=20, help="timed steps")
  parser.add_argument("--trace-steps", type=int, default=5)
  parser.add_argument("--peak-gbps", type=float, default=3350.0,
                      help="memory bandwidth, GB/s (H100 SXM 3,350; H200 4,800)")
  parser.add_argument("--tiny", action="store_true",
                      help="width 0.125, 512 images, batch 64: a CPU smoke test")
  parser.add_argument("--no-keep-trace", action="store_true")
  args = parser.parse_args(argv)
  if args.steps < 1 or args.trace_steps < 1:
    parser.error("--steps and --trace-steps must be >= 1")
  overrides = {**(TINY if args.tiny else {}), "data.path": args.data,
               **parse_overrides(args.set)}
  config = load_config(args.config, overrides)
  os.makedirs(args.out, exist_ok=True)
  result = profile(config, args.out, args.steps, args.trace_steps, args.peak_gbps,
                   keep_trace=not args.no_keep_trace)
  text = markdown(result)
  common.write_report(args.out, "profile", result, text)
  print(text)
  return result


if __name__ == "__main__":
  main()
