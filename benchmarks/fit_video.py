r"""Temporal fitting benchmark: synthetic 2D tracks of mocap windows fitted three ways (+ a network).

  python -m benchmarks.fit_video --prior_workdir=W --dynamics_workdir=W2 \
      --mocap_dir=FOLDER --num_windows=N --out=F.json [--split=test] [--window=32] [--runlocal]
      [--regressor_workdir=W3 [--network_refine_steps=CAMERA,BODY|none]]

Scene (per window; `experiments/fit_mocap2d.py`'s scene): T = `--window` consecutive frames at
30 fps of a clip of FOLDER (`flowpose.data.mocap_windows`, every ASF/AMC clip as given, or the
clips of one CMU subject split: tune on `validation`, report on `test`), the clip's own root
motion turned by a random yaw, a random body shape (betas ~ N(0, 0.5^2)), one random static
pinhole camera at 3-6 m looking at the window's mean pelvis (focal 1000 px +-10%, 1000 x 1000),
3 px Gaussian keypoint noise, 20% of keypoints dropped, and one full occlusion of 0.5 s
(15 frames: no keypoint at all) at a random place inside the window (`--occlusion_at=random`:
at least one frame with evidence on either side), or touching its first (`start`) or last
(`end`) frame: a gap with evidence on one side only, where a fit must extrapolate.

Fitted three ways:
  per_frame  `flowpose.fitting.fit` frame by frame (flow prior, the per-frame benchmark's stages
             and 4 yaw restarts, pruned as the video job's stage 1:
             `sequence_init.RESTART_PRUNING`); occluded frames have no evidence, so their joints are linearly
             interpolated from the nearest fitted frames (what a per-frame system can do)
  smoothed   per_frame's joints filtered along time (Savitzky-Golay, 9 frames, order 2)
  dynamics   the two-stage fit: per_frame's fits (on keyframes only: the sequence config's
             `keyframe_stride`, `--keyframe_stride`) -> orientation-consistent warm starts
             (`fitting.sequence_init.hypotheses`) -> `fitting.sequence.fit_sequence` with the
             trained dynamics prior (occluded frames start interpolated, carried by the prior)
             `--regressor_workdir=W`: stage 1 is the trained network instead
             (`fitting.sequence_network`: keypoint-only evidence cropped per frame, then its
             keyframe starts refined by a per-frame fit from 2 restarts, the network's and
             yaw 0, `--network_refine_steps`; `network_sequence_steps` sequence steps)
  network    (with `--regressor_workdir`) the network alone per frame, no fitting; frames
             without evidence interpolated as per_frame's: what stage 1 starts from

Reported (camera-frame joints, 31 joints, mm): `mpjpe_mm` (root-aligned), `pa_mpjpe_mm`,
`accel_error_mm` (`metrics.accel_error`, mm/frame^2), each a dict `{per_frame, smoothed,
dynamics}`, the same restricted to occluded frames (`occluded_mpjpe_mm`,
`occluded_pa_mpjpe_mm`), `frames_per_s` (frames / fit seconds, the median of `TIMED_RUNS` runs
after the compiling one:
`per_frame`, `per_frame_keyframes` (the dynamics fit's stage 1 when it runs on keyframes),
with a network `network` (every frame) and `network_refine` (the keyframe refinement),
`sequence_stage`, and `dynamics_two_stage` = its stage 1 + the sequence stage, what the dynamics
result costs; `seconds`: the same as times) and `ratios` against the issue's targets; `F.png`
shows window 0 (truth, then each method over the truth). Bad flags stop the run before any
fitting (a network trained with another prior than --prior_workdir's too).
"""

import json
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
from scipy import signal

from benchmarks import fit_mocap2d
from benchmarks import video_scene
from experiments import fit_mocap2d as fit_mocap2d_config
from flowpose import io_utils
from flowpose.body.build import assets
from flowpose.data import mocap_windows
from flowpose.fitting import config as fit_config_lib
from flowpose.fitting import reduced_body
from flowpose.fitting import sequence
from flowpose.fitting import sequence_init
from flowpose.fitting import sequence_network
from flowpose.models import chart_residual as chart_residual_lib
from flowpose.models import dynamics_io
from flowpose.prior import io as prior_io
from flowpose.prior import registry

OCCLUSION_FRAMES = video_scene.OCCLUSION_FRAMES
OCCLUSION_AT = video_scene.OCCLUSION_AT
SAVGOL = (9, 2)        # Savitzky-Golay window length and polynomial order.
METHODS = ("per_frame", "smoothed", "dynamics")
IMAGE_SIZE = (1000, 1000)  # (H, W): the scene's images (`experiments/fit_mocap2d.py`).

# The scene and scores live in `benchmarks.video_scene` (re-exported: other benchmarks and tests
# call them through this module).
occlusion_mask = video_scene.occlusion_mask
make_windows = video_scene.make_windows
frame_joints = video_scene.frame_joints
interpolate_missing = video_scene.interpolate_missing
scores = video_scene.scores


def prepare(*, prior_workdir, dynamics_workdir, mocap_dir, num_windows, window=32, seed=0,
            split="all", runlocal=False, chart_residual="", fps=30.0, pose_scale=1.0,
            occlusion_at="random", regressor_workdir=""):
  """Loads everything and builds the synthetic windows; returns a dict of what `evaluate` needs
  (`regressor_workdir`: the network of stage 1, checked against the prior before any fit)."""
  if num_windows < 1 or window < SAVGOL[0]:  # The smoothed baseline's filter spans 9 frames.
    raise fit_mocap2d.BenchmarkInputError(
        f"--num_windows >= 1 and --window >= {SAVGOL[0]} expected, got {num_windows}, {window}")
  if occlusion_at not in OCCLUSION_AT:
    raise fit_mocap2d.BenchmarkInputError(
        f"--occlusion_at: expected one of {OCCLUSION_AT}, got {occlusion_at!r}")
  base = fit_mocap2d_config.get_config("runlocal" if runlocal else "")
  # Stage 1 prunes its restarts as the video job's does (`sequence_init.per_frame_config`).
  base.fit.restart_pruning = sequence_init.RESTART_PRUNING
  try:
    prior = registry.load("flow", prior_workdir)
    flow = prior_io.load_trained_prior(prior_workdir)[:2]  # For `warm_gaps="chart"`.
    dyn_model, dyn_params, _ = dynamics_io.load_dynamics(dynamics_workdir, prior_workdir)
    # fps < 30: the clips resampled slower and played at 30 fps (faster motion than any
    # training window: a held-out motion style on the validation subject).
    windows = mocap_windows.folder_windows(mocap_dir, window, window, fps=fps, split=split)
    residual = (chart_residual_lib.load(chart_residual) if chart_residual else
                dynamics_io.load_chart_residual(dynamics_workdir))
    predict = (sequence_network.load_network(regressor_workdir, prior_workdir)
               if regressor_workdir else None)
  except (registry.PriorRegistryError, dynamics_io.DynamicsLoadError, ValueError) as e:
    raise fit_mocap2d.BenchmarkInputError(str(e)) from e
  # pose_scale != 1: every joint angle scaled (a more extreme motion style than the training
  # subjects', off the pose prior as the test subjects are; tuning only).
  windows = windows._replace(dofs=(windows.dofs * pose_scale).astype(np.float32))
  rng = np.random.default_rng(seed)
  pick = np.sort(rng.choice(len(windows.clips), min(num_windows, len(windows.clips)),
                            replace=False))
  windows = windows._replace(**{k: getattr(windows, k)[pick] for k in
                                ("dofs", "root_orient", "root_transl", "starts")},
                             clips=[windows.clips[i] for i in pick])
  model = assets.load_cc0_model()
  body = reduced_body.make_fit_body(model, fit_mocap2d.body_rotmats_fn)
  gt = make_windows(model, windows, base.scene, rng, occlusion_at)
  logging.info("%d windows of %d frames from %s (%s)", len(pick), window, mocap_dir, split)
  return dict(base=base, prior=prior, flow=flow, dynamics=(dyn_model, dyn_params), windows=windows,
              fps=fps, pose_scale=pose_scale, occlusion_at=occlusion_at,
              model=model, body=body, gt=gt, split=split, mocap_dir=str(mocap_dir),
              prior_workdir=prior_workdir, dynamics_workdir=dynamics_workdir,
              chart_residual=residual, predict=predict, regressor_workdir=regressor_workdir,
              chart_residual_path=chart_residual or (residual and dynamics_workdir))


# Timed runs after the compiling one; their median is reported: one run of a stage swings by up
# to +-30% on 2 shared cores (session 13: 3.8 / 5.1 / 3.8 s for the same sequence stage).
TIMED_RUNS = 3


def _timed(fn, timed: bool = True):
  """`(fn(), median seconds of TIMED_RUNS calls after a first, compiling one)`; untimed: one
  call and None."""
  result = fn()
  if not timed:
    return result, None
  times = []
  for _ in range(TIMED_RUNS):
    start = time.time()
    result = fn()
    times.append(time.time() - start)
  return result, float(np.median(times))


def evaluate(setup, seq_config, frames=None, timed=True, time_per_frame=True):
  """Fits the windows three ways and scores them (module docstring).

  Args:
    setup: `prepare(...)`.
    seq_config: `sequence.default_sequence_config()` fields.
    frames: stage-1 fits to reuse (`sequence_init.FrameFits`; None: fitted here).
    timed: time each fit: the median of `TIMED_RUNS` runs after a compiling one (`_timed`).
    time_per_frame: with `timed`, stage 1 too (else it runs once: its time, compile included,
      is reported as `per_frame_with_compile`).

  Returns:
    (report dict, predictions {method: [W, T, J, 3]}, FrameFits).
  """
  base, body, prior, gt = setup["base"], setup["body"], setup["prior"], setup["gt"]
  dyn_model, dyn_params = setup["dynamics"]
  evidence = sequence.SequenceEvidence(gt["keypoints"], gt["confidence"], gt["focal"],
                                       gt["centre"])
  seconds = {}
  if frames is None:
    fit_all = lambda: sequence_init.fit_frames(base.fit, setup["model"], body, prior, evidence)
    if timed and time_per_frame:
      frames, seconds["per_frame"] = _timed(fit_all)
    else:
      start = time.time()
      frames = fit_all()
      seconds["per_frame_with_compile"] = time.time() - start
  pred = {"per_frame": frame_joints(body, frames)}
  pred["smoothed"] = signal.savgol_filter(pred["per_frame"], *SAVGOL, axis=1)
  stride = int(seq_config.get("keyframe_stride", 1))
  predict = setup.get("predict")
  methods = METHODS + (("network",) if predict else ())
  if predict:  # Stage 1 = the network (+ the refinement of its keyframe starts), timed apart.
    network, seconds["network"] = _timed(
        lambda: sequence_network.network_frames(predict, evidence, IMAGE_SIZE), timed)
    refine = tuple(seq_config.get("network_refine_steps", ()))
    key_frames = network
    if refine:
      key_frames, seconds["network_refine"] = _timed(lambda: sequence_init.fit_frames(
          sequence_network.refine_config(refine), setup["model"], body, prior, evidence, stride,
          initial=network), timed)
    pred["network"] = interpolate_missing(
        sequence_network.frame_joints(body, prior, network), network.valid)
    seq_config = sequence_network.network_sequence_config(seq_config)
  else:
    # Stage 1 of the dynamics fit on keyframes only: the same fits as the per-frame baseline's
    # there (each frame's fit is independent), timed on its own when asked.
    key_frames = sequence_init.subset_frames(
        frames, sequence_init.keyframes(frames.valid, stride)) if stride > 1 else frames
    if stride > 1 and timed and time_per_frame:
      _, seconds["per_frame_keyframes"] = _timed(lambda: sequence_init.fit_frames(
          base.fit, setup["model"], body, prior, evidence, stride))

  def sequence_stage():
    starts = sequence_init.warm_starts(seq_config, key_frames, setup.get("flow"))
    return starts, sequence.fit_sequence(
        seq_config, body, prior, evidence, dyn_model, dyn_params, initial=starts,
        chart_residual=setup.get("chart_residual"))
  (starts, result), seconds["sequence_stage"] = _timed(sequence_stage, timed)
  pred["dynamics"] = result.joints
  num, length = gt["occluded"].shape
  report = {"num_windows": num, "window": length, "mocap_dir": setup["mocap_dir"],
            "split": setup["split"], "fps": setup["fps"], "pose_scale": setup["pose_scale"],
            "occlusion_at": setup.get("occlusion_at", "random"),
            "prior_workdir": setup["prior_workdir"],
            "dynamics_workdir": setup["dynamics_workdir"],
            "chart_residual": setup.get("chart_residual_path"),
            "warm_smooth": int(seq_config.warm_smooth), "keyframe_stride": stride,
            "max_hypotheses": int(seq_config.max_hypotheses),
            "regressor_workdir": setup.get("regressor_workdir") or None,
            "stage1": "network" if predict else "per_frame_fits",
            "network_refine_steps": (list(seq_config.get("network_refine_steps", ()))
                                     if predict else None),
            "clips": sorted(set(setup["windows"].clips)), "occlusion_frames": OCCLUSION_FRAMES,
            "noise_px": base.scene.noise_px, "dropped": base.scene.occlusion_prob,
            "per_frame_restarts": list(base.fit.restart_yaws_deg),
            "per_frame_steps": [s["steps"] for s in base.fit.stages],
            "sequence_hypotheses": len(starts),
            "sequence_steps": [s["steps"] for s in seq_config.warm_stages],
            "sequence_loss_weights": dict(seq_config.loss_weights),
            "device": jax.devices()[0].device_kind}
  for name in methods:
    for key, value in scores(pred[name], gt["joints"], gt["occluded"]).items():
      report.setdefault(key, {})[name] = value
  seconds = {k: v for k, v in seconds.items() if v is not None}
  if timed:
    frames_count = num * length
    report["timed_runs"] = TIMED_RUNS
    report["frames_per_s"] = {k: frames_count / v for k, v in seconds.items()}
    report["seconds"] = dict(seconds)
    if predict:
      stage1 = seconds["network"] + seconds.get("network_refine", 0.0)
    else:
      stage1 = seconds.get("per_frame_keyframes" if stride > 1 else "per_frame")
    if stage1:  # The dynamics result needs both stages.
      report["frames_per_s"]["dynamics_two_stage"] = frames_count / (
          stage1 + seconds["sequence_stage"])
  acc, pa = report["accel_error_mm"], report["pa_mpjpe_mm"]
  report["ratios"] = {
      "accel_dynamics_vs_per_frame": acc["dynamics"] / acc["per_frame"],
      "accel_dynamics_vs_smoothed": acc["dynamics"] / acc["smoothed"],
      "pa_dynamics_vs_per_frame": pa["dynamics"] / pa["per_frame"],
      "occluded_pa_dynamics_vs_smoothed": (report["occluded_pa_mpjpe_mm"]["dynamics"] /
                                           report["occluded_pa_mpjpe_mm"]["smoothed"]),
      "target": "accel <= 0.3x per_frame and <= smoothed; PA <= 0.9x per_frame; occluded PA "
                "< smoothed; >= 100 frames/s after compile"}
  return report, pred, frames


def picture(path, pred, gt, parents, window=0, every=3):
  """PNG of one window: truth, then per-frame / smoothed / dynamics (/ network) over the truth
  (grey)."""
  from flowpose.viz import images as viz  # pylint: disable=g-import-not-at-top
  from flowpose.viz import sequence_plot  # pylint: disable=g-import-not-at-top
  rows = {"truth": gt["joints"][window]}
  rows.update({name: pred[name][window] for name in METHODS + ("network",) if name in pred})
  viz.save_png(path, sequence_plot.joint_strip(rows, parents, gt["occluded"][window], every))


def run(*, out, prior_workdir, dynamics_workdir, mocap_dir, num_windows, window=32, seed=0,
        split="all", runlocal=False, time_per_frame=True, chart_residual="", fps=30.0,
        per_frame_yaws=None, seq_overrides=None, pose_scale=1.0, occlusion_at="random",
        regressor_workdir=""):
  """Runs the benchmark and writes `out` (JSON, atomically) and `out`.png; returns the report."""
  out_path = io_utils.require_output_path(out, "--out", is_dir=False)
  setup = prepare(prior_workdir=prior_workdir, dynamics_workdir=dynamics_workdir,
                  mocap_dir=mocap_dir, num_windows=num_windows, window=window, seed=seed,
                  split=split, runlocal=runlocal, chart_residual=chart_residual, fps=fps,
                  pose_scale=pose_scale, occlusion_at=occlusion_at,
                  regressor_workdir=regressor_workdir)
  if per_frame_yaws:  # Stage 1's restarts (its cost scales with their number).
    setup["base"].fit.restart_yaws_deg = tuple(float(y) for y in per_frame_yaws)
  seq_config = sequence.default_sequence_config()
  for key, value in (seq_overrides or {}).items():  # Speed settings (None: the default).
    if key == "sequence_steps":  # Whatever stage 1 is.
      seq_config.warm_stages[0]["steps"] = value
      seq_config.network_sequence_steps = value
    else:
      seq_config[key] = value
  if runlocal:
    seq_config.warm_stages[0]["steps"] = 30
  try:
    sequence.validate_sequence_config(seq_config)
  except fit_config_lib.FitInputError as e:
    raise fit_mocap2d.BenchmarkInputError(str(e)) from e
  report, pred, _ = evaluate(setup, seq_config, time_per_frame=time_per_frame)
  text = json.dumps(report, indent=2)
  print(text)
  png = str(out_path)[:-5] + ".png" if str(out_path).endswith(".json") else f"{out_path}.png"
  picture(png, pred, setup["gt"], setup["model"].parents)
  io_utils.atomic_write(out_path, text.encode())
  return report


def refine_override(values) -> dict:
  """`{"network_refine_steps": ...}` of the `--network_refine_steps` flag ({} when unset)."""
  if values is None:
    return {}
  if [v.lower() for v in values] in (["none"], ["0"], []):
    return {"network_refine_steps": ()}
  try:
    return {"network_refine_steps": tuple(int(v) for v in values)}
  except ValueError:
    raise fit_mocap2d.BenchmarkInputError(
        f"--network_refine_steps: expected CAMERA,BODY step counts or 'none', got {values}"
    ) from None


def define_source_flags(split: str, num_windows: int, several_dynamics: bool = False):
  """The flags every video benchmark CLI shares: the trained runs and the clips' windows."""
  flags.DEFINE_string("prior_workdir", None, "Trained prior workdir.", required=True)
  if several_dynamics:
    flags.DEFINE_list("dynamics_workdirs", None, "Dynamics workdirs to compare.", required=True)
  else:
    flags.DEFINE_string("dynamics_workdir", None, "Trained dynamics workdir.", required=True)
  flags.DEFINE_string("mocap_dir", None, "Folder of ASF/AMC clips.", required=True)
  flags.DEFINE_enum("split", split, ["all", "train", "validation", "test"],
                    "CMU subject split of FOLDER's clips (tune on validation, report on test).")
  flags.DEFINE_integer("num_windows", num_windows, "Windows (>= 1).")


def define_flags():
  define_source_flags("all", 16)
  flags.DEFINE_integer("window", 32, "Frames per window (>= 9).")
  flags.DEFINE_integer("seed", 0, "Scene seed.")
  flags.DEFINE_bool("runlocal", False, "Few steps and restarts (smoke run).")
  flags.DEFINE_bool("time_per_frame", True, "Run the per-frame stage twice to time it after "
                    "compilation (else once: `per_frame_with_compile`).")
  flags.DEFINE_string("chart_residual", "", "Chart residual .npz for the `chart_dynamics` term "
                      "(default: the dynamics workdir's, if it holds one).")
  flags.DEFINE_float("fps", 30.0, "Rate the clips are resampled to, played at 30 fps.")
  flags.DEFINE_list("per_frame_yaws", None, "Stage 1's yaw restarts in degrees (default: the "
                    "per-frame benchmark's 4).")
  flags.DEFINE_integer("keyframe_stride", None, "Stage 1 on every k-th frame only (+ gap "
                       "ends; default: the sequence config's).")
  flags.DEFINE_integer("max_hypotheses", None, "Warm starts per window (default: the config's).")
  flags.DEFINE_integer("sequence_steps", None, "Steps of the warm sequence stage (default: the "
                       "config's).")
  flags.DEFINE_float("pose_scale", 1.0, "Joint angles scaled by this (> 1: off the pose prior, "
                     "as unseen subjects are; tuning only).")
  flags.DEFINE_enum("occlusion_at", "random", list(OCCLUSION_AT), "Where the 0.5 s occlusion "
                    "lies: inside the window, or touching its start or end (extrapolation).")
  flags.DEFINE_string("regressor_workdir", "", "Trained reconstruction network (issue 12) as "
                      "the dynamics fit's stage 1 (its prior must be --prior_workdir's); adds "
                      "the `network` rows.")
  flags.DEFINE_list("network_refine_steps", None, "With --regressor_workdir: (camera, body) "
                    "steps refining the network's keyframe starts; 'none' = the network alone "
                    "(default: the sequence config's).")
  flags.DEFINE_string("out", None, "Output JSON.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  try:
    run(out=f.out, prior_workdir=f.prior_workdir, dynamics_workdir=f.dynamics_workdir,
        mocap_dir=f.mocap_dir, num_windows=f.num_windows, window=f.window, seed=f.seed,
        split=f.split, runlocal=f.runlocal, time_per_frame=f.time_per_frame,
        chart_residual=f.chart_residual, fps=f.fps, per_frame_yaws=f.per_frame_yaws,
        pose_scale=f.pose_scale, occlusion_at=f.occlusion_at,
        regressor_workdir=f.regressor_workdir,
        seq_overrides={**{k: getattr(f, k) for k in ("keyframe_stride", "max_hypotheses",
                                                      "sequence_steps")
                          if getattr(f, k) is not None},
                       **refine_override(f.network_refine_steps)})
  except (fit_mocap2d.BenchmarkInputError, io_utils.OutputPathError) as e:
    print(f"fit_video: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main)
