"""Regime `semi` of the reconstruction network: 5% of the examples have 3D labels.

  python -m launch.main --config=experiments/regressor_semi.py[:runlocal] --workdir=DIR
(see experiments/regressor_base.py)
"""

from experiments import regressor_base


def get_config(arg=None):
  return regressor_base.regime_config("semi", arg)
