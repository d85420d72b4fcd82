"""Pose data for training the prior: a `cmu_mocap` TFDS source and a synthetic one.

Determinism. The training batch of step `s` is a pure function of
`(seed, s)` (and of the process index on multi-host runs): each host holds its
shard of the training poses as an in-memory array (`[N, D]` float32, 200
bytes per pose: CMU at 30 fps fits easily) and `EpochBatches` reads batch `s`
from a permutation drawn for epoch `s // steps_per_epoch` from
`numpy.random.default_rng((seed, process_index, epoch))`. A resumed run thus
replays exactly the batches of an uninterrupted one without checkpointing any
iterator state: the step counter in the checkpoint is the iterator position.

Sources (`config.data.source`):

* "tfds": the `cmu_mocap` builder (`flowpose.data.tfds.cmu_mocap`), feature
  `dofs [50]`. `download_and_prepare` reads the CMU files from
  `config.data.manual_dir`. The training split is sharded over hosts with
  `tfds.split_for_jax_process`; every host reads the whole validation split.
* "synthetic": a fixed, correlated, non-Gaussian distribution of angle-like
  vectors (see `synthetic_poses`), deterministic by `config.data.synthetic_seed`;
  for tests and smoke runs.
"""

import os
from typing import NamedTuple, Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from flowpose.prior import charts
from flowpose.data import cmu_skeleton

SOURCES = ("tfds", "synthetic")


class PoseData(NamedTuple):
  """Pose arrays for one host.

  Attributes:
    train: `[N, D]` float32, this host's training shard.
    eval: `[M, D]` float32, the whole evaluation split.
  """
  train: np.ndarray
  eval: np.ndarray


# ---------------------------------------------------------------------------
# Deterministic batches.
# ---------------------------------------------------------------------------


class EpochBatches:
  """Batch `s` = rows of `data` picked by a per-epoch permutation (a pure function of s).

  The last `N mod batch_size` rows of each epoch's permutation are skipped
  (drop_remainder); a different permutation each epoch drops different rows.
  """

  def __init__(self, data: np.ndarray, batch_size: int, seed: int,
               process_index: int = 0):
    """Args: data `[N, D]`; batch_size B (this host's); seed; process index."""
    if data.shape[0] < batch_size:
      raise ValueError(f"training data has {data.shape[0]} poses on this "
                       f"host, fewer than one batch ({batch_size})")
    self._data = data
    self._batch_size = batch_size
    self._seed = (int(seed), int(process_index))
    self.steps_per_epoch = data.shape[0] // batch_size
    self._epoch, self._perm = None, None

  def indices(self, step: int) -> np.ndarray:
    """`[B]` row indices of the batch of `step`."""
    epoch, i = divmod(int(step), self.steps_per_epoch)
    if epoch != self._epoch:  # Sequential reads draw one permutation per epoch.
      rng = np.random.default_rng((*self._seed, epoch))
      self._epoch, self._perm = epoch, rng.permutation(self._data.shape[0])
    return self._perm[i * self._batch_size:(i + 1) * self._batch_size]

  def batch(self, step: int) -> np.ndarray:
    """`[B, D]` float32 poses of the batch of `step`."""
    return self._data[self.indices(step)]


def eval_batches(data: np.ndarray, batch_size: int):
  """Yields `(poses [B, D], weights [B])`, the last batch zero-padded.

  Fixed shapes keep the eval step compiled once; `weights` is 1 on real rows.
  """
  for start in range(0, data.shape[0], batch_size):
    chunk = data[start:start + batch_size]
    weights = np.ones(batch_size, np.float32)
    if chunk.shape[0] < batch_size:
      weights[chunk.shape[0]:] = 0.0
      pad = np.zeros((batch_size - chunk.shape[0], data.shape[1]), data.dtype)
      chunk = np.concatenate([chunk, pad])
    yield chunk, weights


# ---------------------------------------------------------------------------
# Sources.
# ---------------------------------------------------------------------------


def synthetic_poses(num: int, dim: int, seed: int, split: str) -> np.ndarray:
  """`[num, dim]` angle-like float32 vectors from a fixed random distribution.

  The distribution (fixed by `seed`): 6 latent "motion modes" `u ~ N(0, I)`
  drive every dim linearly and through a sine (non-Gaussian, curved
  dependencies), plus per-dim noise; per-dim means in [-0.8, 0.8] rad,
  spreads ~0.05-0.5 rad (far from the chart's cut at +-pi from the mean),
  wrapped to (-pi, pi]. `split` ("train", "validation", ...)
  picks an independent sample stream of the same distribution.
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


def tfds_builder(data_config: ml_collections.ConfigDict):
  """The `cmu_mocap` builder for `data.fps` (or `data.tfds_config` if set)."""
  # Imported here: TF is heavy and the synthetic path must not need it.
  # distrax/TFP were imported first (flowpose.bijectors), as TF requires.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if data_config.tfds_name == "cmu_mocap":  # Registers the builder.
    from flowpose.data.tfds.cmu_mocap import cmu_mocap_dataset_builder  # pylint: disable=g-import-not-at-top,unused-import
  # TF must not grab GPU memory that JAX needs.
  tf.config.set_visible_devices([], "GPU")
  name = data_config.tfds_name
  config_name = data_config.tfds_config
  if not config_name:
    config_name = _config_for_fps(tfds.builder_cls(name), data_config.fps)
  data_dir = data_config.data_dir or default_tfds_data_dir()
  return tfds.builder(f"{name}/{config_name}", data_dir=data_dir)


def _config_for_fps(builder_cls, fps) -> str:
  """Name of the per-frame builder config whose `fps` equals `fps`."""
  candidates = [c for c in builder_cls.BUILDER_CONFIGS
                if getattr(c, "fps", None) == fps
                and not getattr(c, "window", None)]
  if not candidates:
    names = [c.name for c in builder_cls.BUILDER_CONFIGS]
    raise ValueError(f"config data.fps: no per-frame cmu_mocap config at "
                     f"{fps} fps; configs are {names} (or set data.tfds_config)")
  return candidates[0].name


def default_tfds_data_dir() -> str:
  """`$FLOWPOSE_CACHE/tfds` (default `~/.cache/flowpose/tfds`)."""
  cache = os.environ.get("FLOWPOSE_CACHE",
                         os.path.join(os.path.expanduser("~"), ".cache",
                                      "flowpose"))
  return os.path.join(cache, "tfds")


def read_tfds_split(builder, split) -> np.ndarray:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = builder.as_dataset(split=split, shuffle_files=False)
  ds = ds.map(lambda ex: ex["dofs"]).batch(65536).prefetch(2)
  chunks = list(tfds.as_numpy(ds))
  if not chunks:
    raise ValueError(f"cmu_mocap split {split!r} is empty")
  return np.concatenate(chunks).astype(np.float32)


def load_tfds(data_config: ml_collections.ConfigDict) -> PoseData:
  """Prepares (first run only) and reads the `cmu_mocap` dofs into memory."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds_builder(data_config)
  manual_dir = data_config.manual_dir
  if not os.path.isdir(manual_dir):
    raise ValueError(f"config data.manual_dir: CMU folder {manual_dir!r} "
                     "not found (set $FLOWPOSE_CMU_DIR)")
  # One host prepares (the files are shared), the others wait for it.
  if jax.process_index() == 0:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, try_download_gcs=False))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("cmu_mocap prepared")
    builder = tfds_builder(data_config)  # Re-read the prepared dataset info.
  train_split = tfds.split_for_jax_process(data_config.train_split,
                                           drop_remainder=True)
  return PoseData(train=read_tfds_split(builder, train_split),
                  eval=read_tfds_split(builder, data_config.eval_split))


def augment_train(data_config: ml_collections.ConfigDict, train: np.ndarray) -> np.ndarray:
  """The training poses the prior (and the baselines) are fitted on: `train [N, D]`, plus its
  left-right mirror images when `data.augment_mirror` (`[2N, D]`, CMU pose chart only)."""
  if not data_config.get("augment_mirror", False):
    return train
  if train.shape[-1] != cmu_skeleton.NUM_POSE_DOFS:
    raise ValueError(f"config data.augment_mirror needs the {cmu_skeleton.NUM_POSE_DOFS}-DOF CMU "
                     f"pose chart, got poses of shape {train.shape}")
  return np.concatenate([train, cmu_skeleton.mirror_dofs(train)])


def load_data(data_config: ml_collections.ConfigDict, event_dim: int,
              process_index: Optional[int] = None, chart: str = "euler_dofs") -> PoseData:
  """Reads this host's pose arrays for `config.data`, in the prior's `chart` (flowpose.prior.charts):
  `[N, event_dim]` DOF angles, or per-bone axis-angle vectors for `chart="axis_angle"`."""
  # Data are DOF angles; a non-Euler chart converts the 50 CMU DOFs after augmentation.
  dofs_dim = event_dim if chart == "euler_dofs" else cmu_skeleton.NUM_POSE_DOFS
  if data_config.source == "tfds":
    data = load_tfds(data_config)
  else:
    process_index = (jax.process_index() if process_index is None
                     else process_index)
    train = synthetic_poses(data_config.num_train, dofs_dim,
                            data_config.synthetic_seed, "train")
    # Same sharding rule as split_for_jax_process: contiguous equal shards.
    shard = data_config.num_train // jax.process_count()
    train = train[process_index * shard:(process_index + 1) * shard]
    data = PoseData(train, synthetic_poses(data_config.num_eval, dofs_dim,
                                           data_config.synthetic_seed,
                                           "validation"))
  for name, array in data._asdict().items():
    if array.ndim != 2 or array.shape[1] != dofs_dim:
      raise ValueError(f"{data_config.source} {name} poses have shape "
                       f"{array.shape}, expected [N, {dofs_dim}]")
  data = data._replace(train=augment_train(data_config, data.train))
  if chart != "euler_dofs":
    data = PoseData(*(charts.from_dofs_np(chart, array) for array in data))
  logging.info("Pose data (%s): %d train poses on this host, %d eval poses.",
               data_config.source, data.train.shape[0], data.eval.shape[0])
  return data


def read_split(data_config: ml_collections.ConfigDict, split: str, dim: int) -> np.ndarray:
  """`[N, dim]` float32 DOFs of `split` of `data_config`'s source (all hosts read the whole split)."""
  if data_config.source == "synthetic":
    train = split == data_config.train_split or split == "train"
    num = data_config.num_train if train else data_config.num_eval
    return synthetic_poses(num, dim, data_config.synthetic_seed, split)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds_builder(data_config)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=data_config.manual_dir, try_download_gcs=False))
  return read_tfds_split(builder, split)
