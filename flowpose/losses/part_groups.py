"""Part alignment on points grouped by part: `parts.part_alignment_loss`, fast.

`parts.part_alignment_loss` compares every pixel with every vertex (an
`[N, V]` squared-distance matrix per direction, other parts masked out), so
with P parts it spends ~P times the work that matters (the fitter's 384
pixels x 408 vertices of 17 parts: 2 x 157k distances per person and step,
of which ~9k pair points of one part). Here both point sets come grouped by
part, padded to fixed sizes (`group_by_label`, on the host, once per fit):
vertices `[P, Mv]`, pixels `[P, Mp]`; one `[P, Mp, Mv]` distance tensor
serves both directions. The value is that of `parts.part_alignment_loss` on
the same points (same terms, same per-part means; tested to float rounding);
only the order of the work changes.

    groups = group_by_label(labels, valid, num_parts)   # numpy, [.., P, M]
    loss, terms = grouped_part_alignment_loss(...)       # jnp, unbatched
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from flowpose.body.cpu_kernel import nearest as nearest_kernel
from flowpose.losses.keypoints import gmof

_FAR = 1e12  # as parts._FAR: masked entries stay finite (0 * _FAR = 0)
IMPLS = ("auto", "xla", "kernel")  # The hard minima's path (`grouped_part_alignment_loss`).


class Groups(NamedTuple):
  """Points grouped by part label, padded.

  Attributes:
    index: `[..., P, M]` int32 index of each member into the point array (0
      in padding slots).
    valid: `[..., P, M]` bool, False for padding.
  """
  index: np.ndarray
  valid: np.ndarray


def group_by_label(labels: np.ndarray, valid: np.ndarray | None,
                   num_parts: int, size: int | None = None) -> Groups:
  """Groups the points of each row by part label (numpy, host side).

  Points with `valid` False or a label outside `[0, num_parts)` are left out
  (as `parts.part_alignment_loss` leaves them out of every term).

  Args:
    labels: `[..., N]` int labels.
    valid: `[..., N]` bool, or None (all valid).
    num_parts: P.
    size: slots per part M; None = the largest group over all rows (at
      least 1), so a batch shares one shape.

  Returns:
    `Groups` with `index`, `valid` of shape `[..., P, M]`; members keep their
    order within a group.

  Raises:
    ValueError: a group has more than `size` members.
  """
  labels = np.asarray(labels)
  valid = np.ones(labels.shape, bool) if valid is None else np.asarray(
      valid, bool)
  if valid.shape != labels.shape:
    raise ValueError(f"group_by_label: valid {valid.shape} vs labels "
                     f"{labels.shape}")
  keep = valid & (labels >= 0) & (labels < num_parts)
  flat_labels = labels.reshape(-1, labels.shape[-1])
  flat_keep = keep.reshape(flat_labels.shape)
  counts = np.stack([np.bincount(l[k], minlength=num_parts)[:num_parts]
                     for l, k in zip(flat_labels, flat_keep)]) if len(
                         flat_labels) else np.zeros((0, num_parts), np.int64)
  largest = int(counts.max(initial=0))
  size = max(largest, 1) if size is None else int(size)
  if largest > size:
    raise ValueError(f"group_by_label: a part has {largest} points, more "
                     f"than size={size}")
  index = np.zeros((len(flat_labels), num_parts, size), np.int32)
  slot_valid = np.zeros(index.shape, bool)
  for row, (l, k) in enumerate(zip(flat_labels, flat_keep)):
    members = np.flatnonzero(k)
    order = members[np.argsort(l[members], kind="stable")]
    part = l[order]
    start = np.searchsorted(part, np.arange(num_parts))
    slot = np.arange(len(order)) - start[part]
    index[row, part, slot] = order
    slot_valid[row, part, slot] = True
  shape = labels.shape[:-1] + (num_parts, size)
  return Groups(index.reshape(shape), slot_valid.reshape(shape))


def _part_means(values, weights):
  """Per part weighted means `[P]` (over the slot axis), their mean over
  parts with weight, and which parts had weight (as `parts._mean_over_parts`)."""
  part_sum = jnp.sum(weights * values, axis=-1)
  part_weight = jnp.sum(weights, axis=-1)
  present = part_weight > 1e-6
  part_mean = jnp.where(present, part_sum / jnp.maximum(part_weight, 1e-6),
                        0.0)
  return jnp.sum(part_mean) / jnp.maximum(jnp.sum(present), 1), present


def _masked_dist(verts, pixels, mask):
  """`[P, Mp, Mv]` squared distances, `_FAR` where `mask` is False."""
  dist_sq = jnp.sum(jnp.square(pixels[:, :, None] - verts[:, None]), -1)
  return jnp.where(mask, dist_sq, _FAR)


@jax.custom_vjp
def _nearest_both(verts, pixels, mask):
  """(pixel -> nearest vertex `[P, Mp]`, vertex -> nearest pixel `[P, Mv]`) squared distances.

  The hard minima of `_nearest` in both directions from one distance tensor. The VJP is written
  out: one pass over `[P, Mp, Mv]` weighting each pair by the cotangent of the minimum it attains,
  then `d/dv sum_m w_mv |x_m - v|^2 = 2 sum_m w_mv (v - x_m)`; autodiff's min VJP
  spent ~4 such passes (indicator, tie counts, divide, a transposed gather; profile of a parts
  fit step, WORKSPACE.md issue 15). Equal gradients except at exact ties (autodiff splits the
  cotangent among tied pairs; here each gets all of it). The pixels get no gradient (evidence).
  """
  return _nearest_both_fwd(verts, pixels, mask)[0]


def _nearest_both_fwd(verts, pixels, mask):
  masked = _masked_dist(verts, pixels, mask)
  pixel_min, vertex_min = jnp.min(masked, 2), jnp.min(masked, 1)
  return (pixel_min, vertex_min), (verts, pixels, mask, masked, pixel_min, vertex_min)


def _nearest_both_bwd(res, cotangents):
  verts, pixels, mask, masked, pixel_min, vertex_min = res
  g_pixel, g_vertex = cotangents
  weight = jnp.where(mask, jnp.where(masked == pixel_min[:, :, None], g_pixel[:, :, None], 0.0) +
                     jnp.where(masked == vertex_min[:, None, :], g_vertex[:, None, :], 0.0), 0.0)
  # As autodiff rounds it: the differences first (no cancellation of v sum w - sum w x).
  grad = 2 * jnp.sum(weight[..., None] * (verts[:, None] - pixels[:, :, None]), 1)
  return grad, jnp.zeros_like(pixels), None


_nearest_both.defvjp(_nearest_both_fwd, _nearest_both_bwd)


def _nearest_from_pairs(verts, pixels, v_ok, p_ok, pixel_arg, vertex_arg):
  """`_nearest_both`'s minima from their argmin slots (`cpu_kernel.nearest`): the distances of
  the chosen pairs only, in the reference's float32 order, so the values are the minima and
  autodiff sends each minimum's cotangent to its pair (the `[P, Mp, Mv]` tensor never exists).

  Args: verts `[P, Mv, 2]`, pixels `[P, Mp, 2]`, v_ok `[P, Mv]`, p_ok `[P, Mp]`, pixel_arg
  `[P, Mp]`, vertex_arg `[P, Mv]`. Returns `([P, Mp], [P, Mv])`, `_FAR` where unmatched.
  """
  nearest_vert = jnp.take_along_axis(verts, pixel_arg[..., None], axis=1)  # [P, Mp, 2]
  pixel_min = jnp.sum(jnp.square(pixels - nearest_vert), -1)
  pixel_min = jnp.where(p_ok & jnp.any(v_ok, -1, keepdims=True), pixel_min, _FAR)
  nearest_pix = jax.lax.stop_gradient(
      jnp.take_along_axis(pixels, vertex_arg[..., None], axis=1))  # [P, Mv, 2]
  vertex_min = jnp.sum(jnp.square(nearest_pix - verts), -1)
  vertex_min = jnp.where(v_ok & jnp.any(p_ok, -1, keepdims=True), vertex_min, _FAR)
  return pixel_min, vertex_min


def _nearest(dist_sq, mask, axis, temperature):
  """Hard or soft nearest distance along `axis` among `mask`ed entries."""
  masked = jnp.where(mask, dist_sq, _FAR)
  if temperature is None:
    return jnp.min(masked, axis=axis)
  weights = jax.nn.softmax(-masked / temperature, axis=axis)
  return jnp.sum(weights * jnp.where(mask, dist_sq, 0.0), axis=axis)


def grouped_part_alignment_loss(
    projected_vertices: jax.Array,
    vertex_groups: jax.Array,
    vertex_group_valid: jax.Array,
    vertex_visibility: jax.Array,
    part_pixels: jax.Array,
    pixel_groups: jax.Array,
    pixel_group_valid: jax.Array,
    *,
    sigma: float = 50.0,
    scale: float | jax.Array | None = None,
    temperature: float | None = None,
    vertices_grouped: bool = False,
    impl: str = "auto",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`parts.part_alignment_loss` with both point sets grouped by part.

  Args:
    projected_vertices: `[V, 2]` projected model vertices (pixels).
    vertex_groups, vertex_group_valid: `[P, Mv]` (`group_by_label` of the
      vertex labels).
    vertices_grouped: static; True when the vertices already come in group order with every
      slot filled (`vertex_groups` = `arange(V).reshape(P, Mv)`, all valid; the fitter's subset,
      `make_fit_body`): a reshape replaces the gathers (and their scatter-add gradient).
    vertex_visibility: `[V]` weights in [0, 1] (gradient stopped).
    part_pixels: `[N, 2]` evidence pixels.
    pixel_groups, pixel_group_valid: `[P, Mp]` (`group_by_label` of the pixel
      labels and validity).
    sigma, scale, temperature: as `parts.part_alignment_loss`.
    impl: static, the hard minima's path: "auto" (the CPU kernel's argmins, `cpu_kernel.nearest`,
      where available, else XLA), "xla" (the `[P, Mp, Mv]` tensor and its written-out VJP) or
      "kernel" (raise where unavailable). Same values; gradients equal except at exact ties.

  Returns:
    `(total, terms)` as `parts.part_alignment_loss`.
  """
  chex.assert_shape(projected_vertices, (None, 2))
  chex.assert_shape(part_pixels, (None, 2))
  chex.assert_equal_shape([vertex_groups, vertex_group_valid])
  chex.assert_equal_shape([pixel_groups, pixel_group_valid])
  chex.assert_equal_shape_prefix([vertex_groups, pixel_groups], 1)
  visibility = jax.lax.stop_gradient(jnp.asarray(vertex_visibility))
  if scale is not None:
    projected_vertices = projected_vertices / scale
    part_pixels = part_pixels / scale
  if vertices_grouped:
    verts = projected_vertices.reshape(vertex_groups.shape + (2,))  # [P, Mv, 2]
    visibility = visibility.reshape(vertex_groups.shape)
  else:
    verts = projected_vertices[vertex_groups]
    visibility = visibility[vertex_groups]
  pixels = part_pixels[pixel_groups]  # [P, Mp, 2]
  v_ok, p_ok = vertex_group_valid, pixel_group_valid
  mask = p_ok[:, :, None] & v_ok[:, None, :]  # [P, Mp, Mv]
  if impl not in IMPLS:
    raise ValueError(f"grouped_part_alignment_loss: impl must be one of {IMPLS}, got {impl!r}")
  pairs = None
  if temperature is None and impl != "xla":
    pairs = nearest_kernel.nearest_pair_indices(verts, pixels, v_ok, p_ok)
    if pairs is None and impl == "kernel":
      raise RuntimeError("grouped_part_alignment_loss: impl='kernel' but the CPU nearest-pair "
                         "kernel is unavailable (flowpose.body.cpu_kernel.build.info())")
  if pairs is not None:
    nearest_pixel, nearest_vertex = _nearest_from_pairs(verts, pixels, v_ok, p_ok, *pairs)
  elif temperature is None:
    nearest_pixel, nearest_vertex = _nearest_both(verts, pixels, mask)
  else:
    dist_sq = jnp.sum(jnp.square(pixels[:, :, None] - verts[:, None]), -1)
    nearest_pixel = _nearest(dist_sq, mask, 2, temperature)
    nearest_vertex = _nearest(dist_sq, mask, 1, temperature)
  pixel_matched = p_ok & jnp.any(v_ok, -1, keepdims=True)
  pixel_dist = jnp.where(pixel_matched, nearest_pixel, 0.0)
  pixel_to_vertex, present_pv = _part_means(
      gmof(pixel_dist, sigma), pixel_matched.astype(pixel_dist.dtype))
  vertex_matched = v_ok & jnp.any(p_ok, -1, keepdims=True)
  vertex_dist = jnp.where(vertex_matched, nearest_vertex, 0.0)
  vertex_to_pixel, present_vp = _part_means(
      gmof(vertex_dist, sigma), jnp.where(vertex_matched, visibility, 0.0))
  terms = {
      "part_pixel_to_vertex": pixel_to_vertex,
      "part_vertex_to_pixel": vertex_to_pixel,
      "part_present_pixel_to_vertex": present_pv,
      "part_present_vertex_to_pixel": present_vp,
  }
  return pixel_to_vertex + vertex_to_pixel, terms
