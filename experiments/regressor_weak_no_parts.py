"""Regime `weak_no_parts` of the reconstruction network: weak without the part-alignment term.

  python -m launch.main --config=experiments/regressor_weak_no_parts.py[:runlocal] --workdir=DIR
(see experiments/regressor_base.py)
"""

from experiments import regressor_base


def get_config(arg=None):
  return regressor_base.regime_config("weak_no_parts", arg)
