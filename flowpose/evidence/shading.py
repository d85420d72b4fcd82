"""Lambertian shading of rasterized meshes and `render` (z-buffer + part labels + RGB), numpy."""

from typing import NamedTuple

import numpy as np

from flowpose.evidence import views
from flowpose.evidence import zbuffer


def face_normals(vertices, faces) -> np.ndarray:
  """[F, 3] unit normals by the right-hand rule (counter-clockwise = outward)."""
  tri = np.asarray(vertices, np.float64)[np.asarray(faces)]
  normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
  return normal / np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-20)


def vertex_normals(vertices, faces) -> np.ndarray:
  """[V, 3] unit normals: area-weighted sums of the incident face normals."""
  vertices, faces = np.asarray(vertices, np.float64), np.asarray(faces)
  tri = vertices[faces]
  normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # Length = 2 * area.
  out = np.zeros_like(vertices)
  np.add.at(out, faces.reshape(-1), np.repeat(normal, 3, axis=0))
  return out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-20)


def shade(vertices, faces, raster: zbuffer.Rasterization, camera, face_colors=None, *,
          light_dir=(-0.3, -0.5, -1.0), ambient: float = 0.35, smooth: bool = False,
          background=(255, 255, 255)) -> np.ndarray:
  """Lambertian shading of a rasterized mesh with per-face colours.

  Lighting is two-sided: a normal facing away from the camera is flipped, so the winding of
  the mesh does not matter. `intensity = ambient + (1 - ambient) * max(0, n . l)`.

  Args:
    vertices: [V, 3] world positions (the ones that were rasterized).
    faces: [F, 3] vertex indices.
    raster: the `Rasterization` of this mesh.
    camera: the camera it was rasterized with.
    face_colors: [F, 3] or [3] colours, floats in [0, 1] or uint8; default light grey.
    light_dir: [3] direction towards the light in the **camera** frame (default: from the
      upper left, behind the viewer).
    ambient: ambient fraction in [0, 1].
    smooth: interpolate vertex normals (Gouraud-like, per pixel) instead of flat face normals.
    background: RGB uint8 colour of empty pixels.

  Returns:
    [H, W, 3] uint8 image.
  """
  cam = views.as_pinhole(camera)
  faces = np.asarray(faces)
  if face_colors is None:
    face_colors = (0.8, 0.8, 0.8)
  face_colors = np.asarray(face_colors)
  if face_colors.dtype == np.uint8:
    face_colors = face_colors / 255.0
  face_colors = np.broadcast_to(face_colors.astype(np.float64), (len(faces), 3))
  mask = raster.face_index >= 0
  fid = raster.face_index[mask]
  if smooth:
    normals = vertex_normals(vertices, faces)[faces[fid]]  # [N, 3 corners, 3]
    normal = np.einsum("nk,nkd->nd", raster.barycentric[mask], normals)
  else:
    normal = face_normals(vertices, faces)[fid]
  normal = normal @ cam.rotation.T  # To the camera frame.
  # The view ray through a pixel points along +z-ish; flip normals that point along it.
  centroid = np.asarray(vertices, np.float64)[faces[fid]].mean(1) @ cam.rotation.T
  centroid += cam.translation
  facing_away = np.einsum("nd,nd->n", normal, centroid) > 0
  normal[facing_away] *= -1
  light = np.asarray(light_dir, np.float64)
  light = light / np.linalg.norm(light)
  lambert = np.clip(normal @ light / np.maximum(np.linalg.norm(normal, axis=-1), 1e-20), 0, 1)
  intensity = ambient + (1 - ambient) * lambert
  image = np.empty(mask.shape + (3,), np.uint8)
  image[...] = np.asarray(background, np.uint8)
  image[mask] = np.clip(np.round(face_colors[fid] * intensity[:, None] * 255), 0, 255)
  return image


class Rendering(NamedTuple):
  """Output of `render`: `depth` [H, W] f32 (inf empty), `face_index` [H, W] i32 (-1 empty),
  `part_labels` [H, W] i32 (`face_labels` rule, -1 empty; None without vertex labels) and `rgb`
  [H, W, 3] uint8 (Lambertian)."""
  depth: np.ndarray
  face_index: np.ndarray
  part_labels: np.ndarray | None
  rgb: np.ndarray


def render(vertices, faces, camera, image_size, *, vertex_labels=None, face_colors=None,
           label_colors=None, smooth: bool = False, background=(255, 255, 255),
           cull_backfaces: bool = False) -> Rendering:
  """Rasterizes and shades a posed mesh.

  Args:
    vertices: [V, 3] world positions.
    faces: [F, 3] vertex indices.
    camera: a `PinholeCamera` (or anything `as_pinhole` accepts).
    image_size: (H, W).
    vertex_labels: optional [V] integer part labels.
    face_colors: optional [F, 3] or [3] colours (float [0, 1] or uint8).
    label_colors: optional [L, 3] colour per part label, used when `face_colors` is None and
      `vertex_labels` is given (e.g. `flowpose.viz.images.part_palette(L)`).
    smooth: smooth (vertex-normal) shading instead of flat.
    background: RGB uint8 colour of empty pixels.
    cull_backfaces: see `rasterize`.

  Returns:
    A `Rendering`.
  """
  raster = zbuffer.rasterize(vertices, faces, camera, image_size, cull_backfaces=cull_backfaces)
  labels = None
  if vertex_labels is not None:
    per_face = zbuffer.face_labels(faces, vertex_labels)
    labels = zbuffer.label_image(raster.face_index, per_face, -1)
    if face_colors is None and label_colors is not None:
      face_colors = np.asarray(label_colors)[per_face]
  rgb = shade(vertices, faces, raster, camera, face_colors, smooth=smooth,
              background=background)
  return Rendering(raster.depth, raster.face_index, labels, rgb)
