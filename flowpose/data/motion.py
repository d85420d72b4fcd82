"""Skeleton and Motion containers for motion capture, with NumPy kinematics.

Conventions (shared by the ASF/AMC and BVH readers):

* Units: metres and radians everywhere in `Skeleton` and `Motion`. The file's own units are
  recorded (`Skeleton.metres_per_unit`) but never leak into the arrays.
* Rotation matrices act on column vectors. Every joint frame is world-aligned at rest: the rest
  pose is all local rotations = identity, and `offsets[j]` is the rest vector from the parent
  joint to joint j in world axes. `local_rotations[t, j]` is the rotation of joint j relative to
  its parent, so global `G_j = G_parent @ L_j` and `p_j = p_parent + G_parent @ offsets[j]`.
* A joint sits at the *start* of its bone (BVH convention). For ASF, joint j is where bone j
  begins (= the end of its parent bone), so `offsets[j] = direction_parent * length_parent`;
  leaf bones get an end site `direction * length`.
* `Motion.dof_values [T, D]`: the channel values as parsed, skeleton order, in SI units.
* Euler orders (`Skeleton.rotation_orders`) are *intrinsic*, like BVH channel lists: `"ZYX"` is
  `R = Rz @ Ry @ Rx`, which is also ASF/AMC's extrinsic XYZ rule.
"""

import dataclasses
import gzip
import os
import zlib
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from flowpose.data import rotations_np

PathLike = Union[str, os.PathLike]

_AXIS_INDEX = rotations_np.AXIS_INDEX


class MocapFormatError(ValueError):
  """Bad motion-capture input: the one exception the mocap readers raise for file content.

  The message reads `"<path>:<line>: <what was wrong>"` (line omitted when not applicable) and
  says what was expected. `path` and `line` are also attributes.
  """

  def __init__(self, message: str, path: Optional[PathLike] = None,
               line: Optional[int] = None):
    self.path, self.line = (None if path is None else str(path)), line
    prefix = "" if path is None else f"{path}: " if line is None else f"{path}:{line}: "
    super().__init__(prefix + message)


def read_text(path: PathLike) -> str:
  """Reads a text file, gunzipped when it starts with the gzip magic bytes (any name).

  Undecodable bytes become U+FFFD, so they surface later as a parse error with a line number
  instead of a UnicodeDecodeError. Raises MocapFormatError for a corrupt gzip stream.
  """
  with open(path, "rb") as f:
    data = f.read()
  if data[:2] == b"\x1f\x8b":
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
      raise MocapFormatError(f"corrupt gzip data ({e}); expected a valid gzip stream",
                             path) from None
  return data.decode("utf-8", errors="replace")


def dof_kind(name: str) -> Tuple[str, str]:
  """ASF (`rx`, `TX`) or BVH (`Xrotation`, `Yposition`) name -> (`"r"|"t"`, `"X"|"Y"|"Z"`)."""
  low = name.lower()
  if len(low) == 2 and low[0] in "rt" and low[1] in "xyz":
    return low[0], low[1].upper()
  if len(low) == 9 and low[0] in "xyz" and low[1:] in ("rotation", "position"):
    return ("r" if low[1:] == "rotation" else "t"), low[0].upper()
  raise ValueError(f"unknown DOF name {name!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class Skeleton:
  """A kinematic tree with world-aligned rest frames (NumPy arrays, read-only).

  Attributes:
    joint_names: [J] names; joint 0 is the root.
    parents: [J] int, -1 for the root, `parents[i] < i`.
    offsets: [J, 3] rest offset of each joint from its parent joint, metres, world axes.
      `offsets[0]` is the root's rest position (informational: FK places the root at
      `Motion.root_translation`).
    dof_names: per joint, the DOF/channel names in file value order, e.g. `("rx", "ry", "rz")`
      (ASF; root `("tx", "ty", "tz", "rx", "ry", "rz")`) or `("Zrotation", "Yrotation", ...)`
      (BVH).
    axis_frames: [J, 3, 3] per-joint axis frame C (ASF `axis`; identity for BVH). DOF rotations
      R_j are expressed in this frame: `L_j = C_j @ R_j @ C_j.T`.
    rotation_orders: per joint, the intrinsic Euler order in which its rotation DOFs compose
      (`"ZYX"`: `R = Rz @ Ry @ Rx`; absent DOFs are zero angles). For BVH the letters of the
      rotation channels in file order (may be shorter than 3).
    end_sites: {joint index: [3] end offset in metres} for leaves (BVH `End Site`; ASF leaf
      bones' `direction * length`).
    bone_directions: [J, 3] unit ASF bone directions in world axes (root: zeros), or None.
    bone_lengths: [J] ASF bone lengths in metres (root: 0), or None.
    dof_limits: per joint, [n_dofs, 2] (min, max) in radians / metres (+-inf if unlimited),
      or None when the format has none (BVH).
    metres_per_unit: the file's length unit in metres (ASF: 0.0254 / `:units length`).
    name: skeleton name (ASF `:name`, or the file stem).
  """
  joint_names: Tuple[str, ...]
  parents: np.ndarray
  offsets: np.ndarray
  dof_names: Tuple[Tuple[str, ...], ...]
  axis_frames: np.ndarray
  rotation_orders: Tuple[str, ...]
  end_sites: Mapping[int, np.ndarray] = dataclasses.field(default_factory=dict)
  bone_directions: Optional[np.ndarray] = None
  bone_lengths: Optional[np.ndarray] = None
  dof_limits: Optional[Tuple[np.ndarray, ...]] = None
  metres_per_unit: float = 1.0
  name: str = ""

  def __post_init__(self):
    def frozen_array(value, dtype):
      array = np.array(value, dtype=dtype)  # A private copy, so callers cannot mutate it.
      array.setflags(write=False)
      return array

    setattr_ = lambda k, v: object.__setattr__(self, k, v)
    setattr_("joint_names", tuple(str(n) for n in self.joint_names))
    setattr_("dof_names", tuple(tuple(str(d) for d in ds) for ds in self.dof_names))
    setattr_("rotation_orders", tuple(str(o) for o in self.rotation_orders))
    setattr_("parents", frozen_array(self.parents, np.int64))
    setattr_("offsets", frozen_array(self.offsets, np.float64))
    setattr_("axis_frames", frozen_array(self.axis_frames, np.float64))
    setattr_("end_sites", {int(j): frozen_array(v, np.float64)
                           for j, v in dict(self.end_sites).items()})
    for key in ("bone_directions", "bone_lengths"):
      if getattr(self, key) is not None:
        setattr_(key, frozen_array(getattr(self, key), np.float64))
    if self.dof_limits is not None:
      setattr_("dof_limits", tuple(frozen_array(l, np.float64).reshape(-1, 2)
                                   for l in self.dof_limits))
    num = len(self.joint_names)
    if num == 0 or len(set(self.joint_names)) != num:  # ValueError: a caller bug, not a file.
      raise ValueError(f"joint names must be non-empty and unique, got {self.joint_names}")
    if self.parents.shape != (num,) or self.parents[0] != -1 or np.any(
        self.parents[1:] < 0) or np.any(self.parents[1:] >= np.arange(1, num)):
      raise ValueError(f"parents must be [J] with parents[0] = -1 and 0 <= parents[i] < i, "
                       f"got {self.parents}")
    if self.offsets.shape != (num, 3) or self.axis_frames.shape != (num, 3, 3):
      raise ValueError(f"offsets must be [{num}, 3] and axis_frames [{num}, 3, 3], got "
                       f"{self.offsets.shape} and {self.axis_frames.shape}")
    if len(self.dof_names) != num or len(self.rotation_orders) != num:
      raise ValueError("dof_names and rotation_orders need one entry per joint")
    _ = [dof_kind(n) for names in self.dof_names for n in names]
    for order in self.rotation_orders:
      if any(a not in _AXIS_INDEX for a in order):
        raise ValueError(f"rotation order {order!r} must use the letters X, Y, Z")
    if any(not 0 <= j < num or v.shape != (3,) for j, v in self.end_sites.items()):
      raise ValueError("end_sites must map joint indices to [3] offsets")

  @property
  def num_joints(self) -> int:
    return len(self.joint_names)

  @property
  def num_dofs(self) -> int:
    return sum(len(d) for d in self.dof_names)

  @property
  def flat_dof_names(self) -> Tuple[Tuple[str, str], ...]:
    """[D] `(joint name, dof name)` pairs in skeleton order (the `dof_values` columns)."""
    return tuple((j, d) for j, ds in zip(self.joint_names, self.dof_names) for d in ds)

  def index(self, joint_name: str) -> int:
    return self.joint_names.index(joint_name)

  def children(self, joint: int) -> Tuple[int, ...]:
    return tuple(int(i) for i in np.flatnonzero(self.parents == joint))

  def rest_positions(self) -> np.ndarray:
    """[J, 3] joint positions in the rest pose, root at `offsets[0]`."""
    positions = np.zeros((self.num_joints, 3))
    positions[0] = self.offsets[0]
    for j in range(1, self.num_joints):
      positions[j] = positions[self.parents[j]] + self.offsets[j]
    return positions


@dataclasses.dataclass(eq=False)
class Motion:
  """A clip: per-frame root translation and local joint rotations on a Skeleton.

  Attributes:
    skeleton: the Skeleton.
    fps: frames per second.
    root_translation: [T, 3] world position of the root joint, metres.
    local_rotations: [T, J, 3, 3] rotation of each joint relative to its parent
      (`G_j = G_parent @ L_j`; root: its global orientation); identity = rest pose.
    dof_values: [T, D] raw per-joint DOF values in skeleton order (`dof_names`), angles in
      radians, translations in metres; None for motions built from rotations directly.
    local_translations: [T, J, 3] per-frame translation of each joint from its parent (parent
      axes, metres) when the source animates non-root translations (BVH position channels on
      non-root joints); None means `skeleton.offsets`. Column 0 is unused (root_translation).
    source: where the motion came from (file path), for messages.
  """
  skeleton: Skeleton
  fps: float
  root_translation: np.ndarray
  local_rotations: np.ndarray
  dof_values: Optional[np.ndarray] = None
  local_translations: Optional[np.ndarray] = None
  source: str = ""

  def __post_init__(self):
    self.fps = float(self.fps)
    self.root_translation = np.asarray(self.root_translation, np.float64)
    self.local_rotations = np.asarray(self.local_rotations, np.float64)
    num_frames = self.root_translation.shape[0] if self.root_translation.ndim else -1
    num_joints = self.skeleton.num_joints
    if not (np.isfinite(self.fps) and self.fps > 0):
      raise ValueError(f"fps must be positive and finite, got {self.fps}")
    if self.root_translation.shape != (num_frames, 3) or self.local_rotations.shape != (
        num_frames, num_joints, 3, 3):
      raise ValueError(f"expected root_translation [T, 3] and local_rotations [T, {num_joints},"
                       f" 3, 3], got {self.root_translation.shape} and "
                       f"{self.local_rotations.shape}")
    if self.dof_values is not None:
      self.dof_values = np.asarray(self.dof_values, np.float64)
      if self.dof_values.shape != (num_frames, self.skeleton.num_dofs):
        raise ValueError(f"dof_values must be [{num_frames}, {self.skeleton.num_dofs}], got "
                         f"{self.dof_values.shape}")
    if self.local_translations is not None:
      self.local_translations = np.asarray(self.local_translations, np.float64)
      if self.local_translations.shape != (num_frames, num_joints, 3):
        raise ValueError(f"local_translations must be [{num_frames}, {num_joints}, 3], got "
                         f"{self.local_translations.shape}")

  @property
  def num_frames(self) -> int:
    return self.root_translation.shape[0]

  @property
  def dof_names(self) -> Tuple[Tuple[str, str], ...]:
    """[D] `(joint, dof)` pairs naming the `dof_values` columns."""
    return self.skeleton.flat_dof_names


def rotation_dof_columns(skeleton: Skeleton, joint: int) -> Tuple[Tuple[str, int], ...]:
  """(axis, column in `dof_values` or -1 if absent) for each letter of the joint's order.

  The k-th occurrence of an axis letter in `rotation_orders[joint]` takes the k-th rotation DOF
  about that axis (so BVH orders with repeated axes map positionally).
  """
  start = sum(len(d) for d in skeleton.dof_names[:joint])
  unused = [(dof_kind(d), start + n) for n, d in enumerate(skeleton.dof_names[joint])]
  unused = [(axis, col) for (kind, axis), col in unused if kind == "r"]
  out = []
  for axis in skeleton.rotation_orders[joint]:
    match = next((item for item in unused if item[0] == axis), None)
    if match is not None:
      unused.remove(match)
    out.append((axis, -1 if match is None else match[1]))
  return tuple(out)


def local_rotations_from_dofs(skeleton: Skeleton, dof_values: np.ndarray) -> np.ndarray:
  """[T, D] DOF values (radians) -> [T, J, 3, 3] local rotations `C_j R_j C_j^T`."""
  num_frames = dof_values.shape[0]
  out = np.empty((num_frames, skeleton.num_joints, 3, 3))
  # Joints sharing an Euler order are converted in one batched call (31 ASF joints -> 1 call).
  groups: Dict[str, list] = {}
  for j in range(skeleton.num_joints):
    groups.setdefault(skeleton.rotation_orders[j], []).append(j)
  padded = np.concatenate([dof_values, np.zeros((num_frames, 1))], axis=1)  # col -1 -> 0.
  for order, joints in groups.items():
    cols = np.array([[c for _, c in rotation_dof_columns(skeleton, j)] for j in joints],
                    dtype=np.int64).reshape(len(joints), len(order))
    out[:, joints] = rotations_np.euler_to_matrix_np(padded[:, cols], order)
  frames = skeleton.axis_frames
  if not np.array_equal(frames, np.broadcast_to(np.eye(3), frames.shape)):
    # vec(C R C^T) = (C kron C) vec(R): one [T, 9] @ [9, 9] BLAS product per joint instead of
    # two stacked 3x3 matmuls over [T, J].
    kron = np.einsum("jac,jbd->jabcd", frames, frames).reshape(-1, 9, 9)
    flat = np.swapaxes(out.reshape(num_frames, -1, 9), 0, 1)  # [J, T, 9]
    out = np.swapaxes(flat @ np.swapaxes(kron, 1, 2), 0, 1).reshape(out.shape)
  return out


def motion_from_dofs(skeleton: Skeleton, dof_values: np.ndarray, fps: float,
                     source: str = "") -> Motion:
  """Builds a Motion from [T, D] SI DOF values (radians, metres) in skeleton order.

  Translation DOFs replace the corresponding rest-offset coordinate (BVH/Blender convention:
  root position channels are absolute positions).
  """
  dof_values = np.asarray(dof_values, np.float64)
  num_frames = dof_values.shape[0]
  local_translations = None
  root_translation = np.broadcast_to(skeleton.offsets[0], (num_frames, 3)).copy()
  col = 0
  for j, names in enumerate(skeleton.dof_names):
    for name in names:
      kind, axis = dof_kind(name)
      if kind == "t":
        if j == 0:
          root_translation[:, _AXIS_INDEX[axis]] = dof_values[:, col]
        else:
          if local_translations is None:
            local_translations = np.broadcast_to(
                skeleton.offsets, (num_frames,) + skeleton.offsets.shape).copy()
          local_translations[:, j, _AXIS_INDEX[axis]] = dof_values[:, col]
      col += 1
  return Motion(skeleton, fps, root_translation, local_rotations_from_dofs(skeleton, dof_values),
                dof_values=dof_values, local_translations=local_translations, source=source)


# --- Kinematics and frame selection. ---


def forward_kinematics(motion: Motion) -> Tuple[np.ndarray, np.ndarray]:
  """Global joint rotations and positions of every frame.

  Returns:
    global_rotations [T, J, 3, 3] and positions [T, J, 3] (metres, world).
  """
  skel = motion.skeleton
  num_frames, num_joints = motion.num_frames, skel.num_joints
  rotations = np.empty((num_frames, num_joints, 3, 3))
  positions = np.empty((num_frames, num_joints, 3))
  rotations[:, 0] = motion.local_rotations[:, 0]
  positions[:, 0] = motion.root_translation
  for j in range(1, num_joints):
    p = skel.parents[j]
    rotations[:, j] = rotations[:, p] @ motion.local_rotations[:, j]
    if motion.local_translations is None:
      offset = rotations[:, p] @ skel.offsets[j]
    else:
      offset = np.einsum("tab,tb->ta", rotations[:, p], motion.local_translations[:, j])
    positions[:, j] = positions[:, p] + offset
  return rotations, positions


def end_site_positions(motion: Motion, global_rotations: np.ndarray,
                       positions: np.ndarray) -> Dict[int, np.ndarray]:
  """{joint: [T, 3]} world positions of the skeleton's end sites, from FK outputs."""
  return {j: positions[:, j] + global_rotations[:, j] @ offset
          for j, offset in motion.skeleton.end_sites.items()}


def select_frames(motion: Motion, indices: Union[slice, Sequence[int], np.ndarray],
                  fps: Optional[float] = None) -> Motion:
  """A Motion with the given frames (a slice or an index array) and optionally a new fps."""
  pick = lambda a: None if a is None else a[indices]
  return Motion(motion.skeleton, motion.fps if fps is None else fps,
                motion.root_translation[indices], motion.local_rotations[indices],
                dof_values=pick(motion.dof_values),
                local_translations=pick(motion.local_translations), source=motion.source)


def resample(motion: Motion, fps: float, translation: str = "linear") -> Motion:
  """Resamples to `fps` (> 0) by nearest-frame selection (no slerp).

  Output frame k is at time k / fps, for every such time within the clip. Rotations and DOF
  values take the nearest source frame; root (and local) translations are linearly
  interpolated (`translation="linear"`) or also nearest (`"nearest"`). When the source rate is an
  integer multiple of `fps` (120 -> 30) every output time hits a source frame: exactly a stride.
  """
  if not (np.isfinite(fps) and fps > 0) or translation not in ("linear", "nearest"):
    raise ValueError(f"need fps > 0 and translation in (linear, nearest), got {fps}, "
                     f"{translation!r}")
  if motion.num_frames == 0:
    return select_frames(motion, slice(0, 0), fps)
  ratio = motion.fps / fps
  count = int(np.floor((motion.num_frames - 1) / ratio + 1e-9)) + 1
  source_pos = np.arange(count) * ratio  # Fractional source frame of each output frame.
  nearest = np.minimum(np.floor(source_pos + 0.5).astype(np.int64), motion.num_frames - 1)
  out = select_frames(motion, nearest, fps)
  if translation == "linear":
    lo = np.minimum(np.floor(source_pos).astype(np.int64), motion.num_frames - 1)
    hi = np.minimum(lo + 1, motion.num_frames - 1)
    weight = source_pos - lo

    def lerp(a):
      w = weight.reshape((-1,) + (1,) * (a.ndim - 1))
      return (1.0 - w) * a[lo] + w * a[hi]

    out.root_translation = lerp(motion.root_translation)
    if motion.local_translations is not None:
      out.local_translations = lerp(motion.local_translations)
  return out
