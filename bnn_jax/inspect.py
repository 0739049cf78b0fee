"""Inspect a training run: ``python -m bnn_jax.inspect RUN_DIR [--step N] [options]``.

Prints, for one checkpoint of a run (default: the latest):

* the run's resolved config (``config.json``) and the checkpoint step (and epoch);
* the metrics history from ``metrics.jsonl``, one row per epoch, with the best and
  the last test accuracy: every ``train/<key>`` the objective logged (loss, accuracy,
  and e.g. ce / kl / cosine of a distillation objective), test loss and accuracy, the
  activation bit entropy (``balance/overall/entropy``), the weight quantization error
  (``weights/overall/quant_error``), the flip ratio, mean ||w| - t|, lr and images/s,
  each when the run logged it;
* the activation balance: per activation sign (its module path) the fraction of +1 on a
  fixed batch of test images and its bit entropy, and their means ("overall"), from
  the last record that has them (baseline and method-2 models alike);
* the model summary (``bnn_jax.summary`` of the module ``bnn_jax.models.from_config``
  builds from config.json): parameters, binary parameters, float32 and packed memory,
  binary and float MACs per layer;
* per binary layer (every ``binary_kernel``), how binary the latent weights are
  (``bnn_jax.weight_stats.latent_weight_stats`` with target t, default 1):
  mean |w|, mean ||w| - t|, the fraction within ``--near`` (0.1) of +-t, the tail
  fraction |w| > t and the exact zeros (and e_q, the quantization error, when the
  statistics provide it).

Options:

``--compare OTHER``  flip ratio, per binary layer and overall, between this
    checkpoint and OTHER: a step of the same run (an integer), another run's
    workdir (its latest step) or a step folder ``RUN/checkpoints/<step>``. The flip
    ratio is the fraction of latent weights whose sign (sign(0) = +1) differs.
``--plot FILE.png``  a grid of latent-weight histograms, one panel per binary layer,
    with the band +-t marked (matplotlib, Agg backend: no display needed).
``--export FILE``    the packed model (``bnn_jax.deploy.export``) of this checkpoint;
    run it with ``bnn_jax.deploy.load_packed(FILE)``.

Curves of many runs (``bnn_jax.curves``; metrics.jsonl only, so result folders without
checkpoints work)::

    python -m bnn_jax.inspect --curves OUT.png RUN_DIR [RUN_DIR ...] \
        [--metric KEY] [--group-by REGEX]

draws KEY (default test/accuracy) per epoch, one line per arm: the mean over its runs
(seeds), the min-max range shaded, and prints per arm the last and the best mean. Runs
are grouped by folder name: ``m2_bnn_s0`` and ``m2_bnn_s1`` form the arm ``m2_bnn``
(the default REGEX strips a ``_s<digits>`` suffix); with ``--group-by REGEX`` the arm is
the first group (or the match) of REGEX searched in the name.

Anything that is not a run or checkpoint (a wrong path, a damaged checkpoint, a
missing step) ends with one line ``bnn_jax.inspect: error: ...`` on stderr and
exit status 2, never a traceback.

Example::

    python -m bnn_jax.inspect runs/quick --compare 156 --plot /tmp/w.png
    python -m bnn_jax.inspect --curves /tmp/top1.png experiments/results/m2_*_s*
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Any, Optional, Sequence

import numpy as np

from bnn_jax import checkpoints, plotting, weight_stats
from bnn_jax import curves as curves_lib

PROG = "bnn_jax.inspect"
STAT_COLUMNS = (("mean_abs", "mean|w|"), ("mean_dist", "mean||w|-t|"),
                ("near_frac", "near +-t"), ("tail_frac", "|w|>t"), ("zero_frac", "zeros"))
# Columns of the history table, generic over the keys a run logs: every ``train/<key>``
# the objective returned (loss and accuracy first), then these when any record has them.
TRAIN_LABELS = {"accuracy": "acc"}
HISTORY_TAIL = (("test/loss", "test loss", "{:.4f}"),
                ("test/accuracy", "test acc", "{:.4f}"),
                ("balance/overall/entropy", "act H", "{:.4f}"),
                ("weights/overall/quant_error", "e_q", "{:.4f}"),
                ("weights/overall/flip_ratio", "flips", "{:.4f}"),
                ("weights/overall/mean_dist", "mean||w|-t|", "{:.4f}"),
                ("lr", "lr", "{:.3g}"),
                ("images_per_sec", "img/s", "{:.1f}"))
# Per-layer statistics shown when the statistics have them (newer weight_stats).
OPTIONAL_STAT_COLUMNS = (("quant_error", "e_q"), ("alpha_tail_frac", "|w|>alpha"))
OPTIONAL_STAT_NOTES = {"quant_error": "e_q = ||w - alpha sign(w)||^2 / ||w||^2",
                       "alpha_tail_frac": "|w|>alpha: the tail beyond alpha"}
ALPHA_NOTE = " (alpha = mean|w| per output channel)"


class InspectError(Exception):
  """A user error; the CLI prints its message on one line and exits with status 2."""


# --- loading -------------------------------------------------------------------------------


def _split_step_dir(path: str) -> tuple[str, Optional[int]]:
  """``RUN/checkpoints/156`` -> (``RUN/checkpoints``, 156); any other path -> (path, None)."""
  norm = os.path.normpath(path)
  base = os.path.basename(norm)
  if base.isdigit() and os.path.isdir(norm) and \
      os.path.basename(os.path.dirname(norm)) == checkpoints.CHECKPOINT_DIR:
    return os.path.dirname(norm), int(base)
  return path, None


def load(path: str, step: Optional[int] = None) -> checkpoints.RunCheckpoint:
  """``checkpoints.load_run`` that also takes a step folder; errors become InspectError."""
  path, dir_step = _split_step_dir(path)
  if step is not None and dir_step is not None and step != dir_step:
    raise InspectError(f"--step {step} contradicts the step folder {dir_step} in the path.")
  try:
    return checkpoints.load_run(path, dir_step if step is None else step)
  except checkpoints.CheckpointError as e:
    raise InspectError(str(e)) from None


def load_other(run: checkpoints.RunCheckpoint, other: str) -> checkpoints.RunCheckpoint:
  """``--compare`` target: a step of ``run`` (digits that are not a path) or a path."""
  if other.isdigit() and not os.path.exists(other):
    return load(run.workdir, int(other))
  return load(other)


# --- report sections --------------------------------------------------------------------------


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
  out = []
  for key in sorted(d):
    value = d[key]
    if isinstance(value, dict):
      out += _flatten(value, f"{prefix}{key}.")
    else:
      out.append((f"{prefix}{key}", value))
  return out


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
  """Right-aligned columns except the first ``left``; a rule under the header."""
  widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
  fmt = lambda row: "  ".join(str(c).ljust(w) if i < left else str(c).rjust(w)
                              for i, (c, w) in enumerate(zip(row, widths))).rstrip()
  line = fmt(head)
  return [line, "-" * len(line)] + [fmt(r) for r in rows]


def config_section(run: checkpoints.RunCheckpoint) -> list[str]:
  if not run.config:
    return ["(no config.json in this run)"]
  return [f"  {k} = {v!r}" if isinstance(v, str) else f"  {k} = {v}"
          for k, v in _flatten(run.config)]


def best_and_last(history: list[dict], key: str = "test/accuracy") -> tuple[Optional[dict], Optional[dict]]:
  """The records with the highest and the last ``key`` (None if no record has it)."""
  rows = [r for r in history if isinstance(r.get(key), (int, float))]
  if not rows:
    return None, None
  return max(rows, key=lambda r: r[key]), rows[-1]


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def history_columns(history: Sequence[dict]) -> list[tuple[str, str, str]]:
  """(key, header, format) of the history table for these records.

  epoch and step; every ``train/<key>`` some record has (loss and accuracy first, the others
  in the order they first appear: e.g. ce, kl, cosine of a distillation objective); then
  test loss and accuracy, the activation bit entropy (``balance/overall/entropy``), the
  weight quantization error (``weights/overall/quant_error``), the flip ratio, the mean
  distance to +-t, lr and images/s -- each only when some record has it.
  """
  present = {k for r in history for k, v in r.items() if _is_number(v)}
  cols = [(k, k, "{:d}") for k in ("epoch", "step") if k in present]
  train = [k for k in ("train/loss", "train/accuracy") if k in present]
  for r in history:
    train += [k for k in r if k.startswith("train/") and k not in train and k in present]
  for k in train:
    name = k[len("train/"):]
    cols.append((k, f"train {TRAIN_LABELS.get(name, name)}", "{:.4f}"))
  return cols + [c for c in HISTORY_TAIL if c[0] in present]


def history_section(run: checkpoints.RunCheckpoint) -> list[str]:
  if not run.history:
    return ["(no metrics.jsonl records)"]
  cols = history_columns(run.history)
  rows = []
  for r in run.history:
    row = []
    for key, _, fmt in cols:
      v = r.get(key)
      row.append(fmt.format(int(v) if fmt == "{:d}" else v) if _is_number(v) else "")
    rows.append(row)
  lines = _table([c[1] for c in cols], rows, left=0)
  best, last = best_and_last(run.history)
  if best is not None:
    lines.append(f"best test accuracy: {best['test/accuracy']:.4f} (epoch {best.get('epoch')}, "
                 f"step {best.get('step')})")
    lines.append(f"last test accuracy: {last['test/accuracy']:.4f} (epoch {last.get('epoch')}, "
                 f"step {last.get('step')})")
  return lines


BALANCE_PREFIX = "balance/"
BALANCE_OVERALL = "overall"


def balance_table(history: Sequence[dict]) -> tuple[Optional[dict], dict[str, dict[str, float]]]:
  """(record, {sign module path: {"p_plus", "entropy"}, ..., "overall": {...}}) of the last
  record with ``balance/.../p_plus`` keys; (None, {}) when no record has them.

  Layers in the record's order, "overall" last. A layer's entropy is H(p_plus) in bits; the
  trainer's "overall" is the mean p_plus and the mean per-layer entropy.
  """
  for record in reversed(list(history)):
    layers: dict[str, dict[str, float]] = {}
    for key, v in record.items():
      if not key.startswith(BALANCE_PREFIX) or not _is_number(v):
        continue
      layer, _, stat = key[len(BALANCE_PREFIX):].rpartition("/")
      if layer and stat in ("p_plus", "entropy"):
        layers.setdefault(layer, {})[stat] = float(v)
    if any("p_plus" in s for s in layers.values()):
      if BALANCE_OVERALL in layers:
        layers[BALANCE_OVERALL] = layers.pop(BALANCE_OVERALL)
      return record, layers
  return None, {}


def balance_section(run: checkpoints.RunCheckpoint) -> list[str]:
  record, layers = balance_table(run.history)
  if record is None:
    return ["(no balance/ records in metrics.jsonl: a model without binary activations, or "
            "a run from before the activation balance was logged)"]
  fmt = lambda s, k: f"{s[k]:.4f}" if k in s else ""
  rows = [[layer, fmt(s, "p_plus"), fmt(s, "entropy")] for layer, s in layers.items()]
  lines = [f"epoch {record.get('epoch')} (step {record.get('step')}), a fixed batch of test "
           f"images: p(+1) = fraction of +1 out of each activation sign,",
           "H = -p log2 p - (1-p) log2(1-p) its bit entropy (1 = balanced); overall: the means "
           "over the signs"]
  table = _table(["sign", "p(+1)", "H bits"], rows)
  if BALANCE_OVERALL in layers and len(rows) > 1:
    return lines + table[:-1] + [table[1], table[-1]]  # a rule above "overall"
  return lines + table


def _num_classes(run: checkpoints.RunCheckpoint, mcfg: dict) -> Optional[int]:
  """From the config; else (older runs: -1) the classifier's output width in the checkpoint."""
  if mcfg.get("num_classes", -1) not in (None, -1):
    return int(mcfg["num_classes"])
  head = run.params.get("head", {}) if hasattr(run.params, "get") else {}
  if hasattr(head, "get") and "kernel" in head:
    return int(np.shape(head["kernel"])[-1])
  return None


def build_model(run: checkpoints.RunCheckpoint):
  """(model name, module) from the run's config.json through ``models.from_config``;
  (None, None) when the run has no config naming the model. Errors of the factory propagate."""
  mcfg = (run.config or {}).get("model") or {}
  name = mcfg.get("name")
  if name is None:
    return None, None
  from bnn_jax import models  # Flax: only when a section needs the module
  return name, models.from_config(mcfg, _num_classes(run, mcfg))


def summary_section(run: checkpoints.RunCheckpoint) -> list[str]:
  import dataclasses
  from bnn_jax.summary import summary  # Flax: only when the section is printed
  mcfg = (run.config or {}).get("model") or {}
  if mcfg.get("name") is None:
    return ["(the run has no config.json naming the model: no summary)"]
  described = {k: v for k, v in mcfg.items() if k != "name"}
  try:
    name, module = build_model(run)
  except Exception as e:  # an unknown model or option: say so, keep the other sections
    return [f"(no summary: config.json's model {described} does not build: "
            f"{type(e).__name__}: {' '.join(str(e).split())[:300]})"]
  variables = {"params": run.params}
  if run.batch_stats:
    variables["batch_stats"] = run.batch_stats
  try:
    s = summary(module, variables=variables)
  except Exception as e:  # a checkpoint of another model: say so, keep the other sections
    return [f"(no summary: the checkpoint does not fit {name} {described}: "
            f"{type(e).__name__}: {' '.join(str(e).split())[:200]})"]
  return dataclasses.replace(s, model=name).table().splitlines()


def layer_stats(run: checkpoints.RunCheckpoint, target: float, near: float,
                other: Optional[checkpoints.RunCheckpoint] = None) -> dict:
  prev = other.params if other is not None else None
  try:
    return weight_stats.latent_weight_stats(run.params, target=target, prev_params=prev,
                                            near=near)
  except ValueError as e:
    raise InspectError(f"cannot compare {run.workdir} (step {run.step}) with "
                       f"{other.workdir} (step {other.step}): {e}") from None


def _shapes(params) -> dict[str, tuple]:
  import jax
  from bnn_jax.optim import BINARY_KERNEL, path_to_str
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if path and path_to_str(path[-1:]) == BINARY_KERNEL:
      out[path_to_str(path[:-1]) or BINARY_KERNEL] = tuple(np.shape(leaf))
  return out


def weights_section(run: checkpoints.RunCheckpoint, stats: dict, target: float,
                    near: float) -> list[str]:
  if not stats:
    return ["(no binary layers: no parameter is named binary_kernel)"]
  shapes = _shapes(run.params)
  columns = list(STAT_COLUMNS) + [c for c in OPTIONAL_STAT_COLUMNS
                                  if all(c[0] in s for s in stats.values())]
  head = ["layer", "shape", "weights"] + [c[1] for c in columns]
  rows = []
  for layer, s in stats.items():
    shape = shapes.get(layer)
    n = int(np.prod(shape)) if shape else sum(int(np.prod(v)) for v in shapes.values())
    rows.append([layer, "x".join(map(str, shape)) if shape else "", f"{n:,}"] +
                [f"{s[key]:.4f}" for key, _ in columns])
  lines = [f"t = {target:g}; near +-t: ||w| - t| <= {near:g}; |w|>t: the tail beyond the band; "
           f"zeros: w == 0 exactly"]
  if len(columns) > len(STAT_COLUMNS):
    lines.append("; ".join(OPTIONAL_STAT_NOTES[k] for k, _ in columns[len(STAT_COLUMNS):]) +
                 ALPHA_NOTE)
  table = _table(head, rows, left=2)
  return lines + table[:-1] + [table[1], table[-1]]  # a rule above "overall"


def compare_section(run, other, stats: dict) -> list[str]:
  lines = [f"flip ratio between step {run.step} of {run.workdir} and step {other.step} of "
           f"{other.workdir} (fraction of latent weights whose sign differs)"]
  rows = [[layer, f"{s['flip_ratio']:.6f}"] for layer, s in stats.items()]
  table = _table(["layer", "flip ratio"], rows)
  return lines + table[:-1] + [table[1], table[-1]]


# --- plot and export ---------------------------------------------------------------------------


def plot_histograms(params: Any, path: str, target: float = 1.0, title: str = "",
                    bins: int = 100) -> int:
  """Writes a PNG grid of latent-weight histograms, one panel per binary layer.

  Each panel spans +-1.1 max|w| of its layer, marks +-t (dashed) when in range and
  prints mean|w| and the tail share |w| > t.

  Returns the number of panels. The PNG's ``Description`` text chunk records
  ``panels=N`` and the layer names.
  """
  plt = plotting.pyplot("--plot", InspectError)
  layers = weight_stats._binary_leaves(params)  # the same leaves the statistics use
  if not layers:
    raise InspectError("--plot: the checkpoint has no binary layers (no binary_kernel).")
  n = len(layers)
  cols = min(4, n)
  rows = math.ceil(n / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
  for ax, (name, w) in zip(axes.flat, layers.items()):
    w = w.ravel()
    # The x range fits the weights (early in training they sit far inside +-t); the band
    # +-t is drawn when it is in range and named in the corner either way.
    lim = max(float(np.abs(w).max()) * 1.1, 1e-6)
    ax.hist(w, bins=bins, range=(-lim, lim), color="tab:blue")
    if target <= lim:
      for x in (-target, target):
        ax.axvline(x, color="tab:red", lw=0.8, ls="--")
    ax.text(0.02, 0.95, f"mean|w| {np.abs(w).mean():.3g}\n|w|>{target:g}: "
            f"{100 * np.mean(np.abs(w) > target):.1f}%" +
            ("" if target <= lim else f"\n(+-{target:g} off scale)"),
            transform=ax.transAxes, fontsize=6, va="top")
    ax.set_title(name, fontsize=8)
    ax.tick_params(labelsize=7)
  for ax in list(axes.flat)[n:]:
    ax.remove()
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fig.savefig(path, dpi=80, format="png",
              metadata={"Title": title or "latent weights",
                        "Description": f"panels={n}; layers={','.join(layers)}"})
  plt.close(fig)
  return n


def export_section(run: checkpoints.RunCheckpoint, path: str) -> list[str]:
  from bnn_jax import deploy
  try:
    info = deploy.export(run, path)
  except (ValueError, TypeError, OSError) as e:
    raise InspectError(f"--export: {e}") from None
  f32 = info["float32_param_bytes"]
  share = info["float_bytes"] / (info["binary_bytes"] + info["float_bytes"])
  return [f"wrote {info['path']}: {info['file_bytes']:,} bytes "
          f"({f32 / info['file_bytes']:.1f}x smaller than the {f32:,} bytes of float32 params)",
          f"  packed +-1 weights {info['binary_bytes']:,} bytes; float arrays (stem, shortcuts, "
          f"classifier, folded BN scales and thresholds) {info['float_bytes']:,} bytes "
          f"({100 * share:.1f}% of the arrays)",
          f"  run it: bnn_jax.deploy.load_packed({path!r})(uint8 NHWC images) -> logits"]


# --- CLI -------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog=f"python -m {PROG}", description="Inspect a bnn_jax training run or checkpoint.",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="RUN_DIR is a training --workdir, its checkpoints/ folder or a step folder "
             "checkpoints/<step>.")
  p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+",
                 help="one run (the report); with --curves, any number of runs")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--compare", metavar="OTHER", default=None,
                 help="a step of this run, another RUN_DIR or a step folder: flip ratios")
  p.add_argument("--plot", metavar="FILE.png", default=None,
                 help="write a grid of latent-weight histograms")
  p.add_argument("--export", metavar="FILE", default=None,
                 help="write the packed model (bnn_jax.deploy.export)")
  p.add_argument("--target", type=float, default=1.0, help="t: the +-t band of the statistics")
  p.add_argument("--near", type=float, default=0.1, help="tolerance of 'near +-t'")
  p.add_argument("--no-config", action="store_true", help="leave out the config listing")
  p.add_argument("--no-summary", action="store_true", help="leave out the model summary")
  g = p.add_argument_group(
      "curves", "--curves OUT.png draws a metric per epoch for all RUN_DIRs (metrics.jsonl\n"
      "only: result folders without checkpoints work), grouped into arms: the mean over\n"
      "the seeds, min-max shaded; prints the last and the best mean per arm.")
  g.add_argument("--curves", metavar="OUT.png", default=None,
                 help="write the per-epoch curves of RUN_DIR [RUN_DIR ...] instead of the report")
  g.add_argument("--metric", metavar="KEY", default=None,
                 help=f"metrics.jsonl key to draw (default {curves_lib.DEFAULT_METRIC}), e.g. "
                      f"balance/overall/entropy")
  g.add_argument("--group-by", metavar="REGEX", default=None,
                 help="a run's arm is the first group (or the match) of REGEX searched in its "
                      "folder name; default strips a _s<digits> seed suffix "
                      f"({curves_lib.DEFAULT_GROUP_BY}); an unmatched name is its own arm")
  return p


REPORT_ONLY = ("step", "compare", "plot", "export")


def curves_report(args: argparse.Namespace, out=None) -> dict:
  """``--curves``: writes the PNG, prints a table of the arms; returns {arm: ArmCurve}."""
  given = [f"--{k}" for k in REPORT_ONLY if getattr(args, k) is not None]
  if given:
    raise InspectError(f"--curves takes RUN_DIRs, --metric and --group-by, not "
                       f"{', '.join(given)}.")
  metric = args.metric or curves_lib.DEFAULT_METRIC
  group_by = args.group_by or curves_lib.DEFAULT_GROUP_BY
  try:
    arms, skipped = curves_lib.collect(args.run_dirs, metric, group_by)
    curves_lib.plot(arms, args.curves, metric)
  except curves_lib.CurvesError as e:
    raise InspectError(str(e)) from None
  out = sys.stdout if out is None else out
  lines = curves_lib.table(arms, metric)
  for c in arms.values():
    lines.append(f"  {c.arm}: {', '.join(c.runs)}")
  if skipped:
    lines.append(f"skipped (no {metric!r} in metrics.jsonl): {', '.join(skipped)}")
  lines.append(f"wrote {args.curves}: {len(arms)} arm{'s' if len(arms) != 1 else ''}, "
               f"{sum(len(c.runs) for c in arms.values())} runs")
  print("\n".join(lines), file=out, flush=True)
  return arms


def report(args: argparse.Namespace, out=None) -> None:
  if args.metric is not None or args.group_by is not None:
    raise InspectError("--metric and --group-by go with --curves OUT.png.")
  if len(args.run_dirs) != 1:
    raise InspectError(f"the report takes one RUN_DIR (got {len(args.run_dirs)}); several go "
                       f"with --curves OUT.png.")
  run = load(args.run_dirs[0], args.step)
  other = load_other(run, args.compare) if args.compare is not None else None
  out = sys.stdout if out is None else out
  say = lambda lines: print("\n".join(lines), file=out, flush=True)
  epoch = run.meta.get("epoch")
  say([f"run: {run.workdir}",
       f"step: {run.step}" + (f" (epoch {epoch})" if epoch is not None else ""),
       f"checkpoint steps: {', '.join(map(str, run.steps))}"])
  if not args.no_config:
    say(["", "== config =="] + config_section(run))
  say(["", "== metrics history (metrics.jsonl) =="] + history_section(run))
  say(["", "== activation balance (metrics.jsonl) =="] + balance_section(run))
  if not args.no_summary:
    say(["", "== model summary =="] + summary_section(run))
  stats = layer_stats(run, args.target, args.near)
  say(["", f"== latent binary weights at step {run.step} =="] +
      weights_section(run, stats, args.target, args.near))
  if other is not None:
    flips = layer_stats(run, args.target, args.near, other)
    if not flips:
      raise InspectError("--compare: the checkpoint has no binary layers to compare.")
    say(["", "== compare =="] + compare_section(run, other, flips))
  if args.plot:
    n = plot_histograms(run.params, args.plot, args.target,
                        title=f"{os.path.basename(os.path.normpath(run.workdir))} step {run.step}")
    say(["", f"wrote {args.plot}: {n} histogram panels, one per binary layer"])
  if args.export:
    say(["", "== export =="] + export_section(run, args.export))


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  # orbax logs a warning for every read-only checkpoint manager: not news to the user.
  logging.getLogger("absl").setLevel(logging.ERROR)
  try:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)
  except ImportError:
    pass
  try:
    if args.curves is not None:
      curves_report(args)
    else:
      report(args)
  except InspectError as e:
    print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  except BrokenPipeError:  # `... | head`
    return 0
  return 0


if __name__ == "__main__":
  sys.exit(main())
