"""Quick CPU run: a width-0.25 ReActNet-18 on 10,000 CIFAR-10 images, 3 epochs.

  python train.py --config configs/quick_cpu.py --workdir runs/quick \
      --config.data.path=../shared/data/cifar-10-binary.tar.gz

Finishes in a few minutes on a 2-core CPU and reaches well above chance (10%)
on the full 10,000-image test set; see docs/RESULTS.md for the measured figure.
"""

from bnn_jax.config import base_config, lock, set_model


def get_config():
  c = base_config()
  set_model(c, "reactnet18")
  c.model.width = 0.25
  c.data.train_subset = 10_000
  c.batch_size = 128
  c.num_epochs = 3
  c.optim.name = "adam"
  c.optim.lr = 2e-3
  c.optim.schedule = "cosine"
  c.log_every_steps = 20
  return lock(c)
