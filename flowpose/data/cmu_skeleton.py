"""The CMU skeleton: bone names, DOFs, axis frames and the pose chart of the prior.

CMU's ASF skeletons share one topology (root + 30 bones). Bone *lengths* differ per subject, the
bone `axis` frames are the same for every subject up to float noise (checked on all ASF files we
have: differences < 1e-13 degrees), so the canonical axes below define one pose chart shared by
all subjects: `POSE_DOF_NAMES`, the per-joint DOF angles (radians) that the flow prior models,
like GHUM's Euler-angle pose vector.

The chart excludes the root (global orientation and translation are not part of the pose prior)
and the finger and thumb DOFs, which CMU did not capture.
"""

from typing import Dict, Tuple

import numpy as np

# ASF bone -> MotionBuilder-friendly BVH / CC0 body-model joint name (shared/data/cmu/README.md).
ASF_TO_MB: Dict[str, str] = {
    "root": "Hips",
    "lhipjoint": "LHipJoint", "lfemur": "LeftUpLeg", "ltibia": "LeftLeg",
    "lfoot": "LeftFoot", "ltoes": "LeftToeBase",
    "rhipjoint": "RHipJoint", "rfemur": "RightUpLeg", "rtibia": "RightLeg",
    "rfoot": "RightFoot", "rtoes": "RightToeBase",
    "lowerback": "LowerBack", "upperback": "Spine", "thorax": "Spine1",
    "lowerneck": "Neck", "upperneck": "Neck1", "head": "Head",
    "lclavicle": "LeftShoulder", "lhumerus": "LeftArm", "lradius": "LeftForeArm",
    "lwrist": "LeftHand", "lhand": "LeftFingerBase", "lfingers": "LeftHandFinger1",
    "lthumb": "LThumb",
    "rclavicle": "RightShoulder", "rhumerus": "RightArm", "rradius": "RightForeArm",
    "rwrist": "RightHand", "rhand": "RightFingerBase", "rfingers": "RightHandFinger1",
    "rthumb": "RThumb",
}
MB_TO_ASF: Dict[str, str] = {v: k for k, v in ASF_TO_MB.items()}

# Other spellings of MotionBuilder-style names in CMU-skeleton BVH conversions (cgspeed: the
# finger end joint is LFingers/RFingers in some files, LeftHandIndex1/RightHandIndex1 in others).
MB_ALIASES: Dict[str, str] = {"LFingers": "LeftHandFinger1", "LeftHandIndex1": "LeftHandFinger1",
                              "RFingers": "RightHandFinger1", "RightHandIndex1": "RightHandFinger1"}

# cgspeed's "3dsMax-friendly" BVH names of the same 31-joint CMU skeleton -> MotionBuilder names
# (../shared/data/cmu_more/README.md). Several names exist in both rigs with another meaning
# (3ds Max `LeftShoulder` is the humerus = MB `LeftArm`; 3ds Max `Neck` = MB `Neck1`), so a file
# is renamed all at once, never name by name against the MB table.
MAX3DS_TO_MB: Dict[str, str] = {
    "Hips": "Hips", "LHipJoint": "LHipJoint", "RHipJoint": "RHipJoint",
    "lowerback": "LowerBack", "Chest": "Spine", "Chest2": "Spine1", "lowerneck": "Neck",
    "Neck": "Neck1", "Head": "Head",
    **{f"{side}{m}": f"{side}{b}" for side in ("Left", "Right") for m, b in (
        ("Hip", "UpLeg"), ("Knee", "Leg"), ("Ankle", "Foot"), ("Toe", "ToeBase"),
        ("Collar", "Shoulder"), ("Shoulder", "Arm"), ("Elbow", "ForeArm"), ("Wrist", "Hand"))},
    "lhand": "LeftFingerBase", "LFingers": "LeftHandFinger1", "LThumb": "LThumb",
    "rhand": "RightFingerBase", "RFingers": "RightHandFinger1", "RThumb": "RThumb",
}
# Joint names only the 3ds Max rig has: a skeleton with any of them is renamed by MAX3DS_TO_MB.
# (ASF spellings such as `lowerback`, `lhand` are not markers: they also name ASF bones.)
MAX3DS_MARKERS = (frozenset(MAX3DS_TO_MB) - frozenset(ASF_TO_MB.values()) - frozenset(MB_ALIASES)
                  - {"lowerback", "lowerneck", "lhand", "rhand"})


def mb_joint_names(names) -> Tuple[str, ...]:
  """MotionBuilder-style names (`ASF_TO_MB` values) of a CMU-skeleton BVH's joints.

  A 3ds Max-named rig (any of `MAX3DS_MARKERS`) is renamed with `MAX3DS_TO_MB` as a whole;
  otherwise `MB_ALIASES` are resolved. Names neither table knows are kept.
  """
  names = tuple(names)
  if MAX3DS_MARKERS.intersection(names):
    return tuple(MAX3DS_TO_MB.get(n, n) for n in names)
  return tuple(MB_ALIASES.get(n, n) for n in names)

# Rotational DOFs of each bone, in AMC value order (root excluded: TX TY TZ RX RY RZ).
BONE_DOFS: Dict[str, Tuple[str, ...]] = {
    "lhipjoint": (), "rhipjoint": (),
    "lowerback": ("rx", "ry", "rz"), "upperback": ("rx", "ry", "rz"),
    "thorax": ("rx", "ry", "rz"), "lowerneck": ("rx", "ry", "rz"),
    "upperneck": ("rx", "ry", "rz"), "head": ("rx", "ry", "rz"),
    "rclavicle": ("ry", "rz"), "rhumerus": ("rx", "ry", "rz"), "rradius": ("rx",),
    "rwrist": ("ry",), "rhand": ("rx", "rz"), "rfingers": ("rx",), "rthumb": ("rx", "rz"),
    "lclavicle": ("ry", "rz"), "lhumerus": ("rx", "ry", "rz"), "lradius": ("rx",),
    "lwrist": ("ry",), "lhand": ("rx", "rz"), "lfingers": ("rx",), "lthumb": ("rx", "rz"),
    "rfemur": ("rx", "ry", "rz"), "rtibia": ("rx",), "rfoot": ("rx", "rz"), "rtoes": ("rx",),
    "lfemur": ("rx", "ry", "rz"), "ltibia": ("rx",), "lfoot": ("rx", "rz"), "ltoes": ("rx",),
}

# Canonical ASF `axis` frames (degrees, order XYZ, extrinsic), identical across CMU subjects.
CANONICAL_AXES_DEG: Dict[str, Tuple[float, float, float]] = {
    "root": (0.0, 0.0, 0.0),
    "lhipjoint": (0.0, 0.0, 0.0), "lfemur": (0.0, 0.0, 20.0), "ltibia": (0.0, 0.0, 20.0),
    "lfoot": (-90.0, 0.0, 20.0), "ltoes": (-90.0, 0.0, 20.0),
    "rhipjoint": (0.0, 0.0, 0.0), "rfemur": (0.0, 0.0, -20.0), "rtibia": (0.0, 0.0, -20.0),
    "rfoot": (-90.0, 0.0, -20.0), "rtoes": (-90.0, 0.0, -20.0),
    "lowerback": (0.0, 0.0, 0.0), "upperback": (0.0, 0.0, 0.0), "thorax": (0.0, 0.0, 0.0),
    "lowerneck": (0.0, 0.0, 0.0), "upperneck": (0.0, 0.0, 0.0), "head": (0.0, 0.0, 0.0),
    "lclavicle": (0.0, 0.0, 0.0), "lhumerus": (180.0, -30.0, -90.0),
    "lradius": (180.0, -30.0, -90.0), "lwrist": (0.0, 90.0, 90.0), "lhand": (0.0, 90.0, 90.0),
    "lfingers": (0.0, 90.0, 90.0), "lthumb": (-90.0, 45.0, 0.0),
    "rclavicle": (0.0, 0.0, 0.0), "rhumerus": (180.0, 30.0, 90.0),
    "rradius": (180.0, 30.0, 90.0), "rwrist": (0.0, -90.0, -90.0), "rhand": (0.0, -90.0, -90.0),
    "rfingers": (0.0, -90.0, -90.0), "rthumb": (-90.0, -45.0, 0.0),
}

# Bones whose DOFs CMU did not capture: ignored by retargeting and the prior.
UNCAPTURED_BONES: Tuple[str, ...] = ("lfingers", "lthumb", "rfingers", "rthumb")

# AMC line order of the bones (after `root`).
AMC_BONE_ORDER: Tuple[str, ...] = (
    "lowerback", "upperback", "thorax", "lowerneck", "upperneck", "head",
    "rclavicle", "rhumerus", "rradius", "rwrist", "rhand", "rfingers", "rthumb",
    "lclavicle", "lhumerus", "lradius", "lwrist", "lhand", "lfingers", "lthumb",
    "rfemur", "rtibia", "rfoot", "rtoes", "lfemur", "ltibia", "lfoot", "ltoes",
)

# The pose chart of the prior: (bone, dof) pairs in AMC order, root and uncaptured bones excluded.
POSE_DOFS: Tuple[Tuple[str, str], ...] = tuple(
    (bone, dof) for bone in AMC_BONE_ORDER if bone not in UNCAPTURED_BONES
    for dof in BONE_DOFS[bone])
POSE_DOF_NAMES: Tuple[str, ...] = tuple(f"{b}.{d}" for b, d in POSE_DOFS)
NUM_POSE_DOFS: int = len(POSE_DOFS)  # 50

# Pose DOFs that CMU never moves: the clavicles' ry, rz are 0 in every AMC clip (checked on all 13
# subjects of ../shared/data/cmu and cmu_more: |value| < 1e-14). A density on them is a delta
# (actnorm divides by their zero spread); the prior's "euler_free" chart drops them.
FIXED_POSE_DOFS: Tuple[str, ...] = ("rclavicle.ry", "rclavicle.rz", "lclavicle.ry",
                                    "lclavicle.rz")


def pose_dof_indices(dof_names) -> np.ndarray:
  """Indices of `POSE_DOFS` inside a motion's list of `(bone, dof)` names.

  Args:
    dof_names: sequence of `(bone, dof)` pairs (e.g. `Motion.dof_names`).

  Returns:
    [NUM_POSE_DOFS] int array; raises KeyError naming the first missing DOF.
  """
  lookup = {tuple(name): i for i, name in enumerate(dof_names)}
  missing = [f"{b}.{d}" for b, d in POSE_DOFS if (b, d) not in lookup]
  if missing:
    raise KeyError(f"motion lacks pose DOFs {missing}")
  return np.asarray([lookup[p] for p in POSE_DOFS], np.int32)


def _mirror_bone(bone: str) -> str:
  if bone[0] in "lr" and bone not in ("lowerback", "lowerneck"):
    return {"l": "r", "r": "l"}[bone[0]] + bone[1:]
  return bone


def mirror_permutation_and_signs() -> Tuple[np.ndarray, np.ndarray]:
  """The left-right mirror of the pose chart: `mirrored = signs * dofs[..., perm]`.

  Reflecting the body in its sagittal plane (CMU's X axis: `S = diag(-1, 1, 1)`) maps a bone's
  local rotation `M` to `S M S` on the opposite-side bone (central bones map to themselves). The
  canonical axes of opposite bones are mirror images (`C_r = S C_l S`, see `CANONICAL_AXES_DEG`),
  so in DOF terms `rx` is kept and `ry`, `rz` change sign.

  Returns:
    `(perm [D] int, signs [D] float32)` with D = NUM_POSE_DOFS.
  """
  index = {dof: i for i, dof in enumerate(POSE_DOFS)}
  perm = np.asarray([index[(_mirror_bone(b), d)] for b, d in POSE_DOFS], np.int32)
  signs = np.asarray([1.0 if d == "rx" else -1.0 for _, d in POSE_DOFS], np.float32)
  return perm, signs


def mirror_dofs(dofs: np.ndarray) -> np.ndarray:
  """`[..., NUM_POSE_DOFS]` pose-chart angles of the left-right mirrored poses."""
  dofs = np.asarray(dofs)
  if dofs.shape[-1] != NUM_POSE_DOFS:
    raise ValueError(f"mirror_dofs: expected [..., {NUM_POSE_DOFS}] pose DOFs, got {dofs.shape}")
  perm, signs = mirror_permutation_and_signs()
  return (dofs[..., perm] * signs).astype(dofs.dtype)
