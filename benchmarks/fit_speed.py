r"""Fitting speed: N frames x 200 steps (keypoints + pose prior), after compilation.

  python -m benchmarks.fit_speed --prior_workdir=DIR --out=results/fit_speed.json \
      [--num_frames=256] [--restarts=1] [--repeats=3] [--parts]

The frames and scene are those of `benchmarks/fit_mocap2d.py` (held-out CMU test subjects,
`experiments/fit_mocap2d.py` scene and stages: 60 + 140 Adam steps). `--restarts=R` fits every
frame from the first R yaws of the config (R = 1: one fit per frame, so `num_frames` fits;
the accuracy benchmark uses 4). The first fit compiles; the JSON records it (`first_fit_s`,
`compile_s` = first fit - median of the others), the median of `--repeats` compiled fits
(`fit_s`), optimiser steps per second over the batch (`steps_per_s` = 200 / fit_s) and person-
steps per second. `--parts` adds part evidence (rendered label maps, z-buffer visibility) to the
same frames; part maps are built before the clock starts.
"""

import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from benchmarks import fit_mocap2d
from experiments import fit_mocap2d as experiment
from flowpose import io_utils
from flowpose.body.build import assets
from flowpose.fitting import fit as fitting
from flowpose.fitting import reduced_body
from flowpose.fitting import xla_options

_OUT = flags.DEFINE_string("out", None, "Output JSON.", required=True)
_PRIOR_WORKDIR = flags.DEFINE_string("prior_workdir", None, "Trained prior workdir.",
                                     required=True)
_PRIOR = flags.DEFINE_string("prior", "flow", "Registry prior.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 256, "Frames fitted at once.", lower_bound=1)
_RESTARTS = flags.DEFINE_integer("restarts", 1, "Yaws per frame (first R of the config).",
                                 lower_bound=1, upper_bound=4)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Compiled fits timed (median).", lower_bound=1)
_PARTS = flags.DEFINE_bool("parts", False, "Add part evidence and z-buffer visibility.")


def run(prior_workdir, num_frames, restarts, repeats, parts=False, prior_name="flow"):
  """Times the fits; returns the report dict."""
  load_before = list(os.getloadavg())
  config = experiment.get_config()
  config.fit.restart_yaws_deg = tuple(config.fit.restart_yaws_deg)[:restarts]
  rng = np.random.default_rng(config.seed)
  prior = fit_mocap2d.load_priors((prior_name,), prior_workdir)[prior_name]
  model = assets.load_cc0_model()
  body = reduced_body.make_fit_body(model, fit_mocap2d.body_rotmats_fn,
                                    config.fit.part_vertices_per_part)
  pool = fit_mocap2d.load_dofs(fit_mocap2d.clip_paths(str(fit_mocap2d.default_mocap_dir()),
                                                      "test"))
  dofs = pool[rng.choice(len(pool), num_frames, replace=len(pool) < num_frames)]
  gt = fit_mocap2d.make_scene(model, dofs, config.scene, rng)
  evidence = fitting.Evidence(gt["keypoints"], gt["confidence"], gt["focal"], gt["centre"])
  size = None
  if parts:
    pix, lab, valid = fit_mocap2d.part_evidence(model, gt, np.arange(num_frames), config.scene,
                                                config.fit.num_part_pixels, rng)
    evidence = evidence._replace(part_pixels=pix, part_labels=lab, part_valid=valid)
    size = (config.scene.image_size,) * 2
  steps = sum(int(s["steps"]) for s in config.fit.stages)
  times, result = [], None
  for i in range(repeats + 1):
    start = time.perf_counter()
    result = fitting.fit(config.fit, model, body, prior, evidence, size)
    times.append(time.perf_counter() - start)
    print(f"fit {i}: {times[-1]:.2f} s{' (compiles)' if i == 0 else ''}", flush=True)
  fit_s = statistics.median(times[1:])
  rows = num_frames * restarts
  pa = float(np.mean(fit_mocap2d.metrics.pa_mpjpe(
      fitting.body_outputs(model, result).joints, gt["joints"])))
  report = {
      "num_frames": num_frames, "restarts": restarts, "fits": rows, "steps": steps,
      "parts": parts, "prior": prior_name, "prior_workdir": prior_workdir,
      "first_fit_s": times[0], "compile_s": times[0] - fit_s, "fit_s": fit_s,
      "fit_s_all": times[1:], "steps_per_s": steps / fit_s,
      "person_steps_per_s": steps * rows / fit_s, "pa_mpjpe_mm": pa,
      "device": jax.devices()[0].device_kind, "load_average_before": load_before,
      "load_average_after": list(os.getloadavg()),
      # The stage's compiler options (fitting.xla_options: YNNPACK fusions off on CPU).
      "xla_compiler_options": xla_options.cpu_small_op_options(),
      "target": "256 frames x 200 steps <= 5 s after compile (keypoints + flow prior)",
  }
  print(f"{rows} fits x {steps} steps: {fit_s:.2f} s after compile ({steps / fit_s:.1f} "
        f"steps/s, {steps * rows / fit_s:.0f} person-steps/s); compile {times[0] - fit_s:.1f} s;"
        f" PA-MPJPE {pa:.1f} mm", flush=True)
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    out = io_utils.require_output_path(_OUT.value, "--out", is_dir=False)
    report = run(_PRIOR_WORKDIR.value, _NUM_FRAMES.value, _RESTARTS.value, _REPEATS.value,
                 _PARTS.value, _PRIOR.value)
  except (fit_mocap2d.BenchmarkInputError, io_utils.OutputPathError) as e:
    logging.error("%s", e)
    print(f"fit_speed: {e}", file=sys.stderr)
    return 2
  io_utils.atomic_write(out, json.dumps(report, indent=2).encode())
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  app.run(main)
