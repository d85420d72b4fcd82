"""Tests for flowpose.data.retarget on real CMU clips (walk, jump, dance)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowpose import geometry
from flowpose.data import asf_amc
from flowpose.data import bvh
from flowpose.data import cmu_skeleton
from flowpose.data import motion as motion_lib
from flowpose.data import rotations_np
from flowpose.data import retarget
from flowpose.data import retarget_errors

CLIPS = ("02_01", "13_39", "05_03")  # walk, jump, dance (343, 351, 434 frames at 120 fps).
CAPTURED_LIMBS = [b for b in retarget.ALIGNED_BONES
                  if b not in cmu_skeleton.UNCAPTURED_BONES and not b.endswith("foot")]
KEPT = [b for b in retarget.BONES[1:] if b not in retarget.ALIGNED_BONES]


@pytest.fixture(scope="module")
def alignment():
  return retarget.default_alignment()


@pytest.fixture(scope="module")
def motions(cmu_dir):
  return {name: asf_amc.load_asf_amc(cmu_dir / f"{name}.amc.gz") for name in CLIPS}


@pytest.fixture(scope="module")
def body_model():
  from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
  return assets.load_cc0_model()


def test_bone_directions_agree(motions, alignment):
  # Thresholds from `launch/retarget_check.py` over all 173,810 frames: captured limb bones
  # p95 <= 0.002 deg (float32 FK); feet <= 5.2 deg, a per-subject constant (each CMU subject's
  # foot points differently at rest, the chart has one canonical foot); bones that keep the
  # model's rest geometry differ by a per-subject constant, so their within-clip spread is ~0.
  for name, motion in motions.items():
    errors = retarget_errors.bone_direction_errors(motion, alignment, batch=512)
    col = {b: errors[:, retarget.BONES.index(b)] for b in retarget.BONES[1:]}
    for bone in CAPTURED_LIMBS:
      assert np.percentile(col[bone], 95) < 0.01 and col[bone].max() < 0.05, (name, bone)
    for bone in cmu_skeleton.UNCAPTURED_BONES:  # Compared with CMU's DOFs zeroed.
      assert col[bone].max() < 0.05, (name, bone)
    for bone in ("lfoot", "rfoot"):
      assert col[bone].max() < 6.0 and np.ptp(col[bone]) < 0.01, (name, bone)
    for bone in KEPT:
      assert np.ptp(col[bone]) < 0.01, (name, bone)


def test_rest_pose_maps_to_t_pose(alignment):
  rotmats = retarget.pose_dofs_to_body_rotmats(jnp.zeros(cmu_skeleton.NUM_POSE_DOFS))
  joints = retarget.body_joints(np.asarray(rotmats)[None], np.zeros((1, 3)), alignment,
                                batch=512)[0]
  names = tuple(cmu_skeleton.ASF_TO_MB[b] for b in retarget.BONES)
  j = {n: joints[names.index(n)] for n in names}
  for side, sign in (("Left", 1.0), ("Right", -1.0)):
    arm = j[f"{side}Hand"] - j[f"{side}Arm"]  # Shoulder -> wrist: horizontal, sideways.
    np.testing.assert_allclose(arm / np.linalg.norm(arm), [sign, 0, 0], atol=1e-5)
    leg = j[f"{side}Foot"] - j[f"{side}UpLeg"]  # Hip -> ankle: CMU's 20 deg spread.
    np.testing.assert_allclose(leg / np.linalg.norm(leg),
                               [sign * np.sin(np.radians(20)), -np.cos(np.radians(20)), 0],
                               atol=1e-5)
  # The trunk keeps the model's rest pose: identity local rotations.
  for bone in ("root", "lhipjoint", "lowerback", "thorax", "head", "lclavicle"):
    np.testing.assert_allclose(rotmats[retarget.BONES.index(bone)], np.eye(3), atol=1e-6)


def test_jnp_matches_numpy_and_direct_path(motions, alignment):
  motion = motions["05_03"]
  body = retarget.motion_to_body(motion, alignment)
  root = body["rotmats"][:, 0]
  jnp_rot = retarget.pose_dofs_to_body_rotmats(body["dofs"], root, alignment)
  np.testing.assert_allclose(np.asarray(jnp_rot), body["rotmats"], atol=2e-6)
  # Direct path from the motion's own rotations: L_model = A_p^T L_cmu A_j.
  local = retarget.cmu_local_rotations(motion)
  a = alignment.rotations
  a_parent = a[np.maximum(retarget.PARENTS, 0)]
  direct = np.swapaxes(a_parent, -1, -2) @ local @ a
  direct[:, 0] = local[:, 0] @ a[0]
  np.testing.assert_allclose(body["rotmats"], direct, atol=1e-9)
  # root_orient is the axis-angle of the root rotation.
  np.testing.assert_allclose(
      body["root_orient"], np.asarray(geometry.matrix_to_axis_angle(jnp.asarray(root))),
      atol=1e-5)


def test_root_translation_puts_hips_on_cmu_hips(motions, alignment, body_model):
  from flowpose.body import model as bm  # pylint: disable=g-import-not-at-top
  motion = motions["13_39"]
  body = retarget.motion_to_body(motion, alignment)
  joints = retarget.body_joints(body["rotmats"], body["root_transl"], alignment, batch=512)
  femurs = [retarget.BONES.index("lfemur"), retarget.BONES.index("rfemur")]
  _, cmu_pos = motion_lib.forward_kinematics(motion)
  np.testing.assert_allclose(joints[:, femurs].mean(1), cmu_pos[:, femurs].mean(1), atol=1e-5)
  # body_joints is the model's own forward pass at the mean shape.
  t = 100
  out = bm.forward(body_model, body["rotmats"][t], jnp.zeros(body_model.num_betas),
                   body["root_transl"][t])
  np.testing.assert_allclose(joints[t], np.asarray(out.joints), atol=1e-5)


def test_gradients_finite(motions):
  dofs = jnp.asarray(retarget.motion_to_pose_dofs(motions["02_01"])[::40], jnp.float32)
  dofs = jnp.concatenate([dofs, jnp.zeros((1, dofs.shape[1]))])  # Include the rest pose.
  rest = jnp.asarray(retarget.default_alignment().rest_joints, jnp.float32)

  def loss(x):
    rot = retarget.pose_dofs_to_body_rotmats(x)
    from flowpose.body import lbs  # pylint: disable=g-import-not-at-top
    pos = jax.vmap(lambda r: lbs.forward_kinematics(retarget.PARENTS, r, rest)[1])(rot)
    return jnp.sum(pos ** 2)

  grad = jax.jit(jax.grad(loss))(dofs)
  assert grad.shape == dofs.shape
  assert np.all(np.isfinite(np.asarray(grad))) and np.any(np.asarray(grad) != 0)


@pytest.mark.parametrize("names", ["asf", "mb"])
def test_bvh_source_gives_amc_dofs(motions, tmp_path, names):
  motion = motions["13_39"]
  if names == "mb":  # The MotionBuilder-friendly joint names of the CMU BVH conversion.
    skeleton = dataclasses.replace(motion.skeleton, joint_names=tuple(
        cmu_skeleton.ASF_TO_MB[n] for n in motion.skeleton.joint_names))
    motion = dataclasses.replace(motion, skeleton=skeleton)
  path = tmp_path / "clip.bvh"
  bvh.write_bvh(motion, path)
  from_bvh = retarget.motion_to_pose_dofs(bvh.read_bvh(path))
  from_amc = retarget.motion_to_pose_dofs(motions["13_39"])
  diff = np.angle(np.exp(1j * (from_bvh - from_amc)))  # Compare angles modulo 2 pi.
  assert np.abs(diff).max() < 1e-4


def test_non_canonical_axes_reexpressed(motions):
  motion = motions["02_01"]
  skel = motion.skeleton
  frames = np.array(skel.axis_frames)
  j = skel.index("lhumerus")
  tilt = rotations_np.euler_to_matrix_np(np.array([3.0, -2.0, 4.0]), "XYZ", degrees=True)
  frames[j] = tilt @ frames[j]
  tilted = dataclasses.replace(skel, axis_frames=frames)
  moved = motion_lib.motion_from_dofs(tilted, motion.dof_values, motion.fps)
  dofs = retarget.motion_to_pose_dofs(moved)
  # The 3-DOF humerus is re-expressed exactly in the canonical frame: same local rotation.
  cols = [cmu_skeleton.POSE_DOFS.index(("lhumerus", d)) for d in ("rx", "ry", "rz")]
  canon = retarget.canonical_axis_frames()[j]
  rot = rotations_np.euler_to_matrix_np(dofs[:, cols], "XYZ", extrinsic=True)
  np.testing.assert_allclose(canon @ rot @ canon.T, moved.local_rotations[:, j], atol=1e-9)
  # Other bones are untouched.
  others = [i for i, (b, _) in enumerate(cmu_skeleton.POSE_DOFS) if b != "lhumerus"]
  original = retarget.motion_to_pose_dofs(motion)
  np.testing.assert_allclose(dofs[:, others], original[:, others], atol=1e-9)


# --- BVH rigs of the CMU skeleton: MotionBuilder names, 3ds Max names, another rest pose ---

MAX3DS_NAMES = (  # 131_01.bvh of ../shared/data/cmu_more/other_rig_bvh_3dsmax, in file order.
    "Hips LHipJoint LeftHip LeftKnee LeftAnkle LeftToe RHipJoint RightHip RightKnee RightAnkle "
    "RightToe lowerback Chest Chest2 lowerneck Neck Head LeftCollar LeftShoulder LeftElbow "
    "LeftWrist lhand LFingers LThumb RightCollar RightShoulder RightElbow RightWrist rhand "
    "RFingers RThumb").split()


def test_3dsmax_name_map():
  mb = cmu_skeleton.mb_joint_names(MAX3DS_NAMES)
  assert mb == tuple(cmu_skeleton.ASF_TO_MB.values())  # Same joints, same order as CMU's.
  # The clashing names mean other bones in the two rigs.
  assert dict(zip(MAX3DS_NAMES, mb))["LeftShoulder"] == "LeftArm"
  assert dict(zip(MAX3DS_NAMES, mb))["Neck"] == "Neck1"
  assert cmu_skeleton.mb_joint_names(["Hips", "LeftShoulder", "Neck"]) == (
      "Hips", "LeftShoulder", "Neck")  # An MB file is not renamed.
  assert cmu_skeleton.mb_joint_names(["LFingers"]) == ("LeftHandFinger1",)
  fake = type("S", (), {"joint_names": tuple(MAX3DS_NAMES)})
  index = retarget.cmu_bone_index(fake)
  assert index.tolist() == list(range(31))
  assert MAX3DS_NAMES[index[retarget.BONES.index("lhumerus")]] == "LeftShoulder"
  assert MAX3DS_NAMES[index[retarget.BONES.index("lclavicle")]] == "LeftCollar"


def _arms_down(motion):
  """`motion` re-expressed on a rest pose with the arms hanging down (3ds Max-friendly files),
  its joints renamed to 3ds Max names: the inverse of `clips.align_rest_to_cmu`."""
  from flowpose.data import clips  # pylint: disable=g-import-not-at-top
  skel = motion.skeleton
  rest = np.broadcast_to(np.eye(3), (skel.num_joints, 3, 3)).copy()
  index = retarget.cmu_bone_index(skel)
  for bone in ("lhumerus", "lradius", "lwrist", "lhand", "lfingers", "rhumerus", "rradius",
               "rwrist", "rhand", "rfingers"):
    d_cmu = np.asarray(retarget.CANONICAL_REST_DIRECTIONS[bone])
    rest[index[retarget.BONES.index(bone)]] = clips._swing(d_cmu, np.array([0.0, -1.0, 0.0]))
  parent_rest = rest[np.maximum(skel.parents, 0)]
  parent_rest[np.asarray(skel.parents) < 0] = np.eye(3)
  local = parent_rest @ motion.local_rotations @ np.swapaxes(rest, -1, -2)
  offsets = np.einsum("jik,jk->ji", parent_rest, skel.offsets)
  end_sites = {j: rest[j] @ np.asarray(v) for j, v in skel.end_sites.items()}
  to_max = {mb: m for m, mb in zip(MAX3DS_NAMES, cmu_skeleton.ASF_TO_MB.values())}
  names = tuple(to_max[cmu_skeleton.mb_joint_names([n])[0]] for n in skel.joint_names)
  skeleton = dataclasses.replace(skel, offsets=offsets, end_sites=end_sites, joint_names=names)
  return motion_lib.Motion(skeleton, motion.fps, motion.root_translation, local)


def test_3dsmax_rig_with_arms_down_gives_the_same_dofs(shared_data):
  from flowpose.data import clips  # pylint: disable=g-import-not-at-top
  cmu_bvh = shared_data / "cmu_more" / "bvh" / "01" / "01_03.bvh.gz"
  motion = motion_lib.select_frames(clips.read_clip(cmu_bvh), slice(0, 400, 8))
  other = _arms_down(motion)
  _, positions = motion_lib.forward_kinematics(motion)
  np.testing.assert_allclose(motion_lib.forward_kinematics(other)[1], positions, atol=1e-9)
  assert not np.allclose(retarget.motion_to_pose_dofs(other), retarget.motion_to_pose_dofs(
      motion), atol=0.1)  # Read naively, the arms are 90 degrees off.
  aligned = clips.align_rest_to_cmu(other)
  np.testing.assert_allclose(motion_lib.forward_kinematics(aligned)[1], positions, atol=1e-9)
  np.testing.assert_allclose(retarget.motion_to_pose_dofs(aligned),
                             retarget.motion_to_pose_dofs(motion), atol=1e-6)
  assert clips.align_rest_to_cmu(motion) is motion  # CMU's own rest: untouched.


def test_3dsmax_file_reads_through_the_map(shared_data):
  """The shared 3ds Max clip: elbows bend about CMU's elbow axis once the rest is aligned."""
  from flowpose.data import clips  # pylint: disable=g-import-not-at-top
  motion = motion_lib.select_frames(clips.read_clip(
      shared_data / "cmu_more" / "other_rig_bvh_3dsmax" / "131" / "131_01.bvh.gz"),
      slice(0, 994, 10))
  local = retarget.cmu_local_rotations(motion)
  frames = retarget.canonical_axis_frames()
  for bone in ("lradius", "rradius", "ltibia", "rtibia"):
    j = retarget.BONES.index(bone)
    rot = frames[j].T @ local[:, j] @ frames[j]  # A pure rx rotation in the ASF axis frame.
    assert np.abs(rot[:, 0, 1:]).max() < 1e-3 and np.abs(rot[:, 1:, 0]).max() < 1e-3, bone


def test_default_alignment_first_built_inside_a_jit():
  # A jitted fit may be the first to need it (the video job's jitted rest pose did): its numpy
  # constants must still be computed eagerly, not from tracers.
  expected = np.asarray(retarget.default_alignment().rest_joints)
  retarget.default_alignment.cache_clear()
  total = jax.jit(lambda x: x + jnp.sum(jnp.asarray(retarget.default_alignment().rest_joints)))
  np.testing.assert_allclose(float(total(0.0)), expected.sum(), rtol=1e-5)
  np.testing.assert_array_equal(retarget.default_alignment().rest_joints, expected)
