"""Synthetic 2D evidence from posed CC0 bodies: what a 2D system would see, plus 3D labels.

    renderer = synth.Renderer(model, resolution=64)
    scenes = [synth.sample_scene(np.random.default_rng(seed_of(key)), dofs, config, 64, S)
              for key, dofs in ...]                     # numpy draws, one Generator per example
    examples = renderer.render(scenes)                  # list of dicts (the stored fields)

One example = one posed body seen by one random pinhole camera in a square crop of R px,
principal point (R/2, R/2), OpenCV camera frame (x right, y down, z forward;
`flowpose.geometry.camera`). The body is posed as the fitter poses it
(`flowpose.fitting.photo.body_rotmats_fn`: chart DOFs -> local rotations, root = `root_rotmat`,
the global orientation in the camera frame) and `transl` is the fitter's translation, so
`fitting.reduced_body.pose_points(body, pose_dofs, root_rotmat, betas, transl)` projected with
`focal` reproduces `keypoints` (the test of `tests/test_cmu_evidence.py`).

The scene (`sample_scene`, all draws from the example's own Generator, so an example is a pure
function of its key): betas ~ N(0, betas_std) clipped to +-betas_clip (the CC0 shape space has
one standard deviation per beta); the chart DOFs, left-right mirrored with probability
`mirror_prob`; orientation = upright facing the camera, yawed uniformly over 360 degrees,
pitched +-pitch_deg (the camera looks up or down at the person) and rolled +-roll_deg; focal
`focal_256` px at a 256 px crop, scaled to R; the distance chosen so the body's box fills
`fill` (50-100%) of the crop, its centre anywhere the box stays inside, or, with probability
`truncation_prob`, pushed over one edge by 10-40% of its size.

Rendering (`Renderer.render`, numpy z-buffer of `flowpose.evidence.zbuffer`): `part_map`
(0 = background, 1..P = part + 1, the model's part order), `mask`, keypoints (COCO-17) and their
visibility: inside the crop and not self-occluded. A keypoint sits inside the body (the wrist
inside the wrist), so it is occluded when the first surface on its pixel is in front of it by
more than its own depth under the skin: `zbuffer < depth - (radius_k + VISIBILITY_MARGIN)`,
`radius_k` = the keypoint's mean distance to the surface vertices it is regressed from.
"""

from typing import Dict, List, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowpose.body import model as body_lib
from flowpose.data import cmu_skeleton
from flowpose.data import retarget
from flowpose.evidence import views
from flowpose.evidence import zbuffer
from flowpose.fitting import photo
from flowpose.geometry import camera as camera_lib

# Depth slack of the keypoint occlusion test beyond the keypoint's own radius (metres): the
# z-buffer is sampled at a pixel centre, not on the keypoint's exact ray.
VISIBILITY_MARGIN = 0.03
# Bodies per call of the jitted batched forward (the last chunk is padded: one compile).
FORWARD_CHUNK = 64
# `body_rotmats(dofs [50], root [3, 3]) -> [31, 3, 3]`: the fitter's pose decoder.
body_rotmats = photo.body_rotmats_fn


def default_scene_config() -> ml_collections.ConfigDict:
  """Camera and shape distribution of `sample_scene` (module docstring)."""
  return ml_collections.ConfigDict(dict(
      betas_std=1.0, betas_clip=3.0, mirror_prob=0.5, pitch_deg=25.0, roll_deg=10.0,
      focal_256=(500.0, 2000.0), fill=(0.5, 1.0), truncation_prob=0.15,
      truncation=(0.1, 0.4)))


class Scene(NamedTuple):
  """The random draws of one example (before the body is posed).

  Attributes:
    pose_dofs: [D] chart DOFs (mirrored if `mirrored`). root_rotmat: [3, 3] camera frame.
    betas: [S]. focal: scalar px at the crop. fill: box side / crop side.
    offset: [2] box-centre offset from the crop centre, in units of the crop side.
    mirrored: bool.
  """
  pose_dofs: np.ndarray
  root_rotmat: np.ndarray
  betas: np.ndarray
  focal: float
  fill: float
  offset: np.ndarray
  mirrored: bool


def _axis_rotation(angle: float, axis: int) -> np.ndarray:
  c, s = np.cos(angle), np.sin(angle)
  i, j = [(1, 2), (2, 0), (0, 1)][axis]
  out = np.eye(3)
  out[i, i], out[i, j], out[j, i], out[j, j] = c, -s, s, c
  return out


def upright_rotation(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
  """[3, 3] body-to-camera rotation (radians): facing the camera head up, then turned.

  The body (Y up, facing +Z) is first yawed about its own up axis (pi = back view), turned to
  face the OpenCV camera (a half turn about X), then pitched about the camera's x axis and
  rolled about its optical axis.
  """
  flip = np.diag([1.0, -1.0, -1.0])
  return _axis_rotation(roll, 2) @ _axis_rotation(pitch, 0) @ flip @ _axis_rotation(yaw, 1)


def sample_scene(rng: np.random.Generator, pose_dofs: np.ndarray,
                 config: ml_collections.ConfigDict, resolution: int,
                 num_betas: int) -> Scene:
  """Draws the shape, orientation, camera and framing of one example (module docstring).

  Args:
    rng: this example's Generator (seeded by its key).
    pose_dofs: [D] chart DOFs.
    config: `default_scene_config()` fields.
    resolution: crop side R in px.
    num_betas: S.
  """
  mirrored = bool(rng.uniform() < config.mirror_prob)
  dofs = cmu_skeleton.mirror_dofs(pose_dofs) if mirrored else np.asarray(pose_dofs)
  betas = np.clip(rng.normal(0.0, config.betas_std, num_betas), -config.betas_clip,
                  config.betas_clip)
  yaw = rng.uniform(0.0, 2 * np.pi)
  pitch = np.deg2rad(rng.uniform(-config.pitch_deg, config.pitch_deg))
  roll = np.deg2rad(rng.uniform(-config.roll_deg, config.roll_deg))
  focal = rng.uniform(*config.focal_256) * resolution / 256.0
  fill = rng.uniform(*config.fill)
  offset = rng.uniform(-0.5, 0.5, 2) * (1.0 - fill)  # The box stays inside the crop.
  if rng.uniform() < config.truncation_prob:
    axis, side = rng.integers(2), rng.choice([-1.0, 1.0])
    offset[axis] = side * ((1.0 - fill) / 2 + rng.uniform(*config.truncation) * fill)
  return Scene(dofs.astype(np.float32), upright_rotation(yaw, pitch, roll).astype(np.float32),
               betas.astype(np.float32), float(focal), float(fill), offset, mirrored)


def keypoint_radii(model: body_lib.BodyModel) -> np.ndarray:
  """[K] each keypoint's mean distance to the vertices it is regressed from (rest, mean shape)."""
  reg = np.abs(np.asarray(model.keypoint_regressor, np.float64))
  verts = np.asarray(model.v_template, np.float64)
  points = (reg @ verts) / reg.sum(1, keepdims=True)
  dist = np.linalg.norm(verts[None] - points[:, None], axis=-1)  # [K, V]
  return (reg * dist).sum(1) / reg.sum(1)


def place_body(vertices: np.ndarray, focal: float, resolution: int, fill: float,
               offset: np.ndarray, iterations: int = 3) -> np.ndarray:
  """[3] translation putting the body's box at `fill` of the crop, centred at `offset`.

  Args:
    vertices: [V, 3] the posed body at zero translation (camera frame).
    focal, resolution, fill, offset: see `Scene`.
  Returns:
    transl [3] (added to every posed point).
  """
  # Coordinate-major (contiguous per axis): reductions over 13k vertices are ~10x faster.
  verts = np.asarray(vertices, np.float64).T  # [3, V]
  lo, hi = verts.min(1), verts.max(1)
  centre3d = 0.5 * (lo + hi)
  near = centre3d[2] - lo[2] + 0.1  # The nearest vertex stays 10 cm away.
  pp = resolution / 2.0
  target = (0.5 + np.asarray(offset)) * resolution  # Box centre in px.
  depth = max(focal * np.max(hi[:2] - lo[:2]) / (fill * resolution), near)
  position = np.append((target - pp) / focal * depth, depth)  # Of `centre3d`.
  for _ in range(iterations):  # Perspective: correct the weak-perspective guess.
    cam = verts + (position - centre3d)[:, None]
    uv = focal * cam[:2] / np.maximum(cam[2], camera_lib.MIN_DEPTH) + pp  # The one pinhole.
    uv_lo, uv_hi = uv.min(1), uv.max(1)
    side, centre = np.max(uv_hi - uv_lo), 0.5 * (uv_lo + uv_hi)
    new_depth = max(position[2] * side / (fill * resolution), near)
    # Along the ray of the box centre to the new depth, then across onto the target.
    position[:2] = position[:2] * new_depth / position[2] + (target - centre) / focal * new_depth
    position[2] = new_depth
  transl = position - centre3d
  return transl.astype(np.float32)


class Renderer:
  """Poses bodies (batched, jitted) and renders their evidence (numpy z-buffer)."""

  def __init__(self, model: body_lib.BodyModel, resolution: int):
    self.model = model
    self.resolution = int(resolution)
    self.faces = np.asarray(model.faces)
    self.face_parts = zbuffer.face_labels(self.faces, np.asarray(model.part_labels))
    self.radii = keypoint_radii(model)
    retarget.default_alignment()  # Built (cached) outside the trace below.

    def pose(model, dofs, root, betas):
      rotmats = body_rotmats(dofs, root)
      return body_lib.forward(model, rotmats, betas)
    self._forward = jax.jit(jax.vmap(pose, (None, 0, 0, 0)))

  def pose_bodies(self, scenes: List[Scene]):
    """(vertices [N, V, 3], keypoints [N, K, 3]) at zero translation, float32 numpy."""
    verts, kps = [], []
    for start in range(0, len(scenes), FORWARD_CHUNK):
      chunk = scenes[start:start + FORWARD_CHUNK]
      pad = chunk + [chunk[-1]] * (FORWARD_CHUNK - len(chunk))
      out = self._forward(self.model, *(jnp.asarray(np.stack([getattr(s, f) for s in pad]))
                                        for f in ("pose_dofs", "root_rotmat", "betas")))
      verts.append(np.asarray(out.vertices)[:len(chunk)])
      kps.append(np.asarray(out.keypoints)[:len(chunk)])
    return np.concatenate(verts), np.concatenate(kps)

  def render(self, scenes: List[Scene]) -> List[Dict[str, np.ndarray]]:
    """The stored fields of each scene (the `cmu_evidence` contract, WORKSPACE.md)."""
    all_verts, all_kps = self.pose_bodies(scenes)
    return [self.render_posed(s, v, k) for s, v, k in zip(scenes, all_verts, all_kps)]

  def render_posed(self, scene: Scene, vertices: np.ndarray,
                   keypoints3d: np.ndarray) -> Dict[str, np.ndarray]:
    """Evidence of one posed body (`vertices [V, 3]`, `keypoints3d [K, 3]`, zero translation)."""
    res = self.resolution
    transl = place_body(vertices, scene.focal, res, scene.fill, scene.offset)
    return self.render_at(scene, vertices + transl, keypoints3d + transl, transl)

  def render_at(self, scene: Scene, vertices: np.ndarray, keypoints3d: np.ndarray,
                transl: np.ndarray) -> Dict[str, np.ndarray]:
    """Evidence of a body already placed in the camera frame (`transl` recorded as given)."""
    res = self.resolution
    pp = np.full(2, res / 2.0)
    cam = views.PinholeCamera(np.eye(3), np.zeros(3), np.full(2, scene.focal), pp)
    raster = zbuffer.rasterize(vertices, self.faces, cam, (res, res))
    part_map = zbuffer.label_image(raster.face_index, self.face_parts + 1, background=0)
    uv = camera_lib.perspective_project_np(keypoints3d, scene.focal, pp)
    inside = np.all((uv >= 0) & (uv < res), -1) & camera_lib.in_front(keypoints3d)
    rows = np.clip(np.floor(uv[:, 1]), 0, res - 1).astype(np.int64)
    cols = np.clip(np.floor(uv[:, 0]), 0, res - 1).astype(np.int64)
    surface = raster.depth[rows, cols].astype(np.float64)
    unoccluded = surface >= keypoints3d[:, 2] - (self.radii + VISIBILITY_MARGIN)
    return {
        "keypoints": uv.astype(np.float32),
        "visible": (inside & unoccluded).astype(np.float32),
        "part_map": part_map.astype(np.uint8),
        "mask": (raster.face_index >= 0).astype(np.uint8),
        "pose_dofs": np.asarray(scene.pose_dofs, np.float32),
        "root_rotmat": np.asarray(scene.root_rotmat, np.float32),
        "betas": np.asarray(scene.betas, np.float32),
        "transl": np.asarray(transl, np.float32),
        "focal": np.float32(scene.focal),
        "joints3d": np.asarray(keypoints3d, np.float32),
    }
