"""Regime `weak` of the reconstruction network: no 3D labels: keypoints + part alignment + priors.

  python -m launch.main --config=experiments/regressor_weak.py[:runlocal] --workdir=DIR
(see experiments/regressor_base.py)
"""

from experiments import regressor_base


def get_config(arg=None):
  return regressor_base.regime_config("weak", arg)
