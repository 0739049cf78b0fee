"""What methods 2 and 3 cost per train step, against the step they extend, in one run.

  python benchmarks/bench_methods.py --width 0.25 --batches 128

Rows (each a ratio of the trainer's own pmapped step, ``train_lib.make_train_step``, real
CIFAR-10 indices with crop + flip, Adam, one CPU device; alternating repeats, medians):
  method 2: ``resnet18_fda`` (all four components) against ``resnet18_bnn``;
  method 3: ReActNet-18 with a frozen full-precision ResNet-18 teacher (same width) and both
            terms (semantic: KL + cosine; detail: attention on stages 1 and 2) against the
            plain ReActNet-18 step.
"""

import argparse
import functools

import jax
import numpy as np

import common
from bnn_jax import config as config_lib
from bnn_jax import data, models, objectives, optim, teacher as teacher_lib, train_lib

def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_flags(parser, steps=3, repeats=7)
  parser.add_argument("--batches", default="128")
  common.add_data_flag(parser)
  args = parser.parse_args()
  common.use_xla_flags(common.TUNED_XLA_FLAGS)  # what train.py runs with
  config = config_lib.base_config()
  config.data.path = args.data
  ds = data.load_dataset(config.data)
  devices = jax.local_devices()[:1]
  put = functools.partial(common.replicate, devices=devices)
  pmap = functools.partial(jax.pmap, axis_name="batch", devices=devices)
  images, labels = put(ds.train_images), put(ds.train_labels)
  kw = dict(mean=tuple(ds.mean), std=tuple(ds.std), augment=True)

  def model(name):
    return models.get_model(name, width=args.width, bn_axis_name="batch")

  def contender(name, objective, teacher=None):
    step = train_lib.make_train_step(objective, **kw)
    if teacher is None:
      p = pmap(lambda *a: step(*a), donate_argnums=(0, 1), in_axes=(0, 0, 0, 0, 0, None))
    else:
      p = pmap(step, donate_argnums=(0, 1), in_axes=(0, 0, 0, 0, 0, None, 0))
    return name, model(name.split("+")[0]), objective, p, teacher

  ce = objectives.classification(10)
  t_model = models.get_model("resnet18_fp", width=args.width)
  t_vars = jax.jit(functools.partial(t_model.init, train=False))(
      jax.random.key(7), np.zeros((1, 32, 32, 3), np.float32))
  teacher = put(teacher_lib.Teacher(t_vars, t_model.apply))
  distill = objectives.distillation(10, semantic_weight=1.0, detail_weight=10.0,
                                    taps=[("stage1", "stage1"), ("stage2", "stage2")])
  pairs = [("method 2: resnet18_fda / resnet18_bnn",
            contender("resnet18_bnn", ce), contender("resnet18_fda", ce)),
           ("method 3: reactnet18 + teacher + both terms / reactnet18",
            contender("reactnet18", ce), contender("reactnet18+teacher", distill, teacher))]
  rows, spreads = [], []
  for batch in common.batch_sizes(args.batches):
    indices = data.train_batch_indices(0, 0, len(ds.train_labels), batch, 1)
    for title, *two in pairs:
      runners = {}
      for name, m, objective, p, t in two:
        tx, _ = optim.build_optimizer(config, data.steps_per_epoch(len(ds.train_labels), batch))
        state = common.init_state(m, tx)
        zeros = put({k: np.float32(0) for k in _metric_keys(objective)})
        runners[name] = common.train_step_runner(p, put(state), zeros, images, labels, indices,
                                                 () if t is None else (t,))
      t = common.time_interleaved(runners, args.steps, args.repeats, args.warmup)
      base, new = list(runners)
      rows.append((title, batch, batch / t.median(base), batch / t.median(new),
                   t.median(new) / t.median(base)))
      spreads.append(f"{title}, batch {batch}: {t.spread()}")
  common.print_table(
      f"Cost of methods 2 and 3 per train step, width {args.width:g}, 1 {devices[0].platform} device",
      ("comparison", "batch", "base img/s", "method img/s", "time ratio method/base"), rows,
      notes=(f"Median of {args.repeats} alternating repeats of {args.steps} steps after "
             f"{args.warmup} warm-up steps. {common.machine_line()}",
             "Range over repeats, ms/step: " + " | ".join(spreads) + "."))


def _metric_keys(objective):
  """The metric keys an objective returns (``loss``, ``accuracy``, and its own terms)."""
  keys = {"loss", "accuracy", "nonfinite"}
  if objective.needs_teacher:
    keys |= {"ce", "kl", "cosine", "semantic", "detail"}
  return sorted(keys)


if __name__ == "__main__":
  main()
