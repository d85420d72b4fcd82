"""Input pipeline: the `cmu_mocap` TFDS dataset -> tf.data -> fixed-shape numpy batches.

    for batch in as_numpy_batches("train", data_dir, manual_dir, batch_size=512, shuffle=True,
                                  seed=0, repeat=True):
      state = train_step(state, batch)  # batch["dofs"]: [512, 50] float32, ...

The dataset is built on first use (from `manual_dir`, see the builder's instructions). Every
host reads its own slice of the split (`tfds.split_for_jax_process`); shuffling is seeded per
host (`seed` folded with `jax.process_index()`), so runs are reproducible. TensorFlow never sees
the accelerators (`tf.config.set_visible_devices([], "GPU")`), leaving them to JAX.
"""

import os
from typing import Iterator, Optional, Sequence

# distrax / TFP must be imported before TensorFlow (WORKSPACE.md import-order trap): TFP checks
# the TF environment when TF is already loaded and fails without tf_keras.
try:
  import distrax  # pylint: disable=g-import-not-at-top,unused-import
except ImportError:
  pass
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from flowpose.data.tfds.cmu_mocap import cmu_mocap_dataset_builder

TEXT_FEATURES = ("clip", "description")


def _hide_gpus_from_tf() -> None:
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass  # TF already initialised its devices; nothing left to do.


def get_builder(data_dir: Optional[os.PathLike], manual_dir: Optional[os.PathLike] = None,
                config_name: str = "fps30", skip_bad_files: bool = False
                ) -> cmu_mocap_dataset_builder.Builder:
  """The `cmu_mocap` builder, prepared (built from `manual_dir` if needed)."""
  _hide_gpus_from_tf()
  builder = cmu_mocap_dataset_builder.Builder(
      config=config_name, data_dir=None if data_dir is None else os.fspath(data_dir),
      skip_bad_files=skip_bad_files)
  download_config = tfds.download.DownloadConfig(
      manual_dir=None if manual_dir is None else os.fspath(manual_dir))
  builder.download_and_prepare(download_config=download_config)
  return builder


def host_seed(seed: int) -> int:
  """Per-host shuffle seed: `seed` folded with the JAX process index."""
  return int(np.random.SeedSequence([seed, jax.process_index()]).generate_state(1)[0])


def load_split(split: str, data_dir: Optional[os.PathLike],
               manual_dir: Optional[os.PathLike] = None, config_name: str = "fps30",
               batch_size: int = 512, shuffle: bool = False, seed: int = 0,
               repeat: bool = False, drop_remainder: bool = True, in_memory: bool = True,
               shuffle_buffer: int = 50_000,
               features: Optional[Sequence[str]] = None) -> tf.data.Dataset:
  """A batched tf.data pipeline over this host's part of a split.

  Args:
    split: "train", "validation", "test" (or any TFDS split expression).
    data_dir: TFDS data_dir (None: TFDS default).
    manual_dir: folder with the CMU ASF/AMC files (used only when the dataset is built).
    config_name: builder config, e.g. "fps30", "fps120", "fps30_win32".
    batch_size: examples per batch (per host).
    shuffle: shuffle the examples (seeded; reshuffled every epoch).
    seed: shuffle seed (folded with the process index).
    repeat: repeat forever.
    drop_remainder: drop the last partial batch, so every batch has a fixed shape.
    in_memory: decode the split once into memory and batch by gathering shuffled indices (fast:
      no per-example work per epoch; fps30 train is ~50 MB). False streams the TFRecords with
      a `shuffle_buffer`-sized example shuffle (for splits that do not fit in memory).
    shuffle_buffer: examples in the streaming shuffle buffer.
    features: feature names to keep (default: all).

  Returns:
    tf.data.Dataset of dicts of batched tensors, prefetched.
  """
  builder = get_builder(data_dir, manual_dir, config_name)
  host_split = tfds.split_for_jax_process(split)
  seed = host_seed(seed)
  keep = tuple(builder.info.features.keys()) if features is None else tuple(features)
  if in_memory:
    arrays = tfds.as_numpy(builder.as_dataset(split=host_split, batch_size=-1,
                                              shuffle_files=False))
    tensors = {k: tf.convert_to_tensor(arrays[k]) for k in keep}
    num_examples = int(next(iter(tensors.values())).shape[0])
    ds = tf.data.Dataset.range(num_examples)
    if shuffle:
      ds = ds.shuffle(num_examples, seed=seed, reshuffle_each_iteration=True)
    if repeat:
      ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(lambda idx: {k: tf.gather(v, idx) for k, v in tensors.items()},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
  read_config = tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=4)
  ds = builder.as_dataset(split=host_split, shuffle_files=shuffle, read_config=read_config)
  ds = ds.map(lambda ex: {k: ex[k] for k in keep}, num_parallel_calls=tf.data.AUTOTUNE)
  if shuffle:
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
  return ds.prefetch(tf.data.AUTOTUNE)


def as_numpy_batches(split: str, data_dir: Optional[os.PathLike],
                     manual_dir: Optional[os.PathLike] = None, config_name: str = "fps30",
                     batch_size: int = 512, shuffle: bool = False, seed: int = 0,
                     repeat: bool = False, drop_remainder: bool = True,
                     include_text: bool = False, **kwargs) -> Iterator[dict]:
  """Fixed-shape numpy batches (dict of arrays) ready for a jitted JAX function.

  Text features (`clip`, `description`) are dropped unless `include_text` (they are bytes
  arrays, which JAX cannot take). Other arguments: see `load_split`.

  Yields:
    dict: `dofs [B, 50] f32`, `rot6d [B, 31, 6]`, `root_orient [B, 3]`, `root_transl [B, 3]`,
    `joints3d [B, 31, 3]`, `subject [B] i64`, `frame [B] i64` (window configs: `[B, T, ...]`).
  """
  features = kwargs.pop("features", None)
  if features is None and not include_text:
    info = get_builder(data_dir, manual_dir, config_name).info
    features = [k for k in info.features.keys() if k not in TEXT_FEATURES]
  ds = load_split(split, data_dir, manual_dir, config_name, batch_size, shuffle, seed, repeat,
                  drop_remainder, features=features, **kwargs)
  yield from tfds.as_numpy(ds)
