r"""Latent dynamics model: per-frame NLL on any folder of clips against two baselines + rollouts.

  python -m launch.evaluate_dynamics --prior_workdir=P --dynamics_workdir=W2 \
      --mocap_dir=FOLDER --out_dir=D [--window=32] [--rollout_s=3]

NLL (nats per frame of the prior's pose chart, frames 2..T-1 of every window of `--window`
frames, stride `--window` / 2, of every ASF/AMC clip under FOLDER as given), in one run:
  dynamics        -log p(x_t | x_{t-1}, x_{t-2}) of the model (latent nats + the flow's Jacobian)
  static          -log p(x_t): the pose prior alone per frame
  const_velocity  x_t = x_{t-1} + (x_{t-1} - x_{t-2}) + e in the prior's chart (the DOFs the
                  prior models: the same unit as the other rows), e ~ full-covariance Gaussian
                  fitted on the wrapped residuals of the dynamics model's own training windows.
                  (In the 50-DOF chart the 4 clavicle DOFs CMU never moves have zero residual,
                  and their 1e-8 variance handed the baseline ~33 spurious nats per frame.)
Rollouts: from the first two frames of `--num_rollouts` windows the model samples
`--rollout_s` seconds (temperature 1, each step's Gaussian times the static prior N(0, I):
`Dynamics.rollout(prior_product=True)`); plausibility is judged by the pose prior's NLL along the
rollout against the distribution of real frames' NLL (fraction of rollout frames below the real
frames' 99th percentile, per second), and its latent speed against real motion's (a frozen
rollout would pass the NLL test). `D/rollout.png` shows one rollout every 10 frames.
Outputs: `D/dynamics_nll.json` and `D/rollout.png`, one atomic folder swap.
"""

import json
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("prior_workdir", None, "Trained prior workdir.", required=True)
  flags.DEFINE_string("dynamics_workdir", None, "Trained dynamics workdir.", required=True)
  flags.DEFINE_string("mocap_dir", None, "Folder of ASF/AMC clips (all used).", required=True)
  flags.DEFINE_string("out_dir", None, "Output folder (replaced atomically).", required=True)
  flags.DEFINE_integer("window", 32, "Frames per window (>= 3).")
  flags.DEFINE_float("rollout_s", 3.0, "Rollout length (seconds at 30 fps).")
  flags.DEFINE_integer("num_rollouts", 16, "Rollouts (from the first windows' starts).")
  flags.DEFINE_integer("seed", 0, "Rollout seed.")


def _wrap(x):
  return np.arctan2(np.sin(x), np.cos(x))


def const_velocity_fit(train_windows: np.ndarray):
  """(mean [D], covariance [D, D]) of the wrapped constant-velocity residuals of `[N, T, D]`."""
  r = _wrap(train_windows[:, 2:] - 2 * train_windows[:, 1:-1] + train_windows[:, :-2])
  r = r.reshape(-1, r.shape[-1]).astype(np.float64)
  cov = np.cov(r, rowvar=False) + 1e-8 * np.eye(r.shape[-1])
  return r.mean(0), cov


def const_velocity_nll(windows: np.ndarray, mean, cov) -> np.ndarray:
  """[N, T-2] NLL (nats) of the wrapped residuals under the fitted Gaussian."""
  r = _wrap(windows[:, 2:] - 2 * windows[:, 1:-1] + windows[:, :-2]).astype(np.float64) - mean
  chol = np.linalg.cholesky(cov)
  solved = np.linalg.solve(chol, r.reshape(-1, r.shape[-1]).T).T.reshape(r.shape)
  logdet = 2 * np.sum(np.log(np.diag(chol)))
  return 0.5 * (np.sum(solved ** 2, -1) + logdet + r.shape[-1] * np.log(2 * np.pi))


def training_windows(config, limit: int = 4096) -> np.ndarray:
  """Up to `limit` training windows `[N, T, 50]` of the dynamics run's own data."""
  from flowpose.data import poses  # pylint: disable=g-import-not-at-top
  ds, _ = poses.examples(config.data, config.data.train_split, 50)
  return np.concatenate([np.asarray(b) for b in ds.batch(1024).take(-(-limit // 1024))])[:limit]


def evaluate(prior_workdir, dynamics_workdir, mocap_dir, out_dir, window=32, rollout_s=3.0,
             num_rollouts=16, seed=0) -> dict:
  """Runs the evaluation (module docstring); returns the report."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flowpose import io_utils  # pylint: disable=g-import-not-at-top
  from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
  from flowpose.data import mocap_windows  # pylint: disable=g-import-not-at-top
  from flowpose.evidence import video_io  # pylint: disable=g-import-not-at-top
  from flowpose.models import dynamics as dynamics_lib  # pylint: disable=g-import-not-at-top
  from flowpose.models import dynamics_io  # pylint: disable=g-import-not-at-top
  from flowpose.prior import charts  # pylint: disable=g-import-not-at-top
  from flowpose.prior import io as prior_io  # pylint: disable=g-import-not-at-top
  from flowpose.viz import images as viz  # pylint: disable=g-import-not-at-top
  from flowpose.viz import render_clip  # pylint: disable=g-import-not-at-top
  out_path = io_utils.require_output_path(out_dir, "--out_dir")
  model, params, config = dynamics_io.load_dynamics(dynamics_workdir, prior_workdir)
  prior, prior_params, _ = prior_io.load_trained_prior(prior_workdir)
  data = mocap_windows.folder_windows(mocap_dir, window, max(1, window // 2))
  chart = lambda d: charts.from_dofs(prior.chart, jnp.asarray(d, jnp.float32))

  @jax.jit
  def nll(windows):
    x = chart(windows)
    z = prior.pose_to_latent(prior_params, x)
    static = prior.log_prob(prior_params, x)
    latent = model.log_prob(params, z)
    return -dynamics_lib.pose_log_prob(latent, static, z), -static

  dyn, static = (np.concatenate(x) for x in zip(*[
      jax.device_get(nll(data.dofs[i:i + 256])) for i in range(0, len(data.dofs), 256)]))
  in_chart = lambda d: np.asarray(charts.from_dofs(prior.chart, np.asarray(d, np.float32)))
  mean, cov = const_velocity_fit(in_chart(training_windows(config)))
  const = const_velocity_nll(in_chart(data.dofs), mean, cov)
  report = {"mocap_dir": str(mocap_dir), "prior_workdir": prior_workdir,
            "dynamics_workdir": dynamics_workdir, "window": window,
            "num_windows": len(data.clips), "clips": sorted(set(data.clips)),
            "nll_per_frame": {"dynamics": float(dyn.mean()),
                              "static": float(static[:, 2:].mean()),
                              "const_velocity": float(const.mean())},
            "per_clip": {}}
  for name in sorted(set(data.clips)):
    rows = np.asarray([c == name for c in data.clips])
    report["per_clip"][name] = {"dynamics": float(dyn[rows].mean()),
                                "static": float(static[rows, 2:].mean()),
                                "const_velocity": float(const[rows].mean())}

  # Rollouts from real starts, judged by the pose prior's NLL along them.
  steps = int(round(rollout_s * data.fps))
  starts = data.dofs[:num_rollouts, :2]
  z0 = prior.pose_to_latent(prior_params, chart(starts))
  rolled = model.rollout(params, jax.random.key(seed), z0[:, 0], z0[:, 1], steps)
  poses = prior.latent_to_pose(prior_params, rolled)
  roll_nll = -np.asarray(prior.log_prob(prior_params, poses))  # [R, steps]
  # A rollout that stops moving would pass the NLL test: compare its latent speed with real.
  real_z = np.asarray(prior.pose_to_latent(prior_params, chart(data.dofs)))
  speed = lambda x: float(np.median(np.linalg.norm(np.diff(x, axis=-2), axis=-1)))
  threshold = float(np.percentile(static, 99))
  per_second = [float(np.mean(roll_nll[:, s:s + int(data.fps)] <= threshold))
                for s in range(0, steps, int(data.fps))]
  report["rollout"] = {
      "num": int(len(starts)), "frames": steps, "seconds": rollout_s,
      "real_static_nll_median": float(np.median(static)), "real_static_nll_p99": threshold,
      "rollout_static_nll_median_per_second": [
          float(np.median(roll_nll[:, s:s + int(data.fps)])) for s in range(0, steps,
                                                                           int(data.fps))],
      "fraction_below_real_p99_per_second": per_second,
      "latent_speed_median": {"real": speed(real_z), "rollout": speed(np.asarray(rolled))},
      "sampling": "temperature 1, each step x N(0, I) (Dynamics.rollout prior_product)"}
  dofs = np.asarray(charts.to_dofs(prior.chart, poses[0])) if prior.chart != "euler_dofs" \
      else np.asarray(poses[0])
  shown = np.arange(0, steps, 10)
  rendered = render_clip.render_mocap_clip(
      assets.load_cc0_model(), dofs[shown], np.repeat(data.root_orient[:1, 1], len(shown), 0),
      np.repeat(data.root_transl[:1, 1], len(shown), 0), size=(192, 128), distance=3.0)
  text = json.dumps(report, indent=2)
  with io_utils.atomic_dir(out_path) as staging:
    io_utils.atomic_write(f"{staging}/dynamics_nll.json", text.encode())
    viz.save_png(f"{staging}/rollout.png", video_io.png_strip(rendered.frames, len(shown), 192))
  print(text)
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from flowpose import io_utils  # pylint: disable=g-import-not-at-top
  from flowpose.models import dynamics_io  # pylint: disable=g-import-not-at-top
  from flowpose.prior import io as prior_io  # pylint: disable=g-import-not-at-top
  if FLAGS.window < 3:
    print(f"evaluate_dynamics: --window must be >= 3, got {FLAGS.window}", file=sys.stderr)
    return 1
  try:
    evaluate(FLAGS.prior_workdir, FLAGS.dynamics_workdir, FLAGS.mocap_dir, FLAGS.out_dir,
             FLAGS.window, FLAGS.rollout_s, FLAGS.num_rollouts, FLAGS.seed)
  except (dynamics_io.DynamicsLoadError, prior_io.PriorLoadError, io_utils.OutputPathError,
          ValueError) as e:
    logging.error("%s", e)
    print(f"evaluate_dynamics: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main)
