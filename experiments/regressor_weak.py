"""Regime `weak` of the reconstruction network: no 3D labels; `weak_2d` + self-training rounds.

  bash launch/train_regressors.sh DIR     # weak_2d, then its pseudo-labels, then the rounds
  python -m launch.main --config=experiments/regressor_weak.py --workdir=DIR/weak \
      --config.data.pseudo_labels=DIR/weak_2d/pseudo_labels.npz --config.model.init_from=DIR/weak_2d
(one round by hand; see experiments/regressor_base.py and launch/pseudo_labels.py)
"""

from experiments import regressor_base


def get_config(arg=None):
  return regressor_base.regime_config("weak", arg)
