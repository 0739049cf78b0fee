"""The model zoo: an entry built from a real tiny run, loading behind the sha256 check, the
card's figures recomputed, clear errors, the CLI; and every shipped model's card against the
real test set."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bnn_jax import data, deploy, zoo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ZOO = os.path.join(REPO, "zoo")
NAME = "tiny_r18"


@pytest.fixture(scope="module")
def entry(tiny_run, cifar10_path, tmp_path_factory):
  """(zoo folder, card) of the session's tiny ReActNet-18 run, exported into a fresh zoo."""
  directory = str(tmp_path_factory.mktemp("zoo"))
  card = zoo.add(tiny_run, NAME, data=cifar10_path, directory=directory,
                 command="tests/conftest.py: tiny_run", device="CPU (test)")
  return directory, card


@pytest.fixture(scope="module")
def test_set(cifar10_path):
  return data.load_cifar_binary(cifar10_path)["test"]


def _copy_entry(directory: str, to) -> str:
  for f in (f"{NAME}.json", f"{NAME}.packed"):
    shutil.copy(os.path.join(directory, f), to / f)
  return str(to)


def test_add_writes_the_packed_file_and_its_card(entry, tiny_run):
  directory, card = entry
  assert zoo.list(directory) == [NAME]
  assert zoo.card(NAME, directory) == card
  path = os.path.join(directory, f"{NAME}.packed")
  with open(path, "rb") as f:
    assert card["sha256"] == hashlib.sha256(f.read()).hexdigest()
  assert card["file_bytes"] == os.path.getsize(path)
  assert card["packed"] == "exported from the latest checkpoint"
  with open(os.path.join(tiny_run, "config.json")) as f:
    config = json.load(f)
  assert (card["model"], card["width"], card["num_classes"], card["epochs"]) == (
      "reactnet18", 0.125, 10, 2)
  assert card["options"] == config["model"]["options"]
  with open(os.path.join(tiny_run, "metrics.jsonl")) as f:
    acc = [json.loads(line)["test/accuracy"] for line in f]
  best = int(np.argmax(acc))
  assert card["float_test_top1_pct"] == {
      "final": round(100 * acc[-1], 2), "final_epoch": 2, "best": round(100 * acc[best], 2),
      "best_epoch": best + 1, "test_images": 256}
  assert (card["training_command"], card["device"]) == ("tests/conftest.py: tiny_run",
                                                        "CPU (test)")
  assert card["packed_test_images"] == 10_000


def test_card_counts_are_reproduced_from_the_file(entry, test_set):
  directory, card = entry
  images, labels = test_set
  model = deploy.load_packed(os.path.join(directory, f"{NAME}.packed"))
  right = model.classes(images[:1000]) == labels[:1000]
  assert card["packed_correct_first_1000"] == int(right.sum())
  # the whole test set (scored by add) holds the first 1,000
  assert card["packed_correct_first_1000"] <= card["packed_test_correct"] <= (
      card["packed_correct_first_1000"] + 9000)
  assert card["packed_test_top1_pct"] == round(card["packed_test_correct"] / 100, 2)


def test_load_is_load_packed_of_the_same_file(entry, test_set):
  directory, _ = entry
  model = zoo.load(NAME, directory)
  reference = deploy.load_packed(os.path.join(directory, f"{NAME}.packed"))
  assert isinstance(model, deploy.PackedModel)
  images = test_set[0][:64]
  np.testing.assert_array_equal(model(images), reference(images))
  assert model.meta == reference.meta


def test_a_flipped_byte_is_an_error_naming_the_file(entry, tmp_path):
  directory = _copy_entry(entry[0], tmp_path)
  path = os.path.join(directory, f"{NAME}.packed")
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x01]))
  with pytest.raises(zoo.ZooError, match=rf"{NAME}\.packed: the file is damaged or replaced: "
                                         rf"its sha256 is [0-9a-f]{{64}}, the card .* restore"):
    zoo.load(NAME, directory)


def test_a_missing_file_is_an_error_naming_it(entry, tmp_path):
  directory = _copy_entry(entry[0], tmp_path)
  os.remove(os.path.join(directory, f"{NAME}.packed"))
  with pytest.raises(zoo.ZooError, match=rf"{NAME}\.packed: the packed file of zoo model "
                                         rf"'{NAME}' is missing; restore it"):
    zoo.load(NAME, directory)


def test_an_unknown_name_lists_the_valid_ones(entry, tmp_path):
  with pytest.raises(zoo.ZooError, match=rf"Unknown zoo model 'nope'; shipped models: {NAME}\."):
    zoo.load("nope", entry[0])
  with pytest.raises(zoo.ZooError, match="no model is shipped in .* yet"):
    zoo.card("nope", str(tmp_path))
  assert zoo.list(str(tmp_path / "absent")) == []


def test_add_refuses_an_unfinished_run_and_an_existing_entry(entry, tiny_run, tmp_path,
                                                            cifar10_path):
  with pytest.raises(zoo.ZooError, match=f"{NAME}.json exists; pass --force"):
    zoo.add(tiny_run, NAME, data=cifar10_path, directory=entry[0])
  run = tmp_path / "run"
  run.mkdir()
  shutil.copy(os.path.join(tiny_run, "metrics.jsonl"), run / "metrics.jsonl")
  with open(os.path.join(tiny_run, "config.json")) as f:
    config = json.load(f)
  config["num_epochs"] = 3
  (run / "config.json").write_text(json.dumps(config))
  with pytest.raises(zoo.ZooError, match="has not finished its 3 epochs .*ends at epoch 2"):
    zoo.add(str(run), data=cifar10_path, directory=str(tmp_path / "zoo"))
  assert not (tmp_path / "zoo").exists()


def test_cli_eval_compares_with_the_card(entry, tmp_path, cifar10_path, capsys):
  directory, card = entry
  out = subprocess.run([sys.executable, "-m", "bnn_jax.zoo", "--dir", directory, "eval", NAME,
                        "--data", cifar10_path, "--limit", "1000"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  first = card["packed_correct_first_1000"]
  assert (f"{NAME}: top-1 {first / 10:.2f}% ({first} / 1000 correct) on the test set, packed "
          f"model on the CPU; the card says {first}: matches") in out.stdout
  # a card whose figure is off by one: exit status 1, "DIFFERS"
  other = _copy_entry(directory, tmp_path)
  path = os.path.join(other, f"{NAME}.json")
  with open(path) as f:
    wrong = json.load(f)
  wrong["packed_correct_first_1000"] += 1
  with open(path, "w") as f:
    json.dump(wrong, f)
  assert zoo.main(["--dir", other, "eval", NAME, "--data", cifar10_path, "--limit", "1000"]) == 1
  assert f"the card says {first + 1}: DIFFERS" in capsys.readouterr().out
  assert zoo.main(["--dir", other, "list"]) == 0
  assert capsys.readouterr().out == f"{NAME}\n"
  assert zoo.main(["--dir", other, "eval", "nope"]) == 2
  assert "Unknown zoo model 'nope'" in capsys.readouterr().err


def test_list_card_and_load_import_no_flax(entry):
  code = ("import sys; from bnn_jax import zoo; zoo.list(sys.argv[1]); "
          f"zoo.card({NAME!r}, sys.argv[1]); zoo.load({NAME!r}, sys.argv[1]); "
          "print(sorted(k for k in sys.modules if k.split('.')[0] in "
          "('flax', 'optax', 'orbax', 'tensorflow', 'ml_collections')))")
  out = subprocess.run([sys.executable, "-c", code, entry[0]], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "[]"


def test_the_default_folder_is_the_env_var_else_the_repository_zoo(monkeypatch, tmp_path):
  monkeypatch.setenv(zoo.ENV_VAR, str(tmp_path))
  assert zoo.default_directory() == str(tmp_path)
  monkeypatch.delenv(zoo.ENV_VAR)
  assert zoo.default_directory() == REPO_ZOO


def test_the_repository_zoo_is_complete():
  # every card has its packed file and every packed file its card; the README says how to add
  files = set(os.listdir(REPO_ZOO))
  assert "README.md" in files
  cards = {f[:-5] for f in files if f.endswith(".json")}
  packed = {f[:-7] for f in files if f.endswith(".packed")}
  assert cards == packed == set(zoo.list(REPO_ZOO))
  assert files == {"README.md"} | {f"{n}.json" for n in cards} | {f"{n}.packed" for n in cards}


# tests/data/zoo: a model trained on the CPU proxy (ReActNet-18 width 0.25, 4 epochs on all
# 50,000 images: experiments/results/m1_cosmom_mu0_s0), built with `python -m bnn_jax.zoo --dir
# tests/data/zoo add runs/proxy/m1_cosmom_mu0_s0 ...`: the machinery on a real trained network
# until full-scale models ship in zoo/
TEST_ZOO = os.path.join(REPO, "tests", "data", "zoo")
SHIPPED = [(REPO_ZOO, n) for n in zoo.list(REPO_ZOO)] + [(TEST_ZOO, n) for n in zoo.list(TEST_ZOO)]


@pytest.mark.parametrize("directory,name", SHIPPED, ids=[n for _, n in SHIPPED])
def test_shipped_model_reproduces_its_card(directory, name, test_set):
  # the packed model's correct count on the first 1,000 test images, exactly as its card says
  card = zoo.card(name, directory)
  model = zoo.load(name, directory)   # checks the sha256 first
  images, labels = test_set
  assert zoo.correct_count(model, images, labels, 1000) == card["packed_correct_first_1000"]
  # and the packed file scores what the float model did, within a near tie per 1,000 images
  float_pct = card["float_test_top1_pct"]["final"]
  assert abs(card["packed_test_top1_pct"] - float_pct) <= 0.1, card
