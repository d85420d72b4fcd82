"""Pose priors by name (`none | gaussian | gmm8 | flow`), the way big_vision picks models.

    prior = registry.load("gmm8", workdir)             # from a trained prior workdir
    prior = registry.make("gaussian", gaussian=fitted)  # from params in memory (tests, benchmarks)
    log_p = prior.log_prob(dofs)                        # [N, 50] DOFs -> [N] nats (evaluation)
    dofs = prior.space.decode(prior.params, var)        # the fitter's pose variable -> [50] DOFs
    cost = prior.space.penalty(prior.params, var)       # the fitter's prior term

An entry (`PriorEntry`) names how to build a prior from params (`make`) and from a workdir written
by `python -m launch.main` + `launch.evaluate_prior` (`load`); `register` adds one (a `vae` entry
plugs in the same way). Unknown names raise `PriorRegistryError` listing the valid ones.

The pose variable the fitter optimises, per entry:

  none      var = DOFs,                         penalty 0,                 no density
  gaussian  x = mean + L var (L = Cholesky),    penalty ||var||^2
  gmm8      x = var,                            penalty -2 log p_GMM(x)
  flow      x = flow.latent_to_pose(var),       penalty ||var||^2

where x are the coordinates of the prior's chart (`flowpose.prior.charts`; the baselines are fitted
in the flow's chart) and `decode` returns the 50 DOFs either way. The GMM's `-2 log p` (not
`-log p`) puts every penalty on one scale: for a single Gaussian it is `||z||^2 + const`, so one
`loss_weights.pose_prior` means the same strength for every prior.

`log_prob(dofs)` is the density of the 50 DOF angles in the prior's chart coordinates, as
`flowpose.prior.evaluate` reports it (periodic charts wrap each angle around the chart center).
Nothing here imports `flowpose.train`.
"""

import json
import os
from typing import Any, Callable, NamedTuple, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from flowpose.prior import baselines
from flowpose.prior import charts


class PriorRegistryError(ValueError):
  """Unknown prior name, or a prior that cannot be built/loaded (the message says why)."""


class PoseSpace(NamedTuple):
  """Static description of the pose variable (hashable: a jit key).

  Attributes:
    kind: the registry name.
    dim: D, the pose variable's size.
    decode: `(params, var [D]) -> dofs [50]`.
    penalty: `(params, var [D]) -> scalar`.
    density: `(params, dofs [N, 50]) -> [N]` log-density in nats, or None (no density).
  """
  kind: str
  dim: int
  decode: Callable[[Any, jax.Array], jax.Array]
  penalty: Callable[[Any, jax.Array], jax.Array]
  density: Optional[Callable[[Any, jax.Array], jax.Array]] = None


class PosePrior(NamedTuple):
  """A `PoseSpace`, its params pytree and the initial pose variable `init [D]`."""
  space: PoseSpace
  params: Any
  init: jax.Array

  @property
  def name(self) -> str:
    return self.space.kind

  def log_prob(self, dofs) -> jax.Array:
    """`[N]` log-density (nats) of `dofs [N, 50]` (see the module docstring)."""
    if self.space.density is None:
      raise PriorRegistryError(f"prior {self.space.kind!r} has no density (flat prior)")
    return self.space.density(self.params, jnp.asarray(dofs, jnp.float32))


class PriorEntry(NamedTuple):
  """A registry entry.

  Attributes:
    name: the registry name.
    make: `(**params) -> PosePrior` from params in memory.
    load: `(workdir or None) -> PosePrior` from a trained prior workdir.
    description: one line for error messages and docs.
  """
  name: str
  make: Callable[..., PosePrior]
  load: Callable[[Optional[str]], PosePrior]
  description: str


_ENTRIES: dict = {}


def register(name: str, *, make: Callable[..., PosePrior],
             load: Callable[[Optional[str]], PosePrior], description: str) -> PriorEntry:
  """Adds (or replaces) the entry `name`; returns it."""
  entry = PriorEntry(name, make, load, description)
  _ENTRIES[name] = entry
  return entry


def names() -> tuple:
  """The registered prior names, in registration order."""
  return tuple(_ENTRIES)


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


# ---------------------------------------------------------------------------
# Shared pieces.
# ---------------------------------------------------------------------------


def _identity(params, var):
  del params
  return var


def _zero_penalty(params, var):
  del params
  return jnp.zeros((), var.dtype)


def _latent_norm(params, var):
  del params
  return jnp.sum(jnp.square(var))


def _f32_tree(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def _in_dofs(chart: str, decode):
  """`decode` followed by the chart -> 50 DOFs map (the identity for Euler DOFs)."""
  if chart == "euler_dofs":
    return decode
  return lambda params, var: charts.to_dofs(chart, decode(params, var))


def _chart_coords(chart: str, dofs, center):
  """`[N, 50]` DOFs -> the chart's coordinates; periodic charts wrapped around `center`."""
  x = charts.from_dofs(chart, dofs)
  if charts.is_periodic(chart):
    return center + jnp.arctan2(jnp.sin(x - center), jnp.cos(x - center))
  return x


def _workdir_chart(workdir: str) -> str:
  """The chart of a prior workdir (`config.json` -> flow.chart; Euler DOFs by default)."""
  from flowpose.prior import io as prior_io  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, prior_io.CONFIG_FILE)
  if not os.path.isfile(path):
    return "euler_dofs"
  try:
    with open(path) as f:
      return json.load(f).get("flow", {}).get("chart", "euler_dofs")
  except (OSError, ValueError) as e:
    raise PriorRegistryError(f"{path}: unreadable config ({e}); delete it or retrain") from e


def _load_baselines(name: str, workdir: Optional[str]):
  from flowpose.prior import evaluate  # pylint: disable=g-import-not-at-top
  if not workdir:
    raise PriorRegistryError(f"prior {name!r} needs a trained prior workdir (its "
                             f"{evaluate.BASELINES_FILE}), got {workdir!r}")
  try:
    return evaluate.load_baselines(workdir)
  except (evaluate.PriorEvalError, OSError, ValueError) as e:
    raise PriorRegistryError(f"prior {name!r}: {e}") from e


# ---------------------------------------------------------------------------
# none
# ---------------------------------------------------------------------------


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
  from flowpose.prior import evaluate  # pylint: disable=g-import-not-at-top
  try:
    fitted = evaluate.load_baselines(workdir)
  except evaluate.PriorEvalError as e:
    logging.warning("prior 'none' starts at the zero DOFs: %s", e)
    return make_none()
  mean = jnp.asarray(fitted.models["gaussian_full"].mean, jnp.float32)
  return make_none(init_pose=charts.to_dofs(_workdir_chart(workdir), mean))


# ---------------------------------------------------------------------------
# gaussian
# ---------------------------------------------------------------------------


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
  params = _f32_tree({"mean": mean, "scale_tril": np.asarray(gaussian.scale_tril),
                      "center": mean if center is None else np.asarray(center)})
  space = PoseSpace("gaussian", mean.shape[-1], _in_dofs(chart, _gaussian_decode), _latent_norm,
                    _gaussian_density_fn(chart))
  return PosePrior(space, params, jnp.zeros((mean.shape[-1],), jnp.float32))


def load_gaussian(workdir: Optional[str]) -> PosePrior:
  fitted = _load_baselines("gaussian", workdir)
  return make_gaussian(gaussian=fitted.models["gaussian_full"], chart=_workdir_chart(workdir),
                       center=fitted.center)


# ---------------------------------------------------------------------------
# gmm8
# ---------------------------------------------------------------------------


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
  return PosePrior(space, params, gmm_f32.means[heaviest])


def load_gmm8(workdir: Optional[str]) -> PosePrior:
  fitted = _load_baselines("gmm8", workdir)
  return make_gmm8(gmm=fitted.models["gmm8"], chart=_workdir_chart(workdir),
                   center=fitted.center)


# ---------------------------------------------------------------------------
# flow
# ---------------------------------------------------------------------------


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
  return PosePrior(space, flow_params, jnp.zeros((flow.event_dim,), jnp.float32))


def load_flow(workdir: Optional[str]) -> PosePrior:
  from flowpose.prior import io as prior_io  # pylint: disable=g-import-not-at-top
  if not workdir:
    raise PriorRegistryError(f"prior 'flow' needs a trained prior workdir, got {workdir!r}")
  try:
    flow, params, _ = prior_io.load_trained_prior(workdir)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise PriorRegistryError(f"prior 'flow': cannot load the flow from {workdir} ({e})") from e
  return make_flow(flow=flow, flow_params=params)


register("none", make=make_none, load=load_none,
         description="no pose prior (the DOFs themselves)")
register("gaussian", make=make_gaussian, load=load_gaussian,
         description="full-covariance Gaussian (baselines.npz)")
register("gmm8", make=make_gmm8, load=load_gmm8,
         description="8-component Gaussian mixture (baselines.npz)")
register("flow", make=make_flow, load=load_flow,
         description="the trained normalizing flow (prior_params.msgpack)")
