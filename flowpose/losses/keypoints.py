"""Robust 2D keypoint reprojection: Geman-McClure, confidence weighting, person scale.

Pure, jittable, unbatched (one person); batch with `jax.vmap`.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

_EPS = 1e-8


def gmof(residual_sq: jax.Array, sigma: float | jax.Array) -> jax.Array:
  """Geman-McClure robustifier as in SMPLify: sigma^2 r^2 / (sigma^2 + r^2).

  Quadratic near 0, saturates at sigma^2 for |r| >> sigma.

  Args:
    residual_sq: [...] squared residuals r^2 (>= 0).
    sigma: scalar, in the units of r.

  Returns:
    [...] robustified values, in [0, sigma^2).
  """
  sigma_sq = jnp.square(sigma)
  return sigma_sq * residual_sq / (sigma_sq + residual_sq)


def keypoint_reprojection_loss(
    pred_2d: jax.Array,
    target_2d: jax.Array,
    confidence: jax.Array,
    *,
    sigma: float = 100.0,
    scale: float | jax.Array | None = None,
) -> jax.Array:
  """Robust, confidence-weighted 2D keypoint loss for one person.

  loss = sum_k c_k rho(||p_k - t_k||^2 / scale^2) / sum_k c_k, over valid k.

  Keypoints with confidence <= 0 or a non-finite target are dropped *before*
  any arithmetic (jnp.where), so NaN targets give finite values and
  gradients. Normalising by the summed confidence makes the value a weighted
  mean: independent of the number of detected keypoints and of a global
  rescaling of the confidences. No valid keypoint -> 0.

  Args:
    pred_2d: [K, 2] projected model keypoints (pixels).
    target_2d: [K, 2] detected keypoints (pixels); NaN where missing.
    confidence: [K] detection confidences (0 = missing).
    sigma: Geman-McClure scale, in pixels when `scale` is None, else in units
      of `scale` (e.g. 0.1-0.3 of a bbox size).
    scale: optional scalar person scale in pixels (e.g.
      `person_scale_from_keypoints`); residuals are divided by it so the loss
      and `sigma` do not depend on image resolution.

  Returns:
    Scalar loss.
  """
  chex.assert_rank(pred_2d, 2)
  chex.assert_equal_shape([pred_2d, target_2d])
  chex.assert_shape(confidence, pred_2d.shape[:1])
  valid = (confidence > 0) & jnp.all(jnp.isfinite(target_2d), axis=-1)
  safe_target = jnp.where(valid[:, None], target_2d, 0.0)
  diff = jnp.where(valid[:, None], pred_2d - safe_target, 0.0)
  if scale is not None:
    diff = diff / scale
  weight = jnp.where(valid, confidence, 0.0)
  per_keypoint = gmof(jnp.sum(jnp.square(diff), axis=-1), sigma)
  return jnp.sum(weight * per_keypoint) / jnp.maximum(jnp.sum(weight), _EPS)


def person_scale_from_keypoints(target_2d: jax.Array,
                                confidence: jax.Array) -> jax.Array:
  """Max side of the bounding box of the valid keypoints (pixels).

  Args:
    target_2d: [K, 2] detected keypoints; NaN where missing.
    confidence: [K] confidences (0 = missing).

  Returns:
    Scalar person scale (>= 1 pixel, so it is a safe divisor).
  """
  valid = (confidence > 0) & jnp.all(jnp.isfinite(target_2d), axis=-1)
  lo = jnp.min(jnp.where(valid[:, None], target_2d, jnp.inf), axis=0)
  hi = jnp.max(jnp.where(valid[:, None], target_2d, -jnp.inf), axis=0)
  extent = jnp.where(jnp.any(valid), jnp.max(hi - lo), 1.0)
  return jnp.maximum(extent, 1.0)
