"""The precision policy (docs/METHODS.md, "Numerics"): where each dtype lives under
``model.dtype=bfloat16``, checked on the traced program and on the values, not only the output."""

import collections
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

from bnn_jax import config as config_lib
from bnn_jax import layers, models

X = jnp.asarray(np.random.RandomState(0).randn(4, 32, 32, 3), jnp.float32)
LABELS = jnp.arange(4) % 10
# one network per kind of module: RSign/RPReLU with BN, BN-free (scaled WS), method 2's modules,
# Sign + hardtanh + max-pool, and a full-precision network
NETWORKS = ("reactnet18", "reactnet18_bnfree", "resnet18_fda", "vgg_small_bnn", "resnet18_fp")


def _eqns(jaxpr, scope=""):
  """(equation, module path) for every equation of a jaxpr, recursing into sub-jaxprs (jit,
  custom_vjp, ...); the path is the Flax module scope, inherited where a sub-jaxpr has none."""
  for e in jaxpr.eqns:
    here = str(e.source_info.name_stack) or scope
    yield e, here
    for p in e.params.values():
      sub = p if hasattr(p, "eqns") else getattr(p, "jaxpr", None)
      if sub is not None and hasattr(sub, "eqns"):
        yield from _eqns(sub, here)


# Where float32 activation maps may appear under bfloat16 (docs/METHODS.md, "Numerics"): inside
# the normalizations (BatchNorm, mean-variance adjustment, the excitation's pooling: float32
# statistics and arithmetic), the binary conv's alpha scaling, and at the network's edges
# (the float32 input image, the float32 head); each between a bfloat16 read and write.
FLOAT32_SCOPES = re.compile(r"(^|_)bn\d*$|^mean_variance$|^excitation\d*$|^binary_conv\d*$"
                            r"|^(transpose\()?jvp\(\w+\)\)?$")


def _train_step_parts(name, dtype):
  model = models.get_model(name, width=0.125, dtype=dtype)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), X))

  def loss(params, batch_stats):
    logits, state = model.apply({"params": params, "batch_stats": batch_stats}, X, train=True,
                                mutable=["batch_stats", "intermediates"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean()
    return ce, (logits, state)

  return loss, variables["params"], variables.get("batch_stats", {})


@pytest.mark.parametrize("name", NETWORKS)
def test_bfloat16_policy_puts_each_dtype_where_the_docs_say(name):
  loss, params, batch_stats = _train_step_parts(name, "bfloat16")
  grad_fn = jax.value_and_grad(loss, has_aux=True)
  # shapes and dtypes of everything the step returns (traced, not computed)
  (ce, (logits, state)), grads = jax.eval_shape(grad_fn, params, batch_stats)
  # float32: parameters, their gradients, BN running statistics, logits and the loss
  for tree in (params, grads, state.get("batch_stats", {})):
    assert {x.dtype for x in jax.tree.leaves(tree)} <= {jnp.dtype(jnp.float32)}
  assert logits.dtype == jnp.float32 and ce.dtype == jnp.float32
  # bfloat16: every activation the network sows (block outputs, sign inputs, stage maps);
  # the penultimate vector is the head's float32 input
  feats = models.features(state["intermediates"])
  assert feats["penultimate"].dtype == jnp.float32
  sown = [x for k, x in jax.tree_util.tree_leaves_with_path(state["intermediates"])
          if "penultimate" not in jax.tree_util.keystr(k)]
  assert sown and {x.dtype for x in sown} == {jnp.dtype(jnp.bfloat16)}

  # The traced train step: every conv (forward and backward) has bfloat16 operands, and every
  # activation-sized value written between operations that is not a conv's float32 sum (or
  # its scale by alpha inside the same fusion) or BatchNorm's float32 arithmetic is bfloat16.
  jaxpr = jax.make_jaxpr(grad_fn)(params, batch_stats).jaxpr
  convs = [e for e, _ in _eqns(jaxpr) if e.primitive.name == "conv_general_dilated"]
  assert convs
  for e in convs:
    assert [str(v.aval.dtype) for v in e.invars] == ["bfloat16", "bfloat16"], e
  # Two float32 maps XLA fuses into their consumer and never writes: a float32 parameter
  # broadcast before its cast (layers.cast_to_activation), and the float32 cotangent a
  # reduction sums (the transpose of that cast).
  summed = {id(v) for e, _ in _eqns(jaxpr) if e.primitive.name == "reduce_sum"
            for v in e.invars}
  float32_maps = collections.Counter()
  for e, scope in _eqns(jaxpr):
    if e.primitive.name == "broadcast_in_dim":
      continue
    for v in e.outvars:
      if e.primitive.name == "convert_element_type" and id(v) in summed:
        continue
      shape = getattr(v.aval, "shape", ())
      if len(shape) == 4 and shape[0] == X.shape[0] and shape[1] > 1:   # an activation map
        if v.aval.dtype == jnp.float32:
          float32_maps[scope.split("/")[-1]] += 1
  elsewhere = {s: n for s, n in float32_maps.items() if not FLOAT32_SCOPES.search(s)}
  assert not elsewhere, elsewhere
  # Every sum accumulates in float32: a per-channel parameter's gradient is a sum over batch,
  # height and width, which in bfloat16 loses most of its digits (see the next test).
  bf16_sums = [scope for e, scope in _eqns(jaxpr) if e.primitive.name == "reduce_sum"
               and e.invars[0].aval.dtype == jnp.bfloat16]
  assert not bf16_sums, collections.Counter(s.split("/")[-1] for s in bf16_sums)


@pytest.mark.parametrize("module", ["bias", "slope"])
def test_bfloat16_per_channel_parameter_gradients_are_float32_sums(module):
  """RSign's threshold, RPReLU's shifts and slope, the zero point: their gradients sum a
  bfloat16 cotangent over 128 x 16 x 16 positions. Summed in bfloat16 (the parameter cast
  before it is broadcast), this test's bias gradient was off by 42% of its largest entry."""
  rng = np.random.RandomState(2)
  x = jnp.asarray(rng.randn(128, 16, 16, 8), jnp.bfloat16)
  cot = jnp.asarray(rng.randn(*x.shape) * 1e-3 + 2e-4, jnp.bfloat16)    # a biased cotangent
  layer = layers.LearnableBias() if module == "bias" else layers.RPReLU()
  params = layer.init(jax.random.key(0), x)["params"]

  @jax.jit
  def grads(params, x, cot):
    y, vjp = jax.vjp(lambda p: layer.apply({"params": p}, x), params)
    assert y.dtype == jnp.bfloat16
    return vjp(cot)[0]

  g = grads(params, x, cot)
  x64, cot64 = np.asarray(x, np.float64), np.asarray(cot, np.float64)
  if module == "bias":       # d/db sum(cot * (x + b)) = sum over b, h, w of cot
    got, want = g["bias"], cot64.sum(axis=(0, 1, 2))
  else:                      # RPReLU at its init (shifts 0): d/dslope = sum of cot * x, x < 0
    got, want = g["slope"], (cot64 * np.minimum(x64, 0.0)).sum(axis=(0, 1, 2))
  assert got.dtype == jnp.float32
  # float32 sums of bfloat16 terms (for the slope, each product cot * x rounded to bfloat16:
  # relative 2^-9 per term, averaging out over 32,768 terms)
  np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-3 * np.abs(want).max())


def test_float32_policy_has_no_bfloat16_anywhere():
  loss, params, batch_stats = _train_step_parts("reactnet18", "float32")
  jaxpr = jax.make_jaxpr(jax.grad(loss, has_aux=True))(params, batch_stats).jaxpr
  dtypes = {str(v.aval.dtype) for e, _ in _eqns(jaxpr) for v in e.outvars
            if hasattr(v.aval, "dtype")}
  assert "bfloat16" not in dtypes


def test_bfloat16_binary_conv_is_the_rounded_sum_times_alpha():
  rng = np.random.RandomState(1)
  # 300 input channels: sums up to 2,700 need 12 bits, so the bfloat16 rounding of the sum shows
  x = jnp.asarray(np.where(rng.randn(2, 6, 6, 300) >= 0, 1.0, -1.0), jnp.float32)
  conv = layers.BinaryConv(7, 3, input_quantizer=None, padding="VALID", dtype=jnp.bfloat16)
  variables = conv.init(jax.random.key(0), x)
  y = conv.apply(variables, x)
  assert y.dtype == jnp.bfloat16
  w = np.asarray(variables["params"]["binary_kernel"], np.float64)
  alpha = np.abs(w).mean(axis=(0, 1, 2)).astype(np.float32)
  signs = np.where(w >= 0, 1.0, -1.0)
  n = np.zeros((2, 4, 4, 7))                        # the integer +-1 dot products, exactly
  for i in range(4):
    for j in range(4):
      n[:, i, j] = np.einsum("bhwc,hwco->bo", np.asarray(x)[:, i:i + 3, j:j + 3], signs)
  # the float32-accumulated integer sum rounded to bfloat16, times alpha in float32, rounded
  bf16 = ml_dtypes.bfloat16
  want = (n.astype(bf16).astype(np.float32) * alpha).astype(bf16)
  np.testing.assert_array_equal(np.asarray(y), want)


@pytest.mark.parametrize("bad", ["float16", "int8", "bf16"])
def test_unknown_dtype_names_the_valid_ones(bad):
  c = config_lib.base_config()
  c.model.dtype = bad
  with pytest.raises(ValueError, match="valid: float32, bfloat16"):
    config_lib.validate(c)
  with pytest.raises(ValueError, match="valid: float32, bfloat16"):
    models.get_model("reactnet18", dtype=bad)
