"""Runs arms of the shared CPU proxy protocol and collects their metrics.

The proxy (docs/RESULTS.md, "The proxy protocol"): the model under test at width 0.25, all
50,000 CIFAR-10 training images, the full 10,000-image test set, batch 128, Adam 2e-3 with
cosine decay to 0, pad-4 crop + flip, 4 epochs, test top-1 after every epoch, seeds 0 and 1.
About 15-30 minutes a run on 2 cores.

  python experiments/proxy.py --data ../shared/data/cifar-10-binary.tar.gz \
      --arms m2_fp m2_bnn --seeds 0 1

Each run trains in ``--runs/ARM_sSEED`` (resumable: rerun the same command) and, once finished,
its ``metrics.jsonl`` and ``config.json`` are copied to ``experiments/results/ARM_sSEED/``,
which is what gets committed and what ``experiments/tables.py`` reads.

On one accelerator, ``--jobs N`` runs N arms at once, each in its own process (a width-0.25
network at batch 128 leaves a GPU mostly idle); an arm whose teacher is another run waits
until that run has finished. Each process's output goes to ``--runs/NAME.log``:

  python experiments/proxy.py --data /tmp/cifar-10-binary.tar.gz --jobs 8 \
      --arms m2_fp m3_r18_ce m3_r18_both --seeds 0 1

The 16-epoch proxy (docs/RESULTS.md, "16-epoch proxy") is the same protocol with the cosine
over 16 epochs; ``--epochs 16`` trains in runs/proxy_16ep and collects in
experiments/results_16ep (tables.py --results experiments/results_16ep):

  python experiments/proxy.py --data ../shared/data/cifar-10-binary.tar.gz --epochs 16 \
      --arms m3_r18_ce --seeds 0

On a CPU that runs for hours across sessions, ``experiments/proxy_queue.sh NAME`` takes jobs
("EPOCHS ARM SEED" per line) from runs/NAME.txt one at a time, niced; SIGTERM to it checkpoints
the running job and puts its line back at the front (two queues side by side on 2 cores):

  nohup experiments/proxy_queue.sh q4 > runs/q4.out 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

# Every arm: (model name, model options, {config key: value}) on top of the proxy protocol.
# "{runs}" in a value is replaced by --runs (teachers are earlier arms' run directories).
FDA_OFF = {"mean_variance": False, "zero_point": False, "excitation": False, "refinement": False}
WREG = {"optim.w_reg.enabled": True, "optim.w_reg.target": "mean_abs",
        "optim.w_reg.placement": "decoupled"}
LATE = {"optim.w_reg.start_epochs": 2.0, "optim.w_reg.ramp_epochs": 1.0}
# kappa and D at the scale of t = mean|w| (~0.03-0.1 at this width), not of t = 1
COSMOM = {"optim.cosine_momentum.enabled": True, "optim.cosine_momentum.target": "mean_abs",
          "optim.cosine_momentum.placement": "decoupled", "optim.cosine_momentum.strength": 1.0,
          "optim.cosine_momentum.width": 0.05}
# decoupled weight decay on the latent binary weights: the W-regularizer at t = 0
DECAY = {"optim.w_reg.enabled": True, "optim.w_reg.target": 0.0, "optim.w_reg.power": 2,
         "optim.w_reg.placement": "decoupled", "weight_target": "mean_abs"}
TEACHER_R18 = {"teacher.workdir": "{runs}/m2_fp_s0"}
TEACHER_VGG = {"teacher.workdir": "{runs}/m3_teacher_vgg_fp_s0"}
SEMANTIC = {"distill.semantic_weight": 1.0}
DETAIL = {"distill.detail_weight": 10.0}
ARMS = {
    # ReActNet-18, Adam: the baseline of methods 1 and 3 (CE only).
    "m3_r18_ce": ("reactnet18", {}, {}),
    # The same in bfloat16 (docs/METHODS.md, "Numerics"): does the precision policy learn like
    # float32 on the proxy?
    "r18_bf16": ("reactnet18", {}, {"model.dtype": "bfloat16"}),
    # Method 1 (second pass): decoupled W-regularizer, t = mean|w| per channel.
    "m1_l2": ("reactnet18", {}, {"optim.binary_weight_decay": 5e-4}),
    **{f"m1_wreg_{lam}": ("reactnet18", {}, {**WREG, "optim.w_reg.strength": lam})
       for lam in (0.1, 0.3, 1.0)},
    **{f"m1_wreg_{lam}_late": ("reactnet18", {}, {**WREG, **LATE, "optim.w_reg.strength": lam})
       for lam in (0.1, 0.3, 1.0)},
    "m1_cosmom": ("reactnet18", {}, COSMOM),
    # Method-1 mechanism controls (docs/RESULTS.md, "Mechanisms"), each changing one thing:
    # Adam with the latent binary weights' learning rate x3 / x10 (a smaller latent scale
    # is a larger step for Adam's scale-free updates) ...
    **{f"m1_adam_blr{m}": ("reactnet18", {}, {"optim.binary_lr_multiplier": float(m)})
       for m in (3, 10)},
    # ... the cosine momentum without velocity (mu = 0), with t fixed per channel at its
    # initial value, and at a third / three times the dose ...
    "m1_cosmom_mu0": ("reactnet18", {}, {**COSMOM, "optim.cosine_momentum.decay": 0.0}),
    "m1_cosmom_fixed_t": ("reactnet18", {}, {**COSMOM,
                                             "optim.cosine_momentum.target": "init_mean_abs"}),
    **{f"m1_cosmom_k{k}": ("reactnet18", {}, {**COSMOM, "optim.cosine_momentum.strength": k})
       for k in (0.3, 3.0)},
    # ... and the tail cut outright: |w| clipped to t + D (t = mean|w|, D as COSMOM's).
    "m1_project": ("reactnet18", {}, {"optim.tail_projection.enabled": True,
                                      "optim.tail_projection.width": 0.05}),
    # ... and the latent scale shrunk with no target at all: decoupled weight decay on the
    # latent binary weights (the W-regularizer with t = 0: step -lr * lambda * w). lambda = 2
    # puts a random walk of Adam-sized steps (about half of lr, from m1_adam_blr10's growth)
    # at mean|w| ~0.01, m1_cosmom_mu0's scale. Does any shrinking of the scale give the gain?
    "m1_latent_decay": ("reactnet18", {}, {**DECAY, "optim.w_reg.strength": 2.0}),
    # ... and its dose: a scale about twice and half as large (std ~ 1 / sqrt(lambda))
    **{f"m1_latent_decay{lam}": ("reactnet18", {}, {**DECAY, "optim.w_reg.strength": lam})
       for lam in (0.5, 8.0)},
    # ... and the scale capped with no pull and no decay: Adam with every latent binary weight
    # clipped to |w| <= c after each step (BinaryConnect's clip, here at c = 0.014 instead of
    # 1: the tail projection with t = 0, D = c). A uniform fill of the box gives mean|w| = c/2,
    # weights piled at the walls up to c: a relative step of about 4-6x, the peak of the
    # decay and cosine-momentum arms (docs/RESULTS.md, "Mechanisms").
    "m1_clip0.014": ("reactnet18", {}, {"optim.tail_projection.enabled": True,
                                        "optim.tail_projection.target": 0.0,
                                        "optim.tail_projection.width": 0.014}),
    # Both transforms together (the W-regularizer at the CPU runs' best strength, late start).
    "m1_wreg_cosmom": ("reactnet18", {}, {**WREG, **LATE, "optim.w_reg.strength": 0.3, **COSMOM}),
    "m1_bnfree_agc": ("reactnet18_bnfree", {}, {"optim.agc_clip": 0.02}),
    # The BN-free network with the same plus the cosine momentum (the best BN setting, GPU s0).
    "m1_bnfree_agc_cosmom": ("reactnet18_bnfree", {}, {"optim.agc_clip": 0.02, **COSMOM}),
    # The BN-free network with the same plus the W-regularizer (lambda 0.3, late start).
    "m1_bnfree_agc_wreg": ("reactnet18_bnfree", {}, {"optim.agc_clip": 0.02, **WREG, **LATE,
                                                     "optim.w_reg.strength": 0.3}),
    # Bop (issue 14) on the binary kernels, Adam on the rest: larq's defaults, and a larger tau.
    "bop_larq": ("reactnet18", {}, {"optim.name": "bop", "optim.bop.threshold": 1e-8,
                                    "optim.bop.gamma": 1e-4}),
    "bop_tau1e-6": ("reactnet18", {}, {"optim.name": "bop", "optim.bop.threshold": 1e-6,
                                       "optim.bop.gamma": 1e-4}),
    # larq's tau and gamma, gamma decayed with the proxy's cosine (Adam's lr) to 0.
    "bop_larq_decay": ("reactnet18", {}, {"optim.name": "bop", "optim.bop.threshold": 1e-8,
                                          "optim.bop.gamma": 1e-4, "optim.bop.schedule": "lr"}),
    # Method 2 (feature distribution adjustment), ResNet-18.
    "m2_fp": ("resnet18_fp", {}, {}),
    "m2_bnn": ("resnet18_bnn", {}, {}),
    "m2_mv": ("resnet18_fda", {**FDA_OFF, "mean_variance": True}, {}),
    "m2_mv_zp": ("resnet18_fda", {**FDA_OFF, "mean_variance": True, "zero_point": True}, {}),
    "m2_ge": ("resnet18_fda", {**FDA_OFF, "excitation": True}, {}),
    "m2_all": ("resnet18_fda", {}, {}),
    # Component attribution: all but mean-variance, refinement alone, zero point alone.
    "m2_no_mv": ("resnet18_fda", {"mean_variance": False}, {}),
    "m2_refine": ("resnet18_fda", {**FDA_OFF, "refinement": True}, {}),
    "m2_zp": ("resnet18_fda", {**FDA_OFF, "zero_point": True}, {}),
    # ReActNet-18 with all four (the thesis names it for the same 0.40-point gap); its BNN
    # baseline is m3_r18_ce, its full-precision reference m2_fp.
    "m2_reactnet_fda": ("reactnet18_fda", {}, {}),
    # ... and without mean-variance adjustment (on ResNet-18 it cost 5 points: m2_no_mv)
    "m2_reactnet_fda_no_mv": ("reactnet18_fda", {"mean_variance": False}, {}),
    # ... and with latent decay lambda 2 (method 1's mechanism): the FDA network keeps Adam's
    # latent scale and flip rate and gains by a lower training loss (16-epoch proxy), so the
    # two act on different things and may add.
    "m12_fda_decay": ("reactnet18_fda", {}, {**DECAY, "optim.w_reg.strength": 2.0}),
    # Method 3 (deep and shallow feature enhancement) and the VGG teacher.
    "m3_teacher_vgg_fp": ("vgg_small_fp", {}, {}),
    "m3_r18_semantic": ("reactnet18", {}, {**TEACHER_R18, **SEMANTIC}),
    "m3_r18_detail": ("reactnet18", {}, {**TEACHER_R18, **DETAIL}),
    "m3_r18_both": ("reactnet18", {}, {**TEACHER_R18, **SEMANTIC, **DETAIL}),
    # Do methods 1 and 3 add? Distillation leaves the latent scale where Adam has it (mean|w|
    # 0.084 against 0.079 at epoch 12 of the 16-epoch proxy), so latent decay may stack on it.
    "m13_r18_both_decay": ("reactnet18", {}, {**TEACHER_R18, **SEMANTIC, **DETAIL, **DECAY,
                                              "optim.w_reg.strength": 2.0}),
    "m3_vgg_ce": ("vgg_small_bnn", {}, {}),
    "m3_vgg_both": ("vgg_small_bnn", {}, {**TEACHER_VGG, **SEMANTIC, **DETAIL}),
    # VGG-Small's penultimate vector is its flattened last map, which the cosine term did not
    # align (1 - cos 0.50 against 0.07 on ReActNet-18): the same without it, and detail alone.
    "m3_vgg_both_nocos": ("vgg_small_bnn", {}, {**TEACHER_VGG, **SEMANTIC, **DETAIL,
                                                "distill.cosine_weight": 0.0}),
    "m3_vgg_detail": ("vgg_small_bnn", {}, {**TEACHER_VGG, **DETAIL}),
    # The KL alone, and the detail term at a tenth of its weight (the detail term alone hurt).
    "m3_vgg_kl": ("vgg_small_bnn", {}, {**TEACHER_VGG, **SEMANTIC, "distill.cosine_weight": 0.0}),
    "m3_vgg_detail_w1": ("vgg_small_bnn", {}, {**TEACHER_VGG, "distill.detail_weight": 1.0}),
}


def protocol_dir(base: str, epochs: int) -> str:
  """``base`` for the 4-epoch proxy, ``base_16ep`` (etc.) for a longer one, so runs and
  results of different lengths never mix (a 4-epoch workdir would resume as a 16-epoch run)."""
  return base if epochs == 4 else f"{base}_{epochs}ep"


def proxy_config(data_path: str, model: str, options: dict, seed: int, overrides: dict,
                 epochs: int = 4, runs: str = "runs/proxy"):
  """The proxy protocol's config for one arm."""
  from bnn_jax.config import base_config, set_key, set_model
  c = base_config()
  set_model(c, model, **options)
  c.model.width = 0.25
  c.data.path = data_path
  c.batch_size = 128
  c.num_epochs = epochs
  c.optim.name = "adam"
  c.optim.lr = 2e-3
  c.optim.schedule = "cosine"
  c.seed = seed
  c.progress_bar = False
  for key, value in overrides.items():
    set_key(c, key, value.replace("{runs}", runs) if isinstance(value, str) else value)
  return c


def finished(workdir: str, epochs: int) -> bool:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return bool(records) and records[-1].get("epoch") == epochs


def collect(workdir: str, name: str, results: str = RESULTS) -> str:
  """Copies a finished run's metrics.jsonl and config.json to experiments/results/NAME/.

  A collected run is never overwritten by a different one: a rerun whose metrics differ (a
  teacher retrained on another CPU model, say) goes to NAME.rerun-YYYY-MM-DD/ instead.
  """
  out = os.path.join(results, name)
  old = os.path.join(out, "metrics.jsonl")
  if os.path.exists(old):
    with open(old, "rb") as a, open(os.path.join(workdir, "metrics.jsonl"), "rb") as b:
      if a.read() != b.read():
        out = f"{out}.rerun-{time.strftime('%Y-%m-%d', time.gmtime())}"
  os.makedirs(out, exist_ok=True)
  for f in ("metrics.jsonl", "config.json"):
    shutil.copy(os.path.join(workdir, f), os.path.join(out, f))
  return out


def teacher_runs(arm: str) -> list[str]:
  """The runs (ARM_sSEED names) an arm's overrides point to through ``{runs}/NAME``."""
  return [m for v in ARMS[arm][2].values() if isinstance(v, str)
          for m in re.findall(r"\{runs\}/([\w.\-]+)", v)]


def ordered_jobs(arms: list[str], seeds: list[int]) -> list[tuple[str, int]]:
  """(arm, seed) pairs, seed by seed in the given arm order, the runs that are some other
  arm's teacher first (so that their students can start as early as possible)."""
  jobs = [(arm, seed) for seed in seeds for arm in arms]
  needed = {t for arm, _ in jobs for t in teacher_runs(arm)}
  return sorted(jobs, key=lambda job: f"{job[0]}_s{job[1]}" not in needed)


def run_parallel(args, jobs: list[tuple[str, int]]) -> int:
  """Runs each (arm, seed) as ``proxy.py --arms ARM --seeds SEED`` in its own process, at most
  ``args.jobs`` at a time, in the given order, a job starting only once its teachers have
  finished. Returns the number of jobs that did not finish."""
  names = {f"{arm}_s{seed}" for arm, seed in jobs}
  for arm, seed in jobs:
    missing = [t for t in teacher_runs(arm)
               if t not in names and not finished(os.path.join(args.runs, t), args.epochs)]
    if missing:
      raise SystemExit(f"{arm}_s{seed} needs the finished run(s) {missing} in {args.runs}; "
                       f"add their arms to --arms.")
  pending = list(jobs)
  running: dict[str, tuple[subprocess.Popen, object]] = {}
  failed: set[str] = set()
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")  # share the accelerator
  os.makedirs(args.runs, exist_ok=True)
  while pending or running:
    for name, (proc, log) in list(running.items()):
      if proc.poll() is not None:
        log.close()
        del running[name]
        ok = proc.returncode == 0 and finished(os.path.join(args.runs, name), args.epochs)
        if not ok:
          failed.add(name)
        print(f"{name}: {'finished' if ok else f'FAILED (exit {proc.returncode})'}", flush=True)
    for job in list(pending):
      if len(running) >= args.jobs:
        break
      arm, seed = job
      name = f"{arm}_s{seed}"
      teachers = teacher_runs(arm)
      if any(t in failed for t in teachers):
        pending.remove(job)
        failed.add(name)
        print(f"{name}: skipped (its teacher failed)", flush=True)
        continue
      if not all(t not in running and finished(os.path.join(args.runs, t), args.epochs)
                 for t in teachers):
        continue  # its teacher is still pending or running
      pending.remove(job)
      cmd = [sys.executable, os.path.abspath(__file__), "--data", args.data, "--arms", arm,
             "--seeds", str(seed), "--runs", args.runs, "--epochs", str(args.epochs),
             "--results", args.results, "--set", *args.set]
      log = open(os.path.join(args.runs, f"{name}.log"), "a")
      running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
      print(f"{name}: started", flush=True)
    time.sleep(1.0)
  return len(failed)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True, help="CIFAR-10 binary archive")
  parser.add_argument("--arms", nargs="+", required=True, choices=sorted(ARMS))
  parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
  parser.add_argument("--epochs", type=int, default=4,
                      help="4: the proxy; 16: the 16-epoch proxy (its own --runs and --results)")
  parser.add_argument("--runs", default=None,
                      help="where the runs train (default runs/proxy, runs/proxy_16ep, ...)")
  parser.add_argument("--set", nargs="*", default=[], help="extra overrides key=json_value")
  parser.add_argument("--results", default=None, help="where finished runs are collected "
                      "(default experiments/results, or experiments/results_16ep for 16 epochs)")
  parser.add_argument("--jobs", type=int, default=1,
                      help="arms run at once, each in its own process (for an accelerator)")
  args = parser.parse_args(argv)
  if args.epochs < 1:
    parser.error(f"--epochs must be >= 1, got {args.epochs}.")
  args.runs = args.runs or protocol_dir("runs/proxy", args.epochs)
  args.results = args.results or protocol_dir(RESULTS, args.epochs)
  if args.jobs > 1:
    sys.exit(1 if run_parallel(args, ordered_jobs(args.arms, args.seeds)) else 0)
  from bnn_jax import xla_cpu
  xla_cpu.add_tuned_flags()  # the CPU flag train.py sets, before JAX starts
  from bnn_jax import train_lib
  for seed in args.seeds:
    for arm in args.arms:
      name = f"{arm}_s{seed}"
      workdir = os.path.join(args.runs, name)
      if not finished(workdir, args.epochs):
        model, options, overrides = ARMS[arm]
        overrides = dict(overrides)
        overrides.update({k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)})
        t0 = time.time()
        config = proxy_config(args.data, model, options, seed, overrides, args.epochs, args.runs)
        train_lib.train_and_evaluate(config, workdir)
        if not finished(workdir, args.epochs):
          sys.exit(f"{name} stopped early; rerun the same command to resume.")
        print(f"{name}: {time.time() - t0:.0f} s", flush=True)
      print(f"{name} -> {collect(workdir, name, args.results)}", flush=True)


if __name__ == "__main__":
  main()
