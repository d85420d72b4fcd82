r"""Synthetic 2D->3D fitting benchmark on held-out mocap poses.

  python -m benchmarks.fit_mocap2d --prior_workdir=DIR --out=/tmp/fit.json \
      [--mocap_dir=FOLDER] [--split=test|train|validation|all] [--num_frames=256] \
      [--config=experiments/fit_mocap2d.py[:runlocal]]

Frames: without `--mocap_dir`, the test-split subjects (`flowpose.data.tfds.cmu_mocap.splits`)
of the shared CMU folder (`$FLOWPOSE_SHARED_DATA/cmu`, else `../shared/data/cmu`). A folder
passed with `--mocap_dir` is evaluated as given: all its ASF/AMC clips (or, without any, all its
BVH clips; CMU skeleton), unless `--split` names a CMU split, which must then hold clips. The
report's `frames` field says which clips were used. Poses are retargeted to the CC0 body
(`flowpose.data.retarget`); the mocap root orientation is replaced by an upright body with a
random yaw. The scene (shape, camera, noise, occlusion) is described in
`experiments/fit_mocap2d.py`. Part maps are rendered with `flowpose.evidence.raster` and
sampled with `losses.sample_part_pixels`.

Fits with every prior of `config.priors` on keypoints only, and with the best one (the flow
when listed) on keypoints + parts (on the first `parts_frames` frames; `<best>_kp_subset` is
the same prior without parts on the same frames). Reports (mm) MPJPE (root-aligned, all 31
joints), PA-MPJPE, PVE (root-aligned), fit times, `parts_over_kp_time` (parts / keypoint-only
fit time on the same frames, each side compiled by a first fit that is reported apart, then
`--parts_repeats` interleaved pairs: medians of wall and of process CPU time), the load
average, and `batched_speedup` = (time to fit `speedup_frames` frames one at a time) / (time to
fit them jointly), both after compilation.

Priors come from `--prior_workdir` through `flowpose.prior.registry` (flow:
`prior_params.msgpack`; gaussian/gmm8: `baselines.npz` of `launch.evaluate_prior`). A named prior
that cannot be loaded, a missing workdir, `--num_frames` < 1, or an unwritable `--out` stop
the run before any fitting.
"""

import json
import os
import pathlib
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from flowpose import geometry
from flowpose import io_utils
from flowpose import losses
from flowpose import metrics
from flowpose.body import model as body_lib
from flowpose.body.build import assets
from flowpose.data import asf_amc
from flowpose.data import bvh
from flowpose.data import retarget
from flowpose.data.tfds.cmu_mocap import splits
from flowpose.evidence import raster
from flowpose.fitting import fit as fitting
from flowpose.fitting import reduced_body
from flowpose.geometry import camera
from flowpose.prior import registry

_REPO = pathlib.Path(__file__).resolve().parents[1]
SPLITS = ("train", "validation", "test", "all")


class BenchmarkInputError(ValueError):
  """A bad flag or config value of the benchmark (the message names it)."""


def default_mocap_dir() -> pathlib.Path:
  shared = os.environ.get("FLOWPOSE_SHARED_DATA")
  return pathlib.Path(shared or _REPO.parent / "shared" / "data") / "cmu"


def body_rotmats_fn(dofs, root):
  """Fitter decoder: the chart DOFs' body rotations with the root set to `root`."""
  return retarget.pose_dofs_to_body_rotmats(dofs).at[0].set(root)


def clip_paths(mocap_dir, split: str) -> list:
  """The clips of `mocap_dir` to evaluate: all of them (`split="all"`) or one CMU split's.

  Raises:
    BenchmarkInputError: no such folder, no clips, or no clip of `split`.
  """
  folder = pathlib.Path(mocap_dir)
  if split not in SPLITS:
    raise BenchmarkInputError(f"--split: expected one of {SPLITS}, got {split!r}")
  if not folder.is_dir():
    raise BenchmarkInputError(f"--mocap_dir: {folder} is not a folder")
  clips = splits.list_clips(folder)
  if split != "all":
    paths = [c.amc_path for c in clips if c.split == split]
    if not paths:
      raise BenchmarkInputError(
          f"--mocap_dir: {folder} holds no clip of the {split!r} split (CMU subjects of "
          f"flowpose.data.tfds.cmu_mocap.splits); pass --split=all to evaluate all its clips")
    return paths
  paths = [c.amc_path for c in clips] or sorted(
      p for p in folder.rglob("*") if p.name.endswith((".bvh", ".bvh.gz")))
  if not paths:
    raise BenchmarkInputError(f"--mocap_dir: {folder}: no ASF/AMC or BVH clips")
  return paths


def load_dofs(paths, stride: int = 4) -> np.ndarray:
  """[N, 50] pose DOFs of the clips, every `stride`-th frame (CMU 120 -> 30 fps, as the prior's
  training data)."""
  out = []
  for path in paths:
    path = pathlib.Path(path)
    motion = (bvh.read_bvh(path) if ".bvh" in path.name else asf_amc.load_asf_amc(path))
    out.append(retarget.motion_to_pose_dofs(motion)[::stride])
  return np.concatenate(out).astype(np.float32)


def load_priors(kinds, workdir) -> dict:
  """{kind: PosePrior} of every named prior (`registry.load`); errors name what is missing."""
  priors = {}
  for kind in kinds:
    try:
      priors[kind] = registry.load(kind, workdir)
    except registry.PriorRegistryError as e:
      raise BenchmarkInputError(f"config.priors / --prior_workdir: {e}") from e
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
  kp = camera.perspective_project_np(kp3, focal2, centre)
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
    cam = raster.PinholeCamera(np.eye(3), np.zeros(3), gt["focal"][b] / ratio,
                               gt["centre"][b] / ratio)
    labels = raster.render(gt["vertices"][b], np.asarray(model.faces), cam, size,
                           vertex_labels=np.asarray(model.part_labels)).part_labels
    pix, lab, valid = losses.sample_part_pixels(labels, num_points, rng)
    for lst, x in zip(out, (pix * ratio, lab, valid)):
      lst.append(x)
  return tuple(np.stack(x) for x in out)


def evaluate(model, result, gt, frames):
  out = fitting.body_outputs(model, result)
  joints, verts = gt["joints"][frames], gt["vertices"][frames]
  return {
      "mpjpe_mm": float(np.mean(metrics.mpjpe(out.joints, joints))),
      "pa_mpjpe_mm": float(np.mean(metrics.pa_mpjpe(out.joints, joints))),
      "pve_mm": float(np.mean(metrics.pve(out.vertices, verts, out.joints[:, 0],
                                           joints[:, 0]))),
  }


def timed_fit(config, model, body, prior, evidence, image_size=None, cpu=None):
  """(result, wall seconds); with a list `cpu`, also appends the process CPU seconds."""
  start, cpu_start = time.time(), time.process_time()
  result = fitting.fit(config, model, body, prior, evidence, image_size)
  if cpu is not None:
    cpu.append(time.process_time() - cpu_start)
  return result, time.time() - start


def _subset(evidence, frames):
  return fitting.Evidence(*[None if x is None else x[frames] for x in evidence])


def run(config, *, out: str, prior_workdir, mocap_dir=None, split=None, num_frames=None,
        parts_repeats: int = 3):
  """Runs the benchmark and writes `out` (JSON, atomically); returns the report.

  Args:
    config: `experiments/fit_mocap2d.py` config.
    out: output JSON path (checked writable first).
    prior_workdir: trained prior workdir (see the module docstring).
    mocap_dir: clip folder; None = the shared CMU folder.
    split: CMU split or "all"; None = "test" for the shared folder, "all" for `mocap_dir`.
    num_frames: frames to fit (>= 1); None = `config.num_frames`.
    parts_repeats: timed (parts, keypoint-only) pairs after the compiling first fits (>= 1).

  Raises:
    BenchmarkInputError, io_utils.OutputPathError: before any fitting.
  """
  out_path = io_utils.require_output_path(out, "--out", is_dir=False)
  num_frames = config.num_frames if num_frames is None else num_frames
  if not isinstance(num_frames, int) or num_frames < 1:
    raise BenchmarkInputError(f"--num_frames / config.num_frames: expected an int >= 1, got "
                              f"{num_frames!r}")
  if not isinstance(parts_repeats, int) or parts_repeats < 1:
    raise BenchmarkInputError(f"--parts_repeats: expected an int >= 1, got {parts_repeats!r}")
  if split is None:
    split = "test" if mocap_dir is None else "all"
  mocap_dir = str(default_mocap_dir() if mocap_dir is None else mocap_dir)
  paths = clip_paths(mocap_dir, split)
  priors = load_priors(tuple(config.priors), prior_workdir)
  logging.info("%s: %d clips (%s)", mocap_dir, len(paths), split)
  rng = np.random.default_rng(config.seed)
  model = assets.load_cc0_model()
  body = reduced_body.make_fit_body(model, body_rotmats_fn, config.fit.part_vertices_per_part)
  pool = load_dofs(paths)
  dofs = pool[rng.choice(len(pool), num_frames, replace=len(pool) < num_frames)]
  gt = make_scene(model, dofs, config.scene, rng)
  evidence = fitting.Evidence(gt["keypoints"], gt["confidence"], gt["focal"], gt["centre"])
  report = {"num_frames": num_frames, "prior_workdir": prior_workdir, "mocap_dir": mocap_dir,
            "frames": {"split": split, "num_clips": len(paths), "num_poses": len(pool),
                       "clips": [pathlib.Path(p).name for p in paths]},
            "steps": [s["steps"] for s in config.fit.stages],
            "restarts": list(config.fit.restart_yaws_deg), "occlusion_prob":
            config.scene.occlusion_prob, "noise_px": config.scene.noise_px,
            "device": jax.devices()[0].device_kind, "mpjpe_mm": {}, "pa_mpjpe_mm": {},
            "pve_mm": {}, "fit_seconds": {}, "warnings": {}}
  everything = np.arange(num_frames)

  def record(name, result, seconds, frames):
    for key, value in evaluate(model, result, gt, frames).items():
      report[key][name] = value
    report["fit_seconds"][name] = seconds
    report["warnings"][name] = sum(len(w) for w in result.warnings)
    logging.info("%s: PA-MPJPE %.1f mm, %.1fs", name, report["pa_mpjpe_mm"][name], seconds)

  best = "flow" if "flow" in priors else list(priors)[-1]
  for kind, prior in priors.items():
    result, seconds = timed_fit(config.fit, model, body, prior, evidence)
    record(kind, result, seconds, everything)
    if kind == best:  # Again, compiled: the speed target.
      _, report["fit_seconds"][f"{kind}_after_compile"] = timed_fit(
          config.fit, model, body, prior, evidence)

  frames = np.arange(min(config.parts_frames, num_frames))
  pix, lab, valid = part_evidence(model, gt, frames, config.scene, config.fit.num_part_pixels,
                                  rng)
  sub = _subset(evidence, frames)
  with_parts = sub._replace(part_pixels=pix, part_labels=lab, part_valid=valid)
  size = (config.scene.image_size,) * 2
  # Each side compiled first (its first fit, reported apart), then timed warm: the ratio
  # compares the fits, not XLA's compile times (issue 15).
  # Then `parts_repeats` interleaved pairs (load changes hit both sides): medians, wall and
  # process CPU time (the VM is shared; CPU time is what the fit itself spent).
  first = {}
  _, first["parts"] = timed_fit(config.fit, model, body, priors[best], with_parts, size)
  _, first["kp"] = timed_fit(config.fit, model, body, priors[best], sub)
  wall, cpu = {"parts": [], "kp": []}, {"parts": [], "kp": []}
  for _ in range(parts_repeats):
    result_parts, seconds = timed_fit(config.fit, model, body, priors[best], with_parts, size,
                                      cpu["parts"])
    wall["parts"].append(seconds)
    result_kp, seconds = timed_fit(config.fit, model, body, priors[best], sub, cpu=cpu["kp"])
    wall["kp"].append(seconds)
  record(f"{best}_parts", result_parts, float(np.median(wall["parts"])), frames)
  record(f"{best}_kp_subset", result_kp, float(np.median(wall["kp"])), frames)
  report["fit_seconds"][f"{best}_parts_first_with_compile"] = first["parts"]
  report["fit_seconds"][f"{best}_kp_subset_first_with_compile"] = first["kp"]
  report["parts_timing"] = {"wall_s": wall, "cpu_s": cpu}
  report["parts_over_kp_time"] = float(np.median(np.divide(wall["parts"], wall["kp"])))
  report["parts_over_kp_cpu_time"] = float(np.median(np.divide(cpu["parts"], cpu["kp"])))
  report["parts_over_kp_time_with_compile"] = first["parts"] / first["kp"]
  # Batched vs one at a time, both compiled first (`speedup_frames` = 0 skips it).
  frames = np.arange(min(config.speedup_frames, num_frames))
  if len(frames):
    batch = _subset(evidence, frames)
    timed_fit(config.fit, model, body, priors[best], _subset(evidence, frames[:1]))
    timed_fit(config.fit, model, body, priors[best], batch)
    _, batched = timed_fit(config.fit, model, body, priors[best], batch)
    single = sum(timed_fit(config.fit, model, body, priors[best], _subset(evidence, [i]))[1]
                 for i in frames)
    report["batched_speedup"] = single / batched
  report["speedup_frames"] = len(frames)
  report["load_average_1_5_15"] = list(os.getloadavg())  # The VM is shared: say how busy.

  pa = report["pa_mpjpe_mm"]
  if {"flow", "none", "gmm8"} <= set(pa):
    report["goals"] = {
        "flow_vs_none": pa["flow"] / pa["none"], "flow_vs_gmm8": pa["flow"] / pa["gmm8"],
        "parts_gain": 1 - pa["flow_parts"] / pa["flow_kp_subset"],
        "target": "flow/none <= 0.6, flow/gmm8 <= 0.85, parts_gain >= 0.10, "
                  "256 frames x 200 steps <= 10 s after compile"}
  text = json.dumps(report, indent=2)
  print(text)
  io_utils.atomic_write(out_path, text.encode())
  return report


def define_flags():
  """This command's flags (defined only when run as a program: importing stays flag-free)."""
  config_flags.DEFINE_config_file(
      "config", str(_REPO / "experiments" / "fit_mocap2d.py"), "Benchmark config.")
  flags.DEFINE_string("mocap_dir", None, "Folder of ASF/AMC or BVH clips, evaluated as given "
                      "(default: the shared CMU folder's test split).")
  flags.DEFINE_enum("split", None, SPLITS, "CMU split of --mocap_dir (default: test for the "
                    "shared folder, all for --mocap_dir).")
  flags.DEFINE_integer("num_frames", None, "Overrides config.num_frames (>= 1).")
  flags.DEFINE_integer("parts_repeats", 3, "Timed (parts, keypoint-only) fit pairs (>= 1).")
  flags.DEFINE_string("out", None, "Output JSON.", required=True)
  flags.DEFINE_string("prior_workdir", None, "Trained prior workdir.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  try:
    run(f.config, out=f.out, prior_workdir=f.prior_workdir, mocap_dir=f.mocap_dir,
        split=f.split, num_frames=f.num_frames, parts_repeats=f.parts_repeats)
  except (BenchmarkInputError, io_utils.OutputPathError) as e:
    logging.error("%s", e)
    print(f"fit_mocap2d: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main)
