"""Full-precision ResNet-18 on CIFAR-10: the reference and the method-3 teacher.

SGD 0.1, Nesterov momentum 0.9, weight decay 5e-4, cosine to 0, 200 epochs, batch 128
(~95% expected). Option "cifar100" for CIFAR-100.

  python train.py --config configs/resnet18_fp_cifar10.py --workdir runs/r18_fp
"""

from bnn_jax.config import base_config, lock, set_model


def get_config(options: str = ""):
  if options not in ("", "cifar100"):
    raise ValueError(f"Unknown option {options!r}; valid: cifar100.")
  c = base_config()
  set_model(c, "resnet18_fp")
  c.data.dataset = "cifar100" if options == "cifar100" else "cifar10"
  c.batch_size = 128
  c.num_epochs = 200
  # per-epoch host work costs more than a GPU epoch (docs/BENCHMARKS.md section 9): save and
  # take the latent-weight statistics every 8 epochs (and at the last; a stop signal saves)
  c.checkpoint.every_epochs = 8
  c.weight_stats_every_epochs = 8
  c.optim.name = "sgd"
  c.optim.lr = 0.1
  c.optim.momentum = 0.9
  c.optim.nesterov = True
  c.optim.schedule = "cosine"
  c.optim.weight_decay = 5e-4
  return lock(c)
