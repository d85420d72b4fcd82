r"""Where one training step of the reconstruction network spends its time (issue 12).

  python -m benchmarks.regressor_step --config=experiments/regressor_fully.py \
      [--config.batch_size=64] [--repeats=10] [--out=F.json]

Times, after compilation, median of `--repeats` calls, each piece jitted on its own on a real
training batch of `config` (the `cmu_evidence` pipeline): the evidence maps, the encoder + head
forward / forward+backward, the prior's bijector (latent -> DOFs) forward+backward, the reduced
body (keypoints, joints, part vertices) forward+backward, the keypoint and part terms
forward+backward, the 3D terms, the whole loss forward+backward (what the trainer's step runs,
without the optimizer update), and the data pipeline (batches/s of `input_pipeline`). The
pieces overlap (each backward includes its forward) and run eagerly apart, so they do not sum
exactly to the whole step.
"""

import json
import statistics
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from flowpose import io_utils

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/regressor_fully.py",
                                          "A regressor experiment config.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls per piece (median).")
_OUT = flags.DEFINE_string("out", None, "Optional output JSON.")


def _time(fn, *args, repeats: int) -> float:
  """Median seconds of `fn(*args)` after one compiling call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _grad_of_sum(fn):
  """`x -> grad of sum(fn(x))` over every float leaf of its output (a backward pass)."""
  def total(*args):
    out = fn(*args)
    return sum(jnp.sum(x) for x in jax.tree.leaves(out) if jnp.issubdtype(x.dtype, jnp.floating))
  return jax.jit(jax.grad(total, argnums=tuple(range(1))))


def profile(config, repeats: int = 10) -> dict:
  """`{piece: milliseconds}` (module docstring)."""
  from flowpose import losses  # pylint: disable=g-import-not-at-top
  from flowpose.models import regressor_body  # pylint: disable=g-import-not-at-top
  from flowpose.tasks import regressor as task  # pylint: disable=g-import-not-at-top
  task.validate_config(config)
  ctx = task.context(config)
  pipeline = task.input_pipeline(config, "train", 0, 1)
  iterator = pipeline.as_numpy_iterator()
  batch = next(iterator)
  start = time.perf_counter()
  for _ in range(repeats):
    next(iterator)
  data_s = (time.perf_counter() - start) / repeats
  batch = jax.tree.map(jnp.asarray, batch)
  params = task.init(config, jax.random.key(0), batch)
  result = {"batch_size": int(config.batch_size), "data_pipeline": data_s}

  maps_fn = jax.jit(lambda b: regressor_body.input_maps(ctx, b))
  maps = maps_fn(batch)
  result["evidence_maps"] = _time(maps_fn, batch, repeats=repeats)
  net = lambda p, m: ctx.net.apply({"params": p["net"]}, m, ctx.theta_init)[-1]
  result["network_fwd"] = _time(jax.jit(net), params, maps, repeats=repeats)
  result["network_fwd_bwd"] = _time(jax.jit(jax.grad(lambda p, m: jnp.sum(net(p, m)))),
                                    params, maps, repeats=repeats)
  theta = net(params, maps)
  focal = batch["focal"]
  decode = lambda t: regressor_body.decode(ctx, t, focal)
  result["decode_fwd_bwd (flow bijector)"] = _time(
      _grad_of_sum(lambda t: decode(t)["dofs"]), theta, repeats=repeats)
  out = decode(theta)
  body_args = (out["dofs"], out["root_rotmat"], out["betas"], out["transl"])
  posed = lambda d, r, b, t: regressor_body.posed(ctx, d, r, b, t)
  result["body_fwd"] = _time(jax.jit(posed), *body_args, repeats=repeats)
  result["body_fwd_bwd"] = _time(
      jax.jit(jax.grad(lambda *a: sum(jnp.sum(v) for k, v in posed(*a).items()
                                      if k != "visibility"), argnums=(0, 1, 2, 3))),
      *body_args, repeats=repeats)
  pred = task.predict_batch(params, batch, config)

  def kp_term(kp2d):
    kp, conf = batch["keypoints"], batch["confidence"]
    scale = jax.vmap(losses.person_scale_from_keypoints)(kp, conf)
    return jnp.mean(jax.vmap(lambda a, b, c, s: losses.keypoint_reprojection_loss(
        a, b, c, sigma=config.model.keypoint_sigma, scale=s))(kp2d, kp, conf, scale))
  result["keypoint_term_fwd_bwd"] = _time(jax.jit(jax.grad(kp_term)), pred["keypoints2d"],
                                          repeats=repeats)

  def part_term(v2d):
    kp, conf = batch["keypoints"], batch["confidence"]
    scale = jax.vmap(losses.person_scale_from_keypoints)(kp, conf)
    return jnp.mean(task.part_term(ctx, v2d, pred["visibility"], batch, scale))
  result["part_term_fwd_bwd"] = _time(jax.jit(jax.grad(part_term)), pred["vertices2d"],
                                      repeats=repeats)
  loss = lambda p: task.loss(p, batch, jax.random.key(1), config)[0]
  result["whole_loss_fwd"] = _time(jax.jit(loss), params, repeats=repeats)
  result["whole_loss_fwd_bwd"] = _time(jax.jit(jax.grad(loss)), params, repeats=repeats)
  return {k: (round(v * 1e3, 2) if isinstance(v, float) else v) for k, v in result.items()}


def main(argv):
  del argv
  report = profile(_CONFIG.value, _REPEATS.value)
  for key, value in report.items():
    logging.info("%-34s %s", key, value)
    print(f"{key:34s} {value}" + (" ms" if key != "batch_size" else ""))
  if _OUT.value:
    io_utils.atomic_write(_OUT.value, json.dumps(report, indent=2).encode())
  return 0


if __name__ == "__main__":
  app.run(main)
