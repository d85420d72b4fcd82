"""TFDS builder `cmu_evidence`: CMU poses on the CC0 body, seen by random cameras, as 2D evidence.

    builder = Builder(config="r64_s8_v2", data_dir=DATA_DIR)   # or any "r<R>_s<stride>_v<views>"
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir="../shared/data/cmu"))

Normally prepared through `flowpose.data.evidence` (source-fingerprinted cache of
`flowpose.data.poses.prepared_builder`).

Source: the `cmu_mocap` examples (fps30) of the same manual folder, prepared through
`poses.prepared_builder` (so its cache is shared with the prior's data), split by subject as
`cmu_mocap` (train / validation / test). Of each clip every `stride`-th 30 fps frame is taken,
and each is seen by `views` cameras; training poses are left-right mirrored with probability 1/2
(the prior's augmentation). Each example is rendered by `flowpose.evidence.synth` from a numpy
Generator seeded by its key `SS_CC/frame/view` alone, so a build is deterministic and the same
key gives the same scene at every resolution (the focal scales with R).

Config names `r<R>_s<stride>_v<views>` (any values; the listed ones are the common ones):
R = crop side in px, stride = 30 fps frames between poses, views = cameras per pose. With the
prefix `self_` (the `self` regime) the evidence is what BlazePose finds in a shaded photo of
the same scene (`flowpose.evidence.synth_photo`: keypoints, visible = its keypoint score >= 0.5,
mask; part_map all background; keypoint_score = its keypoint confidences), and the rendered
truth is kept beside it for evaluation: keypoints_true, visible_true, detected, detector_score.
Every frame is stored, found or not (`detected`): `flowpose.data.evidence` drops the ones where
the detector found nobody and counts them. A `self_` build logs examples/s and its ETA.

Features (the contract in WORKSPACE.md): keypoints [17, 2], visible [17], part_map [R, R] uint8
(0 = background, 1..P = part + 1), mask [R, R] uint8, pose_dofs [50], root_rotmat [3, 3],
betas [S], transl [3], focal [], joints3d [17, 3], subject, clip, frame (source frame index at
the capture rate, as `cmu_mocap`), view. Maps are stored zlib-compressed.
"""

import dataclasses
import hashlib
import pathlib
import re
import time
from typing import Dict, List, Tuple

from absl import logging
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from flowpose.body.build import assets
from flowpose.data import poses
from flowpose.data.tfds.cmu_mocap import splits as splits_lib
from flowpose.evidence import synth

CONFIG_NAME = re.compile(r"^(self_)?r(\d+)_s(\d+)_v(\d+)$")
NUM_KEYPOINTS = 17
# Poses rendered per chunk (one batched body-model call per FORWARD_CHUNK of them).
RENDER_CHUNK = 256
SELF_VERSION = "1.1.0"
SELF_RELEASE_NOTES = {"1.0.0": "Initial release.",
                      "1.1.0": "keypoint_score: the detector's keypoint confidences."}


@dataclasses.dataclass
class CmuEvidenceConfig(tfds.core.BuilderConfig):
  """Attributes: resolution (crop side, px), stride (30 fps frames), views (cameras per pose),
  detector (the `self` regime: evidence from BlazePose on shaded photos, `synth_photo`)."""
  resolution: int = 64
  stride: int = 8
  views: int = 2
  detector: bool = False


def config_name(resolution: int, stride: int, views: int, detector: bool = False) -> str:
  """The builder-config name of these settings, e.g. "r64_s8_v2" ("self_r64_s8_v2")."""
  return f"{'self_' if detector else ''}r{int(resolution)}_s{int(stride)}_v{int(views)}"


def make_config(name: str) -> CmuEvidenceConfig:
  """`CmuEvidenceConfig` of a name `[self_]r<R>_s<stride>_v<views>`; ValueError otherwise."""
  match = CONFIG_NAME.match(name)
  if not match or min(int(g) for g in match.groups()[1:]) < 1 or int(match[2]) < 16:
    raise ValueError(f"cmu_evidence config {name!r}: expected [self_]r<R>_s<stride>_v<views> "
                     "with R >= 16 and stride, views >= 1 (e.g. r64_s8_v2)")
  resolution, stride, views = (int(g) for g in match.groups()[1:])
  source = "BlazePose on shaded photos" if match[1] else "rendered"
  # `self_` configs carry their own version (the render configs keep the builder's, so their
  # caches stay valid when only the detector evidence changes).
  versions = dict(version=SELF_VERSION, release_notes=SELF_RELEASE_NOTES) if match[1] else {}
  return CmuEvidenceConfig(
      name=name, resolution=resolution, stride=stride, views=views, detector=bool(match[1]),
      description=f"{resolution} px crops, every {stride}th 30 fps frame, {views} views, "
      f"{source} evidence.", **versions)


def example_seed(key: str) -> int:
  """The numpy seed of the example `key` ("SS_CC/frame/view")."""
  return int.from_bytes(hashlib.sha256(f"cmu_evidence/{key}".encode()).digest()[:8], "little")


class Builder(tfds.core.GeneratorBasedBuilder):
  """Synthetic 2D evidence (keypoints, parts, mask) + 3D labels of CMU poses."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "The CMU mocap folder of `cmu_mocap` (ASF/AMC clips; see its instructions).")
  BUILDER_CONFIGS = [make_config(config_name(r, 8, 2, d)) for d in (False, True)
                     for r in (64, 96, 128)]
  DEFAULT_CONFIG_NAME = "r64_s8_v2"

  def __init__(self, *, config=None, skip_bad_files: bool = False, **kwargs):
    """Args: config: a listed name, any `r<R>_s<stride>_v<views>`, or a CmuEvidenceConfig;
    skip_bad_files: passed on to `cmu_mocap` (bad clips left out instead of failing)."""
    if isinstance(config, str) and config not in {c.name for c in self.BUILDER_CONFIGS}:
      config = make_config(config.split(":")[0])
    self._skip_bad_files = skip_bad_files
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    res = self.builder_config.resolution
    num_betas = assets.load_cc0_model().num_betas
    tensor = lambda *shape: tfds.features.Tensor(shape=shape, dtype=np.float32)
    image = tfds.features.Tensor(shape=(res, res), dtype=np.uint8,
                                 encoding=tfds.features.Encoding.ZLIB)
    extra = {}
    if self.builder_config.detector:  # The `self` regime: the rendered truth kept beside.
      extra = {"keypoints_true": tensor(NUM_KEYPOINTS, 2), "visible_true": tensor(NUM_KEYPOINTS),
               "keypoint_score": tensor(NUM_KEYPOINTS),
               "detected": tfds.features.Scalar(dtype=np.bool_),
               "detector_score": tfds.features.Scalar(dtype=np.float32)}
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({**extra,
            "keypoints": tensor(NUM_KEYPOINTS, 2),
            "visible": tensor(NUM_KEYPOINTS),
            "part_map": image,
            "mask": image,
            "pose_dofs": tensor(50),
            "root_rotmat": tensor(3, 3),
            "betas": tensor(num_betas),
            "transl": tensor(3),
            "focal": tfds.features.Scalar(dtype=np.float32),
            "joints3d": tensor(NUM_KEYPOINTS, 3),
            "subject": tfds.features.Text(),
            "clip": tfds.features.Text(),
            "frame": tfds.features.Scalar(dtype=np.int32),
            "view": tfds.features.Scalar(dtype=np.int32),
        }),
        supervised_keys=None,
        homepage="http://mocap.cs.cmu.edu",
        citation=("The data used in this project was obtained from mocap.cs.cmu.edu. The "
                  "database was created with funding from NSF EIA-0196217."),
    )

  def _source_config(self, manual_dir: str) -> ml_collections.ConfigDict:
    """The `cmu_mocap` data config of `manual_dir`, cached beside this dataset's source tree."""
    data_dir = ""
    for parent in pathlib.Path(self.data_dir).parents:  # <root>/sources/<fingerprint>/...
      if parent.name == "sources":
        data_dir = str(parent.parent)
        break
    config = poses.default_config()
    config.update(manual_dir=str(manual_dir), data_dir=data_dir, fps=30,
                  skip_bad_files=self._skip_bad_files)
    return config

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    source = poses.prepared_builder(self._source_config(dl_manager.manual_dir))
    out = {}
    for split in splits_lib.SPLITS:
      if split in source.info.splits:
        frames = select_frames(source, split, self.builder_config.stride)
        if frames:
          out[split] = self._generate_examples(frames, split)
    return out

  def _generate_examples(self, frames, split: str):
    config = self.builder_config
    model = assets.load_cc0_model()
    renderer = synth.Renderer(model, config.resolution)
    scene_config = synth.default_scene_config()
    if split != "train":
      scene_config.mirror_prob = 0.0  # As the prior: only training poses are mirrored.
    photos = None
    if config.detector:
      from flowpose.evidence import synth_photo  # pylint: disable=g-import-not-at-top
      photos = synth_photo.PhotoRenderer(model, config.resolution)
    progress = _Progress(f"cmu_evidence/{config.name} {split}", len(frames) * config.views)
    for start in range(0, len(frames), RENDER_CHUNK):
      keys, scenes, meta = [], [], []
      for clip, frame, dofs in frames[start:start + RENDER_CHUNK]:
        for view in range(config.views):
          key = f"{clip}/{frame:06d}/{view}"
          rng = np.random.default_rng(example_seed(key))
          keys.append(key)
          scenes.append(synth.sample_scene(rng, dofs, scene_config, config.resolution,
                                           model.num_betas))
          meta.append({"subject": clip.split("_")[0], "clip": clip, "frame": np.int32(frame),
                       "view": np.int32(view)})
      if photos is None:
        examples = renderer.render(scenes)
      else:
        examples = [_detected(renderer, photos, key, *args)
                    for key, args in zip(keys, zip(scenes, *renderer.pose_bodies(scenes)))]
      if photos is not None:
        progress.update(len(examples), sum(not ex["detected"] for ex in examples))
      for key, example, extra in zip(keys, examples, meta):
        yield key, {**example, **extra}


class _Progress:
  """Logs examples done, examples/s, ETA and frames without a detection (`self_` builds)."""

  def __init__(self, name: str, total: int):
    self.name, self.total, self.done, self.missed = name, int(total), 0, 0
    self.start = time.monotonic()

  def update(self, done: int, missed: int) -> None:
    self.done += int(done)
    self.missed += int(missed)
    rate = self.done / max(time.monotonic() - self.start, 1e-9)
    logging.info("%s: %d/%d examples, %.1f examples/s, ETA %.0f s, detector found nobody in %d",
                 self.name, self.done, self.total, rate, (self.total - self.done) / rate,
                 self.missed)


def _detected(renderer, photos, key, scene, vertices, keypoints3d):
  """A `self` example: the rendered truth, then the detector's evidence of its photo."""
  transl = synth.place_body(vertices, scene.focal, renderer.resolution, scene.fill,
                            scene.offset)
  truth = renderer.render_at(scene, vertices + transl, keypoints3d + transl, transl)
  rng = np.random.default_rng([example_seed(key), 1])  # Independent of the scene's draws.
  return photos.detect(rng, scene, vertices + transl, truth)


def select_frames(source, split: str, stride: int) -> List[Tuple[str, int, np.ndarray]]:
  """`(clip, frame, dofs [50])` of every `stride`-th frame of each clip of `split`, sorted."""
  ds = source.as_dataset(split=split, shuffle_files=False)
  ds = ds.map(tf.autograph.experimental.do_not_convert(
      lambda ex: (ex["clip"], ex["frame"], ex["dofs"]))).batch(8192)
  per_clip: Dict[str, List[Tuple[int, np.ndarray]]] = {}
  for clips, frame_ids, dofs in tfds.as_numpy(ds):
    for clip, frame, pose in zip(clips, frame_ids, dofs):
      per_clip.setdefault(clip.decode(), []).append((int(frame), pose))
  out = []
  for clip in sorted(per_clip):
    for frame, pose in sorted(per_clip[clip], key=lambda x: x[0])[::stride]:
      out.append((clip, frame, pose))
  return out
