"""How binary are the latent weights? Per-layer statistics of ``binary_kernel`` leaves.

For every latent binary weight leaf (named ``binary_kernel``; the layer is its tree
path without that last key, e.g. ``"block1/BinaryConv_0"``) and for ``"overall"``
(all binary weights together, i.e. layers weighted by element count), with target
magnitude t and tolerance ``near``:

  mean_abs    mean |w|
  mean_dist   mean ||w| - t|                  (0 when every weight sits at +-t)
  near_frac   fraction with ||w| - t| <= near
  tail_frac   fraction with |w| > t           (beyond the band: no task gradient through a clipped STE)
  zero_frac   fraction with w == 0 exactly
  flip_ratio  fraction whose sign changed since ``prev_params`` (sign(0) = +1), if given
  quant_error e_q = ||w - alpha sign(w)||^2 / ||w||^2, alpha = mean|w| per output channel:
              how far the latent weights are from what the binarizer turns them into
              (0 when every weight of a channel sits at +-alpha; "overall" pools the sums)
  alpha_tail_frac  fraction with |w| > alpha (the tail with respect to the binarizer's scale)
  channel_cv  std|w| / mean|w| within each output channel, averaged over channels ("overall":
              over all channels of all layers): the spread of |w| / t for any per-channel t,
              0 when every weight of a channel has the same magnitude

Computed on the host in float64 NumPy; values are plain Python floats, ready for
logging (``flatten_stats``). Used by the trainer's epoch log and ``bnn_jax.inspect``.
This module imports no Flax.

>>> import numpy as np
>>> s = latent_weight_stats({"fc": {"binary_kernel": np.array([[0.0, 1.05], [-2.0, -0.5]])}})
>>> s["fc"]["tail_frac"], s["fc"]["near_frac"], s["fc"]["zero_frac"]
(0.5, 0.25, 0.25)
>>> flatten_stats(s, "weights")["weights/overall/mean_abs"]
0.8875
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np

from bnn_jax.optim import BINARY_KERNEL, MEAN_ABS, path_to_str

OVERALL = "overall"


def _binary_leaves(params) -> dict[str, np.ndarray]:
  """{layer path: float64 array} for every ``binary_kernel`` leaf, in tree order."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if path and path_to_str(path[-1:]) == BINARY_KERNEL:
      out[path_to_str(path[:-1]) or BINARY_KERNEL] = np.asarray(leaf, dtype=np.float64)
  return out


def _target(w: np.ndarray, target) -> np.ndarray | float:
  if isinstance(target, str):
    if target != MEAN_ABS:
      raise ValueError(f"target must be a float or {MEAN_ABS!r}, got {target!r}.")
    axes = tuple(range(w.ndim - 1)) if w.ndim > 1 else None
    return np.mean(np.abs(w), axis=axes, keepdims=True)
  return float(target)


def quantization_error(w: np.ndarray) -> float:
  """e_q = ||w - alpha sign(w)||^2 / ||w||^2 with alpha = mean|w| per output channel (last axis).

  >>> quantization_error(np.array([[0.5, -0.5], [-0.5, 0.5]]))  # every |w| = alpha
  0.0
  """
  err, norm = _quant_sums(np.asarray(w, np.float64))
  return err / norm if norm else 0.0


def _quant_sums(w: np.ndarray) -> tuple[float, float]:
  alpha = _target(w, MEAN_ABS)
  binarized = alpha * np.where(w >= 0, 1.0, -1.0)
  return float(np.sum((w - binarized) ** 2)), float(np.sum(w ** 2))


def _channel_cv_sum(w: np.ndarray) -> tuple[float, float]:
  """(sum over output channels of std|w| / mean|w|, number of channels); a channel whose
  weights are all 0 counts 0."""
  a = np.abs(w).reshape(-1, w.shape[-1]) if w.ndim > 1 else np.abs(w).reshape(-1, 1)
  mean, std = a.mean(axis=0), a.std(axis=0)
  cv = np.divide(std, mean, out=np.zeros_like(mean), where=mean > 0)
  return float(cv.sum()), float(cv.size)


def _counts(w: np.ndarray, t, near: float, prev: Optional[np.ndarray]) -> dict[str, float]:
  """Sums (not means) so layers can be pooled exactly into "overall"."""
  dist = np.abs(np.abs(w) - t)
  cv_sum, channels = _channel_cv_sum(w)
  sq_err, sq_norm = _quant_sums(w)
  c = {"n": float(w.size), "mean_abs": float(np.abs(w).sum()), "mean_dist": float(dist.sum()),
       "near_frac": float((dist <= near).sum()), "tail_frac": float((np.abs(w) > t).sum()),
       "zero_frac": float((w == 0).sum()),
       "alpha_tail_frac": float((np.abs(w) > _target(w, MEAN_ABS)).sum()),
       "sq_err": sq_err, "sq_norm": sq_norm, "cv_sum": cv_sum, "channels": channels}
  if prev is not None:
    c["flip_ratio"] = float(((w >= 0) != (prev >= 0)).sum())
  return c


def _means(c: dict[str, float]) -> dict[str, float]:
  n = c["n"]
  pooled = ("n", "sq_err", "sq_norm", "cv_sum", "channels")
  out = {k: (v / n if n else 0.0) for k, v in c.items() if k not in pooled}
  out["quant_error"] = c["sq_err"] / c["sq_norm"] if c["sq_norm"] else 0.0
  out["channel_cv"] = c["cv_sum"] / c["channels"] if c["channels"] else 0.0
  return out


def latent_weight_stats(params: Any, target: float | str = 1.0, prev_params: Any = None,
                        near: float = 0.1) -> dict[str, dict[str, float]]:
  """Per-layer and overall statistics of the latent binary weights (see the module doc).

  Args:
    params: any pytree (e.g. a Flax params dict); only leaves named ``binary_kernel`` count.
    target: t, a float or ``"mean_abs"`` (mean|w| per output channel, the last axis).
    prev_params: an earlier params tree of the same layout for ``flip_ratio``; None (or
      an empty tree) leaves it out.
    near: tolerance for ``near_frac``.

  Returns:
    ``{layer: {stat: float}, "overall": {stat: float}}``; ``{}`` when there are no
    binary weights.
  """
  layers = _binary_leaves(params)
  prev = _binary_leaves(prev_params) if prev_params is not None else {}
  if prev:
    missing = [k for k in layers if k not in prev or prev[k].shape != layers[k].shape]
    if missing:
      raise ValueError(f"prev_params lacks binary layer(s) {missing} (or their shapes differ); "
                       f"pass the params of the same model.")
  if not layers:
    return {}
  counts = {k: _counts(w, _target(w, target), near, prev.get(k)) for k, w in layers.items()}
  total = {key: sum(c[key] for c in counts.values()) for key in next(iter(counts.values()))}
  stats = {k: _means(c) for k, c in counts.items()}
  stats[OVERALL] = _means(total)
  return stats


def flatten_stats(stats: dict[str, dict[str, float]], prefix: str = "") -> dict[str, float]:
  """{"prefix/layer/stat": value}, for scalar loggers (no leading slash when prefix is empty)."""
  head = f"{prefix}/" if prefix else ""
  return {f"{head}{layer}/{key}": value for layer, d in stats.items() for key, value in d.items()}
