"""Tests for the pose chart of flowpose.data.cmu_skeleton (left-right mirroring)."""

import numpy as np
import pytest

from flowpose.data import asf_amc
from flowpose.data import cmu_skeleton
from flowpose.data import motion as motion_lib


def test_mirror_is_an_involution():
  dofs = np.random.default_rng(0).normal(size=(5, cmu_skeleton.NUM_POSE_DOFS))
  np.testing.assert_array_equal(cmu_skeleton.mirror_dofs(cmu_skeleton.mirror_dofs(dofs)), dofs)
  perm, signs = cmu_skeleton.mirror_permutation_and_signs()
  names = cmu_skeleton.POSE_DOF_NAMES
  assert names[perm[names.index("lfemur.ry")]] == "rfemur.ry"
  assert names[perm[names.index("thorax.rz")]] == "thorax.rz"
  assert signs[names.index("thorax.rx")] == 1 and signs[names.index("thorax.rz")] == -1


def test_mirror_rejects_wrong_width():
  with pytest.raises(ValueError, match="50"):
    cmu_skeleton.mirror_dofs(np.zeros((2, 49)))


def test_mirrored_dofs_give_mirrored_global_rotations(cmu_dir):
  """FK of the mirrored DOFs = the reflection S G S of every bone's global rotation, on the
  opposite-side bone (global rotations do not depend on the subject's bone lengths)."""
  motion = asf_amc.load_asf_amc(cmu_dir / "05_03.amc.gz")  # Dance.
  frames = motion.dof_values[::40]
  cols = cmu_skeleton.pose_dof_indices(motion.dof_names)
  chart = frames[:, cols]
  values = np.zeros_like(frames)  # Root and uncaptured DOFs at zero.
  values[:, cols] = chart
  mirrored = np.zeros_like(frames)
  mirrored[:, cols] = cmu_skeleton.mirror_dofs(chart)
  skel = motion.skeleton
  rot, _ = motion_lib.forward_kinematics(motion_lib.motion_from_dofs(skel, values, 120.0))
  rot_m, _ = motion_lib.forward_kinematics(motion_lib.motion_from_dofs(skel, mirrored, 120.0))
  reflect = np.diag([-1.0, 1.0, 1.0])
  names = list(skel.joint_names)
  for j, name in enumerate(names):
    if name == "root" or name in cmu_skeleton.UNCAPTURED_BONES:
      continue
    jm = names.index(cmu_skeleton._mirror_bone(name))  # pylint: disable=protected-access
    np.testing.assert_allclose(rot_m[:, jm], reflect @ rot[:, j] @ reflect, atol=1e-9,
                               err_msg=name)
