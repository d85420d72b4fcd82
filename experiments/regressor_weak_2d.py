"""Regime `weak_2d` of the reconstruction network: no 3D labels: keypoints + parts + priors.

  python -m launch.main --config=experiments/regressor_weak_2d.py[:runlocal] --workdir=DIR
(see experiments/regressor_base.py; `weak` self-trains from it)
"""

from experiments import regressor_base


def get_config(arg=None):
  return regressor_base.regime_config("weak_2d", arg)
