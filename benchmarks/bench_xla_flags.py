"""Does an XLA:CPU flag speed up the train step? The JAX step under several ``XLA_FLAGS``.

XLA reads ``XLA_FLAGS`` once per process, so each flag set runs in its own child
process (this script with ``--worker``): the jitted, donated single-device step of
``bench_train_step.py`` (ReActNet-18, BN train mode, Adam) at each batch size; the
median ms per step over ``--steps`` timed steps after ``--warmup``. The child processes
run one after the other and the baseline (no flags) runs first and again last, so a
drift of the machine shows as a difference between the two baseline rows. The loss
after the last step is printed too: a flag that changes the numerics shows there.

  python benchmarks/bench_xla_flags.py                       # width 0.25, batches 32,128
  python benchmarks/bench_xla_flags.py --width 1 --batches 32 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

FLAG_SETS = (
    "",
    "--xla_cpu_use_xnnpack=false",
    "--xla_cpu_prefer_vector_width=512",
    "--xla_cpu_use_onednn=true",
)


def worker(args) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  import common

  model = common.reactnet(args.width)
  template = common.init_state(model, optax.adam(1e-3))
  step = common.jit_float_step()
  out = {}
  for batch in (int(b) for b in args.batches.split(",")):
    rng = np.random.RandomState(batch)
    x = jnp.asarray(rng.randn(batch, 32, 32, 3).astype(np.float32))
    y = jnp.asarray(rng.randint(0, 10, batch).astype(np.int32))
    state = common.fresh_copy(template)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
      state, loss = step(state, x, y)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
      t0 = time.perf_counter()
      state, loss = step(state, x, y)
      jax.block_until_ready(loss)
      times.append(time.perf_counter() - t0)
    out[batch] = {"ms": 1e3 * statistics.median(times), "best_ms": 1e3 * min(times),
                  "warmup_s": compile_s, "loss": float(loss)}
    del state
  print("RESULT " + json.dumps(out), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--width", type=float, default=0.25)
  parser.add_argument("--batches", default="32,128")
  parser.add_argument("--steps", type=int, default=8, help="timed steps per flag set and batch")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--flags", default=None,
                      help="';'-separated flag sets to try (default: a built-in list)")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return worker(args)

  import common  # imports jax: only for the machine line

  flag_sets = list(FLAG_SETS if args.flags is None else [""] + args.flags.split(";"))
  flag_sets.append("")  # the baseline again, last
  batches = [int(b) for b in args.batches.split(",")]
  rows = []
  for flags in flag_sets:
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flags).strip())
    cmd = [sys.executable, __file__, "--worker", f"--width={args.width}",
           f"--batches={args.batches}", f"--steps={args.steps}", f"--warmup={args.warmup}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.abspath(__file__)))
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
      rows.append((f"`{flags or '(none)'}`", *(["failed"] * (3 * len(batches)))))
      print(proc.stderr[-2000:], file=sys.stderr)
      continue
    res = json.loads(lines[0][len("RESULT "):])
    cells = []
    for b in batches:
      r = res[str(b)]
      cells += [r["ms"], b / r["ms"] * 1e3, f"{r['loss']:.4f}"]
    rows.append((f"`{flags or '(none)'}`", *cells))
  header = ["XLA_FLAGS"]
  for b in batches:
    header += [f"b{b} ms", f"b{b} img/s", f"b{b} loss"]
  common.print_table(
      f"XLA:CPU flags, JAX train step, ReActNet-18 width {args.width:g}", header, rows,
      notes=(f"One child process per row, run in this order; median of {args.steps} steps "
             f"after {args.warmup} warm-up steps. Loss: after the last step (same seed and "
             f"batch in every row).",))


if __name__ == "__main__":
  main()
