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

(86% / 4.5% / 9.2% of the 173,810 frames.)
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

_AMC_NAME = re.compile(r"^(\d+)_(\d+)\.amc(\.gz)?$", re.IGNORECASE)


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
    amc_path: the `.amc` / `.amc.gz` file.
    fps: capture rate (index.csv, else `DEFAULT_FPS`).
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
  """Finds every `SS_CC.amc[.gz]` under `cmu_dir` (recursively), sorted by (subject, trial).

  Works for this repository's flat `../shared/data/cmu` and for CMU's `allasfamc.zip` layout
  (`all_asfamc/subjects/SS/SS_CC.amc`). A clip present both gzipped and plain is listed once
  (the plain file wins).

  Args:
    cmu_dir: root folder.
    index: clip -> (fps, description); default: `cmu_dir/index.csv` if it exists.
  """
  cmu_dir = pathlib.Path(cmu_dir)
  if index is None:
    index = read_index(cmu_dir / "index.csv") if (cmu_dir / "index.csv").is_file() else {}
  found: Dict[str, Clip] = {}
  for path in sorted(cmu_dir.rglob("*")):
    match = _AMC_NAME.match(path.name)
    if not match or not path.is_file():
      continue
    subject, trial = int(match[1]), int(match[2])
    name = f"{match[1]}_{match[2]}"
    if name in found and not match[3]:
      pass  # Replace a .gz twin by the plain file.
    elif name in found:
      continue
    fps, description = index.get(name, (DEFAULT_FPS, ""))
    found[name] = Clip(name, subject, trial, path, fps, description)
  return sorted(found.values(), key=lambda c: (c.subject, c.trial, c.name))
