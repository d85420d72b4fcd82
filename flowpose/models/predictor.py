"""A trained reconstruction network as a function: evidence of a photo -> the fitter's start.

    predict = load_predictor(workdir)           # a `regressor` run (python -m launch.main)
    initial = predict(evidence, image_size)     # {"pose", "betas", "orient", "transl", "log_focal"}
    fit(config, model, body, prior, evidence, image_size, initial=initial)   # refinement

`export(workdir, params, config)` (the task's export, at the end of training) writes
`regressor_params.msgpack` + `regressor_params.sha256` and copies the flow prior the network was
trained with into `workdir/prior/`, so the run is self-contained; the trainer's `config.json`
holds the config.

From a photo to the network's crop (`crop_evidence`): the person box is the keypoints' tight box
made square and grown by `BOX_SCALE` (`geometry.camera.box_from_keypoints`); keypoints (and
optional dense part/mask images, nearest pixel) are mapped into the R px crop, whose focal is
`f * R / box side`. The network sees the crop as if its principal point were the crop centre
(as in training); by default it also reads the crop's mirror image and the two predictions are
averaged (`load_predictor(flip_average=True)`, `regressor_body.mean_with_mirror_image`). Back to
the image (`to_image_frame`): the root joint's crop pixel is mapped back through the crop and
lifted along the real camera's ray at the predicted depth (depth is unchanged by the crop: f and
the person's size scale alike); the orientation is turned by the rotation between the real
optical axis and the ray through the box centre (the crop's virtual camera is the real one
turned to look at the box). `log_focal` is the photo's focal.
"""

import hashlib
import json
import os
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowpose import geometry
from flowpose import io_utils
from flowpose.fitting import checks
from flowpose.fitting.config import FitInputError  # pylint: disable=g-importing-member
from flowpose.geometry import camera
from flowpose.models import regressor_body
from flowpose.prior import io as prior_io

PARAMS_FILE = "regressor_params.msgpack"
CHECKSUM_FILE = "regressor_params.sha256"
CONFIG_FILE = "config.json"
PRIOR_DIR = "prior"
# Margin of the person box around the keypoints: the body then fills ~85-95% of the crop,
# inside the 50-100% of the training crops.
BOX_SCALE = 1.2


class RegressorLoadError(ValueError):
  """A regressor workdir is missing or holds unreadable files (the message names the file)."""


def export(workdir: str, params: Any, config: ml_collections.ConfigDict) -> str:
  """Writes the params (+ sha256) and a copy of the prior; returns the params path."""
  data = flax.serialization.to_bytes(jax.device_get(params))
  path = os.path.join(workdir, PARAMS_FILE)
  io_utils.atomic_write(path, data)
  io_utils.atomic_write(os.path.join(workdir, CHECKSUM_FILE),
                        f"{hashlib.sha256(data).hexdigest()}  {PARAMS_FILE}\n".encode())
  source = config.model.prior_workdir
  target = os.path.join(workdir, PRIOR_DIR)
  if os.path.abspath(source) != os.path.abspath(target):
    os.makedirs(target, exist_ok=True)
    for name in (prior_io.PARAMS_FILE, prior_io.CONFIG_FILE, prior_io.CHECKSUM_FILE):
      if os.path.isfile(os.path.join(source, name)):
        with open(os.path.join(source, name), "rb") as f:
          io_utils.atomic_write(os.path.join(target, name), f.read())
  return path


def _read(workdir: str, name: str) -> bytes:
  path = os.path.join(workdir, name)
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise RegressorLoadError(f"{path}: cannot read ({e.strerror}); is {workdir} a finished "
                             "regressor run (python -m launch.main --config="
                             "experiments/regressor_weak.py)?") from None
  if not data:
    raise RegressorLoadError(f"{path}: empty file; rerun the training command to export again")
  return data


def load_params(workdir: str):
  """`(config, context, params)` of a regressor workdir (checksum verified)."""
  try:
    config = ml_collections.ConfigDict(json.loads(_read(workdir, CONFIG_FILE)))
  except ValueError as e:
    if isinstance(e, RegressorLoadError):
      raise
    raise RegressorLoadError(f"{os.path.join(workdir, CONFIG_FILE)}: not JSON ({e})") from None
  if config.get("task") != "regressor" or "model" not in config:
    raise RegressorLoadError(f"{os.path.join(workdir, CONFIG_FILE)}: not a regressor run "
                             f"(task {config.get('task')!r})")
  prior_dir = os.path.join(workdir, PRIOR_DIR)
  if not os.path.isdir(prior_dir):
    prior_dir = config.model.prior_workdir
  context = regressor_body.make_context(config.model, config.data.resolution, prior_dir)
  data = _read(workdir, PARAMS_FILE)
  expected = _read(workdir, CHECKSUM_FILE).decode(errors="replace").split()[:1]
  if [hashlib.sha256(data).hexdigest()] != expected:
    raise RegressorLoadError(f"{os.path.join(workdir, PARAMS_FILE)}: SHA-256 differs from "
                             f"{CHECKSUM_FILE} (damaged); rerun the training command")
  maps = jnp.zeros((1, context.resolution, context.resolution,
                    regressor_body.input_maps(context, _blank_batch(context, 1)).shape[-1]))
  template = {"net": context.net.init(jax.random.key(0), maps, context.theta_init)["params"]}
  try:
    params = flax.serialization.from_bytes(template, data)
  except (ValueError, KeyError, TypeError) as e:
    raise RegressorLoadError(f"{os.path.join(workdir, PARAMS_FILE)}: does not match the "
                             f"network of {CONFIG_FILE} ({e})") from None
  return config, context, params


def load_params_like(workdir: str, context, like: Any) -> Any:
  """The exported params of regressor run `workdir`, checked against `like` (the caller's
  network) and `context`'s prior (a latent means nothing under another prior)."""
  _, other, params = load_params(workdir)
  shapes = lambda tree: jax.tree.map(lambda x: tuple(np.shape(x)), tree)
  if (jax.tree.structure(params) != jax.tree.structure(like)
      or shapes(params) != shapes(like)):
    raise RegressorLoadError(f"the network of {workdir} has other layers or shapes than this "
                             "config's model (widths, features, inputs, prior D)")
  mine, theirs = jax.tree.leaves(context.prior.params), jax.tree.leaves(other.prior.params)
  if len(mine) != len(theirs) or not all(
      np.shape(a) == np.shape(b) and np.allclose(a, b) for a, b in zip(mine, theirs)):
    raise RegressorLoadError(f"{workdir} was trained with another flow prior than "
                             "model.prior_workdir; its latents would mean other poses")
  return jax.tree.map(jnp.asarray, params)


def _blank_batch(context, num: int) -> dict:
  r = context.resolution
  return {"keypoints": np.zeros((num, 17, 2), np.float32),
          "confidence": np.zeros((num, 17), np.float32),
          "part_map": np.zeros((num, r, r), np.uint8), "mask": np.zeros((num, r, r), np.uint8)}


def _crop_image(image: np.ndarray, inverse: np.ndarray, resolution: int) -> np.ndarray:
  """Nearest-pixel crop `[R, R]` of a label image `[H, W]` (0 outside the image)."""
  centres = np.arange(resolution) + 0.5
  grid = np.stack(np.meshgrid(centres, centres), -1).reshape(-1, 2)  # (u, v) per crop pixel.
  src = grid @ inverse[:2, :2].T + inverse[:2, 2]
  col, row = np.floor(src[:, 0]).astype(int), np.floor(src[:, 1]).astype(int)
  inside = (col >= 0) & (row >= 0) & (col < image.shape[1]) & (row < image.shape[0])
  out = np.zeros(len(grid), image.dtype)
  out[inside] = image[row[inside], col[inside]]
  return out.reshape(resolution, resolution)


def crop_evidence(evidence, resolution: int, part_map: Optional[np.ndarray] = None,
                  mask: Optional[np.ndarray] = None) -> dict:
  """The network's batch for photo evidence (module docstring).

  Args:
    evidence: `flowpose.fitting.fit.Evidence` (keypoints `[B, K, 2]` image pixels, NaN or
      confidence 0 where missing; focal `[B, 2]`; principal_point `[B, 2]`).
    resolution: R.
    part_map: optional `[B, H, W]` uint8 image labels (0 background, 1..P part + 1).
    mask: optional `[B, H, W]` person masks (nonzero = person).

  Returns:
    `{keypoints, confidence, part_map, mask, focal [B]}` in the crop, plus `affine [B, 3, 3]`
    (image -> crop pixels) and `box [B, 4]`.
  """
  kp = np.asarray(evidence.keypoints, np.float32)
  conf = np.asarray(evidence.confidence, np.float32)
  conf = np.where(np.all(np.isfinite(kp), -1), conf, 0.0)
  kp = np.where(conf[..., None] > 0, kp, 0.0)
  box = np.asarray(camera.box_from_keypoints(kp, conf, scale=BOX_SCALE, aspect=1.0))
  affine = np.asarray(camera.crop_box_to_transform(box, (resolution, resolution)))
  num = kp.shape[0]
  inverse = np.asarray(camera.invert_affine_2d(affine))
  crop = lambda images: np.stack([_crop_image(np.asarray(images[b]), inverse[b], resolution)
                                  for b in range(num)])
  focal = np.asarray(evidence.focal, np.float32).reshape(num, -1).mean(-1)
  return {
      "keypoints": np.asarray(camera.apply_affine_2d(kp, affine)),
      "confidence": conf,
      "part_map": (np.zeros((num, resolution, resolution), np.uint8) if part_map is None
                   else crop(np.asarray(part_map, np.uint8))),
      "mask": (np.zeros((num, resolution, resolution), np.uint8) if mask is None
               else (crop(np.asarray(mask)) != 0).astype(np.uint8)),
      "focal": (focal * resolution / box[:, 2]).astype(np.float32),
      "affine": affine, "box": box,
  }


def _axis_to_ray(ray: np.ndarray) -> np.ndarray:
  """`[B, 3, 3]` rotations taking the optical axis (0, 0, 1) onto the unit rays `[B, 3]`."""
  z = np.array([0.0, 0.0, 1.0])
  axis = np.cross(z, ray)
  sin = np.linalg.norm(axis, axis=-1)
  angle = np.arctan2(sin, ray @ z)
  axis = np.where(sin[:, None] > 1e-12, axis / np.maximum(sin, 1e-12)[:, None], 0.0)
  return np.asarray(geometry.axis_angle_to_matrix(jnp.asarray(axis * angle[:, None])))


def to_image_frame(decoded: dict, crop: dict, evidence, resolution: int,
                   rest_root: np.ndarray) -> dict:
  """Crop-frame network output -> the fitter's variables in the photo's camera (docstring)."""
  num = crop["focal"].shape[0]
  focal = np.asarray(evidence.focal, np.float64).reshape(num, -1) * np.ones((1, 2))
  pp = np.asarray(evidence.principal_point, np.float64).reshape(num, 2)
  root = np.asarray(decoded["root"], np.float64)
  pixel_crop = crop["focal"][:, None] * root[:, :2] / root[:, 2:] + resolution / 2.0
  inverse = np.asarray(camera.invert_affine_2d(crop["affine"]), np.float64)
  pixel = np.einsum("bij,bj->bi", inverse[:, :2, :2], pixel_crop) + inverse[:, :2, 2]
  depth = root[:, 2:]
  root_image = np.concatenate([(pixel - pp) / focal * depth, depth], -1)
  centre = crop["box"][:, :2] + 0.5 * crop["box"][:, 2:]
  ray = np.concatenate([(centre - pp) / focal, np.ones((num, 1))], -1)
  turn = _axis_to_ray(ray / np.linalg.norm(ray, axis=-1, keepdims=True))
  orient = np.einsum("bij,bjk->bik", turn, np.asarray(decoded["root_rotmat"], np.float64))
  return {
      "pose": np.asarray(decoded["pose"], np.float32),
      "betas": np.asarray(decoded["betas"], np.float32),
      "orient": np.asarray(geometry.matrix_to_rot6d(jnp.asarray(orient, jnp.float32))),
      "transl": (root_image - rest_root).astype(np.float32),
      "log_focal": np.log(focal.mean(-1)).astype(np.float32),
  }


def load_predictor(workdir: str, flip_average: bool = True) -> Callable[..., dict]:
  """`predict(evidence, image_size, part_map=None, mask=None) -> dict` of a regressor run
  (`flip_average`: with the network's prediction for the mirrored evidence averaged in,
  `regressor_body.network_decode`).

  The returned dict has the fitter's `flowpose.fitting.config.VARIABLES` with a leading `[B]`:
  pose `[B, D]` (the flow prior's latent, as `registry.load("flow", ...)` decodes it), betas
  `[B, S]`, orient `[B, 6]` (body -> camera, 6D), transl `[B, 3]` (the fitter's translation,
  camera frame, metres), log_focal `[B]`. `image_size` (H, W) checks the evidence
  (`checks.evidence_errors`: FitInputError naming the person). `part_map` / `mask`: optional
  dense `[B, H, W]` images (see `crop_evidence`); zero channels otherwise (training drops them
  now and then, `model.map_dropout`, so keypoints alone are in-distribution).

  Raises:
    RegressorLoadError: missing/damaged files (named).
  """
  config, context, params = load_params(workdir)
  del config
  resolution = context.resolution

  @jax.jit
  def network(params, batch):
    decoded = regressor_body.network_decode(context, params, batch, flip_average)
    if context.model_config.pose_head == "dofs":  # The fitter's variable is the latent.
      decoded["pose"] = context.flow.pose_to_latent(context.prior.params, decoded["pose"])
    decoded["rest_root"] = regressor_body.rest_root(context, decoded["betas"])
    return decoded

  def predict(evidence, image_size, part_map=None, mask=None) -> dict:
    kp = np.asarray(evidence.keypoints, np.float32)
    if kp.ndim != 3 or kp.shape[1:] != (17, 2):
      raise FitInputError(f"evidence.keypoints: expected [B, 17, 2], got {kp.shape}")
    for b, problems in enumerate(checks.evidence_errors(kp, evidence.confidence, image_size)):
      if problems:
        raise FitInputError(f"evidence of person {b}: " + "; ".join(problems))
    crop = crop_evidence(evidence, resolution, part_map, mask)
    batch = {k: crop[k] for k in ("keypoints", "confidence", "part_map", "mask", "focal")}
    decoded = jax.device_get(network(params, batch))
    return to_image_frame(decoded, crop, evidence, resolution, np.asarray(decoded["rest_root"]))

  return predict
