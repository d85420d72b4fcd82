r"""Benchmark of the mocap data path: parsing, dataset build, tf.data -> numpy throughput.

  python -m benchmarks.data_pipeline --out results/data_pipeline.json [--cmu_dir ../shared/data/cmu]

Measures (all clips under `--cmu_dir`):
  parse_frames_per_s     ASF + AMC reading (gzip, parse, DOFs -> rotations), frames per second;
  retarget_frames_per_s  `retarget.motion_to_body` on the parsed 120 fps clips;
  build_seconds          `cmu_mocap/<config>` built from scratch into a temporary data_dir
                         (read + resample + retarget + FK + TFDS encode/write);
  pipeline_poses_per_s   tf.data -> numpy batches of `--batch_size` (train split, shuffled,
                         repeated, all numeric features) after `--warmup_batches`, over
                         `--batches` batches; the default in-memory pipeline (split decoded
                         once, batches gathered by shuffled index). Also: `dofs` only
                         (what the prior trains on) and the streaming TFRecord pipeline.
Prints a table and writes the JSON atomically.
"""

import json
import os
import pathlib
import platform
import tempfile
import time

from absl import app
from absl import flags

from flowpose.data import asf_amc
from flowpose.data import pipeline  # distrax before TF; hides the GPUs from TF.
from flowpose.data import retarget
from flowpose.data.tfds.cmu_mocap import splits

_OUT = flags.DEFINE_string("out", None, "Output JSON file.", required=True)
_CMU_DIR = flags.DEFINE_string("cmu_dir", "../shared/data/cmu", "CMU ASF/AMC folder.")
_CONFIG = flags.DEFINE_string("config", "fps30", "cmu_mocap builder config to build.")
_BATCH = flags.DEFINE_integer("batch_size", 512, "Pipeline batch size.")
_BATCHES = flags.DEFINE_integer("batches", 300, "Timed pipeline batches.")
_WARMUP = flags.DEFINE_integer("warmup_batches", 20, "Untimed pipeline batches first.")


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


def bench_build_and_pipeline(cmu_dir, config, batch_size, batches, warmup):
  with tempfile.TemporaryDirectory(prefix="cmu_mocap_bench_") as data_dir:
    start = time.perf_counter()
    builder = pipeline.get_builder(data_dir, cmu_dir, config)
    build_s = time.perf_counter() - start
    examples = {k: v.num_examples for k, v in builder.info.splits.items()}
    rates = {}
    for name, kwargs in (("pipeline_poses_per_s", {}),
                         ("pipeline_dofs_only_poses_per_s", {"features": ["dofs"]}),
                         ("pipeline_streaming_poses_per_s", {"in_memory": False})):
      start = time.perf_counter()
      it = pipeline.as_numpy_batches("train", data_dir, cmu_dir, config, batch_size=batch_size,
                                     shuffle=True, seed=0, repeat=True, **kwargs)
      next(it)
      rates[name.replace("poses_per_s", "first_batch_seconds")] = time.perf_counter() - start
      for _ in range(warmup):
        next(it)
      start = time.perf_counter()
      for _ in range(batches):
        batch = next(it)
      rates[name] = batches * batch_size / (time.perf_counter() - start)
      assert batch["dofs"].shape[0] == batch_size
  return {"config": config, "build_seconds": build_s, "examples": examples,
          "pipeline_batch_size": batch_size, "pipeline_batches": batches,
          **rates}


def main(argv):
  del argv
  cmu_dir = pathlib.Path(_CMU_DIR.value)
  results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                         "tensorflow": pipeline.tf.__version__}}
  results.update(bench_parse(cmu_dir))
  results.update(bench_build_and_pipeline(cmu_dir, _CONFIG.value, _BATCH.value,
                                          _BATCHES.value, _WARMUP.value))
  rows = [("clips / frames (120 fps)", f"{results['clips']} / {results['frames']:,}"),
          ("parse_frames_per_s", f"{results['parse_frames_per_s']:,.0f}"),
          ("retarget_frames_per_s", f"{results['retarget_frames_per_s']:,.0f}"),
          (f"build_seconds ({results['config']})", f"{results['build_seconds']:.1f}"),
          ("examples per split", str(results["examples"])),
          (f"pipeline_poses_per_s (batch {results['pipeline_batch_size']}, in memory, all "
           "features)", f"{results['pipeline_poses_per_s']:,.0f}"),
          ("pipeline_dofs_only_poses_per_s", f"{results['pipeline_dofs_only_poses_per_s']:,.0f}"),
          ("pipeline_streaming_poses_per_s (TFRecord decode per example)",
           f"{results['pipeline_streaming_poses_per_s']:,.0f}"),
          ("pipeline_first_batch_seconds (in memory)",
           f"{results['pipeline_first_batch_seconds']:.1f}")]
  width = max(len(k) for k, _ in rows)
  print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
  tmp.write_text(json.dumps(results, indent=1))
  os.replace(tmp, out)
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
