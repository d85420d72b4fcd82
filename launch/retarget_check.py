r"""Verifies the CMU -> CC0 body retargeting over every frame of every clip.

  python -m launch.retarget_check --cmu_dir ../shared/data/cmu --out_dir /tmp/retarget_check

For every frame, each posed body-model bone (joint j -> its tail = its child joint, jitted FK in
float32, through the dataset's DOF chart) is compared with the same bone of the CMU skeleton's own
float64 FK; the angle between them is collected per bone. Writes into `--out_dir`:
  retarget_check.json  per-bone median / 95th percentile / max angle (deg), per subject too;
  retarget_check.md    the same as a Markdown table;
  retarget_strip.png   posed CC0 mesh (left side blue, right side orange, parts shaded) beside
                       the CMU skeleton (line drawing, same colours, same camera), for frames of a
                       walk, a jump and a dance, seen from the front of the body (not mirrored:
                       the body's left is on the image's right).
Treatments (see `flowpose.data.retarget`): limb bones are swung onto CMU's rest pose (error ~0);
trunk, hip-joint and clavicle bones keep the model's rest geometry (error = the constant angle
between the two rest skeletons, per subject); finger/thumb DOFs are not captured by CMU and set
to zero (compared with CMU zeroed; `raw_*` columns compare with the recorded values).

`--out_dir` is checked for writability before the measurement; the three files are written at
the end, each atomically. A malformed clip stops the run with its path and exit status 2.
"""

import json
import pathlib
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax.numpy as jnp
import numpy as np

from flowpose import io_utils
from flowpose.evidence import raster as render
from flowpose.viz import images as viz
from flowpose.data import asf_amc
from flowpose.data import cmu_skeleton
from flowpose.data import motion as motion_lib
from flowpose.data import retarget
from flowpose.data import retarget_errors
from flowpose.data.motion import MocapFormatError
from flowpose.data.tfds.cmu_mocap import splits

_CMU_DIR = flags.DEFINE_string("cmu_dir", "../shared/data/cmu", "CMU ASF/AMC folder.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
_METHOD = flags.DEFINE_enum("method", "swing", ["swing", "minimal"], "Rest alignment method.")
_SIZE = flags.DEFINE_integer("size", 240, "Pixels per strip panel.")
_FRAMES = flags.DEFINE_integer("frames_per_clip", 4, "Frames per clip in the strip.")

LEFT_SHADES = ((30, 110, 230), (90, 150, 240), (20, 70, 170), (140, 185, 245))
RIGHT_SHADES = ((240, 120, 20), (250, 165, 80), (190, 85, 10), (250, 200, 140))
MID_SHADES = ((60, 170, 80), (150, 150, 150), (110, 200, 120), (90, 120, 100), (190, 190, 170))


def _treatment(bone: str) -> str:
  if bone == "root":
    return "root (no CMU bone)"
  if bone in cmu_skeleton.UNCAPTURED_BONES:
    return "uncaptured, swing-aligned"
  if bone in retarget.ALIGNED_BONES:
    return "swing-aligned limb"
  return "model rest kept"


def _stats(values: np.ndarray) -> dict:
  return {"median_deg": float(np.median(values)), "p95_deg": float(np.percentile(values, 95)),
          "max_deg": float(np.max(values))}


def measure(cmu_dir, method: str = "swing"):
  """Bone direction errors over all clips -> (report dict, clips, motions by clip name)."""
  alignment = retarget.default_alignment(method)
  clips = splits.list_clips(cmu_dir)
  errors, raw, subjects = [], [], []
  start = time.time()
  for clip in clips:
    motion = asf_amc.load_asf_amc(clip.amc_path, fps=clip.fps)
    errors.append(retarget_errors.bone_direction_errors(motion, alignment))
    # Against the recorded finger/thumb values (differs from `errors` on those bones only).
    raw.append(retarget_errors.bone_direction_errors(motion, alignment, zero_uncaptured=False))
    subjects.append(np.full(motion.num_frames, clip.subject))
  seconds = time.time() - start
  errors, raw, subjects = np.concatenate(errors), np.concatenate(raw), np.concatenate(subjects)
  bones = {}
  for j, bone in enumerate(retarget.BONES):
    if j == 0:
      continue
    entry = {"model_joint": cmu_skeleton.ASF_TO_MB[bone], "treatment": _treatment(bone),
             **_stats(errors[:, j])}
    if bone in cmu_skeleton.UNCAPTURED_BONES:
      entry.update({f"raw_{k}": v for k, v in _stats(raw[:, j]).items()})
    per_subject = [errors[subjects == s, j] for s in np.unique(subjects)]
    entry["per_subject_median_deg"] = {
        str(s): float(np.median(e)) for s, e in zip(np.unique(subjects), per_subject)}
    # Pose-dependent part of the error: a constant rest offset per subject does not count.
    entry["within_subject_spread_deg"] = float(max(np.ptp(e) for e in per_subject))
    bones[bone] = entry
  limbs = [b for b in retarget.ALIGNED_BONES if b not in cmu_skeleton.UNCAPTURED_BONES]
  kept = [b for b in retarget.BONES[1:] if b not in retarget.ALIGNED_BONES]
  report = {
      "method": method, "clips": len(clips), "frames": int(len(errors)),
      "seconds": round(seconds, 1),
      "summary": {
          "captured_limbs_max_p95_deg": max(bones[b]["p95_deg"] for b in limbs),
          "captured_limbs_max_deg": max(bones[b]["max_deg"] for b in limbs),
          "uncaptured_max_deg": max(bones[b]["max_deg"] for b in cmu_skeleton.UNCAPTURED_BONES),
          "captured_max_within_subject_spread_deg": max(
              bones[b]["within_subject_spread_deg"] for b in bones
              if b not in cmu_skeleton.UNCAPTURED_BONES),
          "kept_rest_offsets_deg": {b: [round(min(bones[b]["per_subject_median_deg"].values()), 1),
                                        round(max(bones[b]["per_subject_median_deg"].values()), 1)]
                                    for b in kept},
      },
      "bones": bones,
  }
  return report, clips


def markdown(report: dict) -> str:
  lines = [f"# Retarget check ({report['method']}): {report['clips']} clips, "
           f"{report['frames']:,} frames, {report['seconds']} s", "",
           "Angle (deg) between each posed CC0 bone and the CMU skeleton's bone, every frame.", "",
           "| CMU bone | model joint | treatment | median | p95 | max | within-subject spread |"
           " raw median (CMU values) |",
           "|---|---|---|---|---|---|---|---|"]
  for bone, e in report["bones"].items():
    raw = f"{e['raw_median_deg']:.2f}" if "raw_median_deg" in e else ""
    lines.append(f"| {bone} | {e['model_joint']} | {e['treatment']} | {e['median_deg']:.4f} | "
                 f"{e['p95_deg']:.4f} | {e['max_deg']:.4f} | {e['within_subject_spread_deg']:.4f} |"
                 f" {raw} |")
  s = report["summary"]
  lines += ["", f"Captured limbs: max p95 {s['captured_limbs_max_p95_deg']:.3f} deg, max "
            f"{s['captured_limbs_max_deg']:.3f} deg (feet: per-subject foot direction vs the "
            "canonical one). Pose-dependent error (largest within-subject spread, captured "
            f"bones): {s['captured_max_within_subject_spread_deg']:.4f} deg. Bones keeping the "
            "model's rest geometry differ from CMU by a constant per subject (range of subject "
            "medians, deg): " + ", ".join(f"{b} {lo}-{hi}" for b, (lo, hi) in
                                          s["kept_rest_offsets_deg"].items()) + "."]
  return "\n".join(lines) + "\n"


def _side_palette(part_names):
  colors, counts = [], {"l": 0, "r": 0, "m": 0}
  for name in part_names:
    side = "l" if name.startswith("left") else "r" if name.startswith("right") else "m"
    shades = {"l": LEFT_SHADES, "r": RIGHT_SHADES, "m": MID_SHADES}[side]
    colors.append(shades[counts[side] % len(shades)])
    counts[side] += 1
  return np.array(colors, np.uint8)


def _pick(clips, want):
  for clip in clips:
    if want(clip.description.lower()):
      return clip
  return None


def render_strip(clips, method="swing", size=240, frames_per_clip=4) -> np.ndarray:
  """`[H, W, 3]` uint8: for a walk, a jump and a dance, mesh | CMU skeleton for a few frames."""
  from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
  from flowpose.body import model as body_model  # pylint: disable=g-import-not-at-top
  model = assets.load_cc0_model()
  alignment = retarget.default_alignment(method)
  palette = _side_palette(model.part_names)
  faces, labels = np.asarray(model.faces), np.asarray(model.part_labels)
  picks = [("walk", _pick(clips, lambda d: d == "walk")),
           ("jump", _pick(clips, lambda d: d in ("jump", "high jump"))),
           ("dance", _pick(clips, lambda d: d.startswith("dance")))]
  cells, captions = [], []
  for kind, clip in picks:
    if clip is None:
      logging.warning("no %s clip in index.csv", kind)
      continue
    motion = asf_amc.load_asf_amc(clip.amc_path, fps=clip.fps)
    body = retarget.motion_to_body(motion, alignment)
    glob, pos = motion_lib.forward_kinematics(motion)
    ends = motion_lib.end_site_positions(motion, glob, pos)
    names = [cmu_skeleton.ASF_TO_MB[n] for n in motion.skeleton.joint_names]
    # Skip the clip ends (some clips start in a calibration T-pose).
    for t in np.round(np.linspace(0.15, 0.85, frames_per_clip) * (motion.num_frames - 1)
                      ).astype(int):
      out = body_model.forward(model, jnp.asarray(body["rotmats"][t], jnp.float32),
                               jnp.zeros(model.num_betas), jnp.asarray(body["root_transl"][t]))
      verts = np.asarray(out.vertices)
      points = np.concatenate([pos[t]] + [ends[j][t][None] for j in sorted(ends)])
      parents = list(motion.skeleton.parents) + sorted(ends)
      point_names = names + [names[j] for j in sorted(ends)]
      facing = glob[t, 0] @ np.array([0.0, 0.0, 1.0])
      facing[1] = 0.0
      view = facing / max(np.linalg.norm(facing), 1e-6) + np.array([0.0, 0.25, 0.0])
      camera = render.fit_camera(np.concatenate([verts, points]), view, (size, size))
      mesh = render.render(verts, faces, camera, (size, size), vertex_labels=labels,
                           label_colors=palette, smooth=True).rgb
      uv, _ = render.project(points, camera)
      skeleton = viz.draw_skeleton(np.full((size, size, 3), 255, np.uint8), uv, parents,
                                   names=point_names, radius=2.5, width=2)
      cells += [mesh, skeleton]
      captions += [f"{clip.name} {kind} f{t}: CC0", f"CMU skeleton f{t}"]
  return viz.image_grid(cells, captions, num_cols=2 * frames_per_clip, font_size=12)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Checked before the minutes of measuring; the three files are written at the end, each
  # atomically, so a failure or a kill leaves the previous outputs (or none), never half a file.
  out_dir = io_utils.require_output_path(_OUT_DIR.value, "--out_dir")
  if not pathlib.Path(_CMU_DIR.value).is_dir() or not splits.list_clips(_CMU_DIR.value):
    raise app.UsageError(f"--cmu_dir={_CMU_DIR.value!r}: expected a folder of SS_CC.amc[.gz] "
                         "clips with SS.asf[.gz] beside them")
  try:
    report, clips = measure(_CMU_DIR.value, _METHOD.value)
  except MocapFormatError as e:
    logging.error("%s", e)
    print(f"retarget_check: {e}", file=sys.stderr)
    return 2
  table = markdown(report)
  strip = render_strip(clips, _METHOD.value, _SIZE.value, _FRAMES.value)
  viz.save_png(out_dir / "retarget_strip.png", strip)  # Atomic, as the two files below.
  io_utils.atomic_write(out_dir / "retarget_check.md", table.encode())
  io_utils.atomic_write(out_dir / "retarget_check.json", json.dumps(report, indent=1).encode())
  print(table)
  print(f"wrote {out_dir / 'retarget_check.json'}, {out_dir / 'retarget_check.md'}, "
        f"{out_dir / 'retarget_strip.png'}")
  return 0


if __name__ == "__main__":
  app.run(main)
