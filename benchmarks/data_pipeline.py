r"""Benchmark of the mocap data path that training consumes, against the train step's rate.

  python -m benchmarks.data_pipeline --out results/data_pipeline.json [--cmu_dir ../shared/data/cmu]

Measures (all clips under `--cmu_dir`):
  parse_frames_per_s       ASF + AMC reading (gzip, parse, DOFs -> rotations), frames per second;
  retarget_frames_per_s    `retarget.motion_to_body` on the parsed 120 fps clips;
  build_seconds            `cmu_mocap/<fps>` prepared from scratch into a temporary data_dir
                           (`poses.prepared_builder`: read + resample + retarget + FK + write);
  pipeline_poses_per_s     the trainer's own stream, `flowpose.tasks.prior.input_pipeline`
                           ("train" split of the default experiment: TFRecords streamed,
                           mirrored, shuffled per epoch, batched, prefetched) -> numpy,
                           batch `--batch_size`, after `--warmup_batches`, over `--batches`;
  features_poses_per_s     the same stream with every numeric feature (`poses.feature_batches`);
  train_step_poses_per_s   the trainer's jitted train step of the default prior at the same
                           batch size (`benchmarks.flow_train.flowpose_programs`);
  pipeline_over_train_step the ratio; the check requires >= `--min_ratio` (5) and the
                           benchmark exits with 1 when it is not met.
Prints a table and writes the JSON atomically.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # See launch/main.py.

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import pathlib
import platform
import sys
import tempfile
import time

from absl import app
from absl import flags

from benchmarks import flow_train  # pylint: disable=g-bad-import-order
from flowpose import io_utils
from flowpose.data import asf_amc
from flowpose.data import poses
from flowpose.data import retarget
from flowpose.data.tfds.cmu_mocap import splits
from flowpose.tasks import prior as prior_task
from experiments import prior_cmu

_OUT = flags.DEFINE_string("out", None, "Output JSON file.", required=True)
_CMU_DIR = flags.DEFINE_string("cmu_dir", "../shared/data/cmu", "CMU ASF/AMC folder.")
_BATCH = flags.DEFINE_integer("batch_size", 512, "Batch size (pipeline and train step).")
_BATCHES = flags.DEFINE_integer("batches", 300, "Timed pipeline batches.")
_WARMUP = flags.DEFINE_integer("warmup_batches", 20, "Untimed pipeline batches first.")
_SECONDS = flags.DEFINE_float("seconds", 10.0, "Timed seconds of train steps.")
_MIN_RATIO = flags.DEFINE_float("min_ratio", 5.0, "Required pipeline / train-step ratio.")


def bench_parse(cmu_dir):
  clips = splits.list_clips(cmu_dir)
  start, frames, motions = time.perf_counter(), 0, []
  for clip in clips:
    motion = asf_amc.load_asf_amc(clip.amc_path, fps=clip.fps)
    frames += motion.num_frames
    motions.append(motion)
  parse_s = time.perf_counter() - start
  retarget.default_alignment()  # Model loading is not part of the retarget timing.
  start = time.perf_counter()
  for motion in motions:
    retarget.motion_to_body(motion)
  retarget_s = time.perf_counter() - start
  return {"clips": len(clips), "frames": frames, "parse_seconds": parse_s,
          "parse_frames_per_s": frames / parse_s, "retarget_frames_per_s": frames / retarget_s}


def _rate(dataset, batch_size, batches, warmup):
  """`(poses/s, first batch seconds)` of a tf.data stream read as numpy."""
  start = time.perf_counter()
  it = dataset.as_numpy_iterator()
  next(it)
  first = time.perf_counter() - start
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch_size / (time.perf_counter() - start), first


def bench_pipeline(config, batch_size, batches, warmup):
  start = time.perf_counter()
  builder = poses.prepared_builder(config.data)
  build_s = time.perf_counter() - start
  rate, first = _rate(prior_task.input_pipeline(config, "train", 0, 1), batch_size, batches,
                      warmup)
  features, _ = _rate(poses.feature_batches(config.data, config.data.train_split, batch_size),
                      batch_size, batches, warmup)
  return {"builder": builder.name + "/" + builder.builder_config.name, "build_seconds": build_s,
          "examples": {k: v.num_examples for k, v in builder.info.splits.items()},
          "augment_mirror": config.data.augment_mirror, "pipeline_poses_per_s": rate,
          "pipeline_first_batch_seconds": first, "features_poses_per_s": features}


def bench_train_step(config, batch_size, seconds):
  data = poses.read_split(config.data, config.data.train_split, prior_task.dofs_dim(config))
  train_step, _, _ = flow_train.flowpose_programs(config, data, batch_size)
  return {"train_step_poses_per_s": flow_train._timed(train_step, seconds) * batch_size}  # pylint: disable=protected-access


def main(argv):
  del argv
  out = io_utils.require_output_path(_OUT.value, "--out", is_dir=False)
  cmu_dir = pathlib.Path(_CMU_DIR.value)
  config = prior_cmu.get_config()  # The default experiment: what training consumes.
  config.batch_size = _BATCH.value
  config.data.manual_dir = str(cmu_dir)
  results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                         "load_average": list(os.getloadavg())},
             "pipeline_batch_size": _BATCH.value, "pipeline_batches": _BATCHES.value}
  results.update(bench_parse(cmu_dir))
  with tempfile.TemporaryDirectory(prefix="cmu_mocap_bench_") as data_dir:
    config.data.data_dir = data_dir
    results.update(bench_pipeline(config, _BATCH.value, _BATCHES.value, _WARMUP.value))
    results.update(bench_train_step(config, _BATCH.value, _SECONDS.value))
  ratio = results["pipeline_poses_per_s"] / results["train_step_poses_per_s"]
  results.update(pipeline_over_train_step=ratio, min_ratio=_MIN_RATIO.value,
                 meets_min_ratio=bool(ratio >= _MIN_RATIO.value))
  rows = [("clips / frames (120 fps)", f"{results['clips']} / {results['frames']:,}"),
          ("parse_frames_per_s", f"{results['parse_frames_per_s']:,.0f}"),
          ("retarget_frames_per_s", f"{results['retarget_frames_per_s']:,.0f}"),
          (f"build_seconds ({results['builder']})", f"{results['build_seconds']:.1f}"),
          ("examples per split", str(results["examples"])),
          (f"pipeline_poses_per_s (trainer's stream, batch {_BATCH.value}, mirror "
           f"{results['augment_mirror']})", f"{results['pipeline_poses_per_s']:,.0f}"),
          ("features_poses_per_s (all numeric features)",
           f"{results['features_poses_per_s']:,.0f}"),
          ("pipeline_first_batch_seconds", f"{results['pipeline_first_batch_seconds']:.2f}"),
          (f"train_step_poses_per_s (default prior, batch {_BATCH.value})",
           f"{results['train_step_poses_per_s']:,.0f}"),
          (f"pipeline / train step (need >= {_MIN_RATIO.value:g})",
           f"{ratio:.1f}x {'OK' if results['meets_min_ratio'] else 'NOT MET'}")]
  width = max(len(k) for k, _ in rows)
  print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
  io_utils.atomic_write(out, json.dumps(results, indent=1).encode())
  print(f"wrote {out}")
  if not results["meets_min_ratio"]:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
