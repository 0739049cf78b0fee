"""Orbax checkpoints of a training run: save, resume, and read back for inspection.

A run's workdir holds ``config.json`` (the resolved config), ``metrics.jsonl``
and ``checkpoints/<step>/{state,meta}``: ``state`` is the pytree
``{"step", "params", "batch_stats", "opt_state"}`` and ``meta`` a JSON dict
(epoch, metrics, partial-epoch accumulators). The manager keeps the last
``keep`` checkpoints plus the ``keep_best`` best by ``best_metric``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import orbax.checkpoint as ocp
from etils import epath

CHECKPOINT_DIR = "checkpoints"
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
    policies = [ocp.checkpoint_managers.LatestN(n=keep)]
    if keep_best:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda m: m[best_metric], n=keep_best,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=False, create=not read_only, read_only=read_only)
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

  def close(self) -> None:
    self.manager.close()


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
