"""TFDS builder `cmu_mocap`: CMU motion capture retargeted onto the CC0 body model.

    builder = Builder(config="fps30", data_dir=DATA_DIR)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir="../shared/data/cmu"))
    ds = builder.as_dataset(split="train")

One example = one frame (`fps30`, `fps120`) or one window of T frames (`fps30_win32`,
`fps30_win64`; per-frame features get a leading [T]). Features (WORKSPACE.md contract):
`dofs [50]` canonical chart angles (rad), `rot6d [31, 6]` body-model local rotations (first two
columns), `root_orient [3]` axis-angle, `root_transl [3]` metres (the `transl` argument of
`flowpose.body.model.forward`: puts the model's hip centre on CMU's), `joints3d [31, 3]` posed
joints at the mean shape (world, metres), `subject`, `clip` ("02_01"), `description`
(index.csv, else ""), `frame` (0-based frame index in the source clip at its capture rate).
Retargeting: `flowpose.data.retarget`. Splits by subject: `flowpose.data.tfds.cmu_mocap.splits`.

Sources: one or several clip folders (`manual_dirs`, see `Builder`): ASF/AMC and CMU-skeleton
BVH clips named `SS_CC` (`flowpose.data.clips`: MotionBuilder or 3ds Max joint names, converter
T-pose frame dropped, rest re-expressed in CMU's T-pose).

Bad input: every clip is read and retargeted before anything is written; a build with bad
files (MocapFormatError from the readers, an AMC without its ASF, a bad index.csv) fails with one
MocapFormatError listing all of them, or with `skip_bad_files=True` leaves them out, logs them
and writes them to `bad_files.json` in the dataset folder. TFDS builds in a temporary folder
that is renamed at the end, so a failed build leaves no prepared dataset.
"""

import dataclasses
import json
import pathlib
from typing import Dict, List, Tuple

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from flowpose.data import clips as clips_lib
from flowpose.data import motion as motion_lib
from flowpose.data import retarget
from flowpose.data.tfds.cmu_mocap import splits as splits_lib
from flowpose.data.cmu_skeleton import NUM_POSE_DOFS
from flowpose.data.motion import MocapFormatError

NUM_JOINTS = retarget.NUM_JOINTS

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the CMU Graphics Lab Motion Capture Database in ASF/AMC format from
http://mocap.cs.cmu.edu (page "Get the data": `allasfamc.zip` with all subjects; or single
subjects/trials from the subject search pages) and unzip it into `manual_dir`. Any layout
works: every `SS_CC.amc` (or `.amc.gz`) found under manual_dir is used with the subject's
`SS.asf` (or `.asf.gz`) from the same folder, and every CMU-skeleton `SS_CC.bvh[.gz]`, e.g. `all_asfamc/subjects/02/02_01.amc` +
`02.asf`. Optional `manual_dir/index.csv` (`file,subject,clip,frames,fps,description`) gives
descriptions and frame rates (default 120 fps; some CMU subjects are 60 fps). In this repository
the tests and benchmarks use `manual_dir=../shared/data/cmu` (8 subjects, see its README).
Licence: free for research and commercial use; please acknowledge "The data used in this project
was obtained from mocap.cs.cmu.edu. The database was created with funding from NSF
EIA-0196217."
"""


@dataclasses.dataclass
class CmuMocapConfig(tfds.core.BuilderConfig):
  """Frame rate and windowing.

  Attributes:
    fps: output frame rate; frames are the nearest source frames (120 -> 30: every 4th).
    window: 0 for one frame per example, else T frames per example.
    window_stride: frames between window starts (clips shorter than `window` give none).
  """
  fps: float = 30.0
  window: int = 0
  window_stride: int = 16


class Builder(tfds.core.GeneratorBasedBuilder):
  """CMU mocap frames (or windows) retargeted onto the CC0 body model."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: CMU ASF/AMC -> canonical DOF chart + CC0 body.",
                   "1.1.0": "CMU-skeleton BVH clips (MB or 3ds Max names); several folders."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      CmuMocapConfig(name="fps30", description="30 fps, one frame per example.", fps=30.0),
      CmuMocapConfig(name="fps120", description="120 fps (source rate), one frame per example.",
                     fps=120.0),
      CmuMocapConfig(name="fps30_win32", description="30 fps windows of 32 frames, stride 16.",
                     fps=30.0, window=32, window_stride=16),
      CmuMocapConfig(name="fps30_win64", description="30 fps windows of 64 frames, stride 32.",
                     fps=30.0, window=64, window_stride=32),
  ]
  DEFAULT_CONFIG_NAME = "fps30"

  def __init__(self, *, skip_bad_files: bool = False, manual_dirs=None, **kwargs):
    """Args: skip_bad_files: leave bad files out (logged, `bad_files.json`) instead of failing;
    manual_dirs: several clip folders read together (default: the download config's
    `manual_dir`); a clip name in two folders is taken from the first."""
    self._skip_bad_files = skip_bad_files
    self._manual_dirs = [pathlib.Path(d) for d in manual_dirs] if manual_dirs else None
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    window = self.builder_config.window
    lead = (window,) if window else ()
    tensor = lambda *shape: tfds.features.Tensor(shape=lead + shape, dtype=np.float32)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "dofs": tensor(NUM_POSE_DOFS),
            "rot6d": tensor(NUM_JOINTS, 6),
            "root_orient": tensor(3),
            "root_transl": tensor(3),
            "joints3d": tensor(NUM_JOINTS, 3),
            "subject": tfds.features.Scalar(dtype=np.int64),
            "clip": tfds.features.Text(),
            "description": tfds.features.Text(),
            "frame": (tfds.features.Tensor(shape=lead, dtype=np.int64) if window
                      else tfds.features.Scalar(dtype=np.int64)),
        }),
        supervised_keys=None,
        homepage="http://mocap.cs.cmu.edu",
        citation=("The data used in this project was obtained from mocap.cs.cmu.edu. The "
                  "database was created with funding from NSF EIA-0196217."),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    folders = self._manual_dirs or [pathlib.Path(dl_manager.manual_dir)]
    manual_dir = ", ".join(str(f) for f in folders)
    errors: List[Tuple[str, str]] = []
    clips, seen = [], set()
    for folder in folders:
      index = {}
      if (folder / "index.csv").is_file():
        try:
          index = splits_lib.read_index(folder / "index.csv")
        except MocapFormatError as e:
          errors.append((str(folder / "index.csv"), str(e)))
      for clip in splits_lib.list_clips(folder, index):
        if clip.name in seen:  # The first folder given wins (splits_lib.list_clips_in).
          logging.warning("cmu_mocap: %s ignored, clip %s came from an earlier folder",
                          clip.amc_path, clip.name)
          continue
        seen.add(clip.name)
        clips.append(clip)
    if not clips:
      raise FileNotFoundError(f"no SS_CC.amc[.gz] / SS_CC.bvh[.gz] files under {manual_dir}.\n"
                              f"{MANUAL_DOWNLOAD_INSTRUCTIONS}")
    prepared: Dict[str, List[Tuple[splits_lib.Clip, dict]]] = {s: [] for s in splits_lib.SPLITS}
    for clip in clips:
      try:
        prepared[clip.split].append((clip, prepare_clip(clip, self.builder_config.fps)))
      except MocapFormatError as e:
        errors.append((str(clip.amc_path), str(e)))
    if errors:
      listing = "\n".join(f"  {path}: {message}" for path, message in errors)
      if not self._skip_bad_files:
        raise MocapFormatError(f"{len(errors)} bad file(s) under {manual_dir}; nothing was "
                               "written (fix or remove them, or build with "
                               "skip_bad_files=True: in training, "
                               f"--config.data.skip_bad_files=True):\n{listing}")
      logging.warning("cmu_mocap: skipping %d bad file(s):\n%s", len(errors), listing)
    if self._skip_bad_files:
      report = [{"file": path, "error": message} for path, message in errors]
      (pathlib.Path(self.data_dir) / "bad_files.json").write_text(json.dumps(report, indent=1))
    return {split: self._generate_examples(items) for split, items in prepared.items() if items}

  def _generate_examples(self, items):
    window, stride = self.builder_config.window, self.builder_config.window_stride
    for clip, arrays in items:
      meta = {"subject": clip.subject, "clip": clip.name, "description": clip.description}
      num_frames = len(arrays["frame"])
      if not window:
        for t in range(num_frames):
          yield f"{clip.name}/{arrays['frame'][t]:06d}", {
              **meta, **{k: v[t] for k, v in arrays.items()}}
      else:
        for start in range(0, num_frames - window + 1, stride):
          yield f"{clip.name}/{arrays['frame'][start]:06d}", {
              **meta, **{k: v[start:start + window] for k, v in arrays.items()}}


def prepare_clip(clip: splits_lib.Clip, fps: float) -> Dict[str, np.ndarray]:
  """Reads, resamples and retargets one clip.

  Args:
    clip: the clip (an AMC with its ASF beside it, or a CMU-skeleton BVH).
    fps: output rate; frames are the nearest source frames.

  Returns:
    Per-frame arrays: dofs [T, 50], rot6d [T, 31, 6], root_orient [T, 3], root_transl [T, 3],
    joints3d [T, 31, 3] (float32) and frame [T] (int64 source frame indices).

  Raises:
    MocapFormatError: bad file content, or no ASF for the AMC.
  """
  motion = clips_lib.read_clip(clip.amc_path, clip.fps)  # BVH: its own rate, T-pose dropped.
  ratio = motion.fps / fps
  count = int(np.floor((motion.num_frames - 1) / ratio + 1e-9)) + 1 if motion.num_frames else 0
  frames = np.minimum(np.floor(np.arange(count) * ratio + 0.5).astype(np.int64),
                      motion.num_frames - 1)
  motion = motion_lib.select_frames(motion, frames, fps)
  body = retarget.motion_to_body(motion)
  rot6d = np.concatenate([body["rotmats"][..., :, 0], body["rotmats"][..., :, 1]], axis=-1)
  return {
      "dofs": body["dofs"].astype(np.float32),
      "rot6d": rot6d.astype(np.float32),
      "root_orient": body["root_orient"].astype(np.float32),
      "root_transl": body["root_transl"].astype(np.float32),
      "joints3d": retarget.body_joints(body["rotmats"], body["root_transl"]),
      "frame": frames,
  }
