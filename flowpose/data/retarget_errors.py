"""Verification of the CMU -> CC0 retargeting: the angle between each posed body-model bone and
the CMU skeleton's own bone, every frame (`launch/retarget_check.py` reports it over the whole
database; tests/test_retarget.py bounds it on a few clips).

The model side goes through the pose chart exactly as the dataset does
(`flowpose.data.retarget.motion_to_body`, then a jitted float32 FK); the CMU side is the
skeleton's own float64 FK, so the error measures what the chart and the rest alignment lose.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from flowpose.data import retarget
from flowpose.data.motion import Motion


def cmu_rest_bone_vectors(skeleton) -> np.ndarray:
  """[31, 3] rest bone vectors of the CMU skeleton (`retarget.BONES` order; root and absent: zero).

  ASF: `direction * length`; BVH: the offset of the bone's first child (or its end site).
  """
  index = retarget.cmu_bone_index(skeleton)
  out = np.zeros((retarget.NUM_JOINTS, 3))
  for j, i in enumerate(index):
    if j == 0 or i < 0:
      continue
    if skeleton.bone_directions is not None:
      out[j] = skeleton.bone_directions[i] * skeleton.bone_lengths[i]
    else:
      kids = skeleton.children(int(i))
      out[j] = skeleton.offsets[kids[0]] if kids else skeleton.end_sites.get(int(i), 0.0)
  return out


@jax.jit
def _model_bone_directions(local: jax.Array, bone_vectors: jax.Array) -> jax.Array:
  """[B, 31, 3, 3] model local rotations -> [B, 31, 3] unit posed bone directions."""
  from flowpose.body import lbs  # pylint: disable=g-import-not-at-top
  fk = jax.vmap(lambda r: lbs.forward_kinematics(
      retarget.PARENTS, r, jnp.zeros((retarget.NUM_JOINTS, 3), r.dtype))[0])
  glob = fk(local)
  vec = jnp.einsum("bjxy,jy->bjx", glob, bone_vectors)
  return vec / jnp.linalg.norm(vec, axis=-1, keepdims=True)


def bone_direction_errors(motion: Motion, alignment: Optional[retarget.RestAlignment] = None,
                          batch: int = 4096, zero_uncaptured: bool = True) -> np.ndarray:
  """Angle between each posed model bone and the CMU skeleton's own bone, every frame.

  Uncaptured finger/thumb rotations are zeroed on the CMU side when `zero_uncaptured` (else the
  raw recorded values are compared).

  Args:
    motion: ASF/AMC or CMU-skeleton BVH clip.
    alignment: default `retarget.default_alignment()`.
    batch: frames per jitted FK call (the last batch is padded, so one compilation).
    zero_uncaptured: see above.

  Returns:
    [T, 31] degrees; the root column (no CMU bone) is NaN.
  """
  alignment = retarget.default_alignment() if alignment is None else alignment
  body = retarget.motion_to_body(motion, alignment)
  local = retarget.cmu_local_rotations(motion, zero_uncaptured)
  glob = np.empty_like(local)
  for j, p in enumerate(retarget.PARENTS):
    glob[:, j] = local[:, j] if p < 0 else glob[:, p] @ local[:, j]
  cmu = np.einsum("tjxy,jy->tjx", glob, cmu_rest_bone_vectors(motion.skeleton))
  cmu /= np.maximum(np.linalg.norm(cmu, axis=-1, keepdims=True), 1e-12)
  model_vectors = jnp.asarray(alignment.tails - alignment.rest_joints, jnp.float32)
  out = np.empty(cmu.shape[:2])
  for start in range(0, motion.num_frames, batch):
    chunk = body["rotmats"][start:start + batch]
    pad = batch - len(chunk)
    chunk = np.concatenate([chunk, np.broadcast_to(np.eye(3), (pad,) + chunk.shape[1:])])
    dirs = np.asarray(_model_bone_directions(jnp.asarray(chunk, jnp.float32), model_vectors),
                      np.float64)[:batch - pad]
    cos = np.sum(dirs * cmu[start:start + batch], axis=-1)
    sin = np.linalg.norm(np.cross(dirs, cmu[start:start + batch]), axis=-1)
    out[start:start + batch] = np.degrees(np.arctan2(sin, cos))
  out[:, 0] = np.nan
  return out
