"""Regime `weak_no_flow` of the reconstruction network: weak with the pose regressed as DOFs, the flow only a penalty.

  python -m launch.main --config=experiments/regressor_weak_no_flow.py[:runlocal] --workdir=DIR
(see experiments/regressor_base.py)
"""

from experiments import regressor_base


def get_config(arg=None):
  return regressor_base.regime_config("weak_no_flow", arg)
