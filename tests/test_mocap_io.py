"""Tests of the mocap readers (flowpose.data.motion, asf, asf_amc) on real CMU clips and on small
hand-made files with hand-computed answers (BVH: tests/test_bvh.py; multi-axis Euler rules:
tests/test_asf_euler.py)."""

import csv
import gzip
import re

import numpy as np
import pytest

from flowpose.data import asf_amc
from flowpose.data import motion as motion_lib
from flowpose.data import rotations_np
from flowpose.data.motion import MocapFormatError

CMU_UNIT_M = 0.0254 / 0.45  # CMU `:units length 0.45`: one unit is 1/0.45 inch.

# Root + two bones, 1 file unit = 1 m (`length 0.0254`). `lower` has its axis frame turned by
# 90 degrees about Z, so its `rx` rotates about world Y.
TWO_BONE_ASF = """\
# hand-made
:version 1.10
:name two
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
     name upper
     direction 0 1 0
     length 2
     axis 0 0 0 XYZ
    dof rx ry rz
    limits (-180.0 180.0)
           (-90 90)
           (-inf inf)
  end
  begin
     id 2
     name lower
     direction 1 0 0
     length 1
     axis 0 0 90 XYZ
    dof rx
  end
:hierarchy
  begin
    root upper
    upper lower
  end
"""

TWO_BONE_AMC = """\
#!OML:ASF two.asf
:FULLY-SPECIFIED
:DEGREES
1
root 1 2 3 0 0 0
upper 90 0 0
lower 0
2
root 0 0 0 0 0 90
upper 0 0 0
lower 90
"""

# Frame 1: `upper` rx = 90 deg turns the bone from +Y to +Z; `lower` hangs off its end.
# Frame 2: the root yaws 90 deg about Z; `lower` turns 90 deg about world Y (its axis frame).
TWO_BONE_EXPECTED = {  # frame -> (root, upper, lower, end of lower)
    0: [(1, 2, 3), (1, 2, 3), (1, 2, 5), (2, 2, 5)],
    1: [(0, 0, 0), (0, 0, 0), (-2, 0, 0), (-2, 0, -1)],
}


def _cmu_index(cmu_dir):
  with open(cmu_dir / "index.csv", newline="") as f:
    return {row["file"]: int(row["frames"]) for row in csv.DictReader(f)}


def _fk_with_end_sites(motion):
  rotations, positions = motion_lib.forward_kinematics(motion)
  ends = motion_lib.end_site_positions(motion, rotations, positions)
  return rotations, positions, ends


# --- Real CMU files. ---


@pytest.mark.parametrize("clip", ["02_01", "16_45", "105_06"])
def test_real_clips_match_index(cmu_dir, clip):
  motion = asf_amc.load_asf_amc(cmu_dir / f"{clip}.amc.gz")
  assert motion.num_frames == _cmu_index(cmu_dir)[f"{clip}.amc.gz"]
  assert motion.dof_values.shape == (motion.num_frames, 62)
  assert motion.skeleton.num_joints == 31 and motion.fps == 120.0
  assert motion.dof_names[:6] == tuple(("root", d) for d in ("tx", "ty", "tz", "rx", "ry", "rz"))
  assert np.all(np.isfinite(motion.local_rotations))
  rotations = motion.local_rotations
  np.testing.assert_allclose(rotations @ np.swapaxes(rotations, -1, -2),
                             np.broadcast_to(np.eye(3), rotations.shape), atol=1e-12)


def test_lf_and_crlf_files(cmu_dir, tmp_path):
  lf = gzip.decompress((cmu_dir / "02_01.amc.gz").read_bytes())
  crlf = gzip.decompress((cmu_dir / "105_06.amc.gz").read_bytes())
  assert b"\r\n" not in lf and crlf.count(b"\r\n") == crlf.count(b"\n")
  # The same CRLF clip with LF endings, uncompressed, parses to identical values.
  (tmp_path / "105_06.amc").write_bytes(crlf.replace(b"\r\n", b"\n"))
  (tmp_path / "105.asf").write_bytes(
      gzip.decompress((cmu_dir / "105.asf.gz").read_bytes()).replace(b"\r\n", b"\n"))
  a = asf_amc.load_asf_amc(cmu_dir / "105_06.amc.gz")
  b = asf_amc.load_asf_amc(tmp_path / "105_06.amc")
  np.testing.assert_array_equal(a.dof_values, b.dof_values)
  np.testing.assert_array_equal(a.skeleton.offsets, b.skeleton.offsets)


def test_dof_values_are_the_file_values_in_si(cmu_dir):
  motion = asf_amc.load_asf_amc(cmu_dir / "02_01.amc.gz")
  col = {name: c for c, name in enumerate(motion.dof_names)}
  # Frame 1 of 02_01: `root 10.4194 16.7048 -30.1003 -2.48972 -9.82194 -3.00914`,
  # `lfemur -28.0191 -1.02078 -20.1783`.
  np.testing.assert_allclose(motion.root_translation[0],
                             np.array([10.4194, 16.7048, -30.1003]) * CMU_UNIT_M)
  np.testing.assert_allclose(motion.dof_values[0, [col["lfemur", d] for d in ("rx", "ry", "rz")]],
                             np.deg2rad([-28.0191, -1.02078, -20.1783]))
  assert motion.skeleton.metres_per_unit == pytest.approx(0.05644, abs=1e-5)


def test_root_rotation_is_extrinsic_xyz(cmu_dir):
  # CMU's own BVH conversion prints this AMC root line of 16_23 (frame 6) as Z Y X rotation
  # channels with the angles reversed: extrinsic XYZ == intrinsic ZYX.
  motion = asf_amc.load_asf_amc(cmu_dir / "16_23.amc.gz")
  zyx = rotations_np.matrix_to_euler_np(motion.local_rotations[5, 0], "ZYX", degrees=True)
  np.testing.assert_allclose(zyx, [-0.701772, -3.38957, 1.6119], atol=1e-9)


def test_asf_rest_pose_is_cumulative_bone_vectors(cmu_dir):
  skeleton = asf_amc.read_asf(cmu_dir / "02.asf.gz")
  text = gzip.decompress((cmu_dir / "02.asf.gz").read_bytes()).decode()
  blocks = re.findall(r"name (\w+)\s+direction ([^\n]+)\n\s+length ([^\n]+)", text)
  bone_vectors = {n: np.array(d.split(), float) * float(l) * CMU_UNIT_M for n, d, l in blocks}
  assert len(bone_vectors) == 30
  num = skeleton.num_joints
  rest = motion_lib.Motion(skeleton, 120.0, np.zeros((1, 3)),
                           np.broadcast_to(np.eye(3), (1, num, 3, 3)))
  _, positions, ends = _fk_with_end_sites(rest)
  for j, name in enumerate(skeleton.joint_names):
    # A joint sits where its bone starts: the sum of its strict ancestors' bone vectors.
    expected, p = np.zeros(3), skeleton.parents[j]
    while p > 0:
      expected += bone_vectors[skeleton.joint_names[p]]
      p = skeleton.parents[p]
    # 1e-6 m: the reader normalises the file's 6-digit `direction`s to unit length.
    np.testing.assert_allclose(positions[0, j], expected, atol=1e-6)
    if j in ends:
      np.testing.assert_allclose(ends[j][0], expected + bone_vectors[name], atol=1e-6)
  assert {skeleton.joint_names[j] for j in ends} == {
      "ltoes", "rtoes", "head", "lfingers", "lthumb", "rfingers", "rthumb"}


# --- Hand-made ASF/AMC. ---


@pytest.fixture
def two_bone(tmp_path):
  (tmp_path / "two.asf").write_text(TWO_BONE_ASF)
  (tmp_path / "two_01.amc").write_text(TWO_BONE_AMC)
  return tmp_path / "two_01.amc", tmp_path / "two.asf"


def test_two_bone_hand_computed_positions(two_bone):
  motion = asf_amc.load_asf_amc(two_bone[0])  # Finds two.asf by the subject prefix.
  skel = motion.skeleton
  assert skel.joint_names == ("root", "upper", "lower")
  np.testing.assert_allclose(skel.offsets, [[0, 0, 0], [0, 0, 0], [0, 2, 0]])
  np.testing.assert_allclose(skel.dof_limits[1][1], np.deg2rad([-90, 90]))
  assert skel.dof_limits[1][2][1] == np.inf
  _, positions, ends = _fk_with_end_sites(motion)
  for t, (root, upper, lower, end) in TWO_BONE_EXPECTED.items():
    np.testing.assert_allclose(positions[t], [root, upper, lower], atol=1e-12)
    np.testing.assert_allclose(ends[2][t], end, atol=1e-12)


def test_two_bone_radians_and_gzip(two_bone, tmp_path):
  amc = TWO_BONE_AMC.replace(":DEGREES", ":RADIANS").replace(" 90", f" {np.pi / 2!r}")
  (tmp_path / "rad_01.amc.gz").write_bytes(gzip.compress(amc.encode()))
  # Gzip is detected by content, not by name.
  (tmp_path / "rad.asf").write_bytes(gzip.compress(TWO_BONE_ASF.replace("\n", "\r\n").encode()))
  deg, rad = asf_amc.load_asf_amc(two_bone[0]), asf_amc.load_asf_amc(tmp_path / "rad_01.amc.gz")
  np.testing.assert_allclose(rad.local_rotations, deg.local_rotations, atol=1e-12)


def test_amc_without_its_asf(tmp_path):
  (tmp_path / "77_01.amc").write_text(TWO_BONE_AMC)
  with pytest.raises(MocapFormatError, match="AMC without its ASF") as info:
    asf_amc.load_asf_amc(tmp_path / "77_01.amc")
  assert "77_01.amc" in str(info.value)


def _amc_excerpt(cmu_dir, frames=3):
  """The first `frames` frames of 02_01 as LF lines (3 header lines + 30 lines per frame)."""
  lines = gzip.decompress((cmu_dir / "02_01.amc.gz").read_bytes()).decode().split("\n")
  return lines[:3 + 30 * frames]


def _mutate(lines, line_no, new):
  """Replaces 1-based line `line_no` (None: delete it)."""
  out = list(lines)
  if new is None:
    del out[line_no - 1]
  else:
    out[line_no - 1] = new
  return out


@pytest.mark.parametrize("case, mutate, error_line, pattern", [
    ("truncated", lambda l: l[:-10], 83, "lacks bones"),
    ("cut mid-line", lambda l: l[:-1] + [l[-1].split()[0]], 93, "has 0 values; expected 1"),
    ("values count", lambda l: _mutate(l, 36, "lowerback 1 2"), 36, "has 2 values; expected 3"),
    ("extra value", lambda l: _mutate(l, 45, "rwrist 1 2"), 45, "expected 1"),
    ("unknown bone", lambda l: _mutate(l, 37, "upperbak 1 2 3"), 37, "unknown bone 'upperbak'"),
    ("non-numeric", lambda l: _mutate(l, 38, "thorax 1 abc 3"), 38, "non-numeric"),
    ("nan", lambda l: _mutate(l, 38, "thorax 1 nan 3"), 38, "non-finite"),
    ("inf", lambda l: _mutate(l, 68, "thorax -inf 0 3"), 68, "non-finite"),
    ("missing frame", lambda l: l[:33] + l[63:], 34, "frame number 3; expected 2"),
    ("duplicate bone", lambda l: _mutate(l, 39, l[37]), 39, "twice"),
    ("data before frame", lambda l: _mutate(l, 4, "root 1 2 3 4 5 6"), 4, "expected frame"),
])
def test_bad_amc(cmu_dir, tmp_path, case, mutate, error_line, pattern):
  skeleton = asf_amc.read_asf(cmu_dir / "02.asf.gz")
  lines = _amc_excerpt(cmu_dir)
  assert asf_amc.read_amc(_write(tmp_path, "ok.amc", lines), skeleton).num_frames == 3
  path = _write(tmp_path, "bad.amc", mutate(lines))
  with pytest.raises(MocapFormatError, match=pattern) as info:
    asf_amc.read_amc(path, skeleton)
  assert f"bad.amc:{error_line}:" in str(info.value), case


def test_irregular_amc_layout_parses_like_regular(cmu_dir, tmp_path):
  # Comments, blank lines, swapped bone lines and CRLF take the line-by-line path; the values
  # must equal the bulk path's.
  skeleton = asf_amc.read_asf(cmu_dir / "02.asf.gz")
  lines = _amc_excerpt(cmu_dir)
  regular = asf_amc.read_amc(_write(tmp_path, "regular.amc", lines), skeleton)
  irregular = list(lines)
  irregular[36], irregular[50] = irregular[50], irregular[36]
  irregular[40:40] = ["", "# a comment", "   "]
  path = tmp_path / "irregular.amc"
  path.write_bytes(("\r\n".join(irregular) + "\r\n").encode())
  np.testing.assert_array_equal(asf_amc.read_amc(path, skeleton).dof_values, regular.dof_values)


def _write(tmp_path, name, lines):
  path = tmp_path / name
  path.write_text("\n".join(lines) + "\n")
  return path


@pytest.mark.parametrize("old, new, error_line, pattern", [
    ("length 2\n", "length two\n", 18, "non-numeric length"),
    ("    upper lower", "    upper elbow", 36, "unknown bone 'elbow'"),
    ("dof rx\n", "dof rx l\n", 31, "not supported"),
    ("direction 1 0 0", "direction 0 0 0", 28, "non-zero"),
    ("axis 0 0 90 XYZ", "axis 0 0 90 XYY", 30, "permutation of XYZ"),
    ("           (-90 90)\n", "", 21, "one \\(min max\\) pair per DOF"),
])
def test_bad_asf(tmp_path, old, new, error_line, pattern):
  assert old in TWO_BONE_ASF
  path = tmp_path / "bad.asf"
  path.write_text(TWO_BONE_ASF.replace(old, new))
  with pytest.raises(MocapFormatError, match=pattern) as info:
    asf_amc.read_asf(path)
  assert f"bad.asf:{error_line}:" in str(info.value)


def test_corrupt_gzip(tmp_path):
  path = tmp_path / "bad.asf.gz"
  path.write_bytes(gzip.compress(TWO_BONE_ASF.encode())[:40])
  with pytest.raises(MocapFormatError, match="gzip"):
    asf_amc.read_asf(path)


# --- Motion utilities. ---


def test_resample(cmu_dir):
  motion = asf_amc.load_asf_amc(cmu_dir / "16_45.amc.gz")
  quarter = motion_lib.resample(motion, 30.0)
  assert quarter.fps == 30.0 and quarter.num_frames == len(range(0, motion.num_frames, 4))
  np.testing.assert_array_equal(quarter.local_rotations, motion.local_rotations[::4])
  np.testing.assert_allclose(quarter.root_translation, motion.root_translation[::4])
  np.testing.assert_array_equal(quarter.dof_values, motion.dof_values[::4])
  fifty = motion_lib.resample(motion, 50.0)  # Frame k at source frame 2.4 k.
  assert fifty.num_frames == int((motion.num_frames - 1) / 2.4) + 1
  np.testing.assert_allclose(fifty.root_translation[1], 0.6 * motion.root_translation[2] +
                             0.4 * motion.root_translation[3])
  np.testing.assert_array_equal(fifty.local_rotations[1], motion.local_rotations[2])


def test_numpy_euler_matches_geometry():
  geometry = pytest.importorskip("flowpose.geometry")
  rng = np.random.default_rng(0)
  angles = rng.uniform(-np.pi, np.pi, (64, 3))
  angles[:8, 1] = np.pi / 2  # Gimbal lock for the Tait-Bryan orders.
  for order in ("XYZ", "XZY", "YXZ", "YZX", "ZXY", "ZYX", "XYX", "XZX", "YXY", "YZY", "ZXZ",
                "ZYZ"):
    for extrinsic in (False, True):
      ours = rotations_np.euler_to_matrix_np(angles, order, extrinsic=extrinsic)
      np.testing.assert_allclose(
          ours, np.asarray(geometry.euler_to_matrix(angles, order, extrinsic=extrinsic)),
          atol=1e-5)
      back = rotations_np.matrix_to_euler_np(ours, order, extrinsic=extrinsic)
      np.testing.assert_allclose(rotations_np.euler_to_matrix_np(back, order, extrinsic=extrinsic),
                                 ours, atol=1e-9)


def test_skeleton_validation():
  eye = np.broadcast_to(np.eye(3), (2, 3, 3))
  with pytest.raises(ValueError, match="parents"):
    motion_lib.Skeleton(("a", "b"), [-1, 1], np.zeros((2, 3)), ((), ()), eye, ("", ""))
  with pytest.raises(ValueError, match="unique"):
    motion_lib.Skeleton(("a", "a"), [-1, 0], np.zeros((2, 3)), ((), ()), eye, ("", ""))
  skeleton = motion_lib.Skeleton(("a", "b"), [-1, 0], np.zeros((2, 3)), ((), ()), eye, ("", ""))
  assert not skeleton.offsets.flags.writeable
