"""NLL tables of a trained flow pose prior against density baselines.

    table = evaluate_nll(workdir)                    # validation + test splits
    table = evaluate_folder(workdir, "clips/")       # every clip of a folder, as given

Both write `nll_table*.json` / `.md` into the workdir (atomically) and return the JSON dict:
top-level keys `flow`, `gaussian_diag`, `gaussian_full`, `gmm8` give the mean NLL in
**nats per pose** of the raw DOF angles on the headline split, and `splits.<name>` details every
split: `num_poses`, `nats_per_pose` (= -mean log-density) and `bits_per_dof`
(`nats / (D ln 2)`) per model. Models are compared in the flow's chart with baselines fitted
on the training split (`flowpose.prior.baseline_cache`).

The rows are the priors of `flowpose.prior.registry` with a density (`registry.evaluated_names()`),
built with `registry.make` from the flow and baselines in memory and scored by
`PosePrior.log_prob`, the density fitting uses: a prior registered there is a row here. A row is
labelled by its registry name, except `gaussian` (the full-covariance Gaussian), which keeps the
label `gaussian_full` that readers of `nll_table.json` use (`ROW_LABELS`).

`nll_table.json` accumulates splits: a run with `splits=("validation",)` replaces the validation
entry and keeps the test entry of an earlier run when both were computed for the same prior
(`prior_params_sha256`), baselines (`baselines_fingerprint`) and rows; entries of another prior
(or from before a prior was registered) are dropped with a warning. The headline is `test`
whenever the table holds it, else the last split evaluated, so evaluating validation never
overwrites the headline test numbers.

`evaluate_folder` scores every clip under a folder (recursive; ASF/AMC with SS.asf beside, or
CMU-skeleton BVH), with no split filter: the table is labelled `folder <name>` and records the
folder, `selection: "all clips"` and per-clip numbers in `nll_table_<name>.json`. Clips are
resampled to 30 fps by the nearest-frame rule of the `cmu_mocap` builder, so a folder holding a
split's clips reproduces that split's numbers.
"""

import hashlib
import json
import math
import os
import pathlib
from typing import Dict, List, Optional, Sequence, Tuple

from absl import logging
import numpy as np

from flowpose.prior import io as prior_io
from flowpose.prior import baseline_cache
from flowpose.prior import charts
from flowpose.prior import registry
from flowpose.prior import vae_entry
from flowpose.data import clips
from flowpose.data import motion as motion_lib
from flowpose.data import poses as pose_data
from flowpose.data import retarget
from flowpose.data.tfds.cmu_mocap import splits as splits_lib

# Names other modules use through this one (fitting, benchmarks).
BASELINES_FILE = baseline_cache.BASELINES_FILE
FittedBaselines = baseline_cache.FittedBaselines
PriorEvalError = baseline_cache.PriorEvalError
fit_baselines = baseline_cache.fit_baselines
load_baselines = baseline_cache.load_baselines
save_baselines = baseline_cache.save_baselines
to_chart = baseline_cache.to_chart
load_trained_prior = prior_io.load_trained_prior
flow_log_prob = registry.flow_log_prob

TABLE_STEM = "nll_table"
HEADLINE_SPLIT = "test"
# Table labels of registry names that differ from the name (kept for nll_table.json readers).
ROW_LABELS = {"gaussian": "gaussian_full"}
# Rows in this order, then any other registry prior with a density in registration order.
_ROW_ORDER = ("flow", "gaussian_diag", "gaussian", "gmm8")
_TARGET_FPS = 30.0


def table_rows() -> Tuple[Tuple[str, str], ...]:
  """`(label, registry name)` of every row of the NLL table, in table order."""
  evaluated = registry.evaluated_names()
  ordered = [n for n in _ROW_ORDER if n in evaluated]
  ordered += [n for n in evaluated if n not in _ROW_ORDER]
  return tuple((ROW_LABELS.get(name, name), name) for name in ordered)


# Rows only some tables have: `vae` (and its bound `vae_elbo`) when a VAE was trained beside
# the flow (`registry.vae_entry.vae_workdir`).
OPTIONAL_ROWS = ("vae", "vae_elbo")
# The row labels every table has (`flow`, `gaussian_diag`, `gaussian_full`, `gmm8`, ...).
MODELS = tuple(label for label, _ in table_rows() if label not in OPTIONAL_ROWS)


def load_split_dofs(config, split: str) -> np.ndarray:
  """`[N, D]` float32 DOFs of `split` of the experiment's data source (`config.data`)."""
  # DOF angles: the flow's event_dim in the Euler chart, the 50 CMU DOFs for any other chart.
  chart = config.flow.get("chart", "euler_dofs")
  dim = config.flow.event_dim if chart == "euler_dofs" else charts.chart_dim("euler_dofs")
  return pose_data.read_split(config.data, split, dim)


def _baselines(workdir: str, prior, params, config,
               cache_only_if_current: bool = False) -> Tuple[FittedBaselines, Optional[int]]:
  """`(fitted baselines, number of training poses or None)` in the prior's chart.

  With `cache_only_if_current`, a readable cache fitted around this prior's chart center is used
  without reading the training data (folder evaluation on a machine with the workdir only).
  """
  center = np.asarray(params["stats"]["center"], np.float64)
  periodic = charts.is_periodic(prior.chart)
  if cache_only_if_current and os.path.isfile(os.path.join(workdir, BASELINES_FILE)):
    try:
      cached = load_baselines(workdir)
    except PriorEvalError as e:
      logging.warning("%s; refitting it from the training split.", e)
    else:
      if cached.periodic == periodic and np.allclose(cached.center, center, atol=1e-6):
        return cached, None
      logging.warning("%s was fitted for another prior (chart center differs); refitting.",
                      os.path.join(workdir, BASELINES_FILE))
  train = pose_data.augment_train(config.data, load_split_dofs(config, config.data.train_split))
  train = charts.from_dofs_np(prior.chart, train)
  fitted = baseline_cache.baselines_for(workdir, train, center, config.seed,
                                        input_noise=config.get("input_noise", 0.0),
                                        periodic=periodic)
  return fitted, int(train.shape[0])


def table_priors(workdir: str, prior, params,
                 fitted: FittedBaselines) -> Dict[str, registry.PosePrior]:
  """`{row label: PosePrior}` of every row, built by `registry.make` from the params in memory
  (an entry whose `eval_kwargs` returns None for this workdir, e.g. no VAE trained, has none)."""
  context = registry.EvalContext(workdir, prior, params, fitted)
  rows = {}
  for label, name in table_rows():
    kwargs = registry.get(name).eval_kwargs(context)
    if kwargs is not None:
      rows[label] = registry.make(name, **kwargs)
  return rows


def _bound_rows(priors: Dict[str, registry.PosePrior], workdir: str,
                dofs: np.ndarray) -> Dict[str, float]:
  """Extra rows: `vae_elbo` = mean -ELBO with the `vae` row's K = 1000 draws (so
  `vae_elbo >= vae`, pose by pose) when the table has a VAE row."""
  if "vae" not in priors or vae_entry.vae_workdir(workdir) is None:
    return {}
  from flowpose.prior import vae as vae_lib  # pylint: disable=g-import-not-at-top
  vae, params, _ = prior_io.load_trained_vae(vae_entry.vae_workdir(workdir))
  elbo = vae_lib.evaluate_np(vae, params, charts.from_dofs_np(vae.chart, dofs), "elbo")
  return {"vae_elbo": float(-np.mean(elbo))}


def _split_stats(priors: Dict[str, registry.PosePrior], dim: int, dofs: np.ndarray,
                 workdir: Optional[str] = None) -> dict:
  """`{num_poses, nats_per_pose {row: float}, bits_per_dof {row: float}}` of DOFs `[N, 50]`.

  `dim`: D of the chart the densities live in (bits per chart coordinate).
  """
  nats = {label: float(-np.mean(p.log_prob(dofs))) for label, p in priors.items()}
  nats.update(_bound_rows(priors, workdir, dofs) if workdir else {})
  return {"num_poses": int(dofs.shape[0]), "nats_per_pose": nats,
          "bits_per_dof": {k: v / (dim * math.log(2.0)) for k, v in nats.items()}}


def _provenance(workdir: str, prior, fitted: FittedBaselines) -> dict:
  """What the numbers depend on: the trained params, the baselines, the chart."""
  out = {"prior_params_sha256": prior_io.params_sha256(workdir),
         "baselines_fingerprint": fitted.fingerprint, "chart": prior.chart,
         "event_dim": prior.event_dim}
  vae_dir = vae_entry.vae_workdir(workdir)
  if vae_dir:  # A retrained VAE is another set of numbers.
    with open(os.path.join(vae_dir, prior_io.VAE_PARAMS_FILE), "rb") as f:
      out["vae_params_sha256"] = hashlib.sha256(f.read()).hexdigest()
  return out


def _table(headline: str, splits: Dict[str, dict], provenance: dict, **extra) -> dict:
  table = dict(splits[headline]["nats_per_pose"])
  chart = provenance["chart"]
  table.update(headline_split=headline, units=f"nats per pose in the flow's {chart!r} chart "
               "(radians)", **provenance, splits=splits, **extra)
  return table


def _previous_splits(path: str, provenance: dict, evaluated: Sequence[str],
                     rows: Sequence[str]) -> Dict[str, dict]:
  """The splits of an earlier table at `path` computed for the same prior, baselines and rows."""
  if not os.path.isfile(path):
    return {}
  try:
    with open(path) as f:
      old = json.load(f)
    same = all(old.get(k) == v for k, v in provenance.items())
    kept = {s: v for s, v in old["splits"].items() if s not in evaluated}
    same = same and all(set(v["nats_per_pose"]) == set(rows) for v in kept.values())
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    logging.warning("%s is unreadable (%s); replacing it.", path, e)
    return {}
  if not same and kept:
    logging.warning("%s holds splits %s of another prior, baselines or set of rows; dropping "
                    "them (rerun them to compare).", path, sorted(kept))
    return {}
  return kept


def _markdown(table: dict) -> str:
  names = list(table["splits"])
  header = "| model | " + " | ".join(
      f"{s} nats/pose | {s} bits/DOF" for s in names) + " |"
  lines = [f"NLL of the pose prior and baselines (D = {table['event_dim']}; lower is better;"
           f" {table['units']}; headline: {table['headline_split']}).", "", header,
           "|---" * (1 + 2 * len(names)) + "|"]
  for model in table["splits"][table["headline_split"]]["nats_per_pose"]:
    cells = []
    for s in names:
      cells += [f"{table['splits'][s]['nats_per_pose'][model]:.2f}",
                f"{table['splits'][s]['bits_per_dof'][model]:.3f}"]
    lines.append(f"| {model} | " + " | ".join(cells) + " |")
  counts = ", ".join(f"{s}: {table['splits'][s]['num_poses']} poses" for s in names)
  return "\n".join(lines + ["", counts, ""])


def write_table(workdir: str, table: dict, stem: str = TABLE_STEM) -> str:
  """Writes `<stem>.json` and `<stem>.md` atomically; returns the JSON path."""
  path = os.path.join(workdir, stem + ".json")
  prior_io.atomic_write(path, json.dumps(table, indent=2).encode())
  prior_io.atomic_write(os.path.join(workdir, stem + ".md"), _markdown(table).encode())
  return path


def evaluate_nll(workdir: str, splits: Sequence[str] = ("validation", "test"),
                 pictures: bool = False) -> dict:
  """NLL table of the trained flow and baselines on `splits`, merged into `nll_table.json`.

  Fits (or reuses) the baselines on the config's training split, writes
  `nll_table.json` / `.md` (and, with `pictures`, `samples.png` / `interpolation.png`
  using two poses of the last split) into `workdir`.

  Returns:
    The table dict (see the module docstring): this run's splits plus the earlier ones kept.
  """
  splits = tuple(splits)
  if not splits:
    raise PriorEvalError("evaluate_nll: no splits given")
  prior, params, config = load_trained_prior(workdir)
  fitted, num_train = _baselines(workdir, prior, params, config)
  provenance = _provenance(workdir, prior, fitted)
  priors = table_priors(workdir, prior, params, fitted)
  details, dofs = {}, None
  for split in splits:
    dofs = load_split_dofs(config, split)
    details[split] = _split_stats(priors, prior.event_dim, dofs, workdir)
    logging.info("%s NLL (nats/pose): %s", split, details[split]["nats_per_pose"])
  path = os.path.join(workdir, TABLE_STEM + ".json")
  rows = list(details[splits[-1]]["nats_per_pose"])  # Registry rows + bound rows.
  merged = {**_previous_splits(path, provenance, splits, rows), **details}
  headline = HEADLINE_SPLIT if HEADLINE_SPLIT in merged else splits[-1]
  table = _table(headline, merged, provenance, train_poses=num_train,
                 data_source=config.data.source)
  write_table(workdir, table)
  if pictures:
    from flowpose.prior import pictures as pictures_lib  # pylint: disable=g-import-not-at-top
    pictures_lib.render_pictures(workdir, prior, params, charts.from_dofs_np(prior.chart, dofs))
  return table


def clip_paths(folder: os.PathLike) -> List[Tuple[pathlib.Path, Optional[float]]]:
  """`(path, fps or None)` of every clip under `folder`, sorted; a `.gz` twin is listed once.

  AMC clips (`SS_CC.amc[.gz]`) as the `cmu_mocap` builder lists them, frame rate from
  `folder/index.csv` (else 120 fps); BVH files (`.bvh[.gz]`, any name) carry their own rate.
  """
  folder = pathlib.Path(folder)
  found = [(c.amc_path, None if c.is_bvh else c.fps) for c in splits_lib.list_clips(folder)]
  key = lambda p: p.parent / p.name.lower().removesuffix(".gz")
  listed, bvh_files = {key(path) for path, _ in found}, {}
  for path in sorted(folder.rglob("*")):  # BVH files of any name (SS_CC ones are listed).
    if not (path.is_file() and clips.is_bvh(path)) or key(path) in listed:
      continue
    if key(path) not in bvh_files or not path.name.lower().endswith(".gz"):
      bvh_files[key(path)] = path  # The plain file wins over its .gz twin.
  found += [(path, None) for path in bvh_files.values()]
  return sorted(found, key=lambda item: str(item[0]))


def read_clip_dofs(path: os.PathLike, fps: Optional[float] = None) -> np.ndarray:
  """`[T, D]` chart DOFs of one ASF/AMC (SS.asf beside it) or CMU-skeleton BVH clip at 30 fps
  (`flowpose.data.clips.read_clip`).

  Frames are the nearest source frames of the 30 fps times, as the `cmu_mocap` builder picks
  them (120 fps: every 4th frame).

  Args:
    path: the `.amc[.gz]` or `.bvh[.gz]` file.
    fps: capture rate of an AMC clip (AMC files do not store it; default 120, CMU's rate).
  """
  motion = clips.read_clip(path, fps)  # BVH: CMU's rest, converter T-pose frame dropped.
  motion = motion_lib.resample(motion, _TARGET_FPS, translation="nearest")
  return retarget.motion_to_pose_dofs(motion).astype(np.float32)


def evaluate_folder(workdir: str, folder: os.PathLike) -> dict:
  """NLL table of every clip in `folder` (recursive, no split filter), written beside the others.

  Baselines: the workdir's cache when it was fitted for this prior, else refitted from the
  training split. Writes `nll_table_<foldername>.json` / `.md` into `workdir`; the table adds
  `folder`, `selection`, `num_clips` and `clips` (per-clip `num_poses` and nats/pose per model).

  Raises:
    PriorEvalError: `folder` is not a folder or holds no clips.
    PriorLoadError: no trained prior in `workdir`.
    MocapFormatError: a clip cannot be read (names the file).
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise PriorEvalError(f"evaluate_folder: {folder} is not a folder")
  paths = clip_paths(folder)
  if not paths:
    raise PriorEvalError(f"evaluate_folder: no clips in {folder}; expected SS_CC.amc[.gz] "
                         "files with SS.asf[.gz] beside them, or .bvh[.gz] files")
  prior, params, config = load_trained_prior(workdir)
  fitted, _ = _baselines(workdir, prior, params, config, cache_only_if_current=True)
  priors = table_priors(workdir, prior, params, fitted)
  clips, all_dofs = {}, []
  for path, fps in paths:
    dofs = read_clip_dofs(path, fps)
    stats = _split_stats(priors, prior.event_dim, dofs, workdir)
    clips[str(path.relative_to(folder))] = {
        "num_poses": stats["num_poses"], "nats_per_pose": stats["nats_per_pose"]}
    all_dofs.append(dofs)
  name = folder.resolve().name or "root"
  label = f"folder {name}"
  details = {label: _split_stats(priors, prior.event_dim, np.concatenate(all_dofs), workdir)}
  table = _table(label, details, _provenance(workdir, prior, fitted),
                 folder=str(folder.resolve()), selection="all clips", num_clips=len(clips),
                 clips=clips)
  write_table(workdir, table, f"{TABLE_STEM}_{name}")
  return table
