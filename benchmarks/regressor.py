r"""The reconstruction network's regimes against fitting alone, on synthetic evidence of any clips.

  python -m benchmarks.regressor --workdir_root=DIR --mocap_dir=FOLDER --num_frames=N \
      --out=F.json [--split=all|train|validation|test] [--refine_steps=150] [--batch_size=64] \
      [--noflip_average]

`DIR` holds one trained run per regime (`bash launch/train_regressors.sh DIR`: DIR/fully,
DIR/semi, DIR/weak_2d, DIR/weak (weak_2d + self-training on its own refined fits),
DIR/weak_no_parts, DIR/weak_no_flow, DIR/self); a missing regime is reported as null.
Frames: every clip of `FOLDER` (all CMU splits merged: the folder is evaluated as given) made into
`cmu_evidence` examples by `flowpose.data.evidence` with the data config of the runs (the same
renderer, fixed-seed corruption of its eval pipeline); the first `N` frames are used. Every
regime sees the same frames: `self` (trained on BlazePose's evidence of shaded photos) too, so
its data config is only read when no other regime is there, as the rendered source with the
default corruption (`render_data_config`).

Methods (plus `untrained`: the network at initialisation, the mean body), all scored with
`flowpose.tasks.regressor.batch_errors` (mpjpe_mm and pa_mpjpe_mm on the
hip-centred COCO-17 keypoints, pve_mm on the full CC0 mesh, root-joint aligned, keypoint_px):
  <regime>       the network of DIR/<regime>, reading the evidence and its mirror image
                 (`--flip_average`, default on: the two predictions averaged,
                 `regressor_body.mean_with_mirror_image`; `untrained` reads it once)
  fit            the fitter alone (`flowpose.fitting.fit.fit`, `fitting.network_refine.fit_config`:
                 keypoints, part pixels and the mask's silhouette, 2 yaw restarts, 60 + 140 Adam
                 steps, the restarts' mean by evidence loss) with the same flow prior
  weak_refined   the weak network's output refined by `--refine_steps` fitter steps
                 (`network_refine.refine` with `refine_config`: the fit's objective plus
                 `pose_anchor`, a pull to each start's own latent; the network's starts
                 `network_refine.NETWORK_STARTS` -- its flip-averaged read and the two reads
                 averaged, or its one read with --noflip_average -- and yaw-0 and yaw-180
                 restarts, combined as the fit's)
Picture: F.png beside F.json (`picture`): a few frames' evidence, truth, the weak network, the
self network, the fit and weak_refined as hip-centred 3D keypoints seen from the camera and
from the side.
Speeds: network_frames_per_s (weak network, after compilation, batches of `--batch_size`),
fit_frames_per_s (the fitter alone on the same frames, after compilation).
"""

import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowpose import io_utils
from flowpose.fitting import fit as fitting
from flowpose.fitting import network_refine
from flowpose.fitting import reduced_body
from flowpose.models import predictor
from flowpose.models import regressor_body

REGIMES = ("fully", "semi", "weak_2d", "weak", "weak_no_parts", "weak_no_flow", "self")
METRICS = ("mpjpe_mm", "pa_mpjpe_mm", "pve_mm", "keypoint_px")
SPLITS = ("train", "validation", "test")


class BenchmarkInputError(ValueError):
  """A bad flag (the message names it)."""


def render_data_config(data_config) -> ml_collections.ConfigDict:
  """`data_config` as the rendered evidence every regime is scored on: a `self` run's detector
  source (taken as found, no simulated corruption) becomes the rendered one with the default
  corruption of `flowpose.data.evidence`; other configs are returned unchanged."""
  data_config = ml_collections.ConfigDict(data_config)
  if data_config.get("evidence_source", "render") != "detector":
    return data_config
  from flowpose.data import evidence  # pylint: disable=g-import-not-at-top
  out = evidence.default_config()
  for field in ("manual_dir", "data_dir", "skip_bad_files", "resolution", "stride",
                "views_per_pose", "train_split", "eval_split", "shuffle_buffer",
                "labelled_fraction", "num_part_pixels", "eval_seed"):
    out[field] = data_config[field]
  return out


def load_frames(data_config, mocap_dir: str, num_frames: int, batch_size: int,
                split: str = "all") -> dict:
  """`{field: [n, ...]}` numpy: the first `num_frames` evidence examples of `mocap_dir` (its
  `split`, or every split in the order train, validation, test)."""
  from flowpose.data import evidence  # pylint: disable=g-import-not-at-top
  from flowpose.tasks import regressor as task  # pylint: disable=g-import-not-at-top
  data_config = ml_collections.ConfigDict(data_config)
  for field in ("manual_dir", "manual_dirs"):
    if field in data_config:
      data_config[field] = mocap_dir if field == "manual_dir" else (mocap_dir,)
  chunks, count = [], 0
  for name in SPLITS if split == "all" else (split,):
    try:
      dataset = evidence.eval_dataset(data_config, name, batch_size)
    except ValueError as e:  # A folder without clips of this split.
      logging.info("%s: no %s frames (%s)", mocap_dir, name, e)
      continue
    for batch in task.select_fields(dataset).as_numpy_iterator():
      keep = batch["weight"] > 0
      chunks.append({k: v[keep] for k, v in batch.items()})
      count += int(keep.sum())
      if count >= num_frames:
        break
    if count >= num_frames:
      break
  if not count:
    raise BenchmarkInputError(f"--mocap_dir: {mocap_dir} gave no evidence frames")
  frames = {k: np.concatenate([c[k] for c in chunks])[:num_frames] for k in chunks[0]}
  logging.info("%d frames from %s", len(frames["weight"]), mocap_dir)
  return frames


def _batches(frames: dict, batch_size: int):
  """Fixed-size batches (the last padded with weight 0)."""
  num = len(frames["weight"])
  for start in range(0, num, batch_size):
    batch = network_refine.pad_rows({k: v[start:start + batch_size] for k, v in frames.items()},
                                    batch_size)
    batch["weight"][num - start:] = 0.0  # The padding rows (none if num - start >= batch_size).
    yield batch


def _mean_errors(per_batch: list, weights: list) -> dict:
  w = np.concatenate(weights)
  return {k: float(np.sum(np.concatenate([e[k] for e in per_batch]) * w) / np.sum(w))
          for k in METRICS}


def run_network(workdir: str, frames: dict, batch_size: int, flip_average: bool = True):
  """(errors, frames/s after compilation, raw outputs) of one regime's network
  (`flip_average`: `predict_batch`'s test-time flip averaging)."""
  from flowpose.tasks import regressor as task  # pylint: disable=g-import-not-at-top
  config, context, params = predictor.load_params(workdir)
  config.model.prior_workdir = os.path.join(workdir, predictor.PRIOR_DIR)
  predict = jax.jit(lambda p, b: task.predict_batch(p, b, config, flip_average=flip_average))
  errors = jax.jit(lambda out, b: task.batch_errors(out, b, context.model))
  per_batch, weights, outputs, seconds = [], [], [], 0.0
  for i, batch in enumerate(_batches(frames, batch_size)):
    if i == 0:
      jax.block_until_ready(predict(params, batch))  # Compile outside the timing.
    start = time.time()
    out = jax.block_until_ready(predict(params, batch))
    seconds += time.time() - start
    per_batch.append(jax.device_get(errors(out, batch)))
    weights.append(batch["weight"])
    outputs.append(jax.device_get({k: out[k] for k in network_refine.NETWORK_VARIABLES +
                                   ("keypoints3d",)}))
  outputs = {k: np.concatenate([o[k] for o in outputs])[:len(frames["weight"])]
             for k in outputs[0]}
  return _mean_errors(per_batch, weights), len(frames["weight"]) / seconds, outputs, context


def run_untrained(workdir: str, frames: dict, batch_size: int) -> dict:
  """Errors of the network of `workdir`'s config at its initialisation (seed 0): the mean
  body at z = 0, facing the camera, at the start scale -- the floor a trained network must
  beat."""
  from flowpose.tasks import regressor as task  # pylint: disable=g-import-not-at-top
  config, context, _ = predictor.load_params(workdir)
  config.model.prior_workdir = os.path.join(workdir, predictor.PRIOR_DIR)
  config.model.init_from = ""  # The floor is the random initialisation, whatever the run began at.
  first = next(_batches(frames, batch_size))
  params = task.init(config, jax.random.key(0), first)
  predict = jax.jit(lambda p, b: task.predict_batch(p, b, config))
  errors = jax.jit(lambda out, b: task.batch_errors(out, b, context.model))
  per_batch, weights = [], []
  for batch in _batches(frames, batch_size):
    per_batch.append(jax.device_get(errors(predict(params, batch), batch)))
    weights.append(batch["weight"])
  return _mean_errors(per_batch, weights)


def fit_errors(context, result: fitting.FitResult, frames: dict, batch_size: int,
               return_keypoints: bool = False):
  """`batch_errors` of a fit (its DOFs, orientation, shape and translation); with
  `return_keypoints`, also its camera-frame 3D keypoints `[n, 17, 3]`."""
  from flowpose.tasks import regressor as task  # pylint: disable=g-import-not-at-top
  from flowpose.geometry import camera  # pylint: disable=g-import-not-at-top
  num, r = len(frames["weight"]), context.resolution
  fitted = {"dofs": result.pose_dofs, "rotmats": result.rotmats, "betas": result.betas,
            "transl": result.transl, "root_rotmat": result.rotmats[:, 0]}

  @jax.jit
  def errors(out, batch):
    points = regressor_body.posed(context, out["dofs"], out["root_rotmat"], out["betas"],
                                  out["transl"])
    focal = jnp.stack([batch["focal"]] * 2, -1)
    out = {**out, "keypoints3d": points["keypoints"], "keypoints2d": camera.perspective_project(
        points["keypoints"], focal, jnp.full(focal.shape, r / 2.0))}
    return task.batch_errors(out, batch, context.model), out["keypoints3d"]

  per_batch, weights, keypoints3d = [], [], []
  for start, batch in zip(range(0, num, batch_size), _batches(frames, batch_size)):
    out = network_refine.pad_rows({k: v[start:start + batch_size] for k, v in fitted.items()},
                                  batch_size)
    errs, points = jax.device_get(errors(out, batch))
    per_batch.append(errs)
    keypoints3d.append(points)
    weights.append(batch["weight"])
  if return_keypoints:
    return _mean_errors(per_batch, weights), np.concatenate(keypoints3d)[:num]
  return _mean_errors(per_batch, weights)


def picture(path: str, frames: dict, methods: dict, num: int = 6) -> None:
  """PNG: for `num` frames, the evidence crop and, per method (`{name: keypoints3d [n, 17, 3]}`,
  truth first), the hip-centred 3D keypoints seen from the camera (left) and from the side
  (right, orthographic), with that frame's PA-MPJPE in the caption."""
  from flowpose import metrics  # pylint: disable=g-import-not-at-top
  from flowpose.viz import images  # pylint: disable=g-import-not-at-top
  r = frames["part_map"].shape[-1]
  palette = images.part_palette(int(frames["part_map"].max()) + 1)
  palette[0] = 255
  tiles, captions = [], []
  truth = frames["joints3d"]
  for i in np.linspace(0, len(truth) - 1, num).astype(int):
    crop = palette[frames["part_map"][i]].astype(np.uint8)
    crop = images.draw_keypoints(crop, frames["keypoints"][i],
                                 visible=frames["confidence"][i] > 0, radius=1.0, width=1)
    tiles.append(np.asarray(images.to_uint8_rgb(crop)).repeat(2, 0).repeat(2, 1))
    captions.append(f"frame {i} evidence")
    for name, points in (("truth", truth), *methods.items()):
      centred = np.asarray(reduced_body.hip_centred(jnp.asarray(points[i])))
      canvas = np.full((2 * r, 4 * r, 3), 255, np.uint8)
      scale = 0.8 * r / max(np.abs(centred[:, :2]).max(), np.abs(centred[:, 1:]).max(), 1e-3)
      front = centred[:, :2] * scale + [r, r]
      side = centred[:, [2, 1]] * scale + [3 * r, r]
      canvas = images.draw_keypoints(canvas, front, radius=2.0)
      canvas = images.draw_keypoints(canvas, side, radius=2.0)
      error = "" if name == "truth" else (
          f" {float(metrics.pa_mpjpe(points[i][None], truth[i][None])[0]):.0f} mm")
      tiles.append(canvas)
      captions.append(f"{name}{error}")
  images.save_png(path, images.image_grid(tiles, captions, num_cols=2 + len(methods)))


def run(workdir_root: str, mocap_dir: str, num_frames: int, out: str, batch_size: int = 64,
        refine_steps: int = 150, split: str = "all", flip_average: bool = True) -> dict:
  """Runs the benchmark (module docstring) and writes `out` atomically; returns the report."""
  out_path = io_utils.require_output_path(out, "--out", is_dir=False)
  if not isinstance(num_frames, int) or num_frames < 1:
    raise BenchmarkInputError(f"--num_frames: expected an int >= 1, got {num_frames!r}")
  if split not in SPLITS + ("all",):
    raise BenchmarkInputError(f"--split: expected one of {SPLITS + ('all',)}, got {split!r}")
  if not os.path.isdir(mocap_dir):
    raise BenchmarkInputError(f"--mocap_dir: {mocap_dir} is not a folder")
  present = [r for r in REGIMES if os.path.isfile(
      os.path.join(workdir_root, r, predictor.PARAMS_FILE))]
  if not present:
    raise BenchmarkInputError(f"--workdir_root: no trained regime under {workdir_root} "
                              f"(expected {'/'.join(REGIMES)}/{predictor.PARAMS_FILE}; "
                              "bash launch/train_regressors.sh DIR)")
  reference = os.path.join(workdir_root, "weak" if "weak" in present else present[0])
  config, context, _ = predictor.load_params(reference)
  frames = load_frames(render_data_config(config.data), mocap_dir, num_frames, batch_size,
                       split)
  report = {"workdir_root": workdir_root, "mocap_dir": mocap_dir, "split": split,
            "num_frames": len(frames["weight"]), "device": jax.devices()[0].device_kind,
            "flip_average": bool(flip_average),
            "notes": [], **{k: {} for k in METRICS}}

  def record(name, errors):
    for key in METRICS:
      report[key][name] = None if errors is None else errors[key]
    if errors is not None:
      logging.info("%s: PA-MPJPE %.1f mm, MPJPE %.1f mm, PVE %.1f mm", name,
                   errors["pa_mpjpe_mm"], errors["mpjpe_mm"], errors["pve_mm"])

  weak_out, self_out = None, None
  for regime in REGIMES:
    if regime not in present:
      record(regime, None)
      continue
    errors, speed, outputs, _ = run_network(os.path.join(workdir_root, regime), frames,
                                            batch_size, flip_average)
    record(regime, errors)
    if regime == "self":
      self_out = outputs
    if regime == "weak" or (weak_out is None and regime == present[-1]):
      weak_out, report["network_frames_per_s"] = outputs, speed
      report["network_regime"] = regime

  record("untrained", run_untrained(reference, frames, batch_size))

  # Fitting alone, with the runs' flow prior, on the same evidence (crop frame).
  evidence = network_refine.crop_evidence(frames, context.resolution)
  image_size = (context.resolution, context.resolution)
  config_fit = network_refine.fit_config()
  mask = network_refine.mask_evidence(frames, config_fit.num_mask_pixels)
  fitting.fit(config_fit, context.model, context.body, context.prior,
              jax.tree.map(lambda x: x[:batch_size], evidence), image_size,
              mask=jax.tree.map(lambda x: x[:batch_size], mask))  # Compile.
  start = time.time()
  result = fitting.fit(config_fit, context.model, context.body, context.prior, evidence,
                       image_size, mask=mask)
  report["fit_frames_per_s"] = len(frames["weight"]) / (time.time() - start)
  fit_result, fit_points = fit_errors(context, result, frames, batch_size, True)
  record("fit", fit_result)
  shown = {}
  if weak_out is not None:
    shown[report["network_regime"]] = weak_out["keypoints3d"]
  if self_out is not None and report["network_regime"] != "self":
    shown["self"] = self_out["keypoints3d"]
  shown["fit"] = fit_points

  # Network + refinement.
  if weak_out is not None:
    starts = weak_out  # Without flip averaging: the network's one read.
    if flip_average:
      _, weak_context, weak_params = predictor.load_params(
          os.path.join(workdir_root, report["network_regime"]))
      starts = network_refine.network_starts(weak_context, weak_params, frames, batch_size)
    report["refine_starts"] = list(network_refine.NETWORK_STARTS if flip_average else ("read",))
    refined = network_refine.refine(context, frames, starts,
                                    network_refine.refine_config(refine_steps))
    refined_errors, shown["weak_refined"] = fit_errors(context, refined, frames, batch_size,
                                                       True)
    record("weak_refined", refined_errors)
  else:
    record("weak_refined", None)
    report["notes"].append("weak_refined: flowpose.fitting.fit.fit has no `initial=` yet")
  if report.get("network_frames_per_s") and report["fit_frames_per_s"]:
    report["network_over_fit_speed"] = (report["network_frames_per_s"] /
                                        report["fit_frames_per_s"])
  picture_path = os.path.splitext(str(out_path))[0] + ".png"
  picture(picture_path, frames, shown)
  report["picture"] = picture_path
  io_utils.atomic_write(out_path, json.dumps(report, indent=2).encode())
  logging.info("Wrote %s", out_path)
  return report


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The CLI's flags, defined only when run as a program: tests import `run` beside other CLI
  modules (launch.detect also defines --out), and absl refuses a flag defined twice."""
  flags.DEFINE_string("workdir_root", None, "Folder with one trained run per regime.")
  flags.DEFINE_string("mocap_dir", None, "Folder of mocap clips (ASF/AMC) to evaluate.")
  flags.DEFINE_integer("num_frames", 256, "Frames to evaluate.")
  flags.DEFINE_string("out", None, "Output JSON.")
  flags.DEFINE_integer("batch_size", 64, "Network batch size.")
  flags.DEFINE_integer("refine_steps", 150, "Fitter steps of weak_refined.")
  flags.DEFINE_bool("flip_average", True, "Networks read the evidence and its mirror image "
                    "and average the two predictions (regressor_body.network_decode).")
  flags.DEFINE_string("split", "all", "CMU split of --mocap_dir's clips to use, or all "
                      "(the folder as given).")


def main(argv):
  del argv
  try:
    run(FLAGS.workdir_root, FLAGS.mocap_dir, FLAGS.num_frames, FLAGS.out, FLAGS.batch_size,
        FLAGS.refine_steps, FLAGS.split, FLAGS.flip_average)
  except (BenchmarkInputError, io_utils.OutputPathError, predictor.RegressorLoadError) as e:
    print(f"benchmarks.regressor: {e}")
    return 1
  return 0


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["workdir_root", "mocap_dir", "out"])
  app.run(main)
