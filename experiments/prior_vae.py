"""VAE pose prior (VPoser-style) on the flow prior's data and chart: the NLL/fitting baseline.

Usage:
  python -m launch.main --config=experiments/prior_vae.py --workdir=W/vae
  python -m launch.main --config=experiments/prior_vae.py:runlocal --workdir=W/vae

Train it into `vae/` inside a trained flow prior's workdir W: `launch.evaluate_prior
--workdir=W` then adds the rows `vae` (importance-sampled NLL, K = 1000) and `vae_elbo` to the NLL
table, and `benchmarks.fit_mocap2d --prior_workdir=W` finds it as the prior `vae`
(`flowpose.prior.registry`). Same data, subjects, mirroring and chart as
`experiments/prior_cmu.py` (derived from it). Modes: runlocal (short), synthetic (as prior_cmu).
"""

import ml_collections

from experiments import prior_cmu
from flowpose.prior import vae


def get_config(arg=None) -> ml_collections.ConfigDict:
  """The experiment config; `arg` = comma-separated modes of prior_cmu (runlocal, synthetic)."""
  base = prior_cmu.get_config(arg)
  config = ml_collections.ConfigDict()
  config.task = "vae"  # flowpose/tasks/vae.py
  config.seed = base.seed
  config.vae = vae.default_vae_config()
  config.vae.chart = base.flow.chart  # NLLs comparable with the flow's (same coordinates).
  config.data = base.data             # Same folders, splits, mirroring.
  config.input_noise = base.input_noise
  # KL weight 0 -> 1 over the first quarter of training (VPoser-style warm-up).
  config.kl_anneal_steps = 750
  config.batch_size = base.batch_size
  config.eval_batch_size = base.eval_batch_size
  config.num_train_steps = 3000
  config.init_examples = base.init_examples
  config.optimizer = base.optimizer
  config.loss_weights = ml_collections.ConfigDict({
      "rec": 1.0,  # Mean -log p(x | z), nats per pose.
      "kl": 1.0,   # Mean KL(q(z | x) || N(0, I)) x the annealed weight, nats per pose.
  })
  config.log_every = 200
  config.eval_every = 750
  config.checkpoint_every = 750
  config.keep_checkpoints = 2
  if "runlocal" in (arg or ""):
    config.vae.hidden_sizes = (64, 64)
    config.vae.latent_dim = 8
    config.num_train_steps = 300
    config.kl_anneal_steps = 100
    config.log_every = 50
    config.eval_every = 100
    config.checkpoint_every = 100
  return config
