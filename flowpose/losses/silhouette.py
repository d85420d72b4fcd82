"""Silhouette alignment: the part-alignment loss with ONE part, the person mask.

After Zanfir et al. (ECCV 2020), whose semantic part alignment degenerates to a silhouette term
when every model vertex and every mask pixel carry the same label: each sampled mask pixel must be
explained by its nearest projected vertex (E_pv, the mask is covered) and each projected vertex
must land on a mask pixel (E_vp, the body stays inside the mask). Both are chamfer terms between
point sets, so no rendering is needed.

Visibility. Unlike a part map, a silhouette is the union of the projections of ALL surfaces: an
occluded vertex still projects inside it. So every vertex gets weight 1 for E_vp by default (pass
`vertex_weights` to leave some out, e.g. clothing-free regions).

Limits (those of `parts.part_alignment_loss`): nearest-neighbour matching is local; a mask that
covers other people or objects pulls the body towards them (gmof bounds each pixel's pull).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flowpose.losses.parts import part_alignment_loss
from flowpose.losses.parts import sample_part_pixels


def silhouette_loss(
    projected_vertices: jax.Array,
    mask_pixels: jax.Array,
    mask_valid: jax.Array,
    *,
    sigma: float = 0.3,
    scale: float | jax.Array | None = None,
    vertex_weights: jax.Array | None = None,
    temperature: float | None = None,
    chunk_size: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Chamfer-style alignment of projected vertices with person-mask pixels (one person).

  Args:
    projected_vertices: [V, 2] model vertices in the image (pixels).
    mask_pixels: [N, 2] pixel centres sampled inside the person mask (`sample_mask_pixels`).
    mask_valid: [N] bool; False = padding. All False: the loss is 0.
    sigma: Geman-McClure scale in units of `scale` (pixels without it).
    scale: optional scalar person size (pixels), e.g. the keypoint box size.
    vertex_weights: optional [V] weights of the vertex->pixel term (default 1: all vertices).
    temperature: None (hard nearest neighbour) or the soft-min temperature (squared units).
    chunk_size: optional, bounds memory (see `part_alignment_loss`).

  Returns:
    (total scalar = E_pv + E_vp, terms {silhouette_pixel_to_vertex, silhouette_vertex_to_pixel}).
  """
  num_vertices = projected_vertices.shape[0]
  if vertex_weights is None:
    vertex_weights = jnp.ones((num_vertices,), projected_vertices.dtype)
  total, terms = part_alignment_loss(
      projected_vertices, jnp.zeros((num_vertices,), jnp.int32), vertex_weights, mask_pixels,
      jnp.zeros(mask_pixels.shape[:1], jnp.int32), mask_valid, num_parts=1, sigma=sigma,
      scale=scale, temperature=temperature, chunk_size=chunk_size)
  return total, {"silhouette_pixel_to_vertex": terms["part_pixel_to_vertex"],
                 "silhouette_vertex_to_pixel": terms["part_vertex_to_pixel"]}


def sample_mask_pixels(mask: np.ndarray, num_points: int,
                       rng: np.random.Generator | int | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Samples pixel centres inside a person mask (without replacement, fixed output size).

  Args:
    mask: [H, W] bool (or 0/1) person mask.
    num_points: N, the output length.
    rng: numpy Generator or seed.

  Returns:
    pixels [N, 2] float32 (u, v) = (column + 0.5, row + 0.5); valid [N] bool (False for padding
    when the mask has fewer than N pixels).
  """
  mask = np.asarray(mask)
  if mask.ndim != 2:
    raise ValueError(f"mask: expected [H, W], got {mask.shape}")
  labels = np.where(mask.astype(bool), 0, -1).astype(np.int32)
  pixels, _, valid = sample_part_pixels(labels, num_points, rng)
  return pixels, valid
