"""A z-buffered triangle rasterizer in numpy: depth, face index, barycentrics; part-label maps.

Not differentiable: everything here is plain numpy, for visualisation, evaluation and for
visibility masks that are computed once and then held fixed (e.g. by a part-alignment loss).

Camera convention (OpenCV, `flowpose.geometry.camera`; cameras: `flowpose.evidence.views`):
  * camera frame: x right, y down, z forward (into the scene);
  * `x_cam = R @ x_world + t`;
  * pixel coordinates `u = fx * x_cam / z_cam + cx`, `v = fy * y_cam / z_cam + cy`, with `u`
    along image columns and `v` along rows;
  * pixel `(row i, col j)` covers `[j, j+1) x [i, i+1)`, so its **centre is at (j + 0.5, i + 0.5)**
    and a point at `(u, v)` lies in pixel `(floor(v), floor(u))`.
A pixel is covered by a triangle when its centre lies inside the projected triangle (edges
inclusive, so meshes have no cracks); the depth map holds the camera-frame `z` (distance along
the optical axis, not along the ray), interpolated perspective-correctly.

Triangles with any vertex nearer than `near` are dropped whole (no near-plane clipping): fine for
a camera that looks at a body from outside it.

Vectorisation: triangles are bucketed by the size of their pixel-centre bounding boxes (rounded
up to powers of two); each bucket tests all candidate pixels of all its triangles at once with
edge functions, and one lexicographic sort on (pixel, depth) resolves all fragments.
"""

from typing import NamedTuple

import numpy as np

from flowpose.evidence import views
from flowpose.geometry import camera as camera_lib


class Rasterization(NamedTuple):
  """Per-pixel output of `rasterize` for an image of size (H, W).

  Attributes:
    depth: [H, W] float32 camera-frame z of the nearest surface, `inf` where empty.
    face_index: [H, W] int32 index into `faces` of the visible triangle, -1 where empty.
    barycentric: [H, W, 3] float32 perspective-correct barycentric coordinates of the pixel
      centre in the visible triangle (weights of `faces[f, 0..2]`), 0 where empty.
  """
  depth: np.ndarray
  face_index: np.ndarray
  barycentric: np.ndarray


def _next_pow2(x: np.ndarray) -> np.ndarray:
  return (1 << np.ceil(np.log2(np.maximum(x, 1))).astype(np.int64)).astype(np.int64)


def rasterize(vertices, faces, camera, image_size, *, near: float = camera_lib.MIN_DEPTH,
              cull_backfaces: bool = False, chunk_pixels: int = 1 << 21) -> Rasterization:
  """Z-buffer rasterization of a triangle mesh.

  Args:
    vertices: [V, 3] world positions.
    faces: [F, 3] vertex indices.
    camera: a `PinholeCamera` (or anything `as_pinhole` accepts).
    image_size: (H, W) in pixels.
    near: triangles with a vertex at camera z < near are dropped (default: the projection's
      depth clamp, so a drawn triangle is never distorted by it).
    cull_backfaces: drop triangles whose counter-clockwise (right-hand-rule) normal points away
      from the camera. Off by default so meshes of either winding render.
    chunk_pixels: bound on candidate pixels tested at once (memory ~ 100 bytes each).

  Returns:
    A `Rasterization`.
  """
  height, width = int(image_size[0]), int(image_size[1])
  cam = views.as_pinhole(camera)
  faces = np.asarray(faces, np.int64).reshape(-1, 3)
  x_cam, uv = views.to_camera(vertices, cam)
  z_vert = x_cam[:, 2]

  tri_uv = uv[faces]  # [F, 3, 2]
  tri_z = z_vert[faces]  # [F, 3]
  valid = np.all(tri_z >= near, axis=1)
  if cull_backfaces:
    tri_cam = x_cam[faces]
    normal = np.cross(tri_cam[:, 1] - tri_cam[:, 0], tri_cam[:, 2] - tri_cam[:, 0])
    valid &= np.einsum("fi,fi->f", normal, tri_cam[:, 0]) < 0  # Camera is at the origin.
  tri_uv = np.where(valid[:, None, None], tri_uv, 0.0)
  x0, y0 = tri_uv[:, 0, 0], tri_uv[:, 0, 1]
  x1, y1 = tri_uv[:, 1, 0], tri_uv[:, 1, 1]
  x2, y2 = tri_uv[:, 2, 0], tri_uv[:, 2, 1]
  # Edge function of directed edge (a, b): E(p) = A p_x + B p_y + C = cross(b - a, p - a).
  # Reversing an edge negates A, B and C exactly in floating point, so two triangles sharing
  # an edge make exactly opposite decisions there and inclusive tests leave no cracks.
  # coef: [F, 3 edges (edge i is opposite vertex i), 3 (A, B, C)].
  coef = np.array([(ya - yb, xb - xa, xa * yb - xb * ya) for (xa, ya), (xb, yb) in (
      ((x1, y1), (x2, y2)), ((x2, y2), (x0, y0)), ((x0, y0), (x1, y1)))]).transpose(2, 0, 1)
  area2 = coef[:, 2, 0] * x2 + coef[:, 2, 1] * y2 + coef[:, 2, 2]  # E_01(v2) = 2 * area.
  abs_area2 = np.abs(area2)
  valid &= abs_area2 > 1e-12

  # Pixel (i, j) has its centre at (j + 0.5, i + 0.5); take the centres inside the bbox.
  u_min, u_max = tri_uv[..., 0].min(1), tri_uv[..., 0].max(1)
  v_min, v_max = tri_uv[..., 1].min(1), tri_uv[..., 1].max(1)
  col_lo = np.clip(np.ceil(u_min - 0.5), 0, width).astype(np.int64)
  col_hi = np.clip(np.floor(u_max - 0.5), -1, width - 1).astype(np.int64)
  row_lo = np.clip(np.ceil(v_min - 0.5), 0, height).astype(np.int64)
  row_hi = np.clip(np.floor(v_max - 0.5), -1, height - 1).astype(np.int64)
  valid &= (col_hi >= col_lo) & (row_hi >= row_lo)

  # Flipping clockwise triangles' edge functions (an exact sign change) makes "inside" >= 0.
  oriented = coef * np.where(area2 < 0, -1.0, 1.0)[:, None, None]
  face_ids = np.nonzero(valid)[0]
  box_w = _next_pow2(col_hi[face_ids] - col_lo[face_ids] + 1)
  box_h = _next_pow2(row_hi[face_ids] - row_lo[face_ids] + 1)
  bucket_key = box_w * (1 << 20) + box_h
  inv_z = 1.0 / np.where(valid[:, None], tri_z, 1.0)

  frag_pixel, frag_depth, frag_face, frag_bary = [], [], [], []
  for key in np.unique(bucket_key):
    kw, kh = int(key >> 20), int(key & ((1 << 20) - 1))
    members = face_ids[bucket_key == key]
    step = max(1, chunk_pixels // (kw * kh))
    offs_col = np.arange(kw)[None, None, :]
    offs_row = np.arange(kh)[None, :, None]
    for start in range(0, len(members), step):
      f = members[start:start + step]
      cols = col_lo[f][:, None, None] + offs_col  # [n, 1, kw]
      rows = row_lo[f][:, None, None] + offs_row  # [n, kh, 1]
      px, py = cols + 0.5, rows + 0.5
      inside = (cols <= col_hi[f][:, None, None]) & (rows <= row_hi[f][:, None, None])
      edges = []
      for e in range(3):
        c = oriented[f, e]
        value = c[:, 0, None, None] * px + c[:, 1, None, None] * py + c[:, 2, None, None]
        inside &= value >= 0
        edges.append(value)
      n_idx, r_idx, c_idx = np.nonzero(inside)
      if n_idx.size == 0:
        continue
      bary = np.stack([ed[n_idx, r_idx, c_idx] for ed in edges], -1) / abs_area2[f][n_idx, None]
      # 1/z is affine in screen space, so interpolate it and weight by it (perspective-correct).
      weighted = bary * inv_z[f][n_idx]
      inv_depth = weighted.sum(-1)
      frag_pixel.append((row_lo[f][n_idx] + r_idx) * width + col_lo[f][n_idx] + c_idx)
      frag_depth.append(1.0 / inv_depth)
      frag_face.append(f[n_idx])
      frag_bary.append(weighted / inv_depth[:, None])

  depth = np.full(height * width, np.inf, np.float32)
  face_index = np.full(height * width, -1, np.int32)
  barycentric = np.zeros((height * width, 3), np.float32)
  if frag_pixel:
    pixel = np.concatenate(frag_pixel)
    frag_z = np.concatenate(frag_depth)
    face = np.concatenate(frag_face)
    # Nearest fragment per pixel; equal depths go to the lower face index (deterministic).
    order = np.lexsort((face, frag_z, pixel))
    sorted_pixel = pixel[order]
    first = np.ones(len(order), bool)
    first[1:] = sorted_pixel[1:] != sorted_pixel[:-1]
    win = order[first]
    depth[pixel[win]] = frag_z[win]
    face_index[pixel[win]] = face[win]
    barycentric[pixel[win]] = np.concatenate(frag_bary)[win]
  return Rasterization(depth.reshape(height, width), face_index.reshape(height, width),
                       barycentric.reshape(height, width, 3))


def face_labels(faces, vertex_labels) -> np.ndarray:
  """Per-face labels from per-vertex labels.

  A face takes the label shared by at least two of its vertices (the majority); when all three
  differ it takes the label of its first vertex `faces[f, 0]`.

  Args:
    faces: [F, 3] vertex indices.
    vertex_labels: [V] integer labels.

  Returns:
    [F] int32 labels.
  """
  labels = np.asarray(vertex_labels)[np.asarray(faces)]  # [F, 3]
  a, b, c = labels[:, 0], labels[:, 1], labels[:, 2]
  return np.where((b == c) & (a != b), b, a).astype(np.int32)


def label_image(face_index, face_values, background=-1) -> np.ndarray:
  """Per-pixel lookup: face_index [H, W] (-1 empty), face_values [F, ...] -> [H, W, ...].

  Empty pixels get `background`; the dtype is that of `face_values`.
  """
  face_values = np.asarray(face_values)
  out = face_values[np.maximum(face_index, 0)]
  out[face_index < 0] = background
  return out
