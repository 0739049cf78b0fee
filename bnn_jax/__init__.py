"""bnn_jax: binary neural networks (1-bit weights and activations) in JAX/Flax.

The pure core (``quantizers``, ``optim``, ``weight_stats``) imports no Flax.
TensorFlow is imported only on the TFDS data path, never by ``import bnn_jax``.
"""

from bnn_jax import quantizers
from bnn_jax.models import get_model

__version__ = "0.1.0"

__all__ = ["get_model", "quantizers", "__version__"]
