"""Regime `self` of the reconstruction network: no labels of any kind, only what BlazePose sees.

  python -m launch.main --config=experiments/regressor_self.py[:runlocal] --workdir=DIR
(see experiments/regressor_base.py; the data: the `self_` configs of `cmu_evidence`)
"""

from experiments import regressor_base


def get_config(arg=None):
  return regressor_base.regime_config("self", arg)
