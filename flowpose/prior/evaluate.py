"""Evaluation of a trained flow pose prior: NLL tables against density baselines, pictures.

    table = evaluate_nll(workdir)                    # validation + test splits
    table = evaluate_folder(workdir, "clips/")       # any folder of ASF/AMC or BVH clips

Both write `nll_table*.json` / `.md` into the workdir (atomically) and return the JSON dict:
top-level keys `flow`, `gaussian_diag`, `gaussian_full`, `gmm8` give the mean NLL in
**nats per pose** of the raw DOF angles on the headline split (`test`, or the folder's clips),
and `splits.<name>` details every split: `num_poses`, `nats_per_pose` and `bits_per_dof`
(`nats / (D ln 2)`) per model.

The chart. Angles are periodic; a density on R^D needs a cut. The flow cuts each DOF opposite
the circular mean `center` of its training data (`flowpose.prior.flow`): it sees
`center + wrap(a - center)` in (center - pi, center + pi]. The baselines are fitted and
evaluated on exactly those chart coordinates (same center, from the flow's params), so every
model is a density over the same set of angles and the NLLs compare (the shift by a multiple
of 2 pi has unit Jacobian). A prior on a non-periodic chart (`flow.chart = "axis_angle"`,
`flowpose.prior.charts`) is evaluated, with its baselines, on those coordinates as they are (the table
records `chart`; NLLs of different charts are not comparable). All models use the same
variance floor (1e-3 rad std, as the flow's standardisation), so a near-constant DOF cannot
dominate a baseline's NLL.

The baselines (`flowpose.prior.baselines`: diagonal Gaussian, full Gaussian, 8-component GMM by EM)
are fitted on the training split once and cached in `workdir/baselines.npz` together with
the chart center and a fingerprint of the training data; `load_baselines(workdir)` reads
them (e.g. for pose fitting with a GMM prior, or the benchmarks).
"""

import hashlib
import json
import math
import os
import pathlib
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

# flowpose.prior.flow imports distrax (TFP) first, as TensorFlow-using modules require.
from flowpose.prior import io as prior_io
from flowpose.prior import flow as prior_lib  # pylint: disable=g-bad-import-order
from flowpose.prior import baselines as baselines_lib
from flowpose.prior import charts
from flowpose import io_utils
from flowpose.data import poses as pose_data

BASELINES_FILE = "baselines.npz"
TABLE_STEM = "nll_table"
MODELS = ("flow", "gaussian_diag", "gaussian_full", "gmm8")
_BASELINE_NAMES = MODELS[1:]
_FORMAT_VERSION = 1
# Variance floor of every baseline = (1e-3 rad)^2, the flow's standardisation floor.
_VARIANCE_FLOOR = 1e-6
_EVAL_BATCH = 4096
_TARGET_FPS = 30.0
_CLIP_SUFFIXES = (".amc", ".amc.gz", ".bvh", ".bvh.gz")


class PriorEvalError(ValueError):
  """Missing or unusable workdir files, or a folder without clips."""


class FittedBaselines(NamedTuple):
  """Baselines fitted in the flow's chart.

  Attributes:
    center: `[D]` chart center (radians) the baselines were fitted in.
    models: name (`gaussian_diag`, `gaussian_full`, `gmm8`) -> `flowpose.prior.baselines` params.
    fingerprint: hash of the training DOFs they were fitted on.
    periodic: the chart's coordinates are angles wrapped around `center` (Euler DOFs); False
      for a non-periodic chart (axis-angle), used as is.
  """
  center: np.ndarray
  models: Dict[str, Any]
  fingerprint: str
  periodic: bool = True

  def log_prob(self, name: str, dofs: np.ndarray) -> np.ndarray:
    """`[N]` log-density (nats) of chart poses `[N, D]` (any 2 pi offsets) under model `name`."""
    x = to_chart(dofs, self.center) if self.periodic else np.asarray(dofs, np.float64)
    return np.asarray(baselines_lib.log_prob(self.models[name], x))


# ---------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------


def to_chart(dofs: np.ndarray, center: np.ndarray) -> np.ndarray:
  """`[N, D]` raw angles -> float64 `center + wrap(dofs - center)` in (c - pi, c + pi]."""
  dofs = np.asarray(dofs, np.float64)
  delta = dofs - np.asarray(center, np.float64)
  return center + np.arctan2(np.sin(delta), np.cos(delta))


def load_trained_prior(workdir: str):
  """`(prior, params, config)` exported by the trainer (`prior_params.msgpack`, `config.json`)."""
  for name in (prior_io.PARAMS_FILE, prior_io.CONFIG_FILE):
    if not os.path.isfile(os.path.join(workdir, name)):
      raise PriorEvalError(f"{os.path.join(workdir, name)} not found: expected a workdir "
                           "written by `python -m launch.main` after training finished")
  return prior_io.load_exported_prior(workdir)


def load_split_dofs(config, split: str) -> np.ndarray:
  """`[N, D]` float32 DOFs of `split` of the experiment's data source (`config.data`)."""
  data = config.data
  # DOF angles: the flow's event_dim in the Euler chart, the 50 CMU DOFs for any other chart.
  chart = config.flow.get("chart", "euler_dofs")
  dim = config.flow.event_dim if chart == "euler_dofs" else charts.chart_dim("euler_dofs")
  if data.source == "synthetic":
    num = data.num_train if split == data.train_split or split == "train" else data.num_eval
    return pose_data.synthetic_poses(num, dim, data.synthetic_seed, split)
  # The trainer's own builder (same fps config and data_dir), prepared on first use.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = pose_data._tfds_builder(data)  # pylint: disable=protected-access
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=data.manual_dir, try_download_gcs=False))
  return pose_data._read_dofs(builder, split)  # pylint: disable=protected-access


def _fingerprint(dofs: np.ndarray, center: np.ndarray, input_noise: float = 0.0) -> str:
  digest = hashlib.sha1(np.ascontiguousarray(dofs, np.float32).tobytes())
  digest.update(np.ascontiguousarray(center, np.float32).tobytes())
  digest.update(repr(float(input_noise)).encode())
  return digest.hexdigest()


# ---------------------------------------------------------------------------
# Baselines: fit, save, load.
# ---------------------------------------------------------------------------


def fit_baselines(train_dofs: np.ndarray, center: np.ndarray, seed: int = 0,
                  gmm_max_iters: int = 100, input_noise: float = 0.0,
                  periodic: bool = True) -> FittedBaselines:
  """Fits the three baselines on `train_dofs [N, D]` in the chart around `center [D]`.

  When the flow was trained on jittered angles (`config.input_noise` = sigma), the baselines
  model the same jittered distribution: sigma^2 is added to every (component) covariance, which
  is exactly the covariance of x + N(0, sigma^2 I). Without this a DOF that is constant in the
  training data (CMU clavicles) would hand the baselines an unbounded likelihood bonus.
  """
  chart = to_chart(train_dofs, center) if periodic else np.asarray(train_dofs, np.float64)
  reg = _VARIANCE_FLOOR + float(input_noise) ** 2
  models = {
      "gaussian_diag": baselines_lib.fit_gaussian_diag(chart, reg=reg),
      "gaussian_full": baselines_lib.fit_gaussian_full(chart, reg=reg),
      "gmm8": baselines_lib.fit_gmm(chart, num_components=8, seed=seed,
                                    max_iters=gmm_max_iters, tol=1e-5,
                                    reg_covar=reg),
  }
  return FittedBaselines(np.asarray(center, np.float64), models,
                         _fingerprint(train_dofs, center, input_noise), periodic)


def save_baselines(workdir: str, fitted: FittedBaselines) -> str:
  """Writes `workdir/baselines.npz` atomically; returns its path."""
  diag, full, gmm = (fitted.models[n] for n in _BASELINE_NAMES)
  arrays = {
      "format_version": np.int64(_FORMAT_VERSION), "center": fitted.center,
      "fingerprint": np.str_(fitted.fingerprint), "periodic": np.bool_(fitted.periodic),
      "gaussian_diag/mean": diag.mean, "gaussian_diag/std": diag.std,
      "gaussian_full/mean": full.mean, "gaussian_full/covariance": full.covariance,
      "gmm8/weights": gmm.weights, "gmm8/means": gmm.means,
      "gmm8/covariances": gmm.covariances, "gmm8/num_iters": np.int64(gmm.num_iters),
      "gmm8/converged": np.bool_(gmm.converged)}
  path = os.path.join(workdir, BASELINES_FILE)
  with io_utils.atomic_open(path) as f:
    np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
  return path


def load_baselines(workdir: str) -> FittedBaselines:
  """Reads `workdir/baselines.npz` written by `evaluate_nll`."""
  path = os.path.join(workdir, BASELINES_FILE)
  if not os.path.isfile(path):
    raise PriorEvalError(f"{path} not found: run `python -m launch.evaluate_prior "
                         f"--workdir={workdir}` (evaluate_nll) first to fit the baselines")
  try:
    with np.load(path) as f:
      if int(f["format_version"]) != _FORMAT_VERSION:
        raise PriorEvalError(f"{path}: format_version {int(f['format_version'])}, "
                             f"expected {_FORMAT_VERSION}")
      models = {
          "gaussian_diag": baselines_lib.GaussianDiagParams(
              f["gaussian_diag/mean"], f["gaussian_diag/std"]),
          "gaussian_full": baselines_lib.gaussian_full_from_covariance(
              f["gaussian_full/mean"], f["gaussian_full/covariance"]),
          "gmm8": baselines_lib.gmm_from_components(
              f["gmm8/weights"], f["gmm8/means"], f["gmm8/covariances"],
              int(f["gmm8/num_iters"]), bool(f["gmm8/converged"])),
      }
      periodic = bool(f["periodic"]) if "periodic" in f else True
      return FittedBaselines(f["center"], models, str(f["fingerprint"]), periodic)
  except KeyError as e:
    raise PriorEvalError(f"{path}: missing field {e}") from None


def _baselines_for(workdir: str, train_dofs: np.ndarray, center: np.ndarray,
                   seed: int, input_noise: float = 0.0, periodic: bool = True) -> FittedBaselines:
  """The cached baselines if fitted on these DOFs in this chart, else fit and cache."""
  expected = _fingerprint(train_dofs, center, input_noise)
  try:
    cached = load_baselines(workdir)
    if cached.fingerprint == expected and cached.periodic == periodic:
      logging.info("Reusing baselines from %s.", BASELINES_FILE)
      return cached
  except PriorEvalError:
    pass
  logging.info("Fitting baselines on %d training poses.", train_dofs.shape[0])
  fitted = fit_baselines(train_dofs, center, seed=seed, input_noise=input_noise,
                         periodic=periodic)
  save_baselines(workdir, fitted)
  return fitted


# ---------------------------------------------------------------------------
# NLL tables.
# ---------------------------------------------------------------------------


def flow_log_prob(prior, params, dofs: np.ndarray, batch_size: int = _EVAL_BATCH) -> np.ndarray:
  """`[N]` flow log-density (nats) of `dofs [N, D]`, in fixed-size batches (one compile)."""
  fn = jax.jit(prior.log_prob)
  batch_size = min(batch_size, max(1, dofs.shape[0]))
  out = []
  for poses, weights in pose_data.eval_batches(np.asarray(dofs, np.float32), batch_size):
    out.append(np.asarray(fn(params, poses))[weights > 0])
  return np.concatenate(out).astype(np.float64)


def _split_stats(prior, params, fitted: FittedBaselines, dofs: np.ndarray) -> dict:
  """`{num_poses, nats_per_pose {model: float}, bits_per_dof {model: float}}` of `dofs`."""
  dim = dofs.shape[1]
  log_probs = {"flow": flow_log_prob(prior, params, dofs)}
  for name in _BASELINE_NAMES:
    log_probs[name] = fitted.log_prob(name, dofs)
  nats = {name: float(-np.mean(lp)) for name, lp in log_probs.items()}
  return {"num_poses": int(dofs.shape[0]), "nats_per_pose": nats,
          "bits_per_dof": {k: v / (dim * math.log(2.0)) for k, v in nats.items()}}


def _table(headline: str, splits: Dict[str, dict], dim: int, chart: str = "euler_dofs",
           **extra) -> dict:
  table = {name: splits[headline]["nats_per_pose"][name] for name in MODELS}
  table.update(headline_split=headline, event_dim=dim, chart=chart,
               units=f"nats per pose in the flow's {chart!r} chart (radians)",
               splits=splits, **extra)
  return table


def _markdown(table: dict) -> str:
  names = list(table["splits"])
  header = "| model | " + " | ".join(
      f"{s} nats/pose | {s} bits/DOF" for s in names) + " |"
  lines = [f"NLL of the pose prior and baselines (D = {table['event_dim']}; lower is better;"
           f" {table['units']}).", "", header, "|---" * (1 + 2 * len(names)) + "|"]
  for model in MODELS:
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
  """NLL table of the trained flow and baselines on `splits` (headline: the last one).

  Fits (or reuses) the baselines on the config's training split, writes
  `nll_table.json` / `.md` (and, with `pictures`, `samples.png` / `interpolation.png`
  using two poses of the last split) into `workdir`.

  Returns:
    The table dict (see the module docstring).
  """
  if not splits:
    raise PriorEvalError("evaluate_nll: no splits given")
  prior, params, config = load_trained_prior(workdir)
  center = np.asarray(params["stats"]["center"], np.float64)
  train = pose_data.augment_train(config.data, load_split_dofs(config, config.data.train_split))
  train = charts.from_dofs_np(prior.chart, train)
  fitted = _baselines_for(workdir, train, center, config.seed,
                          input_noise=config.get("input_noise", 0.0),
                          periodic=charts.is_periodic(prior.chart))
  details, data = {}, None
  for split in splits:
    data = charts.from_dofs_np(prior.chart, load_split_dofs(config, split))
    details[split] = _split_stats(prior, params, fitted, data)
    logging.info("%s NLL (nats/pose): %s", split, details[split]["nats_per_pose"])
  table = _table(splits[-1], details, prior.event_dim, prior.chart,
                 train_poses=int(train.shape[0]), data_source=config.data.source)
  write_table(workdir, table)
  if pictures:
    render_pictures(workdir, prior, params, data)
  return table


def _clip_paths(folder: pathlib.Path) -> list:
  return sorted(p for p in folder.rglob("*") if p.is_file()
                and any(p.name.lower().endswith(s) for s in _CLIP_SUFFIXES))


def read_clip_dofs(path: os.PathLike, fps: Optional[float] = None) -> np.ndarray:
  """`[T, D]` chart DOFs of one ASF/AMC (SS.asf beside it) or CMU-skeleton BVH clip at 30 fps.

  Args:
    path: the `.amc[.gz]` or `.bvh[.gz]` file.
    fps: capture rate of an AMC clip (AMC files do not store it; default 120, CMU's rate).
  """
  from flowpose.data import asf_amc, bvh, retarget  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  if ".bvh" in path.name.lower():
    motion = bvh.read_bvh(path)
  else:
    motion = asf_amc.load_asf_amc(path, fps=fps or 120.0)
  # Nearest-frame stride, as the TFDS builder subsamples (120 -> 30 fps: every 4th frame).
  stride = max(1, int(round(motion.fps / _TARGET_FPS)))
  return retarget.motion_to_pose_dofs(motion)[::stride].astype(np.float32)


def evaluate_folder(workdir: str, folder: os.PathLike) -> dict:
  """NLL table of every clip in `folder` (recursive), baselines from the workdir cache.

  AMC frame rates come from `folder/index.csv` when present (else 120 fps). Writes
  `nll_table_<foldername>.json` / `.md` into `workdir`; the table adds `clips` (per-clip
  `num_poses` and nats/pose per model).

  Raises:
    PriorEvalError: no clips in `folder`, or no trained prior / baselines in `workdir`.
  """
  from flowpose.data.tfds.cmu_mocap import splits as splits_lib  # pylint: disable=g-import-not-at-top
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise PriorEvalError(f"evaluate_folder: {folder} is not a folder")
  paths = _clip_paths(folder)
  if not paths:
    raise PriorEvalError(f"evaluate_folder: no clips in {folder}; expected SS_CC.amc[.gz] "
                         "files with SS.asf[.gz] beside them, or .bvh[.gz] files")
  index_path = folder / "index.csv"
  index = splits_lib.read_index(index_path) if index_path.is_file() else {}
  prior, params, _ = load_trained_prior(workdir)
  fitted = load_baselines(workdir)
  clips, all_dofs = {}, []
  for path in paths:
    name = path.name.split(".")[0]
    dofs = charts.from_dofs_np(prior.chart, read_clip_dofs(path, index.get(name, (None,))[0]))
    if dofs.shape[0] == 0:
      logging.warning("evaluate_folder: %s has no frames; skipped.", path)
      continue
    stats = _split_stats(prior, params, fitted, dofs)
    clips[str(path.relative_to(folder))] = {
        "num_poses": stats["num_poses"], "nats_per_pose": stats["nats_per_pose"]}
    all_dofs.append(dofs)
  if not all_dofs:
    raise PriorEvalError(f"evaluate_folder: every clip in {folder} is empty")
  split = folder.resolve().name or "folder"
  details = {split: _split_stats(prior, params, fitted, np.concatenate(all_dofs))}
  table = _table(split, details, prior.event_dim, prior.chart, folder=str(folder), clips=clips)
  write_table(workdir, table, f"{TABLE_STEM}_{split}")
  return table


# ---------------------------------------------------------------------------
# Pictures.
# ---------------------------------------------------------------------------


@jax.jit
def _posed_vertices(model, rotmats):
  """`[N, V, 3]` vertices of the body `model` at mean shape for local `rotmats [N, J, 3, 3]`."""
  from flowpose.body import model as body_model  # pylint: disable=g-import-not-at-top
  betas = jnp.zeros(model.shapedirs.shape[-1])
  return jax.vmap(lambda r: body_model.forward(model, r, betas, None).vertices)(rotmats)


def _render_poses(dofs: np.ndarray, size: int) -> list:
  """Renders chart poses `[N, D]` on the CC0 body (mean shape, root upright, parts coloured).

  Returns:
    N `[size, size, 3]` uint8 images, front view, each framed on its own mesh.
  """
  from flowpose.evidence import raster as render  # pylint: disable=g-import-not-at-top
  from flowpose.viz import images as viz  # pylint: disable=g-import-not-at-top
  from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
  from flowpose.data import retarget  # pylint: disable=g-import-not-at-top
  model = assets.load_cc0_model()
  # root_rotmat None = CMU root identity: the body stands upright facing +Z (front view).
  rotmats = retarget.pose_dofs_to_body_rotmats(jnp.asarray(dofs, jnp.float32))
  vertices = np.asarray(_posed_vertices(model, rotmats))
  faces = np.asarray(model.faces)
  labels = np.asarray(model.part_labels)
  palette = viz.part_palette(len(model.part_names))
  images = []
  for verts in vertices:
    camera = render.fit_camera(verts, (0.0, 0.0, 1.0), (size, size))
    images.append(render.render(verts, faces, camera, (size, size), vertex_labels=labels,
                                label_colors=palette, smooth=True).rgb)
  return images


def interpolate_latent(prior, params, pose_a: np.ndarray, pose_b: np.ndarray,
                       num_steps: int = 8) -> np.ndarray:
  """`[num_steps, D]` poses along the straight line between the latents of two poses `[D]`."""
  def path(params, ends):
    z = prior.pose_to_latent(params, ends)
    t = jnp.linspace(0.0, 1.0, num_steps)[:, None]
    return prior.latent_to_pose(params, (1.0 - t) * z[0] + t * z[1])

  # Jitted: op-by-op dispatch of a deep flow costs more than compiling it.
  ends = jnp.stack([jnp.asarray(pose_a, jnp.float32), jnp.asarray(pose_b, jnp.float32)])
  return np.asarray(jax.jit(path)(params, ends))


def render_pictures(workdir: str, prior, params, poses: np.ndarray, num_samples: int = 16,
                    num_steps: int = 8, size: int = 192, seed: int = 0) -> Tuple[str, str]:
  """Writes `samples.png` (flow samples) and `interpolation.png` into `workdir`.

  Args:
    workdir: output folder.
    prior, params: the trained prior.
    poses: `[N, D]` evaluation poses; the interpolation runs between two of them (picked
      by `seed`, far apart in the latent space among a few candidates).
    num_samples, num_steps, size: number of samples, interpolation steps, pixels per view.
    seed: sampling seed.

  Returns:
    The two paths.
  """
  from flowpose.viz import images as viz  # pylint: disable=g-import-not-at-top
  samples = np.asarray(jax.jit(prior.sample, static_argnums=2)(
      params, jax.random.key(seed), num_samples))
  # Two distinct poses: the pair farthest apart in z among 16 random candidates, so the
  # strip shows a real transition rather than two near-identical frames.
  rng = np.random.default_rng(seed)
  candidates = np.asarray(poses)[rng.choice(len(poses), min(16, len(poses)), replace=False)]
  z = np.asarray(jax.jit(prior.pose_to_latent)(params, jnp.asarray(candidates)))
  dist = np.sum((z[:, None] - z[None]) ** 2, -1)
  i, j = np.unravel_index(np.argmax(dist), dist.shape)
  path_poses = interpolate_latent(prior, params, candidates[i], candidates[j], num_steps)
  # One posing call for both pictures (one compile).
  poses_dofs = charts.to_dofs(prior.chart, np.concatenate([samples, path_poses]))
  images = _render_poses(np.asarray(poses_dofs), size)
  grid = viz.image_grid(images[:num_samples], [f"sample {k}" for k in range(num_samples)],
                        num_cols=int(math.ceil(math.sqrt(num_samples))))
  samples_path = str(viz.save_png(os.path.join(workdir, "samples.png"), grid))
  strip = viz.image_grid(images[num_samples:],
                         [f"t={t:.2f}" for t in np.linspace(0, 1, num_steps)],
                         num_cols=num_steps)
  interp_path = str(viz.save_png(os.path.join(workdir, "interpolation.png"), strip))
  return samples_path, interp_path
