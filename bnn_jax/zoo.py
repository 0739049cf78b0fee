"""Pretrained binary networks: packed models trained at full scale, each with a model card.

An entry is two files in the zoo folder: ``NAME.packed`` (a ``bnn_jax.deploy.export`` file)
and ``NAME.json``, its card: architecture and options, the float model's test top-1 (final and
best epoch, from the run's metrics), the packed file's test top-1 and correct count on the
10,000 CIFAR-10 test images and its correct count on the first 1,000, file size, training
command, device, dates and the file's sha256.

  from bnn_jax import zoo
  print(zoo.list())                      # the shipped models' names
  model = zoo.load("reactnet18_m1")      # checks the sha256, then bnn_jax.packed.load_packed
  logits = model(images)                 # uint8 NHWC 32x32x3 images -> [N, 10] float32

  python -m bnn_jax.zoo list
  python -m bnn_jax.zoo eval NAME --data cifar-10-binary.tar.gz      # [--limit N]
  python -m bnn_jax.zoo add RUN_DIR --data cifar-10-binary.tar.gz    # [--name NAME]

The folder: every function takes ``directory``; the default is ``$BNN_JAX_ZOO``, else
``zoo/`` at the repository root (beside the ``bnn_jax`` package). A source checkout or an
editable install (``pip install -e .``) has it; a regular install does not carry it, so set
``$BNN_JAX_ZOO`` or pass ``directory=`` there.

``list``, ``card`` and ``load`` need only the standard library, jax and numpy (no Flax);
``add`` imports ``bnn_jax.deploy`` when it exports from a checkpoint.
"""

from __future__ import annotations

import argparse
import builtins
import datetime
import hashlib
import json
import os
import shutil
import sys
from typing import Optional, Sequence

ENV_VAR = "BNN_JAX_ZOO"
LOG_TAG = "# full_scale "   # experiments/full_scale.py's lines in a run's train.log
FIRST = 1000   # the card's check: correct count of the packed model on the first FIRST images
HOW_TO_ADD = ("python -m bnn_jax.zoo add RUN_DIR --data cifar-10-binary.tar.gz "
              "(docs/RESULTS.md, \"Full scale\")")


class ZooError(ValueError):
  """A zoo entry that cannot be used; the message names the file and what to do."""


def default_directory() -> str:
  """``$BNN_JAX_ZOO``, else ``<repository>/zoo``."""
  return os.environ.get(ENV_VAR) or os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "zoo")


def _dir(directory: Optional[str]) -> str:
  return os.fspath(directory) if directory is not None else default_directory()


def list(directory: Optional[str] = None) -> builtins.list[str]:  # noqa: A001 (the zoo's API)
  """The names of the models in the zoo (one per ``NAME.json`` card), sorted."""
  d = _dir(directory)
  if not os.path.isdir(d):
    return []
  return sorted(f[:-len(".json")] for f in os.listdir(d) if f.endswith(".json"))


def card(name: str, directory: Optional[str] = None) -> dict:
  """The model card of ``name`` (a dict); an unknown name is a :class:`ZooError` listing the
  valid ones."""
  d = _dir(directory)
  path = os.path.join(d, f"{name}.json")
  if not os.path.isfile(path):
    names = list(d)
    valid = f"shipped models: {', '.join(names)}" if names else (
        f"no model is shipped in {d} yet (zoo/README.md)")
    raise ZooError(f"Unknown zoo model {name!r}; {valid}.")
  with open(path) as f:
    return json.load(f)


def sha256(path: str) -> str:
  """The hex sha256 of a file."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def packed_path(name: str, directory: Optional[str] = None, check: bool = True) -> str:
  """The path of ``name``'s packed file; with ``check``, verified against its card's sha256
  (a missing or damaged file is a :class:`ZooError` naming it)."""
  d = _dir(directory)
  entry = card(name, d)
  path = os.path.join(d, entry.get("file", f"{name}.packed"))
  if not check:
    return path
  restore = (f"restore it (git checkout -- {os.path.relpath(path)}) or rebuild the entry "
             f"from its run: {HOW_TO_ADD}")
  if not os.path.isfile(path):
    raise ZooError(f"{path}: the packed file of zoo model {name!r} is missing; {restore}.")
  digest = sha256(path)
  if digest != entry["sha256"]:
    raise ZooError(f"{path}: the file is damaged or replaced: its sha256 is {digest}, the "
                   f"card {name}.json says {entry['sha256']}; {restore}.")
  return path


def load(name: str, directory: Optional[str] = None, batch_size: int = 256):
  """The packed model ``name``, as ``bnn_jax.packed.load_packed`` returns it (a
  ``PackedModel``: uint8 NHWC images in, logits out), after checking the file's sha256."""
  from bnn_jax.packed import load_packed
  return load_packed(packed_path(name, directory), batch_size=batch_size)


# --- scoring -------------------------------------------------------------------------------------


def test_set(data: Optional[str] = None, dataset: str = "cifar10"):
  """(uint8 images, int32 labels) of the official test set, from the binary archive ``data``
  (default ``$BNN_JAX_CIFAR10`` / ``$BNN_JAX_CIFAR100``)."""
  from bnn_jax import data as data_lib
  env = "BNN_JAX_CIFAR100" if dataset == "cifar100" else "BNN_JAX_CIFAR10"
  path = data or os.environ.get(env)
  if not path:
    raise ZooError(f"Pass --data PATH (the {dataset} binary archive) or set ${env}.")
  return data_lib.load_cifar_binary(path, dataset)["test"]


def correct_count(model, images, labels, limit: Optional[int] = None) -> int:
  """How many of the first ``limit`` (default all) images ``model`` classifies right."""
  import numpy as np
  n = len(labels) if limit is None else min(int(limit), len(labels))
  return int(np.sum(model.classes(images[:n]) == labels[:n]))


def evaluate(name: str, data: Optional[str] = None, limit: Optional[int] = None,
             directory: Optional[str] = None) -> dict:
  """Scores zoo model ``name`` on the test set (its first ``limit`` images, default all 10,000):
  ``{"name", "correct", "images", "top1_pct"}``."""
  entry = card(name, directory)
  model = load(name, directory)
  images, labels = test_set(data, entry.get("dataset", "cifar10"))
  n = len(labels) if limit is None else min(int(limit), len(labels))
  correct = correct_count(model, images, labels, n)
  return {"name": name, "correct": correct, "images": n, "top1_pct": 100.0 * correct / n}


def card_figure(entry: dict, images: int) -> Optional[int]:
  """The card's correct count on the first ``images`` test images, if it records one."""
  if images == FIRST:
    return entry.get("packed_correct_first_1000")
  if images == entry.get("packed_test_images"):
    return entry.get("packed_test_correct")
  return None


# --- building an entry ---------------------------------------------------------------------------


def _read_run(run_dir: str) -> tuple[dict, builtins.list[dict], dict]:
  """(config.json, metrics.jsonl records, the full-scale queue's train.log records) of a run."""
  path = os.path.join(run_dir, "config.json")
  if not os.path.isfile(path):
    raise ZooError(f"{run_dir}: no config.json; pass a finished run's workdir or its "
                   f"collected folder (experiments/results_full/NAME).")
  with open(path) as f:
    config = json.load(f)
  if not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
    raise ZooError(f"{run_dir}: no metrics.jsonl; the run never finished an epoch.")
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    history = [json.loads(line) for line in f if line.strip()]
  if not history or history[-1].get("epoch") != config["num_epochs"]:
    raise ZooError(f"{run_dir}: the run has not finished its {config['num_epochs']} epochs "
                   f"(metrics.jsonl ends at epoch {history[-1].get('epoch') if history else 0}).")
  log_path = os.path.join(run_dir, "train.log")
  return config, history, log_records(log_path) if os.path.isfile(log_path) else {}


def log_records(path: str) -> dict:
  """The full-scale queue's records in a train.log (``LOG_TAG`` + JSON lines), merged: later
  records win, except ``first_started`` (the first segment's start of a resumed run)."""
  out: dict = {}
  with open(path, errors="replace") as f:
    for line in f:
      if line.startswith(LOG_TAG):
        rec = json.loads(line[len(LOG_TAG):])
        if "started" in rec:
          out.setdefault("first_started", rec["started"])
        out.update(rec)
  return out


def _float_top1(history: builtins.list[dict], config: dict) -> dict:
  """Final and best test top-1 (%) of the float model, from the run's metrics."""
  scored = [r for r in history if "test/accuracy" in r]
  best = max(scored, key=lambda r: r["test/accuracy"])
  final = scored[-1]
  return {"final": round(100 * final["test/accuracy"], 2), "final_epoch": final["epoch"],
          "best": round(100 * best["test/accuracy"], 2), "best_epoch": best["epoch"],
          "test_images": config["data"].get("test_subset") or 10_000}


def _place_packed(run_dir: str, target: str) -> str:
  """Copies the run's exported ``*.packed`` to ``target`` or, if it has none, exports its
  latest checkpoint there. Returns what was done."""
  found = sorted(f for f in os.listdir(run_dir) if f.endswith(".packed"))
  if len(found) > 1:
    raise ZooError(f"{run_dir}: several packed files ({', '.join(found)}); keep one.")
  if found:
    shutil.copyfile(os.path.join(run_dir, found[0]), target)
    return f"copied {found[0]}"
  from bnn_jax import deploy
  deploy.export(run_dir, target)
  return "exported from the latest checkpoint"


def add(run_dir: str, name: Optional[str] = None, *, data: Optional[str] = None,
        directory: Optional[str] = None, command: Optional[str] = None,
        device: Optional[str] = None, overwrite: bool = False) -> dict:
  """Builds the zoo entry ``NAME.packed`` + ``NAME.json`` from a finished run.

  Args:
    run_dir: a training workdir (its latest checkpoint is exported) or a collected folder
      holding the run's ``*.packed`` (``experiments/results_full/NAME``, which is copied),
      with its config.json and metrics.jsonl (and the full-scale queue's train.log, whose
      records give the training command, device and dates).
    name: the entry's name (default: the folder's name).
    data: the CIFAR binary archive the packed model is scored on (all test images).
    command, device: the training command and device when train.log does not record them.
    overwrite: replace an existing entry.

  Returns:
    The card (also written to ``NAME.json``).
  """
  from bnn_jax import __version__
  from bnn_jax.packed import load_packed
  run_dir = os.path.abspath(run_dir)
  name = name or os.path.basename(run_dir.rstrip(os.sep))
  d = _dir(directory)
  config, history, log = _read_run(run_dir)
  if not overwrite and os.path.exists(os.path.join(d, f"{name}.json")):
    raise ZooError(f"{os.path.join(d, name + '.json')} exists; pass --force to replace it.")
  dataset = config["data"].get("dataset", "cifar10")
  images, labels = test_set(data, dataset)   # before writing anything
  os.makedirs(d, exist_ok=True)
  target = os.path.join(d, f"{name}.packed")
  how = _place_packed(run_dir, target)
  model = load_packed(target)
  correct = correct_count(model, images, labels)
  m = config["model"]
  entry = {
      "name": name, "file": f"{name}.packed", "file_bytes": os.path.getsize(target),
      "sha256": sha256(target), "packed": how,
      "model": m["name"], "width": m["width"], "num_classes": m["num_classes"],
      "options": m.get("options", {}), "dtype": m.get("dtype", "float32"),
      "dataset": dataset, "config": log.get("config"), "seed": config.get("seed"),
      "epochs": config["num_epochs"], "batch_size": config.get("batch_size"),
      "float_test_top1_pct": _float_top1(history, config),
      "packed_test_top1_pct": round(100 * correct / len(labels), 2),
      "packed_test_correct": correct, "packed_test_images": len(labels),
      "packed_correct_first_1000": correct_count(model, images, labels, FIRST),
      "training_command": command or log.get("command"),
      "device": device or log.get("device"), "training_started": log.get("first_started"),
      "training_ended": log.get("ended"),
      "date": datetime.date.today().isoformat(), "bnn_jax_version": __version__,
  }
  with open(os.path.join(d, f"{name}.json"), "w") as f:
    json.dump(entry, f, indent=1)
    f.write("\n")
  return entry


# --- command line --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m bnn_jax.zoo", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dir", default=None, help=f"the zoo folder (default ${ENV_VAR} or <repo>/zoo)")
  sub = p.add_subparsers(dest="cmd", required=True)
  sub.add_parser("list", help="the shipped models")
  e = sub.add_parser("eval", help="score a model on the CIFAR test set (CPU)")
  e.add_argument("name")
  e.add_argument("--data", default=None, help="the CIFAR binary archive")
  e.add_argument("--limit", type=int, default=None, help="the first N test images only")
  a = sub.add_parser("add", help="build an entry from a finished run")
  a.add_argument("run_dir")
  a.add_argument("--name", default=None)
  a.add_argument("--data", default=None, help="the CIFAR binary archive")
  a.add_argument("--command", default=None, help="the training command, if train.log lacks it")
  a.add_argument("--device", default=None, help="the training device, if train.log lacks it")
  a.add_argument("--force", action="store_true", help="replace an existing entry")
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  try:
    if args.cmd == "list":
      names = list(args.dir)
      print("\n".join(names) if names else f"No model shipped in {_dir(args.dir)} yet.")
      return 0
    if args.cmd == "eval":
      if args.limit is not None and args.limit < 1:
        raise ZooError(f"--limit must be >= 1, got {args.limit}.")
      r = evaluate(args.name, args.data, args.limit, args.dir)
      expected = card_figure(card(args.name, args.dir), r["images"])
      verdict = "" if expected is None else (
          f"; the card says {expected}: " + ("matches" if expected == r["correct"] else
                                             "DIFFERS"))
      print(f"{args.name}: top-1 {r['top1_pct']:.2f}% ({r['correct']} / {r['images']} correct) "
            f"on the test set, packed model on the CPU{verdict}")
      return 0 if expected in (None, r["correct"]) else 1
    entry = add(args.run_dir, args.name, data=args.data, directory=args.dir,
                command=args.command, device=args.device, overwrite=args.force)
    print(json.dumps(entry, indent=1))
    return 0
  except ZooError as e:
    print(f"bnn_jax.zoo: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
