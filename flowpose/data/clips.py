"""One CMU mocap clip file -> `Motion`, whatever its format: ASF/AMC or CMU-skeleton BVH.

    motion = read_clip("cmu_more/bvh/01/01_03.bvh.gz")   # T-pose frame dropped, metres
    motion = read_clip("cmu/02_01.amc.gz", fps=120.0)     # SS.asf beside it

Formats (the `cmu_mocap` builder and `flowpose.prior.evaluate` read clips only through here):

* ASF/AMC (`SS_CC.amc[.gz]` with `SS.asf[.gz]` beside it): `asf_amc.load_asf_amc`; AMC files do
  not store their rate (`fps`, default 120, CMU's capture rate).
* BVH (`.bvh[.gz]`) of the CMU skeleton, MotionBuilder-style names (cgspeed: `Hips`,
  `LHipJoint`, `LeftUpLeg`, ..., finger end `LFingers` or `LeftHandIndex1`) or cgspeed's 3ds
  Max-friendly names (`LeftHip`, `LeftCollar`, ...): retargeting maps both onto the CMU bones
  (`cmu_skeleton.mb_joint_names`, an explicit whole-file name map). Units: cgspeed BVH lengths
  are the ASF length units (`BVH_METRES_PER_UNIT`, root ~17.8 units = 1.0 m). The rate comes
  from `Frame Time`.
* Rest pose: the 3ds Max-friendly files rest with the arms hanging down, not in CMU's T-pose.
  `align_rest_to_cmu` re-expresses any BVH whose limb bones rest more than
  `REST_MISMATCH_DEG` away from CMU's canonical rest directions in CMU's rest (same world
  motion, checked by forward kinematics in the tests); subject geometry differs by < 13 deg.
* Converter T-pose: cgspeed BVH files begin with a rest frame the converter added (every
  rotation 0 but a few +-17 / 5 degree entries, root at 0), then the capture. It is not a pose of
  the performer; `drop_converter_tpose` removes it (rule there).
"""

import dataclasses
import os
from typing import Optional, Tuple

import numpy as np

from flowpose.data import asf_amc
from flowpose.data import bvh
from flowpose.data import motion as motion_lib
from flowpose.data import retarget
from flowpose.data.motion import Motion

# cgspeed BVH lengths are CMU ASF units (`:units length 0.45`: 1 unit = 0.0254 / 0.45 m).
BVH_METRES_PER_UNIT = 0.0254 / 0.45
# Converter T-pose rule (`drop_converter_tpose`).
TPOSE_MIN_ZERO_FRACTION = 0.75
TPOSE_MIN_JUMP_DEG = 30.0
TPOSE_JUMP_RATIO = 10.0
REST_MISMATCH_DEG = 30.0
_TPOSE_WINDOW = 240  # Frames after frame 1 whose motion sets the scale of a normal change.


def is_bvh(path: os.PathLike) -> bool:
  """Whether `path` names a BVH file (`.bvh` or `.bvh.gz`, any case)."""
  return os.fspath(path).lower().endswith((".bvh", ".bvh.gz"))


def _max_joint_change_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """`[...]` largest geodesic angle (degrees) between local rotations `a, b [..., J, 3, 3]`."""
  trace = np.einsum("...jik,...jik->...j", a, b)  # trace(a^T b)
  return np.degrees(np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0))).max(-1)


def is_converter_tpose(motion: Motion) -> bool:
  """Whether frame 0 of a BVH motion is a converter rest frame, not a captured pose.

  Both must hold: (a) at least `TPOSE_MIN_ZERO_FRACTION` of frame 0's rotation channels are
  exactly 0 (a capture never gives exact zeros; the converter writes integers), and (b) some
  joint (root included) turns by more than `TPOSE_MIN_JUMP_DEG` and more than
  `TPOSE_JUMP_RATIO` times the largest frame-to-frame turn of the next 240 frames between
  frames 0 and 1 (a teleport, not motion).
  """
  if motion.num_frames < 3 or motion.dof_values is None:
    return False
  rotation = np.asarray([motion_lib.dof_kind(name)[0] == "r" for _, name in motion.dof_names])
  if not rotation.any():
    return False
  zeros = np.mean(motion.dof_values[0, rotation] == 0.0)
  if zeros < TPOSE_MIN_ZERO_FRACTION:
    return False
  # The root only: uncaptured hand joints of a capture flick by ~20 deg between frames.
  root = motion.local_rotations[:_TPOSE_WINDOW + 2, :1]
  jump = _max_joint_change_deg(root[0], root[1])
  normal = _max_joint_change_deg(root[1:-1], root[2:]).max()
  return bool(jump > TPOSE_MIN_JUMP_DEG and jump > TPOSE_JUMP_RATIO * normal)


def drop_converter_tpose(motion: Motion) -> Tuple[Motion, bool]:
  """`(motion without its converter T-pose frame 0, whether one was dropped)`."""
  if not is_converter_tpose(motion):
    return motion, False
  return motion_lib.select_frames(motion, np.arange(1, motion.num_frames), motion.fps), True


def _swing(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """`[3, 3]` the minimal rotation taking unit vector `u` to unit vector `v` (not opposite)."""
  axis, cos = np.cross(u, v), float(np.dot(u, v))
  k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
  return np.eye(3) + k + k @ k / (1.0 + cos)


def rest_corrections(skeleton) -> np.ndarray:
  """`[J, 3, 3]` B_j with `B_j d_cmu = d_file` for limb bones whose rest direction `d_file`
  is more than `REST_MISMATCH_DEG` from CMU's canonical `d_cmu`; a bone without a rest direction
  (zero length) takes its parent's; identity elsewhere."""
  out = np.broadcast_to(np.eye(3), (skeleton.num_joints, 3, 3)).copy()
  index = retarget.cmu_bone_index(skeleton)
  for j, bone in enumerate(retarget.BONES):
    if bone not in retarget.CANONICAL_REST_DIRECTIONS or index[j] < 0:
      continue
    child = next((index[k] for k, p in enumerate(retarget.PARENTS) if p == j and index[k] >= 0),
                 None)
    tail = (skeleton.offsets[child] if child is not None
            else skeleton.end_sites.get(index[j]))
    if tail is None or not np.linalg.norm(tail) > 0:
      # No rest direction (a zero-length bone, e.g. 3ds Max `lhand`): it rests as its parent.
      out[index[j]] = out[index[retarget.PARENTS[j]]]
      continue
    d_file = np.asarray(tail, np.float64) / np.linalg.norm(tail)
    d_cmu = np.asarray(retarget.CANONICAL_REST_DIRECTIONS[bone], np.float64)
    if np.degrees(np.arccos(np.clip(d_file @ d_cmu, -1, 1))) > REST_MISMATCH_DEG:
      out[index[j]] = _swing(d_cmu, d_file)
  return out


def align_rest_to_cmu(motion: Motion) -> Motion:
  """The same world motion on a skeleton that rests in CMU's T-pose (`rest_corrections`).

  Global rotations become `G_j B_j`, so locals `B_parent^T L_j B_j` and offsets
  `B_parent^T o_j`; joint positions are unchanged. Returns `motion` itself when nothing differs.
  """
  skel = motion.skeleton
  rest = rest_corrections(skel)
  if np.allclose(rest, np.eye(3)):
    return motion
  parent_rest = rest[np.maximum(skel.parents, 0)]
  parent_rest[np.asarray(skel.parents) < 0] = np.eye(3)
  local = np.swapaxes(parent_rest, -1, -2) @ motion.local_rotations @ rest
  offsets = np.einsum("jki,jk->ji", parent_rest, skel.offsets)
  end_sites = {j: rest[j].T @ np.asarray(v) for j, v in skel.end_sites.items()}
  skeleton = dataclasses.replace(skel, offsets=offsets, end_sites=end_sites)
  return Motion(skeleton, motion.fps, motion.root_translation, local, source=motion.source)


def read_clip(path: os.PathLike, fps: Optional[float] = None) -> Motion:
  """Reads one CMU clip (ASF/AMC or CMU-skeleton BVH) in metres; BVH T-pose frame dropped.

  Args:
    path: `SS_CC.amc[.gz]` (with `SS.asf[.gz]` beside it) or a `.bvh[.gz]` file.
    fps: capture rate of an AMC clip (default 120); BVH files carry their own.

  Raises:
    MocapFormatError: bad content (names the file and line), no ASF beside an AMC.
  """
  if is_bvh(path):
    motion = bvh.read_bvh(path, metres_per_unit=BVH_METRES_PER_UNIT)
    return align_rest_to_cmu(drop_converter_tpose(motion)[0])
  return asf_amc.load_asf_amc(path, fps=fps or 120.0)
