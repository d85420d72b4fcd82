r"""Tunes the sequence fit's weights on validation windows (`benchmarks.fit_video`'s scene).

  python -m benchmarks.tune_video --prior_workdir=P --dynamics_workdirs=W2[,W3] \
      --mocap_dir=FOLDER --split=validation --num_windows=8 --out=F.json

The per-frame fits (stage 1) are computed once and reused; then every dynamics model of
`--dynamics_workdirs` and every variant of `VARIANTS` (overrides of
`sequence.default_sequence_config()`: loss weights and the warm stage's steps/lr, all traced,
so one compile per model) runs the sequence stage and is scored like `fit_video` (PA-MPJPE,
accel error, occluded PA-MPJPE). Choose on validation; report on test with `fit_video`.
"""

import json
import sys

from absl import app
from absl import flags
from absl import logging

from benchmarks import fit_mocap2d
from benchmarks import fit_video
from flowpose import io_utils
from flowpose.fitting import sequence
from flowpose.models import dynamics as dynamics_lib
from flowpose.models import dynamics_io

# name -> (loss weight overrides, warm stage overrides[, config field overrides]).
# Session 5 (results/video/tune_val_{diag,full}.json) chose dynamics 0.2, lr 0.05, 150 steps and
# no joint_smooth; session 6 compares motion priors that do not depend on the subject's style:
# `chart_dynamics` (constant velocity in the pose chart, `models.chart_residual`) alone or
# with the latent model, and smoothed warm starts.
# Every variant is an override of session 5's config (`SESSION5`: the rows of
# results/video/tune_val_s6.json were measured so); "chosen" was session 6's default.
SESSION5 = ({"dynamics": 0.2, "joint_smooth": 0.0}, {"pose_prior_frames": "all"})
VARIANTS = {
    "default": ({}, {}),
    "chosen": ({"dynamics": 0.5, "joint_smooth": 1e2}, {}, {"pose_prior_frames": "evidence"}),
    "chosen_chart_gaps": ({"dynamics": 0.5, "joint_smooth": 1e2}, {},
                          {"pose_prior_frames": "evidence", "warm_gaps": "chart"}),
    "dyn0.05": ({"dynamics": 0.05}, {}),
    "smooth9": ({}, {}, {"warm_smooth": 9}),
    "chart0.2": ({"chart_dynamics": 0.2}, {}),
    "chart0.05_dyn0": ({"dynamics": 0.0, "chart_dynamics": 0.05}, {}),
    "chart0.2_dyn0": ({"dynamics": 0.0, "chart_dynamics": 0.2}, {}),
    "chart1_dyn0": ({"dynamics": 0.0, "chart_dynamics": 1.0}, {}),
    "chart0.2_dyn0_smooth9": ({"dynamics": 0.0, "chart_dynamics": 0.2}, {},
                              {"warm_smooth": 9}),
    "chart0.2_dyn0.05": ({"dynamics": 0.05, "chart_dynamics": 0.2}, {}),
    "chart0.2_dyn0_steps80": ({"dynamics": 0.0, "chart_dynamics": 0.2}, {"steps": 80}),
    "prior_evidence": ({}, {}, {"pose_prior_frames": "evidence"}),
    "prior_evidence_smooth9": ({}, {}, {"pose_prior_frames": "evidence", "warm_smooth": 9}),
    "chart0.2_prior_evidence": ({"chart_dynamics": 0.2}, {},
                                {"pose_prior_frames": "evidence"}),
    "chart0.05": ({"chart_dynamics": 0.05}, {}),
    "cv": ({}, {}, {"latent": "cv"}),
    "cv_prior_evidence": ({}, {}, {"latent": "cv", "pose_prior_frames": "evidence"}),
    "cv_dyn0.05": ({"dynamics": 0.05}, {}, {"latent": "cv"}),
    "cv_dyn0.5": ({"dynamics": 0.5}, {}, {"latent": "cv"}),
    "dyn0.5": ({"dynamics": 0.5}, {}),
    "joint1e2": ({"joint_smooth": 1e2}, {}),
    "joint1e3": ({"joint_smooth": 1e3}, {}),
    "prior_evidence_joint1e3": ({"joint_smooth": 1e3}, {}, {"pose_prior_frames": "evidence"}),
    "dyn0.5_prior_evidence": ({"dynamics": 0.5}, {}, {"pose_prior_frames": "evidence"}),
    "chart0.02": ({"chart_dynamics": 0.02}, {}),
    "chart0.05_prior_evidence": ({"chart_dynamics": 0.05}, {}, {"pose_prior_frames": "evidence"}),
    "chart0.05_joint1e3": ({"chart_dynamics": 0.05, "joint_smooth": 1e3}, {}),
    "dyn0.5_joint1e2": ({"dynamics": 0.5, "joint_smooth": 1e2}, {}),
    "dyn0.5_joint1e3": ({"dynamics": 0.5, "joint_smooth": 1e3}, {}),
    "dyn0.5_joint1e2_prior_evidence": ({"dynamics": 0.5, "joint_smooth": 1e2}, {},
                                       {"pose_prior_frames": "evidence"}),
}
# Session 7: gap terms over session 6's choice (`CHOSEN`; results/video/tune_val_s7*.json).
CHOSEN = {"dynamics": 0.5, "joint_smooth": 1e2}
VARIANTS.update({
    f"chosen_{name}": ({**CHOSEN, **weights}, {}, {"pose_prior_frames": "evidence"})
    for name, weights in {
        "gapsmooth1e3": {"gap_smooth": 1e3}, "gapsmooth1e4": {"gap_smooth": 1e4},
        "gapsmooth1e5": {"gap_smooth": 1e5},
        "back0.5": {"dynamics_backward": 0.5},
        "sym0.25": {"dynamics": 0.25, "dynamics_backward": 0.25},
        "gapprior0.01": {"gap_prior": 0.01}, "gapprior0.05": {"gap_prior": 0.05},
        "sym0.35": {"dynamics": 0.35, "dynamics_backward": 0.35},
        "sym0.15": {"dynamics": 0.15, "dynamics_backward": 0.15},
        "sym0.25_joint3e2": {"dynamics": 0.25, "dynamics_backward": 0.25, "joint_smooth": 3e2},
        "sym0.25_gapprior0.01": {"dynamics": 0.25, "dynamics_backward": 0.25, "gap_prior": 0.01},
    }.items()})
# Speed (session 7): stage 1 on keyframes, one warm start, fewer joint steps (over sym0.25).
SYM = {**CHOSEN, "dynamics": 0.25, "dynamics_backward": 0.25}
VARIANTS.update({
    f"sym0.25_{name}": (SYM, stage, {"pose_prior_frames": "evidence", **fields})
    for name, (stage, fields) in {
        "key2": ({}, {"keyframe_stride": 2}), "key4": ({}, {"keyframe_stride": 4}),
        "hyp1": ({}, {"max_hypotheses": 1}), "steps75": ({"steps": 75}, {}),
        "key4_hyp1": ({}, {"keyframe_stride": 4, "max_hypotheses": 1}),
        "key4_hyp1_steps75": ({"steps": 75}, {"keyframe_stride": 4, "max_hypotheses": 1}),
        "key4_hyp1_steps75_lr0.1": ({"steps": 75, "lr": 0.1},
                                    {"keyframe_stride": 4, "max_hypotheses": 1}),
        "key8_hyp1": ({}, {"keyframe_stride": 8, "max_hypotheses": 1}),
        "key6_hyp1": ({}, {"keyframe_stride": 6, "max_hypotheses": 1}),
        "key4_hyp1_steps100": ({"steps": 100}, {"keyframe_stride": 4, "max_hypotheses": 1}),
    }.items()})
VARIANTS.update({
    f"sym0.25_key4_hyp1_gapvel{w}": ({**SYM, "gap_velocity": w}, {},
                                     {"pose_prior_frames": "evidence", "keyframe_stride": 4,
                                      "max_hypotheses": 1}) for w in (0.3, 1.0, 3.0, 30.0, 300.0)})
VARIANTS["chosen_key4_hyp1"] = (CHOSEN, {}, {"pose_prior_frames": "evidence",
                                             "keyframe_stride": 4, "max_hypotheses": 1})
# Session 8: on gaps open at a window's end (`--occlusion_at=end`; with `random` the gap has
# evidence on both sides, so these terms are 0 unless `open_gap_support` > 1), a hold
# (`open_gap_velocity`) or the static prior (`open_gap_prior`) over session 7's default
# (`S7`; today's default is `s7_openprior0.2`); fewer warm steps (speed).
S7 = ({**SYM, "gap_velocity": 30.0, "open_gap_prior": 0.0}, {},
      {"pose_prior_frames": "evidence", "keyframe_stride": 4, "max_hypotheses": 1})
VARIANTS["s7_default"] = S7
VARIANTS.update({f"s7_open{w:g}": ({**S7[0], "open_gap_velocity": w}, S7[1], S7[2])
                 for w in (30.0, 300.0, 3000.0, 30000.0)})
VARIANTS.update({f"s7_openprior{w:g}": ({**S7[0], "open_gap_prior": w}, S7[1], S7[2])
                 for w in (0.05, 0.2, 1.0, 5.0)})
VARIANTS.update({f"s7_openprior{w:g}_support{n}": (
    {**S7[0], "open_gap_prior": w}, S7[1], {**S7[2], "open_gap_support": n})
                 for w in (0.05, 0.2) for n in (2, 3)})
# Speed: fewer warm-stage steps at a higher rate (the step is compute-bound in the flow decode).
VARIANTS.update({f"s7_steps{n}_lr{lr:g}": (S7[0], {"steps": n, "lr": lr}, S7[2])
                 for n, lr in ((100, 0.05), (100, 0.075), (50, 0.1), (75, 0.075))})
# Session 9: stage 1 from the network (`--regressor_workdir`; `fitting.sequence_network`) over
# today's default (`NOW` = `sequence.default_sequence_config()` once SESSION5 is undone): the
# network alone or its keyframe starts refined for (camera, body) steps, and how few sequence
# steps keep the errors (speed).
NOW = ({"dynamics": 0.25, "joint_smooth": 1e2}, {}, {"pose_prior_frames": "evidence"})
VARIANTS.update({
    f"net_refine{r[0]}_{r[1]}_steps{n}" if r else f"net_alone_steps{n}": (
        NOW[0], {}, {**NOW[2], "network_refine_steps": r, "network_sequence_steps": n})
    for r in ((), (10, 40), (20, 60), (30, 100), (60, 140)) for n in (150, 100, 80, 50)})
VARIANTS.update({  # Fewer refined keyframes (every 8th frame + gap ends; the network elsewhere).
    f"net_refine60_140_key{k}_steps{n}": (
        NOW[0], {}, {**NOW[2], "network_refine_steps": (60, 140), "keyframe_stride": k,
                     "network_sequence_steps": n})
    for k in (8, 16) for n in (150, 80)})
# The same run's per-frame-fit stage 1 (today's default without a network), for comparison.
VARIANTS.update({f"fits_steps{n}": (NOW[0], {"steps": n}, {**NOW[2], "stage1": "fits"})
                 for n in (150, 100, 80)})

# Session 12: the gap pulled to the straight 3D line between its ends (`gap_chord`), with or
# without the latent step damping (`gap_velocity`, 30 by default).
VARIANTS.update({f"chord{w:g}" + ("_gapvel0" if v == 0 else ""): (
    {**NOW[0], "gap_chord": w, "gap_velocity": v}, {}, NOW[2])
                 for w in (1e3, 1e4, 1e5) for v in (30.0, 0.0)})
VARIANTS["now"] = NOW
CHORD = {**NOW[0], "gap_chord": 1e4, "gap_velocity": 0.0}
VARIANTS.update({f"chord1e4_gapvel0_{name}": ({**CHORD, **weights}, {}, NOW[2]) for name, weights in {
    "chord3e4": {"gap_chord": 3e4}, "chord1e5": {"gap_chord": 1e5},
    "dyn0": {"dynamics": 0.0, "dynamics_backward": 0.0},
    "dyn0.5": {"dynamics": 0.5, "dynamics_backward": 0.5},
    "joint1e3": {"joint_smooth": 1e3},
    "dyn0.1": {"dynamics": 0.1, "dynamics_backward": 0.1},
    "dyn0.1_joint1e3": {"dynamics": 0.1, "dynamics_backward": 0.1, "joint_smooth": 1e3},
    "dyn0.05_joint1e3": {"dynamics": 0.05, "dynamics_backward": 0.05, "joint_smooth": 1e3},
}.items()})
# Speed over session 12's default (`S12`): fewer sequence steps, sparser keyframes.
# Session 12's default pinned (150 steps, keyframes every 4th frame: session 13 changed both).
S12 = ({**CHORD, "dynamics": 0.1, "dynamics_backward": 0.1}, {"steps": 150},
       {**NOW[2], "keyframe_stride": 4})
VARIANTS.update({f"s12_{name}": (S12[0], {**S12[1], **stage}, {**S12[2], **fields})
                 for name, (stage, fields) in {
    "default": ({}, {}), "steps100": ({"steps": 100, "lr": 0.075}, {}),
    "steps75": ({"steps": 75, "lr": 0.1}, {}), "key8": ({}, {"keyframe_stride": 8}),
    "key8_steps100": ({"steps": 100, "lr": 0.075}, {"keyframe_stride": 8})}.items()})

# Session 13, speed: shorter sequence stages at the default lr and without the backward motion
# term (its MLP is ~10% of a step).
VARIANTS.update({f"s13_{name}": ({**S12[0], **weights}, {**S12[1], **stage}, {**S12[2], **fields})
                 for name, (weights, stage, fields) in {
    "steps120": ({}, {"steps": 120}, {}), "steps100": ({}, {"steps": 100}, {}),
    "steps120_lr0.06": ({}, {"steps": 120, "lr": 0.06}, {}),
    "fwd0.2": ({"dynamics": 0.2, "dynamics_backward": 0.0}, {}, {}),
    "fwd0.2_steps120": ({"dynamics": 0.2, "dynamics_backward": 0.0}, {"steps": 120}, {}),
    "key8_steps120": ({}, {"steps": 120}, {"keyframe_stride": 8}),
    "key8_steps135": ({}, {"steps": 135}, {"keyframe_stride": 8}),
    "key8_steps120_lr0.06": ({}, {"steps": 120, "lr": 0.06}, {"keyframe_stride": 8}),
    "key8_steps120_lr0.07": ({}, {"steps": 120, "lr": 0.07}, {"keyframe_stride": 8}),
    "key8_fwd0.2": ({"dynamics": 0.2, "dynamics_backward": 0.0}, {}, {"keyframe_stride": 8}),
    "key8_fwd0.2_steps135": ({"dynamics": 0.2, "dynamics_backward": 0.0}, {"steps": 135},
                             {"keyframe_stride": 8})}.items()})


def variant_config(weights: dict, stage: dict, fields: dict = None):
  """(config, latent model, stage 1) of a variant; fields["latent"] = "cv": the latent model
  without its MLP corrections (`dynamics.constant_velocity_params`); fields["stage1"] = "fits":
  per-frame fits as stage 1 even when a network is given."""
  config = sequence.default_sequence_config()
  config.loss_weights = {**dict(config.loss_weights), **SESSION5[0], **weights}
  config.warm_stages[0].update(stage)
  fields = {**SESSION5[1], **(fields or {})}
  latent = fields.pop("latent", "trained")
  stage1 = fields.pop("stage1", "network")
  config.update(fields)
  return config, latent, stage1


def _cached_frames(path, setup):
  """Stage-1 fits from `path` (a pickle of this scene's `FrameFits`), else fitted and saved."""
  import os  # pylint: disable=g-import-not-at-top
  import pickle  # pylint: disable=g-import-not-at-top
  from flowpose.fitting import sequence_init  # pylint: disable=g-import-not-at-top
  if path and os.path.isfile(path):
    with open(path, "rb") as f:
      return pickle.load(f)
  gt = setup["gt"]
  evidence = sequence.SequenceEvidence(gt["keypoints"], gt["confidence"], gt["focal"],
                                       gt["centre"])
  frames = sequence_init.fit_frames(setup["base"].fit, setup["model"], setup["body"],
                                    setup["prior"], evidence)
  frames = frames._replace(result=frames.result._replace(history=[]))
  if path:
    io_utils.atomic_write(path, pickle.dumps(frames))
  return frames


def run(*, out, prior_workdir, dynamics_workdirs, mocap_dir, split, num_windows, seed=0,
        variants=None, frames_cache="", chart_residual="", fps=30.0, pose_scale=1.0,
        occlusion_at="random", regressor_workdir=""):
  """Runs the variants (module docstring); `regressor_workdir`: stage 1 from that network."""
  out_path = io_utils.require_output_path(out, "--out", is_dir=False)
  names = list(variants or VARIANTS)
  setup = fit_video.prepare(prior_workdir=prior_workdir, dynamics_workdir=dynamics_workdirs[0],
                            mocap_dir=mocap_dir, num_windows=num_windows, seed=seed, split=split,
                            chart_residual=chart_residual, fps=fps, pose_scale=pose_scale,
                            occlusion_at=occlusion_at, regressor_workdir=regressor_workdir)
  frames, rows = _cached_frames(frames_cache, setup), []
  for workdir in dynamics_workdirs:
    try:
      model, params, _ = dynamics_io.load_dynamics(workdir, prior_workdir)
    except dynamics_io.DynamicsLoadError as e:
      raise fit_mocap2d.BenchmarkInputError(str(e)) from e
    for name in names:
      config, latent, stage1 = variant_config(*VARIANTS[name])
      setup.update(dynamics=(model, params if latent == "trained" else
                             dynamics_lib.constant_velocity_params(params)),
                   dynamics_workdir=workdir)
      report, _, frames = fit_video.evaluate(
          {**setup, "predict": setup["predict"] if stage1 == "network" else None}, config,
          frames, timed=False)
      row = {"dynamics_workdir": workdir, "variant": name,
             "stage1": report["stage1"],
             **{k: report[k] for k in ("pa_mpjpe_mm", "mpjpe_mm", "accel_error_mm",
                                       "occluded_pa_mpjpe_mm", "visible_pa_mpjpe_mm")}}
      rows.append(row)
      logging.info("%s %s: PA %.1f (per-frame %.1f), accel %.1f (smoothed %.1f), occl PA %.1f "
                   "(smoothed %.1f)", workdir, name, row["pa_mpjpe_mm"]["dynamics"],
                   row["pa_mpjpe_mm"]["per_frame"], row["accel_error_mm"]["dynamics"],
                   row["accel_error_mm"]["smoothed"], row["occluded_pa_mpjpe_mm"]["dynamics"],
                   row["occluded_pa_mpjpe_mm"]["smoothed"])
  text = json.dumps({"split": split, "mocap_dir": str(mocap_dir), "num_windows": num_windows,
                     "chart_residual": chart_residual, "fps": fps, "base": SESSION5,
                     "pose_scale": pose_scale, "occlusion_at": occlusion_at, "seed": seed,
                     "regressor_workdir": regressor_workdir or None,
                     "variants": {n: VARIANTS[n] for n in names}, "rows": rows}, indent=1)
  io_utils.atomic_write(out_path, text.encode())
  print(text)
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  unknown = [v for v in f.variants if v not in VARIANTS]
  if unknown:
    print(f"tune_video: --variants {unknown} unknown; known: {list(VARIANTS)}", file=sys.stderr)
    return 2
  try:
    run(out=f.out, prior_workdir=f.prior_workdir, dynamics_workdirs=f.dynamics_workdirs,
        mocap_dir=f.mocap_dir, split=f.split, num_windows=f.num_windows, seed=f.seed,
        variants=f.variants, frames_cache=f.frames_cache, chart_residual=f.chart_residual,
        fps=f.fps, pose_scale=f.pose_scale, occlusion_at=f.occlusion_at,
        regressor_workdir=f.regressor_workdir)
  except (fit_mocap2d.BenchmarkInputError, io_utils.OutputPathError) as e:
    print(f"tune_video: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  fit_video.define_source_flags("validation", 8, several_dynamics=True)
  flags.adopt_module_key_flags(fit_video)  # --help lists them as this CLI's own.
  flags.DEFINE_integer("seed", 0, "Scene seed.")
  flags.DEFINE_list("variants", list(VARIANTS), "Variants to run.")
  flags.DEFINE_string("frames_cache", "", "Pickle of the stage-1 fits (reused if present; "
                      "same scene flags only).")
  flags.DEFINE_string("chart_residual", "", "Chart residual .npz for `chart_dynamics` "
                      "(`launch.chart_residual`; default: the dynamics workdir's, if any).")
  flags.DEFINE_float("fps", 30.0, "Rate the clips are resampled to (played at 30 fps: < 30 = "
                     "faster motion, a held-out motion style).")
  flags.DEFINE_float("pose_scale", 1.0, "Joint angles scaled by this (> 1: a more extreme "
                     "motion style, off the pose prior as unseen subjects are).")
  flags.DEFINE_enum("occlusion_at", "random", list(fit_video.OCCLUSION_AT), "Where the "
                    "occlusion lies (`benchmarks.fit_video`): inside, or at the window's ends.")
  flags.DEFINE_string("regressor_workdir", "", "Trained reconstruction network as stage 1 "
                      "(`benchmarks.fit_video --regressor_workdir`; the net_* variants).")
  flags.DEFINE_string("out", None, "Output JSON.", required=True)
  app.run(main)
