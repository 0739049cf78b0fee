"""Activation balance of a finished run's last checkpoint, for runs logged before the trainer
measured it (it does every epoch since 2026-12-02).

  python experiments/balance_of_run.py /work/runs/proxy/m2_bnn_s0 experiments/results/m2_bnn_s0

Measures exactly what the trainer logs (``train_lib.balance_step`` on the first 256 test
images, one device) and writes ``balance.json`` (the ``balance/...`` keys) to the results
folder, which ``experiments/tables.py`` reads when the last metrics record lacks them.
"""

import json
import os
import sys


def main(run_dir: str, results_dir: str) -> None:
  import functools

  import jax
  import numpy as np

  from bnn_jax import checkpoints, data, models, train_lib
  run = checkpoints.load_run(run_dir)
  config = run.config
  ds = data.load_dataset(_data_config(config["data"]))
  model = models.from_config(config["model"])
  state = train_lib.TrainState(step=np.int32(run.step), params=run.params,
                               batch_stats=run.batch_stats, opt_state=None,
                               apply_fn=model.apply, tx=None)
  devices = jax.local_devices()[:1]
  put = functools.partial(train_lib.replicate, devices=devices)
  p_balance = jax.pmap(functools.partial(train_lib.balance_step, mean=tuple(ds.mean),
                                         std=tuple(ds.std)), axis_name="batch", devices=devices)
  indices = np.arange(256, dtype=np.int32)[None]
  p_plus = p_balance(put(state), put(ds.test_images), indices)
  record = train_lib.balance_record({k: float(v[0]) for k, v in p_plus.items()})
  record["step"] = int(run.step)
  with open(os.path.join(results_dir, "balance.json"), "w") as f:
    json.dump(record, f, indent=1, sort_keys=True)
  print(f"{results_dir}/balance.json: overall entropy {record['balance/overall/entropy']:.4f}")


def _data_config(d: dict):
  from bnn_jax.data import default_data_config
  c = default_data_config()
  for k in c:
    if k in d:
      c[k] = d[k]
  return c


if __name__ == "__main__":
  main(*sys.argv[1:3])
