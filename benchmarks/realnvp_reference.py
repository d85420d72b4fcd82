"""A plain-JAX RealNVP: the reference the flow benchmark measures flowpose against.

About 50 lines of jnp with nothing but what a RealNVP needs: `depth` affine couplings on
`[B, D]`, each splitting the vector into its first `ceil(D/2)` and last `floor(D/2)` entries
(contiguous slices: no gathers), an MLP on the first half giving log-scale (soft-clamped
`bound * tanh(raw / bound)`, as flowpose) and shift for the second, then the halves swap places.
No actnorm, no LU mixing, no masks; the same activation (GELU) and zero-initialised last layer as
flowpose's default conditioner, so a step costs the same matmul FLOPs as flowpose's couplings.
What flowpose's flow costs on top of this is the price of its actnorm, LU mixing and masks.

  params = init(key, dim, depth, hidden_sizes)
  log_prob(params, x [B, D]) -> [B] nats       # data -> latent, as training evaluates it
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

SCALE_BOUND = 3.0


def _halves(dim: int, layer: int) -> tuple[int, int]:
  """`(conditioning, transformed)` sizes of coupling `layer` (the halves alternate)."""
  first = (dim + 1) // 2
  return (first, dim - first) if layer % 2 == 0 else (dim - first, first)


def init(key: jax.Array, dim: int, depth: int, hidden_sizes: Sequence[int]) -> list:
  """Params: per coupling a list of `(w [in, out], b [out])`, the last pair zero (identity)."""
  params = []
  for layer, layer_key in enumerate(jax.random.split(key, depth)):
    n_in, n_out = _halves(dim, layer)
    sizes = [n_in, *hidden_sizes]
    keys = jax.random.split(layer_key, len(hidden_sizes))
    dense = [(jax.random.normal(k, (a, b), jnp.float32) / np.sqrt(a), jnp.zeros((b,), jnp.float32))
             for k, a, b in zip(keys, sizes[:-1], sizes[1:])]
    dense.append((jnp.zeros((sizes[-1], 2 * n_out), jnp.float32),
                  jnp.zeros((2 * n_out,), jnp.float32)))
    params.append(dense)
  return params


def log_prob(params: list, x: jax.Array) -> jax.Array:
  """`x [B, D] -> [B]`: log N(f^{-1}(x)) + log|det d f^{-1}/dx|."""
  dim = x.shape[-1]
  log_det = jnp.zeros(x.shape[:-1], x.dtype)
  for layer in reversed(range(len(params))):  # data -> latent: the last coupling first.
    n_in, n_out = _halves(dim, layer)
    # Undo the swap of coupling `layer`: its output was [transformed, conditioning].
    y_trans, h = x[..., :n_out], x[..., n_out:]
    cond = h
    for w, b in params[layer][:-1]:
      h = jax.nn.gelu(h @ w + b)
    w, b = params[layer][-1]
    out = h @ w + b
    log_scale = SCALE_BOUND * jnp.tanh(out[..., :n_out] / SCALE_BOUND)
    x_trans = (y_trans - out[..., n_out:]) * jnp.exp(-log_scale)
    log_det = log_det - jnp.sum(log_scale, -1)
    x = jnp.concatenate([cond, x_trans], -1)
  return log_det - 0.5 * jnp.sum(x**2, -1) - 0.5 * dim * np.log(2 * np.pi)


def forward(params: list, z: jax.Array) -> jax.Array:
  """`z [B, D] -> x [B, D]` (sampling direction; the inverse of what `log_prob` applies)."""
  dim = z.shape[-1]
  for layer in range(len(params)):
    n_in, _ = _halves(dim, layer)
    cond, x_trans = z[..., :n_in], z[..., n_in:]
    h = cond
    for w, b in params[layer][:-1]:
      h = jax.nn.gelu(h @ w + b)
    w, b = params[layer][-1]
    out = h @ w + b
    n_out = x_trans.shape[-1]
    log_scale = SCALE_BOUND * jnp.tanh(out[..., :n_out] / SCALE_BOUND)
    z = jnp.concatenate([x_trans * jnp.exp(log_scale) + out[..., n_out:], cond], -1)
  return z
