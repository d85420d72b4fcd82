"""The one pose loader: `cmu_mocap` TFDS (or a synthetic source) -> tf.data -> batches.

Training, evaluation (`flowpose.prior.evaluate`) and `benchmarks/data_pipeline.py` all read
through `examples` below, so the benchmark measures what training consumes.

    ds = train_batches(config.data, dim=50, batch_size=512, seed=0, start_step=s)
    # element i of ds = the `[512, 50]` float32 DOF batch of training step s + i (infinite).

Determinism (bit-exact resume after kill -9). The batch of step `s` is a pure function of
`(seed, process_index, s)`: epoch `e` reads this process's shard in file order, shuffles it with
a seed derived from `(seed, process_index, e)` (`reshuffle_each_iteration=False`) and batches
with `drop_remainder`. A run resumed at step `s` builds the stream from epoch
`s // steps_per_epoch` and `skip`s `s % steps_per_epoch` batches: it replays the batches of an
uninterrupted run without checkpointing iterator state (the skip costs at most one epoch of
reading). The shuffle buffer is `min(examples per epoch, data.shuffle_buffer)`.

Sources (`config.data.source`):
* "tfds": the `cmu_mocap` builder (feature `dofs [50]`), prepared on first use from
  `data.manual_dir` (one folder or several joined by ",") into `<data_dir>/sources/<fingerprint>/`
  (hash of builder name, version, `skip_bad_files` and every file's path, size and mtime: a
  changed folder is prepared anew). Training shards over processes (`tfds.even_splits`).
* "synthetic": a fixed, correlated, non-Gaussian distribution (`synthetic_poses`).

Augmentation in tf.data: `data.augment_mirror` puts the left-right mirror image of every training
pose right after it (2N poses per epoch); chart and jitter are the task's, on device.
"""

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
from typing import Optional

from absl import logging
import ml_collections
import numpy as np

from flowpose import cache as cache_lib
from flowpose import io_utils
from flowpose.data import cmu_skeleton

SOURCES = ("tfds", "synthetic")
FINGERPRINT_FILE = "SOURCE.json"
# Every `config.data` field and its default (`default_config`); unknown fields are refused.
DATA_DEFAULTS = dict(
    source="tfds", tfds_name="cmu_mocap", tfds_config="", fps=30, data_dir="", manual_dir="",
    train_split="train", eval_split="validation", synthetic_seed=0, num_train=100_000,
    num_eval=10_000, augment_mirror=False, skip_bad_files=False, shuffle_buffer=262_144)


def default_config() -> ml_collections.ConfigDict:
  """A `config.data` with every field at its default (experiments override fields).

  Fields: `source` "tfds" | "synthetic"; `tfds_name`, `tfds_config` ("" = the per-frame config at
  `fps`), `fps`, `data_dir` ("" = $FLOWPOSE_CACHE/tfds), `manual_dir` (the clip folder: prepared
  data are keyed by its contents), `train_split`, `eval_split`; `synthetic_seed`, `num_train`,
  `num_eval` (synthetic source only); `manual_dir` may join several folders with ","
  (`"../cmu,../cmu_more/asfamc"`: clips of all of them, a clip name in two taken from the first); `augment_mirror` (each training pose followed by its
  left-right mirror, CMU chart only); `skip_bad_files` (skip unreadable clips, listed in
  bad_files.json, instead of failing the build); `shuffle_buffer` (poses).
  """
  return ml_collections.ConfigDict(dict(DATA_DEFAULTS))


def _tf():
  """`(tf, tfds)`, imported on first use (the synthetic path and numpy users need neither)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:  # TF must not grab accelerator memory that JAX needs.
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass  # Devices already initialised (hidden by an earlier call).
  return tf, tfds


def _plain(tf, fn):
  """`fn` traced as written: AutoGraph has nothing to convert (and warns on lambdas)."""
  return tf.autograph.experimental.do_not_convert(fn)


# ---------------------------------------------------------------------------
# Prepared TFDS data, keyed by source.
# ---------------------------------------------------------------------------


def default_tfds_data_dir() -> str:
  """`$FLOWPOSE_CACHE/tfds` (default `~/.cache/flowpose/tfds`)."""
  return str(cache_lib.cache_dir() / "tfds")


def source_fingerprint(manual_dir, builder_id: str) -> dict:
  """What the prepared data are a function of: `{"fingerprint": hex, ...}` (JSON-able).

  Args:
    manual_dir: the source folder; every regular file under it (hidden ones excepted) enters
      with its relative path, size and mtime (stat follows symlinks). A list of folders: the
      hash of their fingerprints in order.
    builder_id: builder name, version and build options, e.g. "cmu_mocap/fps30/1.0.0/skip=0".
  """
  if isinstance(manual_dir, (list, tuple)):  # Several folders, in order: one fingerprint.
    parts = [source_fingerprint(d, builder_id) for d in manual_dir]
    digest = hashlib.sha256(json.dumps([p["fingerprint"] for p in parts]).encode()).hexdigest()
    return {"fingerprint": digest[:20], "builder": builder_id,
            **{k: [p[k] for p in parts] for k in ("manual_dir", "num_files", "total_bytes")}}
  root = pathlib.Path(manual_dir).expanduser().absolute()
  files = []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    stats = [(n, pathlib.Path(dirpath, n).stat()) for n in filenames if not n.startswith(".")]
    files += [(str(pathlib.Path(dirpath, n).relative_to(root)), st.st_size, st.st_mtime_ns)
              for n, st in stats]
  files.sort()
  digest = hashlib.sha256(json.dumps([builder_id, files]).encode()).hexdigest()
  return {"fingerprint": digest[:20], "builder": builder_id, "manual_dir": str(root),
          "num_files": len(files), "total_bytes": sum(f[1] for f in files)}



def _builder_name(data_config) -> str:
  """`name/config` of the builder for `data.fps` (or `data.tfds_config` if set)."""
  _, tfds = _tf()
  if data_config.tfds_name == "cmu_mocap":  # Registers the builder.
    from flowpose.data.tfds.cmu_mocap import cmu_mocap_dataset_builder  # pylint: disable=g-import-not-at-top,unused-import
  config_name = data_config.get("tfds_config", "")
  if not config_name:
    builder_cls = tfds.builder_cls(data_config.tfds_name)
    candidates = [c.name for c in builder_cls.BUILDER_CONFIGS
                  if getattr(c, "fps", None) == data_config.fps and not getattr(c, "window", 0)]
    if not candidates:
      names = [c.name for c in builder_cls.BUILDER_CONFIGS]
      raise ValueError(f"config data.fps: no per-frame {data_config.tfds_name} config at "
                       f"{data_config.fps} fps; configs are {names} (or set data.tfds_config)")
    config_name = candidates[0]
  return f"{data_config.tfds_name}/{config_name}"


@contextlib.contextmanager
def _prepare_lock(data_dir: str):
  """An exclusive `flock` on `<data_dir>/.prepare.lock`: two runs preparing one source queue."""
  import fcntl  # pylint: disable=g-import-not-at-top
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, ".prepare.lock"), "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_incomplete(data_dir: str) -> list:
  """Removes what killed TFDS builds left (`incomplete.*`); under `_prepare_lock`, all are stale."""
  stale = sorted(pathlib.Path(data_dir).glob("**/incomplete.*"))
  for path in stale:
    logging.warning("Removing %s, left by a killed data preparation.", path)
    if path.is_dir():
      shutil.rmtree(path, ignore_errors=True)
    else:
      path.unlink(missing_ok=True)
  return stale


def prepared_builder(data_config: ml_collections.ConfigDict, process_index: int = 0,
                     process_count: int = 1):
  """The TFDS builder of `data_config`, prepared from `data.manual_dir` (first use only).

  The data live under `<data_dir>/sources/<fingerprint>/` (module docstring); a
  `SOURCE.json` there records what they were prepared from. One process prepares, the others
  wait for it.
  """
  _, tfds = _tf()
  from flowpose.data.tfds.cmu_mocap import splits  # pylint: disable=g-import-not-at-top
  folders = splits.manual_dirs(data_config.manual_dir)
  manual_dir = str(folders[0])
  name = _builder_name(data_config)
  skip = bool(data_config.get("skip_bad_files", False))
  kwargs = {"skip_bad_files": True} if skip else {}
  if len(folders) > 1:
    kwargs["manual_dirs"] = [str(f) for f in folders]
  version = tfds.builder_cls(data_config.tfds_name).VERSION
  source = source_fingerprint(folders if len(folders) > 1 else manual_dir,
                              f"{name}/{version}/skip_bad_files={int(skip)}")
  data_dir = os.path.join(data_config.get("data_dir", "") or default_tfds_data_dir(),
                          "sources", source["fingerprint"])
  if process_index == 0:
    with _prepare_lock(data_dir):
      _remove_incomplete(data_dir)
      builder = tfds.builder(name, data_dir=data_dir, **kwargs)
      if not builder.is_prepared():
        logging.info("Preparing %s from %s into %s.", name, source["manual_dir"], data_dir)
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          manual_dir=manual_dir, try_download_gcs=False))
      record = os.path.join(data_dir, FINGERPRINT_FILE)
      if not os.path.isfile(record):
        io_utils.atomic_write(record, json.dumps(source, indent=1).encode())
  if process_count > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"{name} prepared")
  return tfds.builder(name, data_dir=data_dir, **kwargs)


# ---------------------------------------------------------------------------
# Examples, training batches, evaluation batches.
# ---------------------------------------------------------------------------


def synthetic_poses(num: int, dim: int, seed: int, split: str) -> np.ndarray:
  """`[num, dim]` angle-like float32 vectors from a fixed random distribution.

  The distribution (fixed by `seed`): 6 latent "motion modes" `u ~ N(0, I)` drive every dim
  linearly and through a sine (non-Gaussian, curved dependencies), plus per-dim noise; per-dim
  means in [-0.8, 0.8] rad, spreads ~0.05-0.5 rad, wrapped to (-pi, pi]. `split` ("train",
  "validation", ...) picks an independent sample stream of the same distribution.
  """
  dist = np.random.default_rng((seed, 0))
  modes = 6
  linear = dist.normal(size=(modes, dim)) * dist.uniform(0.02, 0.15, size=dim)
  curved = dist.normal(size=(modes, dim)) * 0.8
  amplitude = dist.uniform(0.0, 0.2, size=dim)
  mean = dist.uniform(-0.8, 0.8, size=dim)
  noise = dist.uniform(0.02, 0.05, size=dim)
  stream = int.from_bytes(split.encode(), "little") % (2**31)
  rng = np.random.default_rng((seed, 1, stream))
  u = rng.normal(size=(num, modes))
  x = (mean + u @ linear + amplitude * np.sin(u @ curved)
       + noise * rng.normal(size=(num, dim)))
  return np.arctan2(np.sin(x), np.cos(x)).astype(np.float32)


def examples(data_config: ml_collections.ConfigDict, split: str, dim: int,
             process_index: int = 0, process_count: int = 1):
  """This process's shard of `split` as a tf.data stream of `[dim]` float32 DOF vectors.

  Returns:
    `(dataset, num_examples)`; file order, not shuffled, not augmented.
  """
  tf, tfds = _tf()
  if data_config.source == "synthetic":
    is_train = split in (data_config.train_split, "train")
    num = data_config.num_train if is_train else data_config.num_eval
    shard = num // process_count  # Contiguous equal shards, as tfds.even_splits.
    poses = synthetic_poses(num, dim, data_config.synthetic_seed, split)
    poses = poses[process_index * shard:(process_index + 1) * shard]
    return tf.data.Dataset.from_tensor_slices(poses), int(poses.shape[0])
  builder = prepared_builder(data_config, process_index, process_count)
  shard = tfds.even_splits(split, n=process_count, drop_remainder=True)[process_index]
  ds = builder.as_dataset(split=shard, shuffle_files=False)
  num = int(ds.cardinality())
  if num <= 0:
    raise ValueError(f"{builder.name} split {split!r} (process {process_index} of "
                     f"{process_count}) is empty; source: {data_config.manual_dir}")
  if builder.info.features["dofs"].shape[-1] != dim:
    raise ValueError(f"{builder.name} dofs have shape {builder.info.features['dofs'].shape}, "
                     f"expected [{dim}]")
  return ds.map(_plain(tf, lambda ex: ex["dofs"]), num_parallel_calls=tf.data.AUTOTUNE), num


def _check_mirror(dim: int) -> None:
  if dim != cmu_skeleton.NUM_POSE_DOFS:
    raise ValueError(f"config data.augment_mirror needs the {cmu_skeleton.NUM_POSE_DOFS}-DOF "
                     f"CMU pose chart, got poses of {dim} DOFs")


def epoch_batches(ds, num_examples: int, batch_size: int, seed: int, start_step: int = 0,
                  shuffle_buffer: Optional[int] = None):
  """Infinite stream of batches; element `i` is the batch of step `start_step + i`.

  Any task can use it on its own example stream (module docstring: determinism).

  Args:
    ds: a finite dataset of examples in a fixed order, `num_examples` long.
    num_examples: examples per epoch.
    batch_size: examples per batch (this process's).
    seed: shuffle seed for this process (fold the process index in).
    start_step: the step of the first batch.
    shuffle_buffer: buffer size (default and maximum: `num_examples`, a full shuffle).
  """
  tf, _ = _tf()
  steps_per_epoch = num_examples // batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"training data has {num_examples} examples on this process, fewer than "
                     f"one batch ({batch_size})")
  first_epoch, offset = divmod(int(start_step), steps_per_epoch)
  buffer = min(num_examples, shuffle_buffer or num_examples)
  base_seed = int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF]).generate_state(1)[0])

  def one_epoch(epoch):
    epoch_seed = tf.constant(base_seed, tf.int64) * 1_000_003 + epoch
    return ds.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False).batch(
        batch_size, drop_remainder=True)

  stream = tf.data.Dataset.range(first_epoch, 2**62).flat_map(_plain(tf, one_epoch))
  return stream.skip(offset).prefetch(tf.data.AUTOTUNE)


def with_steps(stream, start_step: int, rows: int):
  """`{"poses": batch, "step": [rows] int32}`: each batch of `stream` (element i = step
  `start_step + i`) with its step in every row (shards with the batch), for step-dependent losses."""
  tf, _ = _tf()
  tag = _plain(tf, lambda x, s: {"poses": x, "step": tf.fill([rows], tf.cast(s, tf.int32))})
  return tf.data.Dataset.zip((stream, tf.data.Dataset.range(start_step, 2**62))).map(tag)


def process_seed(seed: int, process_index: int) -> int:
  """Per-process data seed: `seed` folded with the process index (clu deterministic_data)."""
  return int(np.random.SeedSequence([int(seed), int(process_index)]).generate_state(1)[0])


def train_batches(data_config: ml_collections.ConfigDict, dim: int, batch_size: int,
                  seed: int, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1):
  """Training batches `[batch_size, dim]` float32 DOFs (this process's), mirrored if asked;
  element `i` is the batch of step `start_step + i` (see `epoch_batches`)."""
  tf, _ = _tf()
  ds, num = examples(data_config, data_config.train_split, dim, process_index, process_count)
  if data_config.get("augment_mirror", False):
    _check_mirror(dim)
    perm, signs = (tf.constant(a) for a in cmu_skeleton.mirror_permutation_and_signs())
    # Each pose followed by its mirror image (the pair stays within one shuffle window),
    # mirrored a chunk at a time: per-example ops cost more than the arithmetic.
    def mirror_pairs(x):  # [n, D] -> [2n, D]: x0, mirror(x0), x1, ...
      pairs = tf.stack([x, tf.gather(x, perm, axis=1) * signs], axis=1)
      return tf.reshape(pairs, [-1, dim])
    ds = ds.batch(4096).map(_plain(tf, mirror_pairs)).unbatch()
    num *= 2
  return epoch_batches(ds, num, batch_size, process_seed(seed, process_index), start_step,
                       data_config.get("shuffle_buffer", DATA_DEFAULTS["shuffle_buffer"]))


def eval_dataset(data_config: ml_collections.ConfigDict, split: str, dim: int,
                 batch_size: int):
  """`{"poses": [B, dim], "weight": [B]}` batches of the whole split (every process the same).

  The last batch is zero-padded to `batch_size` (weight 0), so shapes stay fixed and the eval
  step compiles once.
  """
  tf, _ = _tf()
  ds, num = examples(data_config, split, dim)
  ds = ds.map(_plain(tf, lambda x: {"poses": x, "weight": tf.constant(1.0)}))
  pad = (-num) % batch_size
  if pad:
    ds = ds.concatenate(tf.data.Dataset.from_tensors(
        {"poses": tf.zeros([dim], tf.float32), "weight": tf.constant(0.0)}).repeat(pad))
  return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def read_split(data_config: ml_collections.ConfigDict, split: str, dim: int) -> np.ndarray:
  """`[N, dim]` float32 DOFs of the whole `split` (the training reader, not augmented)."""
  chunks = list(_tf()[1].as_numpy(examples(data_config, split, dim)[0].batch(65536)))
  if not chunks:
    raise ValueError(f"{data_config.source} split {split!r} is empty")
  return np.concatenate(chunks).astype(np.float32)


def augment_train(data_config: ml_collections.ConfigDict, train: np.ndarray) -> np.ndarray:
  """`train [N, D]` plus its mirror images when `data.augment_mirror` (`[2N, D]`).

  The same poses the trainer's stream holds per epoch (in another order); the baselines are
  fitted on them.
  """
  if not data_config.get("augment_mirror", False):
    return train
  _check_mirror(train.shape[-1])
  return np.concatenate([train, cmu_skeleton.mirror_dofs(train)])


def eval_batches(data: np.ndarray, batch_size: int):
  """Yields `(poses [B, D], weights [B])` of a NumPy array, the last batch zero-padded."""
  for start in range(0, data.shape[0], batch_size):
    chunk = data[start:start + batch_size]
    weights = np.ones(batch_size, np.float32)
    if chunk.shape[0] < batch_size:
      weights[chunk.shape[0]:] = 0.0
      pad = np.zeros((batch_size - chunk.shape[0], data.shape[1]), data.dtype)
      chunk = np.concatenate([chunk, pad])
    yield chunk, weights


def feature_batches(data_config: ml_collections.ConfigDict, split: str, batch_size: int,
                    seed: int = 0, features=None):
  """Infinite shuffled batches of every numeric feature of the builder (dicts of arrays).

  For tasks that need more than `dofs` (`rot6d [31, 6]`, `joints3d [31, 3]`, ...); same
  preparation, sharding (this process) and epoch rule as `train_batches`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  tf, tfds = _tf()
  index, count = jax.process_index(), jax.process_count()
  builder = prepared_builder(data_config, index, count)
  if features is None:
    features = [k for k, v in builder.info.features.items() if v.tf_dtype != tf.string]
  shard = tfds.even_splits(split, n=count, drop_remainder=True)[index]
  ds = builder.as_dataset(split=shard, shuffle_files=False)
  num = int(ds.cardinality())
  ds = ds.map(_plain(tf, lambda ex: {k: ex[k] for k in features}),
              num_parallel_calls=tf.data.AUTOTUNE)
  return epoch_batches(ds, num, batch_size, process_seed(seed, index), 0,
                       data_config.get("shuffle_buffer", DATA_DEFAULTS["shuffle_buffer"]))

