"""Semantic body-part alignment (rendering-free) and its evidence sampling.

Every jnp function here is pure, jittable and *unbatched* (one person, one
image); batch with `jax.vmap`.

Semantic part alignment (after Zanfir et al., ECCV 2020, "Weakly Supervised 3D
Human Pose and Shape Reconstruction with Normalizing Flows"), rendering-free:
the model is a labelled point set (projected vertices `u_v`, part `l_v`,
visibility weight `w_v`) and the evidence a labelled point set (pixels `x_n`
sampled from a part-segmentation image with `sample_part_pixels`, part `c_n`).
With `d(a, b) = ||a - b||^2 / scale^2` and `rho = gmof(., sigma)`:

  pixel->vertex  E_pv = mean_p mean_{n: c_n=p} rho(min_{v: l_v=p} d(x_n, u_v))
  vertex->pixel  E_vp = mean_p sum_{v: l_v=p} w_v rho(min_{n: c_n=p} d(u_v,x_n))
                               / sum_{v: l_v=p} w_v

(`mean_p` runs over the parts that have a term.) Each pixel must be explained
by some vertex of its part, visible or not (the visibility estimate is itself
uncertain, and an occluded-in-the-model part still has to cover its pixels);
each visible vertex must land on a pixel of its part. Both are computed from
the `[N, V]` squared-distance matrix with label-equality masking (other parts
get a large constant, so min / soft-min ignore them) -- no Python loops over
parts; `vertex_subset` and `chunk_size` bound the cost. `temperature` switches
the hard nearest neighbour to a soft one (softmax(-d / T)-weighted mean of d).

Limits of this formulation:
  * A part absent from the evidence (no pixels) adds nothing: its vertices
    are not pulled anywhere and nothing says "this part should be hidden".
    There is no background / silhouette term either.
  * Nearest-neighbour matching is local: large initial errors, left/right
    swaps and parts folded onto each other are local minima.
  * Visibility comes from the caller (`raster.vertex_visibility` of the
    current estimate, or the cheap `soft_visibility_from_normals`, which
    ignores self-occlusion) and is a weight, not an optimisation target: its
    gradient is stopped here.
  * Pixel discretisation, finite vertex density and the sparsity of the
    sampled pixels leave a small non-zero loss at the true pose (~0.5 px^2
    with every labelled pixel and ~2 px vertex spacing; more with fewer
    sampled pixels, which leave gaps for E_vp).
  * A label map from a segmenter is noisy at part boundaries; gmof bounds
    the pull of each wrong pixel to sigma^2 but does not remove it.

Out of scope here: interpenetration (self-contact) penalties, temporal
(smoothness) terms for sequences, 3D metrics (see `flowpose.metrics`).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from flowpose.losses.keypoints import gmof

# Stands in for "infinitely far" in masked distance matrices. Finite (unlike
# inf) so masked entries times zero weights stay 0 and gradients stay finite.
_FAR = 1e12


def soft_visibility_from_normals(vertices_cam: jax.Array,
                                 faces: jax.Array,
                                 *,
                                 sharpness: float = 10.0) -> jax.Array:
  """Differentiable, cheap visibility weights: does a vertex face the camera?

  w_v = sigmoid(sharpness * cos(angle between the vertex normal and the
  direction to the camera centre)). Vertex normals are area-weighted sums of
  face normals; faces must be wound counter-clockwise seen from outside
  (right-hand rule gives outward normals). This ignores self-occlusion: a
  front-facing vertex behind an arm still gets weight ~1 (use
  `raster.vertex_visibility` for a z-buffer test). Vertices in no face get
  0.5.

  Args:
    vertices_cam: [V, 3] vertices in the OpenCV camera frame (camera at the
      origin, z forward).
    faces: [F, 3] int triangle indices.
    sharpness: slope of the sigmoid; larger = closer to a hard front test.

  Returns:
    [V] weights in (0, 1).
  """
  chex.assert_shape(vertices_cam, (None, 3))
  chex.assert_shape(faces, (None, 3))
  tri = vertices_cam[faces]  # [F, 3, 3]
  face_normals = jnp.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
  vertex_normals = jnp.zeros_like(vertices_cam)
  for corner in range(3):
    vertex_normals = vertex_normals.at[faces[:, corner]].add(face_normals)

  def _unit(x):
    # eps inside the sqrt keeps the gradient finite for zero-length vectors.
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), -1, keepdims=True) + 1e-20)

  cos = jnp.sum(_unit(vertex_normals) * _unit(-vertices_cam), axis=-1)
  return jax.nn.sigmoid(sharpness * cos)


def _nearest_same_label(queries, query_labels, query_valid, refs, ref_labels,
                        ref_valid, temperature, chunk_size):
  """Per query, the squared distance to the nearest valid same-label ref.

  Args:
    queries: [Q, 2]; query_labels: [Q] int; query_valid: [Q] bool.
    refs: [R, 2]; ref_labels: [R] int; ref_valid: [R] bool.
    temperature: None (hard min) or soft-min temperature (squared units).
    chunk_size: None, or queries per chunk (bounds memory at chunk x R).

  Returns:
    (dist_sq [Q], matched [Q] bool); matched is False for invalid queries
    and for queries whose label no valid ref carries (dist_sq is then 0).
  """

  def one_query(query, label, valid):
    same = ref_valid & (ref_labels == label)  # [R]
    dist_sq = jnp.sum(jnp.square(refs - query), axis=-1)  # [R]
    masked = jnp.where(same, dist_sq, _FAR)
    if temperature is None:
      nearest = jnp.min(masked)
    else:
      # Soft nearest neighbour: a weighted mean of distances (>= the hard
      # min, unlike -T logsumexp(-d/T), which goes negative when many refs
      # are equally close).
      weights = jax.nn.softmax(-masked / temperature)
      nearest = jnp.sum(weights * jnp.where(same, dist_sq, 0.0))
    matched = valid & jnp.any(same)
    return jnp.where(matched, nearest, 0.0), matched

  if chunk_size is None:
    return jax.vmap(one_query)(queries, query_labels, query_valid)
  # Recompute each chunk in the backward pass so memory stays chunk x R.
  return jax.lax.map(lambda args: jax.checkpoint(one_query)(*args),
                     (queries, query_labels, query_valid),
                     batch_size=chunk_size)


def _mean_over_parts(values, weights, labels, num_parts):
  """Weighted mean within each part, then mean over parts with weight > 0.

  Args:
    values: [M]; weights: [M] (0 = not counted); labels: [M] int.
    num_parts: static number of parts P.

  Returns:
    (scalar mean over present parts, [P] per-part means, [P] bool present).
  """
  # Labels outside [0, num_parts) are dropped by segment_sum.
  part_sum = jax.ops.segment_sum(weights * values, labels, num_parts)
  part_weight = jax.ops.segment_sum(weights, labels, num_parts)
  present = part_weight > 1e-6
  part_mean = jnp.where(present, part_sum / jnp.maximum(part_weight, 1e-6),
                        0.0)
  total = jnp.sum(part_mean) / jnp.maximum(jnp.sum(present), 1)
  return total, part_mean, present


def part_alignment_loss(
    projected_vertices: jax.Array,
    vertex_labels: jax.Array,
    vertex_visibility: jax.Array,
    part_pixels: jax.Array,
    pixel_labels: jax.Array,
    pixel_valid: jax.Array,
    *,
    num_parts: int,
    sigma: float = 50.0,
    scale: float | jax.Array | None = None,
    temperature: float | None = None,
    vertex_subset: jax.Array | None = None,
    chunk_size: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Semantic body-part alignment loss (see the module docstring).

  total = E_pv + E_vp; every part that has a term counts equally.

  Args:
    projected_vertices: [V, 2] model vertices projected to the image (pixels).
    vertex_labels: [V] int part index in [0, num_parts); < 0 = unlabelled
      (ignored).
    vertex_visibility: [V] weights in [0, 1] for the vertex->pixel term
      (gradient stopped).
    part_pixels: [N, 2] evidence pixel centres (u, v), e.g. from
      `sample_part_pixels`, in the same image frame as `projected_vertices`.
    pixel_labels: [N] int part index; < 0 = ignored.
    pixel_valid: [N] bool; False = padding.
    num_parts: static P, the body model's `len(part_names)`; points with
      labels outside [0, P) are left out of the averages. Pixels of a part
      that no vertex carries (and vice versa) are left out too.
    sigma: Geman-McClure scale, pixels (or units of `scale`).
    scale: optional scalar person scale in pixels; coordinates are divided by
      it so `sigma`/`temperature` are resolution independent.
    temperature: None = hard nearest neighbour; else soft nearest neighbour
      with softmax(-d^2 / temperature) weights, in squared (scaled) units,
      e.g. 4.0 = (2 px)^2.
    vertex_subset: optional [S] int indices; only these vertices are used
      (e.g. a fixed uniform subsample of a 13k-vertex mesh), cost O(N S).
    chunk_size: optional static chunk length: distances are computed (and
      recomputed for the gradient) in chunks of this many rows, bounding
      memory to chunk_size x max(N, V) instead of N x V.

  Returns:
    (total scalar, terms) with terms `part_pixel_to_vertex`,
    `part_vertex_to_pixel` (scalars), `part_present_pixel_to_vertex` and
    `part_present_vertex_to_pixel` ([P] bool: which parts had a term).
  """
  chex.assert_shape(projected_vertices, (None, 2))
  num_vertices = projected_vertices.shape[0]
  chex.assert_shape([vertex_labels, vertex_visibility], (num_vertices,))
  chex.assert_shape(part_pixels, (None, 2))
  chex.assert_shape([pixel_labels, pixel_valid], part_pixels.shape[:1])
  vertex_labels = jnp.asarray(vertex_labels)
  vertex_visibility = jnp.asarray(vertex_visibility)
  if vertex_subset is not None:
    projected_vertices = projected_vertices[vertex_subset]
    vertex_labels = vertex_labels[vertex_subset]
    vertex_visibility = vertex_visibility[vertex_subset]
  vertex_visibility = jax.lax.stop_gradient(vertex_visibility)
  if scale is not None:
    projected_vertices = projected_vertices / scale
    part_pixels = part_pixels / scale
  vertex_valid = vertex_labels >= 0
  pixel_valid = pixel_valid.astype(bool) & (pixel_labels >= 0)

  pixel_dist, pixel_matched = _nearest_same_label(
      part_pixels, pixel_labels, pixel_valid, projected_vertices,
      vertex_labels, vertex_valid, temperature, chunk_size)
  pixel_to_vertex, _, present_pv = _mean_over_parts(
      gmof(pixel_dist, sigma), pixel_matched.astype(pixel_dist.dtype),
      pixel_labels, num_parts)

  vertex_dist, vertex_matched = _nearest_same_label(
      projected_vertices, vertex_labels, vertex_valid, part_pixels,
      pixel_labels, pixel_valid, temperature, chunk_size)
  vertex_to_pixel, _, present_vp = _mean_over_parts(
      gmof(vertex_dist, sigma),
      jnp.where(vertex_matched, vertex_visibility, 0.0), vertex_labels,
      num_parts)

  terms = {
      "part_pixel_to_vertex": pixel_to_vertex,
      "part_vertex_to_pixel": vertex_to_pixel,
      "part_present_pixel_to_vertex": present_pv,
      "part_present_vertex_to_pixel": present_vp,
  }
  return pixel_to_vertex + vertex_to_pixel, terms


def sample_part_pixels(
    label_image: np.ndarray,
    num_points: int,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Samples labelled pixels from a part-segmentation image, evenly per part.

  Each part present in the image (label >= 0; -1 = background is skipped)
  gets an equal share of `num_points`, drawn without replacement; a part with
  fewer pixels than its share gives all of them and the rest goes to the
  other parts (water-filling), so small parts (hands) are not drowned by the
  torso. Output has a fixed size so a jitted loss compiles once.

  Args:
    label_image: [H, W] int part labels, -1 = background.
    num_points: N, the output length.
    rng: numpy Generator or seed.

  Returns:
    pixels [N, 2] float32 pixel centres (u, v) = (column + 0.5, row + 0.5),
    the convention of `flowpose.geometry.camera` and `flowpose.evidence.raster`;
    labels [N] int32 (-1 for padding); valid [N] bool (False for padding,
    when the image has < N part pixels).
  """
  label_image = np.asarray(label_image)
  if label_image.ndim != 2:
    raise ValueError(f"label_image: expected [H, W], got {label_image.shape}")
  rng = np.random.default_rng(rng)
  rows, cols = np.nonzero(label_image >= 0)
  labels_flat = label_image[rows, cols]
  parts, counts = np.unique(labels_flat, return_counts=True)
  chosen = []
  remaining = num_points
  order = np.argsort(counts, kind="stable")  # Smallest parts first.
  for i, part_index in enumerate(order):
    share = remaining // (len(order) - i)
    members = np.flatnonzero(labels_flat == parts[part_index])
    take = min(len(members), share)
    chosen.append(rng.choice(members, size=take, replace=False))
    remaining -= take
  chosen = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
  pixels = np.zeros((num_points, 2), np.float32)
  labels = np.full((num_points,), -1, np.int32)
  valid = np.zeros((num_points,), bool)
  count = len(chosen)
  pixels[:count, 0] = cols[chosen] + 0.5
  pixels[:count, 1] = rows[chosen] + 0.5
  labels[:count] = labels_flat[chosen]
  valid[:count] = True
  return pixels, labels, valid
