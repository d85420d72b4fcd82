r"""How well BlazePose sees the `self` regime's photos: detection rate and keypoint error.

    python -m flowpose.data.tfds.cmu_evidence.detector_report --out=F.json \
        [--data.manual_dir=FOLDER] [--data.stride=8] [--split=test] [--max_examples=0]

Prepares (first use) the `self_` config of `--data` (`data.evidence_source` is set to
"detector") and compares, per example, the detector's keypoints with the rendered truth
(`keypoints_true`, over `visible_true` keypoints). Writes JSON: examples, detected fraction,
keypoint error (mean / median / p90, px at the R px crop and at the 256 px photo), PCK at 5% of
the photo side, per-keypoint median error, median / p90 per joint group, and how often the
detector's visibility agrees with the truth. Bad flags: one line naming the flag, exit 1, nothing written.
"""

import json
import sys

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from flowpose import io_utils
from flowpose.data import evidence

# COCO-17 keypoints by joint group (both sides together).
JOINT_GROUPS = {"face": (0, 1, 2, 3, 4), "shoulders": (5, 6), "elbows": (7, 8),
                "wrists": (9, 10), "hips": (11, 12), "knees": (13, 14), "ankles": (15, 16)}

_DATA = config_flags.DEFINE_config_dict("data", evidence.default_config(),
                                        "config.data of the regressor (data.evidence).")
_OUT = flags.DEFINE_string("out", None, "JSON to write.")
_SPLIT = flags.DEFINE_string("split", "test", "Split to score.")
_MAX = flags.DEFINE_integer("max_examples", 0, "Score at most this many (0 = all).")


def report(data_config, split: str, max_examples: int = 0) -> dict:
  """The figures of the module docstring for `split` of the `self_` dataset."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from flowpose.evidence import synth_photo  # pylint: disable=g-import-not-at-top
  config = data_config.copy_and_resolve_references()
  config.evidence_source = "detector"
  builder = evidence.prepared_builder(config)
  ds = builder.as_dataset(split=split, shuffle_files=False)
  if max_examples:
    ds = ds.take(max_examples)
  examples = list(tfds.as_numpy(ds))
  if not examples:
    raise ValueError(f"--split: {split!r} holds no examples")
  to_photo = synth_photo.PHOTO_SIZE / config.resolution
  found = [ex for ex in examples if ex["detected"]]
  errors = [np.linalg.norm(ex["keypoints"] - ex["keypoints_true"], axis=-1) for ex in found]
  truth = [ex["visible_true"] > 0 for ex in found]
  flat = np.concatenate([e[t] for e, t in zip(errors, truth)]) if found else np.zeros(0)
  per_kp = np.full(17, np.nan)
  for k in range(17):
    values = [e[k] for e, t in zip(errors, truth) if t[k]]
    per_kp[k] = np.median(values) if values else np.nan
  groups = {}
  for group, members in JOINT_GROUPS.items():
    values = [e[k] for e, t in zip(errors, truth) for k in members if t[k]]
    groups[group] = {"median": float(np.median(values) * to_photo),
                     "p90": float(np.percentile(values, 90) * to_photo)} if values else None
  stats = lambda x, s: {"mean": float(np.mean(x) * s), "median": float(np.median(x) * s),
                        "p90": float(np.percentile(x, 90) * s)} if len(x) else {}
  agree = [np.mean((ex["visible"] > 0) == (ex["visible_true"] > 0)) for ex in found]
  return {
      "config": builder.info.config_name, "split": split, "examples": len(examples),
      "detected_fraction": len(found) / len(examples),
      "keypoint_error_px_crop": stats(flat, 1.0),
      "keypoint_error_px_photo": stats(flat, to_photo),
      "pck_5pct_photo": float(np.mean(flat * to_photo < 0.05 * synth_photo.PHOTO_SIZE))
                        if len(flat) else None,
      "median_error_px_photo_per_keypoint": [None if np.isnan(v) else float(v * to_photo)
                                             for v in per_kp],
      "error_px_photo_per_joint_group": groups,
      "visibility_agreement": float(np.mean(agree)) if agree else None,
  }


def main(argv):
  del argv
  try:
    if not _OUT.value:
      raise ValueError("--out: expected a JSON path")
    if _MAX.value < 0:
      raise ValueError("--max_examples: expected an int >= 0")
    io_utils.require_output_path(_OUT.value, "--out", is_dir=False)
    evidence.validate(_DATA.value)
    result = report(_DATA.value, _SPLIT.value, _MAX.value)
  except (ValueError, FileNotFoundError) as e:  # OutputPathError is a ValueError.
    print(f"detector_report: {e}", file=sys.stderr)
    sys.exit(1)
  io_utils.atomic_write(_OUT.value, json.dumps(result, indent=1).encode())
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  app.run(main)
