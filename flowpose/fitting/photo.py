"""Fitting the body to one photograph's COCO keypoints, and writing the results.

    person = coco.read_coco_person(annotations, image)      # validates
    prior = load_pose_prior(config.fit.prior, prior_workdir)
    fitted = fit_person(config, model, body, prior, person)
    write_outputs(out_dir, model, fitted, person, config)   # all or nothing

Outputs (`write_outputs`): `overlay.png` (mesh, parts coloured, alpha-blended
on the photo; GT keypoints as a skeleton, projected model keypoints as red
dots), `side.png` (the mesh seen from the body's left, 90 degrees from the
camera), `mesh.obj`, `pose.bvh` (one frame on the CC0 skeleton, offsets from
the fitted rest joints) and `params.json`. Every file is rendered into a
temporary folder next to `out_dir` first and moved in only when all
succeeded, so an error leaves `out_dir` untouched.

Frames. The fit lives in the OpenCV camera frame (y down, z forward). The
OBJ, BVH and side view use a Y-up world: `x_world = diag(1, -1, -1) x_cam`
(camera at the origin looking along -Z, as an OpenGL camera).
"""

import json
import os
import shutil
import tempfile
from typing import Any, NamedTuple, Optional

import ml_collections
import numpy as np

from flowpose.prior import io as prior_io
from flowpose.evidence import coco
from flowpose.fitting import fit as fitting
from flowpose.fitting import reduced_body as fitting_body
from flowpose import geometry
from flowpose.evidence import raster as render
from flowpose.viz import images as viz
from flowpose.body import model as body_lib
from flowpose.data import bvh
from flowpose.data import cmu_skeleton
from flowpose.data import motion as motion_lib
from flowpose.data import retarget

CAMERA_TO_WORLD = np.diag([1.0, -1.0, -1.0])


def body_rotmats_fn(dofs, root):
  """Fitter decoder: the chart DOFs' body rotations, root set to `root`."""
  return retarget.pose_dofs_to_body_rotmats(dofs).at[0].set(root)


def load_pose_prior(kind: str, workdir: Optional[str]) -> fitting_body.PosePrior:
  """The `PosePrior` of `kind` from a trained prior workdir.

  flow: `prior_params.msgpack` + `config.json`; gaussian/gmm8: the prior
  evaluation's `baselines.npz`; none: needs no workdir (starts at the
  Gaussian mean when the baselines exist, else at the zero DOFs).
  """
  if kind not in fitting_body.PRIOR_KINDS:
    raise fitting.FitInputError(f"config fit.prior: expected one of "
                                f"{fitting_body.PRIOR_KINDS}, got {kind!r}")
  if kind == "none" and not workdir:
    return fitting_body.make_pose_prior("none")
  if not workdir or not os.path.isdir(workdir):
    raise fitting.FitInputError(f"--prior_workdir: prior {kind!r} needs a trained "
                                f"prior workdir, got {workdir!r}")
  from flowpose.prior import evaluate as prior_eval  # pylint: disable=g-import-not-at-top
  if kind == "flow":
    try:
      flow, params, _ = prior_io.load_exported_prior(workdir)
    except (OSError, ValueError, KeyError) as e:
      raise fitting.FitInputError(f"{workdir}: cannot load the flow prior ({e})") from e
    return fitting_body.make_pose_prior("flow", flow=flow, flow_params=params)
  try:
    fitted = prior_eval.load_baselines(workdir)
  except prior_eval.PriorEvalError as e:
    if kind == "none":
      return fitting_body.make_pose_prior("none")
    raise fitting.FitInputError(str(e)) from e
  gauss = fitted.models["gaussian_full"]
  if kind == "none":
    return fitting_body.make_pose_prior("none", init_pose=np.asarray(gauss.mean))
  if kind == "gaussian":
    return fitting_body.make_pose_prior("gaussian", gaussian=gauss)
  return fitting_body.make_pose_prior("gmm8", gmm=fitted.models["gmm8"])


class FittedPerson(NamedTuple):
  """A fit of one person (camera frame, numpy)."""
  result: fitting.FitResult
  vertices: np.ndarray  # [V, 3]
  joints: np.ndarray  # [J, 3]
  keypoints_2d: np.ndarray  # [17, 2] projected model keypoints
  focal: np.ndarray  # [2]
  principal_point: np.ndarray  # [2]


def fit_person(config: ml_collections.ConfigDict, model: body_lib.BodyModel,
               body: fitting_body.FitBody, prior: fitting_body.PosePrior,
               person: coco.CocoPerson) -> FittedPerson:
  """Fits one person with unknown focal length (see experiments/fit_coco.py)."""
  height, width = person.image.shape[:2]
  focal = np.full((1, 2), config.focal_init_factor * max(height, width), np.float32)
  centre = np.array([[width / 2, height / 2]], np.float32)
  evidence = fitting.Evidence(person.keypoints[None], person.confidence[None], focal, centre)
  result = fitting.fit(config.fit, model, body, prior, evidence)
  if not np.all(np.isfinite(result.loss)):
    raise FloatingPointError("fit_person: the fit diverged (non-finite loss)")
  out = fitting.body_outputs(model, result)
  kp = np.asarray(fitting_body.project(out.keypoints[0], result.focal[0], centre[0]))
  return FittedPerson(result, out.vertices[0], out.joints[0], kp, result.focal[0], centre[0])


# ---------------------------------------------------------------------------
# Outputs.
# ---------------------------------------------------------------------------


def overlay_image(model, fitted: FittedPerson, person: coco.CocoPerson, alpha: float):
  """[H, W, 3] uint8: mesh parts over the photo, GT skeleton, model keypoints."""
  height, width = person.image.shape[:2]
  cam = render.PinholeCamera(np.eye(3), np.zeros(3), fitted.focal, fitted.principal_point)
  palette = viz.part_palette(len(model.part_names))
  rendering = render.render(fitted.vertices, np.asarray(model.faces), cam, (height, width),
                            vertex_labels=np.asarray(model.part_labels), label_colors=palette)
  image = viz.overlay(person.image, rendering.rgb, alpha, mask=np.isfinite(rendering.depth))
  image = viz.draw_keypoints(image, np.nan_to_num(person.keypoints, nan=-1e6),
                             visible=person.confidence > 0)
  return viz.draw_points(image, fitted.keypoints_2d, colors=(255, 0, 0), radius=3.0)


def side_image(model, fitted: FittedPerson, size: int):
  """[size, size, 3] uint8: the fitted mesh seen from the camera's right side."""
  world = fitted.vertices @ CAMERA_TO_WORLD.T
  view = np.array([1.0, 0.0, 0.0])  # From +X (the camera's right), looking at the body.
  cam = render.fit_camera(world, view, (size, size))
  palette = viz.part_palette(len(model.part_names))
  return render.render(world, np.asarray(model.faces), cam, (size, size),
                       vertex_labels=np.asarray(model.part_labels),
                       label_colors=palette).rgb


def obj_text(vertices: np.ndarray, faces: np.ndarray) -> str:
  lines = ["# flowpose fitted CC0 body (metres, Y up)"]
  lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
  lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in np.asarray(faces)]
  return "\n".join(lines) + "\n"


def fitted_motion(model, fitted: FittedPerson) -> motion_lib.Motion:
  """One-frame Motion on the CC0 skeleton (Y-up world, offsets = fitted rest joints)."""
  betas = fitted.result.betas[0]
  rest = np.asarray(body_lib.regress_joints(model, betas), np.float64)
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
  local = np.asarray(fitted.result.rotmats[0], np.float64).copy()
  local[0] = CAMERA_TO_WORLD @ local[0]
  root = CAMERA_TO_WORLD @ fitted.joints[0]
  return motion_lib.Motion(skeleton=skeleton, fps=30.0, root_translation=root[None],
                           local_rotations=local[None])


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
      "restart_yaw_deg": float(config.fit.restart_yaws_deg[int(res.restart[0])]),
      "restart_losses": res.restart_losses[0].tolist(),
      "keypoint_rmse_px": float(np.sqrt(np.nanmean(np.where(
          person.confidence > 0, np.sum((fitted.keypoints_2d - person.keypoints) ** 2, -1),
          np.nan)))),
  }


def write_outputs(out_dir: str, model, fitted: FittedPerson, person: coco.CocoPerson,
                  config) -> list:
  """Renders and writes all outputs (all-or-nothing, see module doc); returns paths."""
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".fit_coco_", dir=parent)
  try:
    viz.save_png(os.path.join(staging, "overlay.png"),
                 overlay_image(model, fitted, person, config.overlay_alpha))
    viz.save_png(os.path.join(staging, "side.png"),
                 side_image(model, fitted, config.side_view_size))
    with open(os.path.join(staging, "mesh.obj"), "w") as f:
      f.write(obj_text(fitted.vertices @ CAMERA_TO_WORLD.T, model.faces))
    bvh.write_bvh(fitted_motion(model, fitted), os.path.join(staging, "pose.bvh"))
    with open(os.path.join(staging, "params.json"), "w") as f:
      json.dump(params_dict(fitted, person, config), f, indent=2)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name in sorted(os.listdir(staging)):
      target = os.path.join(out_dir, name)
      os.replace(os.path.join(staging, name), target)
      written.append(target)
    return written
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def run(config: ml_collections.ConfigDict, image: Optional[str], annotations: str,
        prior_workdir: Optional[str], out_dir: str, model: Any = None) -> list:
  """Validates the inputs, fits, writes; returns the written paths.

  Raises `fitting.FitInputError` for bad inputs before anything is written.
  """
  fitting.validate_fit_config(config.fit)
  person = coco.read_coco_person(annotations, image, config.annotation_id)
  prior = load_pose_prior(config.fit.prior, prior_workdir)
  if model is None:
    from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
    model = assets.load_cc0_model()
  body = fitting_body.make_fit_body(model, body_rotmats_fn, config.fit.part_vertices_per_part)
  fitted = fit_person(config, model, body, prior, person)
  return write_outputs(out_dir, model, fitted, person, config)

