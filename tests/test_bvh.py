"""Tests of the BVH reader/writer (flowpose.data.bvh): a CMU clip round trip, a hand-made file
with hand-computed answers, and malformed files (split from tests/test_mocap_io.py)."""

import numpy as np
import pytest

from flowpose.data import asf_amc, bvh
from flowpose.data import motion as motion_lib
from flowpose.data.motion import MocapFormatError

SYNTHETIC_BVH = """\
HIERARCHY
ROOT Hips
{
  OFFSET 0.0 0.9 0.0
  CHANNELS 6 Xposition Yposition Zposition Yrotation Xrotation Zrotation
  JOINT Spine
  {
    OFFSET 0.0 0.1 0.0
    CHANNELS 6 Zposition Xposition Yposition Xrotation Yrotation Zrotation
    JOINT Head
    {
      OFFSET 0.0 0.5 0.0
      CHANNELS 2 Zrotation Xrotation
      End Site
      {
        OFFSET 0.0 0.2 0.0
      }
    }
  }
  JOINT Leg
  {
    OFFSET 0.1 -0.1 0.0
    CHANNELS 3 Zrotation Yrotation Xrotation
    End Site
    {
      OFFSET 0.0 -0.8 0.1
    }
  }
}
MOTION
Frames: 3
Frame Time: 0.04
0.1 0.9 0.2  90 0 0   0.0 0.0 0.1  0 0 0  0 0  0 0 0
0 0.95 0  10 20 30   0.05 0.01 0.12  -40 15 89.9999  30 -60  5 89.99999 -7
-1.5 0.8 2  -170 45 -90   0.0 0.0 0.1  179 -89 0.5  -90 90  120 -45 60
"""


def _fk_with_end_sites(motion):
  rotations, positions = motion_lib.forward_kinematics(motion)
  ends = motion_lib.end_site_positions(motion, rotations, positions)
  return rotations, positions, ends


def _assert_same_motion(a, b, atol=1e-5):
  """Same joints (by name), local rotations and FK positions (joints and end sites)."""
  assert set(a.skeleton.joint_names) == set(b.skeleton.joint_names)
  perm = [b.skeleton.index(n) for n in a.skeleton.joint_names]
  np.testing.assert_allclose(b.local_rotations[:, perm], a.local_rotations, atol=atol)
  _, pos_a, ends_a = _fk_with_end_sites(a)
  _, pos_b, ends_b = _fk_with_end_sites(b)
  np.testing.assert_allclose(pos_b[:, perm], pos_a, atol=atol)
  assert {a.skeleton.joint_names[j] for j in ends_a} == {b.skeleton.joint_names[j] for j in ends_b}
  for j, end in ends_a.items():
    np.testing.assert_allclose(ends_b[b.skeleton.index(a.skeleton.joint_names[j])], end,
                               atol=atol)
  assert b.fps == pytest.approx(a.fps)


def _write(tmp_path, name, lines):
  path = tmp_path / name
  path.write_text("\n".join(lines) + "\n")
  return path


def test_bvh_round_trip_real_clip(cmu_dir, tmp_path):
  motion = asf_amc.load_asf_amc(cmu_dir / "02_01.amc.gz")
  bvh.write_bvh(motion, tmp_path / "02_01.bvh")
  first = bvh.read_bvh(tmp_path / "02_01.bvh")
  assert first.skeleton.joint_names == motion.skeleton.joint_names
  assert first.dof_values.shape == (343, 6 + 30 * 3)
  _assert_same_motion(motion, first)
  bvh.write_bvh(first, tmp_path / "again.bvh.gz", rotation_order="YXZ")
  _assert_same_motion(motion, bvh.read_bvh(tmp_path / "again.bvh.gz"))


def test_bvh_synthetic_values_and_round_trip(tmp_path):
  (tmp_path / "synthetic.bvh").write_text(SYNTHETIC_BVH.replace("\n", "\r\n"))
  motion = bvh.read_bvh(tmp_path / "synthetic.bvh")
  skel = motion.skeleton
  assert skel.joint_names == ("Hips", "Spine", "Head", "Leg")
  assert skel.rotation_orders == ("YXZ", "XYZ", "ZX", "ZYX")
  assert motion.fps == pytest.approx(25.0) and motion.num_frames == 3
  # Frame 1: Hips Yrotation 90 maps +X to -Z; the root position channels are absolute.
  np.testing.assert_allclose(motion.root_translation[0], [0.1, 0.9, 0.2])
  np.testing.assert_allclose(motion.local_rotations[0, 0] @ [1, 0, 0], [0, 0, -1], atol=1e-12)
  # Spine's position channels (Z X Y order) replace its OFFSET.
  np.testing.assert_allclose(motion.local_translations[:, 1], [[0, 0.1, 0], [0.01, 0.12, 0.05],
                                                               [0, 0.1, 0]])
  _, positions, ends = _fk_with_end_sites(motion)
  np.testing.assert_allclose(positions[0, 3], [0.1, 0.8, 0.1], atol=1e-12)  # Leg under Ry(90).
  np.testing.assert_allclose(ends[2][0], [0.1, 1.7, 0.2], atol=1e-12)
  for order in ("ZYX", "XZY", "ZXZ"):
    bvh.write_bvh(motion, tmp_path / f"out_{order}.bvh", rotation_order=order)
    again = bvh.read_bvh(tmp_path / f"out_{order}.bvh")
    _assert_same_motion(motion, again)
    np.testing.assert_allclose(again.local_translations, motion.local_translations, atol=1e-8)


@pytest.mark.parametrize("old, new, error_line, pattern", [
    ("Frames: 3", "Frames: 4", 35, "truncated"),
    ("Frames: 3", "Frames: 2", 35, "more frame lines"),
    ("0 0.95 0  10", "0 0.95  10", 34, "has 16 values; expected 17"),
    ("-40 15", "-40 nan", 34, "non-finite"),
    ("-40 15", "-40 1.5.", 34, "non-numeric"),
    ("CHANNELS 2 Zrotation Xrotation", "CHANNELS 2 Zrotation Wrotation", 13, "unknown channel"),
    ("    OFFSET 0.1 -0.1 0.0\n", "", 20, "has no OFFSET"),
    ("Frame Time: 0.04", "Frame Time: 0", 32, "Frame Time"),
    ("  JOINT Leg", "  JOINT Spine", 20, "duplicate joint name"),
])
def test_bad_bvh(tmp_path, old, new, error_line, pattern):
  assert old in SYNTHETIC_BVH
  path = tmp_path / "bad.bvh"
  path.write_text(SYNTHETIC_BVH.replace(old, new))
  with pytest.raises(MocapFormatError, match=pattern) as info:
    bvh.read_bvh(path)
  assert f"bad.bvh:{error_line}:" in str(info.value)


def test_bvh_without_frames_is_refused(tmp_path):
  # `Frames: 0` and no data lines: a clip that would count as zero poses, silently.
  header = SYNTHETIC_BVH[:SYNTHETIC_BVH.index("Frames: 3")]
  path = tmp_path / "empty.bvh"
  path.write_text(header + "Frames: 0\nFrame Time: 0.04\n")
  with pytest.raises(MocapFormatError, match="Frames: 0.*at least one frame") as info:
    bvh.read_bvh(path)
  assert "empty.bvh:31:" in str(info.value)
  motion = bvh.read_bvh(_write(tmp_path, "ok.bvh", SYNTHETIC_BVH.split("\n")))
  with pytest.raises(ValueError, match="no frames"):  # The writer refuses to write one either.
    bvh.write_bvh(motion_lib.select_frames(motion, slice(0, 0)), tmp_path / "out.bvh")
  assert not (tmp_path / "out.bvh").exists()


def test_bvh_truncated_hierarchy(tmp_path):
  path = tmp_path / "cut.bvh"
  path.write_text(SYNTHETIC_BVH[:SYNTHETIC_BVH.index("  JOINT Leg")])
  with pytest.raises(MocapFormatError, match="cut.bvh:"):
    bvh.read_bvh(path)


# --- CMU-skeleton BVH clips (flowpose.data.clips): the converter T-pose frame ---

def _head_of_bvh(path, num_frames: int) -> str:
  """The text of a BVH file cut to its first `num_frames` frames."""
  lines = motion_lib.read_text(path).splitlines()
  start = next(n for n, line in enumerate(lines) if line.strip().lower().startswith("frame time"))
  frames = next(n for n, line in enumerate(lines) if line.strip().lower().startswith("frames:"))
  lines[frames] = f"Frames: {num_frames}"
  return "\n".join(lines[:start + 1 + num_frames]) + "\n"


@pytest.fixture(scope="module")
def cmu_more(shared_data):
  return shared_data / "cmu_more"


def test_converter_tpose_frame_is_dropped(cmu_more, tmp_path):
  from flowpose.data import clips  # pylint: disable=g-import-not-at-top
  path = tmp_path / "01_03.bvh"
  path.write_text(_head_of_bvh(cmu_more / "bvh" / "01" / "01_03.bvh.gz", 60))
  raw = bvh.read_bvh(path, clips.BVH_METRES_PER_UNIT)
  assert clips.is_converter_tpose(raw)
  motion = clips.read_clip(path)
  assert motion.num_frames == 59
  np.testing.assert_array_equal(motion.local_rotations, raw.local_rotations[1:])
  assert 0.9 < motion.root_translation[0, 1] < 1.1  # Root height in metres (ASF units).
  # Without the T-pose frame nothing more is dropped (a capture starts anywhere).
  lines = path.read_text().splitlines()
  first = next(n for n, line in enumerate(lines) if line.lower().startswith("frame time")) + 1
  del lines[first]
  path.write_text("\n".join(lines).replace("Frames: 60", "Frames: 59") + "\n")
  assert clips.read_clip(path).num_frames == 59
  np.testing.assert_array_equal(clips.read_clip(path).local_rotations, motion.local_rotations)


def test_captured_first_frames_are_kept(cmu_dir, cmu_more, tmp_path):
  """A capture's first frame stays, even one that starts near the rest pose: the rule needs
  exact zeros AND a root jump."""
  from flowpose.data import clips  # pylint: disable=g-import-not-at-top
  raw = bvh.read_bvh(cmu_more / "other_rig_bvh_3dsmax" / "131" / "131_01.bvh.gz",
                     clips.BVH_METRES_PER_UNIT)
  assert not clips.is_converter_tpose(raw)
  motion = motion_lib.select_frames(asf_amc.load_asf_amc(cmu_dir / "02_01.amc.gz"), slice(0, 40))
  path = tmp_path / "02_01.bvh"
  bvh.write_bvh(motion, path)
  assert clips.read_clip(path).num_frames == 40
  # The rule on hand-made frame 0s of that skeleton (root channels: Z, Y, X rotation).
  base = bvh.read_bvh(path)
  rotation = np.flatnonzero([motion_lib.dof_kind(n)[0] == "r" for _, n in base.dof_names])
  root_yaw = [i for i, (j, n) in enumerate(base.dof_names)
              if j == base.skeleton.joint_names[0] and n.lower() == "yrotation"][0]

  def detected(zero_frame0: bool, jump: bool) -> bool:
    values = base.dof_values.copy()
    values[:, rotation[:3]] = 0.0  # Root rotation channels come first.
    if jump:
      values[1:, root_yaw] = np.pi / 2
    if zero_frame0:
      values[0, rotation] = 0.0
    return clips.is_converter_tpose(motion_lib.motion_from_dofs(base.skeleton, values, 120.0))
  assert detected(zero_frame0=True, jump=True)
  assert not detected(zero_frame0=True, jump=False)   # Zeros alone: a still start.
  assert not detected(zero_frame0=False, jump=True)   # A jump alone: a captured pose.
