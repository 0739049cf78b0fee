"""ResNet-18 on CIFAR-100: configs/resnet18_cifar10.py with the cifar100 option.

  python train.py --config configs/resnet18_cifar100.py:fda --workdir runs/r18_fda_c100
(TFDS cifar100; offline, point --config.data.path at the CIFAR-100 binary archive.)
"""

from configs import resnet18_cifar10


def get_config(options: str = ""):
  return resnet18_cifar10.get_config(",".join(o for o in ("cifar100", options) if o))
