"""VGG-Small on CIFAR-100 (configs/vgg_small_cifar10.py with cifar100; add ":fp" for full precision)."""

from configs import vgg_small_cifar10


def get_config(options: str = ""):
  return vgg_small_cifar10.get_config(",".join(o for o in ("cifar100", options) if o))
