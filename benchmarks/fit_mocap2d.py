r"""Synthetic 2D->3D fitting benchmark on held-out mocap poses.

  python -m benchmarks.fit_mocap2d --prior_workdir=DIR --out=/tmp/fit.json \
      [--mocap_dir=../shared/data/cmu] [--num_frames=256] \
      [--config=experiments/fit_mocap2d.py[:runlocal]]

Frames: the test-split subjects (`flowpose.data.tfds.cmu_mocap.splits`) of a CMU
ASF/AMC folder, or every clip of any other folder of ASF/AMC or BVH clips
(CMU skeleton), retargeted to the CC0 body (`flowpose.data.retarget`); the
mocap root orientation is replaced by an upright body with a random yaw. The
scene (shape, camera, noise, occlusion) is described in
`experiments/fit_mocap2d.py`. Part maps are rendered with `flowpose.evidence.raster`
and sampled with `losses.sample_part_pixels`.

Fits with every prior on keypoints only, and with the flow on keypoints +
parts (on the first `parts_frames` frames; `flow_kp_subset` is the flow
without parts on the same frames). Reports (mm) MPJPE (root-aligned, all 31
joints), PA-MPJPE, PVE (root-aligned), fit times, and `batched_speedup` =
(time to fit `speedup_frames` frames one at a time) / (time to fit them
jointly), both after compilation. Priors come from `--prior_workdir` (flow:
`prior_params.msgpack`; baselines: `baselines.npz` from the prior evaluation,
else fitted here on the train-split DOFs); without it the flow is skipped.
"""

import json
import os
import pathlib
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

# flowpose.prior.flow (distrax/TFP) must be imported before TensorFlow users.
from flowpose.prior import io as prior_io
from flowpose.prior import flow as prior_lib  # pylint: disable=g-bad-import-order,unused-import
from flowpose.geometry import camera
from flowpose import metrics as eval_lib
from flowpose.fitting import fit as fitting
from flowpose.fitting import reduced_body as fitting_body
from flowpose import geometry
from flowpose import losses
from flowpose.evidence import raster as render
from flowpose.body.build import assets
from flowpose.body import model as body_lib
from flowpose.data import asf_amc
from flowpose.data import bvh
from flowpose.data import retarget
from flowpose.data.tfds.cmu_mocap import splits

_REPO = pathlib.Path(__file__).resolve().parents[1]
_CONFIG = config_flags.DEFINE_config_file(
    "config", str(_REPO / "experiments" / "fit_mocap2d.py"), "Benchmark config.")
_MOCAP_DIR = flags.DEFINE_string("mocap_dir", str(_REPO.parent / "shared" / "data" / "cmu"),
                                 "Folder of ASF/AMC or BVH clips.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", None, "Overrides config.num_frames.")
_OUT = flags.DEFINE_string("out", None, "Output JSON.", required=True)
_PRIOR_WORKDIR = flags.DEFINE_string("prior_workdir", None, "Trained prior workdir.")


def body_rotmats_fn(dofs, root):
  """Fitter decoder: the chart DOFs' body rotations with the root set to `root`."""
  return retarget.pose_dofs_to_body_rotmats(dofs).at[0].set(root)


def load_dofs(mocap_dir: str, split: str, stride: int = 4):
  """[N, 50] pose DOFs of the clips of `split` (or of every clip of a non-CMU folder).

  Every `stride`-th frame (CMU's 120 fps -> 30 fps, as the prior's training data).
  """
  folder = pathlib.Path(mocap_dir)
  clips = splits.list_clips(folder)
  if clips:
    paths = [c.amc_path for c in clips if c.split == split] or [c.amc_path for c in clips]
  else:
    paths = sorted(p for p in folder.rglob("*") if p.name.endswith((".bvh", ".bvh.gz")))
  if not paths:
    raise ValueError(f"{mocap_dir}: no ASF/AMC or BVH clips")
  out = []
  for path in paths:
    motion = (bvh.read_bvh(path) if ".bvh" in path.name else asf_amc.load_asf_amc(path))
    dofs = retarget.motion_to_pose_dofs(motion)
    out.append(dofs[::stride])
  logging.info("%s: %d clips of split %s", mocap_dir, len(paths), split)
  return np.concatenate(out).astype(np.float32)


def load_priors(workdir, mocap_dir):
  """{kind: PosePrior} for none/gaussian/gmm8 (+ flow with a workdir)."""
  from flowpose.prior import evaluate as prior_eval  # pylint: disable=g-import-not-at-top
  flow = flow_params = None
  if workdir and os.path.exists(os.path.join(workdir, prior_io.PARAMS_FILE)):
    flow, flow_params, _ = prior_io.load_exported_prior(workdir)
    center = np.asarray(flow_params["stats"]["center"])
  try:
    fitted = prior_eval.load_baselines(workdir) if workdir else None
  except prior_eval.PriorEvalError as e:
    logging.warning("%s; fitting the baselines on the train clips", e)
    fitted = None
  if fitted is None:
    train = load_dofs(mocap_dir, "train")
    if flow is None:
      center = np.arctan2(np.sin(train).mean(0), np.cos(train).mean(0))
    fitted = prior_eval.fit_baselines(train, center)
  gauss, gmm = fitted.models["gaussian_full"], fitted.models["gmm8"]
  priors = {
      "none": fitting_body.make_pose_prior("none", init_pose=np.asarray(gauss.mean)),
      "gaussian": fitting_body.make_pose_prior("gaussian", gaussian=gauss),
      "gmm8": fitting_body.make_pose_prior("gmm8", gmm=gmm)}
  if flow is not None:
    priors["flow"] = fitting_body.make_pose_prior("flow", flow=flow, flow_params=flow_params)
  return priors


def make_scene(model, dofs, scene, rng):
  """Ground truth (camera frame) and evidence of every frame."""
  num = len(dofs)
  size = scene.image_size
  yaw = rng.uniform(0, 2 * np.pi, num)
  roots = np.stack([np.asarray(geometry.rotation_about_axis(a, "Y")) for a in yaw])
  betas = (scene.betas_std * rng.standard_normal((num, model.num_betas))).astype(np.float32)
  rotmats = jax.vmap(body_rotmats_fn)(jnp.asarray(dofs), jnp.asarray(roots, jnp.float32))
  fwd = jax.jit(jax.vmap(body_lib.forward, (None, 0, 0)))
  world = fwd(model, rotmats, jnp.asarray(betas))
  # Cameras around the pelvis.
  dist = rng.uniform(*scene.distance, num)
  elev = np.deg2rad(rng.uniform(*scene.elevation_deg, num))
  azim = rng.uniform(0, 2 * np.pi, num)
  target = np.asarray(world.joints[:, 0]) + rng.normal(0, 0.05, (num, 3))
  eye = target + dist[:, None] * np.stack(
      [np.cos(elev) * np.sin(azim), np.sin(elev), np.cos(elev) * np.cos(azim)], 1)
  cam_rot, cam_t = (np.asarray(x) for x in camera.look_at(eye, target))
  focal = scene.focal * (1 + rng.uniform(-scene.focal_jitter, scene.focal_jitter, num))
  focal2 = np.stack([focal, focal], 1).astype(np.float32)
  centre = np.full((num, 2), size / 2, np.float32)
  to_cam = lambda x: np.einsum("bij,bnj->bni", cam_rot, np.asarray(x)) + cam_t[:, None]
  joints, verts, kp3 = to_cam(world.joints), to_cam(world.vertices), to_cam(world.keypoints)
  kp = kp3[..., :2] / kp3[..., 2:] * focal2[:, None] + centre[:, None]
  kp = kp + rng.normal(0, scene.noise_px, kp.shape)
  conf = (rng.uniform(size=kp.shape[:2]) >= scene.occlusion_prob).astype(np.float32)
  conf *= np.all((kp >= 0) & (kp < size), -1)
  return dict(joints=joints, vertices=verts, keypoints=kp.astype(np.float32), confidence=conf,
              focal=focal2, centre=centre, betas=betas)


def part_evidence(model, gt, frames, scene, num_points, rng):
  """Part pixels [n, N, 2] (full-image coordinates), labels, valid of `frames`."""
  ratio = scene.image_size / scene.part_image_size
  size = (scene.part_image_size,) * 2
  out = [], [], []
  for b in frames:
    cam = render.PinholeCamera(np.eye(3), np.zeros(3), gt["focal"][b] / ratio,
                               gt["centre"][b] / ratio)
    labels = render.render(gt["vertices"][b], np.asarray(model.faces), cam, size,
                           vertex_labels=np.asarray(model.part_labels)).part_labels
    pix, lab, valid = losses.sample_part_pixels(labels, num_points, rng)
    for lst, x in zip(out, (pix * ratio, lab, valid)):
      lst.append(x)
  return tuple(np.stack(x) for x in out)


def evaluate(model, result, gt, frames):
  out = fitting.body_outputs(model, result)
  joints, verts = gt["joints"][frames], gt["vertices"][frames]
  return {
      "mpjpe_mm": float(np.mean(eval_lib.mpjpe(out.joints, joints))),
      "pa_mpjpe_mm": float(np.mean(eval_lib.pa_mpjpe(out.joints, joints))),
      "pve_mm": float(np.mean(eval_lib.pve(out.vertices, verts, out.joints[:, 0],
                                           joints[:, 0]))),
  }


def timed_fit(config, model, body, prior, evidence, image_size=None):
  start = time.time()
  result = fitting.fit(config, model, body, prior, evidence, image_size)
  return result, time.time() - start


def _subset(evidence, frames):
  return fitting.Evidence(*[None if x is None else x[frames] for x in evidence])


def main(argv):
  del argv
  config = _CONFIG.value
  num_frames = _NUM_FRAMES.value or config.num_frames
  rng = np.random.default_rng(config.seed)
  model = assets.load_cc0_model()
  body = fitting_body.make_fit_body(model, body_rotmats_fn, config.fit.part_vertices_per_part)
  priors = load_priors(_PRIOR_WORKDIR.value, _MOCAP_DIR.value)
  test = load_dofs(_MOCAP_DIR.value, "test")
  dofs = test[rng.choice(len(test), num_frames, replace=len(test) < num_frames)]
  gt = make_scene(model, dofs, config.scene, rng)
  evidence = fitting.Evidence(gt["keypoints"], gt["confidence"], gt["focal"], gt["centre"])
  report = {"num_frames": num_frames, "prior_workdir": _PRIOR_WORKDIR.value,
            "mocap_dir": _MOCAP_DIR.value, "steps": [s["steps"] for s in config.fit.stages],
            "restarts": list(config.fit.restart_yaws_deg), "occlusion_prob":
            config.scene.occlusion_prob, "noise_px": config.scene.noise_px,
            "device": jax.devices()[0].device_kind, "mpjpe_mm": {}, "pa_mpjpe_mm": {},
            "pve_mm": {}, "fit_seconds": {}}
  everything = np.arange(num_frames)

  def record(name, result, seconds, frames):
    metrics = evaluate(model, result, gt, frames)
    for key, value in metrics.items():
      report[key][name] = value
    report["fit_seconds"][name] = seconds
    logging.info("%s: %s, %.1fs", name, metrics, seconds)

  best = "flow" if "flow" in priors else "gmm8"
  for kind in config.priors:
    if kind not in priors:
      logging.warning("prior %s unavailable (no --prior_workdir); skipped", kind)
      continue
    result, seconds = timed_fit(config.fit, model, body, priors[kind], evidence)
    record(kind, result, seconds, everything)
    if kind == best:  # Again, compiled: the speed target.
      _, report["fit_seconds"][f"{kind}_after_compile"] = timed_fit(
          config.fit, model, body, priors[kind], evidence)

  frames = np.arange(min(config.parts_frames, num_frames))
  pix, lab, valid = part_evidence(model, gt, frames, config.scene, config.fit.num_part_pixels,
                                  rng)
  sub = _subset(evidence, frames)
  with_parts = sub._replace(part_pixels=pix, part_labels=lab, part_valid=valid)
  size = (config.scene.image_size,) * 2
  result, seconds = timed_fit(config.fit, model, body, priors[best], with_parts, size)
  record(f"{best}_parts", result, seconds, frames)
  result, seconds = timed_fit(config.fit, model, body, priors[best], sub)
  record(f"{best}_kp_subset", result, seconds, frames)

  # Batched vs one at a time, both compiled first.
  frames = np.arange(min(config.speedup_frames, num_frames))
  batch = _subset(evidence, frames)
  timed_fit(config.fit, model, body, priors[best], _subset(evidence, frames[:1]))
  timed_fit(config.fit, model, body, priors[best], batch)
  _, batched = timed_fit(config.fit, model, body, priors[best], batch)
  single = sum(timed_fit(config.fit, model, body, priors[best], _subset(evidence, [i]))[1]
               for i in frames)
  report["batched_speedup"] = single / batched
  report["speedup_frames"] = len(frames)

  pa = report["pa_mpjpe_mm"]
  if "flow" in pa:
    report["goals"] = {
        "flow_vs_none": pa["flow"] / pa["none"], "flow_vs_gmm8": pa["flow"] / pa["gmm8"],
        "parts_gain": 1 - pa["flow_parts"] / pa["flow_kp_subset"],
        "target": "flow/none <= 0.6, flow/gmm8 <= 0.85, parts_gain >= 0.10, "
                  "256 frames x 200 steps <= 10 s after compile"}
  text = json.dumps(report, indent=2)
  print(text)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  tmp = _OUT.value + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, _OUT.value)


if __name__ == "__main__":
  app.run(main)
