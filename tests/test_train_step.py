"""The train step on a tiny synthetic batch (no archive): loss, metric sums, teacher slot."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnn_jax import data, losses, models, objectives, teacher as teacher_lib, train_lib

MEAN, STD = data.CIFAR10_MEAN, data.CIFAR10_STD
N, BATCH = 32, 8


@pytest.fixture(scope="module")
def tiny():
  """A width-0.125 ReActNet with one block per stage (cheap to compile), synthetic data."""
  model = models.ReActNet18(width=0.125, blocks_per_stage=(1, 1, 1, 1))
  tx = optax.sgd(0.1)
  state = train_lib.create_state(model, tx, jax.random.key(0))
  rs = np.random.RandomState(0)
  images = rs.randint(0, 256, (N, 32, 32, 3)).astype(np.uint8)
  labels = rs.randint(0, 10, (N,)).astype(np.int32)
  return model, state, images, labels


def pmapped(step, teacher=False):
  axes = (0, 0, None, None, 0, None) + ((0,) if teacher else ())
  return jax.pmap(step, axis_name="batch", in_axes=axes, devices=jax.local_devices()[:1])


def one_device(tree):
  return jax.tree.map(lambda x: np.asarray(x)[None], tree)


def test_step_minimises_the_objective_and_sums_its_metrics(tiny):
  model, state, images, labels = tiny
  step = train_lib.make_train_step(objectives.classification(10), mean=MEAN, std=STD,
                                   augment=False)
  p_step = pmapped(step)
  idx = np.arange(BATCH, dtype=np.int32)[None]
  x = data.normalize(images[:BATCH], MEAN, STD)
  logits, _ = model.apply(state.variables(), x, train=True, mutable=["batch_stats"])
  want_loss = float(np.mean(losses.cross_entropy(logits, labels[:BATCH], 10)))
  want_acc = float(np.mean(np.argmax(logits, -1) == labels[:BATCH]))

  zeros = one_device({"loss": np.float32(0), "accuracy": np.float32(0), "nonfinite": np.float32(0)})
  st, sums, m1 = p_step(one_device(state), zeros, images, labels, idx, jax.random.key(0))
  assert set(m1) == {"loss", "accuracy", "nonfinite"}
  np.testing.assert_allclose(float(m1["loss"][0]), want_loss, rtol=1e-5)
  assert float(m1["accuracy"][0]) == pytest.approx(want_acc)
  assert int(st.step[0]) == 1
  st, sums, m2 = p_step(st, sums, images, labels, idx + BATCH, jax.random.key(1))
  # the running sums are the sum of the two steps' metrics
  np.testing.assert_allclose(float(sums["loss"][0]), float(m1["loss"][0] + m2["loss"][0]),
                             rtol=1e-6)
  moved = [float(np.abs(a[0] - b).max()) for a, b in
           zip(jax.tree.leaves(st.params), jax.tree.leaves(state.params))]
  assert max(moved) > 0


def test_teacher_slot_kl_term_and_frozen_teacher(tiny):
  """A plain KL term against a frozen teacher: its value, its gradient, the teacher untouched."""
  model, state, images, labels = tiny
  t_model = models.ResNet18(block_cls=models.BasicBlockFP, width=0.125,
                            blocks_per_stage=(1, 1, 1, 1))
  t_vars = jax.jit(functools.partial(t_model.init, train=False))(
      jax.random.key(3), jnp.zeros((1, 32, 32, 3)))
  teacher = teacher_lib.Teacher(t_vars, t_model.apply)
  before = jax.tree.map(np.array, t_vars)
  objective = objectives.distillation(10, semantic_weight=0.5, cosine_weight=0.0,
                                      temperature=2.0)
  assert objective.needs_teacher and not objective.needs_features  # KL only: no intermediates
  step = train_lib.make_train_step(objective, mean=MEAN, std=STD, augment=False)
  p_step = pmapped(step, teacher=True)
  idx = np.arange(BATCH, dtype=np.int32)[None]
  x = data.normalize(images[:BATCH], MEAN, STD)
  logits, _ = model.apply(state.variables(), x, train=True, mutable=["batch_stats"])
  t_logits = t_model.apply(t_vars, x, train=False)
  want_ce = float(np.mean(losses.cross_entropy(logits, labels[:BATCH], 10)))
  want_kl = float(losses.distillation_kl(logits, t_logits, 2.0))
  assert want_kl > 1e-3

  zeros = one_device({k: np.float32(0) for k in ("loss", "ce", "kl", "semantic", "accuracy", "nonfinite")})
  replicated_teacher = one_device(teacher)
  st, _, m = p_step(one_device(state), zeros, images, labels, idx, jax.random.key(0),
                    replicated_teacher)
  np.testing.assert_allclose(float(m["ce"][0]), want_ce, rtol=1e-5)
  np.testing.assert_allclose(float(m["kl"][0]), want_kl, rtol=1e-4)
  np.testing.assert_allclose(float(m["loss"][0]), want_ce + 0.5 * want_kl, rtol=1e-5)
  for _ in range(3):
    st, _, m = p_step(st, zeros, images, labels, idx, jax.random.key(0), replicated_teacher)
  # never donated (still readable) and never changed, bit for bit
  for a, b in zip(jax.tree.leaves(replicated_teacher.variables), jax.tree.leaves(before)):
    np.testing.assert_array_equal(np.asarray(a)[0], b)

  # the KL term pulls the student: its gradient equals the difference of the two objectives'
  ce_only = train_lib.make_train_step(objectives.classification(10), mean=MEAN, std=STD,
                                      augment=False)
  st_ce, _, _ = pmapped(ce_only)(one_device(state), one_device({"loss": np.float32(0),
                                                                 "accuracy": np.float32(0),
                                                                 "nonfinite": np.float32(0)}),
                                 images, labels, idx, jax.random.key(0))
  st_kd, _, _ = p_step(one_device(state), zeros, images, labels, idx, jax.random.key(0),
                       replicated_teacher)
  kl_grad = jax.grad(lambda p: losses.distillation_kl(
      model.apply({**state.variables(), "params": p}, x, train=True, mutable=["batch_stats"])[0],
      t_logits, 2.0))(state.params)
  # SGD(0.1): params_kd - params_ce = -0.1 * 0.5 * grad(KL)
  for a, b, g in zip(jax.tree.leaves(st_kd.params), jax.tree.leaves(st_ce.params),
                     jax.tree.leaves(kl_grad)):
    np.testing.assert_allclose(np.asarray(a)[0] - np.asarray(b)[0], -0.05 * np.asarray(g),
                               atol=2e-6)


def test_merge_sums_with_keys_that_differ_from_the_checkpoint():
  """A mid-epoch checkpoint with other metric keys resumes: each key counts its own steps."""
  carried = train_lib._partial_sums({"partial_sums": {"loss": 6.0, "accuracy": 1.5, "steps": 3}})
  assert carried == ({"loss": 6.0, "accuracy": 1.5}, {"loss": 3, "accuracy": 3})
  device_sums = {"loss": np.array([4.0]), "ce": np.array([3.0]), "accuracy": np.array([1.0])}
  totals, counts = train_lib._merge_sums(carried, device_sums, 2)
  assert totals == {"loss": 10.0, "ce": 3.0, "accuracy": 2.5}
  assert counts == {"loss": 5, "ce": 2, "accuracy": 5}
  new_format = train_lib._partial_sums({"partial_sums": {"sums": totals, "counts": counts}})
  assert new_format == (totals, counts)


def test_bit_entropy_and_balance_record():
  assert train_lib.bit_entropy(0.5) == 1.0
  assert train_lib.bit_entropy(0.0) == train_lib.bit_entropy(1.0) == 0.0
  # H(0.25) = -0.25 log2 0.25 - 0.75 log2 0.75 = 0.5 + 0.311278 = 0.811278
  assert train_lib.bit_entropy(0.25) == pytest.approx(0.8112781245)
  rec = train_lib.balance_record({"a/sign": 0.5, "b/sign": 0.25})
  assert rec["balance/a/sign/entropy"] == 1.0
  assert rec["balance/overall/p_plus"] == pytest.approx(0.375)
  assert rec["balance/overall/entropy"] == pytest.approx((1.0 + 0.8112781245) / 2)
  assert train_lib.balance_record({}) == {}


def test_skip_policy_keeps_the_state_of_a_non_finite_step(tiny):
  model, state, images, labels = tiny
  update = jax.jit(train_lib.make_update(objectives.classification(10), axis_name=None,
                                         skip_nonfinite=True))
  x = np.asarray(data.normalize(images[:BATCH], MEAN, STD))
  bad = x.copy()
  bad[0, 0, 0, 0] = np.nan
  st, sums, m = update(state, {}, bad, labels[:BATCH])
  assert float(m["nonfinite"]) == 1.0 and int(st.step) == 1
  for a, b in zip(jax.tree.leaves((st.params, st.batch_stats, st.opt_state)),
                  jax.tree.leaves((state.params, state.batch_stats, state.opt_state))):
    np.testing.assert_array_equal(a, b)
  st, sums, m = update(st, sums, x, labels[:BATCH])  # a good step updates, and is counted so
  assert float(m["nonfinite"]) == 0.0 and float(sums["nonfinite"]) == 1.0
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(st.params),
                                                      jax.tree.leaves(state.params)))
