"""Acclaim ASF skeleton reader, as used by the CMU mocap database.

ASF semantics (CMU / Acclaim viewer convention):

* Joint j sits where bone j starts (the end of its parent bone); bones hanging off the root start
  at the root. So `offsets[j] = direction_parent * length_parent` (zero under the root), and
  leaf bones get an end site `direction * length`.
* Lengths: `:units length L` means one file unit is 1/L inch, i.e. `0.0254 / L` metres (CMU:
  L = 0.45 -> 0.05644 m). Angles: `:units angle deg|rad` (axis, orientation, limits).
* Bone `axis a b c XYZ` is the bone's axis frame `C = euler(a, b, c, "XYZ", extrinsic)`. The AMC
  values rotate about the bone's own axes, about fixed X, then Y, then Z (extrinsic XYZ over the
  DOFs present, whatever their order on the `dof` line, which only orders the AMC values):
  `R = Rz(rz) Ry(ry) Rx(rx)`, and the world-aligned local rotation is `L = C R C^T`. The reader
  records this as the intrinsic order "ZYX" (`Skeleton.rotation_orders`).
* Root: `order` gives the AMC value order and the (extrinsic) order of its rotations, `axis` +
  `orientation` its axis frame, `position` its rest position.

The AMC motion reader is `flowpose.data.asf_amc`.
"""

import math
import pathlib
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from flowpose.data import motion as motion_lib
from flowpose.data import rotations_np
from flowpose.data.motion import MocapFormatError, PathLike, Skeleton

_ROOT = "root"
_ROOT_DOFS = ("tx", "ty", "tz", "rx", "ry", "rz")
_BONE_DOFS = ("rx", "ry", "rz")
_LIMIT_PAIR = re.compile(r"\(\s*([^\s()]+)\s+([^\s()]+)\s*\)")


def parse_float(token: str, path, line: int, what: str, allow_inf: bool = False) -> float:
  """`float(token)`, or MocapFormatError naming the file, line and `what` (NaN/inf refused)."""
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
  return [parse_float(t, path, line, what) for t in tokens]


def _axis_order(token: str, path, line: int) -> str:
  order = token.upper()
  if sorted(order) != ["X", "Y", "Z"]:
    raise MocapFormatError(f"axis order {token!r}; expected a permutation of XYZ", path, line)
  return order




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
      bone["limits"] = [(parse_float(a, path, line, "limit", allow_inf=True),
                         parse_float(b, path, line, "limit", allow_inf=True)) for a, b in pairs]
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
  frames[0] = rotations_np.euler_to_matrix_np(np.multiply(root["orientation"], to_rad),
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
    frames[j] = rotations_np.euler_to_matrix_np(np.multiply(bone["axis"][0], to_rad),
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
