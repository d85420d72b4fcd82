"""Retargeting CMU motion capture onto the CC0 body model.

Both skeletons use the same world frame (metres, Y up, facing +Z, the body's left at +X) and
world-aligned rest frames, and the body model's 31 joints are the CMU bones (model joint j =
`ASF_TO_MB[bone j]`, same order, same tree; model bone j runs from joint j to `joint_tails[j]`,
ASF bone j from joint j along `direction`). Only the rest poses differ: CMU rests in a T-pose
(legs 20 deg apart, arms horizontal, palms down), the model in MakeHuman's A-pose.

Rest alignment. A constant rotation `A_j` per joint maps the model's rest frame of joint j onto
the CMU rest frame, so that `G_model_j = G_cmu_j @ A_j` (world rotations) and
`L_model_j = A_parent(j)^T @ L_cmu_j @ A_j` (local rotations): a per-joint constant
conjugation, cheap and differentiable. `A_j` is built parent to child, as an animator would pose
the A-pose into the T-pose:

* Limb bones (`ALIGNED_BONES`: legs from the femur down, arms from the humerus out) are swung
  onto the canonical CMU rest direction (`CANONICAL_REST_DIRECTIONS`), starting from the parent's
  alignment: `A_j = S(A_p d_j -> c_j) @ A_p`, with `d_j` the model's rest bone direction and
  `S(u -> v)` the minimal rotation taking u to v. Each rest correction is then a twist-free
  swing of the joint (elbow straightening, arm raising, leg spreading), and segments keep their
  roll relative to their parent: the model's feet roll with its spread legs exactly as CMU's
  feet do (the CMU foot axis frame is the leg's, rotated by the same 20 deg).
  `method="minimal"` instead uses the per-bone minimal rotation `S(d_j -> c_j)` (no roll
  propagation; twists the elbow by 19 deg and the ankle by 14 deg at rest).
* The trunk (root, hip joints, spine, neck, head) and the clavicles keep the model's rest
  (`A_j = A_parent = I`): their CMU rest directions are not a pose but each subject's fitted
  skeleton geometry (they differ by up to 8-13 deg between CMU subjects, the spine is a straight
  vertical chain), so aligning them would bend the model's spine straight, tilt its neck back
  and move its hip joints ~8 cm down and inwards. Their posed directions then differ from
  CMU's by a constant: the rest-geometry angle (reported by `launch/retarget_check.py`).

Subjects share the canonical chart (`flowpose.data.cmu_skeleton`): the limb directions above
are identical in every CMU ASF except the foot (per-subject +-4 deg; the canonical foot is the
left/right-symmetric mean of the 8 shared subjects).

Root: the model's root rotation is the CMU root's global rotation (`A_root = I`); the
translation is chosen so the model's hip centre (mid-point of its femur heads) coincides with
the CMU hip centre every frame (the CMU root sits ~10 cm above the femur heads, the model's at
their height).
"""

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from flowpose import geometry
from flowpose.data import cmu_skeleton
from flowpose.data import motion as motion_lib
from flowpose.data import rotations_np
from flowpose.data.motion import MocapFormatError, Motion

BONES = tuple(cmu_skeleton.ASF_TO_MB)  # The 31 CMU bones in model joint order (root first).
NUM_JOINTS = len(BONES)
PARENTS = (-1, 0, 1, 2, 3, 4, 0, 6, 7, 8, 9, 0, 11, 12, 13, 14, 15, 13, 17, 18, 19, 20, 21, 20,
           13, 24, 25, 26, 27, 28, 27)

_S20, _C20 = np.sin(np.radians(20.0)), np.cos(np.radians(20.0))
_FOOT = np.array([0.095, -0.262, 0.960]) / np.linalg.norm([0.095, -0.262, 0.960])
_LEFT_DIRECTIONS = {
    "lfemur": (_S20, -_C20, 0.0), "ltibia": (_S20, -_C20, 0.0), "lfoot": tuple(_FOOT),
    "ltoes": (0.0, 0.0, 1.0), "lhumerus": (1.0, 0.0, 0.0), "lradius": (1.0, 0.0, 0.0),
    "lwrist": (1.0, 0.0, 0.0), "lhand": (1.0, 0.0, 0.0), "lfingers": (1.0, 0.0, 0.0),
    "lthumb": (np.sqrt(0.5), 0.0, np.sqrt(0.5)),
}
# Canonical CMU rest directions of the limb bones (world axes), left and mirrored right.
CANONICAL_REST_DIRECTIONS = {
    **_LEFT_DIRECTIONS,
    **{"r" + b[1:]: (-x, y, z) for b, (x, y, z) in _LEFT_DIRECTIONS.items()},
}
ALIGNED_BONES = tuple(b for b in BONES if b in CANONICAL_REST_DIRECTIONS)



class RestAlignment(NamedTuple):
  """Constants of the CMU -> body-model map (numpy float64).

  Attributes:
    rotations: [31, 3, 3] A_j (model rest frame -> CMU rest frame of joint j).
    left: [31, 3, 3] `A_parent^T @ C_j` (C_j: canonical ASF axis frame; root: `I`).
    right: [31, 3, 3] `C_j^T @ A_j`; `L_model_j = left_j @ R_j @ right_j` for DOF rotation R_j.
    rest_joints: [31, 3] model rest joints at the mean shape.
    tails: [31, 3] model rest bone tails at the mean shape.
    hip_offset: [3] model hip centre minus the model's rest root joint.
  """
  rotations: np.ndarray
  left: np.ndarray
  right: np.ndarray
  rest_joints: np.ndarray
  tails: np.ndarray
  hip_offset: np.ndarray


def _swing(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """The minimal rotation [3, 3] taking direction u onto direction v (Rodrigues)."""
  u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
  axis = np.cross(u, v)
  sin, cos = np.linalg.norm(axis), float(u @ v)
  if sin < 1e-12:
    if cos > 0:
      return np.eye(3)
    raise ValueError(f"opposite directions {u}, {v}: the swing is undefined")
  k = axis / sin
  skew = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
  return np.eye(3) + sin * skew + (1 - cos) * skew @ skew


def canonical_axis_frames() -> np.ndarray:
  """[31, 3, 3] canonical ASF axis frames C_j (`cmu_skeleton.CANONICAL_AXES_DEG`)."""
  angles = np.array([cmu_skeleton.CANONICAL_AXES_DEG[b] for b in BONES])
  return rotations_np.euler_to_matrix_np(angles, "XYZ", degrees=True, extrinsic=True)


def rest_alignment(rest_joints: np.ndarray, tails: np.ndarray,
                   method: str = "swing") -> RestAlignment:
  """Builds the rest alignment from the model's rest skeleton.

  Args:
    rest_joints: [31, 3] model rest joints (model joint order = `BONES`).
    tails: [31, 3] model rest bone tails.
    method: "swing" (parent-to-child swings, default) or "minimal" (see module docstring).

  Returns:
    RestAlignment.
  """
  if method not in ("swing", "minimal"):
    raise ValueError(f"method must be 'swing' or 'minimal', got {method!r}")
  rest_joints = np.asarray(rest_joints, np.float64)
  tails = np.asarray(tails, np.float64)
  rotations = np.empty((NUM_JOINTS, 3, 3))
  for j, bone in enumerate(BONES):
    parent = rotations[PARENTS[j]] if j else np.eye(3)
    if bone in CANONICAL_REST_DIRECTIONS:
      target = np.asarray(CANONICAL_REST_DIRECTIONS[bone])
      direction = tails[j] - rest_joints[j]
      rotations[j] = (_swing(parent @ direction, target) @ parent if method == "swing"
                      else _swing(direction, target))
    else:
      rotations[j] = parent
  frames = canonical_axis_frames()
  parent_rot = np.stack([rotations[p] if p >= 0 else np.eye(3) for p in PARENTS])
  left = np.swapaxes(parent_rot, -1, -2) @ frames
  right = np.swapaxes(frames, -1, -2) @ rotations
  femurs = [BONES.index("lfemur"), BONES.index("rfemur")]
  hip_offset = rest_joints[femurs].mean(0) - rest_joints[0]
  return RestAlignment(rotations, left, right, rest_joints, tails, hip_offset)


@functools.lru_cache(maxsize=4)
def default_alignment(method: str = "swing") -> RestAlignment:
  """The rest alignment of the default CC0 body model (built into the cache if missing)."""
  from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
  from flowpose.body import model as body_model, model_io  # pylint: disable=g-import-not-at-top,g-multiple-import
  path = assets.ensure_body_model()
  # Eager even when first called while tracing (a jitted fit's body): cached numpy constants.
  with jax.ensure_compile_time_eval():
    model = model_io.load_model(path)
    rest = np.asarray(body_model.regress_joints(model, jnp.zeros(model.num_betas)), np.float64)
  names = tuple(cmu_skeleton.ASF_TO_MB[b] for b in BONES)
  if tuple(model.joint_names) != names or tuple(model.parents) != PARENTS:
    raise ValueError(f"{path}: body model joints {model.joint_names} are not the CMU bones")
  tails = np.asarray(model_io.load_extras(path)["joint_tails"], np.float64)
  return rest_alignment(rest, tails, method)


# ----------------------------------------------------------------------------------------------
# Pose DOFs (the canonical chart) from a Motion.
# ----------------------------------------------------------------------------------------------

# [31, 3] column of POSE_DOFS holding each bone's (rx, ry, rz) angle, NUM_POSE_DOFS if absent.
_CHART_COLUMNS = np.full((NUM_JOINTS, 3), cmu_skeleton.NUM_POSE_DOFS, np.int32)
for _col, (_bone, _dof) in enumerate(cmu_skeleton.POSE_DOFS):
  _CHART_COLUMNS[BONES.index(_bone), "xyz".index(_dof[1])] = _col
del _col, _bone, _dof


def cmu_bone_index(skeleton) -> np.ndarray:
  """[31] index of each CMU bone (`BONES` order) in `skeleton.joint_names`, -1 if absent.

  Accepts ASF names, MotionBuilder-friendly BVH names (with their finger aliases) and 3ds
  Max-friendly BVH names (`cmu_skeleton.mb_joint_names`).
  """
  lookup = {}
  for i, name in enumerate(cmu_skeleton.mb_joint_names(skeleton.joint_names)):
    lookup[cmu_skeleton.MB_TO_ASF.get(name, name)] = i
  return np.array([lookup.get(b, -1) for b in BONES])


def cmu_local_rotations(motion: Motion, zero_uncaptured: bool = True) -> np.ndarray:
  """[T, 31, 3, 3] CMU local rotations (`BONES` order, world-aligned frames) of a motion.

  Works for ASF/AMC motions and BVH motions of the CMU skeleton (ASF or MB joint names; extra
  joints allowed: locals are recomposed from global rotations along the CMU tree).

  Args:
    motion: the clip.
    zero_uncaptured: set the finger and thumb rotations (not captured by CMU) to identity.

  Raises:
    MocapFormatError: a captured CMU bone is missing from the skeleton.
  """
  index = cmu_bone_index(motion.skeleton)
  missing = [b for b, i in zip(BONES, index) if i < 0 and b not in
             cmu_skeleton.UNCAPTURED_BONES]
  if missing:
    raise MocapFormatError(f"skeleton {motion.skeleton.name!r} lacks CMU bones {missing}; "
                           "expected the 31 CMU joints (ASF or MotionBuilder names)",
                           motion.source or None)
  skel = motion.skeleton
  own_parents = [index[p] if p >= 0 else -1 for p in PARENTS]
  if all(i < 0 or skel.parents[i] == own_parents[j] for j, i in enumerate(index) if j):
    local = motion.local_rotations[:, np.maximum(index, 0)]
  else:
    glob, _ = motion_lib.forward_kinematics(motion)
    glob = glob[:, np.maximum(index, 0)]
    parent_glob = glob[:, np.maximum(PARENTS, 0)]
    local = np.swapaxes(parent_glob, -1, -2) @ glob
    local[:, 0] = glob[:, 0]
  local = local.copy()
  absent = index < 0
  if zero_uncaptured:
    absent |= np.isin(BONES, cmu_skeleton.UNCAPTURED_BONES)
  local[:, absent] = np.eye(3)
  return local


def _canonical_axes_match(skeleton, index: np.ndarray, tol_deg: float = 1e-3) -> bool:
  """True when the skeleton's axis frames equal the canonical ones within `tol_deg`."""
  frames = canonical_axis_frames()
  for j, bone in enumerate(BONES):
    if bone in cmu_skeleton.UNCAPTURED_BONES or j == 0:
      continue
    rel = frames[j].T @ skeleton.axis_frames[index[j]]
    angle = np.degrees(np.arccos(np.clip((np.trace(rel) - 1) / 2, -1, 1)))
    if angle > tol_deg:
      return False
  return True


def local_rotations_to_pose_dofs(local: np.ndarray) -> np.ndarray:
  """[..., 31, 3, 3] CMU local rotations -> [..., 50] canonical chart DOFs (radians).

  `R_j = C_j^T L_j C_j` in the canonical axis frame, then extrinsic-XYZ angles; the angles about
  axes a bone lacks are dropped (exact when R_j only rotates about the bone's DOF axes). A
  single-DOF bone takes the angle of R_j's rotation about that axis that is closest to R_j.
  """
  frames = canonical_axis_frames()
  rot = np.swapaxes(frames, -1, -2) @ local @ frames
  angles = rotations_np.matrix_to_euler_np(rot, "XYZ", extrinsic=True)  # [..., 31, 3] (rx,ry,rz)
  out = np.zeros(local.shape[:-3] + (cmu_skeleton.NUM_POSE_DOFS,))
  for j, bone in enumerate(BONES):
    dofs = cmu_skeleton.BONE_DOFS.get(bone, ())
    for dof in dofs:
      axis = "xyz".index(dof[1])
      col = _CHART_COLUMNS[j, axis]
      if col == cmu_skeleton.NUM_POSE_DOFS:
        continue
      if len(dofs) == 1:  # Projection onto the one axis: atan2 of the skew part about it.
        b, c = (axis + 1) % 3, (axis + 2) % 3
        r = rot[..., j, :, :]
        out[..., col] = np.arctan2(r[..., c, b] - r[..., b, c], r[..., b, b] + r[..., c, c])
      else:
        out[..., col] = angles[..., j, axis]
  return out


def motion_to_pose_dofs(motion: Motion) -> np.ndarray:
  """[T, 50] pose DOFs in radians in the canonical chart (`cmu_skeleton.POSE_DOF_NAMES`).

  ASF/AMC motions whose axis frames are canonical (every CMU subject) give their AMC values
  exactly; other axes, and BVH motions of the CMU skeleton, go through the rotations
  (`local_rotations_to_pose_dofs`).
  """
  skel = motion.skeleton
  index = cmu_bone_index(skel)
  is_asf = skel.bone_directions is not None and motion.dof_values is not None
  if is_asf and np.all(index >= 0) and _canonical_axes_match(skel, index):
    try:
      return motion.dof_values[:, cmu_skeleton.pose_dof_indices(motion.dof_names)].copy()
    except KeyError:
      pass  # A DOF is missing from this skeleton: fall back to the rotations.
  return local_rotations_to_pose_dofs(cmu_local_rotations(motion))


# ----------------------------------------------------------------------------------------------
# Chart -> body-model rotations.
# ----------------------------------------------------------------------------------------------


def _dof_angles(dofs, xp):
  """[..., 50] -> [..., 31, 3] (rx, ry, rz) per bone, zero for absent DOFs."""
  padded = xp.concatenate([dofs, xp.zeros(dofs.shape[:-1] + (1,), dofs.dtype)], axis=-1)
  return padded[..., _CHART_COLUMNS]


def pose_dofs_to_body_rotmats(dofs: jax.Array, root_rotmat: Optional[jax.Array] = None,
                              alignment: Optional[RestAlignment] = None) -> jax.Array:
  """Canonical chart DOFs -> body-model local rotations (jnp, differentiable, float32).

  Args:
    dofs: [..., 50] radians (`cmu_skeleton.POSE_DOF_NAMES`).
    root_rotmat: [..., 3, 3] CMU root global rotation, or None for identity.
    alignment: default `default_alignment()` (the CC0 model).

  Returns:
    [..., 31, 3, 3] local rotations for `flowpose.body.model.forward` (root = global
    orientation `root_rotmat @ A_root`).
  """
  alignment = default_alignment() if alignment is None else alignment
  return _chart_to_rotmats(jnp.asarray(dofs, jnp.float32),
                           None if root_rotmat is None else jnp.asarray(root_rotmat, jnp.float32),
                           *(jnp.asarray(a, jnp.float32) for a in (
                               alignment.left, alignment.right, alignment.rotations[0])))


@jax.jit
def _chart_to_rotmats(dofs, root_rotmat, left, right, root_alignment):
  # Jitted so that eager calls run one compiled program; inlined inside a caller's jit/grad.
  rot = geometry.euler_to_matrix(_dof_angles(dofs, jnp), "XYZ", extrinsic=True)
  local = jnp.einsum("jab,...jbc,jcd->...jad", left, rot, right)
  root = root_alignment if root_rotmat is None else root_rotmat @ root_alignment
  root = jnp.broadcast_to(root, local.shape[:-3] + (3, 3))
  return local.at[..., 0, :, :].set(root)


def pose_dofs_to_body_rotmats_np(dofs: np.ndarray, root_rotmat: Optional[np.ndarray] = None,
                                 alignment: Optional[RestAlignment] = None) -> np.ndarray:
  """NumPy float64 twin of `pose_dofs_to_body_rotmats` (data preparation)."""
  alignment = default_alignment() if alignment is None else alignment
  dofs = np.asarray(dofs, np.float64)
  rot = rotations_np.euler_to_matrix_np(_dof_angles(dofs, np), "XYZ", extrinsic=True)
  local = np.einsum("jab,...jbc,jcd->...jad", alignment.left, rot, alignment.right)
  root = alignment.rotations[0]
  if root_rotmat is not None:
    root = np.asarray(root_rotmat, np.float64) @ root
  local[..., 0, :, :] = root
  return local


def motion_to_body(motion: Motion, alignment: Optional[RestAlignment] = None) -> dict:
  """Retargets a clip onto the body model (NumPy float64).

  Args:
    motion: ASF/AMC or CMU-skeleton BVH clip (metres).
    alignment: default `default_alignment()`.

  Returns:
    dict with `dofs [T, 50]` (chart, radians), `rotmats [T, 31, 3, 3]` model local rotations
    (= `pose_dofs_to_body_rotmats(dofs, root)`), `root_orient [T, 3]` axis-angle of
    `rotmats[:, 0]`, `root_transl [T, 3]` the `transl` argument of
    `flowpose.body.model.forward` (metres) that puts the model's hip centre (mean shape) on
    the CMU hip centre.
  """
  alignment = default_alignment() if alignment is None else alignment
  dofs = motion_to_pose_dofs(motion)
  glob, positions = motion_lib.forward_kinematics(motion)
  index = cmu_bone_index(motion.skeleton)
  root = glob[:, index[0]]
  rotmats = pose_dofs_to_body_rotmats_np(dofs, root, alignment)
  hips = positions[:, index[[BONES.index("lfemur"), BONES.index("rfemur")]]].mean(1)
  transl = hips - alignment.rest_joints[0] - rotmats[:, 0] @ alignment.hip_offset
  return {"dofs": dofs, "rotmats": rotmats,
          "root_orient": rotations_np.matrix_to_axis_angle_np(rotmats[:, 0]),
          "root_transl": transl}


@jax.jit
def _fk_joints(local: jax.Array, transl: jax.Array, rest_joints: jax.Array) -> jax.Array:
  """[B, 31, 3, 3] local rotations, [B, 3] transl -> [B, 31, 3] posed joints (float32)."""
  from flowpose.body import lbs  # pylint: disable=g-import-not-at-top
  fk = jax.vmap(lambda r: lbs.forward_kinematics(PARENTS, r, rest_joints)[1])
  return fk(local) + transl[:, None, :]


def body_joints(rotmats: np.ndarray, transl: np.ndarray,
                alignment: Optional[RestAlignment] = None, batch: int = 2048) -> np.ndarray:
  """Posed body-model joints at the mean shape (= `forward(...).joints`), jitted FK in batches.

  Args:
    rotmats: [T, 31, 3, 3] model local rotations.
    transl: [T, 3] the `transl` argument of `flowpose.body.model.forward`.
    alignment: default `default_alignment()` (its `rest_joints` are the mean-shape joints).
    batch: frames per call; the last batch is padded so every call has one shape.

  Returns:
    [T, 31, 3] float32 metres.
  """
  alignment = default_alignment() if alignment is None else alignment
  rest = jnp.asarray(alignment.rest_joints, jnp.float32)
  out = []
  for start in range(0, len(rotmats), batch):
    chunk = np.asarray(rotmats[start:start + batch], np.float32)
    shift = np.asarray(transl[start:start + batch], np.float32)
    pad = batch - len(chunk)
    chunk = np.concatenate([chunk, np.broadcast_to(np.eye(3, dtype=np.float32),
                                                   (pad, NUM_JOINTS, 3, 3))])
    shift = np.concatenate([shift, np.zeros((pad, 3), np.float32)])
    out.append(np.asarray(_fk_joints(chunk, shift, rest))[:batch - pad])
  return np.concatenate(out) if out else np.zeros((0, NUM_JOINTS, 3), np.float32)
