"""VGG-Small on CIFAR-10: binary (default), full precision ("fp"), method 2 ("fda"), method 3.

Binary: Adam 1e-3, cosine, 300 epochs, batch 256, no decay on latent weights.
FP: SGD 0.1, momentum 0.9, weight decay 5e-4, cosine, 200 epochs. Option
"cifar100" for CIFAR-100 (combine: "fp,cifar100"). "fda": vgg_small_fda with all method-2
components. "method3": distillation from the full-precision VGG-Small teacher in
--config.teacher.workdir (default runs/vgg_fp; train it first with ":fp"), with the KL
term alone (T = 1, weight 1): on the proxy (docs/RESULTS.md, "Method 3") the detail term
(attention of stages 1 and 2, 16x16 and 8x8 here) cost VGG-Small 4.3 points alone and the
cosine of its flattened penultimate map about 1 more, while the KL alone gained 1.2. Turn
them back on with --config.distill.detail_weight=10 --config.distill.cosine_weight=1 for
the thesis' pair (configs/reactnet18_cifar10.py's weights).

  python train.py --config configs/vgg_small_cifar10.py --workdir runs/vgg_bnn
  python train.py --config configs/vgg_small_cifar10.py:fp --workdir runs/vgg_fp
  python train.py --config configs/vgg_small_cifar10.py:method3 --workdir runs/vgg_m3
"""

from bnn_jax.config import base_config, lock, set_model
from configs.reactnet18_cifar10 import method3

OPTIONS = ("fp", "fda", "method3", "cifar100")


def get_config(options: str = ""):
  opts = {o for o in options.split(",") if o}
  if opts - set(OPTIONS):
    raise ValueError(f"Unknown option(s) {sorted(opts - set(OPTIONS))}; valid: {', '.join(OPTIONS)}.")
  if "fp" in opts and opts & {"fda", "method3"}:
    raise ValueError("fp is the teacher/reference; it takes neither fda nor method3.")
  c = base_config()
  c.data.dataset = "cifar100" if "cifar100" in opts else "cifar10"
  if "fp" in opts:
    set_model(c, "vgg_small_fp")
    c.batch_size, c.num_epochs = 128, 200
    c.optim.name, c.optim.lr, c.optim.momentum, c.optim.weight_decay = "sgd", 0.1, 0.9, 5e-4
  else:
    set_model(c, "vgg_small_fda" if "fda" in opts else "vgg_small_bnn")
    c.batch_size, c.num_epochs = 256, 300
    c.optim.name, c.optim.lr = "adam", 1e-3
  c.optim.schedule = "cosine"
  c.checkpoint.every_epochs = 8            # as the other full-scale recipes (reactnet18_cifar10.py)
  c.weight_stats_every_epochs = 8
  if "method3" in opts:
    method3(c, teacher="runs/vgg_fp_c100" if "cifar100" in opts else "runs/vgg_fp")
    c.distill.detail_weight = 0.0   # proxy arm m3_vgg_kl: the KL alone
    c.distill.cosine_weight = 0.0
  return lock(c)
