"""matplotlib on the Agg backend (PNG files, no display needed), with one clear install error.

matplotlib is an optional dependency (``pip install 'bnn_jax[plot]'``); the modules that
draw (:mod:`bnn_jax.inspect`, :mod:`bnn_jax.curves`, ``experiments/tables.py``) import it
through :func:`pyplot` so a missing install reads the same everywhere.
"""

from __future__ import annotations


def pyplot(option: str, error: type[Exception] = ImportError):
  """Returns ``matplotlib.pyplot`` with the Agg backend selected.

  Raises ``error`` (the caller's user-error class) naming ``option`` and how to install
  matplotlib when it is missing.
  """
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    raise error(f"{option} needs matplotlib: pip install 'bnn_jax[plot]' "
                "(or pip install matplotlib).") from None
  return plt
