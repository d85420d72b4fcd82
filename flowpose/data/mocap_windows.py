"""Windows of consecutive frames from any folder of CMU ASF/AMC clips (numpy, no TFDS).

Evaluation and benchmarks of the motion model read folders "as given" (`--mocap_dir`), so they
do not go through the TFDS cache: each clip is read, resampled and retargeted exactly as the
`cmu_mocap` builder does (`cmu_mocap_dataset_builder.prepare_clip`), then cut into windows of
`window` frames every `stride` frames, in clip order (the builder's windows configs cut the
same way).

    w = folder_windows("../shared/data/cmu_more", window=32, stride=16)
    w.dofs [N, 32, 50], w.root_orient [N, 32, 3], w.root_transl [N, 32, 3], w.clips [N]
"""

import pathlib
from typing import List, NamedTuple

import numpy as np

from flowpose.data.motion import MocapFormatError
from flowpose.data.tfds.cmu_mocap import cmu_mocap_dataset_builder as builder_lib
from flowpose.data.tfds.cmu_mocap import splits


class Windows(NamedTuple):
  """Windows of T frames.

  Attributes:
    dofs: [N, T, 50] chart DOF angles (rad).
    root_orient: [N, T, 3] axis-angle of the body root (world).
    root_transl: [N, T, 3] metres (the body model's `transl`).
    clips: [N] clip name of each window ("02_01").
    starts: [N] first frame of each window (at the output rate).
    fps: the output frame rate.
  """
  dofs: np.ndarray
  root_orient: np.ndarray
  root_transl: np.ndarray
  clips: List[str]
  starts: np.ndarray
  fps: float


def folder_windows(mocap_dir, window: int, stride: int, fps: float = 30.0,
                   split: str = "all") -> Windows:
  """Every window of every ASF/AMC clip under `mocap_dir` (one CMU `split` or "all").

  Raises:
    ValueError: no such folder, no clips, or no clip as long as one window (names the folder).
    MocapFormatError: a bad clip (names the file).
  """
  folder = pathlib.Path(mocap_dir)
  if not folder.is_dir():
    raise ValueError(f"--mocap_dir: {folder} is not a folder")
  if window < 1 or stride < 1:
    raise ValueError(f"window and stride must be >= 1, got {window}, {stride}")
  clips = [c for c in splits.list_clips(folder) if split == "all" or c.split == split]
  if not clips:
    raise ValueError(f"--mocap_dir: {folder} holds no SS_CC.amc[.gz] clip"
                     + ("" if split == "all" else f" of the {split!r} split"))
  out = {k: [] for k in ("dofs", "root_orient", "root_transl")}
  names, starts = [], []
  for clip in clips:
    try:
      arrays = builder_lib.prepare_clip(clip, fps)
    except MocapFormatError as e:
      raise MocapFormatError(f"{clip.amc_path}: {e}") from None
    for start in range(0, len(arrays["frame"]) - window + 1, stride):
      for key in out:
        out[key].append(arrays[key][start:start + window])
      names.append(clip.name)
      starts.append(start)
  if not names:
    raise ValueError(f"--mocap_dir: no clip of {folder} has {window} frames at {fps} fps")
  return Windows(*(np.stack(out[k]).astype(np.float32) for k in out), names,
                 np.asarray(starts), float(fps))
