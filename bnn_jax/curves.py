"""Per-epoch curves of a metric over many runs, grouped into arms (mean over seeds, min-max band).

The CLI is ``python -m bnn_jax.inspect --curves OUT.png RUN_DIR [RUN_DIR ...]
[--metric KEY] [--group-by REGEX]``; this module holds the reading, grouping, statistics
and plotting, and needs only numpy and (for the PNG) matplotlib: a run directory is read
from its ``metrics.jsonl`` alone, so result folders without checkpoints
(``experiments/results/<arm>_s<seed>/``: metrics.jsonl + config.json) work.

Grouping: a run's name is its folder's base name; its arm is the first capture group of
``re.search(group_by, name)`` (the whole match when the pattern has no group). The default
:data:`DEFAULT_GROUP_BY` strips a ``_s<digits>`` seed suffix, so ``m2_bnn_s0`` and
``m2_bnn_s1`` form the arm ``m2_bnn``. A name the pattern does not match is its own arm.

Statistics per arm and epoch: mean, min and max of the metric over the arm's runs that
have it at that epoch (``n`` counts them). Epochs are the union over the runs, so a run
that is still training or evaluates every few epochs leaves fewer seeds at some epochs;
``n`` says how many.

>>> arms = curves(["runs/m2_bnn_s0", "runs/m2_bnn_s1"], "/tmp/top1.png")  # doctest: +SKIP
>>> arms["m2_bnn"].mean[-1]                                              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Optional, Sequence

import numpy as np

from bnn_jax import plotting

METRICS_FILE = "metrics.jsonl"   # = bnn_jax.checkpoints.METRICS_FILE (not imported: no orbax)
DEFAULT_METRIC = "test/accuracy"
DEFAULT_GROUP_BY = r"^(.*?)(?:_s\d+)?$"


class CurvesError(ValueError):
  """A user error (a missing file, a metric no run has, a bad pattern): one-line message."""


@dataclasses.dataclass
class ArmCurve:
  """One arm: its runs and, per epoch, the mean / min / max over them and their number."""
  arm: str
  runs: list            # run names (folder base names), in the order given
  epochs: np.ndarray    # int, sorted: every epoch at which some run of the arm has the metric
  mean: np.ndarray      # float64, per epoch: mean over the runs that have it
  min: np.ndarray
  max: np.ndarray
  n: np.ndarray         # int, per epoch: how many runs have it

  def best(self) -> tuple[int, float]:
    """(epoch, value) of the highest mean."""
    i = int(np.argmax(self.mean))
    return int(self.epochs[i]), float(self.mean[i])


def run_name(path: str) -> str:
  return os.path.basename(os.path.normpath(path))


def read_history(path: str) -> list[dict]:
  """The records of ``path/metrics.jsonl`` (CurvesError when missing or not JSON lines)."""
  file = os.path.join(path, METRICS_FILE)
  if not os.path.isdir(path):
    raise CurvesError(f"{path} does not exist or is not a directory.")
  if not os.path.isfile(file):
    raise CurvesError(f"{path} has no {METRICS_FILE}; pass run directories (a training "
                      f"--workdir or a result folder with {METRICS_FILE}).")
  out = []
  with open(file) as f:
    for i, line in enumerate(f, 1):
      if line.strip():
        try:
          out.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise CurvesError(f"{file} line {i} is not JSON: {e}") from None
  return out


def series(history: Sequence[dict], metric: str) -> dict[int, float]:
  """{epoch: value} of the records that have a number for ``metric`` (the last one per epoch)."""
  out = {}
  for r in history:
    v, epoch = r.get(metric), r.get("epoch")
    if isinstance(v, (int, float)) and not isinstance(v, bool) and epoch is not None:
      out[int(epoch)] = float(v)
  return out


def arm_of(name: str, group_by: str = DEFAULT_GROUP_BY) -> str:
  """The arm of a run name: the pattern's first group (or whole match); the name if no match."""
  try:
    m = re.search(group_by, name)
  except re.error as e:
    raise CurvesError(f"--group-by {group_by!r} is not a regular expression: {e}") from None
  if m is None:
    return name
  arm = m.group(1) if m.re.groups else m.group(0)
  return arm if arm else name


def group_runs(paths: Sequence[str], group_by: str = DEFAULT_GROUP_BY) -> dict[str, list[str]]:
  """{arm: [paths]} in the order the arms first appear."""
  groups: dict[str, list[str]] = {}
  for p in paths:
    groups.setdefault(arm_of(run_name(p), group_by), []).append(p)
  return groups


def arm_curve(arm: str, named_series: dict[str, dict[int, float]]) -> ArmCurve:
  """Mean / min / max per epoch over ``{run name: {epoch: value}}``."""
  epochs = sorted(set().union(*named_series.values()))
  mean, lo, hi, n = [], [], [], []
  for e in epochs:
    vals = np.array([s[e] for s in named_series.values() if e in s], np.float64)
    mean.append(vals.mean())
    lo.append(vals.min())
    hi.append(vals.max())
    n.append(len(vals))
  return ArmCurve(arm, list(named_series), np.array(epochs, np.int64), np.array(mean, np.float64),
                  np.array(lo, np.float64), np.array(hi, np.float64), np.array(n, np.int64))


def collect(paths: Sequence[str], metric: str = DEFAULT_METRIC,
            group_by: str = DEFAULT_GROUP_BY) -> tuple[dict[str, ArmCurve], list[str]]:
  """({arm: ArmCurve}, [names of the runs skipped because no record has ``metric``]).

  CurvesError when no run has the metric (the message lists the keys the runs do have).
  """
  if not paths:
    raise CurvesError("--curves needs at least one RUN_DIR.")
  names = [run_name(p) for p in paths]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise CurvesError(f"two run directories have the same name {dup[0]!r}; the name is the "
                      f"run's identity in its arm (pass distinct folders).")
  arms: dict[str, ArmCurve] = {}
  skipped, keys = [], set()
  for arm, arm_paths in group_runs(paths, group_by).items():
    found = {}
    for p in arm_paths:
      history = read_history(p)
      s = series(history, metric)
      if s:
        found[run_name(p)] = s
      else:
        skipped.append(run_name(p))
        keys.update(k for r in history for k in r if not k.startswith(("weights/", "balance/"))
                    or k.startswith(("weights/overall/", "balance/overall/")))
    if found:
      arms[arm] = arm_curve(arm, found)
  if not arms:
    listed = ", ".join(sorted(keys)) or "none"
    raise CurvesError(f"no run has {metric!r} in its {METRICS_FILE} (per-epoch keys there: "
                      f"{listed}; per-layer weights/ and balance/ keys are not listed).")
  return arms, skipped


def plot(arms: dict[str, ArmCurve], path: str, metric: str = DEFAULT_METRIC,
         title: str = "") -> None:
  """Writes the PNG: per arm the mean line (markers at its epochs) and the min-max band."""
  plt = plotting.pyplot("--curves", CurvesError)
  import matplotlib.ticker  # present once pyplot imported
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  for c in arms.values():
    seeds = int(c.n.max())
    line, = ax.plot(c.epochs, c.mean, marker="o", ms=3, lw=1.2,
                    label=f"{c.arm} ({seeds} run{'s' if seeds != 1 else ''})")
    if seeds > 1:
      ax.fill_between(c.epochs, c.min, c.max, color=line.get_color(), alpha=0.2, lw=0)
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.set_xlabel("epoch")
  ax.set_ylabel(metric)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  ax.set_title(title or f"{metric}: mean over seeds, min-max shaded", fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100, format="png",
              metadata={"Title": title or metric,
                        "Description": f"metric={metric}; arms={','.join(arms)}"})
  plt.close(fig)


def curves(paths: Sequence[str], out_png: Optional[str], metric: str = DEFAULT_METRIC,
           group_by: str = DEFAULT_GROUP_BY, title: str = "") -> dict[str, ArmCurve]:
  """Reads the runs, groups them into arms, writes the PNG (unless ``out_png`` is None).

  Returns {arm: ArmCurve} (epochs, mean, min, max, n per epoch; see the module docstring).
  Runs without the metric are left out; CurvesError when none has it.
  """
  arms, _ = collect(paths, metric, group_by)
  if out_png:
    plot(arms, out_png, metric, title)
  return arms


def table(arms: dict[str, ArmCurve], metric: str = DEFAULT_METRIC) -> list[str]:
  """Per arm: runs, last epoch, the mean and min-max there, and the best mean (its epoch)."""
  head = ["arm", "runs", "epoch", "mean", "min", "max", "best mean", "at epoch"]
  rows = []
  for c in arms.values():
    e, b = c.best()
    rows.append([c.arm, str(int(c.n[-1])), str(int(c.epochs[-1])), f"{c.mean[-1]:.4f}",
                 f"{c.min[-1]:.4f}", f"{c.max[-1]:.4f}", f"{b:.4f}", str(e)])
  widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
  fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                              for i, (c, w) in enumerate(zip(row, widths))).rstrip()
  line = fmt(head)
  return [f"{metric} at each arm's last epoch (over the runs that reached it) and its best "
          f"mean", line, "-" * len(line)] + [fmt(r) for r in rows]
