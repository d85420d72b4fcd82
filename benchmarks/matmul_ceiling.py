"""The f32 matmul ceiling of this machine, as `benchmarks/flow_train.py` measures it.

    python -m benchmarks.matmul_ceiling   # prints the study (JSON)

`matmul_ceiling()` is the figure fractions of the ceiling refer to (XLA's default dot, best of
a few calls); `ceiling_study(torch)` measures it several ways (issue 15: is the ~222 GFLOP/s
of the 2-vCPU VM an artefact of threads, the dot library or precision?).
`flow_matmul_bound(flow_config)` is the honest bound of a flow step on this machine: a program
of nothing but the flow's matmuls (same shapes, same count, forward + backward) and the Adam
update as one elementwise pass over one raveled parameter vector; no flow can train faster.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

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


def _flow_matmul_shapes(flow) -> list:
  """`[(rows, cols)]` weight shapes of one affine-coupling block in application order: the
  conditioner MLP `half -> hidden... -> 2 (D - half)` and the LU mixing's `D x D`."""
  dim, half = int(flow.event_dim), int(flow.event_dim) // 2
  sizes = [half, *map(int, flow.hidden_sizes), 2 * (dim - half)]
  return list(zip(sizes[:-1], sizes[1:])) + [(dim, dim)]


def flow_matmul_bound(flow, train_batch: int, eval_batch: int, seed: int = 0):
  """Blocking closures `(train_step, log_prob)` of the flow's matmuls alone, and FLOPs per call.

  Per block (`flow.num_layers` of them): the conditioner MLP's products on the first half of the
  state, its output added to the other half (the coupling's one elementwise join, so the chain
  cannot be folded), then the `D x D` mixing, whose matrix `L @ U` is formed once per call (as
  flowpose's LU layer does). The train step is the gradient of `sum(out^2)` (autodiff: the
  backward products of every matmul) and Adam on one flat parameter vector, one fused
  elementwise pass, donated; log_prob is the forward chain at `eval_batch`. No biases,
  activations, actnorm, log-determinants or NaN guard: an upper bound on any flow of these
  sizes (issue 15: is 2x normflows reachable at all?).

  Returns:
    `((train_step, log_prob), {"train": flops, "log_prob": flops})`.
  """
  dim, half = int(flow.event_dim), int(flow.event_dim) // 2
  shapes = _flow_matmul_shapes(flow) + [(dim, dim)]  # + the LU's second factor
  sizes = [r * c for r, c in shapes]
  offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
  per_block = int(offsets[-1])
  num_layers = int(flow.num_layers)
  rng = np.random.default_rng(seed)
  params = jnp.asarray(rng.normal(0, 0.05, num_layers * per_block), jnp.float32)

  def unflatten(flat):
    return [[flat[layer * per_block + offsets[i]:layer * per_block + offsets[i + 1]].reshape(
        shape) for i, shape in enumerate(shapes)] for layer in range(num_layers)]

  def chain(weights, x):
    h = x
    for w in weights:
      z = h[:, :half]
      for weight in w[:-2]:
        z = z @ weight
      h = jnp.concatenate([h[:, :half], h[:, half:] + z[:, :dim - half]], axis=1)
      h = h @ (w[-2] @ w[-1])
    return h

  loss = lambda weights, x: jnp.sum(jnp.square(chain(weights, x)))

  def step(state, x):
    flat, m, v = state
    # Gradients per matrix (a gradient w.r.t. the flat vector itself would add one padded
    # full-length buffer per slice), then raveled once for the one Adam pass.
    grads = jax.grad(loss)(unflatten(flat), x)
    g = jnp.concatenate([w.reshape(-1) for block in grads for w in block])
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g * g
    return flat - 1e-4 * m / (jnp.sqrt(v) + 1e-8), m, v

  forward = jax.jit(lambda flat, x: chain(unflatten(flat), x))
  train = jax.jit(step, donate_argnums=(0,))
  x_train = jnp.asarray(rng.normal(size=(train_batch, dim)), jnp.float32)
  x_eval = jnp.asarray(rng.normal(size=(eval_batch, dim)), jnp.float32)
  state = [(params, jnp.zeros_like(params), jnp.zeros_like(params))]

  def flops(jitted, *args):
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))
  counted = {"train": flops(train, state[0], x_train), "log_prob": flops(forward, params, x_eval)}

  def train_step():
    state[0] = train(state[0], x_train)
    state[0][0].block_until_ready()

  return (train_step, lambda: forward(state[0][0], x_eval).block_until_ready()), counted


if __name__ == "__main__":
  import torch  # pylint: disable=g-import-not-at-top
  print(json.dumps({"load_average": list(os.getloadavg()),
                    "matmul_ceiling_gflop_per_s": matmul_ceiling(),
                    **ceiling_study(torch)}, indent=2))
