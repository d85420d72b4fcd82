r"""Where a sequence-fit step's time goes: its pieces timed alone, and XLA's flop counts.

  python -m benchmarks.sequence_profile --prior_workdir=P --dynamics_workdir=W2 \
      --mocap_dir=FOLDER [--split=validation] [--num_windows=16] --out=F.json

The scene is `benchmarks.fit_video`'s (W windows of 32 frames). Each piece runs as a jitted
`fori_loop` of `--steps` gradient steps (the sequence stage's shape: `fitting/xla_options.jit`,
the YNNPACK fusions off), timed after compilation (best of 3), by subtraction where a piece
cannot run alone:

  full           the sequence loss's gradient (`fitting.sequence_loss.window_loss`, defaults)
  no_dynamics    the same without the motion model (forward and backward terms skipped)
  flow_decode    the flow's decode of every frame's latent, alone
  dynamics_x2    the motion model's log-density forward and on the reversed window, alone
  body           the body's keypoints and joints from given DOFs (`reduced_body.pose_points`)

Reported: ms per step and GFLOP per step (XLA's cost analysis, load independent), the 1-min
load before and after (timings swing with the load: compare pieces of one run only).
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import fit_mocap2d
from benchmarks import fit_video
from flowpose import geometry
from flowpose import io_utils
from flowpose.fitting import reduced_body
from flowpose.fitting import sequence
from flowpose.fitting import sequence_loss
from flowpose.fitting import xla_options


def pieces(setup) -> tuple:
  """(name -> loss function of the variables, variables) of the scene's windows."""
  body, prior, gt = setup["body"], setup["prior"], setup["gt"]
  dyn, dyn_params = setup["dynamics"]
  space = prior.space
  num, frames = gt["occluded"].shape
  rng = np.random.default_rng(0)
  variables = {
      "pose": jnp.asarray(0.5 * rng.standard_normal((num, frames, space.dim)), jnp.float32),
      "betas": jnp.zeros((num, body.j_shapedirs.shape[-1])),
      "orient": jnp.tile(jnp.asarray([1.0, 0, 0, 0, -1, 0]), (num, frames, 1)),
      "transl": jnp.tile(jnp.asarray([0.0, 0, 4]), (num, frames, 1))}
  valid = ~gt["occluded"]
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  aux = {"keypoints": f32(np.nan_to_num(gt["keypoints"])), "confidence": f32(gt["confidence"]),
         "focal": f32(gt["focal"]), "principal_point": f32(gt["centre"]),
         "keypoint_mask": jnp.ones(gt["confidence"].shape[::2]), "frame_valid": f32(valid),
         "prior_frames": f32(valid), "open_gap": f32(sequence.open_gap_frames(valid)),
         **dict(zip(("chord_index", "chord_weight"), sequence.sequence_loss.chord_ends(valid))),
         "depth_init": jnp.full((num, frames), 4.0)}
  weights = {k: jnp.float32(w) for k, w in sequence.default_sequence_config().loss_weights.items()}
  decode = jax.vmap(jax.vmap(space.decode, (None, 0)), (None, 0))

  def full(skip):
    return lambda v: jnp.sum(jax.vmap(lambda w, a: sequence_loss.window_loss(
        w, a, weights, body, space, prior.params, dyn, dyn_params, 0.3, None, skip)[0])(v, aux))

  dofs = decode(prior.params, variables["pose"])  # Decoded once: the body path alone.

  def body_points(v):
    points = jax.vmap(jax.vmap(reduced_body.pose_points, (None, 0, 0, None, 0, None)),
                      (None, 0, 0, 0, 0, None))(body, dofs, geometry.rot6d_to_matrix(v["orient"]),
                                                v["betas"], v["transl"], False)
    return jnp.sum(jnp.square(points.keypoints)) + jnp.sum(jnp.square(points.joints))

  motion = lambda z: dyn.log_prob(dyn_params, z).sum() + dyn.log_prob(dyn_params, z[::-1]).sum()
  return {"full": full(()), "no_dynamics": full(("dynamics", "dynamics_backward")),
          "flow_decode": lambda v: jnp.sum(jnp.square(decode(prior.params, v["pose"]))),
          "dynamics_x2": lambda v: jnp.sum(jax.vmap(motion)(v["pose"])),
          "body": body_points}, variables


def measure(loss, variables, steps: int) -> dict:
  """ms per gradient step (best of 3 after compile) and XLA's GFLOP per step."""
  grad = jax.grad(loss)

  def run(v):
    return jax.lax.fori_loop(0, steps, lambda _, v: jax.tree.map(
        lambda a, g: a - 1e-4 * g, v, grad(v)), v)
  jitted = xla_options.jit(run)
  jax.block_until_ready(jitted(variables))
  best = np.inf
  for _ in range(3):
    start = time.time()
    jax.block_until_ready(jitted(variables))
    best = min(best, time.time() - start)
  cost = jax.jit(grad).lower(variables).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return {"ms_per_step": 1000 * best / steps, "gflop_per_step": float(cost["flops"]) / 1e9}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  try:
    out = io_utils.require_output_path(f.out, "--out", is_dir=False)
    setup = fit_video.prepare(prior_workdir=f.prior_workdir, dynamics_workdir=f.dynamics_workdir,
                              mocap_dir=f.mocap_dir, num_windows=f.num_windows, split=f.split)
  except (fit_mocap2d.BenchmarkInputError, io_utils.OutputPathError) as e:
    print(f"sequence_profile: {e}", file=sys.stderr)
    return 2
  losses, variables = pieces(setup)
  report = {"num_windows": int(setup["gt"]["occluded"].shape[0]),
            "frames": int(setup["gt"]["occluded"].size), "steps": f.steps,
            "load_1min": [os.getloadavg()[0]], "pieces": {}}
  for name, loss in losses.items():
    report["pieces"][name] = measure(loss, variables, f.steps)
    print(f"{name:12s} {report['pieces'][name]}", flush=True)
  report["load_1min"].append(os.getloadavg()[0])
  io_utils.atomic_write(out, json.dumps(report, indent=1).encode())
  return 0


if __name__ == "__main__":
  fit_video.define_source_flags("validation", 16)
  flags.adopt_module_key_flags(fit_video)  # --help lists them as this CLI's own.
  flags.DEFINE_integer("steps", 30, "Gradient steps per timed call.")
  flags.DEFINE_string("out", None, "Output JSON.", required=True)
  app.run(main)
