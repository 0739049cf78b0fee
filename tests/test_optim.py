"""Tests for bnn_jax.optim: the W-regularizer and variant cosine momentum transforms
(values by hand from the docstring formulas), masks, optax composition (chain,
inject_hyperparams, jit, pmap), orbax round trips, a toy BNN, and build_optimizer."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from bnn_jax import optim
from helpers import check_on_two_devices

W = jnp.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 3.0])
# dR/dw = sign(w) * sign(|w| - t) * ||w| - t|^(p-1), t = 1, sign(0) = +1, 0 at |w| = t.
GRAD_P2 = np.array([-1.0, 0.0, 0.5, -1.0, -0.5, 0.0, 0.5, 2.0])   # sign(w) * (|w| - 1)
GRAD_P1 = np.array([-1.0, 0.0, 1.0, -1.0, -1.0, 0.0, 1.0, 1.0])   # sign(w) * sign(|w| - 1)


def _update(tx, updates, params, state=None):
  state = tx.init(params) if state is None else state
  return tx.update(updates, state, params)


def _tree(binary, kernel=None, bias=None):
  return {"block1": {"BinaryConv_0": {"binary_kernel": jnp.asarray(binary)}},
          "head": {"kernel": jnp.full((3, 2), 5.0) if kernel is None else kernel,
                   "bias": jnp.full((2,), -3.0) if bias is None else bias}}


# --- masks --------------------------------------------------------------------------------


def test_masks_select_by_leaf_name():
  p = _tree(jnp.ones((3, 3, 2, 4)))
  p["bn"] = {"scale": jnp.ones(4), "bias": jnp.zeros(4)}
  assert optim.binary_mask(p) == {"block1": {"BinaryConv_0": {"binary_kernel": True}},
                                  "head": {"kernel": False, "bias": False},
                                  "bn": {"scale": False, "bias": False}}
  assert optim.real_kernel_mask(p) == {"block1": {"BinaryConv_0": {"binary_kernel": False}},
                                       "head": {"kernel": True, "bias": False},
                                       "bn": {"scale": False, "bias": False}}


# --- W-regularizer -----------------------------------------------------------------------


@pytest.mark.parametrize("power,expected", [(2, GRAD_P2), (1, GRAD_P1)])
def test_w_regularization_hand_values(power, expected):
  g = jnp.linspace(-0.3, 0.4, W.size)
  tx = optim.w_regularization(0.5, power=power, target=1.0, mask=None)
  u, state = _update(tx, g, W)
  np.testing.assert_allclose(u, g + 0.5 * expected, rtol=0, atol=1e-7)
  assert int(state.count) == 1


def test_w_regularization_float_target():
  w = jnp.array([-0.75, -0.25, 0.0, 0.25, 0.5, 2.0])
  u, _ = _update(optim.w_regularization(1.0, power=2, target=0.5, mask=None), jnp.zeros(6), w)
  np.testing.assert_allclose(u, [-0.25, 0.25, -0.5, -0.25, 0.0, 1.5])


def test_w_regularization_matches_autodiff_off_the_kinks():
  w = jnp.array([-2.3, -0.7, -0.2, 0.1, 0.6, 1.2, 2.9])
  for p in (1, 2):
    auto = jax.grad(lambda v: optim.w_regularizer(v, p, 1.0).sum())(w)
    np.testing.assert_allclose(optim.w_regularizer_grad(w, p, 1.0), auto, rtol=1e-6)


@pytest.mark.parametrize("power,expected", [
    (2, [[-0.5, -1.0], [-0.5, -1.0], [0.0, 0.0]]),
    (1, [[-1.0, -1.0], [-1.0, -1.0], [0.0, 0.0]])])
def test_w_regularization_mean_abs_target(power, expected):
  # Dense (in=3, out=2): t = mean|w| per output column = [1.0, 2.0]; the last row sits at |w| = t.
  w = jnp.array([[0.5, -3.0], [-1.5, 1.0], [1.0, 2.0]])
  tx = optim.w_regularization(1.0, power=power, target="mean_abs", mask=None)
  np.testing.assert_allclose(_update(tx, jnp.zeros_like(w), w)[0], expected)
  # The same values as an HWIO conv kernel (3, 1, 1, 2): the output channel is the last axis.
  w4 = w.reshape(3, 1, 1, 2)
  np.testing.assert_allclose(_update(tx, jnp.zeros_like(w4), w4)[0],
                             np.reshape(expected, (3, 1, 1, 2)))
  # t is under stop_gradient: the autodiff gradient of R equals the formula with t fixed.
  auto = jax.grad(lambda v: optim.w_regularizer(v, 2, "mean_abs").sum())(w + 0.01)
  np.testing.assert_allclose(auto, optim.w_regularizer_grad(w + 0.01, 2, "mean_abs"), rtol=1e-6)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="power must be 1 or 2"):
    optim.w_regularization(1e-4, power=3)
  with pytest.raises(ValueError, match="mean_abs"):
    optim.w_regularization(1e-4, target="median")
  with pytest.raises(ValueError, match="width must be > 0"):
    optim.variant_cosine_momentum(1e-4, width=0.0)


# --- variant cosine momentum ---------------------------------------------------------------


def test_cosine_ramp_values():
  # D = 1: m(0) = 0, m(D/2) = 1/2, m(D) = 1, beyond D: 1.
  np.testing.assert_allclose(optim.cosine_ramp(jnp.array([0.0, 0.5, 1.0, 3.0]), 1.0),
                             [0.0, 0.5, 1.0, 1.0], atol=1e-7)


def test_cosine_momentum_single_step():
  # t = 1, D = 0.5, decay irrelevant on the first step (v0 = 0): update = kappa * m(d) * sign(w).
  w = jnp.array([0.0, 0.5, -1.0, 1.25, -1.5, 3.0, -4.0])
  g = jnp.full(7, 0.1)
  tx = optim.variant_cosine_momentum(2.0, decay=0.9, width=0.5, target=1.0, mask=None)
  u, state = _update(tx, g, w)
  np.testing.assert_allclose(u, 0.1 + 2.0 * np.array([0, 0, 0, 0.5, -1, 1, -1]), atol=1e-6)
  np.testing.assert_allclose(state.velocity, [0, 0, 0, 0.5, -1, 1, -1], atol=1e-7)


def test_cosine_momentum_velocity_recursion_by_hand():
  tx = optim.variant_cosine_momentum(2.0, decay=0.5, width=0.5, target=1.0, mask=None)
  state = tx.init(jnp.zeros(2))
  g = jnp.zeros(2)
  # step 1: w = [1.25, -2.0]: m*sign = [0.5, -1];   v1 = [0.5, -1]
  # step 2: w = [1.0,  -2.0]: m*sign = [0,   -1];   v2 = 0.5*v1 + . = [0.25, -1.5]
  # step 3: w = [3.0,  -1.0]: m*sign = [1,    0];   v3 = 0.5*v2 + . = [1.125, -0.75]
  for w, v in [([1.25, -2.0], [0.5, -1.0]), ([1.0, -2.0], [0.25, -1.5]),
               ([3.0, -1.0], [1.125, -0.75])]:
    u, state = tx.update(g, state, jnp.array(w))
    np.testing.assert_allclose(state.velocity, v, atol=1e-6)
    np.testing.assert_allclose(u, 2.0 * np.array(v), atol=1e-6)
  assert int(state.count) == 3


def test_cosine_momentum_reduces_tail_after_sgd_and_adam():
  params = _tree(jnp.array([[1.8, -1.6], [0.3, -0.2], [2.5, -3.0]]))
  zero = jax.tree.map(jnp.zeros_like, params)
  for base in (optax.sgd(0.1), optax.adam(0.1)):
    tx = optax.chain(optim.variant_cosine_momentum(1.0), base)
    u, _ = _update(tx, zero, params)
    new = optax.apply_updates(params, u)["block1"]["BinaryConv_0"]["binary_kernel"]
    old = params["block1"]["BinaryConv_0"]["binary_kernel"]
    tail = np.abs(old) > 1
    assert np.all(np.abs(new)[tail] < np.abs(old)[tail])
    np.testing.assert_array_equal(new[~tail], old[~tail])


# --- behaviour common to both transforms --------------------------------------------------------


TRANSFORMS = {
    "w_reg": lambda s, **kw: optim.w_regularization(s, **kw),
    "cos_mom": lambda s, **kw: optim.variant_cosine_momentum(s, **kw),
}


@pytest.mark.parametrize("name", TRANSFORMS)
def test_strength_zero_is_identity(name):
  params = _tree(jnp.array([[-2.0, 0.0], [0.7, 1.0], [3.0, -0.1]]))
  g = jax.tree.map(lambda x: jnp.linspace(-1, 1, x.size).reshape(x.shape), params)
  u, _ = _update(TRANSFORMS[name](0.0), g, params)
  jax.tree.map(np.testing.assert_array_equal, u, g)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_mask_leaves_other_leaves_untouched(name):
  params = _tree(jnp.array([[-2.0, 0.0], [0.7, 1.0], [3.0, -0.1]]))   # kernel = 5, bias = -3: far out
  g = jax.tree.map(jnp.ones_like, params)
  u, _ = _update(TRANSFORMS[name](1.0), g, params)
  np.testing.assert_array_equal(u["head"]["kernel"], g["head"]["kernel"])
  np.testing.assert_array_equal(u["head"]["bias"], g["head"]["bias"])
  assert not np.array_equal(u["block1"]["BinaryConv_0"]["binary_kernel"],
                            g["block1"]["BinaryConv_0"]["binary_kernel"])


@pytest.mark.parametrize("name", TRANSFORMS)
def test_update_without_params_raises(name):
  params = _tree(jnp.ones((2, 2)))
  tx = TRANSFORMS[name](1e-4)
  with pytest.raises(ValueError, match="needs the current parameters"):
    tx.update(params, tx.init(params))


@pytest.mark.parametrize("name", TRANSFORMS)
def test_warns_when_mask_selects_nothing(name):
  with pytest.warns(UserWarning, match="selects no parameters"):
    TRANSFORMS[name](1e-4).init({"Dense_0": {"kernel": jnp.ones((2, 2))}})


def test_schedule_strength_used_at_step_k():
  w = jnp.array([0.5, 2.0])                        # dR/dw (p=2, t=1) = [-0.5, 1.0]
  tx = optim.w_regularization(optax.linear_schedule(0.0, 1.0, 4), mask=None)   # lambda_k = k/4
  state = tx.init(w)
  for k in range(6):
    u, state = tx.update(jnp.zeros(2), state, w)
    np.testing.assert_allclose(u, min(k, 4) / 4 * np.array([-0.5, 1.0]), atol=1e-7)
  # cosine momentum with decay 0 and kappa_k = k: update = k * m(d) * sign(w)
  tx = optim.variant_cosine_momentum(lambda count: count.astype(jnp.float32), decay=0.0,
                                     mask=None)
  state = tx.init(w)
  for k in range(3):
    u, state = tx.update(jnp.zeros(2), state, w)
    np.testing.assert_allclose(u, [0.0, float(k)], atol=1e-6)


# --- composition: chain, inject_hyperparams, jit, pmap ----------------------------------------------


def _hand_chain_update(params, grads, lam, kappa, lr):
  """sgd(lr) after w_reg(lam, p=2, t=1) and cosine momentum (first step, D = 0.5)."""
  w = np.asarray(params["block1"]["BinaryConv_0"]["binary_kernel"])
  s = np.where(w >= 0, 1.0, -1.0)
  m = (1 - np.cos(np.pi * np.minimum(np.maximum(np.abs(w) - 1, 0), 0.5) / 0.5)) / 2
  out = jax.tree.map(lambda g: -lr * np.asarray(g), grads)
  gb = np.asarray(grads["block1"]["BinaryConv_0"]["binary_kernel"])
  out["block1"]["BinaryConv_0"]["binary_kernel"] = -lr * (gb + lam * s * (np.abs(w) - 1)
                                                           + kappa * m * s)
  return out


def _chain(lam=0.5, kappa=0.25):
  return optax.chain(optax.inject_hyperparams(optim.w_regularization)(strength=lam),
                     optax.inject_hyperparams(optim.variant_cosine_momentum)(strength=kappa),
                     optax.sgd(0.1))


def test_chain_inject_hyperparams_jit():
  params = _tree(jnp.array([[-2.0, 0.0], [0.7, 1.0], [1.2, -0.1]]))
  grads = jax.tree.map(lambda x: jnp.linspace(-1, 1, x.size).reshape(x.shape), params)
  tx = _chain()
  state = tx.init(params)
  update = jax.jit(tx.update)
  u, _ = update(grads, state, params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), u,
               _hand_chain_update(params, grads, 0.5, 0.25, 0.1))
  # Strength is a hyperparameter in the state: set it to 0 and the w_reg term vanishes.
  state[0].hyperparams["strength"] = jnp.asarray(0.0)
  u0, _ = update(grads, state, params)
  du = u["block1"]["BinaryConv_0"]["binary_kernel"] - u0["block1"]["BinaryConv_0"]["binary_kernel"]
  w = np.asarray(params["block1"]["BinaryConv_0"]["binary_kernel"])
  np.testing.assert_allclose(du, -0.1 * 0.5 * np.where(w >= 0, 1, -1) * (np.abs(w) - 1), atol=1e-6)


def test_inject_hyperparams_callable_mask_needs_static_args():
  params = _tree(jnp.ones((2, 2)))
  with pytest.raises(ValueError, match="static_args='mask'"):
    optax.inject_hyperparams(optim.w_regularization)(strength=1.0, mask=optim.binary_mask
                                                     ).init(params)
  tx = optax.inject_hyperparams(optim.w_regularization, static_args="mask")(
      strength=1.0, mask=optim.binary_mask)
  u, _ = _update(tx, jax.tree.map(jnp.zeros_like, params), _tree(jnp.full((2, 2), 3.0)))
  np.testing.assert_allclose(u["block1"]["BinaryConv_0"]["binary_kernel"], 2.0)


def _pmap_check():
  """Each device's pmapped chain update equals the single-device one on its own grads."""
  n = 2
  assert jax.local_device_count() >= n, jax.devices()
  params = _tree(jnp.array([[-2.0, 0.0], [0.7, 1.0], [1.2, -0.1]]))
  grads = [jax.tree.map(lambda x, i=i: (i + 1) * jnp.linspace(-1, 1, x.size).reshape(x.shape),
                        params) for i in range(n)]
  tx = _chain()
  state = tx.init(params)
  rep = lambda t: jax.tree.map(lambda x: jnp.stack([x] * n), t)
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads)
  u, new_state = jax.pmap(tx.update)(stacked, rep(state), rep(params))
  for i in range(n):
    ui, _ = tx.update(grads[i], state, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, atol=1e-6), u, ui)
  assert np.all(np.asarray(new_state[1].inner_state.inner_state.count) == 1)


def test_pmap_two_devices():
  check_on_two_devices("test_optim", "_pmap_check")


# --- orbax -------------------------------------------------------------------------------


def test_orbax_round_trip_of_optimizer_state(tmp_path):
  params = _tree(jnp.array([[-2.0, 0.0], [0.7, 1.0], [1.2, -0.1]]))
  grads = jax.tree.map(jnp.ones_like, params)
  tx = optax.chain(optax.inject_hyperparams(optim.w_regularization)(strength=0.5, power=1),
                   optim.variant_cosine_momentum(optax.linear_schedule(0.0, 1.0, 5),
                                                 target="mean_abs"),
                   optax.adam(1e-2))
  state = tx.init(params)
  for _ in range(3):
    _, state = tx.update(grads, state, params)
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "opt", state)
  ckpt.wait_until_finished()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, tx.init(params))
  restored = ckpt.restore(tmp_path / "opt", abstract)
  ckpt.close()
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  # Continuing from the restored state is the same as continuing from the original.
  jax.tree.map(np.testing.assert_array_equal, tx.update(grads, restored, params)[0],
               tx.update(grads, state, params)[0])


# --- a user's own model (plain JAX, not from this package) --------------------------------------------


@jax.custom_vjp
def _clipped_sign(w):
  return jnp.where(w >= 0, 1.0, -1.0)


_clipped_sign.defvjp(lambda w: (_clipped_sign(w), w), lambda w, g: (g * (jnp.abs(w) <= 1.0),))


def _toy_run(tx, steps=200):
  """Linear regression y = x @ sign(W*) with latent weights under a clipped sign STE.

  Initial latent weights are uniform in [-2.5, 2.5]: the tail beyond +-1 gets no task
  gradient. Returns (mean ||w| - 1|, loss, sign agreement with W*) after ``steps``.
  """
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  w_true = jnp.sign(jax.random.normal(k1, (16, 4)))
  x = jax.random.normal(k2, (64, 16))
  y = x @ w_true
  params = {"layer": {"binary_kernel": jax.random.uniform(k3, (16, 4), minval=-2.5, maxval=2.5)},
            "head": {"kernel": jnp.ones((4,)), "bias": jnp.zeros((4,))}}

  def loss(p):
    pred = x @ _clipped_sign(p["layer"]["binary_kernel"]) * p["head"]["kernel"] + p["head"]["bias"]
    return jnp.mean((pred - y) ** 2)

  def body(carry, _):
    p, s = carry
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return (optax.apply_updates(p, u), s), None

  (p, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps))((params, tx.init(params)))
  w = p["layer"]["binary_kernel"]
  return (float(jnp.mean(jnp.abs(jnp.abs(w) - 1))), float(loss(p)),
          float(jnp.mean(jnp.sign(w) == w_true)))


def test_toy_bnn_regularizers_shrink_distance_to_band():
  plain = _toy_run(optax.adam(1e-2))
  method1 = _toy_run(optax.chain(optim.w_regularization(0.03), optim.variant_cosine_momentum(0.03),
                                 optax.adam(1e-2)))
  # plain ~ (0.57, 12.9, 0.67), method 1 ~ (0.31, 6.8, 0.83) at seed 0
  assert method1[0] < 0.6 * plain[0], (plain, method1)
  assert method1[1] < plain[1] and method1[2] > plain[2], (plain, method1)


# --- build_optimizer -------------------------------------------------------------------------


def _config(**optim_overrides):
  c = ml_collections.ConfigDict({"num_epochs": 10})
  c.optim = optim.default_optim_config()
  for k, v in optim_overrides.items():
    section = c.optim
    *parents, leaf = k.split(".")
    for name in parents:
      section = section[name]
    section[leaf] = v
  c.lock()
  return c


def test_default_config_fields_and_target_types():
  c = _config()
  assert (c.optim.name, c.optim.lr, c.optim.schedule) == ("adam", 1e-3, "cosine")
  assert not c.optim.w_reg.enabled and not c.optim.cosine_momentum.enabled
  c.optim.w_reg.target = "mean_abs"        # locked config, float default: still accepts the string
  c.optim.cosine_momentum.target = 0.8
  assert (c.optim.w_reg.target, c.optim.cosine_momentum.target) == ("mean_abs", 0.8)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_build_optimizer_every_name_and_schedule(name, schedule):
  c = _config(name=name, schedule=schedule, lr=0.1, warmup_epochs=2.0, weight_decay=1e-4,
              binary_weight_decay=1e-5, agc_clip=0.02, **{"w_reg.enabled": True,
              "w_reg.ramp_epochs": 1.0, "cosine_momentum.enabled": True,
              "cosine_momentum.target": "mean_abs"})
  tx, lr = optim.build_optimizer(c, steps_per_epoch=4)       # 40 steps, 8 of warmup
  np.testing.assert_allclose([lr(0), lr(4), lr(8)], [0.0, 0.05, 0.1], rtol=1e-6)
  end = {"cosine": 0.0, "linear": 0.0, "constant": 0.1}[schedule]
  mid = {"cosine": 0.05, "linear": 0.05, "constant": 0.1}[schedule]   # half-way through the decay
  np.testing.assert_allclose([lr(24), lr(40)], [mid, end], rtol=1e-5, atol=1e-7)
  params = _tree(jnp.array([[-2.0, 0.0], [0.7, 1.0], [1.2, -0.1]]))
  state = tx.init(params)
  u, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(u))


def test_build_optimizer_no_warmup_starts_at_peak():
  _, lr = optim.build_optimizer(_config(lr=0.2), steps_per_epoch=5)
  np.testing.assert_allclose([lr(0), lr(25), lr(50)], [0.2, 0.1, 0.0], atol=1e-7)


def _one_update(config, params, grads=None):
  tx, _ = optim.build_optimizer(config, steps_per_epoch=10)
  grads = jax.tree.map(jnp.zeros_like, params) if grads is None else grads
  return tx.update(grads, tx.init(params), params)[0]


def test_weight_decays_hit_the_right_leaves():
  params = _tree(jnp.full((3, 2), 2.0))                          # kernel 5, bias -3
  # sgd, no momentum, constant lr 1: update = -(grad + decays).
  sgd = dict(name="sgd", momentum=0.0, schedule="constant", lr=1.0)
  u = _one_update(_config(weight_decay=0.1, **sgd), params)
  np.testing.assert_allclose(u["head"]["kernel"], -0.5)
  np.testing.assert_array_equal(u["head"]["bias"], 0.0)
  np.testing.assert_array_equal(u["block1"]["BinaryConv_0"]["binary_kernel"], 0.0)
  u = _one_update(_config(binary_weight_decay=0.1, **sgd), params)
  np.testing.assert_allclose(u["block1"]["BinaryConv_0"]["binary_kernel"], -0.2)
  np.testing.assert_array_equal(u["head"]["kernel"], 0.0)
  # adamw: decoupled decay lr * wd * w on real kernels only (zero grads: adam adds nothing).
  u = _one_update(_config(name="adamw", weight_decay=0.1, schedule="constant", lr=0.5), params)
  np.testing.assert_allclose(u["head"]["kernel"], -0.5 * 0.1 * 5.0, rtol=1e-6)
  np.testing.assert_array_equal(u["block1"]["BinaryConv_0"]["binary_kernel"], 0.0)
  np.testing.assert_array_equal(u["head"]["bias"], 0.0)
  # The W-regularizer at t = 0, decoupled (the m1_latent_decay control): decoupled weight
  # decay -lr * lambda * w on the latent binary weights only, whatever Adam makes of the grads.
  latent = _tree(jnp.array([[0.03, -0.01], [0.0, 0.2], [-1.5, 0.5]]))
  u = _one_update(_config(schedule="constant", lr=0.5, **{
      "w_reg.enabled": True, "w_reg.target": 0.0, "w_reg.power": 2, "w_reg.strength": 2.0,
      "w_reg.placement": "decoupled"}), latent)
  w = latent["block1"]["BinaryConv_0"]["binary_kernel"]
  np.testing.assert_allclose(u["block1"]["BinaryConv_0"]["binary_kernel"], -0.5 * 2.0 * w,
                             rtol=1e-6)
  np.testing.assert_array_equal(u["head"]["kernel"], 0.0)


def test_build_optimizer_w_reg_ramp_and_agc():
  params = _tree(jnp.full((3, 2), 3.0))                 # dR/dw (p=2, t=1) = 2 everywhere
  c = _config(name="sgd", momentum=0.0, schedule="constant", lr=1.0,
              **{"w_reg.enabled": True, "w_reg.strength": 0.1, "w_reg.ramp_epochs": 0.4})
  tx, _ = optim.build_optimizer(c, steps_per_epoch=10)  # ramp over 4 steps: lambda_k = 0.1 * k / 4
  state = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  for k in range(6):
    u, state = tx.update(zero, state, params)
    np.testing.assert_allclose(u["block1"]["BinaryConv_0"]["binary_kernel"],
                               -0.1 * min(k, 4) / 4 * 2.0, atol=1e-7)
  # the cosine momentum strength ramps the same way: kappa_k = 0.1 * k / 4, v_k = 0.9 v_{k-1} + m(d)
  c = _config(name="sgd", momentum=0.0, schedule="constant", lr=1.0,
              **{"cosine_momentum.enabled": True, "cosine_momentum.strength": 0.1,
                 "cosine_momentum.ramp_epochs": 0.4})
  tx, _ = optim.build_optimizer(c, steps_per_epoch=10)
  state, v = tx.init(params), 0.0
  for k in range(6):
    u, state = tx.update(zero, state, params)
    v = 0.9 * v + 1.0                                    # |w| - t = 2 > D = 0.5: m(d) = 1
    np.testing.assert_allclose(u["block1"]["BinaryConv_0"]["binary_kernel"],
                               -0.1 * min(k, 4) / 4 * v, rtol=1e-6, atol=1e-7)
  # AGC first: a huge task gradient is clipped to 0.01 * ||w|| per output unit.
  c = _config(name="sgd", momentum=0.0, schedule="constant", lr=1.0, agc_clip=0.01)
  big = jax.tree.map(lambda x: jnp.full_like(x, 1e3), params)
  u = _one_update(c, params, big)
  col_norm = np.linalg.norm(u["head"]["kernel"], axis=0)
  np.testing.assert_allclose(col_norm, 0.01 * np.linalg.norm(np.full(3, 5.0)), rtol=1e-5)


@pytest.mark.parametrize("field,value,valid", [("name", "lamb", "adam, adamw, sgd"),
                                               ("schedule", "step", "cosine, linear, constant")])
def test_build_optimizer_bad_names(field, value, valid):
  with pytest.raises(ValueError, match=f"valid names: {valid}"):
    optim.build_optimizer(_config(**{field: value}), steps_per_epoch=10)


def test_build_optimizer_bad_warmup_and_power():
  with pytest.raises(ValueError, match="warmup_epochs"):
    optim.build_optimizer(_config(warmup_epochs=10.0), steps_per_epoch=10)
  with pytest.raises(ValueError, match="power must be 1 or 2"):
    optim.build_optimizer(_config(**{"w_reg.enabled": True, "w_reg.power": 3}), 10)


def test_decoupled_w_reg_moves_each_weight_by_lr_lambda_dR_dw_under_adam():
  """Zero task gradient, Adam: the decoupled step is exactly -lr * lambda * dR/dw (here with
  t = mean|w| per output channel), while the coupled one is Adam-normalised to ~ -lr sign."""
  w = np.array([[0.1, -0.5], [0.35, -0.2], [-0.2, 0.6]], np.float32)  # 2 output channels
  params = _tree(jnp.asarray(w))
  alpha = np.abs(w).mean(axis=0)                                     # (0.21667, 0.43333)
  want_grad = np.where(w >= 0, 1, -1) * (np.abs(w) - alpha)          # p = 2: sign(w)(|w| - t)
  zero = jax.tree.map(jnp.zeros_like, params)
  fields = {"w_reg.enabled": True, "w_reg.strength": 0.5, "w_reg.target": "mean_abs"}
  c = _config(name="adam", schedule="constant", lr=2e-3, **fields,
              **{"w_reg.placement": "decoupled"})
  tx, _ = optim.build_optimizer(c, steps_per_epoch=10)
  u, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(u["block1"]["BinaryConv_0"]["binary_kernel"],
                             -2e-3 * 0.5 * want_grad, rtol=1e-5, atol=1e-9)
  np.testing.assert_array_equal(u["head"]["kernel"], 0.0)  # only the latent binary weights
  coupled = _config(name="adam", schedule="constant", lr=2e-3, **fields)
  tx, _ = optim.build_optimizer(coupled, steps_per_epoch=10)
  u, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(np.abs(u["block1"]["BinaryConv_0"]["binary_kernel"]), 2e-3,
                             rtol=1e-3)  # Adam's first step: lr * g / |g|, whatever lambda


def test_late_start_and_decoupled_cosine_momentum_with_a_schedule():
  params = _tree(jnp.full((3, 2), 3.0))               # |w| - t = 2 > D: m(d) = 1
  zero = jax.tree.map(jnp.zeros_like, params)
  c = _config(name="sgd", momentum=0.0, schedule="linear", lr=1.0,
              **{"w_reg.enabled": True, "w_reg.strength": 0.1, "w_reg.start_epochs": 0.3,
                 "w_reg.ramp_epochs": 0.2, "w_reg.placement": "decoupled"})
  tx, lr = optim.build_optimizer(c, steps_per_epoch=10)  # off for 3 steps, then 2-step ramp
  state = tx.init(params)
  for k in range(7):
    u, state = tx.update(zero, state, params)
    lam = 0.1 * min(max(k - 3, 0), 2) / 2
    np.testing.assert_allclose(u["block1"]["BinaryConv_0"]["binary_kernel"],
                               -float(lr(k)) * lam * 2.0, rtol=1e-6, atol=1e-8)
  c = _config(name="sgd", momentum=0.0, schedule="constant", lr=0.5,
              **{"cosine_momentum.enabled": True, "cosine_momentum.strength": 0.1,
                 "cosine_momentum.placement": "decoupled"})
  tx, _ = optim.build_optimizer(c, steps_per_epoch=10)
  state, v = tx.init(params), 0.0
  for k in range(3):
    u, state = tx.update(zero, state, params)
    v = 0.9 * v + 1.0
    np.testing.assert_allclose(u["block1"]["BinaryConv_0"]["binary_kernel"], -0.5 * 0.1 * v,
                               rtol=1e-6)


def test_bad_placement_is_named():
  with pytest.raises(ValueError, match=r"optim.w_reg.placement 'after'; valid names: gradient, "
                                       r"decoupled"):
    optim.build_optimizer(_config(**{"w_reg.enabled": True, "w_reg.placement": "after"}), 10)


# --- method-1 mechanism controls ---------------------------------------------------------------


def test_cosine_momentum_fixed_initial_target_does_not_follow_the_weights():
  w0 = jnp.array([[0.5, 1.0], [1.5, -3.0]])                 # t0 per channel = (1.0, 2.0)
  tx = optim.variant_cosine_momentum(1.0, decay=0.0, width=1.0, target="init_mean_abs",
                                     mask=None)
  state = tx.init(w0)
  np.testing.assert_array_equal(state.target, [[1.0, 2.0]])
  w = w0 * 0.5                                               # mean|w| halves, t0 stays
  u, state = tx.update(jnp.zeros_like(w), state, w)          # d = max(|w| - t0, 0) = 0 everywhere
  np.testing.assert_array_equal(u, 0.0)
  w = jnp.array([[0.5, 2.5], [1.5, -2.0]])                   # d = (0, 0.5 | 0.5, 0)
  u, state = tx.update(jnp.zeros_like(w), state, w)
  np.testing.assert_allclose(u, [[0.0, 0.5], [0.5, 0.0]], atol=1e-7)  # m(D/2) = 1/2, sign +
  np.testing.assert_array_equal(state.target, [[1.0, 2.0]])
  # the moving target would have pulled differently: t = mean|w| = (1.0, 2.25)
  moving = optim.variant_cosine_momentum(1.0, decay=0.0, width=1.0, target="mean_abs", mask=None)
  u_moving, _ = moving.update(jnp.zeros_like(w), moving.init(w), w)
  assert not np.allclose(u_moving, u)
  with pytest.raises(ValueError, match="init_mean_abs"):
    optim.variant_cosine_momentum(1.0, target="init_abs")


def test_fixed_target_state_survives_masking_jit_and_orbax(tmp_path):
  params = _tree(jnp.array([[-2.0, 0.0], [0.7, 1.0], [1.2, -0.1]]))
  tx = optax.chain(optim.variant_cosine_momentum(0.1, target="init_mean_abs"), optax.adam(1e-2))
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(2):
    u, state = jax.jit(tx.update)(grads, state, params)
    params = optax.apply_updates(params, u)
  inner = state[0].inner_state                              # optax.masked's state
  np.testing.assert_allclose(inner.target["block1"]["BinaryConv_0"]["binary_kernel"],
                             [[(2.0 + 0.7 + 1.2) / 3, (0.0 + 1.0 + 0.1) / 3]], rtol=1e-6)
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "opt", state)
  ckpt.wait_until_finished()
  restored = ckpt.restore(tmp_path / "opt", jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
  ckpt.close()
  jax.tree.map(np.testing.assert_array_equal, restored, state)


def test_tail_projection_clips_to_t_plus_d_per_channel():
  w = jnp.array([[0.1, -0.2], [0.5, 0.4], [-0.3, -0.6]])    # t = mean|w| = (0.3, 0.4)
  u = jnp.array([[0.0, 0.0], [0.1, 0.1], [-0.05, 0.0]])
  tx = optim.tail_projection(width=0.1, mask=None)
  got, _ = tx.update(u, tx.init(w), w)
  # w + u = [[.1, -.2], [.6, .5], [-.35, -.6]]; bounds .4 and .5 -> [.4, .5], [-.35, -.5]
  np.testing.assert_allclose(w + got, [[0.1, -0.2], [0.4, 0.5], [-0.35, -0.5]], atol=1e-7)
  with pytest.raises(ValueError, match="width must be >= 0"):
    optim.tail_projection(width=-0.1)


def test_build_optimizer_binary_lr_multiplier_and_projection():
  params = _tree(jnp.array([[-2.0, 0.0], [0.7, 1.0], [1.2, -0.1]]))
  grads = jax.tree.map(lambda x: jnp.linspace(-1.0, 2.0, x.size).reshape(x.shape), params)
  plain = _one_update(_config(schedule="constant", lr=1e-2), params, grads)
  x10 = _one_update(_config(schedule="constant", lr=1e-2, binary_lr_multiplier=10.0), params,
                    grads)
  key = ("block1", "BinaryConv_0", "binary_kernel")
  np.testing.assert_allclose(x10[key[0]][key[1]][key[2]], 10 * plain[key[0]][key[1]][key[2]],
                             rtol=1e-6)
  np.testing.assert_array_equal(x10["head"]["kernel"], plain["head"]["kernel"])
  with pytest.raises(ValueError, match="binary_lr_multiplier must be > 0"):
    _one_update(_config(binary_lr_multiplier=0.0), params)
  # the projection comes last: after a x100 step every latent weight is inside t + D
  c = _config(schedule="constant", lr=1.0, binary_lr_multiplier=100.0,
              **{"tail_projection.enabled": True, "tail_projection.width": 0.05})
  w = params[key[0]][key[1]][key[2]]
  new = w + _one_update(c, params, grads)[key[0]][key[1]][key[2]]
  assert np.all(np.abs(new) <= np.abs(w).mean(axis=0) + 0.05 + 1e-6)
  for field in ("binary_lr_multiplier", "tail_projection.enabled"):
    with pytest.raises(ValueError, match=f"bop.*optim.{field}"):
      value = 3.0 if field == "binary_lr_multiplier" else True
      optim.build_optimizer(_config(name="bop", **{field: value}), 10)


def test_strength_schedule_as_fractions_of_the_run():
  c = _config(**{"w_reg.start_fraction": 0.5, "w_reg.ramp_fraction": 0.25})  # num_epochs = 10
  assert optim.schedule_epochs(c.optim.w_reg, c.num_epochs) == (5.0, 2.5)
  assert optim.schedule_epochs(c.optim.w_reg, 4) == (2.0, 1.0)
  for bad, match in (({"w_reg.start_epochs": 1.0}, "not both"),
                     ({"w_reg.ramp_epochs": 0.0, "w_reg.start_fraction": 1.5}, r"in \[0, 1\]")):
    c = _config(**{"w_reg.start_fraction": 0.5, **bad})
    with pytest.raises(ValueError, match=match):
      optim.schedule_epochs(c.optim.w_reg, 10)


def test_logged_weight_target_follows_the_term_in_use():
  def logged(**fields):
    c = _config(**fields)
    with c.unlocked():
      c.weight_target = "auto"
    return optim.logged_weight_target(c)
  assert logged() == "mean_abs"                                   # Adam: the binarizer's alpha
  assert logged(**{"w_reg.enabled": True, "w_reg.target": 0.5}) == 0.5
  assert logged(**{"cosine_momentum.enabled": True,
                   "cosine_momentum.target": "init_mean_abs"}) == "mean_abs"
  c = _config()
  with c.unlocked():
    c.weight_target = 1.0
  assert optim.logged_weight_target(c) == 1.0


def test_latent_decay_recipe_is_plain_optax_adamw_on_the_binary_kernels():
  """configs/reactnet18_cifar10.py:latent_decay (the W-regularizer at t = 0, decoupled,
  lambda 2) equals ``optax.adamw(schedule, weight_decay=2.0, mask=optim.binary_mask)``: AdamW's
  decay, -lr(step) * 2 * w, on the latent binary weights only (docs/METHODS.md)."""
  from bnn_jax import config as config_lib
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  c = config_lib.load_file(os.path.join(repo, "configs", "reactnet18_cifar10.py") + ":latent_decay")
  c.num_epochs = 4
  tx, lr = optim.build_optimizer(c, steps_per_epoch=5)
  b1, b2 = c.optim.b1, c.optim.b2

  def train(tx, steps=12):  # into the cosine decay, the same random gradients for each
    rng = np.random.RandomState(0)
    params = _tree(rng.randn(3, 2).astype(np.float32) * 0.05)
    state = tx.init(params)
    for _ in range(steps):
      grads = jax.tree.map(lambda p: jnp.asarray(rng.randn(*p.shape), jnp.float32), params)
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
    return params

  ours = train(tx)
  adamw = train(optax.adamw(lr, b1=b1, b2=b2, weight_decay=2.0, mask=optim.binary_mask))
  adam = train(optax.adam(lr, b1=b1, b2=b2))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9), ours, adamw)
  kernel = lambda p: p["block1"]["BinaryConv_0"]["binary_kernel"]
  assert np.abs(kernel(adamw) - kernel(adam)).max() > 1e-5   # the decay is not a no-op
  np.testing.assert_array_equal(ours["head"]["kernel"], adam["head"]["kernel"])
