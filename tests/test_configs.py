"""Every config file loads, validates, and encodes the recipe its docstring states."""

import functools
import importlib.util
import os
import sys

import pytest

from bnn_jax import config as config_lib
from bnn_jax import optim

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
sys.path.insert(0, os.path.join(os.path.dirname(CONFIG_DIR), "experiments"))
import proxy  # noqa: E402  experiments/proxy.py: the ablation's arms, which the recipes follow
CONFIG_FILES = sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and f != "__init__.py")
REACTNET_OPTIONS = ("", "step1", "step2", "bnfree", "wreg", "cosmom", "method1", "cifar100",
                    "bnfree,method1", "bnfree,method1,cifar100", "method1,cifar100",
                    "method1,wreg", "latent_decay", "bnfree,latent_decay")


def load(name, options=None):
  """As ml_collections.config_flags does: import the file by path, call get_config(options)."""
  spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(CONFIG_DIR, name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if options is None else module.get_config(options)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_validates_and_is_locked(name):
  c = load(name)
  config_lib.validate(c)
  with pytest.raises(AttributeError):
    c.optim.learning_rate = 1.0  # locked: a typo cannot add a field
  tx, schedule = optim.build_optimizer(c, steps_per_epoch=10)
  assert float(schedule(0)) == pytest.approx(c.optim.lr)  # no warmup in any shipped recipe


@pytest.mark.parametrize("options", REACTNET_OPTIONS)
def test_reactnet18_options(options):
  c = load("reactnet18_cifar10.py", options)
  config_lib.validate(c)
  opts = set(options.split(","))
  assert c.model.name == ("reactnet18_bnfree" if "bnfree" in opts else "reactnet18")
  assert c.model.options.binarize_weights == ("step1" not in opts)
  assert c.optim.w_reg.enabled == bool(opts & {"wreg", "latent_decay"})
  assert c.optim.w_reg.target == (0.0 if "latent_decay" in opts else
                                  "mean_abs" if "wreg" in opts else 1.0)
  assert c.optim.cosine_momentum.enabled == bool(opts & {"cosmom", "method1"})
  assert c.optim.agc_clip == (0.02 if "bnfree" in opts else 0.0)
  assert c.data.dataset == ("cifar100" if "cifar100" in opts else "cifar10")


def test_method1_turns_on_the_best_proxy_settings():
  """:method1 = the cosine momentum without velocity as in the proxy arm m1_cosmom_mu0, :cosmom
  the thesis' form as in m1_cosmom (docs/RESULTS.md, "Mechanisms"), :wreg the W-regularizer
  as in m1_wreg_0.3_late, the late start scaled from 2 + 1 of 4 epochs."""
  for options, arm_name in (("cosmom", "m1_cosmom"), ("method1", "m1_cosmom_mu0"),
                            ("latent_decay", "m1_latent_decay")):
    c = load("reactnet18_cifar10.py", options)
    for key, value in proxy.ARMS[arm_name][2].items():
      assert functools.reduce(lambda node, k: node[k], key.split("."), c) == value, (options, key)
  assert load("reactnet18_cifar10.py", "method1").optim.cosine_momentum.decay == 0.0
  assert load("reactnet18_cifar10.py", "cosmom").optim.cosine_momentum.decay == 0.9
  c = load("reactnet18_cifar10.py", "method1,wreg")
  arm = {**proxy.ARMS["m1_cosmom_mu0"][2], **proxy.ARMS["m1_wreg_0.3_late"][2]}
  for key, value in arm.items():
    section, term, field = key.split(".")
    if field not in ("start_epochs", "ramp_epochs"):
      assert c[section][term][field] == value, key
  # the late start, 2 + 1 of the proxy's 4 epochs, as fractions of whatever num_epochs is
  arm_late = (arm["optim.w_reg.start_epochs"], arm["optim.w_reg.ramp_epochs"])
  assert optim.schedule_epochs(c.optim.w_reg, c.num_epochs) == tuple(
      e / 4 * c.num_epochs for e in arm_late)
  with c.unlocked():
    c.num_epochs = 40                                 # as --config.num_epochs=40
  assert optim.schedule_epochs(c.optim.w_reg, c.num_epochs) == (20.0, 10.0)
  optim.build_optimizer(c, steps_per_epoch=10)  # builds with both on
  with pytest.raises(ValueError, match="pick one"):
    load("reactnet18_cifar10.py", "wreg,latent_decay")
  assert not load("reactnet18_cifar10.py", "method1").optim.w_reg.enabled


def test_reactnet18_full_scale_recipe():
  """The issue's recipe: Adam, lr 1e-3..2.5e-3 at batch 256, decay to 0, 256 epochs, no decay on latent weights."""
  c = load("reactnet18_cifar10.py")
  assert (c.optim.name, c.batch_size, c.num_epochs) == ("adam", 256, 256)
  assert 1e-3 <= c.optim.lr <= 2.5e-3 and c.optim.schedule in ("cosine", "linear")
  assert c.optim.binary_weight_decay == 0.0 and c.data.augment
  _, schedule = optim.build_optimizer(c, steps_per_epoch=195)
  assert float(schedule(256 * 195)) == pytest.approx(0.0, abs=1e-9)


def test_cifar100_wrappers_match_the_cifar10_files():
  for c10, c100 in (("reactnet18_cifar10.py", "reactnet18_cifar100.py"),
                    ("resnet18_fp_cifar10.py", "resnet18_fp_cifar100.py"),
                    ("vgg_small_cifar10.py", "vgg_small_cifar100.py"),
                    ("resnet18_cifar10.py", "resnet18_cifar100.py")):
    a, b = load(c10, "cifar100"), load(c100)
    assert b.data.dataset == "cifar100"
    assert a.to_dict() == b.to_dict(), (c10, c100)


@pytest.mark.parametrize("name,bad", [("reactnet18_cifar10.py", "methd1"),
                                      ("vgg_small_cifar10.py", "bn"),
                                      ("resnet18_fp_cifar10.py", "cifar1000")])
def test_unknown_option_is_named(name, bad):
  with pytest.raises(ValueError, match=bad):
    load(name, bad)


def test_fp_teacher_recipe():
  c = load("resnet18_fp_cifar10.py")
  assert (c.model.name, c.optim.name, c.optim.lr, c.optim.weight_decay) == ("resnet18_fp", "sgd", 0.1, 5e-4)
  v = load("vgg_small_cifar10.py", "fp")
  assert v.model.name == "vgg_small_fp" and v.optim.name == "sgd"


@pytest.mark.parametrize("options,model,components", [
    ("", "resnet18_bnn", None),
    ("fda", "resnet18_fda", (False, True, True, True)),
    ("fda,mv,zp,ge,refine", "resnet18_fda", (True, True, True, True)),
    ("fda,mv", "resnet18_fda", (True, False, False, False)),
    ("fda,mv,zp", "resnet18_fda", (True, True, False, False)),
    ("fda,ge", "resnet18_fda", (False, False, True, False)),
    ("fda,cifar100", "resnet18_fda", (False, True, True, True))])
def test_resnet18_method2_options(options, model, components):
  c = load("resnet18_cifar10.py", options)
  config_lib.validate(c)
  assert c.model.name == model
  if components:
    o = c.model.options
    assert (o.mean_variance, o.zero_point, o.excitation, o.refinement) == components
  assert c.data.dataset == ("cifar100" if "cifar100" in options else "cifar10")
  assert load("resnet18_cifar10.py", "fp").model.name == "resnet18_fp"
  with pytest.raises(ValueError, match="need the fda option"):
    load("resnet18_cifar10.py", "mv")


def test_method2_and_method3_options_of_reactnet_and_vgg():
  r = load("reactnet18_cifar10.py", "fda")
  assert r.model.name == "reactnet18_fda" and r.model.options.excitation
  v = load("vgg_small_cifar10.py", "fda")
  assert v.model.name == "vgg_small_fda"
  for name, teacher in (("reactnet18_cifar10.py", "runs/r18_fp"), ("vgg_small_cifar10.py", "runs/vgg_fp")):
    c = load(name, "method3")
    config_lib.validate(c)
    assert c.teacher.workdir == teacher and c.distill.semantic_weight > 0
    assert load(name, "method3,cifar100").teacher.workdir == teacher + "_c100"
  # The distillation terms are the measured proxy arms': ReActNet-18 both terms (m3_r18_both),
  # VGG-Small the KL alone (m3_vgg_kl; its detail term cost 4.3 points there).
  for name, arm in (("reactnet18_cifar10.py", "m3_r18_both"), ("vgg_small_cifar10.py", "m3_vgg_kl")):
    model, options, overrides = proxy.ARMS[arm]
    want = proxy.proxy_config("x", model, options, 0, overrides).distill
    got = load(name, "method3").distill
    for field in ("semantic_weight", "kd_weight", "cosine_weight", "temperature",
                  "detail_weight", "detail_kind", "detail_taps"):
      assert got[field] == want[field], (name, field)
  assert load("vgg_small_cifar10.py", "method3").distill.detail_weight == 0.0


def test_distillation_weights_without_a_teacher_are_an_error():
  c = load("quick_cpu.py")
  with c.unlocked():
    c.distill.semantic_weight = 1.0
  with pytest.raises(ValueError, match="need a teacher"):
    config_lib.validate(c)


def test_model_options_are_validated_against_the_model():
  c = load("quick_cpu.py")
  with c.unlocked():
    c.model.name = "resnet18_fp"  # quick_cpu's options (binarize_weights) do not fit it
  with pytest.raises(ValueError, match=r"config.model.options: Unknown option\(s\) "
                                       r"'binarize_weights' for model 'resnet18_fp'"):
    config_lib.validate(c)


@pytest.mark.parametrize("lr", [float("nan"), -1e-3, float("inf")])
def test_non_finite_or_negative_learning_rate_is_refused(lr):
  c = load("quick_cpu.py")
  c.optim.lr = lr
  with pytest.raises(ValueError, match=r"optim.lr=.* must be a finite number >= 0"):
    config_lib.validate(c)


@pytest.mark.parametrize("width", [0.0, 0.005, -1.0, float("nan")])
def test_width_that_empties_a_stage_is_refused(width):
  c = load("quick_cpu.py")
  c.model.width = width
  with pytest.raises(ValueError, match=r"model.width=.*use a width of at least 1/128"):
    config_lib.validate(c)


def test_readme_accelerator_installs_name_the_pinned_jax():
  """The README's GPU/TPU install lines cannot drift from requirements.txt's jax pin."""
  import re
  repo = os.path.dirname(CONFIG_DIR)
  pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", open(os.path.join(repo, "requirements.txt")).read(),
                         re.M))
  readme = open(os.path.join(repo, "README.md")).read()
  extras = re.findall(r'pip install "jax\[(cuda12|tpu)\]==([0-9.]+)"', readme)
  assert {e for e, _ in extras} == {"cuda12", "tpu"}
  assert all(v == pins["jax"] == pins["jaxlib"] for _, v in extras), (extras, pins["jax"])


def test_bad_teacher_checkpoint_is_named():
  c = load("quick_cpu.py")
  c.teacher.checkpoint = "newest"
  with pytest.raises(ValueError, match=r"teacher.checkpoint='newest': use best or latest"):
    config_lib.validate(c)


def test_load_file_and_set_key():
  """config.load_file reads a config file as train.py --config does (options after a colon);
  set_key sets a dotted key and names a missing one."""
  c = config_lib.load_file(os.path.join(CONFIG_DIR, "reactnet18_cifar10.py") + ":bnfree")
  assert c.model.name == "reactnet18_bnfree" and c.optim.agc_clip == 0.02
  config_lib.set_key(c, "optim.lr", 1e-3)
  assert c.optim.lr == 1e-3
  with pytest.raises(KeyError):
    config_lib.set_key(c, "optim.nope.lr", 1.0)
  with pytest.raises(ValueError, match="No config file"):
    config_lib.load_file("configs/nope.py:bnfree")
  # a file that imports a sibling config module (as under train.py)
  vgg = config_lib.load_file(os.path.join(CONFIG_DIR, "vgg_small_cifar10.py") + ":method3")
  assert vgg.distill.semantic_weight > 0


@pytest.mark.parametrize("config_file,arm", [("resnet18_cifar10.py", "m2_no_mv"),
                                             ("reactnet18_cifar10.py", "m2_reactnet_fda")])
def test_fda_is_its_proxy_arm(config_file, arm):
  """:fda builds the network of the proxy arm its default rests on (docs/RESULTS.md,
  "Mechanisms: method 2"): ResNet-18 without mean-variance adjustment, ReActNet-18 with all
  four components."""
  model, options, overrides = proxy.ARMS[arm]
  want = proxy.proxy_config("c.tar.gz", model, options, 0, overrides, runs="/r").model
  got = load(config_file, "fda").model
  assert got.name == want.name
  assert got.options.to_dict() == want.options.to_dict()
