"""Tests for flowpose.evidence.coco and flowpose.fitting.photo (launch/fit_coco): input checks
(nothing written), the output folder checked before fitting, and the one-rename output swap."""

import copy
import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from flowpose import io_utils
from flowpose.evidence import coco
from flowpose.fitting import fit as fitting
from flowpose.fitting import photo
from experiments import fit_coco as fit_coco_config


@pytest.fixture(scope="module")
def coco_files(shared_data):
  """(annotations JSON, image) of the shared COCO sample (conftest's shared data folder)."""
  folder = shared_data / "coco"
  json_path, image = folder / "person_keypoints_785.json", folder / "000000000785.jpg"
  if not json_path.exists():
    pytest.fail(f"shared COCO sample missing: {json_path}")
  return json_path, image


@pytest.fixture
def sample(tmp_path, coco_files):
  """A writable copy of the sample: (json dict, image path, tmp folder)."""
  json_path, source = coco_files
  image = tmp_path / source.name
  shutil.copy(source, image)
  return json.loads(json_path.read_text()), image, tmp_path


def _write(tmp_path, data, name="ann.json"):
  path = tmp_path / name
  path.write_text(json.dumps(data) if not isinstance(data, str) else data)
  return path


def test_reads_the_sample(coco_files):
  json_path, image = coco_files
  person = coco.read_coco_person(str(json_path), str(image))
  assert person.keypoints.shape == (17, 2) and person.confidence.shape == (17,)
  assert person.image.shape == (425, 640, 3)
  np.testing.assert_array_equal(person.confidence, 1.0)
  assert person.annotation_id == 442619
  # Default image: file_name next to the JSON.
  assert coco.read_coco_person(str(json_path)).image.shape == (425, 640, 3)


def test_picks_most_visible_and_by_id(sample):
  data, image, tmp = sample
  other = copy.deepcopy(data["annotations"][0])
  other["id"] = 7
  kp = np.asarray(other["keypoints"], float).reshape(17, 3)
  kp[5:, 2] = 0
  other["keypoints"] = kp.ravel().tolist()
  data["annotations"].insert(0, other)
  path = _write(tmp, data)
  assert coco.read_coco_person(str(path), str(image)).annotation_id == 442619
  person = coco.read_coco_person(str(path), str(image), annotation_id="7")
  assert person.annotation_id == 7
  assert np.isnan(person.keypoints[5:]).all() and person.confidence[5:].sum() == 0


def _bad_keypoints_length(data, image):
  data["annotations"][0]["keypoints"] = data["annotations"][0]["keypoints"][:-3]
  return data, image


def _nan_keypoint(data, image):
  data["annotations"][0]["keypoints"][3] = float("nan")  # JSON NaN literal.
  return data, image


def _all_invisible(data, image):
  kp = data["annotations"][0]["keypoints"]
  data["annotations"][0]["keypoints"] = [0 if i % 3 == 2 else x for i, x in enumerate(kp)]
  return data, image


def _bad_flag(data, image):
  data["annotations"][0]["keypoints"][2] = 3
  return data, image


def _no_annotations(data, image):
  data["annotations"] = []
  return data, image


def _no_person(data, image):
  data["annotations"][0]["category_id"] = 2
  return data, image


def _missing_image(data, image):
  image.unlink()
  return data, image


def _unreadable_image(data, image):
  image.write_bytes(b"not a jpeg at all")
  return data, image


def _wrong_image_size(data, image):
  data["images"][0]["width"] = 641
  return data, image


def _not_json(data, image):
  return "{ this is not json", image


@pytest.mark.parametrize("corrupt, field", [
    (_bad_keypoints_length, "keypoints"), (_nan_keypoint, "NaN"),
    (_all_invisible, "unlabelled"), (_bad_flag, "visibility"),
    (_no_annotations, "annotations"), (_no_person, "person"),
    (_missing_image, "not found"), (_unreadable_image, "not a readable image"),
    (_wrong_image_size, "width"), (_not_json, "JSON"),
])
def test_bad_input_raises_and_writes_nothing(sample, corrupt, field):
  data, image, tmp = sample
  data, image = corrupt(data, image)
  path = _write(tmp, data)
  out_dir = tmp / "out"
  config = fit_coco_config.get_config("runlocal")
  config.fit.prior = "none"
  with pytest.raises(fitting.FitInputError, match=field) as info:
    photo.run(config, str(image), str(path), None, str(out_dir))
  assert str(path) in str(info.value)  # The message names the file.
  assert not out_dir.exists()
  assert not [p for p in os.listdir(tmp) if p.startswith((".fit_coco_", ".staging-"))]


@pytest.mark.parametrize("prior, workdir", [("flow", "nope"), ("gmm8", "nope"),
                                            ("gaussian", None), ("flow", "empty")])
def test_missing_prior_workdir_raises_and_writes_nothing(tmp_path, coco_files, prior, workdir):
  json_path, image = coco_files
  config = fit_coco_config.get_config("runlocal")
  config.fit.prior = prior
  (tmp_path / "empty").mkdir()
  out_dir = tmp_path / "out"
  with pytest.raises(fitting.FitInputError, match="prior_workdir"):
    photo.run(config, str(image), str(json_path), workdir and str(tmp_path / workdir),
              str(out_dir))
  assert not out_dir.exists()


def test_unknown_prior_lists_the_valid_names(coco_files):
  json_path, image = coco_files
  config = fit_coco_config.get_config("runlocal")
  config.fit.prior = "vposer"  # Not a registry name ("vae" is one now).
  with pytest.raises(fitting.FitInputError, match="fit.prior.*gmm8"):
    photo.run(config, str(image), str(json_path), None, "/tmp/unused")


def test_bad_config_raises(coco_files):
  json_path, image = coco_files
  config = fit_coco_config.get_config("runlocal")
  config.fit.stages[0]["steps"] = 0
  with pytest.raises(fitting.FitInputError, match="steps"):
    photo.run(config, str(image), str(json_path), None, "/nonexistent/out")
  with pytest.raises(ValueError, match="modes"):
    fit_coco_config.get_config("huge")


def _move_keypoints(data, fn):
  kp = np.asarray(data["annotations"][0]["keypoints"], float).reshape(17, 3)
  kp = fn(kp)
  data["annotations"][0]["keypoints"] = kp.ravel().tolist()
  return data


@pytest.mark.parametrize("move, message", [
    (lambda kp: kp + [5000.0, 0.0, 0.0], "outside the 640x425 image"),
    (lambda kp: np.concatenate([np.full((17, 2), 100.0), kp[:, 2:]], 1), "within"),
    (lambda kp: np.concatenate([kp[:, :2], np.eye(17)[0][:, None] * 2], 1), "1 labelled"),
    (lambda kp: np.concatenate([kp[:, :2] * 100, kp[:, 2:]], 1), "larger side"),
])
def test_meaningless_evidence_is_refused_before_fitting(sample, monkeypatch, move, message):
  """Issue 10 (7): evidence from which no body follows is an error naming the file."""
  data, image, tmp = sample
  path = _write(tmp, _move_keypoints(data, move))
  monkeypatch.setattr(photo, "fit_person", _no_fitting)
  config = fit_coco_config.get_config("runlocal")
  config.fit.prior = "none"
  with pytest.raises(fitting.FitInputError, match=message) as info:
    photo.run(config, str(image), str(path), None, str(tmp / "out"))
  assert str(path) in str(info.value)
  assert not (tmp / "out").exists()


def _no_fitting(*args, **kwargs):
  raise AssertionError("fitting started before the inputs/outputs were checked")


@pytest.mark.parametrize("make_out", [lambda tmp: tmp / "a_file" / "out", lambda tmp: "",
                                      lambda tmp: tmp / "a_file", lambda tmp: tmp])
def test_unwritable_out_dir_fails_before_fitting(tmp_path, coco_files, monkeypatch, make_out):
  """Issue 10 (3): `--out_dir` is checked before minutes of fitting, not after; a folder holding
  other files (here: tmp_path itself) is refused, as the swap would replace it whole."""
  json_path, image = coco_files
  (tmp_path / "a_file").write_text("x")
  monkeypatch.setattr(photo, "fit_person", _no_fitting)
  config = fit_coco_config.get_config("runlocal")
  config.fit.prior = "none"
  with pytest.raises(io_utils.OutputPathError, match="--out_dir"):
    photo.run(config, str(image), str(json_path), None, str(make_out(tmp_path)))


@pytest.fixture(scope="module")
def fake_fit(coco_files):
  """A `FittedPerson` of the rest body 3 m in front of the camera (no optimisation)."""
  from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
  json_path, image = coco_files
  model = assets.load_cc0_model()
  person = coco.read_coco_person(str(json_path), str(image))
  num_joints = model.num_joints
  rotmats = np.broadcast_to(np.eye(3), (1, num_joints, 3, 3)).copy()
  rotmats[0, 0] = np.diag([1.0, -1.0, -1.0])
  result = fitting.FitResult(
      variables={}, pose_dofs=np.zeros((1, 50)), rotmats=rotmats,
      betas=np.zeros((1, model.num_betas), np.float32),
      transl=np.array([[0.0, 0.0, 3.0]], np.float32), focal=np.full((1, 2), 700.0),
      loss=np.zeros(1), terms={}, restart=np.zeros(1, int), restart_losses=np.zeros((1, 1)),
      history=[], warnings=[["a warning"]])
  out = fitting.body_outputs(model, result)
  fitted = photo.FittedPerson(result, out.vertices[0], out.joints[0],
                              np.zeros((17, 2), np.float32), result.focal[0],
                              np.array([320.0, 212.5]))
  config = fit_coco_config.get_config("runlocal")
  config.side_view_size = 64
  return model, fitted, person, config


_OUTPUTS = ("mesh.obj", "overlay.png", "params.json", "pose.bvh", "side.png")


def test_outputs_replace_the_folder_in_one_rename(tmp_path, fake_fit, monkeypatch):
  """Issue 10 (6): a kill between moves must not leave new files beside old ones."""
  model, fitted, person, config = fake_fit
  out_dir = tmp_path / "out"
  out_dir.mkdir()
  for name in _OUTPUTS:
    (out_dir / name).write_bytes(b"OLD")
  # A stale staging folder of a killed earlier run (PID 999999999 is not alive).
  stale = tmp_path / io_utils._staging_name(999999999, "dead", "new", "out")  # pylint: disable=protected-access
  stale.mkdir()
  real_replace = os.replace
  calls = []

  def replace_then_die(src, dst):
    inside = pathlib.Path(dst).resolve().parent == out_dir.resolve()
    if inside or pathlib.Path(dst).resolve() == out_dir.resolve():
      calls.append(dst)
      if len(calls) == 2:  # Killed after the first move into out_dir.
        raise KeyboardInterrupt("killed")
    return real_replace(src, dst)

  monkeypatch.setattr(os, "replace", replace_then_die)
  written = photo.write_outputs(str(out_dir), model, fitted, person, config)
  monkeypatch.setattr(os, "replace", real_replace)
  generations = {(out_dir / name).read_bytes() == b"OLD" for name in _OUTPUTS}
  assert generations == {False}, "old and new outputs mixed"
  assert sorted(os.listdir(out_dir)) == sorted(_OUTPUTS)
  assert sorted(pathlib.Path(p).name for p in written) == sorted(_OUTPUTS)
  assert not stale.exists()
  assert not [p for p in os.listdir(tmp_path) if p.startswith(io_utils.STAGING_PREFIX)]
  params = json.loads((out_dir / "params.json").read_text())
  assert params["warnings"] == ["a warning"]


def test_failed_write_leaves_the_old_folder(tmp_path, fake_fit, monkeypatch):
  model, fitted, person, config = fake_fit
  out_dir = tmp_path / "out"
  out_dir.mkdir()
  (out_dir / "params.json").write_bytes(b"OLD")

  def broken(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(photo.bvh, "write_bvh", broken)
  with pytest.raises(OSError, match="disk full"):
    photo.write_outputs(str(out_dir), model, fitted, person, config)
  assert os.listdir(out_dir) == ["params.json"]
  assert (out_dir / "params.json").read_bytes() == b"OLD"
  assert not [p for p in os.listdir(tmp_path) if p.startswith(io_utils.STAGING_PREFIX)]


def _rle_string(counts):
  """pycocotools' rleToString (maskApi.c), written independently of the decoder under test."""
  out = []
  for i, x in enumerate(counts):
    if i > 2:
      x -= counts[i - 2]
    more = True
    while more:
      c = x & 0x1F
      x >>= 5
      more = (x != -1) if (c & 0x10) else (x != 0)
      out.append(chr((c | 0x20 if more else c) + 48))
  return "".join(out)


def test_coco_rle_and_polygon_masks_agree():
  mask = np.zeros((7, 5), bool)
  mask[2:5, 1:4] = True
  flat = mask.T.ravel()  # COCO RLE is column-major.
  changes = np.flatnonzero(np.diff(np.concatenate([[0], flat.astype(int)])) != 0)
  counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
  np.testing.assert_array_equal(coco.segmentation_mask({"size": [7, 5], "counts": counts}, 7, 5),
                                mask)
  assert counts == [9, 3, 4, 3, 4, 3, 9]
  compressed = _rle_string(counts + [70, 1, 2000])  # Big and shrinking runs: negative deltas.
  assert coco._rle_counts(compressed) == counts + [70, 1, 2000]  # pylint: disable=protected-access
  np.testing.assert_array_equal(
      coco.segmentation_mask({"size": [7, 5], "counts": _rle_string(counts)}, 7, 5), mask)
  poly = coco.segmentation_mask([[1, 2, 4, 2, 4, 5, 1, 5]], 7, 5)
  assert poly[3, 2] and not poly[0, 0]
  with pytest.raises(fitting.FitInputError, match="segmentation"):
    coco.segmentation_mask([[1, 2]], 7, 5)
