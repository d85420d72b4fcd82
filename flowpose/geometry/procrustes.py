"""Least-squares similarity alignment of point sets (Umeyama), as used by PA-MPJPE."""

from typing import Optional, Tuple

import chex
import jax
import jax.numpy as jnp


def _as_float(x) -> jax.Array:
  x = jnp.asarray(x)
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def procrustes(x: jax.Array, y: jax.Array, scale: bool = True,
               weights: Optional[jax.Array] = None
               ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Least-squares similarity transform with `y_n ~= s R x_n + t` (Umeyama).

  The SVD sign fix makes R a proper rotation even when the best orthogonal
  map would be a reflection (e.g. mirrored or planar point sets).

  Args:
    x: `[..., N, 3]` source points.
    y: `[..., N, 3]` target points.
    scale: estimate `s`; otherwise `s = 1` (rigid alignment).
    weights: optional `[..., N]` non-negative per-point weights (e.g. joint
      visibility); default uniform.

  Returns:
    `(s [...], R [..., 3, 3], t [..., 3])`.
  """
  x, y = _as_float(x), _as_float(y)
  chex.assert_equal_shape([x, y])
  chex.assert_axis_dimension(x, -1, 3)
  if weights is None:
    weights = jnp.ones(x.shape[:-1], x.dtype)
  w = _as_float(weights)[..., None]
  w = w / jnp.maximum(jnp.sum(w, axis=-2, keepdims=True), 1e-12)
  mu_x = jnp.sum(w * x, axis=-2)
  mu_y = jnp.sum(w * y, axis=-2)
  xc = x - mu_x[..., None, :]
  yc = y - mu_y[..., None, :]
  cov = jnp.swapaxes(w * yc, -1, -2) @ xc  # [..., 3, 3] = sum w y x^T.
  u, sv, vh = jnp.linalg.svd(cov)
  d = jnp.where(jnp.linalg.det(u) * jnp.linalg.det(vh) < 0, -1.0, 1.0)
  diag = jnp.stack([jnp.ones_like(d), jnp.ones_like(d), d], axis=-1)
  rot = (u * diag[..., None, :]) @ vh
  if scale:
    var_x = jnp.sum(w * xc * xc, axis=(-2, -1))
    s = jnp.sum(sv * diag, axis=-1) / jnp.maximum(var_x, 1e-12)
  else:
    s = jnp.ones(rot.shape[:-2], rot.dtype)
  t = mu_y - s[..., None] * jnp.einsum("...ij,...j->...i", rot, mu_x)
  return s, rot, t


def procrustes_align(x: jax.Array, y: jax.Array, scale: bool = True,
                     weights: Optional[jax.Array] = None) -> jax.Array:
  """`x [..., N, 3]` mapped by the `procrustes` transform onto `y [..., N, 3]`.

  This is the PA-MPJPE alignment: `mean |procrustes_align(pred, gt) - gt|`.
  """
  s, rot, t = procrustes(x, y, scale=scale, weights=weights)
  x = _as_float(x)
  return s[..., None, None] * (x @ jnp.swapaxes(rot, -1, -2)) + t[..., None, :]
