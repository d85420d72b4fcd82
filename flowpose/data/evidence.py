"""The served `cmu_evidence` pipeline: 2D evidence (+ 3D labels) batches for the regressor.

    ds = train_dataset(config.data, process_index, process_count, batch_size, seed, start_step)
    # element i = this process's `batch_size` examples of training step start_step + i.
    ds = eval_dataset(config.data, "validation", batch_size)   # finite, padded (weight 0)

Preparation: the TFDS builder `cmu_evidence` (`flowpose/data/tfds/cmu_evidence/`) at config
`r<resolution>_s<stride>_v<views_per_pose>`, built on first use from `data.manual_dir` through
`flowpose.data.poses.prepared_builder` (source-fingerprinted cache under
`<data_dir>/sources/<fingerprint>/`; another or an edited folder is prepared anew).

Batches: the stored fields (clean 3D labels; WORKSPACE.md has the contract) plus, after the
detector-like corruption of `flowpose.data.evidence_corruption` (keypoints, confidence,
part_map, mask, part/mask pixel samples, keypoints_clean), `has_3d` and `weight`.

`evidence_source="detector"` (the `self` regime, `self_` builder configs): the evidence is what
BlazePose found in shaded photos; frames where it found nobody are dropped (counted in the
log), `confidence` carries its keypoint scores and the rendered truth is what evaluation
compares with (`detector_fields`). The 3D labels stay in the batch for evaluation; the `self`
config's `labelled_fraction` 0 keeps them out of the loss (`has_3d` False).

Determinism. Training: the examples of step s come from `poses.epoch_batches` (a pure function
of (seed, process, s)) and their corruption is drawn from the stateless seed
(process seed, s), so a run resumed at step s sees exactly the batches of an uninterrupted run.
Evaluation: the split in file order, corruption from (eval_seed, batch index), the same on
every process and every call. `has_3d` is a fixed subset: a hash of subject/clip/frame/view
(FarmHash, stable across runs and machines) below `labelled_fraction`, so the labelled examples
of the `semi` regime are the same in every epoch, run and process.

String fields (`subject`, `clip`) stay in the batch for bookkeeping; drop them before putting a
batch on devices (`numeric(batch)`).
"""

import os

from absl import logging
import ml_collections
import numpy as np

from flowpose.data import evidence_augment
from flowpose.data import evidence_corruption
from flowpose.data import evidence_pseudo
from flowpose.data import poses
from flowpose.data.tfds.cmu_mocap import splits as splits_lib

# Every `config.data` field and its default (see `default_config`).
DATA_DEFAULTS = dict(
    tfds_name="cmu_evidence", manual_dir="", data_dir="", skip_bad_files=False,
    evidence_source="render", resolution=64, stride=8, views_per_pose=2, train_split="train",
    eval_split="validation",
    shuffle_buffer=16_384, labelled_fraction=1.0, labelled_per_batch=0.0, num_part_pixels=256,
    keypoint_noise_px=1.5, keypoint_drop_prob=0.1, keypoint_swap_prob=0.05,
    confidence_floor=0.05, part_morph_prob=0.5, mask_morph_prob=0.5, morph_max_px=1,
    morph_boundary_fraction=0.5,
    mask_hole_prob=0.3, mask_max_holes=2, mask_hole_size=(0.05, 0.2), eval_seed=0,
    augment_flip_prob=0.0, augment_roll_deg=0.0, pseudo_labels="")
_FRACTIONS = ("labelled_fraction", "labelled_per_batch", "keypoint_drop_prob",
              "keypoint_swap_prob", "confidence_floor", "part_morph_prob", "mask_morph_prob",
              "morph_boundary_fraction", "mask_hole_prob", "augment_flip_prob")
_HASH_BUCKETS = 2**30
# Folded into a batch's seed for its augmentation draws (apart from the corruption's).
_AUGMENT_STREAM = 0x417567


def default_config() -> ml_collections.ConfigDict:
  """`config.data` of the regressor task, every field at its default.

  Fields: `manual_dir` (CMU clip folder; default `$FLOWPOSE_CMU_DIR`), `data_dir` ("" =
  $FLOWPOSE_CACHE/tfds), `skip_bad_files` (passed to `cmu_mocap`); the builder config:
  `evidence_source` ("render": the rendered evidence; "detector": BlazePose on shaded photos,
  the `self` regime, `flowpose.evidence.synth_photo`), `resolution` (crop side R, px),
  `stride` (30 fps frames between poses), `views_per_pose`;
  `train_split`, `eval_split`, `shuffle_buffer` (examples); `labelled_fraction` (fixed `has_3d`
  share: 1.0 fully, 0.05 semi, 0.0 weak); `labelled_per_batch` (0: batches mix labelled and
  unlabelled examples as they come; f in (0, 1): every training batch holds round(f B) labelled
  examples, the rest unlabelled — the semi regime's few labels then reach every step);
  `num_part_pixels` (N samples of the part map and of
  the mask); the corruption knobs of `flowpose.data.evidence_corruption` (`keypoint_noise_px`
  at the crop, `keypoint_drop_prob`, `keypoint_swap_prob`, `confidence_floor`,
  `part_morph_prob`, `mask_morph_prob`, `morph_max_px`, `morph_boundary_fraction`,
  `mask_hole_prob`, `mask_max_holes`,
  `mask_hole_size` (min, max) fraction of R); `eval_seed` (evaluation corruption);
  `augment_flip_prob`, `augment_roll_deg` (training only, before the corruption: the
  label-exact left-right flip and in-plane rotation of `flowpose.data.evidence_augment`);
  `pseudo_labels` ("" or an .npz of `evidence_pseudo.PSEUDO_FIELDS` written by `python -m
  launch.pseudo_labels`: training examples found in it get its 3D labels and `has_3d` True;
  training only, evaluation keeps the true labels).
  """
  config = ml_collections.ConfigDict(dict(DATA_DEFAULTS))
  config.manual_dir = os.environ.get("FLOWPOSE_CMU_DIR", "")
  return config


def validate(data_config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad `config.data` field (before anything is built)."""
  unknown = sorted(set(data_config.keys()) - set(DATA_DEFAULTS))
  if unknown:
    raise ValueError(f"config data: unknown field(s) {unknown}; fields are "
                     f"{sorted(DATA_DEFAULTS)}")
  def fail(field, expected):
    raise ValueError(f"config data.{field}: expected {expected}, got "
                     f"{data_config.get(field)!r}")
  if data_config.tfds_name != "cmu_evidence":
    fail("tfds_name", '"cmu_evidence"')
  if data_config.evidence_source not in ("render", "detector"):
    fail("evidence_source", '"render" or "detector"')
  for field, low in (("resolution", 16), ("stride", 1), ("views_per_pose", 1),
                     ("shuffle_buffer", 1), ("num_part_pixels", 1), ("morph_max_px", 0),
                     ("mask_max_holes", 0)):
    value = data_config.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
      fail(field, f"an int >= {low}")
  if data_config.num_part_pixels > data_config.resolution**2:
    fail("num_part_pixels", f"<= resolution**2 = {data_config.resolution**2}")
  for field in _FRACTIONS:
    # A field newer than a saved run's config (e.g. labelled_per_batch) reads as its default.
    if not 0.0 <= float(data_config.get(field, DATA_DEFAULTS[field])) <= 1.0:
      fail(field, "a number in [0, 1]")
  for field in ("keypoint_noise_px", "augment_roll_deg"):
    if float(data_config.get(field, DATA_DEFAULTS[field])) < 0:
      fail(field, "a number >= 0")
  if not isinstance(data_config.get("pseudo_labels", ""), str):
    fail("pseudo_labels", 'a path to an .npz (python -m launch.pseudo_labels) or ""')
  lo, hi = data_config.mask_hole_size
  if not 0.0 <= lo <= hi <= 1.0:
    fail("mask_hole_size", "(min, max) with 0 <= min <= max <= 1")


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:  # TF must not grab accelerator memory that JAX needs.
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass
  return tf, tfds


def builder_config_name(data_config: ml_collections.ConfigDict) -> str:
  """"[self_]r<resolution>_s<stride>_v<views_per_pose>", the `cmu_evidence` config."""
  prefix = "self_" if data_config.evidence_source == "detector" else ""
  return (f"{prefix}r{data_config.resolution}_s{data_config.stride}_"
          f"v{data_config.views_per_pose}")


def prepared_builder(data_config: ml_collections.ConfigDict, process_index: int = 0,
                     process_count: int = 1):
  """The prepared `cmu_evidence` builder of `data_config` (built on first use).

  Raises:
    ValueError: a bad field, or `data.manual_dir` is not a folder (named).
    FileNotFoundError: the folder holds no CMU clips (named).
    MocapFormatError: bad clips (all listed; `data.skip_bad_files` leaves them out).
  """
  validate(data_config)
  folder = str(data_config.manual_dir)
  if not folder or not os.path.isdir(folder):
    raise ValueError(f"config data.manual_dir: CMU clip folder {folder!r} not found (set "
                     "$FLOWPOSE_CMU_DIR or --config.data.manual_dir)")
  if not splits_lib.list_clips(folder):
    raise FileNotFoundError(f"config data.manual_dir: no SS_CC.amc[.gz] clips under {folder} "
                            "(CMU ASF/AMC, see flowpose/data/tfds/cmu_mocap)")
  from flowpose.data.tfds.cmu_evidence import cmu_evidence_dataset_builder  # pylint: disable=g-import-not-at-top,unused-import
  source = poses.default_config()
  source.update(tfds_name="cmu_evidence", tfds_config=builder_config_name(data_config),
                manual_dir=str(data_config.manual_dir), data_dir=data_config.data_dir,
                skip_bad_files=bool(data_config.skip_bad_files))
  return poses.prepared_builder(source, process_index, process_count)


def _with_labels(tf, ds, labelled_fraction: float):
  """Adds `has_3d` (fixed hash subset) and `weight` 1 to every example."""
  threshold = int(round(float(labelled_fraction) * _HASH_BUCKETS))

  def add(ex):
    key = evidence_pseudo.example_key(tf, ex)
    out = dict(ex)
    out["has_3d"] = tf.strings.to_hash_bucket_fast(key, _HASH_BUCKETS) < threshold
    out["weight"] = tf.constant(1.0, tf.float32)
    return out
  return ds.map(tf.autograph.experimental.do_not_convert(add),
                num_parallel_calls=tf.data.AUTOTUNE)


def load_pseudo_labels(data_config: ml_collections.ConfigDict) -> dict:
  """`evidence_pseudo.load` of `data.pseudo_labels` for this config's builder (checked)."""
  return evidence_pseudo.load(str(data_config.pseudo_labels), builder_config_name(data_config))


def _count(tf, ds) -> int:
  """Examples in a finite dataset whose cardinality is unknown (after a filter): one pass."""
  plain = tf.autograph.experimental.do_not_convert
  return int(ds.reduce(tf.constant(0, tf.int64), plain(lambda n, _: n + 1)))


def _detected_only(tf, ds, num: int, name: str):
  """`self_` data: the examples where the detector found someone, and how many (one pass)."""
  plain = tf.autograph.experimental.do_not_convert
  detected = ds.filter(plain(lambda ex: ex["detected"]))
  found = _count(tf, detected)
  logging.info("%s: the detector found nobody in %d of %d frames (%.1f%%); they are dropped.",
               name, num - found, num, 100.0 * (num - found) / max(num, 1))
  return detected, found


def detector_fields(batch: dict) -> dict:
  """A corrupted `self_` batch as the task reads it (no-op for rendered evidence).

  `confidence` is scaled by the detector's own keypoint scores (`keypoint_score`, so the
  keypoint loss weights each detection by how sure the detector is), and the evaluation-only
  fields are the rendered truth: `keypoints_clean` = `keypoints_true`, `visible` =
  `visible_true` (the detector's keypoints are the training signal, not the truth).
  """
  if "keypoint_score" not in batch:
    return batch
  out = dict(batch)
  out["confidence"] = batch["confidence"] * batch["keypoint_score"]
  out["keypoints_clean"] = batch["keypoints_true"]
  out["visible"] = batch["visible_true"]
  return out


def examples(data_config: ml_collections.ConfigDict, split: str, process_index: int = 0,
             process_count: int = 1):
  """This process's shard of `split` (file order, clean, with `has_3d`, `weight`), and its size."""
  tf, tfds = _tf()
  builder = prepared_builder(data_config, process_index, process_count)
  if split not in builder.info.splits:
    raise ValueError(f"cmu_evidence has no {split!r} split from {data_config.manual_dir} "
                     f"(splits: {sorted(builder.info.splits)}; subjects decide the split)")
  shard = tfds.even_splits(split, n=process_count, drop_remainder=True)[process_index]
  ds = builder.as_dataset(split=shard, shuffle_files=False)
  num = int(ds.cardinality())
  if data_config.evidence_source == "detector":
    ds, num = _detected_only(tf, ds, num, f"{builder.info.full_name} {split}")
  if num <= 0:
    raise ValueError(f"cmu_evidence split {split!r} (process {process_index} of "
                     f"{process_count}) is empty; source: {data_config.manual_dir}")
  return _with_labels(tf, ds, data_config.labelled_fraction), num


def _corrupt(tf, data_config, base_seed: int, augment: bool = False):
  """`(batch, index) -> corrupted batch` with the stateless seed (base_seed, index); `augment`:
  first the geometric augmentation (training, if the config asks), from a seed folded off it."""
  augment = augment and evidence_augment.enabled(data_config)
  if augment:
    from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
    root_basis = evidence_augment.root_joint_basis(assets.load_cc0_model())

  def fn(batch, index):
    seed = tf.stack([tf.constant(base_seed, tf.int64), tf.cast(index, tf.int64)])
    if augment:
      batch = evidence_augment.augment_batch(
          batch, tf.random.experimental.stateless_fold_in(seed, _AUGMENT_STREAM), data_config,
          root_basis)
    return detector_fields(evidence_corruption.corrupt_batch(batch, seed, data_config))
  return tf.autograph.experimental.do_not_convert(fn)


def _mixed_batches(tf, ds, data_config, batch_size: int, seed: int, start_step: int):
  """Batches of `round(labelled_per_batch * batch_size)` labelled examples + the rest unlabelled.

  Each part is its own `poses.epoch_batches` stream (own epochs, own shuffle seed), so element
  `i` is still the batch of step `start_step + i` (resume draws the same batches).
  """
  plain = tf.autograph.experimental.do_not_convert
  num_labelled = min(max(int(round(float(data_config.labelled_per_batch) * batch_size)), 1),
                     batch_size - 1)
  parts = []
  for part, (keep, rows) in enumerate(((True, num_labelled),
                                       (False, batch_size - num_labelled))):
    subset = ds.filter(plain(lambda ex, keep=keep: tf.equal(ex["has_3d"], keep)))
    count = _count(tf, subset)
    if count < rows:
      raise ValueError(
          f"config data.labelled_per_batch={data_config.labelled_per_batch}: batches need "
          f"{rows} {'labelled' if keep else 'unlabelled'} examples, the training split has "
          f"{count} (labelled_fraction={data_config.labelled_fraction})")
    parts.append(poses.epoch_batches(subset, count, rows, seed + part, start_step,
                                     data_config.shuffle_buffer))
  join = plain(lambda a, b: tf.nest.map_structure(lambda x, y: tf.concat([x, y], 0), a, b))
  return tf.data.Dataset.zip(tuple(parts)).map(join)


def train_dataset(data_config: ml_collections.ConfigDict, process_index: int,
                  process_count: int, batch_size: int, seed: int, start_step: int = 0):
  """Infinite corrupted training batches of `data.train_split` (module docstring).

  Args:
    data_config: `default_config()` fields.
    process_index, process_count: this process and how many read.
    batch_size: this process's examples per step (the global batch / process_count).
    seed: the run's data seed.
    start_step: step of the first element (resume).
  """
  tf, _ = _tf()
  ds, num = examples(data_config, data_config.train_split, process_index, process_count)
  if data_config.get("pseudo_labels", ""):
    labels = load_pseudo_labels(data_config)
    logging.info("data.pseudo_labels: %d labelled examples from %s", len(labels["key"]),
                 data_config.pseudo_labels)
    ds = evidence_pseudo.with_labels(tf, ds, labels)
  process_seed = poses.process_seed(seed, process_index)
  if 0.0 < float(data_config.get("labelled_per_batch", 0.0)) < 1.0:
    stream = _mixed_batches(tf, ds, data_config, batch_size, process_seed, start_step)
  else:
    stream = poses.epoch_batches(ds, num, batch_size, process_seed, start_step,
                                 data_config.shuffle_buffer)
  steps = tf.data.Dataset.range(int(start_step), 2**62)
  # The corruption seed is (process seed, step): a resumed run redraws the same corruption.
  stream = tf.data.Dataset.zip((stream, steps)).map(
      _corrupt(tf, data_config, process_seed & 0x7FFFFFFFFFFFFFFF, augment=True),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return stream.prefetch(tf.data.AUTOTUNE)


def eval_dataset(data_config: ml_collections.ConfigDict, split: str, batch_size: int):
  """Finite corrupted batches of the whole `split`, the same on every process and call.

  The last batch is padded with zero examples of `weight` 0, so every batch has `batch_size`
  examples and the eval step compiles once.
  """
  tf, _ = _tf()
  ds, num = examples(data_config, split)
  pad = (-num) % batch_size
  if pad:
    zeros = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype),
                                  ds.element_spec)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(zeros).repeat(pad))
  ds = ds.batch(batch_size, drop_remainder=True).enumerate()
  corrupt = _corrupt(tf, data_config, int(data_config.eval_seed))
  ds = ds.map(tf.autograph.experimental.do_not_convert(lambda index, batch: corrupt(batch, index)),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(tf.data.AUTOTUNE)


def corrupt_numpy(batch: dict, seed, data_config: ml_collections.ConfigDict) -> dict:
  """`evidence_corruption.corrupt_batch` of a NumPy batch (eager), for benchmarks and tests.

  Evidence of any clips through the training pipeline's corruption: render with
  `flowpose.evidence.synth` (scenes seeded by `cmu_evidence_dataset_builder.example_seed(key)`),
  stack the fields, then call this with a fixed `seed` ([2] ints, e.g. (eval_seed, 0)).

  Args:
    batch: at least keypoints [B, 17, 2], visible [B, 17], part_map and mask [B, R, R] uint8;
      every other field is passed through.
  """
  tf, _ = _tf()
  out = detector_fields(evidence_corruption.corrupt_batch(
      {k: tf.constant(v) for k, v in batch.items()}, tf.constant(seed, tf.int64), data_config))
  return {k: v.numpy() for k, v in out.items()}


def numeric(batch: dict) -> dict:
  """The batch without its string fields (what goes on devices)."""
  return {k: v for k, v in batch.items()
          if not (isinstance(v, np.ndarray) and v.dtype.kind in "OSU")}
