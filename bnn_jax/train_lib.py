"""Data-parallel training with ``jax.pmap``: state, steps, and the epoch loop.

Data flow: config -> data (uint8 CIFAR kept on every device) + model + optimizer
-> ``train_step`` (pmapped; gathers its batch by index, augments on device,
averages gradients and metrics with ``lax.pmean``) -> per-epoch evaluation
(BatchNorm statistics averaged across devices first) -> metrics.jsonl,
TensorBoard, orbax checkpoints. A rerun with the same workdir resumes from the
latest checkpoint; SIGTERM / Ctrl-C saves first.

Randomness is a pure function of (seed, step) for augmentation and (seed, epoch)
for the data order, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import time
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bnn_jax import checkpoints, data, models, optim, weight_stats
from bnn_jax import config as config_lib

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  apply_fn: Callable = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  def to_saveable(self) -> dict:
    return {"step": self.step, "params": self.params, "batch_stats": self.batch_stats,
            "opt_state": self.opt_state}

  def replace_from(self, saved: dict) -> "TrainState":
    return self.replace(step=saved["step"], params=saved["params"],
                        batch_stats=saved["batch_stats"], opt_state=saved["opt_state"])


# --- building blocks ---------------------------------------------------------------


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  kwargs = {"num_classes": num_classes, "width": config.model.width,
            "dtype": jnp.dtype(config.model.dtype)}
  if not config.model.binarize_weights:
    kwargs["binarize_weights"] = False
  if config.model.sync_batch_norm:
    kwargs["bn_axis_name"] = "batch"  # the pmap axis of train_step
  return models.get_model(config.model.name, **kwargs)


def create_state(config, model: nn.Module, tx: optax.GradientTransformation,
                 rng: jax.Array) -> TrainState:
  variables = jax.jit(functools.partial(model.init, train=False))(
      rng, jnp.zeros((1, 32, 32, 3), jnp.float32))
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                    apply_fn=model.apply, tx=tx)


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing) \
      if label_smoothing else jax.nn.one_hot(labels, num_classes)
  return optax.softmax_cross_entropy(logits, targets)


def _variables(state: TrainState, params=None) -> dict:
  v = {"params": state.params if params is None else params}
  if state.batch_stats:
    v["batch_stats"] = state.batch_stats
  return v


def train_step(state: TrainState, images: jax.Array, labels: jax.Array, indices: jax.Array,
               rng: jax.Array, *, mean, std, augment: bool, num_classes: int,
               label_smoothing: float, axis_name: str = "batch"):
  """One pmapped SGD step on this device's ``indices`` into the device-resident data.

  Returns (state, metrics) with metrics averaged over devices.
  """
  x = images[indices]
  if augment:  # one key per (step, dataset index): the same on any number of devices
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, indices)
    x = data.augment_each(keys, x)
  x = data.normalize(x, mean, std)
  y = labels[indices]

  def loss_fn(params):
    variables = _variables(state, params)
    if state.batch_stats:
      logits, new_vars = state.apply_fn(variables, x, train=True, mutable=["batch_stats"])
    else:  # BN-free: nothing to update (mutable=[] would still return a (logits, {}) pair)
      logits, new_vars = state.apply_fn(variables, x, train=True), {}
    loss = cross_entropy(logits, y, num_classes, label_smoothing).mean()
    return loss, (logits, new_vars.get("batch_stats", state.batch_stats))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, axis_name)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}
  metrics = jax.lax.pmean(metrics, axis_name)
  return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                       opt_state=opt_state), metrics


def eval_step(state: TrainState, images, labels, indices, mask, *, mean, std, num_classes: int,
              axis_name: str = "batch"):
  """Summed loss, correct count and example count of a masked batch, summed over devices."""
  x = data.normalize(images[indices], mean, std)
  y = labels[indices]
  logits = state.apply_fn(_variables(state), x, train=False)
  w = mask.astype(jnp.float32)
  sums = {"loss": jnp.sum(cross_entropy(logits, y, num_classes) * w),
          "correct": jnp.sum((jnp.argmax(logits, -1) == y) * w), "count": jnp.sum(w)}
  return jax.lax.psum(sums, axis_name)


def sync_batch_stats(state: TrainState, axis_name: str = "batch") -> TrainState:
  """Averages BatchNorm running statistics across devices (pmapped)."""
  return state.replace(batch_stats=jax.lax.pmean(state.batch_stats, axis_name))


# --- environment -----------------------------------------------------------------------


def replicate(tree: PyTree, devices: list, axis_name: str = "batch") -> PyTree:
  """One copy of every leaf per device, placed with the sharding ``pmap(axis_name=...)`` returns.

  ``flax.jax_utils.replicate`` shards over a mesh axis named ``'_device_put_sharded'``; the
  pmapped step's outputs are sharded over ``axis_name``, and the compile cache keys on the
  sharding, so feeding the step its own output would compile it a second time.
  """
  mesh = jax.sharding.Mesh(np.array(devices), (axis_name,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis_name))
  n = len(devices)
  return jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x)[None], (n, *np.shape(x))), sharding),
      tree)


def maybe_initialize_distributed() -> None:
  """``jax.distributed.initialize()`` when a multi-host environment is declared."""
  multi_host = (os.environ.get("JAX_COORDINATOR_ADDRESS")
                or int(os.environ.get("SLURM_NTASKS", "1")) > 1
                or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0)
  if multi_host and not jax.distributed.is_initialized():
    jax.distributed.initialize()


def local_devices(num_devices: int) -> list:
  """The first ``num_devices`` local devices (0 = all), with a clear error if there are fewer."""
  available = jax.local_devices()
  if num_devices < 0 or num_devices > len(available):
    raise ValueError(f"--config.num_devices={num_devices} but this process has {len(available)} "
                     f"device(s) ({available[0].platform}); use 0 (all) to {len(available)}.")
  if num_devices and jax.process_count() > 1:
    raise ValueError("--config.num_devices must be 0 (all devices) in a multi-process run.")
  return available[:num_devices] if num_devices else available


def check_batch(global_batch: int, num_local_devices: int) -> int:
  """Per-device batch; a clear error when the global batch does not divide over the devices."""
  devices = num_local_devices * jax.process_count()
  if global_batch % devices:
    lower = global_batch - global_batch % devices
    raise ValueError(
        f"--config.batch_size={global_batch} does not divide over {devices} devices "
        f"({jax.process_count()} process(es) x {num_local_devices} local); use a multiple "
        f"of {devices}, e.g. --config.batch_size={max(lower, devices)} or {lower + devices}.")
  return global_batch // devices


class _StopRequest:
  """Turns SIGTERM / SIGINT into a flag the loop checks after each step."""

  def __init__(self):
    self.requested = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):
    if self.requested is not None:  # second signal: stop now
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum).name
    logging.warning("%s received: saving a checkpoint and stopping.", self.requested)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class _Writer:
  """metrics.jsonl + TensorBoard (tensorboardX) + resolved config, on process 0 only."""

  def __init__(self, workdir: str, enabled: bool):
    self.enabled = enabled
    self.metrics_path = os.path.join(workdir, checkpoints.METRICS_FILE)
    self.tb = None
    if enabled:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(workdir)

  def truncate_history(self, last_epoch: int) -> None:
    """Drops lines of epochs after ``last_epoch`` (written after the checkpoint a resume starts from)."""
    if not self.enabled or not os.path.exists(self.metrics_path):
      return
    kept = [r for r in checkpoints.read_metrics(os.path.dirname(self.metrics_path))
            if r.get("epoch", 0) <= last_epoch]
    with open(self.metrics_path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)

  def scalars(self, step: int, values: dict) -> None:
    if self.tb:
      for k, v in values.items():
        self.tb.add_scalar(k, float(v), step)

  def epoch(self, record: dict) -> None:
    if not self.enabled:
      return
    with open(self.metrics_path, "a") as f:
      f.write(json.dumps(record) + "\n")
    self.scalars(record["step"], {k: v for k, v in record.items()
                                  if isinstance(v, (int, float)) and k not in ("epoch", "step")})
    self.tb.flush()

  def close(self):
    if self.tb:
      self.tb.close()


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  with open(os.path.join(workdir, checkpoints.CONFIG_FILE), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def load_init_from(path: str, state: TrainState) -> TrainState:
  """Starts from another run's latest params/batch_stats (ReActNet step 2 from step 1)."""
  run = checkpoints.load_run(path)
  shapes = lambda tree: jax.tree.map(np.shape, tree)
  if (jax.tree_util.tree_structure(state.params) != jax.tree_util.tree_structure(run.params)
      or shapes(state.params) != shapes(run.params)):
    raise ValueError(f"init_from={path}: its parameters do not match this model's; use the "
                     f"same model.name, model.width and dataset as that run "
                     f"(see {os.path.join(path, checkpoints.CONFIG_FILE)}).")
  params = jax.tree.map(lambda a, b: jnp.asarray(b, a.dtype), state.params, run.params)
  batch_stats = (jax.tree.map(lambda a, b: jnp.asarray(b, a.dtype), state.batch_stats,
                              run.batch_stats) if state.batch_stats else state.batch_stats)
  logging.info("Initialised params from %s (step %d).", path, run.step)
  return state.replace(params=params, batch_stats=batch_stats, opt_state=state.tx.init(params))


# --- the loop ----------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains per ``config``, writing logs and checkpoints to ``workdir``; returns the last epoch's metrics."""
  config_lib.validate(config)
  maybe_initialize_distributed()
  is_chief = jax.process_index() == 0
  devices = local_devices(config.num_devices)
  check_batch(config.batch_size, len(devices))
  os.makedirs(workdir, exist_ok=True)

  ds = data.load_dataset(config.data)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.num_classes = ds.num_classes
  if is_chief:
    write_config(config, workdir)

  n_dev = len(devices)
  n_train = len(ds.train_labels)
  steps_per_epoch = data.steps_per_epoch(n_train, config.batch_size)
  if steps_per_epoch == 0:
    raise ValueError(f"The training set ({n_train} images) is smaller than one global batch "
                     f"({config.batch_size}); lower --config.batch_size.")
  total_steps = steps_per_epoch * config.num_epochs

  model = build_model(config, ds.num_classes)
  tx, lr_schedule = optim.build_optimizer(config, steps_per_epoch)
  state = create_state(config, model, tx, jax.random.key(config.seed))

  ckpt = checkpoints.Checkpointer(os.path.join(workdir, checkpoints.CHECKPOINT_DIR),
                                  keep=config.checkpoint.keep, keep_best=config.checkpoint.keep_best)
  writer = _Writer(workdir, is_chief)
  meta = {}
  if ckpt.latest_step() is not None:
    saved, meta = ckpt.restore(target=jax.tree.map(np.asarray, state.to_saveable()))
    state = state.replace_from(saved)
    logging.info("Resumed from %s at step %d.", ckpt.directory, int(state.step))
  elif config.init_from:
    state = load_init_from(config.init_from, state)
  start_step = int(state.step)
  writer.truncate_history(start_step // steps_per_epoch)

  # Device-resident uint8 data: the host feeds only indices.
  put = functools.partial(replicate, devices=devices)
  train_images, train_labels = put(ds.train_images), put(ds.train_labels)
  test_images, test_labels = put(ds.test_images), put(ds.test_labels)
  mean, std = tuple(ds.mean), tuple(ds.std)
  pmap = functools.partial(jax.pmap, axis_name="batch", devices=devices)
  p_train = pmap(functools.partial(
      train_step, mean=mean, std=std, augment=config.data.augment, num_classes=ds.num_classes,
      label_smoothing=config.label_smoothing), donate_argnums=(0,), in_axes=(0, 0, 0, 0, None))
  p_eval = pmap(functools.partial(eval_step, mean=mean, std=std, num_classes=ds.num_classes))
  p_sync = pmap(sync_batch_stats)
  state = put(state)
  base_rng = jax.random.key(config.seed + 1)

  prev_params = None  # last epoch's params, for the flip ratio (none after a mid-epoch resume)
  record = {}
  with _StopRequest() as stop:
    for epoch in range(start_step // steps_per_epoch, config.num_epochs):
      indices = data.train_batch_indices(config.seed, epoch, n_train, config.batch_size, n_dev,
                                         jax.process_index(), jax.process_count())
      first = start_step - epoch * steps_per_epoch if epoch == start_step // steps_per_epoch else 0
      sums = meta.get("partial_sums", {"loss": 0.0, "accuracy": 0.0, "steps": 0}) if first else \
          {"loss": 0.0, "accuracy": 0.0, "steps": 0}
      if prev_params is None and epoch > 0 and first == 0:
        prev_params = _host_params_if_binary(state)
      bar = _progress(config, is_chief, epoch, steps_per_epoch, first)
      t0 = time.time()
      images_seen = 0
      for i in range(first, steps_per_epoch):
        step = epoch * steps_per_epoch + i
        rng = jax.random.fold_in(base_rng, step)
        state, metrics = p_train(state, train_images, train_labels, indices[i], rng)
        images_seen += config.batch_size
        if (step + 1) % config.log_every_steps == 0 or i == steps_per_epoch - 1 or stop.requested:
          m = jax.tree.map(lambda v: float(v[0]), metrics)
          writer.scalars(step + 1, {"train/loss_step": m["loss"], "lr": float(lr_schedule(step))})
          bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.3f}")
        sums = _accumulate(sums, metrics)
        bar.update(config.batch_size)
        if stop.requested:
          bar.close()
          _save(ckpt, state, epoch, {"partial_sums": _floats(sums)}, None)
          logging.warning("Saved step %d after %s; rerun with the same --workdir to resume.",
                          step + 1, stop.requested)
          writer.close()
          ckpt.close()
          return record
      bar.close()
      elapsed = time.time() - t0
      state = p_sync(state)
      sums = _floats(sums)
      record = {"epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch,
                "train/loss": sums["loss"] / sums["steps"],
                "train/accuracy": sums["accuracy"] / sums["steps"],
                "lr": float(lr_schedule((epoch + 1) * steps_per_epoch - 1)),
                "images_per_sec": images_seen / elapsed, "epoch_seconds": elapsed}
      if (epoch + 1) % config.eval_every_epochs == 0 or epoch + 1 == config.num_epochs:
        record.update(evaluate(p_eval, state, test_images, test_labels, config.batch_size, n_dev))
      host_binary = _host_params_if_binary(state)
      if host_binary:
        stats = weight_stats.latent_weight_stats(host_binary, target=config.weight_target,
                                                 prev_params=prev_params)
        record.update(weight_stats.flatten_stats(stats, "weights"))
      prev_params = host_binary
      writer.epoch(record)
      if is_chief:
        logging.info("epoch %d: %s", epoch + 1, _summary_line(record))
      _save(ckpt, state, epoch + 1, {}, record.get("test/accuracy"))
  writer.close()
  ckpt.close()
  return record


def evaluate(p_eval, state, images, labels, global_batch: int, n_dev: int) -> dict:
  n = int(labels.shape[1])
  idx, mask = data.eval_batch_indices(n, global_batch, n_dev, jax.process_index(),
                                      jax.process_count())
  totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
  for i in range(idx.shape[0]):
    s = p_eval(state, images, labels, idx[i], mask[i])
    totals = {k: totals[k] + float(s[k][0]) for k in totals}
  # psum covers this process's devices; multi-host sums the processes.
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    totals = {k: float(v) for k, v in zip(totals, multihost_utils.process_allgather(
        np.array(list(totals.values()))).sum(0))}
  return {"test/loss": totals["loss"] / totals["count"],
          "test/accuracy": totals["correct"] / totals["count"]}


def _host_params_if_binary(state: TrainState) -> dict:
  """Host copy of the (unreplicated) params, or {} when the model has no binary kernels."""
  params = jax.tree.map(lambda v: np.asarray(v[0]), state.params)
  return params if any(jax.tree.leaves(optim.binary_mask(params))) else {}


def _accumulate(sums: dict, metrics: dict) -> dict:
  return {"loss": sums["loss"] + metrics["loss"][0], "accuracy": sums["accuracy"] + metrics["accuracy"][0],
          "steps": sums["steps"] + 1}


def _floats(sums: dict) -> dict:
  return {k: float(v) for k, v in sums.items()}


def _save(ckpt: checkpoints.Checkpointer, state: TrainState, epoch: int, meta: dict,
          test_accuracy: Optional[float]) -> None:
  host = jax.tree.map(lambda v: np.asarray(v[0]), state.to_saveable())
  step = int(host["step"])
  metrics = {"test/accuracy": test_accuracy} if test_accuracy is not None else None
  ckpt.save(step, host, {"epoch": epoch, "step": step, **meta}, metrics)


def _progress(config, enabled: bool, epoch: int, steps: int, first: int):
  from tqdm import tqdm
  return tqdm(total=steps * config.batch_size, initial=first * config.batch_size,
              disable=not (enabled and config.progress_bar), unit="img", unit_scale=True,
              desc=f"epoch {epoch + 1}/{config.num_epochs}", leave=False, dynamic_ncols=True)


def _summary_line(record: dict) -> str:
  keys = ("train/loss", "train/accuracy", "test/loss", "test/accuracy", "images_per_sec",
          "weights/overall/flip_ratio", "weights/overall/mean_dist")
  return " ".join(f"{k}={record[k]:.4g}" for k in keys if k in record)
