"""Linear bijectors: fixed permutations and the Glow LU-decomposed linear map.

Permutations mix which dimensions a following coupling passes through; they
have no parameters and log-det 0. `lu_linear` is a learnable mixing (Kingma &
Dhariwal 2018, "Glow", section 3.2) with an O(D) log-determinant.
"""

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flowpose.bijectors import core

Array = jax.Array


def _check_perm(name: str, perm) -> np.ndarray:
  perm = np.asarray(perm)
  if perm.ndim != 1 or not np.array_equal(np.sort(perm), np.arange(perm.size)):
    raise ValueError(
        f"{name}: perm must be a permutation of 0..D-1, got {perm}")
  return perm.astype(np.int32)


def permutation(perm: Sequence[int]) -> core.Bijector:
  """Fixed permutation of the event dims: `y[..., i] = x[..., perm[i]]`.

  Args:
    perm: `[D]` permutation of `0..D-1`.

  Returns:
    A parameter-free `Bijector` (params `{}`), log-det 0.
  """
  perm = _check_perm("permutation", perm)
  inv_perm = np.argsort(perm)
  dim = perm.size

  def init(key, event_dim=None):
    del key
    core.check_event_dim("permutation", dim, event_dim)
    return {}

  def forward_and_log_det(params, x, context=None):
    del params, context
    core.check_input("permutation", x, dim)
    return x[..., perm], core.zero_log_det(x)

  def inverse_and_log_det(params, y, context=None):
    del params, context
    core.check_input("permutation", y, dim)
    return y[..., inv_perm], core.zero_log_det(y)

  return core.Bijector(init, forward_and_log_det, inverse_and_log_det)


def reverse(dim: int) -> core.Bijector:
  """Reverses the order of the `dim` event dimensions (RealNVP's swap)."""
  return permutation(np.arange(dim)[::-1])


def random_permutation(dim: int, seed: int) -> core.Bijector:
  """A fixed permutation drawn from `numpy.random.default_rng(seed)`."""
  return permutation(np.random.default_rng(seed).permutation(dim))


def lu_linear(dim: int, perm: Optional[Sequence[int]] = None) -> core.Bijector:
  """Glow's invertible linear map `y = P L U x + bias`, LU-parametrised.

  `P` is a fixed permutation (identity by default), `L` unit lower-triangular,
  `U` upper-triangular with diagonal `exp(log_diag)`, so
  `log|det| = sum(log_diag)` costs O(D) and the map can never become singular.
  All params start at zero: the identity map (times P).

  Args:
    dim: D.
    perm: optional fixed `[D]` permutation for P, `(P v)[i] = v[perm[i]]`.

  Returns:
    A `Bijector`; params `{"lower": [D, D] (strictly lower part used),
    "upper": [D, D] (strictly upper part used), "log_diag": [D],
    "bias": [D]}`.
  """
  perm = _check_perm("lu_linear",
                     np.arange(dim) if perm is None else perm)
  if perm.size != dim:
    raise ValueError(f"lu_linear: perm has {perm.size} entries, dim is {dim}")
  lower_mask = np.tril(np.ones((dim, dim), np.float32), -1)
  upper_mask = lower_mask.T

  def init(key, event_dim=None):
    del key
    core.check_event_dim("lu_linear", dim, event_dim)
    return {
        "lower": jnp.zeros((dim, dim), jnp.float32),
        "upper": jnp.zeros((dim, dim), jnp.float32),
        "log_diag": jnp.zeros((dim,), jnp.float32),
        "bias": jnp.zeros((dim,), jnp.float32),
    }

  def _factors(params):
    eye = jnp.eye(dim, dtype=params["lower"].dtype)
    lower = params["lower"] * lower_mask + eye
    upper = params["upper"] * upper_mask + jnp.diag(jnp.exp(params["log_diag"]))
    return lower, upper

  def forward_and_log_det(params, x, context=None):
    del context
    core.check_input("lu_linear", x, dim)
    lower, upper = _factors(params)
    # Row vectors: y = (P L U x)^T = x^T (L U)^T P^T. The D x D product and the column
    # permutation are formed once, so the batch sees one matmul (and no gather).
    matrix = _matmul(lower, upper).T[:, perm]
    y = jnp.matmul(x, matrix) + params["bias"]
    log_det = jnp.broadcast_to(jnp.sum(params["log_diag"]), x.shape[:-1])
    return y, log_det

  def inverse_and_log_det(params, y, context=None):
    del context
    core.check_input("lu_linear", y, dim)
    lower, upper = _factors(params)
    eye = jnp.eye(dim, dtype=lower.dtype)
    # Two D x D triangular solves and their D x D product, then one batched matmul: cheaper
    # than a solve per batch element (or two batched matmuls) and as accurate for the
    # well-conditioned matrices a flow learns. x = U^-1 L^-1 P^T (y - bias); P^T is a row
    # permutation of the D x D inverse, not a gather on the batch.
    lower_inv = jax.scipy.linalg.solve_triangular(
        lower, eye, lower=True, unit_diagonal=True)
    upper_inv = jax.scipy.linalg.solve_triangular(upper, eye, lower=False)
    matrix = _matmul(upper_inv, lower_inv).T[perm, :]
    x = jnp.matmul(y - params["bias"], matrix)
    log_det = jnp.broadcast_to(-jnp.sum(params["log_diag"]), y.shape[:-1])
    return x, log_det

  return core.Bijector(init, forward_and_log_det, inverse_and_log_det)


def _matmul(a: Array, b: Array) -> Array:
  """A D x D product of factors at full f32 precision (no TF32/bf16 on accelerators)."""
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def lu_linear_matrix(params: dict,
                     perm: Optional[Sequence[int]] = None) -> Array:
  """The dense `[D, D]` matrix `P L U` of `lu_linear` params (inspection)."""
  dim = params["log_diag"].shape[-1]
  perm = np.arange(dim) if perm is None else np.asarray(perm)
  lower = jnp.tril(params["lower"], -1) + jnp.eye(dim)
  upper = jnp.triu(params["upper"], 1) + jnp.diag(jnp.exp(params["log_diag"]))
  return (lower @ upper)[perm]
