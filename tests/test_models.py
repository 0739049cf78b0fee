"""Models: parameter counts, collections, features, and a training step of each."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnn_jax import get_model
from bnn_jax import models
from bnn_jax.models import MODELS

BASE_MODELS = sorted(n for n in MODELS if not n.endswith("_fda"))

# Parameter counts at width 1, 10 classes (trainable params; BN running stats excluded).
PARAM_COUNTS = {
    # standard CIFAR ResNet-18: stem 1,728 + BN 128, 8 basic blocks, 3 1x1 shortcuts, head 5,130
    "resnet18_fp": 11_173_962,
    # same convolutions (binary_kernel instead of kernel), per-conv shortcuts add nothing
    "resnet18_bnn": 11_173_962,
    # stem 1,856; per block RSign C_in + 9 C_in C_out + BN 2 C_out + RPReLU 3 C_out
    # (+ 1x1 shortcut C_in C_out + BN 2 C_out when downsampling): stages 148,992 + 527,552
    # + 2,103,680 + 8,401,664; head 5,130
    "reactnet18": 11_188_874,
    # stem ScaledStdConv 1,728 + gain 64 + bias 64; per block RSign C_in + 9 C_in C_out + gain C_out
    # + RPReLU 3 C_out (+ ScaledStdConv 1x1 C_in C_out + gain + bias when downsampling): stages
    # 148,736 + 527,040 + 2,102,656 + 8,399,616; head 5,130
    "reactnet18_bnfree": 11_185_034,
    # convs 3,456 + 147,456 + 294,912 + 589,824 + 1,179,648 + 2,359,296; BN 3,584; head 81,930
    "vgg_small_bnn": 4_660_106,
    "vgg_small_fp": 4_660_106,
}
X = jnp.asarray(np.random.RandomState(0).randn(2, 32, 32, 3), jnp.float32)


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", BASE_MODELS)
def test_parameter_count_at_width_1(name):
  shapes = jax.eval_shape(lambda: get_model(name).init(jax.random.key(0), X))
  assert count(shapes["params"]) == PARAM_COUNTS[name]
  assert ("batch_stats" in shapes) == (name != "reactnet18_bnfree")


def test_binary_models_store_latent_weights_as_binary_kernel():
  shapes = jax.eval_shape(lambda: get_model("reactnet18").init(jax.random.key(0), X))["params"]
  paths = ["/".join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(shapes)]
  binary = [p for p in paths if p.endswith("binary_kernel")]
  assert len(binary) == 16  # one binary 3x3 conv per block, 4 x 4 blocks
  fp = jax.eval_shape(lambda: get_model("resnet18_fp").init(jax.random.key(0), X))["params"]
  assert not any("binary_kernel" in str(path) for path, _ in jax.tree_util.tree_leaves_with_path(fp))


def test_bnfree_has_no_batchnorm_anywhere():
  variables = jax.eval_shape(lambda: get_model("reactnet18_bnfree").init(jax.random.key(0), X))
  assert set(variables) == {"params"}
  assert not any("bn" in str(path).lower() for path, _ in jax.tree_util.tree_leaves_with_path(variables))


@pytest.mark.parametrize("name", BASE_MODELS)
def test_forward_at_width_1_with_features(name):
  model = get_model(name)
  variables = model.init(jax.random.key(0), X)
  assert "intermediates" not in variables  # sown values are kept only when asked for
  logits = model.apply(variables, X)
  assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
  logits2, feats, _ = models.apply_with_features(model, variables, X)
  np.testing.assert_array_equal(logits, logits2)  # collecting features changes nothing
  assert feats["penultimate"].shape == (2, 8192 if name.startswith("vgg") else 512)
  n_stages = 3 if name.startswith("vgg") else 4
  assert sorted(feats["stages"]) == [f"stage{i}" for i in range(1, n_stages + 1)]
  assert feats["stages"][f"stage{n_stages}"].shape == (2, 4, 4, 512)
  n_blocks = {"reactnet18": 16, "reactnet18_bnfree": 16, "resnet18_bnn": 8, "resnet18_fp": 8,
              "vgg_small_bnn": 6, "vgg_small_fp": 6}[name]
  assert len(feats["blocks"]) == n_blocks
  # one pre-sign input per binary conv, of the conv's input shape
  n_binary = {"reactnet18": 16, "reactnet18_bnfree": 16, "resnet18_bnn": 16, "resnet18_fp": 0,
              "vgg_small_bnn": 5, "vgg_small_fp": 0}[name]
  assert len(feats["presign"]) == n_binary
  if name == "reactnet18":
    assert feats["presign"]["stage2_block1/rsign"].shape == (2, 32, 32, 64)
    np.testing.assert_array_equal(feats["blocks"]["stage4_block4"], feats["stages"]["stage4"])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_steps_at_small_width_reduce_loss(name):
  model = get_model(name, width=0.125, num_classes=10)
  if hasattr(model, "blocks_per_stage"):  # the same blocks, one per stage: 4x cheaper to compile
    model = model.clone(blocks_per_stage=(1, 1, 1, 1))
  x = jnp.asarray(np.random.RandomState(1).randn(16, 32, 32, 3), jnp.float32)
  y = jnp.arange(16) % 10
  variables = model.init(jax.random.key(0), x)
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  def loss_fn(p, state):
    logits, new_state = model.apply({"params": p, **state}, x, train=True, mutable=list(state))
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state

  @jax.jit
  def step(p, state, opt_state):
    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, state)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), new_state, opt_state, loss, grads

  losses = []
  for i in range(8):
    params, state, opt_state, loss, grads = step(params, state, opt_state)
    if i == 0:
      # every parameter receives a finite gradient, and the binary kernels a non-zero one
      assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
      for path, g in jax.tree_util.tree_leaves_with_path(grads):
        if "binary_kernel" in str(path):
          assert float(jnp.abs(g).sum()) > 0, path
    losses.append(float(loss))
  # Binary nets at width 0.125 memorise noisily (resnet18_bnn: 2.36 -> 2.21 -> 2.32 in 8 Adam
  # steps), so the bar is the best loss reached, not the last one.
  assert min(losses[1:]) < losses[0] - 0.1, losses
  if "batch_stats" in state:  # BN running statistics moved
    assert any(float(jnp.abs(m).sum()) > 0 for m in jax.tree.leaves(state["batch_stats"]))


def test_unknown_model_name_lists_valid_names():
  with pytest.raises(ValueError, match="Unknown model 'resnet19'.*reactnet18"):
    get_model("resnet19")


def test_unknown_option_names_the_valid_options():
  with pytest.raises(ValueError, match=r"Unknown option\(s\) 'depth' for model 'resnet18_fp'; "
                                       r"its options are: none"):
    get_model("resnet18_fp", depth=34)
  with pytest.raises(ValueError, match=r"'excitaton' for model 'resnet18_fda'.*excitation"):
    get_model("resnet18_fda", excitaton=False)


def test_from_config_reads_options_and_older_run_configs():
  step1 = models.from_config({"name": "reactnet18", "width": 0.25, "num_classes": 10,
                              "options": {"binarize_weights": False}})
  assert step1.binarize_weights is False and step1.width == 0.25
  legacy = models.from_config({"name": "reactnet18", "width": 0.5, "num_classes": 100,
                               "binarize_weights": False, "sync_batch_norm": True})
  assert legacy.binarize_weights is False and legacy.num_classes == 100
  fp = models.from_config({"name": "resnet18_fp", "num_classes": 10, "binarize_weights": True})
  assert fp.block_cls is models.BasicBlockFP  # a full-precision model needs no special case
  with pytest.raises(ValueError, match="num_classes"):
    models.from_config({"name": "resnet18_fp"})


def test_import_bnn_jax_imports_no_tensorflow():
  code = "import sys, bnn_jax, bnn_jax.models, bnn_jax.layers; print('tensorflow' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"


FDA_BASE = {"resnet18_fda": "resnet18_bnn", "reactnet18_fda": "reactnet18",
            "vgg_small_fda": "vgg_small_bnn"}
ALL_OFF = {"mean_variance": False, "zero_point": False, "dynamic_threshold": False,
           "excitation": False, "refinement": False}


@pytest.mark.parametrize("fda,base", sorted(FDA_BASE.items()))
def test_fda_with_every_component_off_is_the_baseline_exactly(fda, base):
  x = X[:1]
  base_model = get_model(base, width=0.125)
  variables = base_model.init(jax.random.key(0), x)
  off = get_model(fda, width=0.125, **ALL_OFF)
  assert jax.tree.structure(off.init(jax.random.key(0), x)) == jax.tree.structure(variables)
  np.testing.assert_array_equal(off.apply(variables, x), base_model.apply(variables, x))


@pytest.mark.parametrize("fda,base", sorted(FDA_BASE.items()))
def test_fda_parameter_overhead_at_width_1_is_under_3_percent(fda, base):
  # Per binary conv (C_in -> C_out, G = 4, r = 4, h = C_in / 16): excitation
  # C_in h + G h + h C_out + C_out, mean-variance 2 C_in, zero point C_in (ReActNet: replaces
  # RSign's C_in), refinement 3 C_out. resnet18_fda: +173,584 (1.55%).
  n_base = count(jax.eval_shape(lambda: get_model(base).init(jax.random.key(0), X))["params"])
  n_fda = count(jax.eval_shape(lambda: get_model(fda).init(jax.random.key(0), X))["params"])
  assert 0 < n_fda - n_base <= 0.03 * n_base
  if fda == "resnet18_fda":
    assert n_fda - n_base == 173_584


def test_fda_components_each_add_their_modules():
  model = get_model("resnet18_fda", width=0.125, dynamic_threshold=True)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), X[:1]))["params"]
  block = params["stage2_block1"]
  assert {"sign1", "excitation1", "refine1", "binary_conv1", "bn1"} <= set(block)
  assert set(block["sign1"]) == {"mean_variance", "zero_point", "threshold_excitation"}
  with pytest.raises(ValueError, match="groups"):
    get_model("resnet18_fda", width=0.125, groups=3).init(jax.random.key(0), X[:1])
