"""Tests for flowpose.body.smpl: SMPL-layout .npz files -> BodyModel."""

import numpy as np
import pytest

from flowpose import geometry
from flowpose.body import model as bm
from flowpose.body import model_io
from flowpose.body import smpl

SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16,
                17, 18, 19, 20, 21)
NUM_V, NUM_B = 50, 10


def smpl_arrays(seed=0, max_nonzero=4):
  """A small random SMPL-layout model (24 joints, posedirs [V, 3, 207])."""
  rng = np.random.default_rng(seed)
  nj = len(SMPL_PARENTS)
  weights = np.zeros((NUM_V, nj))
  for v in range(NUM_V):
    n = rng.integers(1, max_nonzero + 1)
    weights[v, rng.choice(nj, n, replace=False)] = rng.random(n) + 0.05
  weights /= weights.sum(1, keepdims=True)
  j_regressor = rng.random((nj, NUM_V)) * (rng.random((nj, NUM_V)) < 0.2)
  j_regressor[:, 0] += 1e-3
  j_regressor /= j_regressor.sum(1, keepdims=True)
  kintree = np.stack([np.asarray(SMPL_PARENTS, np.int64) % 2**32,
                      np.arange(nj)]).astype(np.uint32)
  return {
      "v_template": rng.normal(size=(NUM_V, 3)),
      "shapedirs": 0.03 * rng.normal(size=(NUM_V, 3, 300)),
      "posedirs": 0.02 * rng.normal(size=(NUM_V, 3, 9 * (nj - 1))),
      "J_regressor": j_regressor,
      "weights": weights,
      "kintree_table": kintree,
      "f": rng.integers(0, NUM_V, (30, 3)).astype(np.uint32),
  }


def smpl_reference(arrays, rotmats, betas):
  """smplx.lbs in numpy float64 (dense weights, per-joint loop)."""
  nb = len(betas)
  v_shaped = arrays["v_template"] + np.einsum(
      "vcs,s->vc", arrays["shapedirs"][:, :, :nb], betas)
  rest = arrays["J_regressor"] @ v_shaped
  feat = (rotmats[1:] - np.eye(3)).reshape(-1)
  posedirs = arrays["posedirs"].reshape(NUM_V * 3, -1).T
  v_posed = v_shaped + (feat @ posedirs).reshape(NUM_V, 3)
  parents = arrays["kintree_table"][0].astype(np.int64)
  world = []
  for j in range(len(parents)):
    local = np.eye(4)
    local[:3, :3] = rotmats[j]
    p = parents[j] if j else -1
    local[:3, 3] = rest[j] - (rest[p] if p >= 0 else 0)
    world.append(local if p < 0 else world[p] @ local)
  rel = np.stack(world)
  rel[:, :3, 3] -= np.einsum("jab,jb->ja", rel[:, :3, :3], rest)
  blended = np.einsum("vj,jab->vab", arrays["weights"], rel)
  homog = np.concatenate([v_posed, np.ones((NUM_V, 1))], 1)
  return np.einsum("vab,vb->va", blended, homog)[:, :3]


@pytest.fixture(scope="module")
def smpl_file(tmp_path_factory):
  arrays = smpl_arrays()
  path = tmp_path_factory.mktemp("smpl") / "SMPL_TEST.npz"
  np.savez(path, **arrays, bs_style="lbs")
  return path, arrays


def test_loads_layout(smpl_file):
  path, arrays = smpl_file
  model = smpl.load_smpl_npz(path, num_betas=NUM_B)
  assert model.parents == SMPL_PARENTS
  assert model.joint_names == smpl.SMPL_JOINT_NAMES
  assert model.posedirs.shape == (207, NUM_V * 3)
  assert model.shapedirs.shape == (NUM_V, 3, NUM_B)
  assert model.keypoint_regressor.shape == (24, NUM_V)
  np.testing.assert_array_equal(model.faces, arrays["f"].astype(np.int32))


def test_pose_correctives_match_smpl_reference(smpl_file):
  path, arrays = smpl_file
  model = smpl.load_smpl_npz(path, num_betas=NUM_B)
  rng = np.random.default_rng(1)
  pose = (0.7 * rng.normal(size=(24, 3))).astype(np.float32)
  betas = rng.normal(size=NUM_B).astype(np.float32)
  rot = np.asarray(geometry.axis_angle_to_matrix(pose), np.float64)
  out = bm.forward(model, rot, betas)
  expected = smpl_reference(arrays, rot, betas)
  np.testing.assert_allclose(out.vertices, expected, atol=1e-5)
  # Without the correctives the result is measurably different.
  no_pose = smpl_reference({**arrays, "posedirs": 0 * arrays["posedirs"]},
                           rot, betas)
  assert np.abs(no_pose - expected).max() > 1e-2
  np.testing.assert_allclose(out.keypoints,
                             arrays["J_regressor"] @ expected, atol=1e-5)


def test_top_k_equals_dense_when_weights_are_sparse(smpl_file):
  path, arrays = smpl_file
  model, info = smpl.convert_smpl_arrays(dict(np.load(path)), NUM_B, top_k=4)
  assert info["max_dropped_weight"] == 0.0
  np.testing.assert_allclose(bm.dense_skin_weights(model), arrays["weights"],
                             atol=1e-6)
  model2, info2 = smpl.convert_smpl_arrays(dict(np.load(path)), NUM_B,
                                           top_k=2)
  assert info2["max_dropped_weight"] > 0.0
  np.testing.assert_allclose(model2.skin_weights.sum(1), 1.0, atol=1e-6)


def test_rejects_bad_files(tmp_path):
  with pytest.raises(model_io.BodyModelError, match="pkl"):
    smpl.load_smpl_npz(tmp_path / "SMPL_NEUTRAL.pkl")
  arrays = smpl_arrays()
  path = tmp_path / "chumpy.npz"
  np.savez(path, **{**arrays, "shapedirs": np.asarray([object()])})
  with pytest.raises(model_io.BodyModelError, match="pickled"):
    smpl.load_smpl_npz(path)
  path = tmp_path / "missing.npz"
  np.savez(path, **{k: v for k, v in arrays.items() if k != "weights"})
  with pytest.raises(model_io.BodyModelError, match="'weights'"):
    smpl.load_smpl_npz(path)
