"""VGG-Small on CIFAR-10: binary (default) or full precision (option "fp").

Binary: Adam 1e-3, cosine, 300 epochs, batch 256, no decay on latent weights.
FP: SGD 0.1, momentum 0.9, weight decay 5e-4, cosine, 200 epochs. Option
"cifar100" for CIFAR-100 (combine: "fp,cifar100").

  python train.py --config configs/vgg_small_cifar10.py --workdir runs/vgg_bnn
"""

from bnn_jax.config import base_config, lock


def get_config(options: str = ""):
  opts = {o for o in options.split(",") if o}
  if opts - {"fp", "cifar100"}:
    raise ValueError(f"Unknown option(s) {sorted(opts - {'fp', 'cifar100'})}; valid: fp, cifar100.")
  c = base_config()
  c.data.dataset = "cifar100" if "cifar100" in opts else "cifar10"
  if "fp" in opts:
    c.model.name = "vgg_small_fp"
    c.batch_size, c.num_epochs = 128, 200
    c.optim.name, c.optim.lr, c.optim.momentum, c.optim.weight_decay = "sgd", 0.1, 0.9, 5e-4
  else:
    c.model.name = "vgg_small_bnn"
    c.batch_size, c.num_epochs = 256, 300
    c.optim.name, c.optim.lr = "adam", 1e-3
  c.optim.schedule = "cosine"
  return lock(c)
