"""3D pose/shape metrics: MPJPE, PA-MPJPE, PVE, acceleration error (millimetres from metres).

All functions take predictions and ground truth in **metres** with any leading
batch dims `[..., N, 3]` and return per-example errors in **millimetres**
`[...]` (mean over the N points). jnp in, jnp out; numpy works too.

Conventions:
  * `mpjpe`: mean Euclidean joint error after optional root alignment
    (`root_index`: subtract each set's root joint first, the Human3.6M
    protocol-1 convention; None = no alignment, errors then include the
    global translation).
  * `pa_mpjpe`: after a least-squares similarity transform (scale, rotation,
    translation; Umeyama / `geometry.procrustes_align`) of the prediction onto
    the ground truth, per example. Zero for any similarity-transformed copy.
  * `pve`: per-vertex error, the same as `mpjpe` on vertices; `root` is then
    a separate `[..., 3]` point to subtract (e.g. the pelvis joint), because a
    root vertex index would be arbitrary.
  * `accel_error`: over time, `[..., T, J, 3]` in, `[..., T - 2]` out (mm/frame^2): the mean
    over joints of the norm of the difference of the two sequences' second differences,
    after root alignment per frame (as mpjpe), so jitter counts and a global offset does not.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from flowpose import geometry

_MM_PER_M = 1000.0


def _mean_distance_mm(pred: jax.Array, target: jax.Array) -> jax.Array:
  return _MM_PER_M * jnp.mean(jnp.linalg.norm(pred - target, axis=-1), axis=-1)


def _check(pred, target, name: str):
  pred = jnp.asarray(pred, jnp.float32)
  target = jnp.asarray(target, jnp.float32)
  if pred.shape != target.shape or pred.ndim < 2 or pred.shape[-1] != 3:
    raise ValueError(f"{name}: expected pred and target [..., N, 3] of equal "
                     f"shape, got {pred.shape} and {target.shape}")
  return pred, target


def mpjpe(pred: jax.Array, target: jax.Array,
          root_index: Optional[int] = 0) -> jax.Array:
  """Mean per-joint position error (mm).

  Args:
    pred: [..., J, 3] predicted joints (metres).
    target: [..., J, 3] ground-truth joints (metres).
    root_index: joint subtracted from both sets first (None: no alignment).

  Returns:
    [...] errors in millimetres.
  """
  pred, target = _check(pred, target, "mpjpe")
  if root_index is not None:
    pred = pred - pred[..., root_index:root_index + 1, :]
    target = target - target[..., root_index:root_index + 1, :]
  return _mean_distance_mm(pred, target)


def pa_mpjpe(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Procrustes-aligned MPJPE (mm): similarity-align pred onto target first.

  Args:
    pred: [..., J, 3] predicted joints (metres).
    target: [..., J, 3] ground-truth joints (metres).

  Returns:
    [...] errors in millimetres.
  """
  pred, target = _check(pred, target, "pa_mpjpe")
  aligned = geometry.procrustes_align(pred, target, scale=True)
  return _mean_distance_mm(aligned, target)


def pve(pred_vertices: jax.Array, target_vertices: jax.Array,
        pred_root: Optional[jax.Array] = None,
        target_root: Optional[jax.Array] = None) -> jax.Array:
  """Per-vertex error (mm), optionally after root alignment.

  Args:
    pred_vertices: [..., V, 3] predicted mesh (metres).
    target_vertices: [..., V, 3] ground-truth mesh, same topology.
    pred_root: optional [..., 3] point subtracted from the prediction (e.g.
      its pelvis joint); needs `target_root` too.
    target_root: optional [..., 3] point subtracted from the ground truth.

  Returns:
    [...] errors in millimetres.
  """
  pred, target = _check(pred_vertices, target_vertices, "pve")
  if (pred_root is None) != (target_root is None):
    raise ValueError("pve: give both pred_root and target_root, or neither")
  if pred_root is not None:
    pred = pred - jnp.asarray(pred_root, jnp.float32)[..., None, :]
    target = target - jnp.asarray(target_root, jnp.float32)[..., None, :]
  return _mean_distance_mm(pred, target)


def pa_pve(pred_vertices: jax.Array, target_vertices: jax.Array) -> jax.Array:
  """Procrustes-aligned per-vertex error (mm); see `pa_mpjpe`."""
  return pa_mpjpe(pred_vertices, target_vertices)


def accel_error(pred: jax.Array, target: jax.Array,
                root_index: Optional[int] = 0) -> jax.Array:
  """Acceleration error (mm/frame^2): how much more (or less) the prediction shakes.

  `a_t = p_{t+1} - 2 p_t + p_{t-1}` of both sequences; the error at t is the mean over joints
  of `||a_t(pred) - a_t(target)||`.

  Args:
    pred: [..., T, J, 3] predicted joint trajectories (metres), T >= 3.
    target: [..., T, J, 3] ground truth (metres).
    root_index: joint subtracted per frame first (None: no alignment).

  Returns:
    [..., T - 2] errors in millimetres per frame squared.
  """
  pred, target = _check(pred, target, "accel_error")
  if pred.ndim < 3 or pred.shape[-3] < 3:
    raise ValueError(f"accel_error: expected [..., T, J, 3] with T >= 3, got {pred.shape}")
  if root_index is not None:
    pred = pred - pred[..., root_index:root_index + 1, :]
    target = target - target[..., root_index:root_index + 1, :]
  second = lambda x: x[..., 2:, :, :] - 2 * x[..., 1:-1, :, :] + x[..., :-2, :, :]
  return _mean_distance_mm(second(pred), second(target))
