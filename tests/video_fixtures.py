"""Small trained-looking artefacts for the dynamics/sequence/video tests (fast, deterministic).

A tiny flow prior (2 couplings, data-initialised on real poses, exported as `launch.main`
exports it) and a dynamics model initialised on its latents (exported as the task exports it),
so the tests need no training run.
"""

import pathlib

import jax
import ml_collections
import numpy as np

from experiments import dynamics_cmu
from experiments import prior_cmu
from flowpose.data import mocap_windows
from flowpose.models import dynamics as dynamics_lib
from flowpose.models import dynamics_io
from flowpose.prior import charts
from flowpose.prior import flow as flow_lib
from flowpose.prior import io as prior_io

CLIP = "35_01"  # CMU subject 35 walking (shared cmu_more; not in the training subjects).


def clip_folder(shared_data: pathlib.Path, tmp: pathlib.Path) -> pathlib.Path:
  """A folder holding only the test clip (links), so readers stay fast."""
  folder = tmp / "clips"
  if not folder.exists():
    folder.mkdir(parents=True)
    source = shared_data / "cmu_more" / "asfamc"
    for name in (f"{CLIP}.amc.gz", f"{CLIP.split('_')[0]}.asf.gz"):
      (folder / name).symlink_to(source / name)
  return folder


def windows(shared_data, tmp, window=16, stride=8) -> mocap_windows.Windows:
  return mocap_windows.folder_windows(clip_folder(shared_data, tmp), window, stride)


def tiny_prior(workdir: pathlib.Path, dofs: np.ndarray) -> str:
  """Exports a data-initialised 2-layer flow prior of the poses `dofs [N, 50]`."""
  config = prior_cmu.get_config("runlocal")
  config.flow.num_layers = 2
  config.flow.hidden_sizes = (16,)
  prior = flow_lib.make_prior(config.flow)
  # The prior lives in its chart (the default euler_free drops the fixed clavicle DOFs).
  x = charts.from_dofs_np(config.flow.chart, dofs.reshape(-1, dofs.shape[-1]))
  params = prior.init(jax.random.key(0), x)
  workdir.mkdir(parents=True, exist_ok=True)
  prior_io.export_prior(str(workdir), params, config)
  return str(workdir)


def tiny_dynamics(workdir: pathlib.Path, prior_workdir: str, window_dofs: np.ndarray) -> str:
  """Exports a dynamics model initialised on the prior's latents of `window_dofs [N, T, 50]`."""
  prior, prior_params, _ = prior_io.load_trained_prior(prior_workdir)
  config = dynamics_cmu.get_config("runlocal")
  config.prior_workdir = prior_workdir
  config.dynamics.hidden_sizes = (16,)
  config.latent_dim = prior.event_dim
  model = dynamics_lib.make_dynamics(config.dynamics, prior.event_dim)
  z = prior.pose_to_latent(prior_params, charts.from_dofs(prior.chart, window_dofs))
  params = {"dynamics": model.init(jax.random.key(1), z)}
  workdir.mkdir(parents=True, exist_ok=True)
  dynamics_io.export_dynamics(str(workdir), params, ml_collections.ConfigDict(config))
  return str(workdir)
