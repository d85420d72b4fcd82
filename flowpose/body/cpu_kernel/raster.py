"""The z-buffer of `csrc/zbuffer.cc`: `flowpose.evidence.zbuffer.rasterize`'s loop form.

    out = raster.rasterize(uv, z, faces, (H, W))  # None without the kernel
    depth, face_index, barycentric = out
    vis = raster.subset_visibility(x_cam, uv, faces, (H, W), focal, pp, subset)  # [S] or None

Same inputs as the numpy rasterizer after its projection (pixels `uv [V, 2]` and camera-frame
depths `z [V]` from `evidence.views.to_camera`), same outputs (`zbuffer.Rasterization`'s
fields), same float64 arithmetic in the same order and the same tie rule (equal depths: the
lower face index), so the two agree exactly (tested); ~50x faster on a 1000 px body. Host
side (ctypes; the GIL is released during the call): used between fitting stages.

`subset_visibility` is `flowpose.evidence.visibility.vertex_visibility(...)[subset]` in one
call: the z-buffer only over the projected mesh's box (not all H x W pixels, no barycentrics)
and the visibility test only for the vertices a loss samples (the fitter's part term: ~400 of
13,380), ~40x less host time per person-stage than z-buffer + numpy visibility (issue 15).
"""

from concurrent import futures
import ctypes
import os
from typing import Callable, List, Optional, Tuple

import numpy as np

from flowpose.body.cpu_kernel import build

_POINTER = lambda dtype: np.ctypeslib.ndpointer(dtype, flags="C_CONTIGUOUS")


_I64, _F64 = ctypes.c_int64, ctypes.c_double
_SIGNATURES = {
    "flowpose_zbuffer": [_POINTER(np.float64), _POINTER(np.float64), _I64, _POINTER(np.int64),
                         _I64, _I64, _I64, _F64, _POINTER(np.float32), _POINTER(np.int32),
                         _POINTER(np.float32)],
    # As flowpose_zbuffer, then the window (row0, col0, rows, cols); barycentric may be null.
    "flowpose_zbuffer_window": [_POINTER(np.float64), _POINTER(np.float64), _I64,
                                _POINTER(np.int64), _I64, _I64, _I64, _F64, _I64, _I64, _I64,
                                _I64, _POINTER(np.float32), _POINTER(np.int32), ctypes.c_void_p],
    # As flowpose_zbuffer_window, with a [rows, cols] uint8 mask of the pixels to draw.
    "flowpose_zbuffer_window_masked": [_POINTER(np.float64), _POINTER(np.float64), _I64,
                                       _POINTER(np.int64), _I64, _I64, _I64, _F64, _I64, _I64,
                                       _I64, _I64, _POINTER(np.uint8), _POINTER(np.float32),
                                       _POINTER(np.int32), ctypes.c_void_p],
    "flowpose_vertex_visibility": [_POINTER(np.float64), _POINTER(np.float64), _I64,
                                   _POINTER(np.int64), _I64, _POINTER(np.float32),
                                   _POINTER(np.int32), _I64, _I64, _I64, _I64, _F64, _F64, _F64,
                                   _F64, _F64, _POINTER(np.int64), _I64, _POINTER(np.uint8),
                                   _POINTER(np.uint8)],
}


def _function(name: str = "flowpose_zbuffer"):
  lib = build.library()
  if lib is None:
    return None
  fn = getattr(lib, name)
  if fn.argtypes is None:
    fn.restype = ctypes.c_int
    fn.argtypes = _SIGNATURES[name]
  return fn


def rasterize(uv: np.ndarray, z: np.ndarray, faces: np.ndarray, image_size,
              near: float) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Z-buffer of a projected mesh, or None where the CPU kernel is unavailable.

  Args:
    uv: `[V, 2]` pixel coordinates (u along columns); z: `[V]` camera-frame depths.
    faces: `[F, 3]` vertex indices. image_size: `(H, W)`.
    near: triangles with a vertex at `z < near` are dropped.

  Returns:
    `(depth [H, W] float32 (inf where empty), face_index [H, W] int32 (-1), barycentric
    [H, W, 3] float32)`, as `flowpose.evidence.zbuffer.rasterize`.

  Raises:
    ValueError: bad shapes or a face index out of range.
  """
  fn = _function()
  if fn is None:
    return None
  uv = np.ascontiguousarray(uv, np.float64)
  z = np.ascontiguousarray(z, np.float64)
  faces = np.ascontiguousarray(np.asarray(faces).reshape(-1, 3), np.int64)
  if uv.ndim != 2 or uv.shape[1] != 2 or z.shape != uv.shape[:1]:
    raise ValueError(f"rasterize: expected uv [V, 2] and z [V], got {uv.shape}, {z.shape}")
  height, width = int(image_size[0]), int(image_size[1])
  depth = np.empty((height, width), np.float32)
  face_index = np.empty((height, width), np.int32)
  barycentric = np.empty((height, width, 3), np.float32)
  if fn(uv, z, len(uv), faces, len(faces), height, width, float(near), depth, face_index,
        barycentric):
    raise ValueError(f"rasterize: a face index is outside [0, {len(uv)})")
  return depth, face_index, barycentric


def map_rows(fn: Callable[[int], np.ndarray], num: int) -> List[np.ndarray]:
  """`[fn(0), ..., fn(num - 1)]` on one thread per core: the kernels here release the GIL
  (ctypes), so independent renders (the fitter's rows) run in parallel, as XLA's programs use
  every core."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # Not Linux.
    cores = os.cpu_count() or 1
  with futures.ThreadPoolExecutor(max(1, min(num, cores))) as pool:
    return list(pool.map(fn, range(num)))


def _window(uv: np.ndarray, z: np.ndarray, near: float, height: int, width: int):
  """(row0, col0, rows, cols): a box of pixels holding every pixel the z-buffer can draw.

  A drawn triangle has all 3 vertices finite and at `z >= near`, and covers only pixel centres
  within its vertices' box, clipped to the image (the kernel's bounds); an empty box is 1 x 1.
  """
  u, v = uv[:, 0], uv[:, 1]
  ok = (z >= near) & np.isfinite(u) & np.isfinite(v)
  if not ok.any():
    return 0, 0, 1, 1
  if not ok.all():
    u, v = u[ok], v[ok]
  # Per column: numpy's axis-0 reduction of an [N, 2] array costs ~10x more (~0.5 ms).
  lo, hi = np.array([u.min(), v.min()]), np.array([u.max(), v.max()])
  col0, row0 = (int(x) for x in np.maximum(np.ceil(lo - 0.5), 0))
  col1 = int(min(np.floor(hi[0] - 0.5), width - 1))
  row1 = int(min(np.floor(hi[1] - 0.5), height - 1))
  if col1 < col0 or row1 < row0:
    return 0, 0, 1, 1
  return row0, col0, row1 - row0 + 1, col1 - col0 + 1


def subset_visibility(x_cam: np.ndarray, uv: np.ndarray, faces: np.ndarray, image_size, focal,
                      principal_point, subset: np.ndarray, tol: float = 3e-3,
                      near: float = 1e-2) -> Optional[np.ndarray]:
  """`evidence.visibility.vertex_visibility(...)[subset]`, or None without the kernel.

  Args:
    x_cam: `[V, 3]` camera-frame vertices; uv: `[V, 2]` their pixels (`views.to_camera`).
    faces: `[F, 3]`. image_size: `(H, W)`. focal, principal_point: `[2]` of the camera.
    subset: `[S]` vertex indices.
    tol: depth tolerance (metres), as `vertex_visibility`.
    near: the z-buffer's near plane (`camera.MIN_DEPTH`, also its "in front" test).

  Returns:
    `[S]` bool, equal to the numpy function's (tested).

  Raises:
    ValueError: bad shapes or an index out of range.
  """
  fn = _function("flowpose_zbuffer_window_masked")
  if fn is None:
    return None
  x_cam = np.ascontiguousarray(x_cam, np.float64)
  uv = np.ascontiguousarray(uv, np.float64)
  faces = np.ascontiguousarray(np.asarray(faces).reshape(-1, 3), np.int64)
  subset = np.ascontiguousarray(subset, np.int64).reshape(-1)
  if x_cam.ndim != 2 or x_cam.shape[1] != 3 or uv.shape != (len(x_cam), 2):
    raise ValueError(f"subset_visibility: expected x_cam [V, 3] and uv [V, 2], got "
                     f"{x_cam.shape}, {uv.shape}")
  if np.any((subset < 0) | (subset >= len(x_cam))):
    raise ValueError(f"subset_visibility: a subset index is outside [0, {len(x_cam)})")
  height, width = int(image_size[0]), int(image_size[1])
  z = np.ascontiguousarray(x_cam[:, 2])
  row0, col0, rows, cols = _window(uv, z, near, height, width)
  # As vertex_visibility: finite pixels of points in front (camera.in_front), inside the image.
  su = uv[subset]
  inside = (np.all(np.isfinite(su), axis=1) & (x_cam[subset, 2] > near) & (su[:, 0] >= 0) &
            (su[:, 0] < width) & (su[:, 1] >= 0) & (su[:, 1] < height))
  # The test reads only the 2 x 2 pixel centres around each tested vertex: draw just those.
  needed = np.zeros((rows, cols), np.uint8)
  r = np.floor(su[inside, 1] - 0.5).astype(np.int64)[:, None] + [0, 0, 1, 1] - row0
  c = np.floor(su[inside, 0] - 0.5).astype(np.int64)[:, None] + [0, 1, 0, 1] - col0
  keep = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
  needed[r[keep], c[keep]] = 1
  depth = np.empty((rows, cols), np.float32)
  face_index = np.empty((rows, cols), np.int32)
  if fn(uv, z, len(uv), faces, len(faces), height, width, float(near), row0, col0, rows, cols,
        needed, depth, face_index, None):
    raise ValueError(f"subset_visibility: a face index is outside [0, {len(uv)})")
  out = np.zeros(len(subset), np.uint8)
  focal = np.asarray(focal, np.float64).reshape(-1)
  pp = np.asarray(principal_point, np.float64).reshape(-1)
  if _function("flowpose_vertex_visibility")(
      x_cam, uv, len(uv), faces, len(faces), depth, face_index, row0, col0, rows, cols,
      float(focal[0]), float(focal[-1]), float(pp[0]), float(pp[1]), float(tol), subset,
      len(subset), inside.astype(np.uint8), out):
    raise ValueError(f"subset_visibility: a face index is outside [0, {len(uv)})")
  return out.astype(bool)
