"""Render a mocap window of the CC0 body to shaded video frames (a test clip with ground truth).

The body is shaded in one skin colour with smooth Lambertian lighting on a mid-grey floor-less
background (`evidence.shading` through `evidence.raster.render`), not in the part colours: the
detector has to find a person, not a colour chart. The camera is fixed, looking at the clip's
mean pelvis from the front-left at `distance` metres.

    clip = render_mocap_clip(model, dofs [T, 50], root_orient [T, 3], root_transl [T, 3])
    clip.frames [T, H, W, 3] uint8, clip.keypoints [T, 17, 2] true projections (pixels),
    clip.joints [T, J, 3] camera-frame joints, clip.focal [2], clip.principal_point [2]
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flowpose import geometry
from flowpose.body import model as body_lib
from flowpose.data import retarget
from flowpose.evidence import raster
from flowpose.geometry import camera

SKIN = (0.80, 0.62, 0.50)
BACKGROUND = (128, 128, 128)


class RenderedClip(NamedTuple):
  frames: np.ndarray
  keypoints: np.ndarray
  joints: np.ndarray
  focal: np.ndarray
  principal_point: np.ndarray


def render_mocap_clip(model: body_lib.BodyModel, dofs, root_orient, root_transl, *,
                      betas=None, size=(256, 256), distance: float = 4.0,
                      azimuth_deg: float = 30.0, focal_factor: float = 1.2) -> RenderedClip:
  """Renders T frames (see the module docstring).

  Args:
    model: the CC0 body model.
    dofs: [T, 50] chart DOFs. root_orient: [T, 3] axis-angle. root_transl: [T, 3] metres
      (the `cmu_mocap` features / `data.mocap_windows.Windows`).
    betas: [S] shape (default: mean).
    size: (H, W) pixels. distance: camera distance (m). azimuth_deg: camera azimuth about the
      vertical, 0 = in front of a body facing +Z. focal_factor: focal = factor * max(H, W).
  """
  height, width = size
  betas = jnp.zeros(model.num_betas) if betas is None else jnp.asarray(betas, jnp.float32)
  root = geometry.axis_angle_to_matrix(jnp.asarray(root_orient, jnp.float32))
  rotmats = jax.vmap(lambda d, r: retarget.pose_dofs_to_body_rotmats(d).at[0].set(r))(
      jnp.asarray(dofs, jnp.float32), root)
  out = jax.jit(jax.vmap(body_lib.forward, (None, 0, None, 0)))(
      model, rotmats, betas, jnp.asarray(root_transl, jnp.float32))
  verts, joints, kps = (np.asarray(x, np.float64) for x in (out.vertices, out.joints,
                                                               out.keypoints))
  target = joints[:, 0].mean(0)
  azimuth = np.deg2rad(azimuth_deg)
  eye = target + distance * np.array([np.sin(azimuth), 0.15, np.cos(azimuth)])
  cam_rot, cam_t = (np.asarray(x, np.float64) for x in camera.look_at(eye, target))
  focal = np.full(2, focal_factor * max(height, width))
  centre = np.array([width / 2, height / 2])
  cam = raster.PinholeCamera(cam_rot, cam_t, focal, centre)
  faces = np.asarray(model.faces)
  frames = [raster.render(v, faces, cam, size, face_colors=SKIN, smooth=True,
                          background=BACKGROUND).rgb for v in verts]
  to_cam = lambda x: x @ cam_rot.T + cam_t
  keypoints = camera.perspective_project_np(to_cam(kps), focal, centre)
  return RenderedClip(np.stack(frames), keypoints.astype(np.float32),
                      to_cam(joints).astype(np.float32), focal.astype(np.float32),
                      centre.astype(np.float32))
