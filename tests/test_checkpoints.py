"""Checkpoints under faults: a process killed inside a save, damaged step folders.

The kill trials run a small child process (a Checkpointer over a 16 MB pytree of random
float32 arrays: no model, no training) that saves steps 1 and 2, then is SIGKILLed while
saving step 3, whose commit also deletes step 1 (keep=2 plus the best by a metric, the
trainer's two policies). After each kill a fresh Checkpointer, as the resumed trainer opens
it, must restore step 2 or, if step 3 committed, step 3, exactly, without a fallback, and
save again. Kill points: 3 fixed places inside orbax's save (hooks in the child) and 5
delays spread over the measured length of the save. About 20 s on 2 busy CPU cores.
"""

import glob
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from bnn_jax import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# orbax 0.12.8 writes step N into "N.orbax-checkpoint-tmp" (older versions added
# "-<timestamp>") and renames it to "N" once every file is written.
TMP_SUFFIX = ".orbax-checkpoint-tmp"

# The child: argv = directory, mode ("calibrate", "timed" or a hook point name).
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    import numpy as np
    from bnn_jax import checkpoints
    from orbax.checkpoint._src.path import async_path, atomicity

    directory, mode = sys.argv[1], sys.argv[2]

    def tree(step):
      r = np.random.default_rng(step)
      return {"step": np.asarray(step, np.int64),
              "params": {f"w{i}": r.standard_normal(1 << 19, np.float32) for i in range(8)}}

    def die():
      os.kill(os.getpid(), signal.SIGKILL)

    ck = checkpoints.Checkpointer(directory, keep=2, keep_best=1)
    for step in (1, 2):
      ck.save(step, tree(step), {"epoch": step}, {"test/accuracy": 0.1 * step})
    three = tree(3)
    if mode == "after_tmp_dir":        # the temporary folder exists, nothing written yet
      make = atomicity._create_tmp_directory
      async def make_then_die(*a, **k):
        path = await make(*a, **k)
        if os.path.basename(str(path)).startswith("3."):
          die()
        return path
      atomicity._create_tmp_directory = make_then_die
    elif mode in ("before_rename", "after_rename"):  # every file written / step 3 committed
      rename = async_path.rename
      async def rename_and_die(src, dst):
        if mode == "before_rename" and dst.name == "3":
          die()
        out = await rename(src, dst)
        if dst.name == "3":
          die()                         # before orbax deletes step 1
        return out
      async_path.rename = rename_and_die
    print("SAVING", flush=True)
    t0 = time.perf_counter()
    ck.save(3, three, {"epoch": 3}, {"test/accuracy": 0.3})
    print("SAVED", time.perf_counter() - t0, flush=True)
    ck.close()
""")


def _tree(step):
  r = np.random.default_rng(step)
  return {"step": np.asarray(step, np.int64),
          "params": {f"w{i}": r.standard_normal(1 << 19, np.float32) for i in range(8)}}


def _child(directory, mode):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, "-c", CHILD, str(directory), mode], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=60):
  """(return code, stderr tail) of the child; closes its pipes."""
  try:
    rc = proc.wait(timeout=timeout)
    return rc, proc.stderr.read()[-3000:]
  finally:
    proc.stdout.close()
    proc.stderr.close()


def _wait_for(proc, token, timeout=120):
  t_end = time.monotonic() + timeout
  while time.monotonic() < t_end:
    line = proc.stdout.readline()
    if not line:
      break
    if line.startswith(token):
      return line
  proc.kill()
  rc, err = _finish(proc)
  raise AssertionError(f"child never printed {token}: rc {rc}, stderr {err}")


@pytest.fixture(scope="module")
def save_seconds(tmp_path_factory):
  """Length of the step-3 save (steps 1 and 2 already saved in the same process)."""
  proc = _child(tmp_path_factory.mktemp("calibrate"), "calibrate")
  line = _wait_for(proc, "SAVED")
  rc, err = _finish(proc)
  assert rc == 0, err
  return float(line.split()[1])


def _check_resume(directory, caplog):
  """A fresh writable Checkpointer, as the resumed trainer opens it, after the kill."""
  left = sorted(os.listdir(directory))
  ck = checkpoints.Checkpointer(str(directory), keep=2, keep_best=1)
  try:
    steps = ck.all_steps()
    assert steps[-1] in (2, 3), (left, steps)
    with caplog.at_level(logging.WARNING):
      caplog.clear()
      state, meta = ck.restore_latest_good(_tree(0))
    assert not [r for r in caplog.records if "Falling back" in r.getMessage()], left
    step = int(state["step"])
    assert step == steps[-1] and meta == {"epoch": step}
    for a, b in zip(state["params"].values(), _tree(step)["params"].values()):
      np.testing.assert_array_equal(a, b)
    # The run goes on: it saves the next step(s), and no temporary folder is left.
    for nxt in range(step + 1, 5):
      ck.save(nxt, _tree(nxt), {"epoch": nxt}, {"test/accuracy": 0.1 * nxt})
    assert ck.latest_step() == 4
    assert not glob.glob(os.path.join(directory, f"*{TMP_SUFFIX}*"))
  finally:
    ck.close()
  return left, step


@pytest.mark.parametrize("point", ["after_tmp_dir", "before_rename", "after_rename"])
def test_kill_at_fixed_points_inside_a_save(point, tmp_path, caplog):
  proc = _child(tmp_path, point)
  _wait_for(proc, "SAVING")
  rc, err = _finish(proc)
  assert rc == -signal.SIGKILL, err
  left, step = _check_resume(tmp_path, caplog)
  print(f"kill at {point}: left {left}, restored step {step}")  # shown with -s
  if point == "after_rename":
    assert step == 3 and "1" in left  # committed; killed before deleting step 1
  else:
    assert step == 2 and [n for n in left if n.startswith("3" + TMP_SUFFIX)], left
    assert "3" not in left


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_kill_after_a_delay_inside_a_save(fraction, save_seconds, tmp_path, caplog):
  proc = _child(tmp_path, "timed")
  _wait_for(proc, "SAVING")
  time.sleep(fraction * save_seconds)
  proc.send_signal(signal.SIGKILL)
  rc, _ = _finish(proc)
  left, step = _check_resume(tmp_path, caplog)
  print(f"kill {fraction} x {save_seconds:.3f} s into the save: rc {rc}, left {left}, "
        f"restored step {step}")  # shown with -s
  # rc 0: the save finished first (a slow kill on a busy machine); then step 3 is there.
  assert rc in (-signal.SIGKILL, 0) and (step == 3 if rc == 0 else step in (2, 3)), (rc, left)


# ---------------------------------------------------------------------------- damaged steps

def _small(step):
  return {"step": np.asarray(step, np.int64),
          "params": {"w": np.full((64, 64), float(step), np.float32)}}


def _save_steps(directory, steps):
  ck = checkpoints.Checkpointer(str(directory))
  for s in steps:
    ck.save(s, _small(s), {"epoch": s}, {"test/accuracy": 0.1 * s})
  ck.close()


def _truncate_largest(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state"))
           for f in fs]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)


def test_damaged_newest_falls_back_to_the_previous_step(tmp_path, caplog):
  _save_steps(tmp_path, (1, 2))
  _truncate_largest(tmp_path / "2")
  ck = checkpoints.Checkpointer(str(tmp_path))
  with caplog.at_level(logging.WARNING):
    state, meta = ck.restore_latest_good(_small(0))
  assert int(state["step"]) == 1 and meta == {"epoch": 1}
  np.testing.assert_array_equal(state["params"]["w"], _small(1)["params"]["w"])
  [warning] = [r.getMessage() for r in caplog.records if "Falling back" in r.getMessage()]
  assert "step 2 in" in warning and "Falling back to step 1," in warning
  assert str(tmp_path / "2.damaged") in warning
  # The damaged folder is set aside, so the resumed run can save step 2 again.
  assert ck.all_steps() == [1] and (tmp_path / "2.damaged" / "state").is_dir()
  ck.save(2, _small(2), {"epoch": 2}, {"test/accuracy": 0.2})
  assert ck.all_steps() == [1, 2]
  ck.close()


def test_read_only_falls_back_without_moving_anything(tmp_path, caplog):
  _save_steps(tmp_path, (1, 2, 3))
  _truncate_largest(tmp_path / "3")
  ck = checkpoints.Checkpointer(str(tmp_path), read_only=True)
  with caplog.at_level(logging.WARNING):
    state, _ = ck.restore_latest_good()  # no target: nested dicts of numpy arrays
  assert int(state["step"]) == 2 and ck.all_steps() == [1, 2, 3]
  assert any("step 3 in" in r.getMessage() and "Falling back to step 2," in r.getMessage()
             for r in caplog.records)
  assert sorted(os.listdir(tmp_path)) == ["1", "2", "3"]
  ck.close()


def test_no_readable_step_is_a_clear_error(tmp_path):
  _save_steps(tmp_path, (1,))
  _truncate_largest(tmp_path / "1")
  ck = checkpoints.Checkpointer(str(tmp_path))
  with pytest.raises(checkpoints.CheckpointError,  # the only one: restore()'s error
                     match=r"(?s)step 1 .* damaged.*rm -r .*no other checkpoint"):
    ck.restore_latest_good(_small(0))
  ck.save(2, _small(2), {"epoch": 2}, {"test/accuracy": 0.2})
  _truncate_largest(tmp_path / "2")
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"(?s)None of the 2 checkpoints .*steps \[2, 1\].*rm -r .*/2 .*/1`"):
    ck.restore_latest_good(_small(0))
  assert ck.all_steps() == [1, 2]  # nothing set aside when nothing could be restored
  ck.close()
  with pytest.raises(checkpoints.CheckpointError, match="No checkpoint in"):
    checkpoints.Checkpointer(str(tmp_path / "empty")).restore_latest_good()


def test_temporary_folders_are_not_steps(tmp_path):
  _save_steps(tmp_path, (1,))
  partials = [tmp_path / f"2{TMP_SUFFIX}", tmp_path / f"7{TMP_SUFFIX}-1700000000000000"]
  for partial in partials:   # saves killed mid-write (this orbax's name, an older one's)
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "junk").write_bytes(b"\0" * 100)
  ro = checkpoints.Checkpointer(str(tmp_path), read_only=True)
  assert ro.all_steps() == [1] and ro.latest_step() == 1
  ro.close()
  assert all(p.is_dir() for p in partials)   # read-only: left alone
  assert checkpoints.load_run(str(tmp_path)).steps == [1]
  ck = checkpoints.Checkpointer(str(tmp_path))   # writable: removes them
  assert ck.all_steps() == [1]
  ck.save(2, _small(2), {"epoch": 2}, {"test/accuracy": 0.2})
  assert ck.all_steps() == [1, 2] and not any(p.exists() for p in partials)
  ck.close()
