"""Models: parameter counts, collections, features, and a training step of each."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnn_jax import get_model
from bnn_jax.models import MODELS

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


@pytest.mark.parametrize("name", sorted(MODELS))
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


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_at_width_1_with_features(name):
  model = get_model(name)
  variables = model.init(jax.random.key(0), X)
  logits = model.apply(variables, X)
  assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
  logits2, feats = model.apply(variables, X, return_features=True)
  np.testing.assert_array_equal(logits, logits2)  # features do not change the default output
  assert feats["penultimate"].shape[0] == 2
  n_stages = 3 if name.startswith("vgg") else 4
  assert [f"stage{i}" for i in range(1, n_stages + 1)] == sorted(k for k in feats if k.startswith("stage"))
  assert feats[f"stage{n_stages}"].shape[-1] == 512


@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_steps_at_small_width_reduce_loss(name):
  model = get_model(name, width=0.125, num_classes=10)
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
  with pytest.raises(ValueError, match="Bad arguments for model 'resnet18_fp'"):
    get_model("resnet18_fp", depth=34)


def test_import_bnn_jax_imports_no_tensorflow():
  code = "import sys, bnn_jax, bnn_jax.models, bnn_jax.layers; print('tensorflow' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"
