"""Builds the ablation tables of docs/RESULTS.md from experiments/results/<arm>_s<seed>/.

  python experiments/tables.py method2      # or method1, method3

Each row: the arm, its seeds, test top-1 after every epoch (mean over seeds), the final test
top-1 (mean, and the range over seeds), and the ablation's own columns (method 2: gap to
the full-precision arm and mean activation entropy; method 1: quantization error, flip
ratio, tail fraction; method 3: the distillation terms of the last epoch). Arms without a
finished run show "(not run yet)".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

ABLATIONS = {
    "method1": ["m3_r18_ce", "m1_l2", "m1_wreg_0.1", "m1_wreg_0.3", "m1_wreg_1.0",
                "m1_wreg_0.1_late", "m1_wreg_0.3_late", "m1_wreg_1.0_late", "m1_cosmom",
                "m1_wreg_cosmom", "m1_bnfree_agc", "m1_bnfree_agc_wreg", "m1_bnfree_agc_cosmom"],
    "method2": ["m2_fp", "m2_bnn", "m2_mv", "m2_mv_zp", "m2_ge", "m2_all", "m3_r18_ce",
                "m2_reactnet_fda"],
    "bop": ["m3_r18_ce", "bop_larq", "bop_larq_decay", "bop_tau1e-6"],
    "method3": ["m2_fp", "m3_r18_ce", "m3_r18_semantic", "m3_r18_detail", "m3_r18_both",
                "m3_teacher_vgg_fp", "m3_vgg_ce", "m3_vgg_both", "m3_vgg_both_nocos",
                "m3_vgg_detail", "m3_vgg_kl", "m3_vgg_detail_w1"],
}
EXTRA = {
    "method1": [("e_q", "weights/overall/quant_error", "{:.3f}"),
                ("flip ratio", "weights/overall/flip_ratio", "{:.4f}"),
                ("tail (abs w > alpha)", "weights/overall/alpha_tail_frac", "{:.3f}")],
    "method2": [("entropy (bits)", "balance/overall/entropy", "{:.3f}")],
    "bop": [("e_q", "weights/overall/quant_error", "{:.3f}"),
            ("flip ratio", "weights/overall/flip_ratio", "{:.4f}")],
    "method3": [("train CE", "train/ce", "{:.3f}"), ("KL", "train/kl", "{:.3f}"),
                ("1 - cos", "train/cosine", "{:.3f}"), ("detail", "train/detail", "{:.3f}")],
}


def runs_of(arm: str, results: str = RESULTS) -> list[tuple[int, list[dict]]]:
  """(seed, history of metrics.jsonl records) of every finished seed of ``arm``.

  A run's ``balance.json`` (experiments/balance_of_run.py, for runs logged before the
  trainer measured the balance) fills in the last record's missing balance keys.
  """
  out = []
  if not os.path.isdir(results):
    return out
  for name in sorted(os.listdir(results)):
    m = re.fullmatch(re.escape(arm) + r"_s(\d+)", name)
    path = os.path.join(results, name, "metrics.jsonl")
    if m and os.path.exists(path):
      with open(path) as f:
        history = [json.loads(line) for line in f if line.strip()]
      extra = os.path.join(results, name, "balance.json")
      if history and os.path.exists(extra):
        with open(extra) as f:
          history[-1] = {**json.load(f), **history[-1]}
      out.append((int(m.group(1)), history))
  return out


def row(arm: str, ablation: str, fp_acc: float | None, results: str = RESULTS) -> str:
  seeds_and_runs = runs_of(arm, results)
  runs = [r for _, r in seeds_and_runs]
  extra = EXTRA[ablation]
  if not runs:
    return f"| {arm} | (not run yet) |" + " |" * (3 + len(extra) + (ablation == "method2"))
  epochs = min(len(r) for r in runs)
  per_epoch = [statistics.mean(100 * r[e]["test/accuracy"] for r in runs) for e in range(epochs)]
  final = [100 * r[-1]["test/accuracy"] for r in runs]
  mean = statistics.mean(final)
  cells = [arm, ", ".join(str(seed) for seed, _ in seeds_and_runs),
           " / ".join(f"{a:.2f}" for a in per_epoch),
           f"**{mean:.2f}**" + (f" ({min(final):.2f}-{max(final):.2f})" if len(runs) > 1 else "")]
  if ablation == "method2":
    cells.append(f"{fp_acc - mean:+.2f}" if fp_acc is not None else "")
  for _, key, fmt in extra:
    values = [r[-1][key] for r in runs if key in r[-1]]
    cells.append(fmt.format(statistics.mean(values)) if values else "-")
  return "| " + " | ".join(cells) + " |"


def table(ablation: str, results: str = RESULTS) -> str:
  head = ["arm", "seeds", "test top-1 % per epoch (mean)", "final test top-1 % (range)"]
  fp_acc = None
  if ablation == "method2":
    head.append("gap to FP (points)")
    fp = runs_of("m2_fp", results)
    fp_acc = statistics.mean(100 * r[-1]["test/accuracy"] for _, r in fp) if fp else None
  head += [name for name, _, _ in EXTRA[ablation]]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += [row(arm, ablation, fp_acc, results) for arm in ABLATIONS[ablation]]
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("ablation", choices=sorted(ABLATIONS))
  parser.add_argument("--results", default=RESULTS)
  args = parser.parse_args(argv)
  print(table(args.ablation, args.results))


if __name__ == "__main__":
  main()
