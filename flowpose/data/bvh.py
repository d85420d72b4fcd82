"""BVH (Biovision hierarchy) reader and writer.

Reading: `HIERARCHY` with one `ROOT`, nested `JOINT`s and `End Site`s, each with `OFFSET` and
`CHANNELS` (any order of `X/Y/Zrotation`, `X/Y/Zposition`, on any joint), then `MOTION`,
`Frames:`, `Frame Time:` and one line of channel values per frame.

Semantics (as Blender and MotionBuilder read BVH): rest frames are world-aligned; the rotation
channels of a joint compose intrinsically in channel order (`Zrotation Yrotation Xrotation` ->
`R = Rz @ Ry @ Rx`), in degrees; position channels give the joint's translation from its parent
in the parent frame and replace the OFFSET coordinate (root position channels are absolute).
BVH has no unit: `metres_per_unit` says what one file unit is (default 1: metres).
"""

import gzip
import math
import pathlib
import re
from typing import Dict, List, Optional, Tuple

import numpy as np

from flowpose import io_utils

from flowpose.data import motion as motion_lib
from flowpose.data import rotations_np
from flowpose.data.motion import MocapFormatError, Motion, PathLike, Skeleton

_FRAMES = re.compile(r"\s*frames\s*:\s*(\S+)\s*$", re.IGNORECASE)
_FRAME_TIME = re.compile(r"\s*frame\s+time\s*:\s*(\S+)\s*$", re.IGNORECASE)


class _Tokens:
  """Hierarchy tokens with line numbers; braces are tokens of their own."""

  def __init__(self, lines: List[str], path):
    self.items = [(tok, n) for n, line in enumerate(lines, start=1)
                  for tok in line.replace("{", " { ").replace("}", " } ").split()]
    self.pos, self.path = 0, path
    self.last_line = len(lines)

  def peek(self) -> Tuple[Optional[str], int]:
    if self.pos < len(self.items):
      return self.items[self.pos]
    return None, self.last_line

  def next(self, expected: str) -> Tuple[str, int]:
    tok, line = self.peek()
    if tok is None:
      raise MocapFormatError(f"hierarchy ends early (truncated file?); expected {expected}",
                             self.path, line)
    self.pos += 1
    return tok, line

  def keyword(self, word: str) -> int:
    tok, line = self.next(word)
    if tok.upper() != word.upper():
      raise MocapFormatError(f"found {tok!r}; expected {word}", self.path, line)
    return line

  def numbers(self, count: int, what: str) -> List[float]:
    out = []
    for _ in range(count):
      tok, line = self.next(f"{count} numbers for {what}")
      try:
        value = float(tok)
      except ValueError:
        raise MocapFormatError(f"non-numeric {what} value {tok!r}; expected a number",
                               self.path, line) from None
      if not math.isfinite(value):
        raise MocapFormatError(f"non-finite {what} value {tok!r}; expected a finite number",
                               self.path, line)
      out.append(value)
    return out


def _parse_hierarchy(tokens: _Tokens, path):
  """Returns joints: list of dicts (name, parent, offset, channels), end_sites {j: offset}."""
  tokens.keyword("HIERARCHY")
  tokens.keyword("ROOT")
  joints, end_sites, stack = [], {}, []
  keyword_line = tokens.items[tokens.pos - 1][1]
  while True:
    # A joint header: the name is the rest of the ROOT/JOINT line, up to `{`.
    name_parts = []
    while tokens.peek()[0] not in (None, "{") and tokens.peek()[1] == keyword_line:
      name_parts.append(tokens.next("joint name")[0])
    if not name_parts:
      raise MocapFormatError("joint without a name; expected `JOINT name`", path, keyword_line)
    name = " ".join(name_parts)
    if any(j["name"] == name for j in joints):
      raise MocapFormatError(f"duplicate joint name {name!r}; expected unique names", path,
                             keyword_line)
    tokens.keyword("{")
    joints.append({"name": name, "parent": stack[-1] if stack else -1, "offset": None,
                   "channels": None, "line": keyword_line})
    stack.append(len(joints) - 1)
    # Joint body: OFFSET, CHANNELS, JOINT, End Site, `}` until this joint's stack is empty.
    while stack:
      tok, line = tokens.next("OFFSET, CHANNELS, JOINT, End Site or }")
      word, joint = tok.upper(), joints[stack[-1]]
      if word == "OFFSET":
        if joint["offset"] is not None:
          raise MocapFormatError(f"second OFFSET for {joint['name']!r}; expected one", path, line)
        joint["offset"] = tokens.numbers(3, "OFFSET")
      elif word == "CHANNELS":
        if joint["channels"] is not None:
          raise MocapFormatError(f"second CHANNELS for {joint['name']!r}; expected one", path,
                                 line)
        count_tok, _ = tokens.next("channel count")
        if not (count_tok.isascii() and count_tok.isdigit() and len(count_tok) < 3 and int(
            count_tok) <= 6):
          raise MocapFormatError(f"channel count {count_tok!r}; expected an integer 0..6", path,
                                 line)
        channels = [tokens.next("channel name")[0] for _ in range(int(count_tok))]
        for ch in channels:
          try:
            motion_lib.dof_kind(ch)
          except ValueError:
            raise MocapFormatError(f"unknown channel {ch!r}; expected X/Y/Z + rotation or "
                                   "position", path, line) from None
        positions = [c.lower() for c in channels if motion_lib.dof_kind(c)[0] == "t"]
        if len(set(positions)) != len(positions):  # (Proper Euler orders repeat a rotation.)
          raise MocapFormatError(f"repeated position channel in {channels}; expected distinct",
                                 path, line)
        joint["channels"] = channels
      elif word == "JOINT":
        keyword_line = line
        break  # Parse the child's header in the outer loop.
      elif word == "END":
        tokens.keyword("Site")
        tokens.keyword("{")
        tokens.keyword("OFFSET")
        offset = tokens.numbers(3, "End Site OFFSET")
        tokens.keyword("}")
        if stack[-1] in end_sites:
          raise MocapFormatError(f"second End Site in {joint['name']!r}; expected one", path,
                                 line)
        end_sites[stack[-1]] = offset
      elif word == "}":
        if joint["offset"] is None:
          raise MocapFormatError(f"joint {joint['name']!r} has no OFFSET; expected one", path,
                                 joint["line"])
        stack.pop()
      else:
        raise MocapFormatError(f"found {tok!r}; expected OFFSET, CHANNELS, JOINT, End Site or }}",
                               path, line)
    if not stack:
      break
  tok, line = tokens.peek()
  if tok is not None:
    raise MocapFormatError(f"found {tok!r} after the root joint closed; expected MOTION", path,
                           line)
  return joints, end_sites


def _parse_frame_values(lines: List[str], first_line: int, num_frames: int,
                        num_channels: int, path) -> np.ndarray:
  """[num_frames, num_channels] from the data lines, with exact error locations."""
  while lines and not lines[-1].strip():
    lines = lines[:-1]
  if len(lines) == num_frames:  # Fast path: one bulk conversion.
    tokens = "\n".join(lines).split()
    if len(tokens) == num_frames * num_channels:
      try:
        values = np.array(tokens, dtype=np.float64).reshape(num_frames, num_channels)
      except ValueError:
        values = None
      if values is not None and np.all(np.isfinite(values)):
        return values
  rows = []
  for n, line in enumerate(lines, start=first_line):
    toks = line.split()
    if not toks:
      continue
    if len(rows) == num_frames:
      raise MocapFormatError(f"more frame lines than `Frames: {num_frames}`; expected "
                             f"{num_frames}", path, n)
    if len(toks) != num_channels:
      raise MocapFormatError(f"frame {len(rows) + 1} has {len(toks)} values; expected "
                             f"{num_channels} (one per channel)", path, n)
    row = []
    for tok in toks:
      try:
        value = float(tok)
      except ValueError:
        raise MocapFormatError(f"non-numeric value {tok!r} in frame {len(rows) + 1}; expected "
                               "a number", path, n) from None
      if not math.isfinite(value):
        raise MocapFormatError(f"non-finite value {tok!r} in frame {len(rows) + 1}; expected a "
                               "finite number", path, n)
      row.append(value)
    rows.append(row)
  if len(rows) != num_frames:
    raise MocapFormatError(f"only {len(rows)} frame lines (truncated file?); expected "
                           f"{num_frames} (`Frames: {num_frames}`)", path,
                           first_line + len(lines) - 1)
  return np.array(rows, dtype=np.float64).reshape(num_frames, num_channels)


def read_bvh(path: PathLike, metres_per_unit: float = 1.0) -> Motion:
  """Reads a BVH file (gzip, LF or CRLF) into a Motion.

  Args:
    path: the `.bvh` or `.bvh.gz` file.
    metres_per_unit: length of one file unit in metres (e.g. 0.01 for centimetres).

  Returns:
    Motion with joints in file order, identity axis frames, SI `dof_values` (one column per
    channel, file order) and `fps = 1 / Frame Time`.

  Raises:
    MocapFormatError: malformed content (message has the path and line), or no frames.
  """
  lines = motion_lib.read_text(path).splitlines()
  motion_line = next((n for n, line in enumerate(lines)
                      if line.split()[:1] and line.split()[0].upper() == "MOTION"), None)
  if motion_line is None:
    raise MocapFormatError("no MOTION line (truncated file?); expected HIERARCHY ... MOTION",
                           path, len(lines))
  joints, end_sites = _parse_hierarchy(_Tokens(lines[:motion_line], path), path)

  header, n = [], motion_line + 1
  while len(header) < 2 and n < len(lines):
    if lines[n].strip():
      header.append((n + 1, lines[n]))
    n += 1
  if len(header) < 2:
    raise MocapFormatError("MOTION without `Frames:` and `Frame Time:` lines (truncated "
                           "file?)", path, len(lines))
  (frames_line, frames_text), (time_line, time_text) = header
  frames_match, time_match = _FRAMES.match(frames_text), _FRAME_TIME.match(time_text)
  if not frames_match or not (frames_match[1].isascii() and frames_match[1].isdigit() and
                              len(frames_match[1]) <= 12):
    raise MocapFormatError(f"{frames_text.strip()!r}; expected `Frames: <integer>`", path,
                           frames_line)
  if int(frames_match[1]) == 0:
    # A clip without frames is not a motion: downstream it would silently count as 0 poses.
    raise MocapFormatError("`Frames: 0`; expected at least one frame", path, frames_line)
  try:
    frame_time = float(time_match[1]) if time_match else float("nan")
  except ValueError:
    frame_time = float("nan")
  if not (0 < frame_time < math.inf and 0 < 1.0 / frame_time < math.inf):
    raise MocapFormatError(f"{time_text.strip()!r}; expected `Frame Time: <seconds > 0>`", path,
                           time_line)

  channels = [j["channels"] or [] for j in joints]
  num_channels = sum(len(c) for c in channels)
  if num_channels == 0:
    raise MocapFormatError("no joint has CHANNELS; expected at least one channel", path,
                           frames_line)
  values = _parse_frame_values(lines[n:], n + 1, int(frames_match[1]), num_channels, path)
  scale = np.array([metres_per_unit if motion_lib.dof_kind(c)[0] == "t" else math.pi / 180
                    for chans in channels for c in chans])
  skeleton = Skeleton(
      joint_names=tuple(j["name"] for j in joints),
      parents=np.array([j["parent"] for j in joints]),
      offsets=np.array([j["offset"] for j in joints], np.float64) * metres_per_unit,
      dof_names=tuple(tuple(c) for c in channels),
      axis_frames=np.broadcast_to(np.eye(3), (len(joints), 3, 3)),
      rotation_orders=tuple("".join(c[0].upper() for c in chans
                                    if motion_lib.dof_kind(c)[0] == "r") for chans in channels),
      end_sites={j: np.multiply(v, metres_per_unit) for j, v in end_sites.items()},
      metres_per_unit=metres_per_unit,
      name=joints[0]["name"])
  return motion_lib.motion_from_dofs(skeleton, values * scale, 1.0 / frame_time,
                                     source=str(path))


def _atomic_write_text(path: PathLike, text: str) -> None:
  """Writes text to `path` atomically (temp file in the same folder, then os.replace).

  A path ending in `.gz` is gzip-compressed.
  """
  data = text.encode("utf-8")
  if pathlib.Path(path).suffix == ".gz":
    data = gzip.compress(data, mtime=0)
  io_utils.atomic_write(path, data)


def _check_name(name: str) -> str:
  if not name or any(c.isspace() or c in "{}" for c in name):
    raise ValueError(f"joint name {name!r} cannot be written to BVH (whitespace or braces)")
  return name


def write_bvh(motion: Motion, path: PathLike, rotation_order: str = "ZYX",
              metres_per_unit: float = 1.0) -> None:
  """Writes any Motion (BVH- or ASF-derived) as BVH, atomically (`.gz` paths are gzipped).

  Joints are written depth-first (children in index order) with `rotation_order` rotation
  channels in degrees (`"%.6f"`); the root also gets `X/Y/Zposition` (its absolute position),
  and other joints get position channels when `local_translations` animates them. OFFSETs are
  the skeleton's rest offsets; leaves get an `End Site` (the skeleton's end site, or zero).
  Lengths are divided by `metres_per_unit` and printed with `"%.8f"`.

  Args:
    motion: the clip.
    path: output file.
    rotation_order: intrinsic Euler order of the rotation channels, e.g. "ZYX".
    metres_per_unit: length of one file unit in metres.
  """
  skel = motion.skeleton
  if motion.num_frames == 0:
    raise ValueError(f"write_bvh: {path}: the motion has no frames; a BVH needs at least one "
                     "(read_bvh refuses `Frames: 0`)")
  order = rotation_order.upper()
  rot_channels = [f"{a}rotation" for a in order]
  euler = rotations_np.matrix_to_euler_np(motion.local_rotations, order, degrees=True)
  kids: Dict[int, List[int]] = {j: list(skel.children(j)) for j in range(skel.num_joints)}
  # Non-root joints get position channels when their translation is animated (or declared).
  moving = [j > 0 and motion.local_translations is not None and (
      any(motion_lib.dof_kind(d)[0] == "t" for d in skel.dof_names[j]) or not np.allclose(
          motion.local_translations[:, j], skel.offsets[j], rtol=0, atol=1e-12))
            for j in range(skel.num_joints)]

  fmt_len = lambda v: " ".join("%.8f" % (x / metres_per_unit) for x in v)
  text, columns, formats = ["HIERARCHY"], [], []

  def write_joint(j: int, depth: int):
    pad = "  " * depth
    keyword = "ROOT" if j == 0 else "JOINT"
    text.append(f"{pad}{keyword} {_check_name(skel.joint_names[j])}")
    text.append(f"{pad}{{")
    text.append(f"{pad}  OFFSET {fmt_len(skel.offsets[j])}")
    channels = list(rot_channels)
    if j == 0 or moving[j]:
      channels = ["Xposition", "Yposition", "Zposition"] + channels
      source = motion.root_translation if j == 0 else motion.local_translations[:, j]
      columns.append(source / metres_per_unit)
      formats.extend(["%.8f"] * 3)
    columns.append(euler[:, j])
    formats.extend(["%.6f"] * 3)
    text.append(f"{pad}  CHANNELS {len(channels)} {' '.join(channels)}")
    for kid in kids[j]:
      write_joint(kid, depth + 1)
    if not kids[j] or j in skel.end_sites:
      text.extend([f"{pad}  End Site", f"{pad}  {{",
                   f"{pad}    OFFSET {fmt_len(skel.end_sites.get(j, np.zeros(3)))}",
                   f"{pad}  }}"])
    text.append(f"{pad}}}")

  write_joint(0, 0)
  data = np.concatenate(columns, axis=1) if columns else np.zeros((motion.num_frames, 0))
  row_format = " ".join(formats)
  text += ["MOTION", f"Frames: {motion.num_frames}", f"Frame Time: {1.0 / motion.fps!r}"]
  text += [row_format % tuple(row) for row in data.tolist()]
  _atomic_write_text(path, "\n".join(text) + "\n")
