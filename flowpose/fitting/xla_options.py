"""XLA compiler options for the fitter's jitted loops (small batched ops on CPU).

The fitter's step is hundreds of small ops over `[B, ...]` arrays (3x3 products down the
kinematic tree, per-keypoint contractions, spline bins). XLA:CPU hands many of them to
YNNPACK fusions by default; at these sizes each such fusion costs far more than the loop
fusion XLA emits itself (profile, B = 256 keypoints + flow prior step: 1.3-1.7x faster
without them, the body path alone ~1.8x; WORKSPACE.md, issue 15). `jit(fn, ...)` is `jax.jit`
with YNNPACK fusions off when the default backend is CPU and the option exists in this
jaxlib; elsewhere (GPU/TPU, another jaxlib) it is plain `jax.jit`. `FLOWPOSE_XLA_YNN=1`
keeps XLA's default (A/B timing).
"""

import functools
import os
from typing import Callable

import jax
import numpy as np

# The XLA debug option; an empty value enables no YNNPACK fusion type.
YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"


@functools.cache
def cpu_small_op_options() -> dict:
  """`compiler_options` for small-op CPU programs: `{YNN_OPTION: ""}` where it applies, else {}."""
  if os.environ.get("FLOWPOSE_XLA_YNN", "0") == "1" or jax.default_backend() != "cpu":
    return {}
  options = {YNN_OPTION: ""}
  try:  # A jaxlib without the option refuses it at compile time: fall back to the default.
    jax.jit(lambda x: x + 1, compiler_options=options).lower(np.float32(0)).compile()
  except Exception:  # pylint: disable=broad-except
    return {}
  return options


def jit(fun: Callable, **jit_kwargs) -> Callable:
  """`jax.jit(fun, **jit_kwargs)` with `cpu_small_op_options()`, decided at the first call.

  Lazy, so importing a module that defines such a function starts no backend. Inside another
  jit the options of the outer program apply (XLA compiles one program).
  """
  jitted = None

  @functools.wraps(fun)
  def call(*args, **kwargs):
    nonlocal jitted
    if jitted is None:
      jitted = jax.jit(fun, compiler_options=cpu_small_op_options() or None, **jit_kwargs)
    return jitted(*args, **kwargs)

  return call
