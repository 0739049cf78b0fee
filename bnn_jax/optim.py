"""Optax transforms for latent binary weights, parameter masks and the optimizer factory.

Method 1 of the thesis (docs/METHODS.md, "Method 1") as two composable optax transforms
that act on the latent (real-valued, pre-sign) binary weights:

* ``w_regularization``: adds lambda * dR/dw of the W-shaped regularizer
  R(w) = ||w| - t|^p / p, which pulls every weight toward +-t from both sides;
* ``variant_cosine_momentum``: a velocity that pulls weights beyond +-t (the "tail",
  which gets no task gradient through a clipped STE) back toward the band;
* ``tail_projection``: a control for it, the tail clipped to t + D after every step.

Both are gradient-side terms, like ``optax.add_decayed_weights``: chain them before
the base optimizer's scaling (``scale_by_adam`` / ``trace``) and the learning rate,
so ``scale_by_learning_rate`` turns them into steps that move ``w`` toward +-t.

``bop`` is a third transform, an alternative optimizer for the latent binary weights:
Bop (Helwegen et al., NeurIPS 2019) flips a weight's sign when an exponential moving
average of its gradient is strong enough, and never changes its magnitude
(``build_optimizer`` with ``optim.name = "bop"``: Bop on ``binary_kernel``, Adam on the rest).

Parameters are selected by name: latent binary weights are leaves called
``binary_kernel`` (``binary_mask``), real-valued weights ``kernel``
(``real_kernel_mask``), so any JAX model that follows the convention works.
The output channel is the last axis of every kernel (conv HWIO, dense (in, out)).

This module imports no Flax.

>>> import jax.numpy as jnp, optax
>>> params = {"conv": {"binary_kernel": jnp.array([[-1.5, 0.5]])}, "head": {"kernel": jnp.ones((2,))}}
>>> tx = optax.chain(w_regularization(1e-4), variant_cosine_momentum(1e-4), optax.adam(1e-3))
>>> state = tx.init(params)
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

BINARY_KERNEL = "binary_kernel"
REAL_KERNEL = "kernel"
MEAN_ABS = "mean_abs"
INIT_MEAN_ABS = "init_mean_abs"   # t = mean|w| per output channel of the initial weights, fixed
TARGETS = (MEAN_ABS, INIT_MEAN_ABS)

OPTIMIZERS = ("adam", "adamw", "sgd")         # optax aliases that train every parameter
BINARY_OPTIMIZERS = ("bop",)                  # binary_kernel by this, the rest by Adam
OPTIMIZER_NAMES = OPTIMIZERS + BINARY_OPTIMIZERS  # valid values of optim.name
PLACEMENTS = ("gradient", "decoupled")
BOP_SCHEDULES = ("constant", "lr")
SCHEDULES = ("cosine", "linear", "constant")

ScalarOrSchedule = Union[float, jax.Array, Callable[[jax.Array], jax.Array]]
Target = Union[float, str]
Mask = Union[str, Any, Callable[[Any], Any], None]


# --- masks ------------------------------------------------------------------------


def _leaf_name(path) -> str:
  """Name of the last key of a tree path (dict key, attribute name or index)."""
  if not path:
    return ""
  k = path[-1]
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def path_to_str(path) -> str:
  """'block1/BinaryConv_0/binary_kernel' for a tree path of dict keys / attributes / indices."""
  return "/".join(_leaf_name((k,)) for k in path)


def _name_mask(params, name: str):
  return jax.tree_util.tree_map_with_path(lambda path, _: _leaf_name(path) == name, params)


def binary_mask(params):
  """Pytree of bools: True for the latent binary weights (leaves named ``binary_kernel``)."""
  return _name_mask(params, BINARY_KERNEL)


def real_kernel_mask(params):
  """Pytree of bools: True for real-valued weights (leaves named ``kernel``).

  Biases, BN scale/bias and latent binary kernels are False: this is the mask for
  ordinary weight decay.
  """
  return _name_mask(params, REAL_KERNEL)


# --- shared math ------------------------------------------------------------------


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_target(target: Target, valid: tuple[str, ...] = (MEAN_ABS,)) -> None:
  if isinstance(target, str) and target not in valid:
    raise ValueError(f"target must be a float or one of {', '.join(map(repr, valid))}, "
                     f"got {target!r}.")


def channel_mean_abs(w: jax.Array) -> jax.Array:
  """mean|w| per output channel (over all axes but the last, kept for broadcasting; over the
  whole leaf for 0-d and 1-d leaves), under ``stop_gradient``: the binarizer's alpha."""
  axes = tuple(range(w.ndim - 1)) if w.ndim > 1 else None
  return jax.lax.stop_gradient(jnp.mean(jnp.abs(w), axis=axes, keepdims=True))


def target_magnitude(w: jax.Array, target: Target = 1.0) -> jax.Array:
  """The target magnitude t for latent weights ``w``.

  A float t is returned as is. ``"mean_abs"`` gives t = mean|w| per output channel
  (``channel_mean_abs``), under ``stop_gradient``: the binarizer's scale alpha = mean|W|.
  (``"init_mean_abs"``, the same of the initial weights, is kept in a transform's state.)
  """
  _check_target(target)
  if isinstance(target, str):
    return channel_mean_abs(w)
  return target


def _sign(w: jax.Array) -> jax.Array:
  """sign with sign(0) = +1 (the library convention, docs/METHODS.md "Conventions")."""
  return jnp.where(w >= 0, 1.0, -1.0).astype(w.dtype)


def w_regularizer(w: jax.Array, power: int = 2, target: Target = 1.0) -> jax.Array:
  """Elementwise W-shaped regularizer R(w) = ||w| - t|^p / p (sum it for the total)."""
  t = target_magnitude(w, target)
  return jnp.abs(jnp.abs(w) - t) ** power / power


def w_regularizer_grad(w: jax.Array, power: int = 2, target: Target = 1.0) -> jax.Array:
  """dR/dw = sign(w) * sign(|w| - t) * ||w| - t|^(p-1), with fixed subgradient choices.

  * ``|w| = t``: 0 (sign(0) = 0 for the ``|w| - t`` factor: the minimum; for p = 2
    this is the true derivative, for p = 1 the zero subgradient).
  * ``w = 0``: sign(0) = +1 for the ``sign(w)`` factor, as everywhere in this
    library, so dR/dw(0) = -t^(p-1): the regularizer pushes an exact zero toward
    +t, the value it already binarizes to, instead of leaving it stuck on the
    peak of the W (the symmetric subgradient 0 would).
  """
  d = jnp.abs(w) - target_magnitude(w, target)
  # sign(d) * |d|^(p-1) is written branch-free so ``power`` may be a traced value
  # (optax.inject_hyperparams turns numeric arguments into arrays).
  return _sign(w) * jnp.sign(d) * jnp.abs(d) ** (power - 1)


def cosine_ramp(d: jax.Array, width: float) -> jax.Array:
  """m(d) = (1 - cos(pi * min(d, D) / D)) / 2 for d >= 0: 0 at d = 0, 1/2 at D/2, 1 from D on.

  C1-smooth: m'(0) = m'(D) = 0, so weights at the band feel nothing.
  """
  return (1.0 - jnp.cos(math.pi * jnp.minimum(d, width) / width)) / 2.0


def _value(strength: ScalarOrSchedule, count: jax.Array):
  return strength(count) if callable(strength) else strength


def _warn_if_nothing_selected(name: str, params) -> None:
  if not jax.tree.leaves(params):
    warnings.warn(f"{name}: the mask selects no parameters, so it does nothing (are the latent "
                  f"binary weights named {BINARY_KERNEL!r}?).", stacklevel=3)


def _need_params(name: str, params) -> None:
  if params is None:
    raise ValueError(f"{name} needs the current parameters: call "
                     f"tx.update(updates, opt_state, params) (params is None).")


def _maybe_masked(tx: optax.GradientTransformation, mask: Mask, name: str):
  """``optax.masked(tx, mask)``; a string mask selects the leaves with that name."""
  if mask is None:
    return tx
  if isinstance(mask, str):
    leaf = mask
    mask = lambda params: _name_mask(params, leaf)
  elif isinstance(mask, (bool, jax.Array, np.ndarray)):
    # optax.inject_hyperparams treats every callable argument as a schedule and
    # replaces it by its value at the step count: a callable mask arrives here as a bool.
    raise ValueError(
        f"{name}: mask must be a leaf name, a callable or a pytree of bools, got {mask!r}. "
        f"Under optax.inject_hyperparams pass a callable mask with static_args='mask', "
        f"or a leaf name such as mask='binary_kernel'.")
  return optax.masked(tx, mask)


# --- W-regularizer -------------------------------------------------------------------


class WRegularizationState(NamedTuple):
  """State of ``w_regularization``: the step count (for a strength schedule)."""
  count: jax.Array


def w_regularization(strength: ScalarOrSchedule, power: int = 2, target: Target = 1.0,
                     mask: Mask = BINARY_KERNEL) -> optax.GradientTransformation:
  r"""Adds lambda * dR/dw of the W-shaped regularizer to the updates of masked weights.

  R(w) = ||w| - t|^p / p,  p in {1, 2}
  dR/dw = sign(w) * sign(|w| - t) * ||w| - t|^(p-1)   (see ``w_regularizer_grad``
  for the subgradients at w = 0, sign(0) = +1, and at |w| = t, 0)

  Unlike L1/L2 decay, which pulls toward 0, the gradient pulls every weight toward
  +-t from both sides: inside the band (|w| < t) outward, outside it inward.
  Like ``optax.add_decayed_weights`` it adds to the gradient, so chain it before the
  optimizer's scaling and the learning rate.

  Source: the "W-shaped" regularizer of ProxQuant (Bai, Wang & Liberty, ICLR 2019)
  and BNN+ (Darabi et al., 2018); our concrete form is docs/METHODS.md, "Method 1".

  Args:
    strength: lambda, a float or an optax schedule of the step count (e.g. a ramp
      ``optax.linear_schedule(0., 1e-4, 1000)``); the count starts at 0 on the first update.
    power: p, 1 or 2.
    target: t, a float, or ``"mean_abs"`` for mean|w| per output channel (last axis),
      under stop_gradient.
    mask: which leaves, via ``optax.masked``: a leaf name (default ``"binary_kernel"``,
      the same selection as ``binary_mask``), a callable params -> pytree of bools,
      a pytree of bools, or None for every leaf. A name is safest under
      ``optax.inject_hyperparams``, which treats callables as schedules (pass a
      callable mask there with ``static_args="mask"``).

  Returns:
    An ``optax.GradientTransformation``; its ``update`` needs ``params``.

  >>> import jax.numpy as jnp
  >>> tx = w_regularization(1.0, power=2, target=1.0, mask=None)
  >>> w = jnp.array([-1.5, -0.5, 0.0, 0.5, 1.0, 2.0])
  >>> tx.update(jnp.zeros(6), tx.init(w), w)[0]
  Array([-0.5,  0.5, -1. , -0.5,  0. ,  1. ], dtype=float32)
  """
  if _is_concrete(power) and power not in (1, 2):
    raise ValueError(f"w_regularization: power must be 1 or 2, got {power!r}.")
  _check_target(target)

  def init_fn(params):
    _warn_if_nothing_selected("w_regularization", params)
    return WRegularizationState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    _need_params("w_regularization", params)
    lam = _value(strength, state.count)
    updates = jax.tree.map(
        lambda g, w: g + (lam * w_regularizer_grad(w, power, target)).astype(g.dtype),
        updates, params)
    return updates, WRegularizationState(count=optax.safe_int32_increment(state.count))

  return _maybe_masked(optax.GradientTransformation(init_fn, update_fn), mask,
                       "w_regularization")


# --- variant cosine momentum -------------------------------------------------------------


class VariantCosineMomentumState(NamedTuple):
  """State of ``variant_cosine_momentum``: step count, one velocity per masked leaf, and
  t per leaf for ``target="init_mean_abs"`` (None otherwise)."""
  count: jax.Array
  velocity: Any
  target: Any = None


def variant_cosine_momentum(strength: ScalarOrSchedule, decay: float = 0.9, width: float = 0.5,
                            target: Target = 1.0,
                            mask: Mask = BINARY_KERNEL) -> optax.GradientTransformation:
  r"""Adds kappa * v, a velocity pulling tail weights (|w| > t) back toward +-t.

  d = max(|w| - t, 0)
  m(d) = (1 - cos(pi * min(d, D) / D)) / 2        (0 at the band, 1 beyond D; C1-smooth)
  v <- mu * v + m(d) * sign(w)
  updates <- updates + kappa * v

  The term is added to the gradient (optax sign convention), so after
  ``scale_by_learning_rate`` (-lr) a weight beyond +t moves down and one beyond -t
  moves up: |w| decreases. Weights with a clipped STE get no task gradient beyond
  the clip, so without this they never come back. The force m(d) sign(w) is 0 at the
  band, but the velocity is not: with mu = 0.9, |v| reaches 10, so a weight pulled back
  keeps moving inside the band and can cross zero. With ``target="mean_abs"`` the tail
  never empties (~40% of a channel lies above its own mean) and t falls as the tail is
  pulled in: the latent scale collapses (docs/METHODS.md, "Method 1"; docs/RESULTS.md,
  "Mechanisms"). This is the project's own definition, a momentum variant with a cosine
  ramp. sign(w) only matters where |w| > t >= 0, so the sign(0) convention does not arise.

  Args:
    strength: kappa, a float or an optax schedule of the step count.
    decay: mu, the velocity decay.
    width: D > 0, the distance beyond t at which the pull saturates.
    target: t, a float, ``"mean_abs"`` (mean|w| per output channel, stop_gradient, so t
      moves with the weights) or ``"init_mean_abs"`` (the same of the weights ``init``
      sees, then fixed: the target no longer follows the weights).
    mask: as in ``w_regularization`` (default ``"binary_kernel"``).

  Returns:
    An ``optax.GradientTransformation`` with ``VariantCosineMomentumState(count, velocity,
    target)`` (under ``optax.masked``); its ``update`` needs ``params``.

  >>> import jax.numpy as jnp
  >>> tx = variant_cosine_momentum(1.0, decay=0.5, width=1.0, target="init_mean_abs", mask=None)
  >>> state = tx.init(jnp.array([1.0, -3.0]))            # t = 2, fixed from here on
  >>> tx.update(jnp.zeros(2), state, jnp.array([1.0, -3.0]))[0]  # d = 0, 1: m = 0, 1
  Array([ 0., -1.], dtype=float32)
  """
  if _is_concrete(width) and not width > 0:
    raise ValueError(f"variant_cosine_momentum: width must be > 0, got {width!r}.")
  _check_target(target, TARGETS)
  fixed = target == INIT_MEAN_ABS

  def init_fn(params):
    _warn_if_nothing_selected("variant_cosine_momentum", params)
    return VariantCosineMomentumState(
        count=jnp.zeros([], jnp.int32), velocity=jax.tree.map(jnp.zeros_like, params),
        target=jax.tree.map(channel_mean_abs, params) if fixed else None)

  def update_fn(updates, state, params=None):
    _need_params("variant_cosine_momentum", params)
    targets = state.target if fixed else jax.tree.map(lambda w: target_magnitude(w, target),
                                                      params)

    def new_velocity(v, w, t):
      d = jnp.maximum(jnp.abs(w) - t, 0.0)
      return (decay * v + cosine_ramp(d, width) * _sign(w)).astype(v.dtype)

    velocity = jax.tree.map(new_velocity, state.velocity, params, targets)
    kappa = _value(strength, state.count)
    updates = jax.tree.map(lambda g, v: g + (kappa * v).astype(g.dtype), updates, velocity)
    return updates, VariantCosineMomentumState(
        count=optax.safe_int32_increment(state.count), velocity=velocity, target=state.target)

  return _maybe_masked(optax.GradientTransformation(init_fn, update_fn), mask,
                       "variant_cosine_momentum")


# --- tail projection ------------------------------------------------------------------


def tail_projection(width: float = 0.05, target: Target = MEAN_ABS,
                    mask: Mask = BINARY_KERNEL) -> optax.GradientTransformation:
  r"""Projects every masked weight back into the band: |w + u| <= t + D after the step.

  u <- clip(w + u, -(t + D), t + D) - w        (t from the current w, per output channel)

  The tail (|w| > t + D) is removed outright at every step, with no velocity: a control for
  ``variant_cosine_momentum``, whose pull of the same tail comes with a heavy-ball velocity
  (docs/METHODS.md, "Method 1"). It changes the final step, so chain it last, after the
  learning rate (``build_optimizer`` puts it at the very end). A weight already inside the
  band keeps its update unless the update carries it out of the band.

  Args:
    width: D >= 0, how far beyond t a weight may go.
    target: t, a float or ``"mean_abs"`` (mean|w| per output channel of the current weights).
    mask: as in ``w_regularization`` (default ``"binary_kernel"``).

  >>> import jax.numpy as jnp
  >>> tx = tail_projection(width=0.5, target=1.0, mask=None)
  >>> w = jnp.array([0.25, 1.25, -3.0])
  >>> tx.update(jnp.array([0.5, 0.5, 0.0]), tx.init(w), w)[0]  # to 0.75, 1.5, -1.5
  Array([0.5 , 0.25, 1.5 ], dtype=float32)
  """
  if _is_concrete(width) and not width >= 0:
    raise ValueError(f"tail_projection: width must be >= 0, got {width!r}.")
  _check_target(target)

  def init_fn(params):
    _warn_if_nothing_selected("tail_projection", params)
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    _need_params("tail_projection", params)

    def project(u, w):
      bound = target_magnitude(w, target) + width
      return (jnp.clip(w + u, -bound, bound) - w).astype(u.dtype)

    return jax.tree.map(project, updates, params), state

  return _maybe_masked(optax.GradientTransformation(init_fn, update_fn), mask,
                       "tail_projection")


# --- placement ------------------------------------------------------------------------


class DecoupledState(NamedTuple):
  """State of ``decoupled``: the step count (for the learning-rate schedule) and the inner state."""
  count: jax.Array
  inner: optax.OptState


def decoupled(term: optax.GradientTransformation,
              learning_rate: ScalarOrSchedule) -> optax.GradientTransformation:
  r"""Applies a gradient-side ``term`` after the optimizer, scaled by -learning_rate.

  updates <- updates - lr(step) * term(0)

  where term(0) is what ``term`` would add to an all-zero gradient (e.g. lambda * dR/dw
  for ``w_regularization``). Chained *after* the optimizer's scaling and learning rate,
  the step of the term is -lr(step) * lambda * dR/dw whatever Adam's per-element
  statistics, as AdamW decouples weight decay (Loshchilov & Hutter, ICLR 2019). The two
  placements of the method-1 terms (docs/METHODS.md, "Method 1"):

    "gradient":  optax.chain(w_regularization(lam), optax.adam(lr))
    "decoupled": optax.chain(optax.adam(lr), decoupled(w_regularization(lam), lr))

  >>> import jax.numpy as jnp, optax
  >>> w = jnp.array([0.5, -2.0])
  >>> tx = decoupled(w_regularization(1.0, target=1.0, mask=None), 0.1)
  >>> tx.update(jnp.zeros(2), tx.init(w), w)[0]  # -0.1 dR/dw: both move toward +-1
  Array([0.05, 0.1 ], dtype=float32)
  """

  def init_fn(params):
    return DecoupledState(count=jnp.zeros([], jnp.int32), inner=term.init(params))

  def update_fn(updates, state, params=None):
    added, inner = term.update(jax.tree.map(jnp.zeros_like, updates), state.inner, params)
    lr = _value(learning_rate, state.count)
    updates = jax.tree.map(lambda u, a: u - (lr * a).astype(u.dtype), updates, added)
    return updates, DecoupledState(count=optax.safe_int32_increment(state.count), inner=inner)

  return optax.GradientTransformation(init_fn, update_fn)


def delayed_ramp(strength: float, start_steps: int, ramp_steps: int) -> ScalarOrSchedule:
  """0 for ``start_steps``, then linear 0 -> strength over ``ramp_steps`` (a float if both 0)."""
  if start_steps <= 0 and ramp_steps <= 0:
    return strength
  return optax.join_schedules(
      [optax.constant_schedule(0.0), optax.linear_schedule(0.0, strength, max(ramp_steps, 1))],
      [max(start_steps, 0)])


# --- Bop: the binary optimizer -----------------------------------------------------------


class BopState(NamedTuple):
  """State of ``bop``: the step count (for schedules) and the gradient average m per masked leaf."""
  count: jax.Array
  momentum: Any


def _check_bop_args(threshold: ScalarOrSchedule, gamma: ScalarOrSchedule) -> None:
  """Range checks of float (not schedule, not traced) Bop hyperparameters."""
  if not callable(threshold) and _is_concrete(threshold) and not threshold >= 0:
    raise ValueError(f"bop: threshold (tau) must be >= 0, got {threshold!r}.")
  if not callable(gamma) and _is_concrete(gamma) and not 0 <= gamma <= 1:
    raise ValueError(f"bop: gamma must be in [0, 1], got {gamma!r}.")


def bop_flips(momentum: jax.Array, w: jax.Array, threshold) -> jax.Array:
  """Bool array: where Bop flips w, i.e. |m| > tau and sign(m) = sign(w) (sign(0) = +1).

  Written as ``sign(w) * m > tau``, which is the same for tau >= 0 (it needs m != 0,
  so sign(m) is never the sign(0) case) and is larq's ``w * m > tau`` for w = +-1.
  """
  return _sign(w) * momentum > threshold


def bop(threshold: ScalarOrSchedule = 1e-8, gamma: ScalarOrSchedule = 1e-4,
        mask: Mask = BINARY_KERNEL) -> optax.GradientTransformation:
  r"""Bop, the binary optimizer: flips a weight's sign when its averaged gradient says so.

  Per masked weight w with gradient g_t (m_0 = 0):

    m_t  = (1 - gamma) * m_{t-1} + gamma * g_t              (exponential moving average)
    flip = |m_t| > tau  and  sign(m_t) = sign(w)            (the gradient pushes w to the other sign)
    update = -2 w where flip, 0 elsewhere                    (optax.apply_updates: w -> -w)

  sign(0) = +1 (``_sign``, the library convention). m is not reset after a flip: it
  now points against the new sign, so the weight stays until the average turns.
  The update is the new parameter minus the old, so the transform is a complete
  optimizer for its leaves: apply it directly, with no learning rate after it.

  Latent magnitudes in this library. Bop's weights are +-1 (larq flips the sign).
  Here the latent ``binary_kernel`` leaves are binarized as alpha * sign(w) with
  alpha = mean|w| per output channel; w -> -w keeps |w|, so every latent magnitude,
  and with it alpha, stays at its initial value for the whole run (Bop trains only
  the signs; the following BatchNorm or gain absorbs the scale). Consequences:

  * the gradient that reaches w is the layer's STE gradient, alpha * dL/d(binary w)
    * 1[|w| <= clip]: tau is compared with m in those units (alpha times larq's), and
    a weight initialised beyond the clip (|w| > 1) gets no gradient and never flips;
  * a latent weight exactly 0 has the update -2 * 0 = 0: it stays 0 (binarized +1);
  * the logged flip ratio (``weight_stats``, sign changes of ``binary_kernel`` between
    epochs) counts exactly Bop's flips (except for such zeros, which do not flip);
  * for a layer that standardizes its latent kernel before binarizing
    (``standardize_weights``, the BN-free networks) a flip of w is not a flip of the
    binarized weight: the per-channel mean moves with it.

  Source: Helwegen, Widdicombe, Geiger, Liu, Cheng & Nusselder, "Latent weights do not
  exist: Rethinking binarized neural network optimization", NeurIPS 2019 (Algorithm 1);
  the defaults tau = 1e-8, gamma = 1e-4 are larq's (``larq.optimizers.Bop``), whose
  update is ``m += gamma * (g - m); w = sign(-sign(w * m - tau) * w)``.

  Args:
    threshold: tau >= 0, a float or an optax schedule of the step count (count 0 on
      the first update).
    gamma: the adaptivity rate in [0, 1], a float or a schedule (the paper decays it
      during training, as a learning rate).
    mask: which leaves, via ``optax.masked`` (default ``"binary_kernel"``; see
      ``w_regularization``). The other leaves' updates pass through unchanged, as
      under any ``optax.masked``: train them with ``optax.multi_transform``, as
      ``build_optimizer`` does, not by chaining another optimizer after this one.

  Returns:
    An ``optax.GradientTransformation`` with ``BopState(count, momentum)`` (under
    ``optax.masked``); its ``update`` needs ``params``.

  >>> import jax, jax.numpy as jnp, optax
  >>> params = {"conv": {"binary_kernel": jnp.array([0.5, -0.25, 0.75])}, "head": {"kernel": jnp.ones(2)}}
  >>> labels = lambda p: jax.tree.map(lambda b: "binary" if b else "real", binary_mask(p))
  >>> tx = optax.multi_transform({"binary": bop(threshold=0.1, gamma=0.5, mask=None),
  ...                             "real": optax.adam(1e-3)}, labels)
  >>> grads = {"conv": {"binary_kernel": jnp.array([0.4, 0.4, -0.4])}, "head": {"kernel": jnp.ones(2)}}
  >>> u, _ = tx.update(grads, tx.init(params), params)  # m = [0.2, 0.2, -0.2]: only w = 0.5 flips
  >>> optax.apply_updates(params, u)["conv"]["binary_kernel"]
  Array([-0.5 , -0.25,  0.75], dtype=float32)
  """
  _check_bop_args(threshold, gamma)

  def init_fn(params):
    _warn_if_nothing_selected("bop", params)
    return BopState(count=jnp.zeros([], jnp.int32),
                    momentum=jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None):
    _need_params("bop", params)
    g_t = _value(gamma, state.count)
    tau = _value(threshold, state.count)
    momentum = jax.tree.map(lambda m, g: ((1 - g_t) * m + g_t * g).astype(m.dtype),
                            state.momentum, updates)
    updates = jax.tree.map(
        lambda m, w, g: jnp.where(bop_flips(m, w, tau), -2 * w, 0).astype(g.dtype),
        momentum, params, updates)
    return updates, BopState(count=optax.safe_int32_increment(state.count), momentum=momentum)

  return _maybe_masked(optax.GradientTransformation(init_fn, update_fn), mask, "bop")


# --- optimizer from a config ------------------------------------------------------------


def default_optim_config() -> ml_collections.ConfigDict:
  """The ``config.optim`` section with defaults (provisional: benchmarks decide them).

  ``w_reg.target`` and ``cosine_momentum.target`` accept a float or ``"mean_abs"``
  (also from the command line: ``--config.optim.w_reg.target=mean_abs``).
  """
  o = ml_collections.ConfigDict()
  o.name = "adam"                   # adam | adamw | sgd | bop (Bop on binary_kernel, Adam on the rest)
  o.lr = 1e-3                       # peak learning rate
  o.schedule = "cosine"             # cosine | linear | constant; decays to 0 at the end
  o.warmup_epochs = 0.0             # linear warmup from 0; 0 = none
  o.momentum = 0.9                  # sgd
  o.nesterov = True                 # sgd
  o.b1 = 0.9                        # adam / adamw
  o.b2 = 0.999                      # adam / adamw
  o.weight_decay = 0.0              # real `kernel` leaves only; decoupled for adamw, L2 otherwise
  o.binary_weight_decay = 0.0       # plain L2 on latent `binary_kernel` (the classic baseline)
  o.agc_clip = 0.0                  # adaptive gradient clipping (BN-free: 0.02-0.04); 0 = off
  o.binary_lr_multiplier = 1.0      # the latent binary weights' step x this (their lr = x * lr)

  o.w_reg = ml_collections.ConfigDict()
  o.w_reg.enabled = False
  o.w_reg.strength = 1e-5           # lambda; 1e-4 froze the signs in the CPU ablation (docs/RESULTS.md)
  o.w_reg.power = 2                 # p in {1, 2}
  o.w_reg.target = ml_collections.FieldReference(1.0, field_type=object)  # float | "mean_abs"
  o.w_reg.ramp_epochs = 0.0         # linear ramp 0 -> strength over these epochs; 0 = constant
  o.w_reg.start_epochs = 0.0        # off before this (a late start), then the ramp
  o.w_reg.ramp_fraction = 0.0       # the same as fractions of num_epochs (resolved when the
  o.w_reg.start_fraction = 0.0      #   optimizer is built; use either these or the epochs)
  o.w_reg.placement = "gradient"    # gradient (added before the optimizer) | decoupled (after, x lr)

  o.cosine_momentum = ml_collections.ConfigDict()
  o.cosine_momentum.enabled = False
  o.cosine_momentum.strength = 1e-4  # kappa; no effect measurable in 4-epoch runs (empty tail)
  o.cosine_momentum.decay = 0.9      # mu
  o.cosine_momentum.width = 0.5      # D
  o.cosine_momentum.target = ml_collections.FieldReference(1.0, field_type=object)  # | init_mean_abs
  o.cosine_momentum.ramp_epochs = 0.0  # linear ramp 0 -> strength over these epochs; 0 = constant
  o.cosine_momentum.start_epochs = 0.0  # off before this, then the ramp
  o.cosine_momentum.placement = "gradient"  # gradient | decoupled
  o.cosine_momentum.ramp_fraction = 0.0
  o.cosine_momentum.start_fraction = 0.0

  o.tail_projection = ml_collections.ConfigDict()  # |w| clipped to t + D after every step
  o.tail_projection.enabled = False
  o.tail_projection.width = 0.05    # D
  o.tail_projection.target = ml_collections.FieldReference(MEAN_ABS, field_type=object)

  o.bop = ml_collections.ConfigDict()  # optim.name = "bop" only; defaults: larq.optimizers.Bop
  o.bop.threshold = 1e-8            # tau: flip where |m| > tau and sign(m) = sign(w)
  o.bop.gamma = 1e-4                # adaptivity rate of the gradient average m
  o.bop.schedule = "constant"       # constant | lr: gamma(t) = gamma * lr(t) / lr (warmup and decay)
  return o


def _check_name(kind: str, name: str, valid: tuple[str, ...]) -> None:
  if name not in valid:
    raise ValueError(f"Unknown {kind} {name!r}; valid names: {', '.join(valid)}.")


def learning_rate_schedule(optim_config: ml_collections.ConfigDict, num_epochs: int,
                           steps_per_epoch: int) -> optax.Schedule:
  """Step -> learning rate: linear warmup 0 -> lr, then cosine/linear decay to 0 (or constant)."""
  o = optim_config
  _check_name("optim.schedule", o.schedule, SCHEDULES)
  total = int(num_epochs * steps_per_epoch)
  warmup = int(round(o.warmup_epochs * steps_per_epoch))
  if steps_per_epoch <= 0 or total <= 0:
    raise ValueError(f"steps_per_epoch ({steps_per_epoch}) and num_epochs ({num_epochs}) "
                     f"must be positive.")
  if warmup >= total:
    raise ValueError(f"optim.warmup_epochs ({o.warmup_epochs}) must be shorter than "
                     f"num_epochs ({num_epochs}).")
  rest = total - warmup
  main = {"cosine": lambda: optax.cosine_decay_schedule(o.lr, rest),
          "linear": lambda: optax.linear_schedule(o.lr, 0.0, rest),
          "constant": lambda: optax.constant_schedule(o.lr)}[o.schedule]()
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, o.lr, warmup), main], [warmup])


def build_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer described by ``config.optim`` (and ``config.num_epochs``).

  Chain, in order:
    1. ``optax.adaptive_grad_clip(agc_clip)`` if agc_clip > 0 -- first, so it clips
       only the task gradient, never the regularizer terms added next;
    2. gradient-side terms, each added to the gradient: ``w_regularization``
       and ``variant_cosine_momentum`` where their ``placement`` is "gradient" (each
       strength off for ``start_epochs``, then ramped linearly from 0 over its
       ``ramp_epochs``), L2 ``binary_weight_decay`` on ``binary_kernel``,
       and for adam/sgd L2 ``weight_decay`` on real ``kernel`` leaves;
    3. the optax alias: ``optax.adam``, ``optax.adamw`` (its decoupled decay, scaled
       by the learning rate as in AdamW, on real ``kernel`` leaves only) or
       ``optax.sgd`` (momentum, nesterov) -- the base scaling then the learning rate;
    4. the method-1 terms whose ``placement`` is "decoupled", each wrapped in
       ``decoupled(term, lr)``: their step is -lr(step) * strength * term;
    5. ``binary_lr_multiplier`` != 1: the whole step of ``binary_kernel`` leaves times it
       (``optax.scale`` under ``binary_mask``), i.e. their learning rate is multiplier * lr;
    6. ``tail_projection`` if enabled: |w| clipped to t + D after the step.
  Weight decay never touches ``binary_kernel`` (that is ``binary_weight_decay``).

  ``optim.name = "bop"`` builds a different optimizer, ``_build_bop``: Bop
  (``optim.bop.threshold``, ``optim.bop.gamma``, ``optim.bop.schedule``) on
  ``binary_kernel``, Adam with the learning-rate schedule on everything else.

  Returns:
    ``(tx, lr_schedule)``: the ``optax.GradientTransformation`` and the learning-rate
    schedule (step -> lr) it uses, for logging.

  The same chain by hand, in a user's own code (any params tree whose latent binary
  weights are named ``binary_kernel``):

  >>> import optax
  >>> from bnn_jax import optim
  >>> lr = optax.cosine_decay_schedule(1e-3, decay_steps=10_000)
  >>> tx = optax.chain(
  ...     optax.adaptive_grad_clip(0.02),
  ...     optim.w_regularization(optax.linear_schedule(0.0, 1e-4, 1_000), power=2),
  ...     optim.variant_cosine_momentum(1e-4, decay=0.9, width=0.5),
  ...     optax.adamw(lr, weight_decay=1e-4, mask=optim.real_kernel_mask))
  """
  o = config.optim
  _check_name("optim.name", o.name, OPTIMIZER_NAMES)
  lr = learning_rate_schedule(o, config.num_epochs, steps_per_epoch)
  if o.name == "bop":
    return _build_bop(o, lr), lr

  parts, after = [], []
  if o.agc_clip > 0:
    parts.append(optax.adaptive_grad_clip(o.agc_clip))

  def place(term, section, name):
    _check_name(f"optim.{name}.placement", section.placement, PLACEMENTS)
    if section.placement == "decoupled":
      after.append(decoupled(term, lr))
    else:
      parts.append(term)

  def strength(section):
    start, ramp = schedule_epochs(section, config.num_epochs)
    return delayed_ramp(section.strength, int(round(start * steps_per_epoch)),
                        int(round(ramp * steps_per_epoch)))

  if o.w_reg.enabled:
    place(w_regularization(strength(o.w_reg), power=o.w_reg.power, target=o.w_reg.target),
          o.w_reg, "w_reg")
  if o.cosine_momentum.enabled:
    c = o.cosine_momentum
    place(variant_cosine_momentum(strength(c), decay=c.decay, width=c.width, target=c.target),
          c, "cosine_momentum")
  if o.binary_weight_decay > 0:
    parts.append(optax.add_decayed_weights(o.binary_weight_decay, mask=binary_mask))
  if o.weight_decay > 0 and o.name != "adamw":
    parts.append(optax.add_decayed_weights(o.weight_decay, mask=real_kernel_mask))

  if o.name == "adam":
    parts.append(optax.adam(lr, b1=o.b1, b2=o.b2))
  elif o.name == "adamw":
    parts.append(optax.adamw(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                             mask=real_kernel_mask))
  else:
    parts.append(optax.sgd(lr, momentum=o.momentum or None, nesterov=o.nesterov))
  parts += after
  if o.binary_lr_multiplier != 1.0:
    if not o.binary_lr_multiplier > 0:
      raise ValueError(f"optim.binary_lr_multiplier must be > 0, got {o.binary_lr_multiplier}.")
    parts.append(optax.masked(optax.scale(o.binary_lr_multiplier), binary_mask))
  if o.tail_projection.enabled:
    p = o.tail_projection
    parts.append(tail_projection(p.width, target=p.target))
  return optax.chain(*parts), lr


def schedule_epochs(section: ml_collections.ConfigDict, num_epochs: float) -> tuple[float, float]:
  """(start, ramp) in epochs of a method-1 term's strength: ``start_epochs``/``ramp_epochs``,
  or ``start_fraction``/``ramp_fraction`` x num_epochs (so they follow --config.num_epochs)."""
  epochs = (section.start_epochs, section.ramp_epochs)
  fractions = (section.start_fraction, section.ramp_fraction)
  if any(fractions):
    if any(epochs):
      raise ValueError("Set either start_epochs/ramp_epochs or start_fraction/ramp_fraction "
                       f"of a method-1 term, not both (got epochs {epochs}, fractions "
                       f"{fractions}).")
    if not all(0 <= f <= 1 for f in fractions):
      raise ValueError(f"start_fraction and ramp_fraction are fractions of the run, in [0, 1]; "
                       f"got {fractions}.")
    return fractions[0] * num_epochs, fractions[1] * num_epochs
  return epochs


def logged_weight_target(config: ml_collections.ConfigDict) -> Target:
  """t for the logged weight statistics: ``config.weight_target``, or for ``"auto"`` the
  target of the method-1 term in use (w_reg, cosine_momentum, tail_projection, in that
  order; a fixed initial t is logged as mean_abs), else mean_abs, the binarizer's alpha."""
  if config.weight_target != "auto":
    return config.weight_target
  o = config.optim
  for section in (o.w_reg, o.cosine_momentum, o.tail_projection):
    if section.enabled:
      return MEAN_ABS if section.target == INIT_MEAN_ABS else section.target
  return MEAN_ABS


def _build_bop(o: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
  """``optim.name = "bop"``: Bop on the latent binary weights, Adam on the real-valued ones.

    optax.chain(
        optax.adaptive_grad_clip(agc_clip),                    # if agc_clip > 0, every leaf
        optax.multi_transform(
            {"binary": bop(threshold, gamma_t),                # binary_kernel leaves
             "real": chain(L2 weight_decay on kernel leaves, adam(lr, b1, b2))},
            labels from binary_mask))

  gamma_t is ``optim.bop.gamma`` (``schedule = "constant"``, larq's default) or
  gamma * lr(t) / lr (``schedule = "lr"``: the run's warmup and decay, as the Bop paper
  decays gamma during training), so that the flips settle as the learning rate does.

  Bop sets only the signs of ``binary_kernel`` and never their magnitude, so the terms
  that act on latent magnitudes (``w_reg``, ``cosine_momentum``, ``binary_weight_decay``)
  are refused: added to the gradient they would be averaged into Bop's m and flip
  weights for a reason that is not the loss.
  """
  conflicts = [name for name, on in (("optim.w_reg.enabled", o.w_reg.enabled),
                                     ("optim.cosine_momentum.enabled", o.cosine_momentum.enabled),
                                     ("optim.binary_weight_decay > 0", o.binary_weight_decay > 0),
                                     ("optim.tail_projection.enabled", o.tail_projection.enabled),
                                     ("optim.binary_lr_multiplier != 1",
                                      o.binary_lr_multiplier != 1.0))
               if on]
  if conflicts:
    raise ValueError(
        f"optim.name='bop' cannot be combined with {', '.join(conflicts)}: Bop only flips the "
        f"signs of the {BINARY_KERNEL!r} leaves and never changes their magnitude, while these "
        f"terms act on the latent magnitudes (added to the gradient they would enter Bop's "
        f"average m and flip weights). Turn them off, or use optim.name=adam/adamw/sgd.")
  _check_name("optim.bop.schedule", o.bop.schedule, BOP_SCHEDULES)
  gamma = o.bop.gamma
  if o.bop.schedule == "lr":
    _check_bop_args(o.bop.threshold, gamma)  # lr(t) / lr is in [0, 1]: gamma bounds gamma_t
    if not o.lr > 0:
      raise ValueError(f"optim.bop.schedule='lr' scales gamma by lr(t) / optim.lr, which needs "
                       f"optim.lr > 0 (got {o.lr}).")
    gamma = lambda count: o.bop.gamma * lr(count) / o.lr
  binary = bop(o.bop.threshold, gamma, mask=None)
  real = [optax.adam(lr, b1=o.b1, b2=o.b2)]
  if o.weight_decay > 0:
    real.insert(0, optax.add_decayed_weights(o.weight_decay, mask=real_kernel_mask))
  labels = lambda params: jax.tree.map(lambda b: "binary" if b else "real", binary_mask(params))
  tx = optax.multi_transform({"binary": binary, "real": optax.chain(*real)}, labels)
  if o.agc_clip > 0:
    tx = optax.chain(optax.adaptive_grad_clip(o.agc_clip), tx)
  return tx
