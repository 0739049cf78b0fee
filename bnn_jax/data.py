"""CIFAR-10/100 for the trainer: loading, device-side augmentation, index batching.

Two sources give the same arrays (uint8 images ``[N, 32, 32, 3]`` NHWC, int32 labels):

- ``local``: the official CIFAR *binary* archive, read straight out of the ``.tar.gz``
  (or an extracted directory) with ``tarfile`` + NumPy; no TensorFlow.
  CIFAR-10: ``cifar-10-batches-bin/data_batch_{1..5}.bin``, ``test_batch.bin``,
  3073-byte records (label, 3072 channel-major pixels: 1024 R, 1024 G, 1024 B).
  CIFAR-100: ``cifar-100-binary/train.bin``, ``test.bin``, 3074-byte records
  (coarse label, fine label, pixels); the fine label is used.
  Source: https://www.cs.toronto.edu/~kriz/cifar.html (Krizhevsky, 2009).
- ``tfds``: TensorFlow Datasets ``cifar10`` / ``cifar100``, returned in the archive's order
  (TFDS's ``id`` feature), so both sources give identical arrays. TensorFlow is imported only
  inside :func:`load_tfds`, so ``import bnn_jax.data`` works on machines without it.

Damaged data (a truncated or corrupt archive, a member whose size is not a whole number of
records, a label out of range, a TFDS folder lacking a prepared split) raises a one-line
ValueError / FileNotFoundError naming the file and the fix, before any model is built.

The whole dataset fits in device memory (150 MB uint8), so the trainer keeps it there and
feeds only indices (:func:`train_batch_indices`, :func:`eval_batch_indices`); augmentation
(:func:`augment`) and normalisation (:func:`normalize`) are pure ``jnp`` functions that run
inside the jitted/pmapped step.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import posixpath
import tarfile
import zlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

DATASETS = ("cifar10", "cifar100")
SOURCES = ("auto", "local", "tfds")

# Per-channel mean/std of the training images in [0, 1] (RGB).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

IMAGE_SHAPE = (32, 32, 3)
_PIXELS = 32 * 32 * 3
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclasses.dataclass(frozen=True)
class _Spec:
  """Binary layout of one CIFAR variant."""
  dirname: str            # folder inside the archive
  train_files: tuple
  test_files: tuple
  label_bytes: int        # bytes before the pixels in a record
  label_index: int        # which of them is the label used
  num_classes: int
  archive: str            # official archive file name
  env_var: str
  mean: tuple
  std: tuple

  @property
  def record_bytes(self) -> int:
    return self.label_bytes + _PIXELS


_SPECS = {
    "cifar10": _Spec("cifar-10-batches-bin",
                     tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",),
                     label_bytes=1, label_index=0, num_classes=10,
                     archive="cifar-10-binary.tar.gz", env_var="BNN_JAX_CIFAR10",
                     mean=CIFAR10_MEAN, std=CIFAR10_STD),
    "cifar100": _Spec("cifar-100-binary", ("train.bin",), ("test.bin",),
                      label_bytes=2, label_index=1, num_classes=100,
                      archive="cifar-100-binary.tar.gz", env_var="BNN_JAX_CIFAR100",
                      mean=CIFAR100_MEAN, std=CIFAR100_STD),
}


def _spec(dataset: str) -> _Spec:
  if dataset not in _SPECS:
    raise ValueError(f"Unknown dataset {dataset!r}; valid names: {', '.join(DATASETS)} "
                     f"(--config.data.dataset).")
  return _SPECS[dataset]


def default_data_config() -> ml_collections.ConfigDict:
  """The ``config.data`` section with its defaults."""
  c = ml_collections.ConfigDict()
  c.dataset = "cifar10"        # "cifar10" | "cifar100"
  c.source = "auto"            # "auto": local if a path is given (field or env var), else tfds
  c.path = ""                  # CIFAR binary .tar.gz or dir; "" = $BNN_JAX_CIFAR10 / _CIFAR100
  c.tfds_data_dir = ""         # TFDS data_dir ("" = TFDS default, ~/tensorflow_datasets)
  c.manual_dir = ""            # TFDS manual_dir holding the official archive (offline preparation)
  c.download = False           # let TFDS download (needs internet)
  c.train_subset = 0           # first N training images, class-balanced (0 = all)
  c.test_subset = 0            # same for the test set
  c.augment = True             # pad-4 random crop + horizontal flip, on the device
  return c


class CifarData(NamedTuple):
  """Host arrays of one dataset; images uint8 [N, 32, 32, 3], labels int32 [N]."""
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  mean: tuple
  std: tuple


# ----------------------------------------------------------------------------
# Local binary archive
# ----------------------------------------------------------------------------

def _refetch(spec: _Spec) -> str:
  return f"download the official {spec.archive} again ({CIFAR_URL})"


def _decode_records(buf: bytes, spec: _Spec, name: str) -> tuple[np.ndarray, np.ndarray]:
  """Decodes CIFAR binary records into (uint8 NHWC images, int32 labels)."""
  rec = spec.record_bytes
  if len(buf) == 0 or len(buf) % rec:
    raise ValueError(
        f"{name}: {len(buf)} bytes is not a whole number of {rec}-byte records "
        f"({spec.dirname}: {spec.label_bytes} label byte(s) + {_PIXELS} pixels per image; "
        f"{len(buf) // rec} whole, {len(buf) % rec} bytes left over): the file is truncated "
        f"or damaged. Fix: {_refetch(spec)}.")
  arr = np.frombuffer(buf, np.uint8).reshape(-1, rec)
  labels = arr[:, spec.label_index].astype(np.int32)
  bad = np.flatnonzero(labels >= spec.num_classes)
  if bad.size:
    raise ValueError(
        f"{name}: record {bad[0]} has label {labels[bad[0]]}, outside 0..{spec.num_classes - 1} "
        f"({bad.size} record(s) out of range): the file is damaged or not {spec.dirname} "
        f"data. Fix: {_refetch(spec)}, or set --config.data.dataset to the dataset it holds.")
  images = arr[:, spec.label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def _read_members(path: str, spec: _Spec) -> dict[str, bytes]:
  """Raw bytes of the spec's .bin files from a .tar(.gz) archive or a batches directory."""
  wanted = set(spec.train_files + spec.test_files)
  found: dict[str, bytes] = {}
  if os.path.isdir(path):
    for name in sorted(wanted):
      f = os.path.join(path, name)
      if os.path.isfile(f):
        with open(f, "rb") as fh:
          found[name] = fh.read()
    where = f"directory {path}"
  else:
    try:
      with tarfile.open(path, "r:*") as tar:
        for member in tar:  # one sequential pass over the (gzip) stream
          parts = posixpath.normpath(member.name).split("/")
          if (member.isfile() and parts[-1] in wanted
              and (len(parts) == 1 or parts[-2] == spec.dirname)):
            found[parts[-1]] = tar.extractfile(member).read()
        # tarfile stops at the end-of-archive block; read the stream to its end so that gzip
        # checks its CRC and length (a corrupt or cut archive whose members all decoded).
        while tar.fileobj.read(1 << 20):
          pass
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
      reason = " ".join(str(e).split()) or type(e).__name__
      raise ValueError(
          f"Cannot read the CIFAR archive {path}: {reason} (truncated, corrupt or not a "
          f".tar.gz). Fix: {_refetch(spec)} and point --config.data.path at it (or at a "
          f"directory holding {spec.dirname}/).") from e
    where = f"archive {path}"
  missing = sorted(wanted - set(found))
  if missing:
    raise FileNotFoundError(
        f"The {where} lacks {', '.join(f'{spec.dirname}/{m}' for m in missing)}; expected "
        f"the official CIFAR binary layout ({spec.archive}: {spec.dirname}/ with "
        f"{', '.join(spec.train_files + spec.test_files)}).")
  return found


@functools.lru_cache(maxsize=2)
def _load_cifar_binary_cached(path: str, dataset: str, stamp: tuple):
  del stamp  # only part of the cache key: a rewritten file is read again
  spec = _spec(dataset)
  raw = _read_members(path, spec)
  out = {}
  for split, files in (("train", spec.train_files), ("test", spec.test_files)):
    parts = [_decode_records(raw[f], spec, posixpath.join(path, f) if os.path.isdir(path)
                             else f"{path}:{spec.dirname}/{f}") for f in files]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    images.setflags(write=False)  # shared by every caller of the cache
    labels.setflags(write=False)
    out[split] = (images, labels)
  return out


def load_cifar_binary(path: str, dataset: str = "cifar10") -> dict:
  """Reads the official CIFAR binary archive without TensorFlow.

  Args:
    path: ``cifar-10-binary.tar.gz`` / ``cifar-100-binary.tar.gz`` (read in memory, not
      extracted), a directory holding ``cifar-10-batches-bin/`` (``cifar-100-binary/``),
      or that folder itself.
    dataset: "cifar10" or "cifar100" (fine labels).

  Returns:
    ``{"train": (images, labels), "test": (images, labels)}``; images uint8
    ``[N, 32, 32, 3]`` (NHWC, RGB), labels int32 ``[N]``, in file order. The arrays are
    cached in-process (the last 2 sources, keyed on the resolved path and the files'
    mtime/size) and read-only.
  """
  spec = _spec(dataset)
  resolved = os.path.realpath(os.path.expanduser(os.fspath(path)))
  if not os.path.exists(resolved):
    raise FileNotFoundError(
        f"CIFAR data not found at {path!r}; expected the official {spec.archive} or a "
        f"directory holding {spec.dirname}/.")
  if os.path.isdir(resolved):
    if os.path.isdir(os.path.join(resolved, spec.dirname)):
      resolved = os.path.join(resolved, spec.dirname)
    files = [os.path.join(resolved, f) for f in spec.train_files + spec.test_files]
  else:
    files = [resolved]
  stamp = tuple((st.st_mtime_ns, st.st_size) for st in (os.stat(f) for f in files
                                                         if os.path.exists(f)))
  return dict(_load_cifar_binary_cached(resolved, dataset, stamp))


load_cifar_binary.cache_clear = _load_cifar_binary_cached.cache_clear


# ----------------------------------------------------------------------------
# TFDS
# ----------------------------------------------------------------------------

def _tfds_missing_message(dataset: str, where: str, manual_dir: str) -> str:
  spec = _spec(dataset)
  manual = (f" No {spec.archive} in manual_dir {manual_dir}." if manual_dir else "")
  return (
      f"TFDS {dataset} is not prepared in {where} and download=False.{manual} Either read "
      f"the CIFAR binary archive directly: --config.data.path=/path/to/{spec.archive} (or "
      f"set {spec.env_var}), or let TFDS download it when online: "
      f"--config.data.download=True (optionally --config.data.tfds_data_dir=DIR).")


def load_tfds(dataset: str, data_dir: str = "", manual_dir: str = "",
              download: bool = False) -> dict:
  """Loads CIFAR-10/100 with TensorFlow Datasets (imports TF lazily, here only).

  Prepares the dataset when it is missing and either ``download`` is set or ``manual_dir``
  holds the *official* archive (``cifar-10-binary.tar.gz``; TFDS checks its sha256, so a
  re-packed copy is refused: read that one with :func:`load_cifar_binary`). Otherwise
  raises FileNotFoundError at once, without touching the network. A prepared folder that
  lacks a split or one of its files is a FileNotFoundError naming it (checked before any
  reading), and an unreadable record file a ValueError naming the folder.

  Returns:
    Same as :func:`load_cifar_binary`, in the same (archive) order: TFDS stores the
    examples shuffled, and they are put back in order by their ``id`` (``train_00042`` is
    record 42 of the training files).
  """
  spec = _spec(dataset)
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"The TFDS source needs tensorflow and tensorflow-datasets (pip install "
        f"'bnn_jax[tfds]'); without them read the binary archive: "
        f"--config.data.path=/path/to/{spec.archive} (or set {spec.env_var}).") from e

  builder = tfds.builder(dataset, data_dir=data_dir or None)
  if not builder.is_prepared():
    archive = os.path.join(manual_dir, spec.archive) if manual_dir else ""
    if not (download or (archive and os.path.isfile(archive))):
      raise FileNotFoundError(_tfds_missing_message(dataset, builder.data_dir, manual_dir))
    config = tfds.download.DownloadConfig(manual_dir=manual_dir or None,
                                          try_download_gcs=bool(download))
    try:
      builder.download_and_prepare(download_config=config)
    except Exception as e:  # pylint: disable=broad-except
      if type(e).__name__ == "NonMatchingChecksumError":
        raise ValueError(
            f"TFDS refused {archive or 'the downloaded archive'}: its sha256 differs from the "
            f"official {spec.archive}. Read it directly instead: "
            f"--config.data.path={archive or '/path/to/' + spec.archive}.") from e
      raise

  where = str(builder.data_dir)
  fix = (f"Fix: delete {where} and prepare it again (--config.data.download=True, or "
         f"--config.data.manual_dir=DIR holding the official {spec.archive}), or read the "
         f"archive directly: --config.data.path=/path/to/{spec.archive}.")
  _check_tfds_splits(builder, dataset, where, fix)
  out = {}
  for split in ("train", "test"):
    try:
      ex = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    except Exception as e:  # pylint: disable=broad-except
      if type(e).__module__.startswith("tensorflow"):  # DataLossError, NotFoundError, ...
        reason = " ".join(str(e).split())[:300]
        raise ValueError(f"TFDS {dataset} in {where}: cannot read the {split!r} split "
                         f"({type(e).__name__}: {reason}). {fix}") from e
      raise
    images = np.asarray(ex["image"], np.uint8)
    labels = np.asarray(ex["label"], np.int32)
    if "id" in ex:  # "train_00042" -> 42: the archive's order
      order = np.argsort([int(i.rsplit(b"_", 1)[-1]) for i in ex["id"]], kind="stable")
      images, labels = images[order], labels[order]
    out[split] = (images, labels)
  return out


def _check_tfds_splits(builder, dataset: str, where: str, fix: str) -> None:
  """FileNotFoundError if the prepared ``builder`` lacks the train/test split or a file."""
  splits = builder.info.splits
  for split in ("train", "test"):
    if split not in splits:
      raise FileNotFoundError(
          f"TFDS {dataset} in {where} has no prepared {split!r} split (its dataset_info.json "
          f"lists {sorted(splits.keys())}). {fix}")
    files = list(splits[split].filepaths)
    missing = [f for f in files if not f.exists()]
    if missing:
      raise FileNotFoundError(
          f"TFDS {dataset} in {where}: the {split!r} split lacks {missing[0]} ({len(missing)} "
          f"of its {len(files)} file(s) missing). {fix}")


# ----------------------------------------------------------------------------
# Config -> arrays
# ----------------------------------------------------------------------------

def resolve_path(data_config) -> str:
  """``data.path``, else the dataset's environment variable, else ""."""
  return data_config.path or os.environ.get(_spec(data_config.dataset).env_var, "")


def balanced_subset(labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
  """Sorted indices of the first ``n`` examples, ``n // num_classes`` per class.

  The remainder goes to the lowest class ids; if a class runs short, the earliest
  unused examples fill up. Deterministic (no randomness).
  """
  total = len(labels)
  if n < 0 or n > total:
    raise ValueError(f"Subset size {n} must be between 0 (all) and the {total} images.")
  if n in (0, total):
    return np.arange(total)
  quota = np.full(num_classes, n // num_classes)
  quota[:n % num_classes] += 1
  onehot = labels[:, None] == np.arange(num_classes)[None, :]
  rank = (np.cumsum(onehot, axis=0) - 1)[np.arange(total), labels]  # position within class
  take = rank < quota[labels]
  short = n - int(take.sum())
  if short > 0:
    take[np.flatnonzero(~take)[:short]] = True
  return np.flatnonzero(take)


def load_dataset(data_config) -> CifarData:
  """Loads ``config.data`` (see :func:`default_data_config`) into host arrays."""
  spec = _spec(data_config.dataset)
  source = data_config.source
  if source not in SOURCES:
    raise ValueError(f"Unknown data source {source!r}; valid: {', '.join(SOURCES)} "
                     f"(--config.data.source).")
  path = resolve_path(data_config)
  if source == "auto":
    source = "local" if path else "tfds"
  if source == "local":
    if not path:
      raise FileNotFoundError(
          f"source='local' needs the CIFAR binary archive: --config.data.path=/path/to/"
          f"{spec.archive} (or set {spec.env_var}).")
    if not os.path.exists(os.path.expanduser(path)):
      origin = "--config.data.path" if data_config.path else f"${spec.env_var}"
      raise FileNotFoundError(
          f"CIFAR data not found at {path!r} (from {origin}). Point --config.data.path (or "
          f"{spec.env_var}) at the official {spec.archive} or a directory holding "
          f"{spec.dirname}/, or use TFDS: --config.data.source=tfds.")
    splits = load_cifar_binary(path, data_config.dataset)
  else:
    splits = load_tfds(data_config.dataset, data_config.tfds_data_dir,
                       data_config.manual_dir, data_config.download)

  def subset(split, n, field):
    images, labels = splits[split]
    if n < 0 or n > len(labels):
      raise ValueError(f"--config.data.{field}={n} must be between 0 (all) and the "
                       f"{len(labels)} {split} images.")
    if n:
      idx = balanced_subset(labels, n, spec.num_classes)
      images, labels = images[idx], labels[idx]
    return images, labels

  train_images, train_labels = subset("train", data_config.train_subset, "train_subset")
  test_images, test_labels = subset("test", data_config.test_subset, "test_subset")
  return CifarData(train_images, train_labels, test_images, test_labels,
                   spec.num_classes, tuple(spec.mean), tuple(spec.std))


# ----------------------------------------------------------------------------
# Device-side preprocessing (pure jnp; use inside jit/pmap)
# ----------------------------------------------------------------------------

def normalize(images, mean, std) -> jax.Array:
  """``(images / 255 - mean) / std`` as float32, channels last.

  Args:
    images: uint8 (or float in [0, 255]) ``[..., 3]``.
    mean, std: per-channel statistics in [0, 1] units, e.g. ``CIFAR10_MEAN``.
  """
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (jnp.asarray(images).astype(jnp.float32) / 255.0 - mean) / std


def augment(rng: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
  """Pad-``pad`` random crop + random horizontal flip, independently per image.

  Each image is zero-padded by ``pad`` pixels on every side (black, as torchvision's
  ``RandomCrop(32, padding=4)`` on uint8 images), cropped back to H x W at a uniform offset
  in ``{0..2*pad}^2`` and mirrored left-right with probability 1/2. Apply before
  :func:`normalize`.

  Args:
    rng: a PRNG key (split into one key per image; see :func:`augment_each`).
    images: ``[B, H, W, C]``, any dtype (kept).
  Returns:
    Array of the same shape and dtype.
  """
  if images.ndim != 4:
    raise ValueError(f"augment expects a batch [B, H, W, C], got shape {images.shape}.")
  return augment_each(jax.random.split(rng, images.shape[0]), images, pad)


def augment_each(keys: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
  """:func:`augment` with one PRNG key per image (``keys[i]`` augments ``images[i]``).

  The trainer derives ``keys[i]`` from (seed, step, dataset index of image i), so the
  augmentation does not depend on how a global batch is split over devices.
  """
  if images.ndim != 4 or keys.shape[:1] != images.shape[:1]:
    raise ValueError(f"augment_each expects images [B, H, W, C] and B keys, got shapes "
                     f"{images.shape} and {keys.shape}.")
  _, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

  def one(key, image):
    k_crop, k_flip = jax.random.split(key)
    dy, dx = jax.random.randint(k_crop, (2,), 0, 2 * pad + 1)
    crop = jax.lax.dynamic_slice(image, (dy, dx, 0), (h, w, c))
    return jnp.where(jax.random.bernoulli(k_flip), crop[:, ::-1], crop)

  return jax.vmap(one)(keys, padded)


# ----------------------------------------------------------------------------
# Index batching (host side; the data itself stays on the device)
# ----------------------------------------------------------------------------

def check_batch(global_batch: int, num_devices: int, process_index: int,
                 process_count: int) -> int:
  """Per-device batch size; ValueError naming the fix when the batch does not split evenly."""
  total = num_devices * process_count
  if num_devices <= 0 or not 0 <= process_index < process_count:
    raise ValueError(f"Need num_devices > 0 and 0 <= process_index < process_count, got "
                     f"{num_devices}, {process_index}, {process_count}.")
  if global_batch <= 0 or global_batch % total:
    where = (f"{total} devices" if process_count == 1 else
             f"{total} devices ({process_count} processes x {num_devices} local devices)")
    up = max(total, -(-max(global_batch, 1) // total) * total)
    raise ValueError(f"--config.batch_size={global_batch} is not divisible by {where}; use "
                     f"a multiple of {total} (e.g. {up}).")
  return global_batch // total


def steps_per_epoch(n: int, global_batch: int) -> int:
  """Full training steps per epoch (the remainder is dropped)."""
  return n // global_batch


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """Permutation of ``range(n)`` (int32), a pure function of ``(seed, epoch)``.

  NumPy's PCG64 seeded by ``SeedSequence([seed, epoch])``, so resuming at any epoch
  reproduces the data order of an uninterrupted run.
  """
  if seed < 0 or epoch < 0:
    raise ValueError(f"seed ({seed}) and epoch ({epoch}) must be non-negative.")
  return np.random.default_rng([int(seed), int(epoch)]).permutation(n).astype(np.int32)


def train_batch_indices(seed: int, epoch: int, n: int, global_batch: int, num_devices: int,
                        process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """This process's training indices for one epoch.

  Global batch ``s`` is ``epoch_permutation(seed, epoch, n)[s*B:(s+1)*B]``; process ``p``
  takes its contiguous ``B / process_count`` slice, split evenly over its devices.
  The last partial batch is dropped.

  Returns:
    int32 ``[steps, num_devices, global_batch // (num_devices * process_count)]``.
  """
  per_device = check_batch(global_batch, num_devices, process_index, process_count)
  steps = steps_per_epoch(n, global_batch)
  perm = epoch_permutation(seed, epoch, n)[:steps * global_batch].reshape(steps, global_batch)
  per_process = global_batch // process_count
  local = perm[:, process_index * per_process:(process_index + 1) * per_process]
  return local.reshape(steps, num_devices, per_device)


def eval_batch_indices(n: int, global_batch: int, num_devices: int, process_index: int = 0,
                       process_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Indices and mask that visit every example exactly once across all processes.

  ``ceil(n / B)`` global batches of ``0..n-1`` in order; the tail is padded with index 0
  (in bounds for the device gather) and ``mask=False``. Process slicing as in
  :func:`train_batch_indices`.

  Returns:
    (int32 indices, bool mask), both ``[steps, num_devices, per_device_batch]``.
  """
  per_device = check_batch(global_batch, num_devices, process_index, process_count)
  steps = -(-n // global_batch)
  flat = np.arange(steps * global_batch, dtype=np.int32)
  mask = flat < n
  flat = np.where(mask, flat, 0).astype(np.int32)
  per_process = global_batch // process_count
  sl = slice(process_index * per_process, (process_index + 1) * per_process)
  shape = (steps, num_devices, per_device)
  return (flat.reshape(steps, global_batch)[:, sl].reshape(shape),
          mask.reshape(steps, global_batch)[:, sl].reshape(shape))
