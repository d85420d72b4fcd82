"""Acclaim AMC motion reader (CMU mocap database), and the ASF + AMC pair loader.

AMC files: optional `#` comments and `:` keywords (`:FULLY-SPECIFIED`, `:DEGREES`, `:RADIANS`),
then frames numbered 1, 2, 3, ... each followed by one line per bone with DOFs. Every frame must
name every bone with DOFs exactly once (fully specified). Files may be gzipped, LF or CRLF. AMC
root translations are absolute positions (they replace the ASF root `position`). The skeleton
and its rotation conventions come from the ASF reader, `flowpose.data.asf` (`read_asf` is also
reachable here as `asf_amc.read_asf`).
"""

import math
import pathlib
from typing import List, Optional

import numpy as np

from flowpose.data import motion as motion_lib
from flowpose.data.asf import parse_float
from flowpose.data.asf import read_asf
from flowpose.data.motion import MocapFormatError, Motion, PathLike, Skeleton


def _is_frame_number(toks: List[str]) -> bool:
  # Length cap: int() refuses > 4300 digits, and no clip has 10^12 frames.
  return len(toks) == 1 and len(toks[0]) <= 12 and toks[0].isascii() and toks[0].isdigit()


def _parse_amc_fast(body: str, layout, num_dofs: int) -> Optional[np.ndarray]:
  """Bulk parse of a regular body (same bone line order every frame); None if irregular.

  Args:
    body: the text from the line `1` on.
    layout: [(bone, [dof columns])] in the bone line order of frame 1.
    num_dofs: D.

  Returns:
    [T, D] values in file units, or None (the caller then runs the line-by-line parser).
  """
  stride = 1 + sum(1 + len(cols) for _, cols in layout)
  tokens = body.split()
  if not tokens or len(tokens) % stride:
    return None
  num_frames = len(tokens) // stride
  # A token-level match plus the right line count means every line holds one bone's values.
  if body.rstrip().count("\n") + 1 != num_frames * (1 + len(layout)):
    return None
  if tokens[0::stride] != [str(i) for i in range(1, num_frames + 1)]:
    return None
  pos, value_pos, value_cols = 1, [], []
  for bone, cols in layout:
    if tokens[pos::stride].count(bone) != num_frames:
      return None
    value_pos.extend(range(pos + 1, pos + 1 + len(cols)))
    value_cols.extend(cols)
    pos += 1 + len(cols)
  try:
    values = np.array([tokens[p::stride] for p in value_pos], dtype=np.float64)
  except ValueError:
    return None
  if not np.all(np.isfinite(values)):
    return None
  out = np.empty((num_frames, num_dofs))
  out[:, value_cols] = values.T
  return out


def _parse_amc_slow(lines: List[str], first_line: int, bones, num_dofs: int,
                    path) -> np.ndarray:
  """Line-by-line AMC body parser with exact error locations. Returns [T, D] file units."""
  rows: List[np.ndarray] = []
  row, seen, frame_line = None, set(), first_line

  def finish_frame(where: int):
    missing = [b for b in bones if bones[b] and b not in seen]
    if missing:
      raise MocapFormatError(f"frame {len(rows)} (from line {frame_line}) lacks bones "
                             f"{missing} (truncated file?); expected every bone with DOFs",
                             path, where)

  last = first_line
  for n, raw in enumerate(lines, start=first_line):
    toks = raw.split()
    if not toks or toks[0].startswith("#"):
      continue
    last = n
    if _is_frame_number(toks):
      if row is not None:
        finish_frame(n)
      if int(toks[0]) != len(rows) + 1:
        raise MocapFormatError(f"frame number {toks[0]}; expected {len(rows) + 1} (frames must "
                               "be numbered 1, 2, 3, ... without gaps)", path, n)
      row, seen, frame_line = np.zeros(num_dofs), set(), n
      rows.append(row)
      continue
    if row is None:
      raise MocapFormatError(f"{toks[0]!r} before the first frame; expected frame number 1",
                             path, n)
    name, values = toks[0], toks[1:]
    if name not in bones:
      raise MocapFormatError(f"unknown bone {name!r}; expected one of {sorted(bones)}", path, n)
    if name in seen:
      raise MocapFormatError(f"bone {name!r} twice in frame {len(rows)}; expected once", path, n)
    seen.add(name)
    cols = bones[name]
    if len(values) != len(cols):
      raise MocapFormatError(f"bone {name!r} has {len(values)} values; expected {len(cols)}",
                             path, n)
    row[cols] = [parse_float(v, path, n, f"value of {name}") for v in values]
  if row is None:
    raise MocapFormatError("no frames; expected frame 1", path, last)
  finish_frame(last)
  return np.stack(rows)


def read_amc(path: PathLike, skeleton: Skeleton, fps: float = 120.0) -> Motion:
  """Reads an AMC motion for `skeleton` (from `read_asf`). AMC stores no frame rate.

  Args:
    path: the `.amc` or `.amc.gz` file.
    skeleton: the subject's skeleton.
    fps: frame rate to record (CMU: 120).

  Returns:
    Motion with SI `dof_values` (columns: `skeleton.flat_dof_names`).

  Raises:
    MocapFormatError: malformed content: unknown bone, wrong value count, non-numeric or
      non-finite value, missing/out-of-order frame number, truncated frame, no frames.
  """
  text = motion_lib.read_text(path)
  bones, col = {}, 0
  for name, dofs in zip(skeleton.joint_names, skeleton.dof_names):
    bones[name] = list(range(col, col + len(dofs)))
    col += len(dofs)
  # Header: comments, blank lines and `:` keywords before the first frame number.
  degrees, start, line_no = True, 0, 1
  while start < len(text):
    end = text.find("\n", start)
    end = len(text) if end < 0 else end
    toks = text[start:end].split()
    if toks and not toks[0].startswith("#"):
      if not toks[0].startswith(":"):
        break
      keyword = toks[0].upper()
      if keyword in (":DEGREES", ":RADIANS"):
        degrees = keyword == ":DEGREES"
    start, line_no = end + 1, line_no + 1
  body = text[start:]

  values = None
  head, pos = [], 0
  while len(head) < len(bones) + 1 and pos < len(body):  # Frame 1, without splitting it all.
    end = body.find("\n", pos)
    end = len(body) if end < 0 else end
    head.append(body[pos:end].split())
    pos = end + 1
  if head and _is_frame_number(head[0]) and head[0][0] == "1":
    layout = []
    for toks in head[1:]:  # Bone line order of frame 1 (CMU: the same in every frame).
      if not toks or _is_frame_number(toks) or toks[0] not in bones:
        break
      layout.append((toks[0], bones[toks[0]]))
    names = [b for b, _ in layout]
    if len(set(names)) == len(names) and set(names) >= {b for b, c in bones.items() if c}:
      values = _parse_amc_fast(body, layout, col)
  if values is None:
    values = _parse_amc_slow(body.splitlines(), line_no, bones, col, path)

  # File units -> SI.
  scale = np.ones(col)
  for c, (_, dof) in enumerate(skeleton.flat_dof_names):
    kind, _ = motion_lib.dof_kind(dof)
    scale[c] = skeleton.metres_per_unit if kind == "t" else (math.pi / 180 if degrees else 1.0)
  return motion_lib.motion_from_dofs(skeleton, values * scale, fps, source=str(path))


def find_asf(amc_path: PathLike) -> pathlib.Path:
  """`SS.asf` or `SS.asf.gz` beside `SS_CC.amc(.gz)`; MocapFormatError if there is none."""
  amc_path = pathlib.Path(amc_path)
  subject = amc_path.name.split("_", 1)[0].split(".", 1)[0]
  for candidate in (f"{subject}.asf", f"{subject}.asf.gz", f"{subject}.ASF"):
    if (amc_path.parent / candidate).is_file():
      return amc_path.parent / candidate
  raise MocapFormatError(f"AMC without its ASF: no {subject}.asf or {subject}.asf.gz in "
                         f"{amc_path.parent}; expected the subject's skeleton beside the AMC "
                         "(or pass asf_path)", amc_path)


def load_asf_amc(amc_path: PathLike, asf_path: Optional[PathLike] = None,
                 fps: float = 120.0) -> Motion:
  """Reads an AMC clip with its ASF skeleton (found beside it by subject prefix if not given)."""
  asf_path = find_asf(amc_path) if asf_path is None else asf_path
  return read_amc(amc_path, read_asf(asf_path), fps=fps)
