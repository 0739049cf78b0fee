"""Tests for bnn_jax.optim.bop (Bop, Helwegen et al. 2019) and build_optimizer's "bop":
flips by hand over three steps, masks, schedules, inject_hyperparams + jit, pmap, orbax,
the Bop/Adam split, the config conflicts, and the logged flip ratio under Bop."""


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from bnn_jax import optim, weight_stats
from helpers import check_on_two_devices

# Three steps of Bop with gamma = 0.5, tau = 0.25, m_0 = 0 (every value below is exact in
# float32): m_t = 0.5 m_{t-1} + 0.5 g_t; flip where sign(w) * m_t > 0.25, i.e. |m_t| > tau and
# sign(m_t) = sign(w), sign(0) = +1; the update is -2w there, 0 elsewhere.
GAMMA, TAU = 0.5, 0.25
W0 = np.array([0.5, -0.5, 0.25, -0.75, 0.0], np.float32)
GRADS = np.array([[0.25, 0.25, -1.0, -1.0, 1.0],
                  [1.0, -1.0, 0.0, 1.0, 0.0],
                  [0.0, 0.0, 1.0, 0.0, 0.0]], np.float32)
# step 1: m1 = [0.125, 0.125, -0.5, -0.5, 0.5]
#         sign(w0) * m1 = [0.125, -0.125, -0.5, 0.5, 0.5]     -> flips [F, F, F, T, T]
#         w1 = [0.5, -0.5, 0.25, 0.75, 0.0]                   (the exact zero "flips" to -0 = 0)
# step 2: m2 = [0.5625, -0.4375, -0.25, 0.25, 0.25]
#         sign(w1) * m2 = [0.5625, 0.4375, -0.25, 0.25, 0.25] -> flips [T, T, F, F, F]
#         (0.25 is not > tau: the threshold is strict)
#         w2 = [-0.5, 0.5, 0.25, 0.75, 0.0]
# step 3: m3 = [0.28125, -0.21875, 0.375, 0.125, 0.125]
#         sign(w2) * m3 = [-0.28125, -0.21875, 0.375, 0.125, 0.125] -> flips [F, F, T, F, F]
#         (weight 0 keeps its sign: m3 > tau still, but it points against the new sign)
#         w3 = [-0.5, 0.5, -0.25, 0.75, 0.0]
MOMENTA = np.array([[0.125, 0.125, -0.5, -0.5, 0.5],
                    [0.5625, -0.4375, -0.25, 0.25, 0.25],
                    [0.28125, -0.21875, 0.375, 0.125, 0.125]], np.float32)
WEIGHTS = np.array([[0.5, -0.5, 0.25, 0.75, 0.0],
                    [-0.5, 0.5, 0.25, 0.75, 0.0],
                    [-0.5, 0.5, -0.25, 0.75, 0.0]], np.float32)


def _tree(binary, kernel=None, bias=None):
  return {"block1": {"BinaryConv_0": {"binary_kernel": jnp.asarray(binary)}},
          "head": {"kernel": jnp.full((3, 2), 5.0) if kernel is None else kernel,
                   "bias": jnp.full((2,), -3.0) if bias is None else bias}}


def _bk(tree):
  return tree["block1"]["BinaryConv_0"]["binary_kernel"]


def _run_hand_steps(tx, update=None):
  update = update or tx.update
  w = jnp.asarray(W0)
  state = tx.init(w)
  for g, m, w_next in zip(GRADS, MOMENTA, WEIGHTS):
    u, state = update(jnp.asarray(g), state, w)
    np.testing.assert_array_equal(u, w_next - np.asarray(w))     # -2w where flipped, else 0
    w = optax.apply_updates(w, u)
    np.testing.assert_array_equal(w, w_next)
    yield state, m


def test_bop_hand_computed_flips_over_three_steps():
  for state, m in _run_hand_steps(optim.bop(TAU, GAMMA, mask=None)):
    np.testing.assert_array_equal(state.momentum, m)
  assert int(state.count) == 3


def test_bop_flip_helper_and_sign_convention():
  m = jnp.array([0.5, 0.5, -0.5, -0.5, 0.5, 0.1])
  w = jnp.array([1.0, -1.0, 1.0, -1.0, 0.0, 1.0])
  np.testing.assert_array_equal(optim.bop_flips(m, w, 0.25),
                                [True, False, False, True, True, False])


def test_bop_schedules_for_gamma_and_threshold():
  # gamma_k = 0 on step 0 (m stays 0: nothing flips), 1 afterwards (m = g);
  # tau_k = 10 on steps 0-1 (nothing can flip), 0 from step 2 on.
  tx = optim.bop(threshold=lambda c: jnp.where(c >= 2, 0.0, 10.0),
                 gamma=lambda c: jnp.where(c >= 1, 1.0, 0.0), mask=None)
  w = jnp.array([1.0, -1.0])
  g = jnp.array([0.5, 0.5])
  state = tx.init(w)
  u, state = tx.update(g, state, w)
  np.testing.assert_array_equal(state.momentum, [0.0, 0.0])
  np.testing.assert_array_equal(u, [0.0, 0.0])
  u, state = tx.update(g, state, w)
  np.testing.assert_array_equal(state.momentum, [0.5, 0.5])
  np.testing.assert_array_equal(u, [0.0, 0.0])
  u, state = tx.update(g, state, w)
  np.testing.assert_array_equal(u, [-2.0, 0.0])


def test_bop_masked_leaves_untouched():
  params = _tree(jnp.array([[0.5, -0.5], [0.25, -0.25], [1.0, 0.0]]))
  grads = jax.tree.map(lambda x: jnp.linspace(-1, 1, x.size).reshape(x.shape), params)
  tx = optim.bop(0.0, 1.0)                                # default mask: binary_kernel
  state = tx.init(params)
  u, state = tx.update(grads, state, params)
  # other leaves: their updates pass through unchanged (optax.masked)
  np.testing.assert_array_equal(u["head"]["kernel"], grads["head"]["kernel"])
  np.testing.assert_array_equal(u["head"]["bias"], grads["head"]["bias"])
  # binary leaf, m = g: flip where sign(w) * g > 0
  w, g = np.asarray(_bk(params)), np.asarray(_bk(grads))
  flip = np.where(w >= 0, 1, -1) * g > 0
  np.testing.assert_array_equal(_bk(u), np.where(flip, -2 * w, 0))
  # the state holds a momentum for the masked leaf only
  assert [x.shape for x in jax.tree.leaves(state)] == [(), (3, 2)]


def test_bop_needs_params_warns_on_empty_mask_and_checks_ranges():
  params = _tree(jnp.ones((2, 2)))
  tx = optim.bop()
  with pytest.raises(ValueError, match="needs the current parameters"):
    tx.update(params, tx.init(params))
  with pytest.warns(UserWarning, match="selects no parameters"):
    optim.bop().init({"Dense_0": {"kernel": jnp.ones((2, 2))}})
  with pytest.raises(ValueError, match="threshold"):
    optim.bop(threshold=-1e-8)
  with pytest.raises(ValueError, match="gamma"):
    optim.bop(gamma=1.5)


def test_bop_inject_hyperparams_jit():
  tx = optax.inject_hyperparams(optim.bop)(threshold=TAU, gamma=GAMMA, mask=None)
  update = jax.jit(tx.update)
  for state, m in _run_hand_steps(tx, update):
    np.testing.assert_array_equal(state.inner_state.momentum, m)
  assert float(state.hyperparams["threshold"]) == TAU
  # Hyperparameters in the state take effect in the same compiled update: gamma = 1 makes
  # m = g, tau = 0 flips wherever g points along sign(w).
  state.hyperparams["gamma"] = jnp.asarray(1.0)
  state.hyperparams["threshold"] = jnp.asarray(0.0)
  w = jnp.array([0.5, -0.5, 0.5, -0.5, 0.25])
  u, state = update(jnp.array([0.1, 0.1, -0.1, -0.1, 0.0]), state, w)
  np.testing.assert_array_equal(u, [-1.0, 0.0, 0.0, 1.0, 0.0])
  np.testing.assert_allclose(state.inner_state.momentum, [0.1, 0.1, -0.1, -0.1, 0.0])


def _pmap_check():
  """Bop on the pmean of per-device gradients: every replica makes the same, hand-known flips."""
  n = 2
  assert jax.local_device_count() >= n, jax.devices()
  tx = optim.bop(TAU, GAMMA, mask=None)
  w = jnp.asarray(W0)
  # device 0 gets g + d, device 1 gets g - d: their mean is the hand-computed step-1 gradient.
  d = jnp.array([1.0, -2.0, 0.5, 4.0, -1.0])
  stacked = jnp.stack([GRADS[0] + d, GRADS[0] - d])
  rep = lambda t: jax.tree.map(lambda x: jnp.stack([x] * n), t)

  def step(g, state, params):
    return tx.update(jax.lax.pmean(g, "batch"), state, params)

  u, state = jax.pmap(step, axis_name="batch")(stacked, rep(tx.init(w)), rep(w))
  for i in range(n):
    np.testing.assert_array_equal(np.asarray(w) + np.asarray(u[i]), WEIGHTS[0])
    np.testing.assert_array_equal(state.momentum[i], MOMENTA[0])
  assert np.all(np.asarray(state.count) == 1)


def test_bop_pmap_two_devices():
  check_on_two_devices("test_bop", "_pmap_check")


def _labels(params):
  return jax.tree.map(lambda b: "binary" if b else "real", optim.binary_mask(params))


def test_bop_orbax_round_trip(tmp_path):
  params = _tree(jnp.array([[0.5, -0.5], [0.25, -0.25], [1.0, 0.0]]))
  grads = jax.tree.map(lambda x: jnp.linspace(-1, 1, x.size).reshape(x.shape), params)
  tx = optax.multi_transform(
      {"binary": optax.inject_hyperparams(optim.bop)(threshold=0.1, gamma=0.25, mask=None),
       "real": optax.adam(1e-2)}, _labels)
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
  jax.tree.map(np.testing.assert_array_equal, tx.update(grads, restored, params),
               tx.update(grads, state, params))


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


def test_default_bop_config():
  c = _config()
  assert (c.optim.bop.threshold, c.optim.bop.gamma) == (1e-8, 1e-4)   # larq.optimizers.Bop
  assert "bop" in optim.OPTIMIZER_NAMES and "bop" not in optim.OPTIMIZERS
  with pytest.raises(ValueError, match="valid names: adam, adamw, sgd, bop"):
    optim.build_optimizer(_config(name="lamb"), steps_per_epoch=10)


def test_build_optimizer_bop_flips_binary_and_adams_the_rest():
  w0 = np.array([[0.5, -0.5], [0.25, -0.25], [0.75, 0.125]], np.float32)
  params = _tree(jnp.asarray(w0), kernel=jnp.linspace(-1, 1, 6).reshape(3, 2))
  gb = [np.array([[1.0, 1.0], [-1.0, -1.0], [0.5, 0.0]], np.float32),    # step 1
        np.array([[0.0, 0.0], [0.0, 0.0], [1.0, -1.0]], np.float32)]     # step 2
  c = _config(name="bop", schedule="constant", lr=0.1, weight_decay=0.1,
              **{"bop.threshold": 0.3, "bop.gamma": 0.5})
  tx, lr = optim.build_optimizer(c, steps_per_epoch=10)
  assert float(lr(7)) == pytest.approx(0.1)
  # Reference for the real leaves: L2 on `kernel` then Adam, on the real leaves alone.
  real_tx = optax.chain(optax.add_decayed_weights(0.1, mask=optim.real_kernel_mask),
                        optax.adam(0.1))
  real = params["head"]
  real_state = real_tx.init(real)
  state = tx.init(params)
  update = jax.jit(tx.update)
  # step 1: m1 = 0.5 g1 = [[.5, .5], [-.5, -.5], [.25, 0]]; sign(w) m1 > 0.3 at (0,0), (1,1)
  #         w1 = [[-.5, -.5], [.25, .25], [.75, .125]]
  # step 2: m2 = 0.5 m1 + 0.5 g2 = [[.25, .25], [-.25, -.25], [.625, -.5]]
  #         sign(w1) m2 = [[-.25, -.25], [-.25, -.25], [.625, -.5]] > 0.3 at (2,0)
  #         w2 = [[-.5, -.5], [.25, .25], [-.75, .125]]
  expected = [np.array([[-0.5, -0.5], [0.25, 0.25], [0.75, 0.125]], np.float32),
              np.array([[-0.5, -0.5], [0.25, 0.25], [-0.75, 0.125]], np.float32)]
  for k in range(2):
    grads = {"block1": {"BinaryConv_0": {"binary_kernel": jnp.asarray(gb[k])}},
             "head": jax.tree.map(lambda x, k=k: (k + 1) * jnp.ones_like(x), params["head"])}
    u, state = update(grads, state, params)
    ru, real_state = real_tx.update(grads["head"], real_state, real)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u["head"], ru)
    real = optax.apply_updates(real, ru)
    params = optax.apply_updates(params, u)
    np.testing.assert_array_equal(_bk(params), expected[k])
    np.testing.assert_array_equal(np.abs(_bk(params)), np.abs(w0))   # magnitudes never change


@pytest.mark.parametrize("schedule,tau,flips", [("constant", 0.74, True), ("lr", 0.74, False),
                                                 ("lr", 0.72, True)])
def test_build_optimizer_bop_gamma_can_follow_the_learning_rate(schedule, tau, flips):
  # linear lr 0.1 -> 0 over 10 steps: lr(0) = 0.1, lr(1) = 0.09; gamma 0.5 scaled by lr(t) / 0.1
  # is 0.5 then 0.45. w = 0.5, g = 1 twice. m1 = 0.5 (no flip, tau > 0.5); m2 = 0.5 m1 + 0.5 =
  # 0.75 (constant) or 0.55 m1 + 0.45 = 0.725 (lr): tau 0.74 separates them, 0.72 does not.
  c = _config(name="bop", schedule="linear", lr=0.1,
              **{"bop.threshold": tau, "bop.gamma": 0.5, "bop.schedule": schedule})
  tx, _ = optim.build_optimizer(c, steps_per_epoch=1)
  params = _tree(jnp.array([0.5]))
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  u, state = tx.update(grads, state, params)
  np.testing.assert_array_equal(_bk(u), [0.0])
  u, _ = tx.update(grads, state, params)
  np.testing.assert_array_equal(_bk(u), [-1.0] if flips else [0.0])


def test_build_optimizer_bop_bad_schedule_is_named():
  with pytest.raises(ValueError, match="optim.bop.schedule 'exp'; valid names: constant, lr"):
    optim.build_optimizer(_config(name="bop", **{"bop.schedule": "exp"}), steps_per_epoch=4)
  with pytest.raises(ValueError, match=r"bop: gamma must be in \[0, 1\], got 1.5"):
    optim.build_optimizer(_config(name="bop", **{"bop.gamma": 1.5, "bop.schedule": "lr"}),
                          steps_per_epoch=4)
  with pytest.raises(ValueError, match="needs optim.lr > 0"):
    optim.build_optimizer(_config(name="bop", lr=0.0, **{"bop.schedule": "lr"}),
                          steps_per_epoch=4)


def test_build_optimizer_bop_with_agc_runs_under_jit():
  c = _config(name="bop", agc_clip=0.02, schedule="cosine", warmup_epochs=1.0)
  tx, _ = optim.build_optimizer(c, steps_per_epoch=4)
  params = _tree(jnp.array([[0.5, -0.5], [0.25, -0.25], [1.0, 0.0]]))
  u, _ = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(u))
  # defaults tau = 1e-8, gamma = 1e-4: m = 1e-4 * (clipped g > 0) > tau, so every w >= 0 flips
  w = np.asarray(_bk(params))
  np.testing.assert_array_equal(_bk(u), np.where(w >= 0, -2 * w, 0.0))


@pytest.mark.parametrize("fields,named", [
    ({"w_reg.enabled": True}, "optim.w_reg.enabled"),
    ({"cosine_momentum.enabled": True}, "optim.cosine_momentum.enabled"),
    ({"binary_weight_decay": 1e-5}, "optim.binary_weight_decay > 0"),
])
def test_build_optimizer_bop_refuses_magnitude_terms(fields, named):
  with pytest.raises(ValueError, match=rf"optim.name='bop' cannot be combined with {named}"):
    optim.build_optimizer(_config(name="bop", **fields), steps_per_epoch=10)
  # all conflicts are named at once
  c = _config(name="bop", binary_weight_decay=1e-5,
              **{"w_reg.enabled": True, "cosine_momentum.enabled": True})
  with pytest.raises(ValueError, match="w_reg.enabled, optim.cosine_momentum.enabled, optim.binary"):
    optim.build_optimizer(c, steps_per_epoch=10)


# --- the logged flip ratio under Bop ---------------------------------------------------------------


def test_flip_ratio_after_bop_update_counts_the_flips():
  # Two binary layers of different sizes, so the pooled ratio differs from the mean of the
  # per-layer ratios. tau = 0, gamma = 1: m = g, flip where sign(w) * g > 0.
  params = {"a": {"binary_kernel": jnp.array([[0.5, -0.25], [0.125, -1.0]])},
            "b": {"binary_kernel": jnp.array([0.75, -0.5, 0.25, -0.125, 0.5, 0.25])},
            "head": {"kernel": jnp.ones((2, 2))}}
  grads = {"a": {"binary_kernel": jnp.array([[1.0, 1.0], [-1.0, -1.0]])},     # flips (0,0), (1,1)
           "b": {"binary_kernel": jnp.array([1.0, 0.0, 0.0, 0.0, 0.0, -1.0])},  # flips 0
           "head": {"kernel": jnp.ones((2, 2))}}
  c = _config(name="bop", **{"bop.threshold": 0.0, "bop.gamma": 1.0})
  tx, _ = optim.build_optimizer(c, steps_per_epoch=10)
  u, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, u)
  s = weight_stats.latent_weight_stats(new, prev_params=params)
  assert s["a"]["flip_ratio"] == 2 / 4
  assert s["b"]["flip_ratio"] == 1 / 6
  assert s["overall"]["flip_ratio"] == 3 / 10                        # hand count: 3 of 10
  # Bop keeps every |w|, so the other statistics, alpha and e_q included, do not move.
  before = weight_stats.latent_weight_stats(params)
  for layer in ("a", "b", "overall"):
    for key in ("mean_abs", "quant_error", "tail_frac", "alpha_tail_frac"):
      assert s[layer][key] == pytest.approx(before[layer][key], abs=1e-12), (layer, key)
