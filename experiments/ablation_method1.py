"""Method-1 ablation on the real CIFAR-10, sized for a 2-core CPU (about an hour).

Arms (a small-width ReActNet-18, the same data, schedule and seeds):
  a  Adam
  b  Adam + L2 decay on the latent binary weights (the "traditional" baseline)
  c  Adam + W-regularizer
  d  Adam + variant cosine momentum
  e  Adam + both
  f  BN-free ReActNet-18 + both (+ adaptive gradient clipping)

  python experiments/ablation_method1.py --data ../shared/data/cifar-10-binary.tar.gz \
      --out runs/ablation --seeds 0 1

Each run writes its own workdir (resumable); the script then prints a markdown table
(test top-1 mean and spread over seeds, and the end-of-training latent-weight statistics)
and writes it to OUT/table.md.
"""

import argparse
import json
import os
import statistics
import time

ARMS = {
    "a_adam": {},
    "b_adam_l2": {"optim.binary_weight_decay": 5e-4},
    "c_wreg": {"optim.w_reg.enabled": True, "optim.w_reg.strength": 1e-4},
    "d_cosmom": {"optim.cosine_momentum.enabled": True},
    "e_both": {"optim.w_reg.enabled": True, "optim.w_reg.strength": 1e-4,
               "optim.cosine_momentum.enabled": True},
    "f_bnfree_both": {"model.name": "reactnet18_bnfree", "optim.agc_clip": 0.02,
                      "optim.w_reg.enabled": True, "optim.w_reg.strength": 1e-4,
                      "optim.cosine_momentum.enabled": True},
    # Calibration after the first pass (c and e froze the signs at lambda = 1e-4):
    "c2_wreg_1e-5": {"optim.w_reg.enabled": True, "optim.w_reg.strength": 1e-5},
    "e2_both_1e-5": {"optim.w_reg.enabled": True, "optim.w_reg.strength": 1e-5,
                     "optim.cosine_momentum.enabled": True},
}
REPORTED = ("test/accuracy", "weights/overall/mean_dist", "weights/overall/tail_frac",
            "weights/overall/flip_ratio", "weights/overall/near_frac")


def make_config(args, arm, seed):
  from bnn_jax.config import base_config, set_key
  c = base_config()
  c.model.width = args.width
  c.data.path = args.data
  c.data.train_subset = args.train_subset
  c.batch_size = args.batch_size
  c.num_epochs = args.epochs
  c.optim.lr = args.lr
  c.seed = seed
  c.eval_every_epochs = args.epochs  # test once, at the end (the arms are compared there)
  c.progress_bar = False
  for key, value in ARMS[arm].items():
    set_key(c, key, value)
  for override in args.set:
    key, value = override.split("=", 1)
    set_key(c, key, json.loads(value))
  return c


def last_record(workdir):
  from bnn_jax import checkpoints
  history = checkpoints.read_metrics(workdir)
  return history[-1] if history else None


def table(args):
  rows = ["| arm | test top-1 % (mean ± half-range) | seeds | mean distance to ±t | near ±t (0.1) | tail (abs w > t) | flip ratio (last epoch) |",
          "|---|---|---|---|---|---|---|"]
  for arm in args.arms:
    recs = [last_record(os.path.join(args.out, f"{arm}_s{s}")) for s in args.seeds]
    recs = [r for r in recs if r and r["epoch"] == args.epochs]
    if not recs:
      rows.append(f"| {arm} | (not run) | | | | | |")
      continue
    acc = [100 * r["test/accuracy"] for r in recs]
    mean = lambda k: statistics.mean(r.get(k, float("nan")) for r in recs)
    rows.append(f"| {arm} | {statistics.mean(acc):.2f} ± {(max(acc) - min(acc)) / 2:.2f} "
                f"({', '.join(f'{a:.2f}' for a in acc)}) | {len(recs)} | "
                f"{mean('weights/overall/mean_dist'):.3f} | {mean('weights/overall/near_frac'):.3f} | "
                f"{mean('weights/overall/tail_frac'):.3f} | {mean('weights/overall/flip_ratio'):.4f} |")
  return "\n".join(rows)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True, help="CIFAR-10 binary archive")
  parser.add_argument("--out", default="runs/ablation")
  parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
  parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
  parser.add_argument("--width", type=float, default=0.25)
  parser.add_argument("--train-subset", type=int, default=8_000)
  parser.add_argument("--epochs", type=int, default=4)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--lr", type=float, default=2e-3)
  parser.add_argument("--set", nargs="*", default=[], help="extra overrides key=json_value")
  parser.add_argument("--table-only", action="store_true")
  args = parser.parse_args()
  if not args.table_only:
    from bnn_jax import train_lib
    for seed in args.seeds:  # seed-major: a partial run still has every arm once
      for arm in args.arms:
        workdir = os.path.join(args.out, f"{arm}_s{seed}")
        rec = last_record(workdir)
        if rec and rec["epoch"] == args.epochs:
          continue
        t0 = time.time()
        train_lib.train_and_evaluate(make_config(args, arm, seed), workdir)
        rec = last_record(workdir)
        if not rec or rec["epoch"] < args.epochs:  # stopped by SIGTERM / Ctrl-C: resume later
          raise SystemExit(f"{arm} seed {seed} stopped early; rerun the same command to resume.")
        print(f"{arm} seed {seed}: test {rec.get('test/accuracy', float('nan')):.4f} "
              f"({time.time() - t0:.0f} s)", flush=True)
  text = table(args)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "table.md"), "w") as f:
    f.write(text + "\n")
  print(text)


if __name__ == "__main__":
  main()
