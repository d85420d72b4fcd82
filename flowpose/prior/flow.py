"""The kinematic normalizing-flow pose prior (after Zanfir et al., ECCV 2020).

`prior = make_prior(config.flow)` returns a `FlowPrior` NamedTuple of pure
functions over an explicit params pytree:

  params = prior.init(key, example_poses)        # [B, D] training poses
  prior.log_prob(params, pose)                   # [..., D] -> [...] nats
  z = prior.pose_to_latent(params, pose)         # [..., D] -> [..., D]
  pose = prior.latent_to_pose(params, z)         # [..., D] -> [..., D]
  poses = prior.sample(params, key, n)           # -> [n, D]

The chart (`flowpose.prior.charts`). By default the density lives on the per-joint
DOF angles of `flowpose.data.cmu_skeleton.POSE_DOF_NAMES` (D = 50, radians;
`chart = "euler_dofs"`); `chart = "axis_angle"` puts it on per-bone axis-angle
vectors (D = 72, not periodic, no wrapping). Euler angles are periodic, a flow lives on R^D, so each DOF is cut
once: angle `a` is mapped to `wrap(a - center)` in (-pi, pi], `center` being
the circular mean of the training data for that DOF, i.e. the cut sits
opposite the data (at center +- pi) rather than at a fixed +-pi. `pose` and
`pose + 2 pi k` therefore have the same log-density. `log_prob` is the density
of the flow restricted to that torus chart: mass the flow puts outside
(-pi, pi] around the center is lost (negligible when a DOF's spread is well
below pi; most CMU DOFs span a fraction of that, but check the
largest-variance DOFs, e.g. humerus/clavicle twist, on real data).

Standardisation. `x = wrap(pose - center) / scale` with the per-DOF `center`
and `scale` (std) of the training data, stored in `params["stats"]`. They are
not trained: every use goes through `jax.lax.stop_gradient` and the trainer
freezes them in the optimizer. Its log-det (`-sum(log scale)`) is included,
so `log_prob` is in nats of the raw angles.

The flow. `x = f(z)`, `z ~ N(0, I)`, `f = chain(blocks)`. In the normalizing
direction (pose -> latent) block `i` applies actnorm, coupling `i`, then a
mixing layer; couplings are affine (RealNVP) or rational-quadratic splines.
Masks (True = passed through, i.e. conditioning):

* "alternating": even/odd dims, parity alternating per block; mixing "lu" or
  "permutation" between blocks makes different pairs meet.
* "kinematic": masks follow the kinematic tree, with 5 groups (torso =
  spine/neck/head, left arm, right arm, left leg, right leg). Coupling `i`
  uses `KINEMATIC_SCHEDULE[i % 6]` (updated groups | conditioning):
    0. all four limbs | torso
    1. torso | all limbs
    2. left arm + left leg | torso + right arm + right leg (contralateral)
    3. right arm + right leg | torso + left arm + left leg
    4. odd-position DOFs of every group | everything else
    5. even-position DOFs of every group | everything else
  Rows 4-5 model dependencies inside a limb (e.g. humerus rx/ry/rz) and
  between arm and leg of one side. Mixing must keep the groups meaningful:
  "group_lu" (a block-diagonal LU linear map per group) or "none"; a global
  "lu"/"permutation" would scramble the groups and is rejected.
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict
import numpy as np

from flowpose import bijectors
from flowpose.prior import charts

Array = jax.Array
Params = Any

CHARTS = charts.CHARTS
COUPLINGS = ("affine", "spline")
MASKS = ("kinematic", "alternating")
MIXINGS = ("group_lu", "lu", "permutation", "none")

# Kinematic groups of the pose chart, by ASF bone.
KINEMATIC_GROUPS = {
    "torso": ("lowerback", "upperback", "thorax", "lowerneck", "upperneck",
              "head"),
    "right_arm": ("rclavicle", "rhumerus", "rradius", "rwrist", "rhand"),
    "left_arm": ("lclavicle", "lhumerus", "lradius", "lwrist", "lhand"),
    "right_leg": ("rfemur", "rtibia", "rfoot", "rtoes"),
    "left_leg": ("lfemur", "ltibia", "lfoot", "ltoes"),
}
_LIMBS = ("left_arm", "right_arm", "left_leg", "right_leg")
# Updated groups of each coupling in the kinematic schedule (see module doc);
# "odd"/"even" pick alternate DOFs inside every group.
KINEMATIC_SCHEDULE = (_LIMBS, ("torso",), ("left_arm", "left_leg"),
                      ("right_arm", "right_leg"), "odd", "even")

# Smallest per-DOF scale used for standardisation (radians): a near-constant
# DOF must not turn into a near-delta after dividing by its std.
_MIN_SCALE = 1e-3


class FlowPrior(NamedTuple):
  """A pose prior as pure functions (see the module docstring).

  Attributes:
    init: `(key, example_poses [B, D]) -> params`.
    log_prob: `(params, pose [..., D]) -> [...]` nats of the raw angles.
    sample: `(params, key, n) -> [n, D]` poses in (-pi, pi].
    pose_to_latent: `(params, pose [..., D]) -> z [..., D]`.
    latent_to_pose: `(params, z [..., D]) -> pose [..., D]` in (-pi, pi].
    event_dim: D.
    coupling_masks: `[num_layers, D]` bool, True = passed through, in the
      normalizing (pose -> latent) order.
    chart: the coordinates of `pose` (`flowpose.prior.charts`); `charts.to_dofs(chart, pose)` gives
      the 50 CMU DOF angles.
  """
  init: Callable[..., Params]
  log_prob: Callable[..., Array]
  sample: Callable[..., Array]
  pose_to_latent: Callable[..., Array]
  latent_to_pose: Callable[..., Array]
  event_dim: int
  coupling_masks: np.ndarray
  chart: str = "euler_dofs"


def wrap_angle(angle: Array) -> Array:
  """Maps angles `[...]` (radians) to (-pi, pi] (atan2(sin, cos))."""
  return jnp.arctan2(jnp.sin(angle), jnp.cos(angle))


# ---------------------------------------------------------------------------
# Config and masks.
# ---------------------------------------------------------------------------


def flow_event_dim(flow: ml_collections.ConfigDict) -> int:
  """D of the flow: `flow.event_dim` when set, else the chart's dimension.

  `default_flow_config()` derives `event_dim` from `chart` already; this also
  covers a hand-built config without the field (or with None).
  """
  event_dim = flow.get("event_dim")
  return charts.chart_dim(flow.chart) if event_dim is None else event_dim


def validate_flow_config(flow: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad `flow.*` field."""
  def bad(field, expected, value):
    raise ValueError(f"config flow.{field}: expected {expected}, got {value!r}")

  if flow.get("chart") not in CHARTS:
    bad("chart", f"one of {CHARTS}", flow.get("chart"))
  if flow.coupling not in COUPLINGS:
    bad("coupling", f"one of {COUPLINGS}", flow.coupling)
  if flow.mask not in MASKS:
    bad("mask", f"one of {MASKS}", flow.mask)
  if flow.mixing not in MIXINGS:
    bad("mixing", f"one of {MIXINGS}", flow.mixing)
  event_dim = flow_event_dim(flow)
  if (isinstance(event_dim, bool) or not isinstance(event_dim, int)
      or event_dim < 2):
    bad("event_dim", "an int >= 2", event_dim)
  uses_groups = flow.mask == "kinematic" or flow.mixing == "group_lu"
  cmu_dim = charts.chart_dim(flow.chart)
  if (uses_groups or flow.chart != "euler_dofs") and event_dim != cmu_dim:
    bad("event_dim", f"{cmu_dim} (the {flow.chart!r} chart of the CMU pose, on which the "
        "kinematic groups are defined; leave event_dim unset to derive it from the chart)",
        event_dim)
  if flow.mask == "kinematic" and flow.mixing in ("lu", "permutation"):
    bad("mixing", "'group_lu' or 'none' with kinematic masks (a global "
        "mixing would scramble the kinematic groups)", flow.mixing)
  if not isinstance(flow.get("actnorm", True), bool):
    bad("actnorm", "True or False", flow.get("actnorm"))
  if not isinstance(flow.num_layers, int) or flow.num_layers < 1:
    bad("num_layers", "an int >= 1", flow.num_layers)
  sizes = tuple(flow.hidden_sizes)
  if not sizes or not all(isinstance(h, int) and h > 0 for h in sizes):
    bad("hidden_sizes", "a non-empty tuple of positive ints", flow.hidden_sizes)
  if flow.scale_bound is not None and not flow.scale_bound > 0:
    bad("scale_bound", "a positive float or None", flow.scale_bound)
  if not isinstance(flow.num_bins, int) or flow.num_bins < 2:
    bad("num_bins", "an int >= 2", flow.num_bins)
  if not flow.spline_range > 0:
    bad("spline_range", "a positive float", flow.spline_range)


def group_indices(chart: str = "euler_dofs") -> dict[str, np.ndarray]:
  """Indices `{group: [n_g]}` of each kinematic group in the pose chart."""
  bones = charts.dim_bones(chart)
  groups = {name: np.asarray([i for i, b in enumerate(bones) if b in members])
            for name, members in KINEMATIC_GROUPS.items()}
  covered = np.sort(np.concatenate(list(groups.values())))
  assert np.array_equal(covered, np.arange(len(bones))), "groups must partition"
  return groups


def kinematic_mask(layer: int, chart: str = "euler_dofs") -> np.ndarray:
  """`[D]` bool mask (True = conditioning) of kinematic coupling `layer`."""
  groups = group_indices(chart)
  updated = np.zeros(charts.chart_dim(chart), bool)
  entry = KINEMATIC_SCHEDULE[layer % len(KINEMATIC_SCHEDULE)]
  if entry in ("odd", "even"):
    parity = 1 if entry == "odd" else 0
    for idx in groups.values():
      updated[idx[parity::2]] = True
  else:
    for name in entry:
      updated[groups[name]] = True
  return ~updated


def coupling_masks(flow: ml_collections.ConfigDict) -> np.ndarray:
  """`[num_layers, D]` coupling masks (True = passed through)."""
  if flow.mask == "kinematic":
    return np.stack([kinematic_mask(i, flow.chart) for i in range(flow.num_layers)])
  return np.stack([bijectors.alternating_mask(flow_event_dim(flow), i % 2)
                   for i in range(flow.num_layers)])


# ---------------------------------------------------------------------------
# Building the flow.
# ---------------------------------------------------------------------------


def _group_lu(dim: int, groups: Sequence[np.ndarray]) -> bijectors.Bijector:
  """LU linear map that only mixes dims within each group (block-diagonal).

  One `[D, D]` `lu_linear` whose strictly-triangular factors are masked to
  same-group entries: `L U` is then block-diagonal up to a permutation, its
  log-det still `sum(log_diag)`, and a flow needs one triangular solve per
  layer instead of one per group (faster to compile). The masked-out entries
  stay zero: their gradient is zero.
  """
  group_of = np.zeros(dim, np.int32)
  for g, idx in enumerate(groups):
    group_of[idx] = g
  # NumPy, not jnp: the flow may first be built inside a trace (the trainer's eval_shape);
  # a jnp constant made there is a tracer that the memoised prior would keep.
  same_group = (group_of[:, None] == group_of[None, :]).astype(np.float32)
  lu = bijectors.lu_linear(dim)

  def _masked(params):
    return {**params, "lower": params["lower"] * same_group,
            "upper": params["upper"] * same_group}

  def forward_and_log_det(params, x, context=None):
    return lu.forward_and_log_det(_masked(params), x, context)

  def inverse_and_log_det(params, y, context=None):
    return lu.inverse_and_log_det(_masked(params), y, context)

  return bijectors.Bijector(lu.init, forward_and_log_det, inverse_and_log_det)


def _mixing(flow: ml_collections.ConfigDict, layer: int) -> bijectors.Bijector:
  dim = flow_event_dim(flow)
  if flow.mixing == "lu":
    # A fixed random P as in Glow, so consecutive alternating masks pair
    # different dims even while L, U are still near the identity.
    perm = np.random.default_rng(layer).permutation(dim)
    return bijectors.lu_linear(dim, perm)
  if flow.mixing == "permutation":
    return bijectors.random_permutation(dim, seed=layer)
  if flow.mixing == "group_lu":
    return _group_lu(dim, list(group_indices(flow.chart).values()))
  return None  # "none"


def _coupling(flow: ml_collections.ConfigDict,
              mask: np.ndarray) -> bijectors.Bijector:
  hidden = tuple(flow.hidden_sizes)
  # Slices, not gathers: same map up to rounding, ~20% less CPU per train step (coupling.py).
  if flow.coupling == "affine":
    return bijectors.affine_coupling(mask, hidden_sizes=hidden,
                                     scale_bound=flow.scale_bound, split="slices")
  return bijectors.spline_coupling(
      mask, num_bins=flow.num_bins, range_min=-flow.spline_range,
      range_max=flow.spline_range, hidden_sizes=hidden, split="slices")


def build_flow(flow: ml_collections.ConfigDict) -> bijectors.Bijector:
  """The bijector `z -> x` (standardised angles) described in the module doc."""
  layers = []
  for i, mask in enumerate(coupling_masks(flow)):
    # chain() applies its list front-to-back in the inverse (x -> z)
    # direction, so list order = normalizing order: actnorm, coupling, mixing.
    if flow.get("actnorm", True):  # Priors saved before the switch existed had it on.
      layers.append(bijectors.actnorm(flow_event_dim(flow)))
    layers.append(_coupling(flow, mask))
    mixing = _mixing(flow, i)
    if mixing is not None:
      layers.append(mixing)
  return bijectors.chain(layers)


# ---------------------------------------------------------------------------
# The prior.
# ---------------------------------------------------------------------------


def make_prior(flow_config: ml_collections.ConfigDict) -> FlowPrior:
  """Builds the pose prior described by `config.flow` (see module doc).

  Args:
    flow_config: `config.flow` as from `default_flow_config()`: `chart`,
      `event_dim` (derived from the chart unless set), `num_layers`,
      `hidden_sizes`, `coupling`, `mask`, `mixing`, `num_bins`,
      `spline_range`, `scale_bound`, `actnorm`.

  Returns:
    A `FlowPrior`. Raises ValueError naming a bad `flow.*` field.
  """
  validate_flow_config(flow_config)
  dim = flow_event_dim(flow_config)
  # Euler DOFs are angles, cut opposite the data; axis-angle coordinates are not periodic.
  wrap = wrap_angle if charts.is_periodic(flow_config.chart) else (lambda x: x)
  flow = build_flow(flow_config)
  masks = coupling_masks(flow_config)

  def _check(name, x):
    x = jnp.asarray(x, jnp.float32)
    if x.ndim < 1 or x.shape[-1] != dim:
      raise ValueError(f"prior.{name}: expected [..., {dim}], got {x.shape}")
    return x

  def _stats(params):
    stats = jax.lax.stop_gradient(params["stats"])
    return stats["center"], stats["scale"]

  def _standardise(params, pose):
    center, scale = _stats(params)
    return wrap(pose - center) / scale, -jnp.sum(jnp.log(scale))

  def init(key, example_poses):
    poses = _check("init", example_poses).reshape(-1, dim)
    if poses.shape[0] < 2:
      raise ValueError("prior.init: needs at least 2 example poses")
    if charts.is_periodic(flow_config.chart):
      # Circular mean: puts the chart's cut opposite the data.
      center = jnp.arctan2(jnp.mean(jnp.sin(poses), 0), jnp.mean(jnp.cos(poses), 0))
    else:
      center = jnp.mean(poses, 0)
    scale = jnp.maximum(jnp.std(wrap(poses - center), 0), _MIN_SCALE)
    params = {"stats": {"center": center, "scale": scale},
              "flow": flow.init(key, dim)}
    x, _ = _standardise(params, poses)
    # The data live on the output side of z -> x, hence "inverse".
    params["flow"] = bijectors.data_init(flow, params["flow"], x,
                                         direction="inverse")
    return params

  def log_prob(params, pose):
    x, log_det_std = _standardise(params, _check("log_prob", pose))
    return (bijectors.standard_normal_log_prob(flow, params["flow"], x)
            + log_det_std)

  def pose_to_latent(params, pose):
    x, _ = _standardise(params, _check("pose_to_latent", pose))
    return flow.inverse(params["flow"], x)

  def latent_to_pose(params, z):
    center, scale = _stats(params)
    x = flow.forward(params["flow"], _check("latent_to_pose", z))
    return wrap(x * scale + center)

  def sample(params, key, n):
    z = jax.random.normal(key, (n, dim), jnp.float32)
    return latent_to_pose(params, z)

  return FlowPrior(init, log_prob, sample, pose_to_latent, latent_to_pose,
                   dim, masks, flow_config.chart)


def _chart_dim_or_none(unused_value, chart):
  # Lazy op of `event_dim`: None for an unknown chart, so that printing a bad
  # config still works and `validate_flow_config` names `flow.chart`.
  return charts.chart_dim(chart) if chart in CHARTS else None


def default_flow_config() -> ml_collections.ConfigDict:
  """The default `config.flow`; experiments take it and override fields.

  `event_dim` follows `chart` (`charts.chart_dim`: 50 for "euler_dofs", 72 for
  "axis_angle"), so `--config.flow.chart=axis_angle` alone is a valid prior.
  It is a lazily computed `FieldReference`: reading `flow.event_dim` gives the
  current chart's dimension until someone sets it explicitly (e.g. a 12-D
  synthetic test flow), which pins it.
  """
  flow = ml_collections.ConfigDict()
  flow.chart = ml_collections.FieldReference("euler_dofs")
  flow.event_dim = ml_collections.FieldReference(
      0, field_type=int,
      op=config_dict._Op(_chart_dim_or_none, [flow.get_ref("chart")]))  # pylint: disable=protected-access
  flow.num_layers = 8  # Coupling blocks.
  # Chosen by validation NLL on the shared CMU subset (WORKSPACE.md, "Prior
  # selection"): 2x64 MLPs (2x256 overfit across subjects within 500 steps),
  # rational-quadratic splines (-28.5 vs -26.3 nats/pose for affine), and
  # alternating masks + LU mixing (-23.1 vs -21.2 for kinematic + group LU).
  flow.hidden_sizes = (64, 64)
  flow.coupling = "spline"      # "affine" | "spline".
  flow.mask = "alternating"     # "kinematic" | "alternating".
  flow.mixing = "lu"            # "group_lu" | "lu" | "permutation" | "none".
  flow.num_bins = 8             # Spline bins.
  flow.spline_range = 5.0       # Spline interval [-r, r] (standardised units).
  flow.scale_bound = 3.0        # Affine log-scale soft clamp (None: off).
  flow.actnorm = True           # An actnorm before every coupling (off: the ablation).
  return flow
