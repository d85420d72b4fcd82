"""Tests for flowpose/coco.py and the input checks of launch/fit_coco (nothing is written)."""

import copy
import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from flowpose.evidence import coco
from flowpose.fitting import fit as fitting
from flowpose.fitting import photo as fitting_coco
from experiments import fit_coco as fit_coco_config

_COCO = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "coco"
_IMAGE = _COCO / "000000000785.jpg"
_JSON = _COCO / "person_keypoints_785.json"

pytestmark = pytest.mark.skipif(not _JSON.exists(), reason="shared COCO sample missing")


@pytest.fixture
def sample(tmp_path):
  """A writable copy of the sample: (json dict, image path, tmp folder)."""
  image = tmp_path / _IMAGE.name
  shutil.copy(_IMAGE, image)
  return json.loads(_JSON.read_text()), image, tmp_path


def _write(tmp_path, data, name="ann.json"):
  path = tmp_path / name
  path.write_text(json.dumps(data) if not isinstance(data, str) else data)
  return path


def test_reads_the_sample():
  person = coco.read_coco_person(str(_JSON), str(_IMAGE))
  assert person.keypoints.shape == (17, 2) and person.confidence.shape == (17,)
  assert person.image.shape == (425, 640, 3)
  np.testing.assert_array_equal(person.confidence, 1.0)
  assert person.annotation_id == 442619
  # Default image: file_name next to the JSON.
  assert coco.read_coco_person(str(_JSON)).image.shape == (425, 640, 3)


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
    fitting_coco.run(config, str(image), str(path), None, str(out_dir))
  assert str(path) in str(info.value)  # The message names the file.
  assert not out_dir.exists()
  assert not [p for p in os.listdir(tmp) if p.startswith(".fit_coco_")]


def test_missing_prior_workdir_raises_and_writes_nothing(tmp_path):
  config = fit_coco_config.get_config("runlocal")
  config.fit.prior = "flow"
  out_dir = tmp_path / "out"
  with pytest.raises(fitting.FitInputError, match="prior_workdir"):
    fitting_coco.run(config, str(_IMAGE), str(_JSON), str(tmp_path / "nope"), str(out_dir))
  assert not out_dir.exists()


def test_bad_config_raises():
  config = fit_coco_config.get_config("runlocal")
  config.fit.stages[0]["steps"] = 0
  with pytest.raises(fitting.FitInputError, match="steps"):
    fitting_coco.run(config, str(_IMAGE), str(_JSON), None, "/nonexistent/out")
  with pytest.raises(ValueError, match="modes"):
    fit_coco_config.get_config("huge")
