"""Imports distrax on first use, whether or not TensorFlow is already loaded.

flowpose's bijectors are pure JAX; distrax is only needed where a distrax
object is built (`distrax_adapter`, the reference spline in tests and
benchmarks), so nothing imports it at module level.

The one import-order need, settled here: `tensorflow_probability`'s package
`__init__` (which distrax imports for its JAX substrate) checks whether
TensorFlow is already in `sys.modules`; if it is, it eagerly loads TFP's
TensorFlow-only subpackages, which require the `tf_keras` package (not
installed: flowpose uses TFP's JAX substrate only) and the import fails with
`ModuleNotFoundError: No module named 'tf_keras'` (tfp-nightly 0.26.0.dev,
TF 2.21, checked). That package `__init__` itself imports nothing heavy (no
TensorFlow, no JAX; ~1 ms), so `import_distrax` runs it with TensorFlow hidden
from that one check, after which distrax imports in any order.
"""

import sys
import types


def _init_tfp_package() -> None:
  """Runs TFP's package `__init__` in its lazy (JAX-friendly) mode."""
  if "tensorflow_probability" in sys.modules:
    return
  tensorflow = sys.modules.pop("tensorflow", None)
  try:
    import tensorflow_probability  # pylint: disable=g-import-not-at-top,unused-import
  finally:
    if tensorflow is not None:
      sys.modules["tensorflow"] = tensorflow


def import_distrax() -> types.ModuleType:
  """Returns the `distrax` module (imported on the first call, ~3-5 s)."""
  _init_tfp_package()
  import distrax  # pylint: disable=g-import-not-at-top
  return distrax
