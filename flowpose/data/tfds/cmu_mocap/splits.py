"""CMU clip discovery, the motion index and the subject split rule (no TensorFlow needed).

Split rule (deterministic, by CMU subject number, so it extends to the full database without a
list): `validation` = subjects with `subject % 10 == 3`, `test` = `subject % 10 == 9`, `train` =
all others (about 80/10/10 of the ~110 CMU subjects). Every clip of a subject lands in the same
split, so no performer is seen in training and evaluation. On the 8 subjects in
`../shared/data/cmu`:

  train       2, 5, 14, 16, 105   walks (105: 30 styles), runs, jumps, modern dance, exercise
  validation  13                  forward jumps, jumping jacks, side twists, squats, jog
  test        9, 49               run, navigate walk (fwd/back/sideways); modern dance,
                                  gymnastics, hops, leaps, balance

(86% / 4.5% / 9.2% of the 173,810 frames.) The extra subjects of `../shared/data/cmu_more`
(1, 11, 35, 131, 135) all fall in `train` by the same rule, so validation and test stay
subjects 13 and 9, 49 and their numbers stay comparable.
"""

import csv
import dataclasses
import pathlib
import re
from typing import Dict, List, Optional, Tuple

from flowpose.data.motion import MocapFormatError, PathLike

SPLITS = ("train", "validation", "test")
VALIDATION_REMAINDER = 3
TEST_REMAINDER = 9
DEFAULT_FPS = 120.0  # CMU's capture rate for most subjects; index.csv may say otherwise.

_CLIP_NAME = re.compile(r"^(\d+)_(\d+)\.(amc|bvh)(\.gz)?$", re.IGNORECASE)
# Separates the folders of one `data.manual_dir` string ("../cmu,../cmu_more/asfamc").
MANUAL_DIR_SEPARATOR = ","


def split_of_subject(subject: int) -> str:
  """The split ("train", "validation" or "test") of a CMU subject number."""
  if subject % 10 == TEST_REMAINDER:
    return "test"
  if subject % 10 == VALIDATION_REMAINDER:
    return "validation"
  return "train"


@dataclasses.dataclass(frozen=True)
class Clip:
  """One AMC file of the CMU database.

  Attributes:
    name: clip id `SS_CC` as CMU writes it (e.g. "02_01", "105_38").
    subject: CMU subject number.
    trial: trial number within the subject.
    amc_path: the clip file: `.amc[.gz]`, or `.bvh[.gz]` (CMU-skeleton BVH, `flowpose.data.clips`).
    fps: capture rate of an AMC clip (index.csv, else `DEFAULT_FPS`); BVH files carry their own.
    description: the motion description from index.csv, or "".
  """
  name: str
  subject: int
  trial: int
  amc_path: pathlib.Path
  fps: float = DEFAULT_FPS
  description: str = ""

  @property
  def split(self) -> str:
    return split_of_subject(self.subject)

  @property
  def is_bvh(self) -> bool:
    return self.amc_path.name.lower().endswith((".bvh", ".bvh.gz"))


def read_index(path: PathLike) -> Dict[str, Tuple[float, str]]:
  """Reads `index.csv` (`file,subject,clip,frames,fps,description`).

  Returns:
    clip name ("02_01") -> (fps, description).

  Raises:
    MocapFormatError: a missing column or a non-numeric fps (message names file and line).
  """
  out = {}
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    if not reader.fieldnames or "file" not in reader.fieldnames:
      raise MocapFormatError("no `file` column; expected the header "
                             "file,subject,clip,frames,fps,description", path, 1)
    for row in reader:
      name = (row.get("file") or "").strip()
      name = re.sub(r"\.amc(\.gz)?$", "", name, flags=re.IGNORECASE)
      try:
        fps = float(row.get("fps") or DEFAULT_FPS)
      except ValueError:
        raise MocapFormatError(f"fps {row.get('fps')!r} of {name}; expected a number", path,
                               reader.line_num) from None
      if not fps > 0:
        raise MocapFormatError(f"fps {fps} of {name}; expected > 0", path, reader.line_num)
      out[name] = (fps, (row.get("description") or "").strip())
  return out


def list_clips(cmu_dir: PathLike, index: Optional[Dict[str, Tuple[float, str]]] = None
               ) -> List[Clip]:
  """Finds every `SS_CC.amc[.gz]` and `SS_CC.bvh[.gz]` under `cmu_dir` (recursively), sorted by
  (subject, trial).

  Works for this repository's flat `../shared/data/cmu` and for CMU's `allasfamc.zip` layout
  (`all_asfamc/subjects/SS/SS_CC.amc`). A clip present both gzipped and plain is listed once
  (the plain file wins); a clip present as AMC and BVH is the AMC (CMU's own format).

  Args:
    cmu_dir: root folder.
    index: clip -> (fps, description); default: `cmu_dir/index.csv` if it exists.
  """
  cmu_dir = pathlib.Path(cmu_dir)
  if index is None:
    index = read_index(cmu_dir / "index.csv") if (cmu_dir / "index.csv").is_file() else {}
  found: Dict[str, Clip] = {}
  rank = lambda p: (p.name.lower().split(".")[1] == "bvh", p.name.lower().endswith(".gz"))
  for path in sorted(cmu_dir.rglob("*")):
    match = _CLIP_NAME.match(path.name)
    if not match or not path.is_file():
      continue
    name = f"{match[1]}_{match[2]}"
    if name in found and rank(found[name].amc_path) <= rank(path):
      continue  # Keep the AMC over a BVH, the plain file over its .gz twin.
    fps, description = index.get(name, (DEFAULT_FPS, ""))
    found[name] = Clip(name, int(match[1]), int(match[2]), path, fps, description)
  return sorted(found.values(), key=lambda c: (c.subject, c.trial, c.name))


def manual_dirs(spec: str) -> List[pathlib.Path]:
  """The folders of a `data.manual_dir` string: one path, or several joined by ",".

  Raises:
    ValueError: empty, or a folder that does not exist (named).
  """
  parts = [p.strip() for p in str(spec or "").split(MANUAL_DIR_SEPARATOR)]
  if not any(parts):
    raise ValueError("config data.manual_dir: empty; expected a clip folder or several "
                     "joined by ','")
  folders = [pathlib.Path(p).expanduser() for p in parts if p]
  missing = [str(f) for f in folders if not f.is_dir()]
  if missing:
    raise ValueError(f"config data.manual_dir: source folder(s) {missing} not found (set "
                     "$FLOWPOSE_CMU_DIR or --config.data.manual_dir=DIR[,DIR...])")
  return folders


def list_clips_in(folders, warn=None) -> List[Clip]:
  """`list_clips` of several folders (each with its own index.csv); a clip name found in more
  than one folder is taken from the first (`warn(message)` is told, if given)."""
  found: Dict[str, Clip] = {}
  for folder in folders:
    for clip in list_clips(folder):
      if clip.name in found:
        if warn:
          warn(f"clip {clip.name}: {clip.amc_path} ignored, {found[clip.name].amc_path} "
               "(an earlier folder) is used")
        continue
      found[clip.name] = clip
  return sorted(found.values(), key=lambda c: (c.subject, c.trial, c.name))
