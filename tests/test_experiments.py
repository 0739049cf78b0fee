"""The ablation runner's arms are valid configs; the table builder computes what it says."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "experiments"))
import proxy  # noqa: E402
import tables  # noqa: E402

from bnn_jax import config as config_lib  # noqa: E402


@pytest.mark.parametrize("arm", sorted(proxy.ARMS))
def test_every_arm_is_a_valid_proxy_config(arm):
  model, options, overrides = proxy.ARMS[arm]
  c = proxy.proxy_config("cifar.tar.gz", model, options, 1, overrides, runs="/r")
  config_lib.validate(c)
  # Adam 2e-3 everywhere; the Bop arms train the binary kernels by Bop and the rest by it
  optimizer = "bop" if arm.startswith("bop_") else "adam"
  assert (c.model.width, c.batch_size, c.num_epochs, c.optim.name, c.optim.lr, c.seed) == (
      0.25, 128, 4, optimizer, 2e-3, 1)
  assert c.data.train_subset <= 0 and c.data.augment  # all 50,000 images, crop + flip
  if c.teacher.workdir:
    assert c.teacher.workdir.startswith("/r/")


def _write(results, name, accs, **last):
  os.makedirs(results / name)
  with open(results / name / "metrics.jsonl", "w") as f:
    for e, a in enumerate(accs):
      f.write(json.dumps({"epoch": e + 1, "test/accuracy": a,
                          **(last if e == len(accs) - 1 else {})}) + "\n")


def test_method2_table_means_ranges_and_gap(tmp_path):
  _write(tmp_path, "m2_fp_s0", [0.5, 0.80])
  _write(tmp_path, "m2_bnn_s0", [0.4, 0.70], **{"balance/overall/entropy": 0.9})
  _write(tmp_path, "m2_bnn_s1", [0.5, 0.74], **{"balance/overall/entropy": 0.8})
  text = tables.table("method2", str(tmp_path))
  bnn = next(line for line in text.splitlines() if line.startswith("| m2_bnn "))
  # mean per epoch (45, 72), final 72 (70-74), gap 80 - 72 = +8, entropy mean 0.85
  assert bnn == "| m2_bnn | 0, 1 | 45.00 / 72.00 | **72.00** (70.00-74.00) | +8.00 | 0.850 |"
  assert "| m2_all | (not run yet) |" in text


def test_parallel_jobs_put_teachers_first_and_name_them():
  assert proxy.teacher_runs("m3_r18_both") == ["m2_fp_s0"]
  assert proxy.teacher_runs("m3_vgg_both") == ["m3_teacher_vgg_fp_s0"]
  assert proxy.teacher_runs("m3_r18_ce") == []
  jobs = proxy.ordered_jobs(["m3_r18_both", "m3_vgg_both", "m2_fp", "m3_teacher_vgg_fp"], [0, 1])
  assert jobs[:2] == [("m2_fp", 0), ("m3_teacher_vgg_fp", 0)]  # the teachers, then given order
  assert jobs[2:] == [("m3_r18_both", 0), ("m3_vgg_both", 0), ("m3_r18_both", 1),
                      ("m3_vgg_both", 1), ("m2_fp", 1), ("m3_teacher_vgg_fp", 1)]


def test_parallel_run_without_its_teacher_says_which_arm_to_add(tmp_path):
  # Nothing is started: the student's teacher is neither finished in --runs nor among the jobs.
  with pytest.raises(SystemExit, match=r"m3_r18_both_s0 needs the finished run\(s\) "
                                       r"\['m2_fp_s0'\].*add their arms to --arms"):
    proxy.main(["--data", "cifar.tar.gz", "--arms", "m3_r18_both", "--seeds", "0", "--jobs", "2",
                "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")])
  assert not (tmp_path / "runs").exists()


def test_longer_protocol_trains_and_collects_apart():
  assert proxy.protocol_dir("runs/proxy", 4) == "runs/proxy"
  assert proxy.protocol_dir("runs/proxy", 16) == "runs/proxy_16ep"
  assert proxy.protocol_dir(proxy.RESULTS, 16).endswith(os.path.join("experiments",
                                                                      "results_16ep"))
  c = proxy.proxy_config("cifar.tar.gz", "reactnet18", {}, 0, {}, epochs=16)
  assert c.num_epochs == 16 and c.optim.schedule == "cosine"   # the cosine over all 16 epochs
  with pytest.raises(SystemExit):
    proxy.main(["--data", "x", "--arms", "m3_r18_ce", "--epochs", "0"])


def test_epoch_columns_and_gap_to_adam(tmp_path):
  """The 16-epoch table: top-1 after a given epoch, and the final gap to Adam's mean."""
  _write(tmp_path, "m3_r18_ce_s0", [0.1 * e for e in range(1, 17)][:16])
  accs = [0.1 * e + 0.02 for e in range(1, 17)]
  _write(tmp_path, "m1_cosmom_mu0_s0", accs)
  line = next(l for l in tables.table("epochs16", str(tmp_path)).splitlines()
              if l.startswith("| m1_cosmom_mu0 "))
  cells = [c.strip() for c in line.strip("|").split("|")]
  assert cells[3] == "**162.00**" and cells[4] == "+2.00"          # 16 x 10 + 2; vs Adam 160
  assert cells[5:] == [f"{accs[3]:.2%}", f"{accs[7]:.2%}", f"{accs[11]:.2%}"]
  # a run shorter than the column's epoch shows "-"
  _write(tmp_path, "m2_fp_s0", [0.5, 0.6])
  fp = next(l for l in tables.table("epochs16", str(tmp_path)).splitlines()
            if l.startswith("| m2_fp "))
  assert fp.rstrip(" |").endswith("| - | - | -")


def test_relative_step_uses_the_lr_multiplier_and_the_latent_scale(tmp_path):
  """steps: lr_mult x mean|w|_Adam / mean|w|_arm, gain over Adam's mean, ordered by step."""
  def run(name, acc, mean_abs, multiplier=None, flips=None):
    last = {"weights/overall/mean_abs": mean_abs}
    if flips is not None:
      last["weights/overall/flip_ratio"] = flips
    _write(tmp_path, name, [0.1, acc], **last)
    optim = {} if multiplier is None else {"binary_lr_multiplier": multiplier}
    with open(tmp_path / name / "config.json", "w") as f:
      json.dump({"optim": optim}, f)
  run("m3_r18_ce_s0", 0.60, 0.04, 1.0)
  run("m3_r18_ce_s1", 0.62, 0.02, 1.0)          # Adam: 61% and mean|w| 0.03 on average
  run("m1_adam_blr10_s0", 0.63, 0.15, 10.0)     # 10 x 0.03 / 0.15 = 2
  run("m1_latent_decay_s0", 0.65, 0.006, flips=0.05)  # no multiplier in an old config: 1 x 5
  run("m1_latent_decay_s1", 0.66, 0.006, flips=0.07)
  rows = tables.steps(str(tmp_path))
  assert [r["arm"] for r in rows] == ["m1_adam_blr10", "m1_latent_decay"]
  assert rows[0]["step"] == pytest.approx(2.0) and rows[0]["gain"] == pytest.approx(2.0)
  assert rows[1]["step"] == pytest.approx(5.0) and rows[1]["seeds"] == [0, 1]
  assert (rows[1]["gain"], rows[1]["low"], rows[1]["high"]) == pytest.approx((4.5, 4.0, 5.0))
  text = tables.steps_table(rows)
  assert "| m1_latent_decay | 0, 1 | 5.0 | 0.0600 | +4.50 (+4.00 to +5.00) |" in text
  assert "| m1_adam_blr10 | 0 | 2.0 | - | +2.00 |" in text  # no flip ratio logged
  with pytest.raises(SystemExit, match="reference arm 'm3_r18_ce'"):
    tables.steps(str(tmp_path / "empty"))


def test_bf16_gradients_pools_cosines_per_parameter_kind():
  import bf16_gradients   # noqa: E402 (experiments/ is on the path above)
  import numpy as np
  a = {"block1": {"threshold": {"bias": np.array([1.0, 0.0])}, "binary_kernel": np.ones(3)},
       "block2": {"threshold": {"bias": np.array([0.0, 2.0])}, "binary_kernel": np.ones(3)}}
  b = {"block1": {"threshold": {"bias": np.array([1.0, 0.0])}, "binary_kernel": -np.ones(3)},
       "block2": {"threshold": {"bias": np.array([2.0, 0.0])}, "binary_kernel": -np.ones(3)}}
  got = bf16_gradients.cosines(a, b)
  assert set(got) == {"threshold/bias", "binary_kernel"}
  # pooled over both blocks: a = (1, 0, 0, 2), b = (1, 0, 2, 0): cos = 1 / (sqrt 5 sqrt 5)
  assert got["threshold/bias"] == pytest.approx(0.2)
  assert got["binary_kernel"] == pytest.approx(-1.0)


def test_clip_arm_keeps_every_latent_binary_weight_in_its_box():
  """m1_clip0.014 is the tail projection at t = 0: |w| <= 0.014 on binary kernels only."""
  import jax
  import jax.numpy as jnp
  import optax
  from bnn_jax import optim

  model, options, overrides = proxy.ARMS["m1_clip0.014"]
  c = proxy.proxy_config("cifar.tar.gz", model, options, 0, overrides, runs="/r")
  tx, _ = optim.build_optimizer(c, steps_per_epoch=10)
  params = {"conv": {"binary_kernel": jnp.array([[0.05, -0.03], [0.001, 0.0]]),
                     "kernel": jnp.array([0.05, -0.03])}}
  state = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  new = optax.apply_updates(params, tx.update(zero, state, params)[0])
  # a zero gradient: only the clip acts, at 0.014 whatever the channel's mean|w|
  assert jnp.allclose(new["conv"]["binary_kernel"], jnp.array([[0.014, -0.014], [0.001, 0.0]]))
  assert jnp.array_equal(new["conv"]["kernel"], params["conv"]["kernel"])


QUEUE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                     "proxy_queue.sh")


def test_proxy_queue_runs_every_line_in_order_and_logs_each_exit_status(tmp_path):
  (tmp_path / "q.txt").write_text("4 no_such_arm 0\n\n4 no_such_arm 1\n")  # a blank line too
  done = subprocess.run(["bash", QUEUE, "q"], env=dict(os.environ, QUEUE_DIR=str(tmp_path)),
                        timeout=120)
  assert done.returncode == 0 and (tmp_path / "q.txt").read_text() == ""
  events = [line.split(" ", 1)[1] for line in (tmp_path / "q.log").read_text().splitlines()]
  assert events == ["start 4 no_such_arm 0", "end 4 no_such_arm 0 rc=2",  # argparse: bad arm
                    "start 4 no_such_arm 1", "end 4 no_such_arm 1 rc=2",
                    f"{tmp_path}/q.txt is empty"]
  assert "invalid choice: 'no_such_arm'" in (tmp_path / "no_such_arm_s1_4ep.log").read_text()


def test_sigterm_puts_the_running_job_back_at_the_front_of_the_queue(tmp_path):
  (tmp_path / "q.txt").write_text("4 m3_r18_ce 7\n4 m3_r18_ce 8\n")
  # The job's log is a FIFO with no reader, so its shell blocks opening it: the job is still
  # running, deterministically, when the queue gets SIGTERM.
  os.mkfifo(tmp_path / "m3_r18_ce_s7_4ep.log")
  queue = subprocess.Popen(["bash", QUEUE, "q"], env=dict(os.environ, QUEUE_DIR=str(tmp_path)))
  log = tmp_path / "q.log"
  deadline = time.time() + 60
  while not (log.exists() and "start 4 m3_r18_ce 7" in log.read_text()):
    assert time.time() < deadline and queue.poll() is None
    time.sleep(0.05)
  queue.send_signal(signal.SIGTERM)
  assert queue.wait(timeout=30) == 143
  assert (tmp_path / "q.txt").read_text() == "4 m3_r18_ce 7\n4 m3_r18_ce 8\n"
  assert log.read_text().splitlines()[-1].endswith(
      f"stopped 4 m3_r18_ce 7 (back at the front of {tmp_path}/q.txt)")


def test_collect_never_overwrites_a_different_result(tmp_path):
  run, results = tmp_path / "runs" / "m2_fp_s0", tmp_path / "results"
  run.mkdir(parents=True)
  (run / "config.json").write_text("{}")
  (run / "metrics.jsonl").write_text('{"epoch": 1, "test/accuracy": 0.5}\n')
  first = proxy.collect(str(run), "m2_fp_s0", str(results))
  assert first == str(results / "m2_fp_s0")
  assert proxy.collect(str(run), "m2_fp_s0", str(results)) == first   # the same run again
  (run / "metrics.jsonl").write_text('{"epoch": 1, "test/accuracy": 0.6}\n')
  rerun = proxy.collect(str(run), "m2_fp_s0", str(results))
  assert rerun.startswith(str(results / "m2_fp_s0.rerun-20"))
  assert "0.5" in (results / "m2_fp_s0" / "metrics.jsonl").read_text()
  assert "0.6" in open(os.path.join(rerun, "metrics.jsonl")).read()
