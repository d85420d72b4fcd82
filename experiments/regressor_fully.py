"""Regime `fully` of the reconstruction network: every example has 3D labels.

  python -m launch.main --config=experiments/regressor_fully.py[:runlocal] --workdir=DIR
(see experiments/regressor_base.py)
"""

from experiments import regressor_base


def get_config(arg=None):
  return regressor_base.regime_config("fully", arg)
