"""What the benchmarks share: interleaved timing, the machine line, a Markdown table, a JAX step.

Timings on a shared CPU are noisy, so every benchmark times its contenders in ONE
process, alternating repeats (A B, B A, A B, ...), and reports medians; the
load average is printed with each table so a reader can judge the noise.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bnn_jax import models, objectives, train_lib, xla_cpu


# XLA:CPU tuning found by bench_xla_flags.py (docs/BENCHMARKS.md, section 4): keep the
# convolutions out of XLA's YNNPACK fusions (back to XLA's own Eigen convolutions). With
# jax 0.10.2 the YNNPACK kernel-gradient convolutions scale badly with the batch
# (batch 32 -> 128: 8x the time); without them the ReActNet-18 step is ~1.4x faster at
# batch 128 and unchanged at batch 32. XLA reads XLA_FLAGS once, when its CPU client
# starts: ``use_xla_flags`` must run before the first JAX computation.
TUNED_XLA_FLAGS = " ".join(xla_cpu.TUNED_FLAGS)  # what train.py adds on CPU


def use_xla_flags(flags: str) -> None:
  """Appends ``flags`` to ``$XLA_FLAGS`` (call before any JAX computation)."""
  if flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def load_average() -> str:
  return "load average %.2f %.2f %.2f" % os.getloadavg()


def machine_line() -> str:
  """One line naming the machine, the JAX backend and the current load average."""
  dev = jax.devices()[0]
  backend = dev.platform if dev.platform == "cpu" else f"{dev.platform} ({dev.device_kind})"
  flags = os.environ.get("XLA_FLAGS", "")
  return (f"{cpu_name()}, {os.cpu_count()} cores; jax {jax.__version__} on {backend}"
          f"{f' (XLA_FLAGS={flags!r})' if flags else ''}; {load_average()}")


class Timing(dict):
  """name -> seconds per step of each timed repeat; ``median``, ``best`` (min), ``spread``."""

  def median(self, name: str) -> float:
    return statistics.median(self[name])

  def best(self, name: str) -> float:
    return min(self[name])

  def spread(self, digits: int = 0) -> str:
    """'name min-max' in ms per step for every contender, for the notes under a table."""
    return "; ".join(f"{name} {1e3 * min(t):.{digits}f}-{1e3 * max(t):.{digits}f}"
                     for name, t in self.items())


def time_interleaved(runners: dict[str, Callable[[int], None]], steps: int, repeats: int,
                     warmup: int = 2) -> Timing:
  """Seconds per step of each runner in every repeat, timed in alternating order.

  ``runners[name](n)`` runs n steps and returns only when they are finished
  (``jax.block_until_ready``). Each runner first runs ``warmup`` steps (compiling;
  use 2 or more: with jax 0.10.2 a ``jax.pmap`` step fed the replicated initial state
  compiles once more on its second call, fed its own output);
  then each repeat times ``steps`` steps of every runner, reversing the order on
  every other repeat so that neither side always runs right after the other.
  """
  for run in runners.values():
    run(warmup)
  times = Timing({name: [] for name in runners})
  order = list(runners)
  for r in range(repeats):
    for name in (order if r % 2 == 0 else order[::-1]):
      t0 = time.perf_counter()
      runners[name](steps)
      times[name].append((time.perf_counter() - t0) / steps)
  return times


def write_report(out: str, stem: str, result: dict, text: str) -> None:
  """Writes ``out/stem.json`` (the result) and ``out/stem.md`` (its Markdown)."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f"{stem}.json"), "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(out, f"{stem}.md"), "w") as f:
    f.write(text)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence], notes=()) -> None:
  """Prints a Markdown table under a title and the machine line, then notes."""
  print(f"\n### {title}\n")
  print(f"Machine: {machine_line()}\n")
  print("| " + " | ".join(header) + " |")
  print("|:---|" + "|".join("---:" for _ in header[1:]) + "|")
  for row in rows:
    print("| " + " | ".join(_fmt(v) for v in row) + " |")
  for note in notes:
    print(f"\n{note}")
  print(f"\n(after timing: {load_average()})", flush=True)


def _fmt(v) -> str:
  if isinstance(v, float):
    return f"{v:.2f}" if abs(v) < 100 else f"{v:,.0f}"
  return str(v)


# --- the JAX side ----------------------------------------------------------------------------


def reactnet(width: float, bn_axis_name: Optional[str] = None):
  """The library's ReActNet-18 (BatchNorm, binary weights and activations) for CIFAR-10."""
  return models.get_model("reactnet18", num_classes=10, width=width, bn_axis_name=bn_axis_name)


def init_state(model, tx: optax.GradientTransformation) -> train_lib.TrainState:
  """``train_lib.create_state`` with seed 0 (it compiles ``model.init``: call it once)."""
  return train_lib.create_state(model, tx, jax.random.key(0))


def fresh_copy(state: train_lib.TrainState,
               tx: Optional[optax.GradientTransformation] = None) -> train_lib.TrainState:
  """A copy of ``state`` in new buffers (a donating step deletes its input) at step 0,
  with a new optimizer state (of ``tx`` if given)."""
  tx = tx or state.tx
  params = jax.tree.map(jnp.copy, state.params)
  return state.replace(step=jnp.zeros_like(state.step), params=params,
                       batch_stats=jax.tree.map(jnp.copy, state.batch_stats),
                       opt_state=tx.init(params), tx=tx)


def float_train_step(num_classes: int = 10, axis_name: Optional[str] = None) -> Callable:
  """The trainer's update (``train_lib.make_update``, cross-entropy) without its data path:
  ``step(state, x, y) -> (state, loss)`` on a ready float batch."""
  update = train_lib.make_update(objectives.classification(num_classes), axis_name)

  def step(state, x, y):
    state, _, metrics = update(state, {}, x, y)
    return state, metrics["loss"]

  return step


def jit_float_step():
  """``float_train_step`` jitted for one device, the state donated."""
  return jax.jit(float_train_step(), donate_argnums=(0,))


def step_runner(step: Callable, state, *args) -> Callable[[int], None]:
  """A runner for ``time_interleaved``: n calls of ``state, out = step(state, *args)``."""
  box = [state]

  def run(n: int) -> None:
    s = box[0]
    for _ in range(n):
      s, out = step(s, *args)
    jax.block_until_ready((s, out))
    box[0] = s

  return run


def train_step_runner(step: Callable, state, sums, images, labels, indices,
                      extra=()) -> Callable[[int], None]:
  """A runner for ``time_interleaved`` of a pmapped ``train_lib.make_train_step`` step, fed
  as the trainer's loop feeds it: one ``fold_in`` key per step, the sums carried on device."""
  box = [state, sums, 0]
  base = jax.random.key(1)

  def run(n: int) -> None:
    state, sums, i = box
    for _ in range(n):
      state, sums, _ = step(state, sums, images, labels, indices[i % len(indices)],
                            jax.random.fold_in(base, i), *extra)
      i += 1
    jax.block_until_ready((state, sums))
    box[:] = [state, sums, i]

  return run


def replicate(tree, devices, axis_name: str = "batch"):
  """The trainer's placement (``bnn_jax.train_lib.replicate``): one compile per step."""
  from bnn_jax import train_lib
  return train_lib.replicate(tree, devices, axis_name)


def same_function(logits_a, logits_b, grads_a, grads_b, logits_tol: float = 1e-3,
                  grad_tol: float = 1e-2) -> tuple[bool, float, float]:
  """Do two implementations compute the same function? ``(ok, logits_diff, grad_diff)``.

  logits_diff = max |a - b| / (1 + max |b|) over the logits of one batch;
  grad_diff = ||g_a - g_b|| / ||g_b|| over the WHOLE gradient (all parameters concatenated).
  Binary activations make the per-parameter view fragile: one sign at a near tie (|x| ~ 1e-7
  from 0) flips under float rounding and moves that layer's gradient by up to 1e-3 relative,
  with identical functions. The whole-gradient norm barely moves for such a flip, while a
  real difference (a broken layer, a wrong STE) moves the logits or a large share of the
  gradient (tests/test_benchmarks.py checks both sides).
  """
  a, b = np.asarray(logits_a, np.float64), np.asarray(logits_b, np.float64)
  logits_diff = float(np.abs(a - b).max() / (1.0 + np.abs(b).max()))
  flat = lambda gs: np.concatenate([np.ravel(np.asarray(g, np.float64)) for g in gs])
  ga, gb = flat(grads_a), flat(grads_b)
  grad_diff = float(np.linalg.norm(ga - gb) / (np.linalg.norm(gb) + 1e-30))
  return logits_diff <= logits_tol and grad_diff <= grad_tol, logits_diff, grad_diff


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def batch_sizes(text: str) -> list[int]:
  return [int(b) for b in text.split(",")]


DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                            "data", "cifar-10-binary.tar.gz")


def add_data_flag(parser) -> None:
  """``--data``: the CIFAR-10 binary archive ($BNN_JAX_CIFAR10 or ../shared/data/)."""
  parser.add_argument("--data", default=os.environ.get("BNN_JAX_CIFAR10", DEFAULT_DATA),
                      help="CIFAR-10 binary archive (default: $BNN_JAX_CIFAR10 or "
                           "../shared/data/cifar-10-binary.tar.gz)")


def add_flags(parser, width: float = 0.25, steps: int = 5, repeats: int = 5) -> None:
  """The flags every benchmark takes."""
  parser.add_argument("--width", type=float, default=width,
                      help="ReActNet-18 width multiplier (1 = the paper's 64-128-256-512).")
  parser.add_argument("--steps", type=int, default=steps, help="steps per timed repeat")
  parser.add_argument("--repeats", type=int, default=repeats,
                      help="timed repeats per contender (alternating); the median is reported")
  parser.add_argument("--warmup", type=int, default=2,
                      help="untimed steps first (compiles; at least 2: a pmapped step "
                           "compiles again on its second call)")
