"""Full-precision ResNet-18 on CIFAR-100 (configs/resnet18_fp_cifar10.py, option cifar100)."""

from configs import resnet18_fp_cifar10


def get_config():
  return resnet18_fp_cifar10.get_config("cifar100")
