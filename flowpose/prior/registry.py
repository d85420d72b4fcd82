"""Pose priors by name (`none | gaussian | gaussian_diag | gmm8 | flow | vae`), the way big_vision picks
models. One registry serves pose fitting and the prior evaluation's NLL table.

    prior = registry.load("gmm8", workdir)             # from a trained prior workdir
    prior = registry.make("gaussian", gaussian=fitted)  # from params in memory (tests, benchmarks)
    log_p = prior.log_prob(dofs)                        # [N, 50] DOFs -> [N] nats (evaluation)
    dofs = prior.space.decode(prior.params, var)        # the fitter's pose variable -> [50] DOFs
    cost = prior.space.penalty(prior.params, var)       # the fitter's prior term

An entry (`PriorEntry`) builds a prior from params (`make`), from a workdir written by
`python -m launch.main` + `launch.evaluate_prior` (`load`) and, with a density, from what the prior
evaluation holds in memory (`eval_kwargs`): each such entry is a row of the NLL table
(`flowpose.prior.evaluate`). `register` adds one: a `vae` registered once is fitted and evaluated.
Unknown names raise `PriorRegistryError` listing the valid ones.

The pose variable the fitter optimises, per entry:

  none           var = DOFs,                         penalty 0,                 no density
  gaussian       x = mean + L var (L = Cholesky),    penalty ||var||^2
  gaussian_diag  x = mean + std * var,               penalty ||var||^2
  gmm8           x = var,                            penalty -2 log p_GMM(x)
  flow           x = flow.latent_to_pose(var),       penalty ||var||^2
  vae            x = decoder mean(var) (var: [L]),   penalty ||var||^2

where x are the coordinates of the prior's chart (`flowpose.prior.charts`; the baselines are fitted
in the flow's chart) and `decode` returns the 50 DOFs either way. The GMM's `-2 log p` (not
`-log p`) puts every penalty on one scale: for a single Gaussian it is `||z||^2 + const`, so one
`loss_weights.pose_prior` means the same strength for every prior.

`log_prob(dofs)` is the density of the 50 DOF angles in the prior's chart coordinates (periodic
charts wrap each angle around the chart center). numpy `dofs` give float64 numpy, exactly the NLL
table's numbers (baselines in float64 as `FittedBaselines.log_prob`, the flow in fixed-size jitted
batches); jax `dofs` (or tracers) give float32 jnp of `space.density` (jittable, differentiable).
Nothing here imports `flowpose.train` or `flowpose.prior.evaluate`.
"""

import json
import os
from typing import Any, Callable, NamedTuple, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from flowpose.data import poses as pose_data
from flowpose.prior import baseline_cache
from flowpose.prior import baselines
from flowpose.prior import charts
from flowpose.prior import io as prior_io
from flowpose.prior import vae_entry
from flowpose.prior.spaces import EvalContext, PosePrior, PoseSpace, PriorRegistryError
from flowpose.prior.spaces import f32_tree as _f32_tree
from flowpose.prior.spaces import identity as _identity
from flowpose.prior.spaces import in_dofs as _in_dofs
from flowpose.prior.spaces import latent_norm as _latent_norm
from flowpose.prior.spaces import zero_penalty as _zero_penalty


class PriorEntry(NamedTuple):
  """A registry entry: `make(**params) -> PosePrior` from params in memory, `load(workdir or
  None) -> PosePrior` from a trained prior workdir, a one-line `description`, and
  `eval_kwargs(EvalContext) -> dict` of `make`'s keywords from the evaluation's params in memory
  (None: not a row of the NLL table, no density; returning None: no row for this workdir)."""
  name: str
  make: Callable[..., PosePrior]
  load: Callable[[Optional[str]], PosePrior]
  description: str
  eval_kwargs: Optional[Callable[[EvalContext], dict]] = None


_ENTRIES: dict = {}


def register(name: str, *, make: Callable[..., PosePrior],
             load: Callable[[Optional[str]], PosePrior], description: str,
             eval_kwargs: Optional[Callable[[EvalContext], dict]] = None) -> PriorEntry:
  """Adds (or replaces) the entry `name`; returns it."""
  entry = PriorEntry(name, make, load, description, eval_kwargs)
  _ENTRIES[name] = entry
  return entry


def names() -> tuple:
  """The registered prior names, in registration order."""
  return tuple(_ENTRIES)


def evaluated_names() -> tuple:
  """The registered names with a density the NLL table reports (`eval_kwargs` set), in order."""
  return tuple(name for name, entry in _ENTRIES.items() if entry.eval_kwargs is not None)


def get(name: str) -> PriorEntry:
  """The entry `name`; PriorRegistryError listing the valid names otherwise."""
  if name not in _ENTRIES:
    raise PriorRegistryError(f"unknown pose prior {name!r}; valid names: {', '.join(names())}")
  return _ENTRIES[name]


def make(name: str, **params) -> PosePrior:
  """`get(name).make(**params)`; e.g. `make("gmm8", gmm=fitted_gmm, chart="euler_dofs")`."""
  return get(name).make(**params)


def load(name: str, workdir: Optional[str]) -> PosePrior:
  """`get(name).load(workdir)`: the prior `name` of a trained prior workdir.

  Raises:
    PriorRegistryError: unknown name, missing/mistyped workdir, or unreadable files (named).
  """
  entry = get(name)
  if workdir is not None and not os.path.isdir(workdir):
    raise PriorRegistryError(f"prior {name!r}: prior workdir {workdir!r} is not a folder")
  return entry.load(workdir)


def flow_log_prob(flow, params, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
  """`[N]` float64 flow log-density (nats) of chart coordinates `x [N, D]`, in fixed-size
  zero-padded batches (one compile for any N)."""
  fn = jax.jit(flow.log_prob)
  batch_size = min(batch_size, max(1, x.shape[0]))
  out = []
  for poses, weights in pose_data.eval_batches(np.asarray(x, np.float32), batch_size):
    out.append(np.asarray(fn(params, poses))[weights > 0])
  return np.concatenate(out).astype(np.float64)


# --- Shared pieces ---

def _chart_coords(chart: str, dofs, center):
  """`[N, 50]` DOFs -> the chart's coordinates (jnp); periodic charts wrapped around `center`."""
  x = charts.from_dofs(chart, dofs)
  if charts.is_periodic(chart):
    return center + jnp.arctan2(jnp.sin(x - center), jnp.cos(x - center))
  return x


def _baseline_log_prob_np(model, chart: str, center):
  """numpy `[N, 50]` DOFs -> float64 `[N]` under a fitted baseline, as `FittedBaselines.log_prob`
  computes it on the chart coordinates (float64, periodic charts wrapped around `center`)."""
  center, periodic = np.asarray(center, np.float64), charts.is_periodic(chart)

  def log_prob_np(dofs):
    x = np.asarray(charts.from_dofs_np(chart, dofs), np.float64)
    x = baseline_cache.to_chart(x, center) if periodic else x
    return np.asarray(baselines.log_prob(model, x), np.float64)
  return log_prob_np


def _workdir_chart(workdir: str) -> str:
  """The chart of a prior workdir (`config.json` -> flow.chart; Euler DOFs by default)."""
  path = os.path.join(workdir, prior_io.CONFIG_FILE)
  if not os.path.isfile(path):
    return "euler_dofs"
  try:
    with open(path) as f:
      return json.load(f).get("flow", {}).get("chart", "euler_dofs")
  except (OSError, ValueError) as e:
    raise PriorRegistryError(f"{path}: unreadable config ({e}); delete it or retrain") from e


def _load_baselines(name: str, workdir: Optional[str]) -> baseline_cache.FittedBaselines:
  if not workdir:
    raise PriorRegistryError(f"prior {name!r} needs a trained prior workdir (its "
                             f"{baseline_cache.BASELINES_FILE}), got {workdir!r}")
  try:
    return baseline_cache.load_baselines(workdir)
  except (baseline_cache.PriorEvalError, OSError, ValueError) as e:
    raise PriorRegistryError(f"prior {name!r}: {e}") from e


def _register_baseline(name: str, model: str, keyword: str, make_fn, description: str):
  """Registers the baseline `name`: the `baselines.npz` model `model`, passed as `keyword`."""

  def kwargs(fitted: baseline_cache.FittedBaselines, chart: str) -> dict:
    return {keyword: fitted.models[model], "chart": chart, "center": fitted.center}

  def load_fn(workdir):
    return make_fn(**kwargs(_load_baselines(name, workdir), _workdir_chart(workdir)))

  register(name, make=make_fn, load=load_fn, description=description,
           eval_kwargs=lambda context: kwargs(context.baselines, context.flow.chart))


# --- none ---

def make_none(*, dim: int = charts.chart_dim("euler_dofs"),
              init_pose: Optional[np.ndarray] = None) -> PosePrior:
  """No prior: the variable is the DOFs, starting at `init_pose [D]` (default zeros)."""
  init = (jnp.zeros((dim,), jnp.float32) if init_pose is None
          else jnp.asarray(init_pose, jnp.float32))
  if init.shape != (dim,):
    raise PriorRegistryError(f"prior 'none': init_pose must be [{dim}], got {init.shape}")
  return PosePrior(PoseSpace("none", dim, _identity, _zero_penalty), {}, init)


def load_none(workdir: Optional[str]) -> PosePrior:
  """Starts at the workdir's Gaussian mean (a fair start next to the priors), else at zeros."""
  if not workdir:
    return make_none()
  try:
    fitted = baseline_cache.load_baselines(workdir)
  except baseline_cache.PriorEvalError as e:
    logging.warning("prior 'none' starts at the zero DOFs: %s", e)
    return make_none()
  mean = jnp.asarray(fitted.models["gaussian_full"].mean, jnp.float32)
  return make_none(init_pose=charts.to_dofs(_workdir_chart(workdir), mean))


# --- gaussian, gaussian_diag ---

def _gaussian_decode(params, var):
  return params["mean"] + params["scale_tril"] @ var


def _gaussian_density_fn(chart: str):
  def density(params, dofs):
    x = _chart_coords(chart, dofs, params["center"]) - params["mean"]
    z = jax.scipy.linalg.solve_triangular(params["scale_tril"], x.T, lower=True).T
    log_det = jnp.sum(jnp.log(jnp.diagonal(params["scale_tril"])))
    return -0.5 * jnp.sum(z * z, -1) - log_det - 0.5 * x.shape[-1] * jnp.log(2 * jnp.pi)
  return density


def make_gaussian(*, gaussian: baselines.GaussianFullParams, chart: str = "euler_dofs",
                  center: Optional[np.ndarray] = None) -> PosePrior:
  """Full Gaussian in `chart` coordinates (`center`: the chart's cut, default the mean)."""
  mean = np.asarray(gaussian.mean)
  center = mean if center is None else np.asarray(center)
  params = _f32_tree({"mean": mean, "scale_tril": np.asarray(gaussian.scale_tril),
                      "center": center})
  space = PoseSpace("gaussian", mean.shape[-1], _in_dofs(chart, _gaussian_decode), _latent_norm,
                    _gaussian_density_fn(chart))
  return PosePrior(space, params, jnp.zeros((mean.shape[-1],), jnp.float32),
                   _baseline_log_prob_np(gaussian, chart, center))


def _gaussian_diag_decode(params, var):
  return params["mean"] + params["std"] * var


def _gaussian_diag_density_fn(chart: str):
  def density(params, dofs):
    x = _chart_coords(chart, dofs, params["center"])
    return baselines.log_prob(baselines.GaussianDiagParams(params["mean"], params["std"]), x)
  return density


def make_gaussian_diag(*, gaussian: baselines.GaussianDiagParams, chart: str = "euler_dofs",
                       center: Optional[np.ndarray] = None) -> PosePrior:
  """Diagonal Gaussian in `chart` coordinates (`center`: the chart's cut, default the mean)."""
  mean = np.asarray(gaussian.mean)
  center = mean if center is None else np.asarray(center)
  params = _f32_tree({"mean": mean, "std": np.asarray(gaussian.std), "center": center})
  space = PoseSpace("gaussian_diag", mean.shape[-1], _in_dofs(chart, _gaussian_diag_decode),
                    _latent_norm, _gaussian_diag_density_fn(chart))
  return PosePrior(space, params, jnp.zeros((mean.shape[-1],), jnp.float32),
                   _baseline_log_prob_np(gaussian, chart, center))


# --- gmm8 ---

def _gmm_penalty(params, var):
  return -2.0 * baselines.log_prob(params["gmm"], var)


def _gmm_density_fn(chart: str):
  def density(params, dofs):
    return baselines.log_prob(params["gmm"], _chart_coords(chart, dofs, params["center"]))
  return density


def make_gmm8(*, gmm: baselines.GMMParams, chart: str = "euler_dofs",
              center: Optional[np.ndarray] = None) -> PosePrior:
  """GMM in `chart` coordinates; starts at the mean of its heaviest component."""
  gmm_f32 = _f32_tree(gmm)
  heaviest = int(np.argmax(np.asarray(gmm.weights)))
  dim = gmm_f32.means.shape[-1]
  center = np.asarray(gmm.means).T @ np.asarray(gmm.weights) if center is None else center
  params = {"gmm": gmm_f32, "center": jnp.asarray(center, jnp.float32)}
  space = PoseSpace("gmm8", dim, _in_dofs(chart, _identity), _gmm_penalty, _gmm_density_fn(chart))
  return PosePrior(space, params, gmm_f32.means[heaviest],
                   _baseline_log_prob_np(gmm, chart, center))


# --- flow ---

def _flow_density_fn(flow):
  def density(params, dofs):
    return flow.log_prob(params, charts.from_dofs(flow.chart, dofs))
  return density


def make_flow(*, flow: Any, flow_params: Any) -> PosePrior:
  """A trained `flowpose.prior.flow.FlowPrior` and its params; starts at z = 0."""
  if flow is None or flow_params is None:
    raise PriorRegistryError("prior 'flow': needs flow and flow_params")
  space = PoseSpace("flow", flow.event_dim, _in_dofs(flow.chart, flow.latent_to_pose),
                    _latent_norm, _flow_density_fn(flow))

  def log_prob_np(dofs):
    return flow_log_prob(flow, flow_params, charts.from_dofs_np(flow.chart, dofs))
  return PosePrior(space, flow_params, jnp.zeros((flow.event_dim,), jnp.float32), log_prob_np)


def load_flow(workdir: Optional[str]) -> PosePrior:
  if not workdir:
    raise PriorRegistryError(f"prior 'flow' needs a trained prior workdir, got {workdir!r}")
  try:
    flow, params, _ = prior_io.load_trained_prior(workdir)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise PriorRegistryError(f"prior 'flow': cannot load the flow from {workdir} ({e})") from e
  return make_flow(flow=flow, flow_params=params)


register("none", make=make_none, load=load_none,
         description="no pose prior (the DOFs themselves)")
_register_baseline("gaussian", "gaussian_full", "gaussian", make_gaussian,
                   "full-covariance Gaussian (baselines.npz)")
_register_baseline("gmm8", "gmm8", "gmm", make_gmm8,
                   "8-component Gaussian mixture (baselines.npz)")
register("flow", make=make_flow, load=load_flow,
         description="the trained normalizing flow (prior_params.msgpack)",
         eval_kwargs=lambda context: {"flow": context.flow, "flow_params": context.flow_params})
_register_baseline("gaussian_diag", "gaussian_diag", "gaussian", make_gaussian_diag,
                   "diagonal Gaussian (baselines.npz)")
register("vae", make=vae_entry.make_vae, load=vae_entry.load_vae,
         eval_kwargs=vae_entry.eval_kwargs,
         description="VAE (VPoser-style), fitted in its latent (vae_params.msgpack in W or W/vae)")
