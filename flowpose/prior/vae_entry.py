"""The registry entry `vae` (`flowpose.prior.registry`): a trained VAE prior
(`flowpose.prior.vae`, `tasks/vae.py`) as a `PosePrior` fitted in its latent.

The VAE of a prior workdir W is W itself when it holds `vae_params.msgpack`, else `W/vae`
(`experiments/prior_vae.py` trains there), so one `--prior_workdir` serves every prior.
"""

import os
from typing import Any, Optional

from absl import logging
import jax
import jax.numpy as jnp

from flowpose.prior import charts
from flowpose.prior import io as prior_io
from flowpose.prior import vae as vae_lib
from flowpose.prior.spaces import EvalContext, PosePrior, PoseSpace, PriorRegistryError
from flowpose.prior.spaces import in_dofs, latent_norm


def vae_workdir(workdir: Optional[str]) -> Optional[str]:
  """The VAE of a prior workdir: `workdir` itself if it holds `vae_params.msgpack`, else its
  `vae/` subfolder (`experiments/prior_vae.py`: train into `W/vae`), else None."""
  for path in (workdir, os.path.join(workdir, "vae") if workdir else None):
    if path and os.path.isfile(os.path.join(path, prior_io.VAE_PARAMS_FILE)):
      return path
  return None


def make_vae(*, vae: Any, vae_params: Any) -> PosePrior:
  """A trained `flowpose.prior.vae.VaePrior`: var = latent z [L] (starts at 0), decoded by the
  decoder mean, penalty ||z||^2; density = importance-sampled log p (K = 1000, fixed key)."""
  if vae is None or vae_params is None:
    raise PriorRegistryError("prior 'vae': needs vae and vae_params")
  key = jax.random.PRNGKey(0)
  space = PoseSpace("vae", vae.latent_dim, in_dofs(vae.chart, vae.decode), latent_norm,
                    lambda params, dofs: vae.log_prob(params, key, charts.from_dofs(vae.chart,
                                                                                  dofs)))

  def log_prob_np(dofs):
    return vae_lib.evaluate_np(vae, vae_params, charts.from_dofs_np(vae.chart, dofs))
  return PosePrior(space, vae_params, jnp.zeros((vae.latent_dim,), jnp.float32), log_prob_np)


def load_vae(workdir: Optional[str]) -> PosePrior:
  found = vae_workdir(workdir)
  if found is None:
    raise PriorRegistryError(f"prior 'vae': no {prior_io.VAE_PARAMS_FILE} in {workdir!r} or its "
                             "vae/ folder; train one with python -m launch.main "
                             f"--config=experiments/prior_vae.py --workdir={workdir}/vae")
  try:
    vae, params, _ = prior_io.load_trained_vae(found)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise PriorRegistryError(f"prior 'vae': cannot load the VAE from {found} ({e})") from e
  return make_vae(vae=vae, vae_params=params)


def eval_kwargs(context: EvalContext) -> Optional[dict]:
  """The VAE beside the evaluated flow, if trained on the same chart (else no row)."""
  found = vae_workdir(context.workdir)
  if found is None:
    return None
  vae, params, _ = prior_io.load_trained_vae(found)
  if vae.chart != context.flow.chart:
    logging.warning("prior 'vae' in %s is on chart %r, the flow on %r: not in the NLL table.",
                    found, vae.chart, context.flow.chart)
    return None
  return {"vae": vae, "vae_params": params}
