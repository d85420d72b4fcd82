"""Acclaim ASF (skeleton) / AMC (motion) reader, as used by the CMU mocap database.

ASF semantics (CMU / Acclaim viewer convention):

* Joint j sits where bone j starts (the end of its parent bone); bones hanging off the root start
  at the root. So `offsets[j] = direction_parent * length_parent` (zero under the root), and
  leaf bones get an end site `direction * length`.
* Lengths: `:units length L` means one file unit is 1/L inch, i.e. `0.0254 / L` metres (CMU:
  L = 0.45 -> 0.05644 m). Angles: `:units angle deg|rad` (axis, orientation, limits).
* Bone `axis a b c XYZ` is the bone's axis frame `C = euler(a, b, c, "XYZ", extrinsic)`. The AMC
  values rotate about the bone's own axes, about fixed X, then Y, then Z (extrinsic XYZ over the
  DOFs present, whatever their order on the `dof` line, which only orders the AMC values):
  `R = Rz(rz) Ry(ry) Rx(rx)`, and the world-aligned local rotation is `L = C R C^T`.
* Root: `order` gives the AMC value order and the (extrinsic) order of its rotations, `axis` +
  `orientation` its axis frame, `position` its rest position. AMC root translations are
  absolute positions (they replace `position`).

AMC files: optional `#` comments and `:` keywords (`:FULLY-SPECIFIED`, `:DEGREES`, `:RADIANS`),
then frames numbered 1, 2, 3, ... each followed by one line per bone with DOFs. Every frame must
name every bone with DOFs exactly once (fully specified). Files may be gzipped, LF or CRLF.
"""

import math
import pathlib
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from flowpose.data import motion as motion_lib
from flowpose.data.motion import MocapFormatError, Motion, PathLike, Skeleton

_ROOT = "root"
_ROOT_DOFS = ("tx", "ty", "tz", "rx", "ry", "rz")
_BONE_DOFS = ("rx", "ry", "rz")
_LIMIT_PAIR = re.compile(r"\(\s*([^\s()]+)\s+([^\s()]+)\s*\)")


def _float(token: str, path, line: int, what: str, allow_inf: bool = False) -> float:
  try:
    value = float(token)
  except ValueError:
    raise MocapFormatError(f"non-numeric {what} {token!r}; expected a number", path,
                           line) from None
  if math.isnan(value) or (math.isinf(value) and not allow_inf):
    raise MocapFormatError(f"non-finite {what} {token!r}; expected a finite number", path, line)
  return value


def _floats(tokens: Sequence[str], count: int, path, line: int, what: str) -> List[float]:
  if len(tokens) != count:
    raise MocapFormatError(f"{what} has {len(tokens)} values; expected {count}", path, line)
  return [_float(t, path, line, what) for t in tokens]


def _axis_order(token: str, path, line: int) -> str:
  order = token.upper()
  if sorted(order) != ["X", "Y", "Z"]:
    raise MocapFormatError(f"axis order {token!r}; expected a permutation of XYZ", path, line)
  return order


# --- ASF ---


def _parse_bone(block: List[Tuple[int, List[str]]], path, begin_line: int) -> dict:
  """One `begin ... end` bonedata block -> dict of raw (file-unit) fields."""
  bone = {"line": begin_line, "axis": ([0.0, 0.0, 0.0], "XYZ"), "dof": (), "limits": [],
          "lines": {}}
  for n, (line, toks) in enumerate(block):
    key, args = toks[0].lower(), toks[1:]
    bone["lines"][key] = line
    if key == "name":
      if len(args) != 1:
        raise MocapFormatError(f"bone name {' '.join(args)!r}; expected one token", path, line)
      bone["name"] = args[0]
    elif key == "direction":
      bone["direction"] = _floats(args, 3, path, line, "direction")
    elif key == "length":
      (bone["length"],) = _floats(args, 1, path, line, "length")
      if bone["length"] < 0:
        raise MocapFormatError(f"negative bone length {args[0]}; expected >= 0", path, line)
    elif key == "axis":
      if len(args) != 4:
        raise MocapFormatError("axis line; expected `axis a b c ORDER`", path, line)
      bone["axis"] = (_floats(args[:3], 3, path, line, "axis"), _axis_order(args[3], path, line))
    elif key == "dof":
      dofs = tuple(a.lower() for a in args)
      bad = [d for d in dofs if d not in _BONE_DOFS]
      if bad or len(set(dofs)) != len(dofs):
        raise MocapFormatError(f"bone DOFs {args}; expected distinct names among rx ry rz "
                               "(translation and length DOFs are not supported)", path, line)
      bone["dof"] = dofs
    elif key == "limits":
      # Limits continue on the following lines that start with "(".
      text = " ".join(args)
      for _, cont in block[n + 1:]:
        if not cont[0].startswith("("):
          break
        text += " " + " ".join(cont)
      pairs = _LIMIT_PAIR.findall(text)
      if not pairs or _LIMIT_PAIR.sub("", text).strip():
        raise MocapFormatError(f"limits {text!r}; expected pairs like (-160.0 20.0)", path, line)
      bone["limits"] = [(_float(a, path, line, "limit", True), _float(b, path, line, "limit",
                                                                      True)) for a, b in pairs]
    elif key.startswith("("):
      continue  # Continuation of `limits`, consumed above.
    # Other keys (id, bodymass, cofmass, ...) do not affect kinematics.
  for key in ("name", "direction", "length"):
    if key not in bone:
      raise MocapFormatError(f"bone block has no `{key}`; expected name, direction, length",
                             path, begin_line)
  if bone["limits"] and len(bone["limits"]) != len(bone["dof"]):
    raise MocapFormatError(f"bone {bone['name']} has {len(bone['limits'])} limits for "
                           f"{len(bone['dof'])} DOFs; expected one (min max) pair per DOF", path,
                           bone["lines"]["limits"])
  return bone


def _parse_asf_sections(lines: List[str], path):
  """Splits ASF lines into {section: [(line number, tokens)]}, comments and blanks removed."""
  sections: Dict[str, List[Tuple[int, List[str]]]] = {}
  current = None
  for n, raw in enumerate(lines, start=1):
    toks = raw.split("#", 1)[0].split()
    if not toks:
      continue
    if toks[0].startswith(":"):
      current = toks[0].lower()
      if current in sections and current in (":root", ":bonedata", ":hierarchy", ":units"):
        raise MocapFormatError(f"duplicate section {toks[0]}; expected it once", path, n)
      sections[current] = [(n, toks)]
      continue
    if current is None:
      raise MocapFormatError(f"{toks[0]!r} before any section; expected a `:keyword` line", path,
                             n)
    sections[current].append((n, toks))
  return sections


def read_asf(path: PathLike, metres_per_unit: Optional[float] = None) -> Skeleton:
  """Reads an ASF skeleton (gzip, LF or CRLF).

  Args:
    path: the `.asf` or `.asf.gz` file.
    metres_per_unit: override the length unit (default `0.0254 / :units length`).

  Returns:
    The Skeleton, joints in depth-first order of `:hierarchy` (root first).

  Raises:
    MocapFormatError: malformed content (message has the path and line).
  """
  sections = _parse_asf_sections(motion_lib.read_text(path).splitlines(), path)
  units = {"length": 1.0, "angle": "deg"}
  for line, toks in sections.get(":units", [])[1:]:
    if toks[0] == "length":
      (units["length"],) = _floats(toks[1:], 1, path, line, "length unit")
      if units["length"] <= 0:
        raise MocapFormatError("length unit must be > 0", path, line)
    elif toks[0] == "angle":
      if len(toks) != 2 or toks[1].lower() not in ("deg", "rad"):
        raise MocapFormatError(f"angle unit {toks[1:]}; expected deg or rad", path, line)
      units["angle"] = toks[1].lower()
  scale = 0.0254 / units["length"] if metres_per_unit is None else float(metres_per_unit)
  if not (0 < scale < np.inf):
    raise MocapFormatError(f"length unit {units['length']} gives {scale} m per unit; expected a "
                           "positive finite unit", path, sections.get(":units", [(None,)])[0][0])
  to_rad = math.pi / 180.0 if units["angle"] == "deg" else 1.0

  if ":root" not in sections:
    raise MocapFormatError("no :root section; expected one", path)
  root = {"order": _ROOT_DOFS, "axis": "XYZ", "position": [0.0] * 3, "orientation": [0.0] * 3}
  for line, toks in sections[":root"][1:]:
    key, args = toks[0].lower(), toks[1:]
    if key == "order":
      order = tuple(a.lower() for a in args)
      if any(a not in _ROOT_DOFS for a in order) or len(set(order)) != len(order):
        raise MocapFormatError(f"root order {args}; expected distinct TX TY TZ RX RY RZ", path,
                               line)
      root["order"] = order
    elif key == "axis":
      if len(args) != 1:
        raise MocapFormatError(f"root axis {args}; expected one order like XYZ", path, line)
      root["axis"] = _axis_order(args[0], path, line)
    elif key in ("position", "orientation"):
      root[key] = _floats(args, 3, path, line, f"root {key}")

  bones: List[dict] = []
  block = None
  for line, toks in sections.get(":bonedata", [])[1:]:
    word = toks[0].lower()
    if word == "begin" and block is None:
      block, begin_line = [], line
    elif word == "end" and block is not None:
      bones.append(_parse_bone(block, path, begin_line))
      block = None
    elif block is None:
      raise MocapFormatError(f"{toks[0]!r} outside a bone block; expected `begin`", path, line)
    else:
      block.append((line, toks))
  if block is not None:
    raise MocapFormatError("bone block without `end` (truncated file?)", path, begin_line)
  by_name = {}
  for bone in bones:
    if bone["name"] == _ROOT or bone["name"] in by_name:
      raise MocapFormatError(f"duplicate bone name {bone['name']!r}; expected unique names",
                             path, bone["line"])
    by_name[bone["name"]] = bone

  # Hierarchy: `parent child child ...` lines between begin/end.
  children: Dict[str, List[str]] = {_ROOT: []}
  parent_of: Dict[str, str] = {}
  for line, toks in sections.get(":hierarchy", [])[1:]:
    if toks[0].lower() in ("begin", "end") and len(toks) == 1:
      continue
    parent, kids = toks[0], toks[1:]
    if parent != _ROOT and parent not in by_name:
      raise MocapFormatError(f"unknown bone {parent!r} in hierarchy; expected a bonedata name",
                             path, line)
    for kid in kids:
      if kid not in by_name:
        raise MocapFormatError(f"unknown bone {kid!r} in hierarchy; expected a bonedata name",
                               path, line)
      if kid in parent_of:
        raise MocapFormatError(f"bone {kid!r} has two parents; expected a tree", path, line)
      parent_of[kid] = parent
      children.setdefault(parent, []).append(kid)
  order, parents, stack = [], [], [(_ROOT, -1)]
  while stack:  # Depth-first, children in listed order.
    name, parent = stack.pop()
    order.append(name)
    parents.append(parent)
    stack.extend((kid, len(order) - 1) for kid in reversed(children.get(name, [])))
  unreached = [b["name"] for b in bones if b["name"] not in order]
  if unreached:
    raise MocapFormatError(f"bones {unreached} are not connected to the root in :hierarchy; "
                           "expected a tree rooted at root", path)

  num = len(order)
  directions, lengths = np.zeros((num, 3)), np.zeros(num)
  frames = np.empty((num, 3, 3))
  frames[0] = motion_lib.euler_to_matrix_np(np.multiply(root["orientation"], to_rad),
                                            root["axis"], extrinsic=True)
  dof_names, limits = [root["order"]], [np.full((len(root["order"]), 2), [-np.inf, np.inf])]
  root_rot = "".join(d[1].upper() for d in root["order"] if d[0] == "r")
  root_rot += "".join(a for a in "XYZ" if a not in root_rot)
  rotation_orders = [root_rot[::-1]]  # Extrinsic order -> the equivalent intrinsic string.
  for j, name in enumerate(order[1:], start=1):
    bone = by_name[name]
    direction = np.asarray(bone["direction"])
    largest = np.max(np.abs(direction))  # Normalise in two steps so 1e200 cannot overflow.
    if not largest > 0:
      raise MocapFormatError(f"bone {name} has direction {bone['direction']}; expected a "
                             "non-zero vector", path, bone["lines"]["direction"])
    direction = direction / largest
    directions[j], lengths[j] = direction / np.linalg.norm(direction), bone["length"] * scale
    if not np.isfinite(lengths[j]):
      raise MocapFormatError(f"bone {name} length {bone['length']} overflows in metres; "
                             "expected a finite length", path, bone["lines"]["length"])
    frames[j] = motion_lib.euler_to_matrix_np(np.multiply(bone["axis"][0], to_rad),
                                              bone["axis"][1], extrinsic=True)
    dof_names.append(bone["dof"])
    rotation_orders.append("ZYX")  # Extrinsic XYZ.
    lim = np.array(bone["limits"], np.float64).reshape(-1, 2) * to_rad
    limits.append(lim if len(lim) else np.full((len(bone["dof"]), 2), [-np.inf, np.inf]))
  bone_vectors = directions * lengths[:, None]
  offsets = np.zeros((num, 3))
  offsets[0] = np.multiply(root["position"], scale)
  for j in range(1, num):
    if parents[j] > 0:
      offsets[j] = bone_vectors[parents[j]]
  has_children = set(parents)
  end_sites = {j: bone_vectors[j] for j in range(1, num) if j not in has_children}
  name_lines = sections.get(":name", [(0, [":name"])])[0][1]
  return Skeleton(joint_names=tuple(order), parents=np.array(parents), offsets=offsets,
                  dof_names=tuple(dof_names), axis_frames=frames,
                  rotation_orders=tuple(rotation_orders), end_sites=end_sites,
                  bone_directions=directions, bone_lengths=lengths, dof_limits=tuple(limits),
                  metres_per_unit=scale,
                  name=" ".join(name_lines[1:]) or pathlib.Path(path).name.split(".")[0])


# --- AMC ---


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
    row[cols] = [_float(v, path, n, f"value of {name}") for v in values]
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
