"""Data: the real CIFAR-10 binary archive, device-side augmentation, index batching, damaged
inputs, and the TFDS source end to end (prepared offline from real CIFAR-10 records)."""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_jax import data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = "cifar-10-batches-bin"


def _config(**kw):
  c = data.default_data_config()
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def _run_python(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def raw_members(cifar10_path):
  """Raw bytes of every .bin member and batches.meta.txt, read by hand with tarfile (one
  pass over the archive)."""
  out = {}
  with tarfile.open(cifar10_path, "r:gz") as tar:
    for m in tar:
      if m.isfile() and m.name.endswith((".bin", "/batches.meta.txt")):
        out[os.path.basename(m.name)] = tar.extractfile(m).read()
  return out


def _small_archive(path, raw_members, records=40, edit=None):
  """A cifar-10-binary.tar.gz of the first ``records`` real records of every member, plus
  batches.meta.txt; ``edit(name, bytes) -> bytes`` may damage a member."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tarfile.open(path, "w:gz", compresslevel=1) as tar:
    members = {n: b[:records * 3073] if n.endswith(".bin") else b
               for n, b in sorted(raw_members.items())}
    for name, buf in members.items():
      buf = edit(name, buf) if edit else buf
      info = tarfile.TarInfo(f"{BIN}/{name}")
      info.size = len(buf)
      tar.addfile(info, io.BytesIO(buf))
  return str(path)


@pytest.fixture(scope="module")
def cifar10(cifar10_path):
  return data.load_cifar_binary(cifar10_path)


# ---------------------------------------------------------------------------- local archive

def test_shapes_dtypes_counts(cifar10):
  (xtr, ytr), (xte, yte) = cifar10["train"], cifar10["test"]
  assert xtr.shape == (50_000, 32, 32, 3) and xte.shape == (10_000, 32, 32, 3)
  assert xtr.dtype == xte.dtype == np.uint8
  assert ytr.shape == (50_000,) and yte.shape == (10_000,)
  assert ytr.dtype == yte.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(ytr, minlength=10), [5000] * 10)
  np.testing.assert_array_equal(np.bincount(yte, minlength=10), [1000] * 10)


def test_train_mean_std_match_published(cifar10):
  x = cifar10["train"][0]
  values = np.arange(256) / 255.0
  mean, std = [], []
  for c in range(3):  # exact moments from the per-channel histogram (no 1 GB float copy)
    hist = np.bincount(x[..., c].ravel(), minlength=256) / x[..., c].size
    m = hist @ values
    mean.append(m)
    std.append(np.sqrt(hist @ (values - m) ** 2))
  np.testing.assert_allclose(mean, data.CIFAR10_MEAN, atol=5e-4)
  np.testing.assert_allclose(std, data.CIFAR10_STD, atol=5e-4)


def test_known_pixels_match_raw_record_bytes(cifar10, raw_members):
  # Record 1234 of data_batch_3.bin is train image 2 * 10000 + 1234; test record 77.
  for split, member, rec, idx in (("train", "data_batch_3.bin", 1234, 21_234),
                                  ("test", "test_batch.bin", 77, 77)):
    b = np.frombuffer(raw_members[member], np.uint8)[rec * 3073:(rec + 1) * 3073]
    red, green, blue = (b[1 + 1024 * c:1 + 1024 * (c + 1)].reshape(32, 32) for c in range(3))
    image, label = cifar10[split][0][idx], cifar10[split][1][idx]
    assert label == b[0]
    np.testing.assert_array_equal(image[..., 0], red)
    np.testing.assert_array_equal(image[..., 1], green)
    np.testing.assert_array_equal(image[..., 2], blue)
    assert image[5, 7, 2] == b[1 + 2 * 1024 + 5 * 32 + 7]  # channel-major, row-major


def test_directory_equals_archive(cifar10, raw_members, tmp_path):
  os.mkdir(tmp_path / BIN)
  for name, buf in raw_members.items():
    (tmp_path / BIN / name).write_bytes(buf)
  for path in (tmp_path, tmp_path / BIN):  # parent directory or the batches folder itself
    d = data.load_cifar_binary(str(path))
    for split in ("train", "test"):
      np.testing.assert_array_equal(d[split][0], cifar10[split][0])
      np.testing.assert_array_equal(d[split][1], cifar10[split][1])


def test_cache_returns_read_only_arrays(cifar10_path):
  t0 = time.time()
  first = data.load_cifar_binary(cifar10_path)
  again = data.load_cifar_binary(cifar10_path)
  assert again["train"][0] is first["train"][0]
  with pytest.raises(ValueError):
    again["train"][0][0, 0, 0, 0] = 1
  assert time.time() - t0 < 20  # about 2.5 s uncached on a 2-core CPU, 0 cached


def _fake_dir(root, spec_dir, files, record_bytes, n=3, seed=0):
  rng = np.random.default_rng(seed)
  os.makedirs(root / spec_dir)
  for name in files:
    recs = rng.integers(0, 256, (n, record_bytes), dtype=np.uint8)
    recs[:, :record_bytes - 3072] = rng.integers(0, 10, (n, record_bytes - 3072))
    (root / spec_dir / name).write_bytes(recs.tobytes())
  return root


def test_truncated_file_is_a_clear_error(tmp_path):
  files = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
  root = _fake_dir(tmp_path, BIN, files, 3073)
  f = root / BIN / "data_batch_4.bin"
  f.write_bytes(f.read_bytes()[:-10])
  with pytest.raises(ValueError, match=r"data_batch_4\.bin: 9209 bytes is not a whole number "
                                       r"of 3073-byte records"):
    data.load_cifar_binary(str(root))


def test_truncated_archive_is_a_clear_error(cifar10_path, tmp_path):
  broken = tmp_path / "cifar-10-binary.tar.gz"
  with open(cifar10_path, "rb") as f:
    broken.write_bytes(f.read(1_000_000))
  with pytest.raises(ValueError, match="Cannot read the CIFAR archive .*cifar-10-binary.tar.gz"):
    data.load_cifar_binary(str(broken))


def _one_line_error(exc_info):
  msg = str(exc_info.value)
  assert "\n" not in msg, msg
  return msg


def test_damaged_real_archives_are_one_line_errors_naming_file_and_fix(raw_members, tmp_path):
  """Re-packed from real records: a member cut mid-record, a label byte set to 200, the
  .tar.gz cut at several points or with a flipped byte."""
  def cut(name, buf):
    return buf[:-1000] if name == "data_batch_1.bin" else buf

  def relabel(name, buf):
    if name != "data_batch_3.bin":
      return buf
    b = bytearray(buf)
    b[7 * 3073] = 200  # record 7's label byte
    return bytes(b)

  path = _small_archive(tmp_path / "cut" / "cifar-10-binary.tar.gz", raw_members, edit=cut)
  with pytest.raises(ValueError) as e:
    data.load_cifar_binary(path)
  assert _one_line_error(e).startswith(
      f"{path}:{BIN}/data_batch_1.bin: 121920 bytes is not a whole number of 3073-byte records")
  assert "39 whole, 2073 bytes left over" in str(e.value)
  assert "Fix: download the official cifar-10-binary.tar.gz again" in str(e.value)

  path = _small_archive(tmp_path / "label" / "cifar-10-binary.tar.gz", raw_members,
                        edit=relabel)
  with pytest.raises(ValueError) as e:
    data.load_cifar_binary(path)
  assert _one_line_error(e).startswith(
      f"{path}:{BIN}/data_batch_3.bin: record 7 has label 200, outside 0..9")
  assert "Fix: download the official" in str(e.value)
  assert "--config.data.dataset" in str(e.value)

  whole = (tmp_path / "ok.tar.gz")
  _small_archive(whole, raw_members)
  blob = whole.read_bytes()
  # The gzip header, inside a member, just before the end, without the gzip trailer.
  for i, keep in enumerate((5, len(blob) // 3, len(blob) - 200, len(blob) - 4)):
    broken = tmp_path / f"cut{i}" / "cifar-10-binary.tar.gz"
    broken.parent.mkdir()
    broken.write_bytes(blob[:keep])
    with pytest.raises(ValueError) as e:
      data.load_cifar_binary(str(broken))
    msg = _one_line_error(e)
    assert msg.startswith(f"Cannot read the CIFAR archive {broken}: "), msg
    assert "Fix: download the official cifar-10-binary.tar.gz again" in msg
  flipped = bytearray(blob)
  flipped[len(blob) // 2] ^= 0xFF   # corrupt compressed data (zlib error or CRC mismatch)
  (tmp_path / "flip.tar.gz").write_bytes(bytes(flipped))
  with pytest.raises(ValueError, match=r"Cannot read the CIFAR archive .*flip\.tar\.gz: .*Fix"):
    data.load_cifar_binary(str(tmp_path / "flip.tar.gz"))


def test_damaged_data_fails_before_any_compile(raw_members, tmp_path, monkeypatch):
  from bnn_jax import train_lib
  from bnn_jax.config import base_config

  def no_model(*args, **kwargs):
    raise AssertionError("the model was built before the data error")

  monkeypatch.setattr(train_lib, "build_model", no_model)
  compiles = []
  listener = lambda name, *a, **k: compiles.append(name) if "compile" in name else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    c = base_config()
    c.data.path = _small_archive(tmp_path / "cifar-10-binary.tar.gz", raw_members,
                                 edit=lambda n, b: b[:-1] if n == "test_batch.bin" else b)
    c.progress_bar = False
    with pytest.raises(ValueError, match=r"test_batch\.bin: 122919 bytes is not a whole"):
      train_lib.train_and_evaluate(c, str(tmp_path / "run"))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert not compiles, compiles


def test_missing_members_are_named(tmp_path):
  root = _fake_dir(tmp_path, BIN, ["data_batch_1.bin", "test_batch.bin"], 3073)
  with pytest.raises(FileNotFoundError, match=r"lacks cifar-10-batches-bin/data_batch_2\.bin.*"
                                              r"data_batch_5\.bin"):
    data.load_cifar_binary(str(root))


def test_cifar100_uses_fine_labels(tmp_path):
  root = _fake_dir(tmp_path, "cifar-100-binary", ["train.bin", "test.bin"], 3074, n=4)
  raw = np.frombuffer((root / "cifar-100-binary" / "train.bin").read_bytes(), np.uint8)
  raw = raw.reshape(4, 3074)
  d = data.load_cifar_binary(str(root), "cifar100")
  np.testing.assert_array_equal(d["train"][1], raw[:, 1])  # byte 0 coarse, byte 1 fine
  np.testing.assert_array_equal(d["train"][0][2, ..., 1], raw[2, 2 + 1024:2 + 2048].reshape(32, 32))


# ---------------------------------------------------------------------------- load_dataset

def test_load_dataset_missing_path_names_the_fix():
  with pytest.raises(FileNotFoundError, match=r"/no/such/cifar\.tar\.gz.*--config\.data\.path"):
    data.load_dataset(_config(path="/no/such/cifar.tar.gz"))


def test_load_dataset_unknown_names():
  with pytest.raises(ValueError, match="cifar10, cifar100"):
    data.load_dataset(_config(dataset="mnist"))
  with pytest.raises(ValueError, match="auto, local, tfds"):
    data.load_dataset(_config(source="gcs"))


def test_load_dataset_env_var_subsets(cifar10_path, cifar10, monkeypatch):
  monkeypatch.setenv("BNN_JAX_CIFAR10", cifar10_path)
  ds = data.load_dataset(_config(train_subset=1005, test_subset=500))  # auto -> local via env
  assert ds.num_classes == 10 and ds.mean == data.CIFAR10_MEAN and ds.std == data.CIFAR10_STD
  assert ds.train_images.shape == (1005, 32, 32, 3) and ds.test_images.shape == (500, 32, 32, 3)
  # 1005 = 10 * 100 + 5: classes 0-4 get 101, the rest 100; the test set 50 each.
  np.testing.assert_array_equal(np.bincount(ds.train_labels), [101] * 5 + [100] * 5)
  np.testing.assert_array_equal(np.bincount(ds.test_labels), [50] * 10)
  # The first examples of each class, in file order.
  ytr = cifar10["train"][1]
  idx = data.balanced_subset(ytr, 1005, 10)
  np.testing.assert_array_equal(ds.train_images, cifar10["train"][0][idx])
  for c in range(10):
    assert set(idx[ytr[idx] == c]) == set(np.flatnonzero(ytr == c)[:101 if c < 5 else 100])
  with pytest.raises(ValueError, match="train_subset=60000"):
    data.load_dataset(_config(path=cifar10_path, train_subset=60_000))


def test_balanced_subset_fills_short_classes():
  labels = np.array([0, 0, 0, 0, 1, 0, 0], np.int32)
  np.testing.assert_array_equal(data.balanced_subset(labels, 4, 2), [0, 1, 2, 4])


# ---------------------------------------------------------------------------- augmentation

def _candidates(image, pad=4):
  p = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  return {(dy, dx): p[dy:dy + 32, dx:dx + 32] for dy in range(2 * pad + 1)
          for dx in range(2 * pad + 1)}


def _match(out, image):
  """(dy, dx, flipped) of every crop/flip that equals ``out``."""
  hits = []
  for (dy, dx), crop in _candidates(image).items():
    if np.array_equal(out, crop):
      hits.append((dy, dx, False))
    if np.array_equal(out, np.flip(crop, axis=1)):
      hits.append((dy, dx, True))
  return hits


def test_augment_crops_within_pad4_and_flips():
  images = np.random.default_rng(0).integers(1, 256, (48, 32, 32, 3), dtype=np.uint8)
  out = np.asarray(jax.jit(data.augment)(jax.random.key(1), jnp.asarray(images)))
  assert out.shape == images.shape and out.dtype == np.uint8
  seen = set()
  for o, x in zip(out, images):
    hits = _match(o, x)
    assert len(hits) == 1, hits  # exactly one of the 81 shifts x {flip, no flip}
    seen.add(hits[0])
  assert {flip for _, _, flip in seen} == {True, False}
  assert len(seen) > 20  # different images get different crops


def test_augment_flip_equals_np_flip_and_is_per_image():
  image = np.random.default_rng(1).integers(1, 256, (32, 32, 3), dtype=np.uint8)
  batch = jnp.asarray(np.repeat(image[None], 64, axis=0))
  out = np.asarray(data.augment(jax.random.key(2), batch, pad=0))  # pad 0: flip only
  flipped = [np.array_equal(o, np.flip(image, axis=1)) for o in out]
  kept = [np.array_equal(o, image) for o in out]
  assert all(f != k for f, k in zip(flipped, kept))
  assert 10 < sum(flipped) < 54  # identical inputs, independent coin per image
  crops = np.asarray(data.augment(jax.random.key(3), batch))
  assert len({tuple(_match(o, image)[0]) for o in crops}) > 20


def test_augment_is_deterministic_in_rng():
  images = jnp.asarray(np.random.default_rng(2).integers(0, 256, (8, 32, 32, 3), np.uint8))
  a = data.augment(jax.random.key(5), images)
  np.testing.assert_array_equal(a, data.augment(jax.random.key(5), images))
  assert not np.array_equal(a, data.augment(jax.random.key(6), images))
  f = data.augment(jax.random.key(5), images.astype(jnp.float32))  # float input, same crops
  np.testing.assert_array_equal(f, a.astype(np.float32))


def test_normalize():
  x = jnp.asarray(np.array([[[0, 128, 255]]], np.uint8))
  y = np.asarray(jax.jit(data.normalize, static_argnums=(1, 2))(
      x, data.CIFAR10_MEAN, data.CIFAR10_STD))
  assert y.dtype == np.float32
  expected = ((np.array([0, 128, 255]) / 255.0 - np.array(data.CIFAR10_MEAN))
              / np.array(data.CIFAR10_STD))
  np.testing.assert_allclose(y[0, 0], expected, rtol=1e-5)


# ---------------------------------------------------------------------------- batching

def test_epoch_permutation_deterministic_and_epoch_dependent():
  p = data.epoch_permutation(0, 3, 1000)
  assert p.dtype == np.int32
  np.testing.assert_array_equal(np.sort(p), np.arange(1000))
  np.testing.assert_array_equal(p, data.epoch_permutation(0, 3, 1000))
  assert not np.array_equal(p, data.epoch_permutation(0, 4, 1000))
  assert not np.array_equal(p, data.epoch_permutation(1, 3, 1000))


def test_train_batch_indices_disjoint_and_drop_remainder():
  idx = data.train_batch_indices(seed=0, epoch=1, n=1000, global_batch=96, num_devices=4)
  assert idx.shape == (10, 4, 24) and idx.dtype == np.int32
  assert data.steps_per_epoch(1000, 96) == 10
  flat = idx.ravel()
  assert len(np.unique(flat)) == 960 and flat.min() >= 0 and flat.max() < 1000
  np.testing.assert_array_equal(flat, data.epoch_permutation(0, 1, 1000)[:960])


def test_process_sharding_partitions_each_global_batch():
  single = data.train_batch_indices(7, 2, 1000, 96, num_devices=6)
  parts = [data.train_batch_indices(7, 2, 1000, 96, 2, process_index=p, process_count=3)
           for p in range(3)]
  assert all(p.shape == (10, 2, 16) for p in parts)
  for s in range(10):  # the 3 processes' slices, in order, are exactly the global batch
    joined = np.concatenate([p[s].ravel() for p in parts])
    np.testing.assert_array_equal(joined, single[s].ravel())


@pytest.mark.parametrize("n,batch,devices,procs", [(1000, 96, 4, 1), (1001, 64, 2, 2),
                                                   (10, 32, 8, 1), (0, 8, 2, 1)])
def test_eval_indices_cover_everything_once(n, batch, devices, procs):
  seen = []
  for p in range(procs):
    idx, mask = data.eval_batch_indices(n, batch, devices, p, procs)
    assert idx.shape == mask.shape and idx.shape[1:] == (devices, batch // (devices * procs))
    assert mask.dtype == bool and idx.dtype == np.int32
    assert idx.shape[0] == -(-n // batch)
    assert idx.min(initial=0) >= 0 and idx.max(initial=0) < max(n, 1)  # padding is in bounds
    seen.append(idx[mask])
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(n))


def test_indivisible_batch_names_the_fix():
  with pytest.raises(ValueError, match=r"--config\.batch_size=256 is not divisible by 3 "
                                       r"devices; use a multiple of 3 \(e\.g\. 258\)"):
    data.train_batch_indices(0, 0, 1000, 256, num_devices=3)
  with pytest.raises(ValueError, match=r"6 devices \(2 processes x 3 local devices\)"):
    data.eval_batch_indices(1000, 256, 3, 0, 2)


# ---------------------------------------------------------------------------- imports and TFDS

def test_import_does_not_import_tensorflow():
  r = _run_python("""
      import sys
      import bnn_jax.data
      bad = [m for m in ("tensorflow", "tensorflow_datasets") if m in sys.modules]
      assert not bad, bad
      print("ok")
  """)
  assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


def test_tfds_missing_data_fails_fast_with_fixes(cifar10_path, tmp_path):
  pytest.importorskip("tensorflow_datasets")
  # In a fresh process, so the 30 s budget includes importing TFDS; the real cifar10 builder.
  # 1. Nothing prepared, download=False: FileNotFoundError naming data_dir and both fixes.
  # 2. manual_dir holding this re-packed archive: TFDS's checksum check refuses it.
  manual = tmp_path / "manual"
  manual.mkdir()
  os.symlink(cifar10_path, manual / "cifar-10-binary.tar.gz")
  t0 = time.time()
  r = _run_python(f"""
      from bnn_jax import data
      cfg = data.default_data_config()
      cfg.source, cfg.tfds_data_dir = "tfds", {str(tmp_path / 'tfds')!r}
      try:
        data.load_dataset(cfg)
      except FileNotFoundError as e:
        print("MISSING:", e)
      try:
        data.load_tfds("cifar10", {str(tmp_path / 'tfds2')!r},
                       manual_dir={str(manual)!r})
      except ValueError as e:
        print("CHECKSUM:", e)
  """, timeout=60)
  elapsed = time.time() - t0
  assert r.returncode == 0, r.stderr[-3000:]
  missing = [l for l in r.stdout.splitlines() if l.startswith("MISSING:")]
  assert missing, r.stdout + r.stderr[-3000:]
  msg = missing[0]
  assert str(tmp_path / "tfds" / "cifar10") in msg
  assert "--config.data.path=/path/to/cifar-10-binary.tar.gz" in msg and "BNN_JAX_CIFAR10" in msg
  assert "--config.data.download=True" in msg
  checksum = [l for l in r.stdout.splitlines() if l.startswith("CHECKSUM:")]
  assert checksum and "sha256 differs" in checksum[0], r.stdout + r.stderr[-3000:]
  assert f"--config.data.path={manual / 'cifar-10-binary.tar.gz'}" in checksum[0]
  assert elapsed < 30, f"TFDS error path took {elapsed:.1f} s"


@pytest.fixture(scope="module")
def tfds_prepared(raw_members, tmp_path_factory):
  """The project's TFDS path, end to end and offline: ``data.load_dataset(source="tfds")``
  prepares TFDS's real ``cifar10`` builder from a manual_dir archive of real CIFAR-10
  records (the first 40 of each member: 200 train, 40 test images), then loads it.

  TFDS accepts a manual_dir archive only with the registered sha256 of the official one;
  here (only while preparing) the builder's registered checksum is that of the small archive,
  the one thing this fixture changes. TensorFlow is imported here, once per module.
  """
  tfds = pytest.importorskip("tensorflow_datasets")
  from tensorflow_datasets.core.download import checksums
  from etils import epath

  root = tmp_path_factory.mktemp("tfds_src")
  (root / "manual").mkdir()
  archive = _small_archive(root / "manual" / "cifar-10-binary.tar.gz", raw_members)
  cls = tfds.builder_cls("cifar10")
  url = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
  assert url in cls.url_infos  # the official archive's entry, replaced below
  cfg = data.default_data_config()
  cfg.source, cfg.tfds_data_dir, cfg.manual_dir = "tfds", str(root / "tfds"), str(root / "manual")
  t0 = time.time()
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(cls, "url_infos", {url: checksums.compute_url_info(epath.Path(archive))})
    prepared = data.load_dataset(cfg)
  seconds = time.time() - t0
  return {"tfds": tfds, "config": cfg, "archive": archive, "prepared": prepared,
          "data_dir": root / "tfds", "seconds": seconds,
          "class_names": raw_members["batches.meta.txt"].decode().split()}


def _fields(ds):
  return dict(ds._asdict())


def test_tfds_source_equals_the_local_source(tfds_prepared):
  tfds, cfg = tfds_prepared["tfds"], tfds_prepared["config"]
  local_cfg = _config(source="local", path=tfds_prepared["archive"])
  local = data.load_dataset(local_cfg)
  assert local.train_images.shape == (200, 32, 32, 3) and local.test_images.shape == (40, 32, 32, 3)
  # Prepared in the fixture, then loaded again from the prepared folder (no preparation).
  for ds in (tfds_prepared["prepared"], data.load_dataset(cfg)):
    got, want = _fields(ds), _fields(local)
    assert got.keys() == want.keys()
    for k in ("num_classes", "mean", "std"):
      assert got[k] == want[k], k
    for k in ("train_images", "train_labels", "test_images", "test_labels"):
      assert got[k].dtype == want[k].dtype, k
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)  # same order: by TFDS id
  # Subsets and normalization follow, identical.
  a = data.load_dataset(_config(source="tfds", tfds_data_dir=cfg.tfds_data_dir,
                                train_subset=50, test_subset=20))
  b = data.load_dataset(_config(source="local", path=tfds_prepared["archive"],
                                train_subset=50, test_subset=20))
  np.testing.assert_array_equal(a.train_images, b.train_images)
  np.testing.assert_array_equal(a.test_labels, b.test_labels)
  np.testing.assert_array_equal(data.normalize(a.train_images[:8], a.mean, a.std),
                                data.normalize(b.train_images[:8], b.mean, b.std))
  # TFDS's own dataset info agrees: split sizes, classes, the archive's class names.
  info = tfds.builder("cifar10", data_dir=cfg.tfds_data_dir).info
  assert {k: v.num_examples for k, v in info.splits.items()} == {"train": 200, "test": 40}
  assert info.features["label"].num_classes == local.num_classes == 10
  names = tfds_prepared["class_names"]
  assert info.features["label"].names == names and len(names) == 10
  assert tfds_prepared["seconds"] < 60, tfds_prepared["seconds"]


def test_tfds_folder_without_a_prepared_split_is_a_clear_error(tfds_prepared, tmp_path):
  version = os.path.join("cifar10", "3.0.2")

  def damaged(name, edit):
    root = tmp_path / name
    shutil.copytree(tfds_prepared["data_dir"] / "cifar10", root / "cifar10")
    edit(root / version)
    return str(root), str(root / version)

  def drop_test_files(v):
    for f in v.glob("cifar10-test.tfrecord-*"):
      f.unlink()

  def drop_test_split(v):
    info = json.loads((v / "dataset_info.json").read_text())
    info["splits"] = [sp for sp in info["splits"] if sp["name"] != "test"]
    (v / "dataset_info.json").write_text(json.dumps(info))

  def truncate_train(v):
    [f] = v.glob("cifar10-train.tfrecord-*")
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])

  fix = r"Fix: delete {} and prepare it again .*--config\.data\.path=/path/to/cifar-10-binary"
  data_dir, where = damaged("files", drop_test_files)
  with pytest.raises(FileNotFoundError,
                     match=rf"in {where}: the 'test' split lacks {where}/cifar10-test\.tfrecord-"
                           rf"00000-of-00001 .*" + fix.format(where)) as e:
    data.load_dataset(_config(source="tfds", tfds_data_dir=data_dir))
  _one_line_error(e)
  data_dir, where = damaged("info", drop_test_split)
  with pytest.raises(FileNotFoundError, match=rf"in {where} has no prepared 'test' split "
                                              rf"\(its dataset_info\.json lists \['train'\]\)") as e:
    data.load_tfds("cifar10", data_dir)
  _one_line_error(e)
  data_dir, where = damaged("truncated", truncate_train)
  with pytest.raises(ValueError, match=rf"in {where}: cannot read the 'train' split "
                                       rf"\(DataLossError: .*" + fix.format(where)) as e:
    data.load_tfds("cifar10", data_dir)
  _one_line_error(e)


def test_augment_each_is_independent_of_how_the_batch_is_split():
  """Per-image keys: augmenting two halves (two devices) equals augmenting the whole batch."""
  images = jnp.asarray(np.random.default_rng(3).integers(0, 256, (16, 32, 32, 3), np.uint8))
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(7), jnp.arange(16))
  whole = data.augment_each(keys, images)
  halves = jnp.concatenate([data.augment_each(keys[:8], images[:8]),
                            data.augment_each(keys[8:], images[8:])])
  np.testing.assert_array_equal(whole, halves)
  assert not np.array_equal(np.asarray(whole), np.asarray(images))  # it did augment
  with pytest.raises(ValueError, match="B keys"):
    data.augment_each(keys[:3], images)
