"""ReActNet-18 on CIFAR-10, full scale (the thesis' method-1 table).

Options after a colon, comma-separated:
  step1     ReActNet step 1: binary activations, real-valued weights
  step2     step 2: both binary; pass --config.init_from=<step-1 workdir>
  bnfree    the BN-free network (scaled WS, alpha = 0.2, adaptive gradient clipping 0.02)
  wreg      + W-regularizer on the latent weights
  cosmom    + variant cosine momentum
  method1   = wreg,cosmom
  cifar100  CIFAR-100 instead of CIFAR-10

  python train.py --config configs/reactnet18_cifar10.py --workdir runs/r18 \
      --config.data.path=/data/cifar-10-binary.tar.gz
  python train.py --config configs/reactnet18_cifar10.py:bnfree,method1 --workdir runs/r18_nobn_m1

256 epochs x 195 steps at batch 256. Expected (thesis): 93.68% with BN, 92.68% BN-free.
"""

from bnn_jax.config import base_config, lock

OPTIONS = ("step1", "step2", "bnfree", "wreg", "cosmom", "method1", "cifar100")


def get_config(options: str = ""):
  opts = {o for o in options.split(",") if o}
  unknown = opts - set(OPTIONS)
  if unknown:
    raise ValueError(f"Unknown option(s) {sorted(unknown)}; valid: {', '.join(OPTIONS)}.")
  c = base_config()
  c.model.name = "reactnet18_bnfree" if "bnfree" in opts else "reactnet18"
  c.model.width = 1.0
  c.model.binarize_weights = "step1" not in opts
  c.data.dataset = "cifar100" if "cifar100" in opts else "cifar10"
  c.data.augment = True                    # pad-4 crop + flip
  c.batch_size = 256
  c.num_epochs = 256
  # --- optimizer: Adam, cosine to 0, no weight decay on latent binary weights ---
  c.optim.name = "adam"
  c.optim.lr = 2e-3
  c.optim.schedule = "cosine"
  c.optim.warmup_epochs = 0
  c.optim.weight_decay = 0.0               # on real-valued kernels only
  c.optim.binary_weight_decay = 0.0
  if "bnfree" in opts:
    c.optim.agc_clip = 0.02                # "BNN - BN = ?": AGC 0.02-0.04
  c.optim.w_reg.enabled = bool(opts & {"wreg", "method1"})
  c.optim.cosine_momentum.enabled = bool(opts & {"cosmom", "method1"})
  return lock(c)
