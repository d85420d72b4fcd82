"""Config for fitting the body to one COCO photograph (`launch/fit_coco.py`).

  python -m launch.fit_coco --config=experiments/fit_coco.py \
      --image=../shared/data/coco/000000000785.jpg \
      --annotations=../shared/data/coco/person_keypoints_785.json \
      --prior_workdir=DIR --out_dir=/tmp/coco785
  --config=experiments/fit_coco.py:runlocal   # few steps (tests, smoke runs)

Unknown camera: principal point at the image centre, focal length
initialised to `focal_init_factor * max(H, W)` (1.2 x the larger side ~ a 45
degree field of view across it, a typical photo lens) and freed in the body
stage with the `focal` prior term (log-focal pull to the init) and the `depth`
term (log-depth pull to the similar-triangles init) resolving the
focal/depth ambiguity. `config.fit.loss_weights` is the one weights dict.
"""

import ml_collections

from flowpose.fitting import config as fit_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """`arg`: "" or "runlocal"."""
  modes = set(filter(None, (arg or "").split(",")))
  if modes - {"runlocal"}:
    raise ValueError(f"fit_coco config: unknown modes {sorted(modes - {'runlocal'})}")
  config = ml_collections.ConfigDict()
  config.focal_init_factor = 1.2
  config.annotation_id = None  # None: the person with most labelled keypoints.
  config.overlay_alpha = 0.6
  config.side_view_size = 512
  fit = fit_config.default_fit_config()
  fit.prior = "flow"  # A `flowpose.prior.registry` name: none | gaussian | gaussian_diag | gmm8 | flow
  # Front/back and both profiles: one photo, restarts are cheap.
  fit.restart_yaws_deg = (0.0, 90.0, 180.0, 270.0)
  fit.stages = [
      dict(name="camera", steps=100, lr=0.02, free=("orient", "transl"),
           keypoints="torso", loss_weights={}, optimizer="adam"),
      dict(name="body", steps=300, lr=0.03,
           free=("pose", "betas", "orient", "transl", "log_focal"),
           keypoints="all", loss_weights={}, optimizer="adam"),
  ]
  config.fit = fit
  if "runlocal" in modes:
    config.fit.restart_yaws_deg = (0.0, 180.0)
    config.fit.stages[0]["steps"] = 10
    config.fit.stages[1]["steps"] = 10
  return config
