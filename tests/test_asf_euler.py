"""The ASF/AMC rotation conventions on a hand-written skeleton whose bones rotate about two or
three axes at once, with non-trivial `axis` frames and permuted `dof` lines, checked against an
independent computation (scipy's Euler angles, an explicit FK written out here).

The CMU fixture bones of tests/test_mocap_io.py rotate about one axis per frame, so any Euler
order passes them; these do not (reading bones as intrinsic XYZ instead of extrinsic XYZ, or the
axis frame the other way round, fails every check below)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from flowpose.data import asf_amc
from flowpose.data import motion as motion_lib

# 1 file unit = 1 m (`length 0.0254`), angles in degrees. Every bone has a tilted axis frame; `arm`
# lists its DOFs as rz rx ry (the AMC value order), `hand` has two DOFs (ry rz).
MULTI_AXIS_ASF = """\
:version 1.10
:name multi
:units
  mass 1.0
  length 0.0254
  angle deg
:root
   order TX TY TZ RX RY RZ
   axis XYZ
   position 0 0 0
   orientation 0 0 0
:bonedata
  begin
     id 1
     name spine
     direction 0 1 0
     length 1
     axis 10 -20 30 XYZ
    dof rx ry rz
  end
  begin
     id 2
     name arm
     direction 1 0.5 0
     length 2
     axis -40 25 70 XYZ
    dof rz rx ry
  end
  begin
     id 3
     name hand
     direction 0 0 1
     length 0.5
     axis 15 60 -35 XYZ
    dof ry rz
  end
:hierarchy
  begin
    root spine
    spine arm
    arm hand
  end
"""

# Per frame: root (tx ty tz rx ry rz), spine (rx ry rz), arm (rz rx ry), hand (ry rz).
FRAMES = [
    {"root": (0.1, 0.2, 0.3, 20.0, -35.0, 50.0), "spine": (30.0, -45.0, 60.0),
     "arm": (70.0, 25.0, -50.0), "hand": (-30.0, 40.0)},
    {"root": (-1.0, 0.5, 2.0, -80.0, 10.0, 170.0), "spine": (-15.0, 80.0, 5.0),
     "arm": (-120.0, 60.0, 35.0), "hand": (75.0, -65.0)},
]
AXES_DEG = {"spine": (10, -20, 30), "arm": (-40, 25, 70), "hand": (15, 60, -35)}
DOF_ORDER = {"spine": "xyz", "arm": "zxy", "hand": "yz"}
BONE_VECTORS = {"spine": np.array([0.0, 1.0, 0.0]),
                "arm": 2.0 * np.array([1.0, 0.5, 0.0]) / np.linalg.norm([1.0, 0.5, 0.0]),
                "hand": np.array([0.0, 0.0, 0.5])}


def _amc_text():
  lines = [":FULLY-SPECIFIED", ":DEGREES"]
  for t, frame in enumerate(FRAMES, start=1):
    lines.append(str(t))
    for bone in ("root", "spine", "arm", "hand"):
      lines.append(bone + " " + " ".join(repr(v) for v in frame[bone]))
  return "\n".join(lines) + "\n"


def _expected_local_rotations(frame):
  """{bone: [3, 3]} from scipy: ASF's rule `L = C Rz(rz) Ry(ry) Rx(rx) C^T`, C = axis frame."""
  out = {"root": Rotation.from_euler("xyz", frame["root"][3:], degrees=True).as_matrix()}
  for bone, order in DOF_ORDER.items():
    angles = dict(zip(order, frame[bone]))
    # scipy: lower-case axes are extrinsic; extrinsic x, y, z is the matrix Rz @ Ry @ Rx.
    rot = Rotation.from_euler("xyz", [angles.get(a, 0.0) for a in "xyz"], degrees=True)
    frame_c = Rotation.from_euler("xyz", AXES_DEG[bone], degrees=True).as_matrix()
    out[bone] = frame_c @ rot.as_matrix() @ frame_c.T
  return out


def _expected_positions(frame, local):
  """Joint positions root, spine, arm, hand and the hand's end site, by explicit FK."""
  glob_root = local["root"]
  glob_spine = glob_root @ local["spine"]
  glob_arm = glob_spine @ local["arm"]
  glob_hand = glob_arm @ local["hand"]
  root = np.array(frame["root"][:3])
  spine = root  # Bones hanging off the root start at the root.
  arm = spine + glob_spine @ BONE_VECTORS["spine"]
  hand = arm + glob_arm @ BONE_VECTORS["arm"]
  end = hand + glob_hand @ BONE_VECTORS["hand"]
  return np.stack([root, spine, arm, hand]), end


@pytest.fixture
def multi_axis_motion(tmp_path):
  (tmp_path / "multi.asf").write_text(MULTI_AXIS_ASF)
  (tmp_path / "multi_01.amc").write_text(_amc_text())
  return asf_amc.load_asf_amc(tmp_path / "multi_01.amc")


def test_multi_axis_local_rotations_match_scipy(multi_axis_motion):
  skel = multi_axis_motion.skeleton
  assert skel.joint_names == ("root", "spine", "arm", "hand")
  for t, frame in enumerate(FRAMES):
    expected = _expected_local_rotations(frame)
    for j, bone in enumerate(skel.joint_names):
      np.testing.assert_allclose(multi_axis_motion.local_rotations[t, j], expected[bone],
                                 atol=1e-12, err_msg=f"frame {t + 1}, bone {bone}")


def test_multi_axis_positions_match_explicit_fk(multi_axis_motion):
  rotations, positions = motion_lib.forward_kinematics(multi_axis_motion)
  ends = motion_lib.end_site_positions(multi_axis_motion, rotations, positions)
  for t, frame in enumerate(FRAMES):
    joints, end = _expected_positions(frame, _expected_local_rotations(frame))
    np.testing.assert_allclose(positions[t], joints, atol=1e-12)
    np.testing.assert_allclose(ends[3][t], end, atol=1e-12)


def test_multi_axis_dof_values_follow_the_dof_line(multi_axis_motion):
  col = {name: c for c, name in enumerate(multi_axis_motion.dof_names)}
  for t, frame in enumerate(FRAMES):
    for bone, order in DOF_ORDER.items():
      for axis, value in zip(order, frame[bone]):
        assert multi_axis_motion.dof_values[t, col[bone, "r" + axis]] == pytest.approx(
            np.deg2rad(value), abs=1e-15)
