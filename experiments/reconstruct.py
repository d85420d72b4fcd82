"""Config for `launch/reconstruct.py`: photo in, 3D people out (detector or COCO annotations).

  python -m launch.reconstruct --image=photo.jpg --prior_workdir=P --out_dir=D \
      [--annotations=COCO.json] [--regressor_workdir=W] [--config=experiments/reconstruct.py]
  --config=experiments/reconstruct.py:runlocal   # few steps (tests, smoke runs)

Derives from `experiments/fit_coco.py` (unknown focal, four yaw restarts, camera then body stage)
and adds the detector front end and the silhouette term: `fit.loss_weights.silhouette` weighs
`losses.silhouette_loss` against the person mask (`fit.num_mask_pixels` pixels sampled from it,
seed `mask_seed` + person index); it adds nothing for a person without a mask.
"""

import ml_collections

from experiments import fit_coco


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """`arg`: "" or "runlocal" (as fit_coco)."""
  config = fit_coco.get_config(arg)
  config.max_people = 5  # Detector: at most this many people, best first.
  config.max_side = 2048  # Longer photos are downscaled to this before detection and fitting.
  # Detector keypoints below this visibility are dropped; the rest weigh by their confidence.
  config.min_keypoint_confidence = 0.2
  config.mask_seed = 0
  config.fit.num_mask_pixels = 384
  config.fit.loss_weights["silhouette"] = 1e3
  return config
