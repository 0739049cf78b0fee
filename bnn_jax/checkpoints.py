"""Orbax checkpoints of a training run: save, resume, and read back for inspection.

A run's workdir holds ``config.json`` (the resolved config), ``metrics.jsonl``
and ``checkpoints/<step>/{state,meta}``: ``state`` is the pytree
``{"step", "params", "batch_stats", "opt_state"}`` and ``meta`` a JSON dict
(epoch, metrics, partial-epoch accumulators). The manager keeps the last
``keep`` checkpoints plus the ``keep_best`` best by ``best_metric``.

Crash safety: orbax (0.12.8) writes a step into ``<step>.orbax-checkpoint-tmp/`` (older
versions add ``-<timestamp>``) and renames it to ``<step>/`` only once every file is
written (``commit_success.txt`` last), so a process killed mid-save
leaves at most such a temporary folder, which is never listed as a step (and is removed
when the next writable ``Checkpointer`` opens the directory). A step folder damaged after
its commit (a truncated or corrupted file) is skipped by :meth:`Checkpointer.restore_latest_good`,
which falls back to the newest readable step with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Optional

import orbax.checkpoint as ocp
from etils import epath

CHECKPOINT_DIR = "checkpoints"
DAMAGED_SUFFIX = ".damaged"  # <step>.damaged: a step set aside by restore_latest_good
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be read, with the path and the fix in the message."""


def checkpoint_dir(path: str) -> str:
  """``path/checkpoints`` if ``path`` is a run's workdir, else ``path`` itself."""
  sub = os.path.join(path, CHECKPOINT_DIR)
  return sub if os.path.isdir(sub) else path


class Checkpointer:
  """Thin wrapper over ``ocp.CheckpointManager`` with the run's policies."""

  def __init__(self, directory: str, keep: int = 3, keep_best: int = 1,
               best_metric: str = "test/accuracy", read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    policies = [ocp.checkpoint_managers.LatestN(n=keep)]
    if keep_best:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda m: m[best_metric], n=keep_best,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=False, create=not read_only, read_only=read_only,
        # Temporary folders of saves that never committed (a killed process): removed.
        cleanup_tmp_directories=not read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "meta"))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: dict, meta: dict, metrics: Optional[dict] = None) -> None:
    """Saves ``state`` (a pytree of host or device arrays) and ``meta`` (JSON) at ``step``."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        metrics=metrics, force=True)
    self.manager.wait_until_finished()

  def restore(self, step: Optional[int] = None, target: Any = None) -> tuple[Any, dict]:
    """Restores (state, meta) at ``step`` (default: latest).

    With ``target`` (a pytree of arrays or ``jax.ShapeDtypeStruct``s of the
    same structure) the saved tree is restored into that structure (optax
    NamedTuples included); without it, as nested dicts of numpy arrays.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"No checkpoint in {self.directory}.")
    if step not in self.all_steps():
      raise CheckpointError(
          f"No checkpoint at step {step} in {self.directory}; available steps: {self.all_steps()}.")
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax/tensorstore raise many kinds on damaged files
      step_dir = os.path.join(self.directory, str(step))
      others = [s for s in self.all_steps() if s != step]
      fallback = (f"to resume from an earlier checkpoint (steps {others})" if others
                  else "to start this run over (it has no other checkpoint)")
      raise CheckpointError(
          f"The checkpoint at step {step} ({step_dir}) is damaged or incompatible and cannot be "
          f"restored: {type(e).__name__}: {str(e)[:300]}\nFix: delete that step directory "
          f"(`rm -r {step_dir}`) {fallback}, or use a fresh --workdir.") from e
    return restored["state"], dict(restored["meta"])

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def restore_latest_good(self, target: Any = None) -> tuple[Any, dict]:
    """Restores (state, meta) from the newest checkpoint that can be read.

    Tries the steps newest first (``target`` as in :meth:`restore`). If newer steps are
    damaged or incompatible, logs a warning naming them and the step restored; a writable
    ``Checkpointer`` also moves their folders aside to ``<step>.damaged`` (kept for
    inspection, no longer a step), so the resumed run can save those steps again.

    Raises:
      CheckpointError: when no step can be restored (with a single checkpoint, the same
        error as :meth:`restore`), naming the folders and the fix.
    """
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise CheckpointError(f"No checkpoint in {self.directory}.")
    damaged: list[tuple[int, CheckpointError]] = []
    for step in steps:
      try:
        state, meta = self.restore(step, target)
      except CheckpointError as e:
        damaged.append((step, e))
        continue
      if damaged:
        self._fall_back(damaged, step)
      return state, meta
    if len(damaged) == 1:
      raise damaged[0][1]
    dirs = " ".join(self.step_dir(s) for s, _ in damaged)
    causes = "; ".join(f"step {s}: {_cause(e)}" for s, e in damaged)
    raise CheckpointError(
        f"None of the {len(damaged)} checkpoints in {self.directory} (steps "
        f"{[s for s, _ in damaged]}) can be restored; all are damaged or incompatible: "
        f"{causes}\nFix: to start this run over, delete them (`rm -r {dirs}`) or use a fresh "
        f"--workdir.") from damaged[0][1]

  def _fall_back(self, damaged: list, good: int) -> None:
    """Warns about (and, if writable, sets aside) the damaged steps newer than ``good``."""
    moved = []
    if not self.read_only:
      primary = ocp.multihost.is_primary_host(0)
      for step, _ in damaged:
        src = self.step_dir(step)
        dst, n = src + DAMAGED_SUFFIX, 1
        while os.path.exists(dst):
          dst, n = f"{src}{DAMAGED_SUFFIX}-{n}", n + 1
        if primary:
          os.rename(src, dst)
        moved.append(dst)
      ocp.multihost.sync_global_processes("bnn_jax_checkpoint_set_aside")
      self.manager.reload()
    names = ", ".join(str(s) for s, _ in damaged)
    causes = "; ".join(f"step {s}: {_cause(e)}" for s, e in damaged)
    logging.warning(
        "Checkpoint step%s %s in %s cannot be restored (%s). Falling back to step %d, the "
        "newest readable checkpoint.%s",
        "s" if len(damaged) > 1 else "", names, self.directory, causes, good,
        f" Set aside for inspection: {', '.join(moved)}; a resumed run trains the steps "
        f"after {good} again." if moved else "")

  def close(self) -> None:
    self.manager.close()


def _cause(error: CheckpointError) -> str:
  """``Type: message`` (shortened) of what made a restore fail."""
  cause = error.__cause__ or error
  return f"{type(cause).__name__}: {str(cause).splitlines()[0][:200] if str(cause) else ''}"


@dataclasses.dataclass
class RunCheckpoint:
  """What ``load_run`` reads: a run's config, one checkpoint and its history."""
  workdir: str
  step: int
  params: dict
  batch_stats: dict
  opt_state: Any
  meta: dict
  config: Optional[dict]
  history: list[dict]
  steps: list[int]


def read_config(workdir: str) -> Optional[dict]:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def load_run(path: str, step: Optional[int] = None) -> RunCheckpoint:
  """Reads a run's workdir (or its checkpoints/ folder) at ``step`` (default latest).

  Raises ``CheckpointError`` naming the path when it holds no checkpoint.
  """
  if not os.path.isdir(path):
    raise CheckpointError(f"{path} does not exist or is not a directory; pass a run's --workdir.")
  ckpt_dir = checkpoint_dir(path)
  steps = sorted(int(p.name) for p in epath.Path(ckpt_dir).iterdir()
                 if p.is_dir() and p.name.isdigit()) if os.path.isdir(ckpt_dir) else []
  if not steps:
    raise CheckpointError(
        f"{path} holds no checkpoint (looked for numbered step folders in {ckpt_dir}); "
        f"pass the --workdir of a training run (it contains {CHECKPOINT_DIR}/<step>/).")
  workdir = os.path.dirname(ckpt_dir) if ckpt_dir != path else path
  ckpt = Checkpointer(ckpt_dir, read_only=True)
  try:
    state, meta = ckpt.restore(step)
  finally:
    ckpt.close()
  return RunCheckpoint(
      workdir=workdir, step=int(state["step"]) if "step" in state else (step or steps[-1]),
      params=state["params"], batch_stats=state.get("batch_stats") or {},
      opt_state=state.get("opt_state"), meta=meta, config=read_config(workdir),
      history=read_metrics(workdir), steps=steps)
