"""Builds the ablation tables of docs/RESULTS.md from experiments/results/<arm>_s<seed>/.

  python experiments/tables.py method2   # or method1, method3, mechanisms, method2_parts, stacking
  python experiments/tables.py epochs16 --results experiments/results_16ep
  python experiments/tables.py steps --plot docs/img/mechanisms_steps.png

Each row: the arm, its seeds, test top-1 after every epoch (mean over seeds), the final test
top-1 (mean, and the range over seeds), and the ablation's own columns (method 2: gap to
the full-precision arm and mean activation entropy; method 1: quantization error, flip
ratio, tail fraction; method 3: the distillation terms of the last epoch). Arms without a
finished run show "(not run yet)".

``steps`` sets each method-1 mechanism arm's gain over Adam against the step its signs feel
(``relative_step``), ordered by that step, and ``--plot`` draws it.
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
    # what carries method 1's gain (docs/RESULTS.md, "Mechanisms")
    "mechanisms": ["m3_r18_ce", "m1_adam_blr3", "m1_adam_blr10", "m1_cosmom", "m1_cosmom_mu0",
                   "m1_cosmom_fixed_t", "m1_project", "m1_latent_decay0.5", "m1_latent_decay",
                   "m1_latent_decay8.0", "m1_cosmom_k0.3", "m1_cosmom_k3.0", "m1_clip0.014"],
    # what carries method 2's gain
    "method2_parts": ["m2_fp", "m2_bnn", "m2_mv", "m2_zp", "m2_mv_zp", "m2_ge", "m2_refine",
                      "m2_no_mv", "m2_all", "m2_reactnet_fda", "m2_reactnet_fda_no_mv"],
    # does method 1 add to method 3 or to method 2 (latent decay under distillation, in FDA)?
    "stacking": ["m3_r18_ce", "m1_latent_decay", "m3_r18_both", "m13_r18_both_decay",
                 "m2_reactnet_fda", "m12_fda_decay"],
    # the bfloat16 precision policy against float32 (docs/METHODS.md, "Numerics")
    "precision": ["m3_r18_ce", "r18_bf16"],
    # the 16-epoch proxy (python experiments/tables.py epochs16 --results
    # experiments/results_16ep)
    "epochs16": ["m3_r18_ce", "m1_cosmom_mu0", "m1_latent_decay", "m2_fp", "m3_r18_both",
                 "m2_reactnet_fda"],
}
# A column against another arm's mean final top-1: (arm, header, sign of this - that).
GAP = {"method2": ("m2_fp", "gap to FP (points)", -1),
       "method2_parts": ("m2_fp", "gap to FP (points)", -1),
       "epochs16": ("m3_r18_ce", "vs Adam (points)", +1),
       "stacking": ("m3_r18_ce", "vs Adam (points)", +1)}
EXTRA = {
    "method1": [("e_q", "weights/overall/quant_error", "{:.3f}"),
                ("flip ratio", "weights/overall/flip_ratio", "{:.4f}"),
                ("tail (abs w > alpha)", "weights/overall/alpha_tail_frac", "{:.3f}")],
    "method2": [("entropy (bits)", "balance/overall/entropy", "{:.3f}")],
    "bop": [("e_q", "weights/overall/quant_error", "{:.3f}"),
            ("flip ratio", "weights/overall/flip_ratio", "{:.4f}")],
    "method3": [("train CE", "train/ce", "{:.3f}"), ("KL", "train/kl", "{:.3f}"),
                ("1 - cos", "train/cosine", "{:.3f}"), ("detail", "train/detail", "{:.3f}")],
    # a fourth field picks an epoch (1-based) instead of the last
    "mechanisms": [("mean abs w, ep 1", "weights/overall/mean_abs", "{:.4f}", 1),
                   ("mean abs w", "weights/overall/mean_abs", "{:.4f}"),
                   ("CV of abs w", "weights/overall/channel_cv", "{:.3f}"),
                   ("flips ep 2", "weights/overall/flip_ratio", "{:.3f}", 2),
                   ("flips ep 4", "weights/overall/flip_ratio", "{:.4f}"),
                   ("e_q", "weights/overall/quant_error", "{:.3f}")],
    "method2_parts": [("entropy (bits)", "balance/overall/entropy", "{:.3f}")],
    "stacking": [("mean abs w", "weights/overall/mean_abs", "{:.4f}")],
    "precision": [("train loss", "train/loss", "{:.3f}"),
                  ("epoch s", "epoch_seconds", "{:.0f}"),
                  ("e_q", "weights/overall/quant_error", "{:.3f}")],
    "epochs16": [("top-1 ep 4", "test/accuracy", "{:.2%}", 4),
                 ("top-1 ep 8", "test/accuracy", "{:.2%}", 8),
                 ("top-1 ep 12", "test/accuracy", "{:.2%}", 12)],
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


def row(arm: str, ablation: str, ref_acc: float | None, results: str = RESULTS) -> str:
  seeds_and_runs = runs_of(arm, results)
  runs = [r for _, r in seeds_and_runs]
  extra = EXTRA[ablation]
  if not runs:
    return f"| {arm} | (not run yet) |" + " |" * (3 + len(extra) + (ablation in GAP))
  epochs = min(len(r) for r in runs)
  per_epoch = [statistics.mean(100 * r[e]["test/accuracy"] for r in runs) for e in range(epochs)]
  final = [100 * r[-1]["test/accuracy"] for r in runs]
  mean = statistics.mean(final)
  cells = [arm, ", ".join(str(seed) for seed, _ in seeds_and_runs),
           " / ".join(f"{a:.2f}" for a in per_epoch),
           f"**{mean:.2f}**" + (f" ({min(final):.2f}-{max(final):.2f})" if len(runs) > 1 else "")]
  if ablation in GAP:
    sign = GAP[ablation][2]
    cells.append(f"{sign * (mean - ref_acc):+.2f}" if ref_acc is not None else "")
  for _, key, fmt, *epoch in extra:
    records = [r[epoch[0] - 1] if epoch else r[-1] for r in runs if len(r) >= (epoch or [0])[0]]
    values = [rec[key] for rec in records if key in rec]
    cells.append(fmt.format(statistics.mean(values)) if values else "-")
  return "| " + " | ".join(cells) + " |"


def table(ablation: str, results: str = RESULTS) -> str:
  head = ["arm", "seeds", "test top-1 % per epoch (mean)", "final test top-1 % (range)"]
  ref_acc = None
  if ablation in GAP:
    ref_arm, header, _ = GAP[ablation]
    head.append(header)
    ref = runs_of(ref_arm, results)
    ref_acc = statistics.mean(100 * r[-1]["test/accuracy"] for _, r in ref) if ref else None
  head += [name for name, *_ in EXTRA[ablation]]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += [row(arm, ablation, ref_acc, results) for arm in ABLATIONS[ablation]]
  return "\n".join(lines)


def _lr_multiplier(arm: str, seed: int, results: str) -> float:
  """``optim.binary_lr_multiplier`` of a finished run (1 where its config predates it)."""
  with open(os.path.join(results, f"{arm}_s{seed}", "config.json")) as f:
    return json.load(f)["optim"].get("binary_lr_multiplier", 1.0)


def relative_step(lr_multiplier: float, ref_mean_abs: float, mean_abs: float) -> float:
  """lr_mult x mean|w|_Adam / mean|w|_arm (final overall mean|w| of the latent weights).

  Adam's step on a weight is about lr x lr_mult whatever its size, so the step a sign feels,
  relative to the latent scale, is that over mean|w| (docs/RESULTS.md, "Mechanisms").
  """
  return lr_multiplier * ref_mean_abs / mean_abs


def steps(results: str = RESULTS, reference: str = "m3_r18_ce") -> list[dict]:
  """The mechanism arms with a finished run: relative step and gain in top-1 over the reference
  (means over seeds, with the seeds' range of the gain), ordered by relative step."""
  ref = runs_of(reference, results)
  if not ref:
    raise SystemExit(f"steps: no finished run of the reference arm {reference!r} in {results}")
  ref_acc = statistics.mean(100 * h[-1]["test/accuracy"] for _, h in ref)
  ref_abs = statistics.mean(h[-1]["weights/overall/mean_abs"] for _, h in ref)
  out = []
  for arm in ABLATIONS["mechanisms"]:
    runs = runs_of(arm, results)
    if arm == reference or not runs:
      continue
    gains = [100 * h[-1]["test/accuracy"] - ref_acc for _, h in runs]
    step = [relative_step(_lr_multiplier(arm, seed, results), ref_abs,
                          h[-1]["weights/overall/mean_abs"]) for seed, h in runs]
    flips = [h[-1]["weights/overall/flip_ratio"] for _, h in runs
             if "weights/overall/flip_ratio" in h[-1]]
    out.append({"arm": arm, "seeds": [s for s, _ in runs], "step": statistics.mean(step),
                "gain": statistics.mean(gains), "low": min(gains), "high": max(gains),
                "flips": statistics.mean(flips) if flips else None})
  return sorted(out, key=lambda r: r["step"])


def steps_table(rows: list[dict]) -> str:
  lines = ["| arm | seeds | relative step (x Adam's) | flips, last epoch | "
           "vs Adam (points, range) |", "|---|---|---|---|---|"]
  for r in rows:
    spread = f" ({r['low']:+.2f} to {r['high']:+.2f})" if len(r["seeds"]) > 1 else ""
    flips = "-" if r["flips"] is None else f"{r['flips']:.4f}"
    lines.append(f"| {r['arm']} | {', '.join(map(str, r['seeds']))} | {r['step']:.1f} | "
                 f"{flips} | {r['gain']:+.2f}{spread} |")
  return "\n".join(lines)


def plot_steps(rows: list[dict], path: str) -> None:
  """Gain over Adam against relative step (log x), the seeds' range as error bars."""
  from bnn_jax import plotting  # here, so the tables themselves need the standard library only
  plt = plotting.pyplot("--plot", SystemExit)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for r in rows:
    ax.errorbar(r["step"], r["gain"], yerr=[[r["gain"] - r["low"]], [r["high"] - r["gain"]]],
                fmt="o", capsize=3)
    ax.annotate(r["arm"].removeprefix("m1_"), (r["step"], r["gain"]), textcoords="offset points",
                xytext=(5, 4), fontsize=8)
  ax.axhline(0.0, color="grey", lw=0.8)
  ax.set_xscale("log")
  ax.set_xlabel("step relative to the latent scale, x Adam's (lr_mult x mean|w|_Adam / mean|w|)")
  ax.set_ylabel("final test top-1 - Adam's (points)")
  ax.set_title("Method-1 mechanism arms, ReActNet-18 proxy (4 epochs)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("ablation", choices=sorted(ABLATIONS) + ["steps"])
  parser.add_argument("--results", default=RESULTS)
  parser.add_argument("--plot", help="steps only: write the picture here (PNG)")
  args = parser.parse_args(argv)
  if args.ablation == "steps":
    rows = steps(args.results)
    print(steps_table(rows))
    if args.plot:
      plot_steps(rows, args.plot)
  else:
    print(table(args.ablation, args.results))


if __name__ == "__main__":
  main()
