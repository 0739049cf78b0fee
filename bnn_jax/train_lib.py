"""Data-parallel training with ``jax.pmap``: state, the step, and the epoch loop.

Data flow: config -> data (uint8 CIFAR kept on every device) + model (``models.from_config``)
+ optimizer + objective (``objectives.from_config``) [+ frozen teacher] -> the train step
made by ``make_train_step(objective)`` (pmapped; gathers its batch by index, augments on
device, averages gradients and metrics with ``lax.pmean`` and adds the metrics to the
epoch's running sums on device) -> per-epoch evaluation (BatchNorm statistics averaged
across devices first), weight statistics and activation balance -> metrics.jsonl,
TensorBoard, orbax checkpoints. A rerun with the same workdir resumes from the latest
checkpoint; SIGTERM / Ctrl-C saves first.

Randomness is a pure function of (seed, step) for augmentation and (seed, epoch)
for the data order, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
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

from bnn_jax import checkpoints, data, losses, models, objectives, optim, weight_stats
from bnn_jax import config as config_lib
from bnn_jax import teacher as teacher_lib

PyTree = Any
AXIS = "batch"  # the pmap axis name of every step
NAN_POLICIES = ("stop", "skip")


class NonFiniteError(RuntimeError):
  """The loss or the gradients became NaN/inf (``config.nan_policy="stop"``)."""


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

  def variables(self, params=None) -> dict:
    v = {"params": self.params if params is None else params}
    if self.batch_stats:
      v["batch_stats"] = self.batch_stats
    return v


# --- building blocks ---------------------------------------------------------------


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """``models.from_config`` with synchronized BN over the step's pmap axis when configured."""
  return models.from_config(config.model, num_classes,
                            bn_axis_name=AXIS if config.model.sync_batch_norm else None)


def create_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  variables = jax.jit(functools.partial(model.init, train=False))(
      rng, jnp.zeros((1, 32, 32, 3), jnp.float32))
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                    apply_fn=model.apply, tx=tx)


def training_batch(images, labels, indices, rng, *, mean, std, augment: bool):
  """This device's batch: gathered by index, augmented (one key per (step, index)), normalized."""
  x = images[indices]
  if augment:  # one key per (step, dataset index): the same on any number of devices
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, indices)
    x = data.augment_each(keys, x)
  return data.normalize(x, mean, std), labels[indices]


def make_update(objective: objectives.Objective, axis_name: Optional[str] = AXIS,
                skip_nonfinite: bool = False):
  """``update(state, sums, x, y, teacher=None) -> (state, sums, metrics)`` on a ready batch.

  The forward pass (BatchNorm in train mode; intermediates collected only when the
  objective needs them, so the plain update is the plain forward/backward), the
  objective, the gradient (averaged over ``axis_name`` under pmap; None for one device),
  ``tx.update`` and ``optax.apply_updates``. The objective's metrics are averaged likewise
  and added to ``sums`` (the epoch's running sums, kept on device; a key missing from
  ``sums`` starts at the metric). ``teacher`` (a ``teacher.Teacher``) runs in eval mode
  under ``stop_gradient``.

  Non-finite guard: the metrics carry ``nonfinite`` = 1 when the loss or any gradient is
  NaN/inf on any device (0 otherwise), so its sum counts the bad steps at no extra host
  sync. With ``skip_nonfinite`` such a step leaves params, BatchNorm statistics and the
  optimizer state unchanged (only the step counter moves).
  """
  mean_over_devices = (lambda t: jax.lax.pmean(t, axis_name)) if axis_name else (lambda t: t)

  def update(state: TrainState, sums: dict, x, y, teacher=None):
    t_logits = t_features = None
    if objective.needs_teacher:
      t_logits, t_features = teacher(x)
    mutable = (["batch_stats"] if state.batch_stats else []) + \
        (["intermediates"] if objective.needs_features else [])

    def loss_fn(params):
      if mutable:
        logits, new_vars = state.apply_fn(state.variables(params), x, train=True, mutable=mutable)
      else:  # BN-free and no features (mutable=[] would still return a (logits, {}) pair)
        logits, new_vars = state.apply_fn(state.variables(params), x, train=True), {}
      features = models.features(new_vars["intermediates"]) if objective.needs_features else None
      loss, metrics = objective.loss_fn(objectives.StepOutputs(logits, y, features, t_logits,
                                                               t_features))
      return loss, (metrics, new_vars.get("batch_stats", state.batch_stats))

    (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    grads = mean_over_devices(grads)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(mean_over_devices(loss)) & _all_finite(grads)
    metrics = {**mean_over_devices(metrics), "nonfinite": 1.0 - finite.astype(jnp.float32)}
    new = {"params": params, "batch_stats": batch_stats, "opt_state": opt_state}
    if skip_nonfinite:
      old = {"params": state.params, "batch_stats": state.batch_stats,
             "opt_state": state.opt_state}
      new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    sums = {k: sums[k] + v if k in sums else v for k, v in metrics.items()}
    return state.replace(step=state.step + 1, **new), sums, metrics

  return update


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_train_step(objective: objectives.Objective, *, mean, std, augment: bool,
                    axis_name: str = AXIS, skip_nonfinite: bool = False):
  """The pmapped training step for ``objective`` (an ``objectives.Objective``).

  ``train_step(state, sums, images, labels, indices, rng, teacher=None)`` -> ``(state, sums,
  metrics)``: :func:`training_batch` (this device's ``indices`` into the device-resident
  data) then :func:`make_update`'s update.
  """
  update = make_update(objective, axis_name, skip_nonfinite)

  def train_step(state: TrainState, sums: dict, images, labels, indices, rng, teacher=None):
    x, y = training_batch(images, labels, indices, rng, mean=mean, std=std, augment=augment)
    return update(state, sums, x, y, teacher)

  return train_step


def eval_step(state: TrainState, images, labels, indices, mask, *, mean, std, num_classes: int,
              axis_name: str = AXIS):
  """Summed loss, correct count and example count of a masked batch, summed over devices."""
  x = data.normalize(images[indices], mean, std)
  y = labels[indices]
  logits = state.apply_fn(state.variables(), x, train=False)
  w = mask.astype(jnp.float32)
  sums = {"loss": jnp.sum(losses.cross_entropy(logits, y, num_classes) * w),
          "correct": jnp.sum((jnp.argmax(logits, -1) == y) * w), "count": jnp.sum(w)}
  return jax.lax.psum(sums, axis_name)


def balance_step(state: TrainState, images, indices, *, mean, std, axis_name: str = AXIS):
  """Fraction of +1 out of every activation sign on this batch, averaged over devices.

  The sign outputs +1 where its (sown) real input is >= 0 (sign(0) = +1). Returns
  ``{sign module path: p_plus}``; {} for a model without binary activations.
  """
  x = data.normalize(images[indices], mean, std)
  _, state_out = state.apply_fn(state.variables(), x, train=False, mutable=["intermediates"])
  presign = models.features(state_out["intermediates"])["presign"]
  p = {k: jnp.mean((v >= 0).astype(jnp.float32)) for k, v in presign.items()}
  return jax.lax.pmean(p, axis_name)


def bit_entropy(p: float) -> float:
  """H(p) = -p log2 p - (1-p) log2(1-p) in bits (0 at p in {0, 1}, 1 at p = 1/2)."""
  return -sum(q * math.log2(q) for q in (p, 1.0 - p) if q > 0)


def balance_record(p_plus: dict) -> dict:
  """metrics.jsonl keys ``balance/<layer>/{p_plus,entropy}`` and ``balance/overall/...``
  (the mean over layers) from ``{layer: p_plus}``."""
  if not p_plus:
    return {}
  record = {}
  for layer, p in p_plus.items():
    record[f"balance/{layer}/p_plus"] = float(p)
    record[f"balance/{layer}/entropy"] = bit_entropy(float(p))
  record["balance/overall/p_plus"] = float(np.mean([float(p) for p in p_plus.values()]))
  record["balance/overall/entropy"] = float(np.mean([bit_entropy(float(p))
                                                     for p in p_plus.values()]))
  return record


def sync_batch_stats(state: TrainState, axis_name: str = AXIS) -> TrainState:
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
  """``jax.distributed.initialize()`` when a multi-process environment is declared.

  Besides the environments JAX detects itself (SLURM, Cloud TPU), the plain variables
  ``JAX_COORDINATOR_ADDRESS=host:port JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i`` start process
  ``i`` of ``N`` (README, "Several processes"); on CPU the collectives go over gloo.
  """
  multi_host = (os.environ.get("JAX_COORDINATOR_ADDRESS")
                or int(os.environ.get("SLURM_NTASKS", "1")) > 1
                or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0)
  if not multi_host or jax.distributed.is_initialized():
    return
  kwargs = {}
  if os.environ.get("JAX_NUM_PROCESSES") or os.environ.get("JAX_PROCESS_ID"):
    try:
      kwargs = {"num_processes": int(os.environ["JAX_NUM_PROCESSES"]),
                "process_id": int(os.environ["JAX_PROCESS_ID"])}
    except (KeyError, ValueError) as e:
      raise ValueError("A multi-process run needs both JAX_NUM_PROCESSES (the number of "
                       "processes) and JAX_PROCESS_ID (0 to N-1, different in each process) "
                       f"as integers; got JAX_NUM_PROCESSES={os.environ.get('JAX_NUM_PROCESSES')!r}, "
                       f"JAX_PROCESS_ID={os.environ.get('JAX_PROCESS_ID')!r}.") from e
  jax.distributed.initialize(**kwargs)


def mapped_devices(local: list) -> list:
  """The devices ``pmap`` maps over: this process's ``local`` devices, or in a multi-process
  run every process's (``pmap`` needs the global list there; each process still feeds and
  reads only its local shards)."""
  return jax.devices() if jax.process_count() > 1 else local


def local_devices(num_devices: int) -> list:
  """The first ``num_devices`` local devices (0 = all), with a clear error if there are fewer."""
  available = jax.local_devices()
  if num_devices < 0 or num_devices > len(available):
    raise ValueError(f"--config.num_devices={num_devices} but this process has {len(available)} "
                     f"device(s) ({available[0].platform}); use 0 (all) to {len(available)}.")
  if num_devices and jax.process_count() > 1:
    raise ValueError("--config.num_devices must be 0 (all devices) in a multi-process run.")
  return available[:num_devices] if num_devices else available


def strict_json(record: dict) -> str:
  """JSON without the non-standard NaN/Infinity tokens: a non-finite number becomes null."""
  clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
           for k, v in record.items()}
  return json.dumps(clean, allow_nan=False)


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
      f.writelines(strict_json(r) + "\n" for r in kept)

  def scalars(self, step: int, values: dict) -> None:
    if self.tb:
      for k, v in values.items():
        self.tb.add_scalar(k, float(v), step)

  def epoch(self, record: dict) -> None:
    if not self.enabled:
      return
    with open(self.metrics_path, "a") as f:
      f.write(strict_json(record) + "\n")
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


# --- setup ---------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
  """Everything the epoch loop needs, built once by :func:`setup`."""
  config: ml_collections.ConfigDict
  workdir: str
  devices: list
  ds: Any
  steps_per_epoch: int
  lr_schedule: optax.Schedule
  state: TrainState                  # replicated
  start_step: int
  meta: dict                         # of the checkpoint resumed from ({} when none)
  p_train: Callable
  p_eval: Callable
  p_sync: Callable
  p_balance: Callable
  train_data: tuple                  # replicated uint8 images, labels
  test_data: tuple
  balance_indices: np.ndarray        # [devices, per-device] fixed test images for the balance
  teacher: Optional[teacher_lib.Teacher]  # replicated; never donated or saved
  zero_sums: dict                    # host zeros with the step's metric keys
  ckpt: checkpoints.Checkpointer
  writer: "_Writer"
  is_chief: bool


def setup(config: ml_collections.ConfigDict, workdir: str, stack: contextlib.ExitStack) -> Run:
  """Builds data, model, optimizer, objective, teacher, steps and resumes; registers every
  resource it opens on ``stack`` so it is closed on every exit path."""
  maybe_initialize_distributed()
  is_chief = jax.process_index() == 0
  devices = local_devices(config.num_devices)
  n_dev = len(devices)
  per_device = data.check_batch(config.batch_size, n_dev, jax.process_index(),
                                jax.process_count())
  os.makedirs(workdir, exist_ok=True)

  ds = data.load_dataset(config.data)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.num_classes = ds.num_classes
  n_train = len(ds.train_labels)
  steps_per_epoch = data.steps_per_epoch(n_train, config.batch_size)
  if steps_per_epoch == 0:
    raise ValueError(f"The training set ({n_train} images) is smaller than one global batch "
                     f"({config.batch_size}); lower --config.batch_size.")

  model = build_model(config, ds.num_classes)
  teacher, taps = None, ()
  if config.teacher.workdir:
    teacher, teacher_model = teacher_lib.load(config.teacher, config.data.dataset)
    if config.distill.detail_weight:
      taps = objectives.pair_taps(_feature_shapes(model, per_device),
                                  _feature_shapes(teacher_model, per_device),
                                  objectives.tap_names(config.distill.detail_taps))
  objective = objectives.from_config(config, ds.num_classes, taps)  # validate: teacher set
  tx, lr_schedule = optim.build_optimizer(config, steps_per_epoch)
  state = create_state(model, tx, jax.random.key(config.seed))

  ckpt = checkpoints.Checkpointer(os.path.join(workdir, checkpoints.CHECKPOINT_DIR),
                                  keep=config.checkpoint.keep, keep_best=config.checkpoint.keep_best)
  stack.callback(ckpt.close)
  writer = _Writer(workdir, is_chief)
  stack.callback(writer.close)
  if is_chief:
    write_config(config, workdir)
  meta = {}
  if ckpt.latest_step() is not None:
    saved, meta = ckpt.restore_latest_good(jax.tree.map(np.asarray, state.to_saveable()))
    state = state.replace_from(saved)
    logging.info("Resumed from %s at step %d.", ckpt.directory, int(state.step))
  elif config.init_from:
    state = load_init_from(config.init_from, state)
  start_step = int(state.step)
  writer.truncate_history(start_step // steps_per_epoch)

  # Device-resident uint8 data: the host feeds only indices.
  put = functools.partial(replicate, devices=devices)
  mean, std = tuple(ds.mean), tuple(ds.std)
  pmap = functools.partial(jax.pmap, axis_name=AXIS, devices=mapped_devices(devices))
  step = make_train_step(objective, mean=mean, std=std, augment=config.data.augment,
                         skip_nonfinite=config.nan_policy == "skip")
  if teacher is None:  # the lambda hides the teacher=None default from pmap's arity
    p_train = pmap(lambda *a: step(*a), donate_argnums=(0, 1), in_axes=(0, 0, 0, 0, 0, None))
  else:
    p_train = pmap(step, donate_argnums=(0, 1), in_axes=(0, 0, 0, 0, 0, None, 0))
    teacher = put(teacher)
  state = put(state)
  train_data = (put(ds.train_images), put(ds.train_labels))
  zero_sums = _metric_zeros(step, state, train_data, per_device, teacher)
  n_balance = min(len(ds.test_labels), 256) // n_dev * n_dev  # the fixed balance batch
  return Run(
      config=config, workdir=workdir, devices=devices, ds=ds, steps_per_epoch=steps_per_epoch,
      lr_schedule=lr_schedule, state=state, start_step=start_step, meta=meta, p_train=p_train,
      p_eval=pmap(functools.partial(eval_step, mean=mean, std=std, num_classes=ds.num_classes)),
      p_sync=pmap(sync_batch_stats),
      p_balance=pmap(functools.partial(balance_step, mean=mean, std=std)),
      train_data=train_data, test_data=(put(ds.test_images), put(ds.test_labels)),
      balance_indices=np.arange(n_balance, dtype=np.int32).reshape(n_dev, -1),
      teacher=teacher, zero_sums=zero_sums, ckpt=ckpt, writer=writer, is_chief=is_chief)


def _feature_shapes(model: nn.Module, batch: int) -> dict:
  """The features dict of ``model`` as shapes (nothing computed)."""
  x = jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  return jax.eval_shape(lambda v, x: models.apply_with_features(model, v, x)[1], variables, x)


def _metric_zeros(step, state, train_data, per_device: int, teacher) -> dict:
  """Zero float32 scalars with the metric keys ``step`` returns (found by shape evaluation)."""
  idx = jax.ShapeDtypeStruct((1, per_device), jnp.int32)
  vstep = jax.vmap(lambda st, im, lb, ix, t: step(st, {}, im, lb, ix, jax.random.key(0), t),
                   axis_name=AXIS)
  one = lambda tree: jax.tree.map(lambda v: jax.ShapeDtypeStruct((1, *v.shape[1:]), v.dtype), tree)
  _, sums, _ = jax.eval_shape(vstep, one(state), one(train_data[0]), one(train_data[1]), idx,
                              one(teacher) if teacher is not None else None)
  return {k: np.zeros((), np.float32) for k in sums}


# --- the loop ----------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       on_epoch_end: Optional[Callable[[dict], None]] = None) -> dict:
  """Trains per ``config``, writing logs and checkpoints to ``workdir``; returns the last
  epoch's record (or, after a SIGTERM/Ctrl-C stop, the last complete epoch's).

  ``on_epoch_end(record)``, if given, is called in every process after each epoch's record is
  logged and its checkpoint saved, with the record metrics.jsonl got; its time is outside
  ``epoch_seconds`` (benchmarks/bench_epoch.py runs a PyTorch epoch there).
  """
  config_lib.validate(config)
  with contextlib.ExitStack() as stack:
    run = setup(config, workdir, stack)
    return _train_epochs(run, on_epoch_end)


def _train_epochs(run: Run, on_epoch_end: Optional[Callable[[dict], None]] = None) -> dict:
  config, spe = run.config, run.steps_per_epoch
  n_train = len(run.ds.train_labels)
  n_dev = len(run.devices)
  state, record = run.state, {}
  base_rng = jax.random.key(config.seed + 1)
  # the binary params at the start of the epoch, for its flip ratio (none in epoch 1 and after
  # a mid-epoch resume); prev_epoch: the epoch index whose start they are
  prev_params, prev_epoch = None, -1
  teacher_args = () if run.teacher is None else (run.teacher,)
  checked = run.start_step  # steps up to here are known to be finite
  with _StopRequest() as stop:
    for epoch in range(run.start_step // spe, config.num_epochs):
      indices = data.train_batch_indices(config.seed, epoch, n_train, config.batch_size, n_dev,
                                         jax.process_index(), jax.process_count())
      first = run.start_step - epoch * spe if epoch == run.start_step // spe else 0
      carried = _partial_sums(run.meta) if first else ({}, {})
      stats_now = ((epoch + 1) % config.weight_stats_every_epochs == 0
                   or epoch + 1 == config.num_epochs)
      if stats_now and epoch > 0 and first == 0 and prev_epoch != epoch:
        prev_params, prev_epoch = _host_params_if_binary(state), epoch
      bar = _progress(config, run.is_chief, epoch, spe, first)
      sums = replicate(run.zero_sums, run.devices)  # donated to the step: a fresh copy
      t0 = time.time()
      for i in range(first, spe):
        step = epoch * spe + i
        rng = jax.random.fold_in(base_rng, step)
        state, sums, metrics = run.p_train(state, sums, *run.train_data, indices[i], rng,
                                           *teacher_args)
        at_log = (step + 1) % config.log_every_steps == 0 or i == spe - 1
        stopping = _stop_agreed(stop, at_log)
        if at_log or stopping:
          checked = _check_finite(run, sums, epoch, checked, step + 1)
          m = {k: float(v[0]) for k, v in metrics.items() if k != "nonfinite"}
          run.writer.scalars(step + 1, {**{f"train/{k}_step": v for k, v in m.items()},
                                        "lr": float(run.lr_schedule(step))})
          bar.set_postfix({k: f"{v:.3f}" for k, v in m.items()})
        bar.update(config.batch_size)
        if stopping:
          bar.close()
          totals, counts = _merge_sums(carried, sums, i + 1 - first)
          _save(run.ckpt, state, epoch, {"partial_sums": {"sums": totals, "counts": counts}}, None)
          logging.warning("Saved step %d after %s; rerun with the same --workdir to resume.",
                          step + 1, stop.requested or "a stop signal in another process")
          return record
      bar.close()
      elapsed = time.time() - t0
      state = run.p_sync(state)
      totals, counts = _merge_sums(carried, sums, spe - first)
      nonfinite = int(totals.pop("nonfinite", 0.0))  # 0 under "stop" (it would have raised)
      record = {"epoch": epoch + 1, "step": (epoch + 1) * spe,
                **{f"train/{k}": totals[k] / counts[k] for k in totals},
                **({"train/nonfinite_steps": nonfinite} if config.nan_policy == "skip" else {}),
                "lr": float(run.lr_schedule((epoch + 1) * spe - 1)),
                "images_per_sec": (spe - first) * config.batch_size / elapsed,
                "epoch_seconds": elapsed}
      if (epoch + 1) % config.eval_every_epochs == 0 or epoch + 1 == config.num_epochs:
        record.update(evaluate(run.p_eval, state, *run.test_data, config.batch_size, n_dev))
        record.update(balance_record(
            {k: float(v[0]) for k, v in run.p_balance(state, run.test_data[0],
                                                       run.balance_indices).items()}))
      if stats_now:
        host_binary = _host_params_if_binary(state)
        if host_binary:
          stats = weight_stats.latent_weight_stats(
              host_binary, target=optim.logged_weight_target(config),
              prev_params=prev_params if prev_epoch == epoch else None)
          record.update(weight_stats.flatten_stats(stats, "weights"))
        prev_params, prev_epoch = host_binary, epoch + 1   # the next epoch's start
      run.writer.epoch(record)
      if run.is_chief:
        logging.info("epoch %d: %s", epoch + 1, _summary_line(record))
      if (epoch + 1) % config.checkpoint.every_epochs == 0 or epoch + 1 == config.num_epochs:
        _save(run.ckpt, state, epoch + 1, {}, record.get("test/accuracy"))
      if on_epoch_end is not None:
        on_epoch_end(record)
  return record


def _stop_agreed(stop: "_StopRequest", at_log: bool) -> bool:
  """Whether to save and stop after this step. One process: as soon as a signal came. Several:
  at logging points only, when any process got one (all must stop at the same step, since the
  save is collective), decided by one small all-gather."""
  if jax.process_count() == 1:
    return stop.requested is not None
  if not at_log:
    return False
  from jax.experimental import multihost_utils
  return bool(multihost_utils.process_allgather(np.int32(stop.requested is not None)).any())


def _check_finite(run: Run, sums: dict, epoch: int, checked: int, step: int) -> int:
  """Under nan_policy "stop": raises NonFiniteError if a step since ``checked`` was non-finite
  (one scalar fetched, at a logging point); returns ``step`` (now checked)."""
  if run.config.nan_policy == "stop" and float(sums["nonfinite"][0]) > 0:
    raise NonFiniteError(
        f"Training diverged: the loss or the gradients became NaN/inf in epoch {epoch + 1}, "
        f"between steps {checked + 1} and {step} (learning rate "
        f"{float(run.lr_schedule(step - 1)):.3g}). Nothing after the last good checkpoint "
        f"({_last_good(run.ckpt)}) was saved. Lower --config.optim.lr (or add "
        f"warmup: --config.optim.warmup_epochs), or set --config.nan_policy=skip to skip "
        f"such steps.")
  return step


def _last_good(ckpt: checkpoints.Checkpointer) -> str:
  step = ckpt.latest_step()
  return "none yet" if step is None else f"step {step}"


def _partial_sums(meta: dict) -> tuple[dict, dict]:
  """(sums, counts) of a mid-epoch checkpoint; older ones stored {key: sum, "steps": n}."""
  partial = meta.get("partial_sums", {})
  if "sums" in partial:
    return dict(partial["sums"]), {k: int(v) for k, v in partial["counts"].items()}
  steps = int(partial.get("steps", 0))
  sums = {k: float(v) for k, v in partial.items() if k != "steps"}
  return sums, {k: steps for k in sums}


def _merge_sums(carried: tuple[dict, dict], sums: dict, steps: int) -> tuple[dict, dict]:
  """This session's device sums over ``steps`` steps plus the sums carried from a mid-epoch
  checkpoint, per key: a key the checkpoint lacks (or only it has) counts its own steps."""
  old_sums, old_counts = carried
  totals = {k: float(v[0]) for k, v in sums.items()}
  counts = {k: steps for k in totals}
  for k, v in old_sums.items():
    totals[k] = totals.get(k, 0.0) + v
    counts[k] = counts.get(k, 0) + old_counts.get(k, 0)
  return ({k: v for k, v in totals.items() if counts[k]},
          {k: n for k, n in counts.items() if n})


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
