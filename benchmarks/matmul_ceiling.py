"""The f32 matmul ceiling of this machine, as `benchmarks/flow_train.py` measures it.

    python -m benchmarks.matmul_ceiling   # prints the study (JSON)

`matmul_ceiling()` is the figure fractions of the ceiling refer to (XLA's default dot, best of
a few calls); `ceiling_study(torch)` measures it several ways (issue 15: is the ~222 GFLOP/s
of the 2-vCPU VM an artefact of threads, the dot library or precision?).
"""

import json
import os
import time

import jax
import jax.numpy as jnp

CEILING_SIZE = 2048


def matmul_ceiling(size: int = CEILING_SIZE, calls: int = 5) -> float:
  """Best GFLOP/s of XLA's f32 `[size, size] @ [size, size]` over `calls` calls."""
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda a, b: a @ b)
  matmul(a, a).block_until_ready()
  best = float("inf")
  for _ in range(calls):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best / 1e9


def ceiling_study(torch, size: int = CEILING_SIZE, calls: int = 10) -> dict:
  """Best-of-`calls` GFLOP/s of f32 `[size, size]^2` products in several set-ups (issue 15:
  is the ~222 GFLOP/s ceiling an artefact?): XLA's default dot (YNNPACK), XLA with YNNPACK
  fusions off (Eigen), XLA at HIGHEST precision (no reduced-precision shortcut was taken), and
  torch/MKL on 1 and on all threads. The 1 -> all thread scaling says whether the VM's vCPUs
  are separate physical cores (~2x) or hyperthreads of one core (~1x)."""
  a = jnp.ones((size, size), jnp.float32)
  flop = 2 * size**3 / 1e9

  def best(fn):
    fn()
    times = []
    for _ in range(calls):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    return flop / min(times)

  out = {}
  for name, jitted in (
      ("xla_default", jax.jit(lambda a, b: a @ b)),
      ("xla_ynn_off", jax.jit(lambda a, b: a @ b,
                              compiler_options={"xla_cpu_experimental_ynn_fusion_type": ""})),
      ("xla_highest", jax.jit(lambda a, b: jnp.dot(a, b, precision="highest")))):
    try:
      out[name] = best(lambda f=jitted: f(a, a).block_until_ready())
    except Exception as e:  # pylint: disable=broad-except  (an option this jaxlib lacks)
      out[name] = f"unavailable: {type(e).__name__}"
  x = torch.ones(size, size)
  threads = torch.get_num_threads()
  for count in (1, os.cpu_count()):
    torch.set_num_threads(count)
    out[f"torch_mkl_{count}_threads"] = best(lambda: torch.mm(x, x))
  torch.set_num_threads(threads)
  out["size"], out["calls"] = size, calls
  return out



if __name__ == "__main__":
  import torch  # pylint: disable=g-import-not-at-top
  print(json.dumps({"load_average": list(os.getloadavg()),
                    "matmul_ceiling_gflop_per_s": matmul_ceiling(),
                    **ceiling_study(torch)}, indent=2))
