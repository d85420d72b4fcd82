r"""Rational-quadratic spline: flowpose's own math vs `distrax.RationalQuadraticSpline`.

    python -m benchmarks.bijectors --out results/bijectors.json [--seconds 2]

The workload is one spline coupling of the default prior (D = 50, alternating mask: 25
transformed dims, K = 8 bins, range [-5, 5]) without its conditioner (whose cost is the same
for both): given conditioner outputs `[B, 25, 3K - 1]` and inputs `[B, 25]`,
  * forward: `(y, log_det)`, jitted;
  * gradient: `d/d(params, x) of sum(y) + sum(log_det)`, jitted (what training pays);
for B = 512 (the train batch) and 4096 (the eval batch), both implementations compiled in the
same process and timed interleaved (`block_until_ready`, warm-up excluded), so load changes on a
shared machine hit both. Also the largest |difference| of values and log-dets between the two on
the benchmark inputs (a third of them outside the range, in the identity tails).
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import pathlib
import platform
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from flowpose import io_utils
from flowpose.bijectors import distrax_adapter
from flowpose.bijectors import spline

_OUT = flags.DEFINE_string("out", None, "JSON output path.")
_SECONDS = flags.DEFINE_float("seconds", 2.0, "Seconds per measurement.")

NUM_TRANSFORMED = 25
NUM_BINS = 8
RANGE = 5.0
BATCHES = (512, 4096)
KW = dict(range_min=-RANGE, range_max=RANGE)


def _flowpose_fwd(params, x):
  return spline.rational_quadratic_forward(x, params, num_bins=NUM_BINS, **KW)


def _distrax_fwd(params, x):
  return distrax_adapter.rational_quadratic_spline(params, **KW).forward_and_log_det(x)


def _grad_of(fwd):
  def loss(params, x):
    y, log_det = fwd(params, x)
    return jnp.sum(y) + jnp.sum(log_det)
  return jax.grad(loss, argnums=(0, 1))


def _timed(fn, args, seconds: float) -> float:
  """Calls per second of the jitted `fn(*args)`, after a warm-up call."""
  jax.block_until_ready(fn(*args))
  count, start = 0, time.perf_counter()
  while count < 3 or time.perf_counter() - start < seconds:
    jax.block_until_ready(fn(*args))
    count += 1
  return count / (time.perf_counter() - start)


def run(seconds: float) -> dict:
  results = {}
  impls = {"flowpose": _flowpose_fwd, "distrax": _distrax_fwd}
  programs = {(name, kind): jax.jit(fn if kind == "forward" else _grad_of(fn))
              for name, fn in impls.items() for kind in ("forward", "gradient")}
  for batch in BATCHES:
    key_p, key_x = jax.random.split(jax.random.key(batch))
    params = 1.5 * jax.random.normal(
        key_p, (batch, NUM_TRANSFORMED, spline.num_spline_params(NUM_BINS)))
    x = 1.5 * RANGE * jax.random.normal(key_x, (batch, NUM_TRANSFORMED)) / 1.6
    rates = {k: [] for k in programs}
    for _ in range(2):  # Interleaved.
      for k, fn in programs.items():
        rates[k].append(_timed(fn, (params, x), seconds / 2))
    y_f, ld_f = programs["flowpose", "forward"](params, x)
    y_d, ld_d = programs["distrax", "forward"](params, x)
    entry = {f"{name}_{kind}_poses_per_s": float(np.mean(r)) * batch
             for (name, kind), r in rates.items()}
    for kind in ("forward", "gradient"):
      entry[f"{kind}_ratio_flowpose_over_distrax"] = (
          entry[f"flowpose_{kind}_poses_per_s"] / entry[f"distrax_{kind}_poses_per_s"])
    entry["max_abs_diff_y"] = float(jnp.max(jnp.abs(y_f - y_d)))
    entry["max_abs_diff_log_det"] = float(jnp.max(jnp.abs(ld_f - ld_d)))
    entry["fraction_in_tails"] = float(jnp.mean(jnp.abs(x) > RANGE))
    results[f"batch_{batch}"] = entry
  results["setup"] = {
      "transformed_dims": NUM_TRANSFORMED, "num_bins": NUM_BINS, "range": RANGE,
      "seconds_per_measurement": seconds, "jax": jax.__version__,
      "distrax": distrax_adapter.distrax.__version__, "backend": jax.default_backend(),
      "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine()}
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _OUT.value is not None:
    io_utils.require_output_path(_OUT.value, "--out", is_dir=False)
  results = run(_SECONDS.value)
  text = json.dumps(results, indent=2)
  print(text)
  if _OUT.value is not None:
    io_utils.atomic_write(pathlib.Path(_OUT.value), (text + "\n").encode())


if __name__ == "__main__":
  app.run(main)
