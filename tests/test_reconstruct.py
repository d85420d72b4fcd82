"""Tests for launch.reconstruct / flowpose.fitting.reconstruct: the silhouette term, fit(initial=),
photo -> 3D people from the detector and from every annotated person, bad input."""

import copy
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from flowpose import geometry
from flowpose import io_utils
from flowpose import losses
from flowpose.body import model as body_lib
from flowpose.body.build import assets
from flowpose.evidence import image_io
from flowpose.evidence import raster
from flowpose.fitting import fit as fitting
from flowpose.fitting import initial as initial_lib
from flowpose.fitting import reconstruct
from flowpose.fitting import reduced_body
from flowpose.geometry import camera
from flowpose.prior import registry
from experiments import reconstruct as reconstruct_config

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fast_compile")  # conftest: XLA optimisations off


# ---------------------------------------------------------------------------
# The silhouette term.
# ---------------------------------------------------------------------------


def _square_silhouette():
  """Vertices on every pixel centre of a 20 x 16 px rectangle, and that rectangle as a mask."""
  mask = np.zeros((48, 48), bool)
  mask[10:30, 12:28] = True
  pixels, valid = losses.sample_mask_pixels(mask, 400, 0)
  assert valid.sum() == 320  # Every mask pixel, then padding.
  return jnp.asarray(pixels[valid]), jnp.asarray(pixels), jnp.asarray(valid)


def test_silhouette_is_zero_at_the_truth_and_pulls_a_shift_back():
  vertices, pixels, valid = _square_silhouette()
  loss_at = lambda v: losses.silhouette_loss(v, pixels, valid, sigma=0.3, scale=20.0)[0]
  assert float(loss_at(vertices)) == 0.0  # Vertices on exactly the mask pixels.
  np.testing.assert_allclose(jax.grad(loss_at)(vertices), 0.0, atol=1e-7)
  # Vertices anywhere inside the rectangle (off the pixel grid), shifted by (4, -3) px.
  rng = np.random.default_rng(0)
  inside = jnp.asarray(np.stack([rng.uniform(12, 28, 300), rng.uniform(10, 30, 300)], 1),
                       jnp.float32)
  grad_fn = jax.jit(jax.grad(lambda shift: loss_at(inside + shift)))
  shift = jnp.array([4.0, -3.0])
  assert float(loss_at(inside + shift)) > 5 * float(loss_at(inside))
  grad = grad_fn(shift)
  assert grad[0] > 0 and grad[1] < 0  # Descent moves the body back onto the mask.
  for _ in range(80):  # Normalised descent, 0.1 px steps: ends within a few steps of the truth.
    grad = grad_fn(shift)
    shift = shift - 0.1 * grad / jnp.linalg.norm(grad)
  assert float(jnp.linalg.norm(shift)) < 0.5, shift
  # No mask pixels: no term (a person without a mask).
  assert float(losses.silhouette_loss(vertices + 4.0, pixels, jnp.zeros_like(valid))[0]) == 0.0


def test_silhouette_counts_occluded_vertices():
  """Unlike a part map, a silhouette holds every vertex: one outside the mask costs."""
  vertices, pixels, valid = _square_silhouette()
  outside = vertices.at[0].set(jnp.array([45.0, 45.0]))
  assert float(losses.silhouette_loss(outside, pixels, valid, scale=20.0)[0]) > 0


# ---------------------------------------------------------------------------
# fit(initial=).
# ---------------------------------------------------------------------------

_DOFS = (("LeftArm", "Z"), ("RightArm", "Z"), ("LeftForeArm", "Z"), ("RightForeArm", "Z"),
         ("LeftUpLeg", "Z"), ("RightUpLeg", "Z"), ("Spine", "Z"), ("Neck", "Z"))


@pytest.fixture(scope="module")
def model():
  return assets.load_cc0_model()


@pytest.fixture(scope="module")
def scene(model):
  """Two known bodies (8 frontal DOFs), their exact keypoints and the true variables."""
  index = np.array([model.joint_names.index(n) for n, _ in _DOFS])

  def decoder(dofs, root):
    rots = jnp.stack([geometry.rotation_about_axis(dofs[i], axis)
                      for i, (_, axis) in enumerate(_DOFS)])
    out = jnp.broadcast_to(jnp.eye(3), (model.num_joints, 3, 3)).at[index].set(rots)
    return out.at[0].set(root)

  body = reduced_body.make_fit_body(model, decoder, vertices_per_part=4)
  prior = registry.make("none", dim=len(_DOFS))
  dofs = np.random.default_rng(1).uniform(-0.5, 0.5, (2, len(_DOFS))).astype(np.float32)
  roots = np.stack([reduced_body.facing_camera_rotation(y) for y in (20.0, -30.0)])
  transl = np.array([[0.2, -0.1, 3.5], [-0.3, 0.1, 4.5]], np.float32)
  rotmats = jax.vmap(decoder)(jnp.asarray(dofs), jnp.asarray(roots, jnp.float32))
  gt = jax.vmap(body_lib.forward, (None, 0, 0, 0))(model, rotmats,
                                                    jnp.zeros((2, model.num_betas)), transl)
  focal = np.full((2, 2), 1000.0, np.float32)
  centre = np.full((2, 2), 500.0, np.float32)
  keypoints = np.asarray(camera.perspective_project(gt.keypoints, focal, centre))
  truth = {"pose": dofs, "betas": np.zeros((2, model.num_betas), np.float32),
           "orient": np.asarray(geometry.matrix_to_rot6d(jnp.asarray(roots, jnp.float32))),
           "transl": transl, "log_focal": np.log(focal[:, 0])}
  evidence = fitting.Evidence(keypoints, np.ones(keypoints.shape[:2], np.float32), focal, centre)
  config = fitting.default_fit_config()
  config.loss_weights["depth"] = 0.0
  config.restart_yaws_deg = (0.0, 180.0)
  # A few small steps: only a start at the truth can end there.
  config.stages = [dict(name="body", steps=5, lr=1e-3, free=("pose", "orient", "transl"),
                        keypoints="all", loss_weights={}, optimizer="adam")]
  return dict(body=body, prior=prior, truth=truth, evidence=evidence, config=config,
              keypoints=keypoints, decoder=decoder, roots=roots)


def _keypoint_error(model, scene, result):
  out = fitting.body_outputs(model, result)
  kp = np.asarray(camera.perspective_project(out.keypoints, result.focal,
                                             scene["evidence"].principal_point))
  return float(np.max(np.linalg.norm(kp - scene["keypoints"], axis=-1)))


def test_initial_is_an_extra_restart_that_wins_from_the_truth(model, scene):
  args = (scene["config"], model, scene["body"], scene["prior"], scene["evidence"])
  result = fitting.fit(*args, initial=scene["truth"])
  assert result.restart_labels == ("initial", 0.0, 180.0)
  np.testing.assert_array_equal(result.restart, 0)
  assert result.restart_losses.shape == (2, 3)
  # 5 small steps from the default starts end far off: only the honoured start ends at the truth.
  assert np.all(result.restart_losses[:, 1:] > 100 * result.restart_losses[:, :1])
  assert _keypoint_error(model, scene, result) < 0.5
  np.testing.assert_allclose(result.pose_dofs, scene["truth"]["pose"], atol=1e-2)


def test_partial_initial_and_bad_initial(model, scene):
  args = (scene["config"], model, scene["body"], scene["prior"], scene["evidence"])
  result = fitting.fit(*args, initial={"pose": scene["truth"]["pose"]})
  assert result.restart_losses.shape == (2, 3)
  with pytest.raises(fitting.FitInputError, match=r"initial\['pose'\].*shape"):
    fitting.fit(*args, initial={"pose": scene["truth"]["pose"][:1]})
  with pytest.raises(fitting.FitInputError, match="unknown variables"):
    fitting.fit(*args, initial={"rotation": scene["truth"]["pose"]})


@pytest.mark.parametrize("term", ["pose_anchor", "keypoints_anchor"])
def test_anchor_holds_the_pose_at_its_start(model, scene, term):
  """The anchors (weight 0 / heavy): an offset start goes back to the truth / stays put."""
  start = dict(scene["truth"], pose=scene["truth"]["pose"] + 0.15)
  config = scene["config"].copy_and_resolve_references()
  config.restart_yaws_deg = (0.0,)
  config.stages[0].update(steps=60, lr=0.02)
  for weight in (0.0, 1e6):
    config.loss_weights = dict(config.loss_weights, **{term: weight})
    result = fitting.fit(config, model, scene["body"], scene["prior"], scene["evidence"],
                         initial=start)
    moved = np.abs(result.pose_dofs - start["pose"]).max()
    if weight:  # The start given won (the yaw-0 default is held at the mean pose) and stayed.
      assert np.all(result.restart == 0) and moved < 2e-2, moved
    else:  # Weighted 0: pose_anchor is still reported; keypoints_anchor has no centres.
      np.testing.assert_allclose(result.pose_dofs, scene["truth"]["pose"], atol=0.1)
      assert moved > 0.1 and (float(result.terms[term].min()) > 0.1) == (term == "pose_anchor")


@pytest.mark.slow  # ~12 s CPU: two 150-step fits.
def test_silhouette_changes_and_improves_the_fit(model, scene):
  """Knees and ankles unseen: the person mask recovers the leg spread the keypoints cannot; with
  the silhouette weight at 0 the legs stay where they start (a fitter that dropped the mask
  evidence fails this)."""
  dofs = np.zeros((2, len(_DOFS)), np.float32)
  dofs[:, 4], dofs[:, 5] = -0.35, 0.35  # LeftUpLeg, RightUpLeg spread.
  rotmats = jax.vmap(scene["decoder"])(jnp.asarray(dofs), jnp.asarray(scene["roots"], jnp.float32))
  transl = scene["truth"]["transl"]
  gt = jax.vmap(body_lib.forward, (None, 0, 0, 0))(model, rotmats,
                                                    jnp.zeros((2, model.num_betas)), transl)
  ev = scene["evidence"]
  keypoints = np.asarray(camera.perspective_project(gt.keypoints, ev.focal, ev.principal_point))
  confidence = np.ones(keypoints.shape[:2], np.float32)
  confidence[:, 13:] = 0.0  # Knees and ankles.
  pixels, valid = [], []
  for b in range(2):
    cam = raster.PinholeCamera(np.eye(3), np.zeros(3), ev.focal[b], ev.principal_point[b])
    depth = raster.rasterize(np.asarray(gt.vertices[b]), np.asarray(model.faces), cam,
                             (1000, 1000)).depth
    pix, ok = losses.sample_mask_pixels(np.isfinite(depth), 384, b)
    pixels.append(pix), valid.append(ok)
  evidence = fitting.Evidence(keypoints, confidence, ev.focal, ev.principal_point)
  mask = fitting.MaskEvidence(np.stack(pixels), np.stack(valid))
  errors = {}
  for weight in (0.0, 1e3):
    config = scene["config"].copy_and_resolve_references()
    config.restart_yaws_deg = (0.0,)
    config.stages = [dict(config.stages[0], steps=150, lr=0.05)]
    config.loss_weights["silhouette"] = weight
    result = fitting.fit(config, model, scene["body"], scene["prior"], evidence, mask=mask)
    errors[weight] = np.abs(result.pose_dofs[:, 4:6] - dofs[:, 4:6])
  assert np.mean(errors[1e3]) < 0.5 * np.mean(errors[0.0]), errors


def test_regressor_contract_errors_name_the_flag(monkeypatch):
  monkeypatch.setattr(initial_lib, "REGRESSOR_MODULE", "flowpose.tasks.no_such_regressor")
  with pytest.raises(fitting.FitInputError, match="--regressor_workdir.*not installed"):
    initial_lib.load_regressor("/tmp/w")
  monkeypatch.setattr(initial_lib, "REGRESSOR_MODULE", "flowpose.io_utils")  # No load_predictor.
  with pytest.raises(fitting.FitInputError, match="--regressor_workdir.*load_predictor"):
    initial_lib.load_regressor("/tmp/w")
  predict = lambda evidence, size: {"pose": np.zeros((1, 3)), "extra": 1}
  assert sorted(initial_lib.predict_initial(predict, None, (1, 1))) == ["pose"]


# ---------------------------------------------------------------------------
# Photo -> 3D people.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector():
  from flowpose.evidence import detector as detector_lib  # pylint: disable=g-import-not-at-top
  return detector_lib.Detector()


@pytest.fixture(scope="module")
def photo_files(shared_data):
  folder = shared_data / "coco"
  return folder / "000000000785.jpg", folder / "person_keypoints_785.json"


def _quick_config():
  config = reconstruct_config.get_config("runlocal")
  config.fit.prior = "none"
  config.fit.restart_yaws_deg = (0.0,)
  config.fit.part_vertices_per_part = 4
  # One stage: one compilation per batch size.
  config.fit.stages = [dict(config.fit.stages[1], steps=5)]
  config.side_view_size = 96
  return config


class _FakeDetector:
  def __init__(self, people):
    self.people = people

  def __call__(self, image):
    return self.people


def test_detector_confidences_become_keypoint_weights(photo_files):
  from flowpose.evidence import detector as detector_lib  # pylint: disable=g-import-not-at-top
  image_path, _ = photo_files
  kp = np.stack([np.linspace(200, 400, 17), np.linspace(50, 380, 17),
                 np.linspace(0.05, 1.0, 17)], 1).astype(np.float32)
  mask = np.zeros((425, 640), bool)
  mask[50:380, 250:350] = True
  fake = _FakeDetector([detector_lib.Person(kp, np.zeros((39, 5)), 0.9, np.zeros(4), mask)])
  config = _quick_config()
  photo_ev = reconstruct.detector_evidence(str(image_path), config, fake)
  evidence, mask = reconstruct.evidence_batch(config, photo_ev)
  keep = kp[:, 2] >= config.min_keypoint_confidence
  np.testing.assert_allclose(evidence.confidence[0], np.where(keep, kp[:, 2], 0.0))
  assert np.isnan(evidence.keypoints[0, ~keep]).all()
  assert mask.valid[0].all()
  px = mask.pixels[0]
  assert (px[:, 0] > 250).all() and (px[:, 0] < 350).all()


def test_reconstruct_from_the_detector_writes_every_output(tmp_path, photo_files, detector,
                                                           model):
  image_path, _ = photo_files
  out = tmp_path / "out"
  config = _quick_config()
  config.fit.restart_yaws_deg = (0.0, 180.0)  # 2 rows: the compilation of the 2-person test.
  paths = reconstruct.run(config, str(image_path), None, str(out), model=model,
                          detector=detector)
  names = sorted(str(pathlib.Path(p).relative_to(out)) for p in paths)
  assert names == ["overlay.png", "people.json"] + [
      f"person_00/{n}" for n in sorted(reconstruct.PERSON_FILES)]
  summary = json.loads((out / "people.json").read_text())
  assert summary["evidence"] == "detector" and len(summary["people"]) == 1
  params = json.loads((out / "person_00" / "params.json").read_text())
  assert params["has_mask"] and params["loss_terms"]["silhouette"] > 0
  assert min(params["keypoint_confidence"]) < 1.0  # The detector's, not 1s.
  assert Image.open(out / "overlay.png").size == (640, 425)
  assert (out / "person_00" / "mesh.obj").read_text().count("\nv ") == model.num_vertices


def _two_people_json(tmp_path, photo_files):
  """The shared annotation, a copy moved 250 px left, and an annotation with no keypoints."""
  _, json_path = photo_files
  data = json.loads(json_path.read_text())
  other = copy.deepcopy(data["annotations"][0])
  other["id"] = 2
  kp = np.asarray(other["keypoints"], float).reshape(17, 3)
  kp[:, 0] -= 250
  other["keypoints"] = kp.ravel().tolist()
  other["segmentation"] = [[v - 250 if i % 2 == 0 else v for i, v in enumerate(p)]
                           for p in other["segmentation"]]
  empty = dict(copy.deepcopy(other), id=3, keypoints=[0] * 51, num_keypoints=0)
  data["annotations"] += [other, empty]
  path = tmp_path / "two.json"
  path.write_text(json.dumps(data))
  return path


def test_reconstruct_every_annotated_person(tmp_path, photo_files, model):
  image_path, _ = photo_files
  annotations = _two_people_json(tmp_path, photo_files)
  out = tmp_path / "out"
  reconstruct.run(_quick_config(), str(image_path), None, str(out),
                  annotations=str(annotations), model=model)
  summary = json.loads((out / "people.json").read_text())
  assert [p["id"] for p in summary["people"]] == [442619, 2]
  assert [s[0] for s in summary["skipped"]] == ["3"]
  for b in range(2):
    assert sorted(os.listdir(out / f"person_{b:02d}")) == sorted(reconstruct.PERSON_FILES)
  first, second = (json.loads((out / f"person_{b:02d}" / "params.json").read_text())
                   for b in range(2))
  assert first["has_mask"] and first["evidence"] == "annotations"
  assert second["transl"][0] < first["transl"][0] - 0.5  # Moved left in the camera frame.


def _no_fit(*args, **kwargs):
  raise AssertionError("fitting started on bad input")


@pytest.mark.parametrize("case", ["no_person", "not_an_image", "out_dir_is_a_file",
                                  "out_dir_foreign", "bad_annotations"])
def test_bad_input_raises_and_writes_nothing(tmp_path, photo_files, detector, monkeypatch,
                                             case):
  image_path, _ = photo_files
  monkeypatch.setattr(reconstruct, "fit_people", _no_fit)
  out, image, annotations = tmp_path / "out", str(image_path), None
  error, match = image_io.ImageInputError, None
  if case == "no_person":
    Image.new("RGB", (320, 240), (255, 255, 255)).save(tmp_path / "blank.png")
    image, match = str(tmp_path / "blank.png"), "no person found"
  elif case == "not_an_image":
    (tmp_path / "x.jpg").write_text("not a jpeg")
    image, match = str(tmp_path / "x.jpg"), "cannot read as an image"
  elif case == "out_dir_is_a_file":
    out.write_text("x")
    error, match = io_utils.OutputPathError, "--out_dir"
  elif case == "out_dir_foreign":
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    error, match = io_utils.OutputPathError, "reconstruct did not write"
  else:
    (tmp_path / "a.json").write_text("{ nope")
    annotations, error, match = str(tmp_path / "a.json"), fitting.FitInputError, "a.json"
  before = sorted(os.listdir(tmp_path))
  with pytest.raises(error, match=match):
    reconstruct.run(_quick_config(), image, None, str(out), annotations=annotations,
                    detector=detector)
  assert sorted(os.listdir(tmp_path)) == before  # Nothing written, no staging left.


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
  (tmp_path / "x.jpg").write_text("not a jpeg")
  proc = subprocess.run(
      [sys.executable, "-m", "launch.reconstruct", f"--image={tmp_path / 'x.jpg'}",
       f"--out_dir={tmp_path / 'out'}", "--config.fit.prior=none", "--logtostderr=false"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("reconstruct: error:")]
  assert len(errors) == 1 and "x.jpg" in errors[0], proc.stderr[-2000:]
  assert sorted(os.listdir(tmp_path)) == ["x.jpg"]


def test_video_flags_hand_over_or_say_not_installed(monkeypatch):
  with pytest.raises(fitting.FitInputError, match="give exactly one"):
    reconstruct.video("v.mp4", "frames/", "P", "/tmp/o")
  # The video job's own errors come back as one FitInputError naming the file.
  with pytest.raises(fitting.FitInputError, match="nope.mp4"):
    reconstruct.video("/nonexistent/nope.mp4", None, "P", "/tmp/o")
  monkeypatch.setitem(sys.modules, "flowpose.fitting.video_job", None)  # Not installed.
  monkeypatch.delattr(sys.modules["flowpose.fitting"], "video_job", raising=False)
  with pytest.raises(fitting.FitInputError, match="video support not installed"):
    reconstruct.video("v.mp4", None, None, "/tmp/o")


def test_a_previous_output_folder_may_be_replaced(tmp_path):
  from flowpose.fitting import photo  # pylint: disable=g-import-not-at-top
  out = tmp_path / "out"
  (out / "person_00").mkdir(parents=True)
  (out / "overlay.png").write_bytes(b"old")
  (out / "people.json").write_bytes(b"old")
  photo.require_out_dir(str(out), own=reconstruct.is_own_output, tool="reconstruct")
  (out / "person_x").mkdir()
  with pytest.raises(io_utils.OutputPathError, match="person_x"):
    photo.require_out_dir(str(out), own=reconstruct.is_own_output, tool="reconstruct")
