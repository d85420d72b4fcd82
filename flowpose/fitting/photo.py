"""Fitting the body to one photograph's COCO keypoints, and writing the results.

    person = coco.read_coco_person(annotations, image)      # validates
    prior = load_pose_prior(config.fit.prior, prior_workdir)
    fitted = fit_person(config, model, body, prior, person)
    write_outputs(out_dir, model, fitted, person, config)   # all or nothing

Outputs (`write_outputs`): `overlay.png` (mesh, parts coloured, alpha-blended
on the photo; GT keypoints as a skeleton, projected model keypoints as red
dots), `side.png` (the mesh seen from the body's left, 90 degrees from the
camera), `mesh.obj`, `pose.bvh` (one frame on the CC0 skeleton, offsets from
the fitted rest joints) and `params.json` (with `warnings`: clamps that bound,
see `flowpose.fitting.checks`). Every file is written into a staging folder
beside `out_dir` that replaces it with one rename (`io_utils.atomic_dir`), so
a reader sees the old folder or the new one, never a mix, and an error leaves
`out_dir` untouched; `out_dir` is checked writable before fitting starts.

Frames. The fit lives in the OpenCV camera frame (y down, z forward). The
OBJ, BVH and side view use a Y-up world: `x_world = diag(1, -1, -1) x_cam`
(camera at the origin looking along -Z, as an OpenGL camera).
"""

import json
import os
import pathlib
from typing import Any, NamedTuple, Optional

from absl import logging
import ml_collections
import numpy as np

from flowpose import geometry
from flowpose import io_utils
from flowpose.body import model as body_lib
from flowpose.evidence import coco
from flowpose.evidence import raster
from flowpose.fitting import checks
from flowpose.fitting import fit as fitting
from flowpose.fitting import reduced_body
from flowpose.fitting.config import FitInputError  # pylint: disable=g-importing-member
from flowpose.geometry import camera
from flowpose.prior import registry
from flowpose.viz import images as viz
from flowpose.data import bvh
from flowpose.data import cmu_skeleton
from flowpose.data import motion as motion_lib
from flowpose.data import retarget

CAMERA_TO_WORLD = np.diag([1.0, -1.0, -1.0])
OUTPUT_FILES = ("overlay.png", "side.png", "mesh.obj", "pose.bvh", "params.json")


def body_rotmats_fn(dofs, root):
  """Fitter decoder: the chart DOFs' body rotations, root set to `root`."""
  return retarget.pose_dofs_to_body_rotmats(dofs).at[0].set(root)


def load_pose_prior(kind: str, workdir: Optional[str]) -> registry.PosePrior:
  """The prior `kind` of a trained prior workdir (`flowpose.prior.registry.load`).

  Raises:
    FitInputError: naming `config fit.prior` for an unknown kind, `--prior_workdir` for a missing
      or unreadable workdir.
  """
  if kind not in registry.names():
    raise FitInputError(f"config fit.prior: expected one of {registry.names()}, got {kind!r}")
  if kind != "none" and not workdir:
    raise FitInputError(f"--prior_workdir: prior {kind!r} needs a trained prior workdir, "
                        f"got {workdir!r}")
  try:
    return registry.load(kind, workdir)
  except registry.PriorRegistryError as e:
    raise FitInputError(f"--prior_workdir: {e}") from e


class FittedPerson(NamedTuple):
  """A fit of one person (camera frame, numpy)."""
  result: fitting.FitResult
  vertices: np.ndarray  # [V, 3]
  joints: np.ndarray  # [J, 3]
  keypoints_2d: np.ndarray  # [17, 2] projected model keypoints
  focal: np.ndarray  # [2]
  principal_point: np.ndarray  # [2]


def fit_person(config: ml_collections.ConfigDict, model: body_lib.BodyModel,
               body: reduced_body.FitBody, prior: registry.PosePrior,
               person: coco.CocoPerson) -> FittedPerson:
  """Fits one person with unknown focal length (see experiments/fit_coco.py)."""
  height, width = person.image.shape[:2]
  focal = np.full((1, 2), config.focal_init_factor * max(height, width), np.float32)
  centre = np.array([[width / 2, height / 2]], np.float32)
  evidence = fitting.Evidence(person.keypoints[None], person.confidence[None], focal, centre)
  result = fitting.fit(config.fit, model, body, prior, evidence, image_size=(height, width))
  if not np.all(np.isfinite(result.loss)):
    raise FloatingPointError("fit_person: the fit diverged (non-finite loss)")
  out = fitting.body_outputs(model, result)
  kp = np.asarray(camera.perspective_project(out.keypoints[0], result.focal[0], centre[0]))
  return FittedPerson(result, out.vertices[0], out.joints[0], kp, result.focal[0], centre[0])


# ---------------------------------------------------------------------------
# Outputs.
# ---------------------------------------------------------------------------


def overlay_image(model, fitted: FittedPerson, person: coco.CocoPerson, alpha: float):
  """[H, W, 3] uint8: mesh parts over the photo, GT skeleton, model keypoints."""
  height, width = person.image.shape[:2]
  cam = raster.PinholeCamera(np.eye(3), np.zeros(3), fitted.focal, fitted.principal_point)
  palette = viz.part_palette(len(model.part_names))
  rendering = raster.render(fitted.vertices, np.asarray(model.faces), cam, (height, width),
                            vertex_labels=np.asarray(model.part_labels), label_colors=palette)
  image = viz.overlay(person.image, rendering.rgb, alpha, mask=np.isfinite(rendering.depth))
  image = viz.draw_keypoints(image, np.nan_to_num(person.keypoints, nan=-1e6),
                             visible=person.confidence > 0)
  return viz.draw_points(image, fitted.keypoints_2d, colors=(255, 0, 0), radius=3.0)


def side_image(model, fitted: FittedPerson, size: int):
  """[size, size, 3] uint8: the fitted mesh seen from the camera's right side."""
  world = fitted.vertices @ CAMERA_TO_WORLD.T
  view = np.array([1.0, 0.0, 0.0])  # From +X (the camera's right), looking at the body.
  cam = raster.fit_camera(world, view, (size, size))
  palette = viz.part_palette(len(model.part_names))
  return raster.render(world, np.asarray(model.faces), cam, (size, size),
                       vertex_labels=np.asarray(model.part_labels),
                       label_colors=palette).rgb


def obj_text(vertices: np.ndarray, faces: np.ndarray) -> str:
  lines = ["# flowpose fitted CC0 body (metres, Y up)"]
  lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
  lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in np.asarray(faces)]
  return "\n".join(lines) + "\n"


def camera_fit_motion(model, betas, rotmats, root_joints, fps: float = 30.0) -> motion_lib.Motion:
  """A Motion on the CC0 skeleton (Y-up world, offsets = the fitted rest joints) from
  camera-frame fits: one photo (T = 1) or a sequence (`fitting.video_job`).

  Args:
    betas: [S]. rotmats: [T, J, 3, 3] local rotations, root in the camera frame.
    root_joints: [T, 3] camera-frame root positions. fps: frame rate.
  """
  rest = np.asarray(body_lib.regress_joints(model, np.asarray(betas, np.float32)), np.float64)
  parents = np.asarray(model.parents)
  offsets = rest - np.where(parents[:, None] >= 0, rest[np.maximum(parents, 0)], 0.0)
  offsets[0] = rest[0]
  num = model.num_joints
  skeleton = motion_lib.Skeleton(
      joint_names=model.joint_names, parents=parents, offsets=offsets,
      dof_names=tuple(("tx", "ty", "tz", "rz", "ry", "rx") if j == 0 else ("rz", "ry", "rx")
                      for j in range(num)),
      axis_frames=np.broadcast_to(np.eye(3), (num, 3, 3)),
      rotation_orders=("ZYX",) * num, name="flowpose_cc0")
  local = np.asarray(rotmats, np.float64).copy()
  local[:, 0] = CAMERA_TO_WORLD @ local[:, 0]
  root = np.asarray(root_joints, np.float64) @ CAMERA_TO_WORLD.T
  return motion_lib.Motion(skeleton=skeleton, fps=float(fps), root_translation=root,
                           local_rotations=local)


def fitted_motion(model, fitted: FittedPerson) -> motion_lib.Motion:
  """One-frame Motion of a fitted photo person (`camera_fit_motion` with T = 1)."""
  return camera_fit_motion(model, fitted.result.betas[0], fitted.result.rotmats[:1],
                           fitted.joints[None, 0])


def params_dict(fitted: FittedPerson, person: coco.CocoPerson, config) -> dict:
  res = fitted.result
  orient = res.rotmats[0, 0]
  return {
      "image": os.path.abspath(person.image_path),
      "annotation_id": person.annotation_id,
      "prior": config.fit.prior,
      "frame": "OpenCV camera frame (x right, y down, z forward), metres",
      "global_orient_rotmat": orient.tolist(),
      "global_orient_axis_angle": np.asarray(geometry.matrix_to_axis_angle(orient)).tolist(),
      "transl": res.transl[0].tolist(),
      "betas": res.betas[0].tolist(),
      "pose_dofs": dict(zip(cmu_skeleton.POSE_DOF_NAMES, res.pose_dofs[0].tolist())),
      "focal": fitted.focal.tolist(),
      "principal_point": fitted.principal_point.tolist(),
      "loss": float(res.loss[0]),
      "loss_terms": {k: float(v[0]) for k, v in res.terms.items()},
      # The kept restart: its yaw, or None when it started from `fit(initial=)`.
      "restart_yaw_deg": _restart_yaw(res, config),
      "restart_losses": res.restart_losses[0].tolist(),
      "keypoint_rmse_px": float(np.sqrt(np.nanmean(np.where(
          person.confidence > 0, np.sum((fitted.keypoints_2d - person.keypoints) ** 2, -1),
          np.nan)))),
      "warnings": list(res.warnings[0]) if res.warnings else [],
  }


def _restart_yaw(result, config):
  labels = result.restart_labels or tuple(config.fit.restart_yaws_deg)
  label = labels[int(result.restart[0])]
  return None if isinstance(label, str) else float(label)


def write_outputs(out_dir: str, model, fitted: FittedPerson, person: coco.CocoPerson,
                  config) -> list:
  """Renders and writes all outputs into `out_dir` (one-rename swap, see module doc).

  Returns:
    The written paths (inside `out_dir`).
  """
  with io_utils.atomic_dir(out_dir) as staging:
    viz.save_png(staging / "overlay.png",
                 overlay_image(model, fitted, person, config.overlay_alpha))
    viz.save_png(staging / "side.png", side_image(model, fitted, config.side_view_size))
    io_utils.atomic_write(staging / "mesh.obj",
                          obj_text(fitted.vertices @ CAMERA_TO_WORLD.T, model.faces).encode())
    bvh.write_bvh(fitted_motion(model, fitted), str(staging / "pose.bvh"))
    io_utils.atomic_write(staging / "params.json",
                          json.dumps(params_dict(fitted, person, config), indent=2).encode())
    names = sorted(p.name for p in staging.iterdir())
  return [os.path.join(os.path.abspath(out_dir), name) for name in names]


def require_out_dir(out_dir: str, own=lambda name: name in OUTPUT_FILES,
                    tool: str = "fit_coco") -> pathlib.Path:
  """Checks `--out_dir` before any work: not empty, not a file, holding only our outputs (it is
  replaced as a whole), its parent writable.

  `own(name)` says whether a top-level name is one `tool` writes. The folder itself is not created (a failed fit must leave nothing behind); the staging folder
  of `atomic_dir` lives in the parent, which is created and probed.

  Raises:
    io_utils.OutputPathError: naming `--out_dir`.
  """
  if out_dir is None or not str(out_dir).strip():
    io_utils.require_output_path(out_dir, "--out_dir")  # Raises: empty.
  path = pathlib.Path(out_dir).expanduser().absolute()
  if path.exists() and not path.is_dir():
    raise io_utils.OutputPathError(f"--out_dir: {path} exists and is not a folder")
  if path.is_dir():
    # The swap replaces the whole folder: refuse one that holds anything but our outputs.
    foreign = sorted(name for name in os.listdir(path) if not own(name))
    if foreign:
      raise io_utils.OutputPathError(
          f"--out_dir: {path} holds files {tool} did not write ({', '.join(foreign[:5])}); "
          f"it would be replaced as a whole: choose a new folder or a previous {tool} output")
  io_utils.require_output_path(path.parent, "--out_dir")
  return path


def run(config: ml_collections.ConfigDict, image: Optional[str], annotations: str,
        prior_workdir: Optional[str], out_dir: str, model: Any = None) -> list:
  """Validates the inputs and the output folder, fits, writes; returns the written paths.

  Raises `FitInputError` for bad inputs and `io_utils.OutputPathError` for an unusable
  `out_dir`, both before any fitting and before anything is written.
  """
  fitting.validate_fit_config(config.fit)
  person = coco.read_coco_person(annotations, image, config.annotation_id)
  problems = checks.evidence_errors(person.keypoints[None], person.confidence[None],
                                    person.image.shape[:2])[0]
  if problems:
    raise FitInputError(f"{annotations}: annotation {person.annotation_id}: "
                        + "; ".join(problems))
  prior = load_pose_prior(config.fit.prior, prior_workdir)
  require_out_dir(out_dir)
  if model is None:
    from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
    model = assets.load_cc0_model()
  body = reduced_body.make_fit_body(model, body_rotmats_fn, config.fit.part_vertices_per_part)
  fitted = fit_person(config, model, body, prior, person)
  for message in fitted.result.warnings[0]:
    logging.warning("%s: %s", annotations, message)
  return write_outputs(out_dir, model, fitted, person, config)
