"""The full-scale queue: the thesis' table, run in device-sized pieces, one command per call.

A fixed list of full-scale runs in priority order (:data:`QUEUE`). Each call runs the next
unfinished runs whose expected time fits ``--seconds``, one after the other (``--jobs N``: N
processes at once), and writes every run that finished in this call to ``--out`` (default
``$OUT``): ``NAME/metrics.jsonl``, ``NAME/config.json``, ``NAME/NAME.packed`` (the packed
export, ``bnn_jax.deploy.export``; full-precision runs have none) and ``NAME/train.log``.

  python experiments/full_scale.py --dry-run --seconds 540           # the plan; runs nothing
  python experiments/full_scale.py --data /tmp/c10.tar.gz --runs /tmp/full_runs \
      --seconds 540 --out "$OUT" --tar                                # on the device
  python experiments/full_scale.py --collect RETURNED_DIR             # back here: results_full
  python -m bnn_jax.zoo add experiments/results_full/NAME --data cifar-10-binary.tar.gz

What is done: a run whose folder ``experiments/results_full/NAME/`` (``--results``) holds a
metrics.jsonl whose last record's epoch is the run's ``num_epochs`` (committed after an earlier
call; ``--collect`` copies a returned ``--out`` there). A run never spans two calls: a run
whose expected time does not fit what is left of ``--seconds`` is not started, and at
``--seconds`` whatever still runs is stopped (SIGTERM: it saves a checkpoint in ``--runs``).
``--allow-split`` starts a run that does not fit anyway; stopped at ``--seconds``, it resumes
from ``--runs`` in the next call on the same, still warm machine (a machine goes back 30 s
after a call, and the checkpoint, > 16 MiB, cannot come back with ``--out``).

A method-3 student needs its teacher's checkpoint on the same machine: when the teacher has
not finished in this call's ``--runs``, the plan trains the teacher first in the same call and
counts its time, even when the teacher's results are already committed (it is then retrained
only as the teacher, and not written to ``--out``).

Expected time = ``STARTUP_S`` + epochs left x seconds per epoch (:data:`RATES`, one NVIDIA
H200) x ``--margin``. Only the ReActNet-18 rate was measured at full scale; the others are
scaled from the GPU proxy runs (see :data:`RATES`); override any with ``--rate NAME=S``.

The files that come back from a device call are limited (8 files, 16 MiB each): with more
than two runs per call use ``--tar``, which writes one ``NAME.tgz`` per run instead of the
folder (``--collect`` reads both).

``--tiny`` runs the whole machinery on the CPU (tests): every run at width 0.125, one epoch
of 2 steps of 16 images, 32 test images.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from proxy import finished  # noqa: E402  (a script beside this one)

from bnn_jax.zoo import LOG_TAG  # noqa: E402  (its train.log records; the zoo reads them)

RESULTS = os.path.join(HERE, "results_full")


@dataclasses.dataclass(frozen=True)
class Run:
  """One queue entry: ``python train.py --config CONFIG`` with its seed and teacher."""
  name: str
  config: str            # configs/FILE.py[:options]
  rate: str              # key of RATES
  teacher: str = ""      # the queue run whose workdir becomes --config.teacher.workdir
  seed: int = 0


R18 = "configs/reactnet18_cifar10.py"
RESNET = "configs/resnet18_cifar10.py"
VGG = "configs/vgg_small_cifar10.py"
# Priority order (issue 23): ReActNet-18 plain and method 1, then the latent-weight-decay control
# of method 1 (as good as it on both proxies, docs/RESULTS.md, "Mechanisms" and "16-epoch
# proxy": the full-scale triple says what carries the gain); ResNet-18 FP (the teacher and the
# FP reference); ReActNet-18 method 3; BN-free and BN-free + method 1; ResNet-18 BNN and method
# 2; ReActNet-18 method 2; VGG-Small FP, BNN and method 3; then seed 1 of the first pair.
QUEUE = (
    Run("reactnet18", R18, "reactnet18"),
    Run("reactnet18_m1", f"{R18}:method1", "reactnet18"),
    Run("reactnet18_decay", f"{R18}:latent_decay", "reactnet18"),
    Run("resnet18_fp", "configs/resnet18_fp_cifar10.py", "resnet18"),
    Run("reactnet18_m3", f"{R18}:method3", "reactnet18_m3", teacher="resnet18_fp"),
    Run("reactnet18_bnfree", f"{R18}:bnfree", "reactnet18"),
    Run("reactnet18_bnfree_m1", f"{R18}:bnfree,method1", "reactnet18"),
    Run("resnet18_bnn", RESNET, "resnet18"),
    Run("resnet18_fda", f"{RESNET}:fda", "resnet18"),
    Run("reactnet18_fda", f"{R18}:fda", "reactnet18"),
    Run("vgg_small_fp", f"{VGG}:fp", "vgg_small"),
    Run("vgg_small_bnn", VGG, "vgg_small"),
    Run("vgg_small_m3", f"{VGG}:method3", "vgg_small_m3", teacher="vgg_small_fp"),
    Run("reactnet18_s1", R18, "reactnet18", seed=1),
    Run("reactnet18_m1_s1", f"{R18}:method1", "reactnet18", seed=1),
)
RUNS = {r.name: r for r in QUEUE}

# Seconds per training epoch on one NVIDIA H200, each recipe at its own batch size (the
# trainer's epoch_seconds: evaluation, statistics and checkpoints not included; --margin).
RATES = {
    # measured: the full ReActNet-18 recipe, epoch 2 (docs/BENCHMARKS.md section 8)
    "reactnet18": 2.25,
    # ResNet-18 (BNN, FDA and FP) about two thirds of ReActNet-18's epoch, VGG-Small about a
    # third: the width-0.25 proxy runs on the same GPU at batch 128 (README, "On a GPU or
    # TPU"), not timed at full width; the FP recipes train at batch 128, twice the steps
    "resnet18": 2.25 * 2 / 3,
    "vgg_small": 2.25 / 3,
    # method 3 adds the teacher's forward pass: the GPU proxy's students took 1.42x
    # (m3_r18_both / m3_r18_ce) and 1.63x (m3_vgg_both / m3_vgg_ce) the epochs of their
    # CE baselines (mean epoch_seconds of epochs 2-4, experiments/results_gpu/)
    "reactnet18_m3": 2.25 * 1.42,
    "vgg_small_m3": 2.25 / 3 * 1.63,
}
STARTUP_S = 45.0   # per run: process start, data, compilation (epoch 1 took 16 s longer), export
EXPORT_S = 20.0    # a run finished in --runs whose outputs are written again (no training)
MARGIN = 1.1       # x the epochs' time: per-epoch evaluation, statistics, checkpoints
TINY = {"num_epochs": 1, "batch_size": 16, "data.train_subset": 32, "data.test_subset": 32,
        "model.width": 0.125, "log_every_steps": 1}


# --- the queue's configs ---------------------------------------------------------------------


def load_config(spec: str):
  """The ConfigDict of ``configs/FILE.py[:options]`` (relative to the repository), as train.py's
  --config loads it."""
  from bnn_jax.config import load_file
  path, sep, options = spec.partition(":")
  return load_file(os.path.join(REPO, path) + sep + options)


def num_epochs(run: Run, tiny: bool = False) -> int:
  """The epochs the queue trains ``run`` for (its config's, 1 with --tiny)."""
  return TINY["num_epochs"] if tiny else int(load_config(run.config).num_epochs)


def is_full_precision(run: Run) -> bool:
  """Whether the run's model has no binary layers (so no packed export)."""
  from bnn_jax.deploy import SUPPORTED_MODELS
  return load_config(run.config).model.name not in SUPPORTED_MODELS


def overrides(run: Run, data: str, runs_dir: str, tiny: bool = False) -> dict:
  """The --config.KEY=VALUE flags the queue adds to the run's config file."""
  out = {"data.path": data, "seed": run.seed, "progress_bar": False}
  if run.teacher:
    out["teacher.workdir"] = os.path.join(runs_dir, run.teacher)
  if tiny:
    out.update(TINY)
  return out


def train_command(run: Run, data: str, runs_dir: str, tiny: bool = False) -> list[str]:
  """The exact ``train.py`` command of ``run`` (its workdir ``RUNS/NAME``)."""
  flags = [f"--config.{k}={v}" for k, v in overrides(run, data, runs_dir, tiny).items()]
  return [sys.executable, "train.py", "--config", run.config,
          "--workdir", os.path.join(runs_dir, run.name), *flags]


def epochs_done(workdir: str) -> int:
  """The last whole epoch logged in ``workdir/metrics.jsonl`` (0 if none)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return int(records[-1].get("epoch", 0)) if records else 0


# --- the plan ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Item:
  """A planned job: ``role`` "run" (train, write), "teacher" (train only: its results are
  committed), "write" (finished in --runs: write its outputs again); ``cut``: stopped at
  --seconds (--allow-split)."""
  run: Run
  role: str
  start: float
  end: float
  epochs: int
  epochs_left: int
  cut: bool = False


@dataclasses.dataclass
class Plan:
  items: list
  skipped: list           # (name, reason)
  done: list              # names finished in --results
  seconds: float
  jobs: int


def estimate(run: Run, epochs_left: int, rates: dict, margin: float = MARGIN,
             startup: float = STARTUP_S) -> float:
  """Expected seconds for the ``epochs_left`` epochs of ``run`` (0 left: writing its outputs)."""
  if epochs_left <= 0:
    return EXPORT_S
  return startup + epochs_left * rates[run.rate] * margin


def make_plan(queue, epochs: dict, done: set, in_runs: dict, seconds: float, rates: dict,
              jobs: int = 1, margin: float = MARGIN, allow_split: bool = False,
              startup: float = STARTUP_S) -> Plan:
  """Which runs this call trains, in which slot and when.

  Args:
    queue: the runs in priority order (each ``Run``); a teacher need not be in it.
    epochs: name -> the run's num_epochs (teachers included).
    done: names finished in --results (skipped, unless a student needs them as teacher).
    in_runs: name -> epochs done in --runs (this machine).
    seconds: the call's time; ``jobs``: processes at once (each slot runs one at a time).
    allow_split: a run that does not fit starts anyway and is cut at ``seconds`` (if it gets
      at least ``2 * startup`` seconds).
    margin, startup: see :func:`estimate`.
  """
  slots = [0.0] * jobs
  ends = {n: 0.0 for n, e in in_runs.items() if e >= epochs.get(n, math.inf)}
  items, skipped = [], []
  done_list = [r.name for r in queue if r.name in done]
  for run in queue:
    if run.name in done or run.name in {i.run.name for i in items}:
      continue
    chain = []
    if run.teacher and run.teacher not in ends:
      chain.append((RUNS[run.teacher], "teacher" if run.teacher in done else "run"))
    chain.append((run, "write" if run.name in ends else "run"))
    trial_slots, trial_ends, trial = list(slots), dict(ends), []
    for r, role in chain:
      after = trial_ends.get(r.teacher, 0.0) if r.teacher else 0.0
      # the earliest start; of equal starts the slot free last (keep the others free)
      i = min(range(jobs), key=lambda j: (max(trial_slots[j], after), -trial_slots[j]))
      left = epochs[r.name] - (0 if role == "write" else in_runs.get(r.name, 0))
      start = max(trial_slots[i], after)
      end = start + estimate(r, left if role != "write" else 0, rates, margin, startup)
      cut = end > seconds
      if cut and not (allow_split and role != "write" and seconds - start >= 2 * startup):
        trial = None
        break
      trial.append(Item(r, role, start, min(end, seconds), epochs[r.name], left, cut))
      trial_slots[i] = min(end, seconds)
      if not cut:
        trial_ends[r.name] = end
      else:
        break
    if trial is None:
      need = sum(estimate(r, epochs[r.name] - in_runs.get(r.name, 0), rates, margin, startup)
                 for r, _ in chain)
      teacher = f" with its teacher {run.teacher}" if len(chain) > 1 else ""
      skipped.append((run.name, f"needs {need / 60:.1f} min{teacher}, "
                                f"{max(0.0, seconds - min(slots)) / 60:.1f} left"))
      continue
    if trial[-1].run is not run:   # --allow-split cut the teacher: the student waits
      skipped.append((run.name, f"after its teacher {run.teacher}, cut at --seconds"))
    items.extend(trial)
    slots, ends = trial_slots, trial_ends
  return Plan(items, skipped, done_list, seconds, jobs)


def format_plan(plan: Plan, rates: dict) -> str:
  """The plan as a table: order, run, role, epochs left, s/epoch, minutes, start-end."""
  lines = [f"Full-scale queue: {len(plan.done)} finished, {len(plan.items)} planned, "
           f"{len(plan.skipped)} not this call; --seconds "
           f"{'none' if math.isinf(plan.seconds) else f'{plan.seconds:.0f}'}, --jobs {plan.jobs}",
           f"{'#':>2}  {'run':<22} {'role':<8} {'epochs':>8} {'s/epoch':>7} {'minutes':>7} "
           f"{'start-end (min)':>15}  config"]
  for k, it in enumerate(plan.items, 1):
    role = it.role + (" (cut)" if it.cut else "")
    span = f"{it.start / 60:.1f}-{it.end / 60:.1f}"
    lines.append(f"{k:>2}  {it.run.name:<22} {role:<8} {it.epochs_left:>4}/{it.epochs:<3} "
                 f"{rates[it.run.rate]:>7.2f} {(it.end - it.start) / 60:>7.1f} {span:>15}  "
                 f"{it.run.config}" + (f" seed {it.run.seed}" if it.run.seed else "")
                 + (f" (teacher: {it.run.teacher})" if it.run.teacher else ""))
  total = max((it.end for it in plan.items), default=0.0)
  lines.append(f"Total: {len(plan.items)} job(s), {total / 60:.1f} minutes expected.")
  for name in plan.done:
    lines.append(f"  done: {name}")
  for name, reason in plan.skipped:
    lines.append(f"  not this call: {name} ({reason})")
  return "\n".join(lines)


# --- running it ----------------------------------------------------------------------------------


def device_name() -> str:
  """The GPU's name (nvidia-smi), else the CPU's."""
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30)
    if out.returncode == 0 and out.stdout.strip():
      return out.stdout.strip().splitlines()[0]
  except (OSError, subprocess.SubprocessError):
    pass
  cpu = platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                 cpu)
  except OSError:
    pass
  return f"CPU ({cpu}, {os.cpu_count()} cores)"


def log_record(log, **fields) -> None:
  """Appends one ``# full_scale {json}`` line to an open train.log."""
  log.write(LOG_TAG + json.dumps(fields) + "\n")
  log.flush()


def now_iso() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_outputs(run: Run, workdir: str, log_path: str, out: str, tar: bool) -> str:
  """Writes NAME/{metrics.jsonl, config.json, NAME.packed, train.log} (or NAME.tgz) to ``out``."""
  os.makedirs(out, exist_ok=True)
  stage = tempfile.mkdtemp(prefix=f"{run.name}_", dir=out if not tar else None)
  folder = os.path.join(stage, run.name)
  os.makedirs(folder)
  for f in ("metrics.jsonl", "config.json"):
    shutil.copy(os.path.join(workdir, f), os.path.join(folder, f))
  with open(log_path, "a") as log:
    if is_full_precision(run):
      log_record(log, packed=None, note="full precision: no packed export")
    else:
      from bnn_jax import deploy
      info = deploy.export(workdir, os.path.join(folder, f"{run.name}.packed"))
      log_record(log, packed=f"{run.name}.packed", file_bytes=info["file_bytes"])
  shutil.copy(log_path, os.path.join(folder, "train.log"))
  if tar:
    target = os.path.join(out, f"{run.name}.tgz")
    with tarfile.open(target + ".part", "w:gz") as t:
      t.add(folder, arcname=run.name)
    os.replace(target + ".part", target)
  else:
    target = os.path.join(out, run.name)
    if os.path.exists(target):
      shutil.rmtree(target)
    os.replace(folder, target)
  shutil.rmtree(stage, ignore_errors=True)
  return target


def run_job(args, run: Run) -> int:
  """One job, in its own process: trains ``run`` with train.py (unless finished in --runs),
  then writes its outputs; returns 0 when the run is finished."""
  signal.signal(signal.SIGTERM, lambda *_: None)   # train.py gets it too (one group) and saves
  train_env = dict(os.environ)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")     # this process's export: leave the GPU alone
  workdir = os.path.join(args.runs, run.name)
  log_path = os.path.join(args.runs, f"{run.name}.log")
  epochs = num_epochs(run, args.tiny)
  os.makedirs(args.runs, exist_ok=True)
  with open(log_path, "a") as log:
    t0 = time.time()
    if not finished(workdir, epochs):
      cmd = train_command(run, args.data, args.runs, args.tiny)
      log_record(log, run=run.name, config=run.config, seed=run.seed,
                 command=" ".join(["python", *cmd[1:]]), device=device_name(),
                 started=now_iso(), epochs_before=epochs_done(workdir))
      rc = subprocess.run(cmd, cwd=REPO, env=train_env, stdout=log,
                          stderr=subprocess.STDOUT).returncode
      log_record(log, ended=now_iso(), exit=rc, epochs_done=epochs_done(workdir),
                 segment_seconds=round(time.time() - t0, 1))
  if not finished(workdir, epochs):
    return 1
  if not args.job_no_out:
    print(f"{run.name} -> {write_outputs(run, workdir, log_path, args.out, args.tar)}",
          flush=True)
  return 0


def job_command(args, item: Item) -> list[str]:
  cmd = [sys.executable, os.path.abspath(__file__), "--job", item.run.name, "--runs", args.runs,
         "--out", args.out, "--data", args.data]
  return cmd + (["--tiny"] if args.tiny else []) + (["--tar"] if args.tar else []) + (
      ["--job-no-out"] if item.role == "teacher" else [])


def execute(args, plan: Plan, rates: dict) -> dict:
  """Runs the plan's jobs, at most ``plan.jobs`` at once, a student after its teacher; stops
  (SIGTERM) what still runs at ``plan.seconds``. Returns name -> status."""
  deadline = time.monotonic() + plan.seconds
  pending = sorted(plan.items, key=lambda it: it.start)
  running: dict[str, tuple] = {}
  status: dict[str, str] = {}
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  if plan.jobs > 1:
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"   # share the accelerator
  os.makedirs(args.runs, exist_ok=True)
  signalled = 0
  while pending or running:
    for name, (proc, it, t0) in list(running.items()):
      if proc.poll() is None:
        continue
      del running[name]
      wall = time.monotonic() - t0
      done_epochs = epochs_done(os.path.join(args.runs, name))
      if proc.returncode == 0:
        status[name] = f"finished in {wall:.0f} s"
      elif signalled:
        status[name] = (f"stopped at --seconds after epoch {done_epochs} of {it.epochs} "
                        f"({wall:.0f} s); the next call on this warm machine resumes it")
      else:
        status[name] = (f"FAILED (exit {proc.returncode}) after epoch {done_epochs} of "
                        f"{it.epochs}; see {os.path.join(args.runs, name)}.log")
      print(f"{name}: {status[name]}", flush=True)
    now = time.monotonic()
    if now >= deadline:
      for it in pending:
        status[it.run.name] = "not started (--seconds reached)"
      pending = []
      # SIGTERM: train.py saves mid-epoch and exits; a second one, a minute later, stops it
      if running and signalled < 1 + (now >= deadline + 60):
        for proc, _, _ in running.values():
          os.killpg(proc.pid, signal.SIGTERM)
        signalled += 1
    for it in list(pending):
      if len(running) >= plan.jobs:
        break
      teacher = it.run.teacher
      if teacher and (teacher in running or any(p.run.name == teacher for p in pending)):
        continue
      pending.remove(it)
      if (teacher and it.role != "write" and
          not finished(os.path.join(args.runs, teacher), num_epochs(RUNS[teacher], args.tiny))):
        status[it.run.name] = f"not started (its teacher {teacher} did not finish)"
        continue
      left = deadline - time.monotonic()
      need = estimate(it.run, it.epochs_left if it.role != "write" else 0, rates,
                      effective_margin(args), args.startup)
      if need > left and not ((it.cut or args.allow_split) and left >= 2 * args.startup):
        status[it.run.name] = f"not started (needs {need:.0f} s, {left:.0f} s left)"
        continue
      print(f"{it.run.name}: started ({it.role}, expected {need:.0f} s)", flush=True)
      proc = subprocess.Popen(job_command(args, it), cwd=REPO, env=env, start_new_session=True)
      running[it.run.name] = (proc, it, time.monotonic())
    time.sleep(0.5)
  return status


# --- collecting what came back -------------------------------------------------------------------


def collect(source: str, results: str = RESULTS) -> list[str]:
  """Copies each finished NAME/ folder (or NAME.tgz) under ``source`` to ``results/NAME/``.

  Refuses names that are not queue runs and runs whose metrics do not reach their
  config.json's num_epochs. Returns the names copied.
  """
  if not os.path.isdir(source):
    raise SystemExit(f"--collect {source}: no such directory (the --out of a queue call).")
  copied = []
  with tempfile.TemporaryDirectory() as tmp:
    folders = {}
    for entry in sorted(os.listdir(source)):
      path = os.path.join(source, entry)
      if entry.endswith(".tgz"):
        with tarfile.open(path) as t:
          t.extractall(tmp, filter="data")
        folders[entry[:-4]] = os.path.join(tmp, entry[:-4])
      elif os.path.isdir(path) and os.path.exists(os.path.join(path, "metrics.jsonl")):
        folders[entry] = path
    for name, folder in folders.items():
      if name not in RUNS:
        raise SystemExit(f"--collect: {name} is not a queue run (runs: {', '.join(RUNS)}).")
      with open(os.path.join(folder, "config.json")) as f:
        epochs = json.load(f)["num_epochs"]
      if not finished(folder, epochs):
        raise SystemExit(f"--collect: {folder} has not finished its {epochs} epochs.")
      target = os.path.join(results, name)
      if os.path.exists(target):
        shutil.rmtree(target)
      shutil.copytree(folder, target)
      copied.append(name)
      print(f"{name} -> {target}", flush=True)
  return copied


# --- the command line ----------------------------------------------------------------------------


def parse_rates(pairs: list[str]) -> dict:
  """RATES with ``NAME=SECONDS_PER_EPOCH`` overrides applied."""
  rates = dict(RATES)
  for pair in pairs:
    name, _, value = pair.partition("=")
    if name not in RATES:
      raise SystemExit(f"--rate {pair}: unknown rate {name!r}; rates: {', '.join(RATES)}.")
    try:
      rates[name] = float(value)
    except ValueError:
      raise SystemExit(f"--rate {pair}: {value!r} is not a number of seconds.") from None
    if not rates[name] > 0:
      raise SystemExit(f"--rate {pair}: seconds per epoch must be > 0.")
  return rates


def select(names: list[str] | None) -> tuple:
  """The queue, or the named runs of it (in queue order)."""
  if not names:
    return QUEUE
  unknown = [n for n in names if n not in RUNS]
  if unknown:
    raise SystemExit(f"Unknown run(s) {', '.join(unknown)}; queue runs: {', '.join(RUNS)}.")
  return tuple(r for r in QUEUE if r.name in names)


def build_plan(args, rates: dict) -> Plan:
  """The plan of this call from --results (done) and --runs (this machine)."""
  queue = select(args.only)
  names = {r.name for r in queue} | {r.teacher for r in queue if r.teacher}
  epochs = {n: num_epochs(RUNS[n], args.tiny) for n in names}
  done = {n for n in names if finished(os.path.join(args.results, n), epochs[n])}
  in_runs = {n: epochs_done(os.path.join(args.runs, n)) for n in names}
  seconds = math.inf if args.seconds is None else args.seconds
  return make_plan(queue, epochs, done, {n: e for n, e in in_runs.items() if e}, seconds,
                   rates, args.jobs, effective_margin(args), args.allow_split, args.startup)


def effective_margin(args) -> float:
  """--margin times the slowdown of sharing the device with --jobs runs."""
  return args.margin * (args.jobs if args.slowdown is None else args.slowdown)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--seconds", type=float, default=None, help="this call's time (required to run)")
  p.add_argument("--data", default=None, help="the CIFAR-10 binary archive")
  p.add_argument("--out", default=os.environ.get("OUT"), help="where finished runs go ($OUT)")
  p.add_argument("--runs", default=os.path.join("runs", "full"),
                 help="where runs train on this machine (default runs/full)")
  p.add_argument("--results", default=RESULTS, help="committed finished runs (what is done)")
  p.add_argument("--jobs", type=int, default=1, help="runs at once, each its own process")
  p.add_argument("--rate", action="append", default=[], metavar="NAME=SECONDS_PER_EPOCH",
                 help=f"override a rate ({', '.join(RATES)})")
  p.add_argument("--margin", type=float, default=MARGIN, help="x the epochs' expected time")
  p.add_argument("--slowdown", type=float, default=None,
                 help="x the epochs' time of a run sharing the device with --jobs N runs "
                      "(default N: no gain assumed until issue 22 measures it)")
  p.add_argument("--startup", type=float, default=STARTUP_S, help="seconds added per run")
  p.add_argument("--only", nargs="+", default=None, metavar="NAME", help="these runs only")
  p.add_argument("--allow-split", action="store_true",
                 help="start a run that does not fit; a warm machine's next call resumes it")
  p.add_argument("--tar", action="store_true", help="write NAME.tgz per run, not NAME/")
  p.add_argument("--tiny", action="store_true", help="width 0.125, 2 steps per run (CPU tests)")
  p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
  p.add_argument("--collect", metavar="DIR", default=None,
                 help="copy the finished runs in DIR (a returned --out) to --results")
  p.add_argument("--job", default=None, help=argparse.SUPPRESS)
  p.add_argument("--job-no-out", action="store_true", help=argparse.SUPPRESS)
  return p


def check_args(p: argparse.ArgumentParser, args) -> None:
  """Clear errors for what would fail later."""
  if args.seconds is not None and not args.seconds > 0:
    p.error(f"--seconds must be > 0, got {args.seconds:g}.")
  if args.jobs < 1:
    p.error(f"--jobs must be >= 1, got {args.jobs}.")
  if not args.margin > 0 or args.startup < 0 or (args.slowdown is not None
                                                  and not args.slowdown > 0):
    p.error("--margin and --slowdown must be > 0, --startup >= 0.")
  if args.dry_run or args.collect:
    return
  if args.seconds is None and args.job is None:
    p.error("--seconds S is required to run (the time this call may take).")
  if not args.data:
    p.error("--data PATH (the CIFAR-10 binary archive) is required to run.")
  if not os.path.isfile(args.data):
    p.error(f"--data {args.data}: no such file; pass the cifar-10-binary.tar.gz archive.")
  if not args.out:
    p.error("--out DIR is required ($OUT is not set).")


def main(argv=None) -> int:
  p = parser()
  args = p.parse_args(argv)
  check_args(p, args)
  if args.collect:
    collect(args.collect, args.results)
    return 0
  args.runs, args.out = os.path.abspath(args.runs), args.out and os.path.abspath(args.out)
  args.data = args.data and os.path.abspath(args.data)
  if args.job:
    return run_job(args, RUNS[args.job])
  rates = parse_rates(args.rate)
  plan = build_plan(args, rates)
  print(format_plan(plan, rates), flush=True)
  if args.dry_run or not plan.items:
    return 0
  status = execute(args, plan, rates)
  print("Summary:", flush=True)
  for name, s in status.items():
    print(f"  {name}: {s}", flush=True)
  return 0 if all(s.startswith("finished") for s in status.values()) else 1


if __name__ == "__main__":
  sys.exit(main())
