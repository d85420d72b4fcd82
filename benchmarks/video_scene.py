"""The synthetic scene of the video benchmarks (`benchmarks.fit_video`): mocap windows posed on
the CC0 body, seen by a random static camera, with noisy, dropped and occluded 2D keypoints;
the per-frame outputs' joints and the scores (module docstring of `benchmarks.fit_video`)."""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import fit_mocap2d
from flowpose import geometry
from flowpose import metrics
from flowpose.body import model as body_lib
from flowpose.fitting import reduced_body
from flowpose.fitting import sequence_init
from flowpose.geometry import camera

OCCLUSION_FRAMES = 15  # 0.5 s at 30 fps.
OCCLUSION_AT = ("random", "start", "end")


def occlusion_mask(num: int, frames: int, occlusion_at: str, rng) -> np.ndarray:
  """[num, frames] bool: one run of `OCCLUSION_FRAMES` (at most frames - 2) per window, placed
  as `occlusion_at` says (module docstring); one draw per window whatever the placement."""
  occluded = np.zeros((num, frames), bool)
  length = min(OCCLUSION_FRAMES, frames - 2)
  for w in range(num):
    start = rng.integers(1, frames - length) if frames - length > 1 else 0
    start = {"random": start, "start": 0, "end": frames - length}[occlusion_at]
    occluded[w, start:start + length] = True
  return occluded


def make_windows(model, windows, scene, rng, occlusion_at="random"):
  """Ground truth (camera frame) and 2D evidence of every window.

  `occlusion_at`: where the occlusion lies (`OCCLUSION_AT`, module docstring); the random draws
  are the same for every choice (one scene, only the gap moved).

  Returns:
    dict of joints [W, T, J, 3], keypoints [W, T, K, 2], confidence [W, T, K], occluded [W, T],
    focal [W, 2], centre [W, 2].
  """
  num, frames = windows.dofs.shape[:2]
  yaw = rng.uniform(0, 2 * np.pi, num)
  turn = np.stack([np.asarray(geometry.rotation_about_axis(a, "Y")) for a in yaw])
  root = np.asarray(geometry.axis_angle_to_matrix(jnp.asarray(windows.root_orient)))
  root = np.einsum("wij,wtjk->wtik", turn, root)
  transl = windows.root_transl - windows.root_transl[:, :1] * np.array([1, 0, 1])
  transl = np.einsum("wij,wtj->wti", turn, transl)
  betas = (scene.betas_std * rng.standard_normal((num, model.num_betas))).astype(np.float32)
  rotmats = jax.vmap(jax.vmap(fit_mocap2d.body_rotmats_fn))(
      jnp.asarray(windows.dofs), jnp.asarray(root, jnp.float32))
  fwd = jax.jit(jax.vmap(jax.vmap(lambda r, b, t: body_lib.forward(model, r, b, t)),
                         (0, 0, 0)))
  world = fwd(rotmats, jnp.asarray(np.repeat(betas[:, None], frames, 1)),
              jnp.asarray(transl, jnp.float32))
  joints_w, kp_w = np.asarray(world.joints), np.asarray(world.keypoints)
  dist = rng.uniform(*scene.distance, num)
  elev = np.deg2rad(rng.uniform(*scene.elevation_deg, num))
  azim = rng.uniform(0, 2 * np.pi, num)
  target = joints_w[:, :, 0].mean(1)
  eye = target + dist[:, None] * np.stack(
      [np.cos(elev) * np.sin(azim), np.sin(elev), np.cos(elev) * np.cos(azim)], 1)
  cam_rot, cam_t = (np.asarray(x) for x in camera.look_at(eye, target))
  to_cam = lambda x: np.einsum("wij,wtnj->wtni", cam_rot, x) + cam_t[:, None, None]
  joints, kp3 = to_cam(joints_w), to_cam(kp_w)
  focal = scene.focal * (1 + rng.uniform(-scene.focal_jitter, scene.focal_jitter, num))
  focal2 = np.stack([focal, focal], 1).astype(np.float32)
  centre = np.full((num, 2), scene.image_size / 2, np.float32)
  kp = np.stack([camera.perspective_project_np(kp3[w], focal2[w], centre[w])
                 for w in range(num)])
  kp = kp + rng.normal(0, scene.noise_px, kp.shape)
  conf = (rng.uniform(size=kp.shape[:3]) >= scene.occlusion_prob).astype(np.float32)
  conf *= np.all((kp >= 0) & (kp < scene.image_size), -1)
  occluded = occlusion_mask(num, frames, occlusion_at, rng)
  conf[occluded] = 0.0
  return dict(joints=joints.astype(np.float32), keypoints=kp.astype(np.float32),
              confidence=conf, occluded=occluded, focal=focal2, centre=centre)


def frame_joints(body, frames: sequence_init.FrameFits) -> np.ndarray:
  """Joints [W, T, J, 3] of the stage-1 fits; frames without a fit linearly interpolated."""
  num, length = frames.valid.shape
  flat = np.flatnonzero(frames.valid.reshape(-1))
  result = frames.result
  joints = np.asarray(jax.vmap(reduced_body.pose_points, (None, 0, 0, 0, 0, None))(
      body, jnp.asarray(result.pose_dofs), jnp.asarray(result.rotmats[:, 0]),
      jnp.asarray(result.betas), jnp.asarray(result.transl), False).joints)
  out = np.full((num * length,) + joints.shape[1:], np.nan, np.float32)
  out[flat] = joints
  return interpolate_missing(out.reshape((num, length) + joints.shape[1:]), frames.valid)


def interpolate_missing(out: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """`out [W, T, ...]` with the rows where `valid [W, T]` is False linearly interpolated in
  time from the valid rows (held at the ends); in place."""
  num, length = valid.shape
  t = np.arange(length)
  for w in range(num):  # Frames without evidence: linear interpolation (held at the ends).
    have = valid[w]
    flat_w = out[w].reshape(length, -1)
    for c in range(flat_w.shape[1]):
      flat_w[:, c] = np.interp(t, t[have], flat_w[have, c])
    out[w] = flat_w.reshape(out[w].shape)
  return out


def scores(pred, gt_joints, occluded) -> dict:
  """mpjpe, pa_mpjpe, accel (all frames), the occluded frames' mpjpe/pa_mpjpe and the visible
  frames' pa_mpjpe (mm)."""
  mp = np.asarray(metrics.mpjpe(pred, gt_joints))
  pa = np.asarray(metrics.pa_mpjpe(pred, gt_joints))
  # The 0.5 s occlusion is ~half of a 32-frame window: the visible frames' error separately.
  return {"visible_pa_mpjpe_mm": float(pa[~occluded].mean()),
          "mpjpe_mm": float(mp.mean()), "pa_mpjpe_mm": float(pa.mean()),
          "accel_error_mm": float(np.asarray(metrics.accel_error(pred, gt_joints)).mean()),
          "occluded_mpjpe_mm": float(mp[occluded].mean()),
          "occluded_pa_mpjpe_mm": float(pa[occluded].mean())}
