"""Inspect a training run: ``python -m bnn_jax.inspect RUN_DIR [--step N] [options]``.

Prints, for one checkpoint of a run (default: the latest):

* the run's resolved config (``config.json``) and the checkpoint step (and epoch);
* the metrics history from ``metrics.jsonl``, one row per epoch, with the best and
  the last test accuracy;
* the model summary (``bnn_jax.summary``): parameters, binary parameters, float32
  and packed memory, binary and float MACs per layer;
* per binary layer (every ``binary_kernel``), how binary the latent weights are
  (``bnn_jax.weight_stats.latent_weight_stats`` with target t, default 1):
  mean |w|, mean ||w| - t|, the fraction within ``--near`` (0.1) of +-t, the tail
  fraction |w| > t and the exact zeros.

Options:

``--compare OTHER``  flip ratio, per binary layer and overall, between this
    checkpoint and OTHER: a step of the same run (an integer), another run's
    workdir (its latest step) or a step folder ``RUN/checkpoints/<step>``. The flip
    ratio is the fraction of latent weights whose sign (sign(0) = +1) differs.
``--plot FILE.png``  a grid of latent-weight histograms, one panel per binary layer,
    with the band +-t marked (matplotlib, Agg backend: no display needed).
``--export FILE``    the packed model (``bnn_jax.deploy.export``) of this checkpoint;
    run it with ``bnn_jax.deploy.load_packed(FILE)``.

Anything that is not a run or checkpoint (a wrong path, a damaged checkpoint, a
missing step) ends with one line ``bnn_jax.inspect: error: ...`` on stderr and
exit status 2, never a traceback.

Example::

    python -m bnn_jax.inspect runs/quick --compare 156 --plot /tmp/w.png
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Any, Optional, Sequence

import numpy as np

from bnn_jax import checkpoints, weight_stats

PROG = "bnn_jax.inspect"
STAT_COLUMNS = (("mean_abs", "mean|w|"), ("mean_dist", "mean||w|-t|"),
                ("near_frac", "near +-t"), ("tail_frac", "|w|>t"), ("zero_frac", "zeros"))
HISTORY_COLUMNS = (("epoch", "epoch", "{:d}"), ("step", "step", "{:d}"),
                   ("train/loss", "train loss", "{:.4f}"),
                   ("train/accuracy", "train acc", "{:.4f}"),
                   ("test/loss", "test loss", "{:.4f}"),
                   ("test/accuracy", "test acc", "{:.4f}"),
                   ("weights/overall/flip_ratio", "flips", "{:.4f}"),
                   ("weights/overall/mean_dist", "mean||w|-t|", "{:.4f}"),
                   ("images_per_sec", "img/s", "{:.1f}"))


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


def history_section(run: checkpoints.RunCheckpoint) -> list[str]:
  if not run.history:
    return ["(no metrics.jsonl records)"]
  cols = [c for c in HISTORY_COLUMNS if any(c[0] in r for r in run.history)]
  rows = []
  for r in run.history:
    row = []
    for key, _, fmt in cols:
      v = r.get(key)
      row.append("" if v is None else fmt.format(int(v) if fmt == "{:d}" else v))
    rows.append(row)
  lines = _table([c[1] for c in cols], rows, left=0)
  best, last = best_and_last(run.history)
  if best is not None:
    lines.append(f"best test accuracy: {best['test/accuracy']:.4f} (epoch {best.get('epoch')}, "
                 f"step {best.get('step')})")
    lines.append(f"last test accuracy: {last['test/accuracy']:.4f} (epoch {last.get('epoch')}, "
                 f"step {last.get('step')})")
  return lines


def model_kwargs(run: checkpoints.RunCheckpoint) -> tuple[Optional[str], dict]:
  """(model name, get_model kwargs) from the run's config; (None, {}) without one."""
  mcfg = (run.config or {}).get("model", {})
  name = mcfg.get("name")
  if name is None:
    return None, {}
  kwargs = {"width": float(mcfg.get("width", 1.0))}
  head = run.params.get("head", {}) if hasattr(run.params, "get") else {}
  if mcfg.get("num_classes", -1) not in (None, -1):
    kwargs["num_classes"] = int(mcfg["num_classes"])
  elif "kernel" in head:
    kwargs["num_classes"] = int(np.shape(head["kernel"])[-1])
  if mcfg.get("binarize_weights") is False:
    kwargs["binarize_weights"] = False
  return name, kwargs


def summary_section(run: checkpoints.RunCheckpoint) -> list[str]:
  from bnn_jax.summary import summary  # Flax: only when the section is printed
  name, kwargs = model_kwargs(run)
  if name is None:
    return ["(the run has no config.json naming the model: no summary)"]
  variables = {"params": run.params}
  if run.batch_stats:
    variables["batch_stats"] = run.batch_stats
  try:
    s = summary(name, variables=variables, **kwargs)
  except Exception as e:  # a checkpoint of another model: say so, keep the other sections
    return [f"(no summary: the checkpoint does not fit {name} {kwargs}: "
            f"{type(e).__name__}: {str(e)[:200]})"]
  return s.table().splitlines()


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
  head = ["layer", "shape", "weights"] + [c[1] for c in STAT_COLUMNS]
  rows = []
  for layer, s in stats.items():
    shape = shapes.get(layer)
    n = int(np.prod(shape)) if shape else sum(int(np.prod(v)) for v in shapes.values())
    rows.append([layer, "x".join(map(str, shape)) if shape else "", f"{n:,}"] +
                [f"{s[key]:.4f}" for key, _ in STAT_COLUMNS])
  lines = [f"t = {target:g}; near +-t: ||w| - t| <= {near:g}; |w|>t: the tail beyond the band; "
           f"zeros: w == 0 exactly"]
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
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    raise InspectError("--plot needs matplotlib: pip install 'bnn_jax[plot]' "
                       "(or pip install matplotlib).") from None
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
  p.add_argument("run_dir", metavar="RUN_DIR")
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
  return p


def report(args: argparse.Namespace, out=None) -> None:
  run = load(args.run_dir, args.step)
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
    report(args)
  except InspectError as e:
    print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  except BrokenPipeError:  # `... | head`
    return 0
  return 0


if __name__ == "__main__":
  sys.exit(main())
