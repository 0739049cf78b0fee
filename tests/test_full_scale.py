"""The full-scale queue: its runs are valid configs in the issue's order, the plan's minutes come
from the rate table, a student's teacher trains in the same call, finished runs are skipped,
clear errors; and the whole machinery end to end on the CPU (--tiny) on the real CIFAR-10."""

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "experiments"))
import full_scale as fs  # noqa: E402

from bnn_jax import config as config_lib, deploy, zoo  # noqa: E402
from bnn_jax.config import set_key  # noqa: E402

REPO = fs.REPO
EPOCHS = {r.name: fs.num_epochs(r) for r in fs.QUEUE}


def _finish(folder, epochs: int, last: int = None) -> None:
  """A run folder whose metrics end at epoch ``last`` (default: ``epochs``, finished)."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
    for e in range(1, (epochs if last is None else last) + 1):
      f.write(json.dumps({"epoch": e, "test/accuracy": 0.5}) + "\n")
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump({"num_epochs": epochs}, f)


def _plan(seconds=float("inf"), queue=fs.QUEUE, done=(), in_runs=None, **kw):
  return fs.make_plan(queue, EPOCHS, set(done), in_runs or {}, seconds, fs.RATES, **kw)


def _cost(name: str, epochs: int = None) -> float:
  run = fs.RUNS[name]
  return fs.STARTUP_S + (EPOCHS[name] if epochs is None else epochs) * fs.RATES[run.rate] * 1.1


def test_queue_is_the_issues_order_of_valid_configs():
  assert [r.name for r in fs.QUEUE] == [
      "reactnet18", "reactnet18_m1", "reactnet18_decay", "resnet18_fp", "reactnet18_m3",
      "reactnet18_bnfree", "reactnet18_bnfree_m1", "resnet18_bnn", "resnet18_fda",
      "reactnet18_fda", "vgg_small_fp", "vgg_small_bnn", "vgg_small_m3", "reactnet18_s1",
      "reactnet18_m1_s1"]
  models = []
  for run in fs.QUEUE:
    c = fs.load_config(run.config)
    for key, value in fs.overrides(run, "c10.tar.gz", "/machine/runs").items():
      set_key(c, key, value)
    config_lib.validate(c)
    models.append(c.model.name)
    assert c.seed == run.seed and c.model.width == 1.0
    # a method-3 student reads its teacher from the queue's run directory, not the default
    assert c.teacher.workdir == (f"/machine/runs/{run.teacher}" if run.teacher else "")
    assert bool(run.teacher) == bool(c.distill.semantic_weight)
    assert fs.is_full_precision(run) == run.name.endswith("_fp")
  assert models[:5] == ["reactnet18", "reactnet18", "reactnet18", "resnet18_fp", "reactnet18"]
  assert models[5:13] == ["reactnet18_bnfree", "reactnet18_bnfree", "resnet18_bnn",
                          "resnet18_fda", "reactnet18_fda", "vgg_small_fp", "vgg_small_bnn",
                          "vgg_small_bnn"]
  assert (EPOCHS["reactnet18"], EPOCHS["resnet18_fp"], EPOCHS["vgg_small_bnn"]) == (256, 200, 300)


def test_plan_minutes_come_from_the_rates():
  plan = _plan()
  assert [it.run.name for it in plan.items] == [r.name for r in fs.QUEUE]
  first = plan.items[0]
  # 45 s startup + 256 epochs x 2.25 s x 1.1 margin = 678.6 s
  assert (first.start, first.end) == (0.0, pytest.approx(45 + 256 * 2.25 * 1.1))
  for a, b in zip(plan.items, plan.items[1:]):   # one after the other
    assert b.start == a.end and b.end - b.start == pytest.approx(_cost(b.run.name))
  fast = fs.make_plan(fs.QUEUE[:1], EPOCHS, set(), {}, float("inf"),
                      fs.parse_rates(["reactnet18=1.0"]))
  assert fast.items[0].end == pytest.approx(45 + 256 * 1.0 * 1.1)


def test_dry_run_prints_the_plan_in_order(tmp_path, capsys):
  args = ["--results", str(tmp_path / "results"), "--runs", str(tmp_path / "runs")]
  assert fs.main(["--dry-run", *args]) == 0
  out = capsys.readouterr().out
  rows = [line.split()[1] for line in out.splitlines()[2:2 + len(fs.QUEUE)]]
  assert rows == [r.name for r in fs.QUEUE]
  total = sum(_cost(r.name) for r in fs.QUEUE)
  assert f"Total: {len(fs.QUEUE)} job(s), {total / 60:.1f} minutes expected." in out
  assert fs.main(["--dry-run", "--seconds", "700", *args]) == 0
  out = capsys.readouterr().out
  assert " 1  reactnet18             run       256/256    2.25    11.3        0.0-11.3" in out
  assert "not this call: reactnet18_m1 (needs 11.3 min, 0.4 left)" in out
  assert not (tmp_path / "runs").exists()   # a dry run creates nothing


def test_a_student_trains_its_teacher_first_in_the_same_call(tmp_path):
  only = (fs.RUNS["reactnet18_m3"],)
  # its teacher's results are committed, but the checkpoint is not on this machine
  plan = _plan(queue=only, done={"resnet18_fp"})
  assert [(it.run.name, it.role) for it in plan.items] == [("resnet18_fp", "teacher"),
                                                            ("reactnet18_m3", "run")]
  assert plan.items[1].start == plan.items[0].end == pytest.approx(_cost("resnet18_fp"))
  # not committed either: trained as a run of its own (written to --out)
  assert [it.role for it in _plan(queue=only).items] == ["run", "run"]
  # finished in --runs (an earlier call on this warm machine): the student alone
  plan = _plan(queue=only, in_runs={"resnet18_fp": 200})
  assert [(it.run.name, it.start) for it in plan.items] == [("reactnet18_m3", 0.0)]
  # time for the student alone, not with its teacher: nothing starts
  plan = _plan(_cost("reactnet18_m3") + 1, queue=only, done={"resnet18_fp"})
  assert plan.items == []
  both, alone = _cost("resnet18_fp") + _cost("reactnet18_m3"), _cost("reactnet18_m3") + 1
  assert plan.skipped == [("reactnet18_m3", f"needs {both / 60:.1f} min with its teacher "
                                            f"resnet18_fp, {alone / 60:.1f} left")]
  # in two slots the student still waits for its teacher
  plan = _plan(queue=(fs.RUNS["vgg_small_m3"], fs.RUNS["vgg_small_bnn"]), jobs=2)
  spans = {it.run.name: (it.start, it.end) for it in plan.items}
  assert spans["vgg_small_fp"][0] == spans["vgg_small_bnn"][0] == 0.0
  assert spans["vgg_small_m3"][0] == spans["vgg_small_fp"][1]


def test_finished_runs_are_skipped_and_what_fits_runs(tmp_path, capsys):
  results, runs = tmp_path / "results", tmp_path / "runs"
  _finish(results / "reactnet18", 256)
  _finish(results / "reactnet18_m1", 256, last=100)   # stopped early: not finished
  _finish(runs / "reactnet18_m1", 256, last=200)      # 200 epochs done on this machine
  args = ["--dry-run", "--results", str(results), "--runs", str(runs)]
  assert fs.main([*args, "--seconds", "300"]) == 0
  out = capsys.readouterr().out
  assert "  done: reactnet18" in out
  left = _cost("reactnet18_m1", 56)   # the 56 epochs left, resumed from --runs
  assert f" 1  reactnet18_m1          run        56/256    2.25 {left / 60:>7.1f}" in out
  # it does not fit 60 s: not started (no run spans two calls), the next that fits does not
  # exist either; with --allow-split it starts and is cut at --seconds
  plan = _plan(60, done={"reactnet18"}, in_runs={"reactnet18_m1": 200})
  assert plan.items == [] and plan.skipped[0][0] == "reactnet18_m1"
  plan = _plan(540, done={"reactnet18"}, allow_split=True)
  assert [(it.run.name, it.cut, it.end) for it in plan.items] == [("reactnet18_m1", True, 540)]
  # a run that fits after runs that do not (VGG-Small FP, 3.5 min)
  plan = _plan(_cost("vgg_small_fp") + 1)
  assert [it.run.name for it in plan.items] == ["vgg_small_fp"]


def test_clear_errors(tmp_path, capsys):
  with pytest.raises(SystemExit, match="Unknown run.*nope; queue runs: reactnet18, "):
    fs.main(["--dry-run", "--only", "nope"])
  with pytest.raises(SystemExit, match="unknown rate 'r18'; rates: reactnet18, resnet18"):
    fs.main(["--dry-run", "--rate", "r18=2"])
  cases = [(["--seconds", "0"], "--seconds must be > 0, got 0"),
           (["--seconds", "-5", "--dry-run"], "--seconds must be > 0, got -5"),
           (["--data", "x"], "--seconds S is required"),
           (["--seconds", "60", "--out", str(tmp_path)], "--data PATH"),
           (["--seconds", "60", "--data", str(tmp_path / "c10.tar.gz"), "--out", str(tmp_path)],
            "c10.tar.gz: no such file")]
  for argv, message in cases:
    with pytest.raises(SystemExit):
      fs.main(argv)
    assert message in capsys.readouterr().err


def test_tiny_queue_end_to_end(tmp_path, cifar10_path, capsys):
  # VGG-Small method 3: its full-precision teacher trains first in the same call (no packed
  # export), then the student (packed); both are written to --out, 2 steps each.
  runs, out, results = tmp_path / "runs", tmp_path / "out", tmp_path / "results"
  common = ["--tiny", "--only", "vgg_small_m3", "--data", cifar10_path, "--runs", str(runs),
            "--results", str(results)]
  r = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "full_scale.py"),
                      *common, "--seconds", "3600", "--out", str(out)],
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  assert "vgg_small_fp: finished" in r.stdout and "vgg_small_m3: finished" in r.stdout
  assert sorted(os.listdir(out / "vgg_small_fp")) == ["config.json", "metrics.jsonl",
                                                      "train.log"]
  assert sorted(os.listdir(out / "vgg_small_m3")) == ["config.json", "metrics.jsonl",
                                                      "train.log", "vgg_small_m3.packed"]
  config = json.loads((out / "vgg_small_m3" / "config.json").read_text())
  assert config["teacher"]["workdir"] == str(runs / "vgg_small_fp")
  assert (config["num_epochs"], config["data"]["train_subset"], config["batch_size"]) == (1, 32,
                                                                                          16)
  model = deploy.load_packed(str(out / "vgg_small_m3" / "vgg_small_m3.packed"))
  assert (model.meta["model"], model.meta["width"]) == ("vgg_small_bnn", 0.125)
  log = zoo.log_records(str(out / "vgg_small_m3" / "train.log"))
  assert log["command"].startswith("python train.py --config configs/vgg_small_cifar10.py:method3")
  assert (log["exit"], log["epochs_done"], log["packed"]) == (0, 1, "vgg_small_m3.packed")
  assert "epoch 1:" in (out / "vgg_small_m3" / "train.log").read_text()
  # the next call on the same machine writes them again (no training) as one .tgz each
  # (its teacher, finished on this machine, is not needed again)
  capsys.readouterr()
  assert fs.main([*common, "--seconds", "3600", "--out", str(tmp_path / "out2"), "--tar"]) == 0
  plan = capsys.readouterr().out.splitlines()
  assert plan[2].split()[1:3] == ["vgg_small_m3", "write"] and plan[3].startswith("Total: 1 ")
  assert os.listdir(tmp_path / "out2") == ["vgg_small_m3.tgz"]
  # collected into --results (folders, then the .tgz), the queue sees both as done
  assert fs.collect(str(out), str(results)) == ["vgg_small_fp", "vgg_small_m3"]
  assert fs.collect(str(tmp_path / "out2"), str(results)) == ["vgg_small_m3"]
  assert sorted(os.listdir(results / "vgg_small_m3")) == sorted(os.listdir(out / "vgg_small_m3"))
  capsys.readouterr()
  assert fs.main(["--dry-run", "--tiny", "--only", "vgg_small_fp", "vgg_small_m3",
                  *common[3:]]) == 0
  text = capsys.readouterr().out
  assert "2 finished, 0 planned" in text
  assert "  done: vgg_small_fp\n  done: vgg_small_m3" in text


def test_what_still_runs_at_seconds_is_stopped(tmp_path, cifar10_path, capfd):
  # --allow-split starts a run expected to take 111 s in a 4 s call; at 4 s it gets SIGTERM
  # (with its train.py), nothing is written to --out and the call reports it
  out = tmp_path / "out"
  argv = ["--tiny", "--only", "vgg_small_bnn", "--data", cifar10_path, "--runs",
          str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--out", str(out),
          "--seconds", "4", "--allow-split", "--startup", "1", "--rate", "vgg_small=100"]
  assert fs.main(argv) == 1
  text = capfd.readouterr().out
  assert " 1  vgg_small_bnn          run (cut)" in text
  assert "vgg_small_bnn: stopped at --seconds after epoch 0 of 1" in text
  assert not out.exists() or not os.listdir(out)
  # without --allow-split it is not started at all
  assert fs.main(argv[:-5] + argv[-4:]) == 0
  assert "not this call: vgg_small_bnn (needs 1.9 min, 0.1 left)" in capfd.readouterr().out
