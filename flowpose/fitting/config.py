"""The fitting config: `default_fit_config()` and its validation.

Fields (see `flowpose.fitting.fit` for what they do):
  prior                 a `flowpose.prior.registry` name (none | gaussian | gaussian_diag | gmm8 | flow)
  restart_yaws_deg      initial yaws (0 = facing the camera)
  select_restart_after  stage index after which the best restart is kept
  restart_pruning       ((step, keep), ...): inside that stage, after `step` steps only each
                        person's `keep` best restarts go on (`fitting.restarts`); () = none
  restart_mean_temperature   0: keep the best restart; T > 0: the restarts' pose latent and
                        betas averaged with weights exp(-evidence loss / T) (`fitting.restarts`)
  final_lr_fraction     Adam's cosine decay floor within each stage
  warmup_fraction       Adam's linear warmup, fraction of each stage (0 = none)
  keypoint_sigma, part_sigma, silhouette_sigma   Geman-McClure scales, in person-box units
  part_vertices_per_part, num_part_pixels   part-term sizes
  num_mask_pixels       person-mask pixels sampled for the silhouette term
  visibility            zbuffer | normals | all (part-term vertex weights)
  loss_weights          the one weights dict, exactly LOSS_TERMS
  stages                list of dicts with exactly STAGE_FIELDS
"""

import ml_collections

VARIABLES = ("pose", "betas", "orient", "transl", "log_focal")
LOSS_TERMS = ("keypoints", "parts", "silhouette", "pose_prior", "pose_anchor", "keypoints_anchor",
              "shape_prior", "depth", "focal")
STAGE_FIELDS = ("name", "steps", "lr", "free", "keypoints", "loss_weights",
                "optimizer")
OPTIMIZERS = ("adam", "lbfgs")
VISIBILITY = ("zbuffer", "normals", "all")


class FitInputError(ValueError):
  """Bad fitting input or config (message names the field)."""


def default_fit_config() -> ml_collections.ConfigDict:
  """A fitting config (experiments override fields)."""
  c = ml_collections.ConfigDict()
  c.prior = "flow"
  c.restart_yaws_deg = (0.0, 180.0)
  c.select_restart_after = -1
  c.restart_pruning = ()
  c.restart_mean_temperature = 0.0
  c.final_lr_fraction = 0.05  # Cosine decay of each stage's lr.
  c.warmup_fraction = 0.0  # Linear warmup, as a fraction of each (Adam) stage.
  c.keypoint_sigma = 0.3  # In units of the keypoint box size.
  c.part_sigma = 0.3
  c.silhouette_sigma = 0.3
  c.part_vertices_per_part = 24
  c.num_part_pixels = 384
  c.num_mask_pixels = 384
  c.visibility = "zbuffer"
  # "silhouette" (and "parts") add nothing without mask (part) evidence.
  # pose_prior 0.2 (was 0.05, tuned for the jittered prior), re-tuned for the flow prior on the
  # validation subject (CMU 13): PA-MPJPE 58.5 vs 60.8 mm (64 frames), 65.7 vs 66.2 (128); test
  # 83.5 vs 88.9 (WORKSPACE.md, issue 14). The baselines (gmm8, vae) were not re-tuned.
  c.loss_weights = dict(keypoints=1e4, parts=1e3, silhouette=1e3, pose_prior=0.2,
                        pose_anchor=0.0, keypoints_anchor=0.0,
                        shape_prior=0.05, depth=1.0, focal=10.0)
  c.stages = [
      # Known focal length; add "log_focal" to `free` when it is unknown.
      dict(name="camera", steps=60, lr=0.02, free=("orient", "transl"),
           keypoints="torso", loss_weights={}, optimizer="adam"),
      dict(name="body", steps=140, lr=0.05,
           free=("pose", "betas", "orient", "transl"), keypoints="all",
           loss_weights={}, optimizer="adam"),
  ]
  return c


def validate_fit_config(config: ml_collections.ConfigDict) -> None:
  """Raises FitInputError naming the first bad field of a fitting config."""
  def bad(field, expected, value):
    raise FitInputError(f"config {field}: expected {expected}, got {value!r}")

  weights = dict(config.loss_weights)
  if sorted(weights) != sorted(LOSS_TERMS):
    bad("loss_weights", f"exactly the terms {LOSS_TERMS}", sorted(weights))
  for name, w in weights.items():
    if not isinstance(w, (int, float)) or w < 0:
      bad(f"loss_weights.{name}", "a float >= 0", w)
  if not config.restart_yaws_deg:
    bad("restart_yaws_deg", "a non-empty tuple of degrees",
        config.restart_yaws_deg)
  stages = list(config.stages)
  if not stages:
    bad("stages", "a non-empty list of stage dicts", stages)
  if not -len(stages) <= config.select_restart_after < len(stages):
    bad("select_restart_after", f"a stage index in [-{len(stages)}, "
        f"{len(stages)})", config.select_restart_after)
  cuts = list(config.get("restart_pruning", ()))
  if cuts and (any(not isinstance(c, (tuple, list)) or len(c) != 2 or
                   not all(isinstance(v, int) and v >= 1 for v in c) for c in cuts)
               or [c[0] for c in cuts] != sorted({c[0] for c in cuts})
               or [c[1] for c in cuts] != sorted([c[1] for c in cuts], reverse=True)):
    bad("restart_pruning", "((step, keep), ...) of ints >= 1, steps increasing, keeps not "
        "increasing", config.restart_pruning)
  if cuts and dict(stages[config.select_restart_after]).get("optimizer") != "adam":
    bad("restart_pruning", "a select_restart_after stage with optimizer 'adam'",
        config.restart_pruning)
  temperature = config.get("restart_mean_temperature", 0.0)
  if not isinstance(temperature, (int, float)) or not 0.0 <= temperature < float("inf"):
    bad("restart_mean_temperature", "a finite float >= 0 (0: keep the best restart)",
        temperature)
  if not 0.0 <= config.get("warmup_fraction", 0.0) < 1.0:
    bad("warmup_fraction", "a fraction in [0, 1)", config.warmup_fraction)
  if not 0.0 <= config.final_lr_fraction <= 1.0:
    bad("final_lr_fraction", "a fraction in [0, 1]", config.final_lr_fraction)
  if config.visibility not in VISIBILITY:
    bad("visibility", f"one of {VISIBILITY}", config.visibility)
  for i, stage in enumerate(stages):
    stage = dict(stage)
    where = f"stages[{i}]"
    if sorted(stage) != sorted(STAGE_FIELDS):
      bad(where, f"the fields {STAGE_FIELDS}", sorted(stage))
    if not isinstance(stage["steps"], int) or stage["steps"] < 1:
      bad(f"{where}.steps", "an int >= 1", stage["steps"])
    if not isinstance(stage["lr"], (int, float)) or not stage["lr"] > 0:
      bad(f"{where}.lr", "a float > 0", stage["lr"])
    free = tuple(stage["free"])
    if not free or not set(free) <= set(VARIABLES):
      bad(f"{where}.free", f"a non-empty subset of {VARIABLES}", free)
    if stage["optimizer"] not in OPTIMIZERS:
      bad(f"{where}.optimizer", f"one of {OPTIMIZERS}", stage["optimizer"])
    if stage["keypoints"] not in ("all", "torso"):
      bad(f"{where}.keypoints", "'all' or 'torso'", stage["keypoints"])
    unknown = set(dict(stage["loss_weights"])) - set(LOSS_TERMS)
    if unknown:
      bad(f"{where}.loss_weights", f"keys among {LOSS_TERMS}", sorted(unknown))


