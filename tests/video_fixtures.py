"""Small trained-looking artefacts for the dynamics/sequence/video tests (fast, deterministic).

A tiny flow prior (2 couplings, data-initialised on real poses, exported as `launch.main`
exports it), a dynamics model initialised on its latents (exported as the task exports it) and
an untrained tiny reconstruction network on that prior (exported as the regressor task exports
it), so the tests need no training run.
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


def tiny_regressor(workdir: pathlib.Path, prior_dir: str) -> str:
  """An untrained runlocal-sized network on `prior_dir`, exported as `tasks.regressor` does."""
  # pylint: disable=g-import-not-at-top
  from flowpose.models import predictor
  from flowpose.models import regressor_body
  from flowpose.tasks import regressor as task
  # pylint: enable=g-import-not-at-top
  model = task.default_model_config()
  model.prior_workdir = str(prior_dir)
  model.inputs = ("keypoints", "parts", "mask")
  model.widths, model.features, model.head_hidden = (8, 16), 64, (64,)
  model.num_iterations, model.vertices_per_part = 2, 4
  config = ml_collections.ConfigDict({"task": "regressor", "model": model,
                                      "data": {"resolution": 32}})
  context = regressor_body.make_context(model, 32, str(prior_dir))
  batch = {"keypoints": np.zeros((1, 17, 2), np.float32),
           "confidence": np.zeros((1, 17), np.float32),
           "part_map": np.zeros((1, 32, 32), np.uint8), "mask": np.zeros((1, 32, 32), np.uint8)}
  maps = regressor_body.input_maps(context, batch)
  params = {"net": context.net.init(jax.random.key(3), maps, context.theta_init)["params"]}
  # A small random head output, so that frames differ (the untrained head's last layer is 0).
  params = jax.tree.map(lambda x: x + 0.01 * jax.random.normal(jax.random.key(4), x.shape),
                        params)
  workdir.mkdir(parents=True)
  predictor.export(str(workdir), params, config)
  prior_io.write_config(str(workdir), config)
  return str(workdir)


def another_prior(workdir: pathlib.Path, prior_dir: str) -> str:
  """A copy of `prior_dir` with one params byte changed (checksum file to match): a prior with
  other params, as a network or dynamics model trained elsewhere would have."""
  import hashlib  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(prior_dir, workdir)
  data = bytearray((workdir / prior_io.PARAMS_FILE).read_bytes())
  data[-1] ^= 1
  (workdir / prior_io.PARAMS_FILE).write_bytes(bytes(data))
  (workdir / prior_io.CHECKSUM_FILE).write_text(
      f"{hashlib.sha256(bytes(data)).hexdigest()}  {prior_io.PARAMS_FILE}\n")
  return str(workdir)
