"""A frozen teacher: another run of this project, loaded once and run inside the train step.

``load(config.teacher, dataset)`` reads the teacher run's ``config.json`` and its best (or
latest) checkpoint and returns a :class:`Teacher`: its variables (replicated to the devices
once by the trainer, never donated, never checkpointed) and its model's apply function.
Inside the step the teacher runs in eval mode (BatchNorm running statistics) with its
intermediates collected, under ``stop_gradient``.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import flax
import jax
import numpy as np

from bnn_jax import checkpoints, models


@flax.struct.dataclass
class Teacher:
  variables: Any
  apply_fn: Callable = flax.struct.field(pytree_node=False)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict]:
    """(logits, features) of the frozen teacher on ``x``, with no gradient."""
    logits, state = self.apply_fn(self.variables, x, train=False, mutable=["intermediates"])
    out = (logits, models.features(state["intermediates"]))
    return jax.lax.stop_gradient(out)


def best_step(run: checkpoints.RunCheckpoint) -> int:
  """The step of the run's best test accuracy that still has a checkpoint (else the latest)."""
  per_step = {r["step"]: r.get("test/accuracy", -1.0) for r in run.history if "step" in r}
  kept = [s for s in run.steps if s in per_step]
  return max(kept, key=lambda s: per_step[s]) if kept else run.steps[-1]


def load(teacher_config, dataset: str) -> tuple[Teacher, Any]:
  """(Teacher, its flax model) from ``teacher_config.workdir``; clear errors before any step.

  Errors: no such directory, no checkpoint or config.json, a teacher trained on another
  dataset.
  """
  workdir = teacher_config.workdir
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--config.teacher.workdir={workdir}: no such directory; train the "
                            f"teacher first (e.g. python train.py --config "
                            f"configs/resnet18_fp_cifar10.py --workdir {workdir}).")
  config = checkpoints.read_config(workdir)
  if config is None:
    raise FileNotFoundError(f"--config.teacher.workdir={workdir} has no "
                            f"{checkpoints.CONFIG_FILE}; point it at a run of train.py.")
  teacher_dataset = config.get("data", {}).get("dataset")
  if teacher_dataset != dataset:
    raise ValueError(f"The teacher in {workdir} was trained on {teacher_dataset!r} but this "
                     f"run trains on {dataset!r}; use a teacher trained on {dataset}.")
  run = checkpoints.load_run(workdir)
  if teacher_config.checkpoint == "best":
    step = best_step(run)
    if step != run.step:
      run = checkpoints.load_run(workdir, step)
  model = models.from_config(config["model"])
  variables = {"params": jax.tree.map(np.asarray, run.params)}
  if run.batch_stats:
    variables["batch_stats"] = jax.tree.map(np.asarray, run.batch_stats)
  return Teacher(variables, model.apply), model
