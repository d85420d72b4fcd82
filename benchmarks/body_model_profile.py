"""Where a body forward + backward spends its time: each custom call alone vs the whole step.

    python -m benchmarks.body_model_profile --batch=64 --out=results/body_model_profile_b64.json

The step is `benchmarks/body_model.py`'s: the gradient of `sum(vertices**2)` w.r.t. rotations,
betas and translation of a vmapped CC0 `forward` (CPU kernels). Its pieces, each jitted alone on
the step's own intermediates and timed interleaved with the step (A B C ... A B C, `--rounds` x
`--repeats` calls, medians of wall and process CPU time):
* `fk_forward` / `lbs_forward`: the FK and skinning custom calls (`flowpose_fk`, `flowpose_lbs`);
* `loss_cotangent`: `2 * vertices`, the loss's `[B, V, 3]` cotangent (XLA; smplx pays it too);
* `lbs_backward` / `fk_backward`: the backward custom calls (`flowpose_lbs_bwd`, `flowpose_fk_bwd`);
* `xla_glue` = step - the sum of the above: dispatch, the betas/basis plumbing, thread hand-offs;
* `fk_backward_xla` (not in the step): the XLA FK backward that `flowpose_fk_bwd` replaced.
Writes the JSON and a bar chart beside it (`F.png`). Needs the CPU kernel (`cpu_kernel.build`).
"""

import json
import os
import pathlib

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import body_model as bench
from flowpose import io_utils
from flowpose.body import model_io
from flowpose.body.cpu_kernel import build
from flowpose.body.cpu_kernel import ffi

# --out (the JSON; the chart goes to F.png), --repeats and --rounds are benchmarks.body_model's
# flags (`bench.define_flags()` below); its other flags are ignored here.
_BATCH = flags.DEFINE_integer("batch", 64, "bodies per call", lower_bound=1)
FLAGS = flags.FLAGS

PIECES = ("fk_forward", "lbs_forward", "loss_cotangent", "lbs_backward", "fk_backward")


def piece_fns(model, batch):
  """`{name: zero-argument callable}`: the step and each piece on the step's intermediates."""
  rot, betas = (jnp.asarray(x) for x in bench.random_inputs(model, batch))
  transl = jnp.asarray(np.random.default_rng(2).normal(size=(batch, 3)), jnp.float32)
  parents = np.asarray(model.parents, np.int32)
  arrays = (model.v_template, model.shapedirs, model.skin_indices, model.skin_weights,
            model.keypoint_regressor)
  fk = jax.jit(lambda r, b, t: ffi.fk_call(r, b, t, parents, model.j_regressor,
                                           model.v_template, model.shapedirs))
  lbs = jax.jit(lambda b, t: ffi.lbs_call(b, t, None, None, *arrays))
  cotangent = jax.jit(lambda v: 2.0 * v)
  lbs_bwd = jax.jit(lambda b, t, dv: ffi.lbs_backward_call(b, t, None, dv, None, None, *arrays))
  fk_bwd = jax.jit(lambda *a: ffi.fk_backward_call(*a, parents))
  fk_bwd_xla = jax.jit(jax.vmap(lambda *a: ffi.fk_backward_reference(model.parents, "levels", *a)))
  step = bench.Poser.jitted("auto")[1]
  transforms, joints, joint_rot, basis = fk(rot, betas, transl)
  vertices = lbs(betas, transforms)[0]
  d_vertices = cotangent(vertices)
  cts = (jnp.ones_like(transforms), jnp.ones_like(joints), jnp.ones_like(joint_rot))
  run = lambda f, *a: (lambda: jax.block_until_ready(f(*a)))
  return {"step": run(step, model, rot, betas, transl),
          "fk_forward": run(fk, rot, betas, transl), "lbs_forward": run(lbs, betas, transforms),
          "loss_cotangent": run(cotangent, vertices),
          "lbs_backward": run(lbs_bwd, betas, transforms, d_vertices),
          "fk_backward": run(fk_bwd, rot, betas, basis, *cts),
          "fk_backward_xla": run(fk_bwd_xla, rot, betas, basis, *cts)}


def profile(model, batch, repeats, rounds):
  """`{piece: {"ms", "cpu_ms"}}` incl. `step` and `xla_glue` (step - the pieces)."""
  fns = piece_fns(model, batch)
  times = dict(zip(fns, bench.interleaved(list(fns.values()), repeats, rounds)))
  out = {k: {"ms": 1e3 * t["wall"], "cpu_ms": 1e3 * t["cpu"]} for k, t in times.items()}
  out["xla_glue"] = {k: out["step"][k] - sum(out[p][k] for p in PIECES) for k in ("ms", "cpu_ms")}
  out["loads"] = times["step"]["loads"]
  return out


def save_chart(result, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = ("step",) + PIECES + ("xla_glue", "fk_backward_xla")
  fig, ax = plt.subplots(figsize=(7, 3.6))
  y = np.arange(len(names))
  for offset, key, label in ((-0.2, "ms", "wall"), (0.2, "cpu_ms", "CPU (all threads)")):
    ax.barh(y + offset, [result["pieces"][n][key] for n in names], height=0.4, label=label)
  ax.set_yticks(y, [n.replace("_", " ") for n in names])
  ax.invert_yaxis()
  ax.set_xlabel("ms per call (median)")
  ax.set_title(f"CC0 forward + backward, B = {result['batch']} "
               f"(load {min(result['pieces']['loads']):.1f}-{max(result['pieces']['loads']):.1f})")
  ax.legend(loc="lower right")
  fig.tight_layout()
  with io_utils.atomic_open(path) as f:
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    out = io_utils.require_output_path(FLAGS.out, "--out", is_dir=False)
  except io_utils.OutputPathError as e:
    raise app.UsageError(str(e)) from e
  if jax.default_backend() != "cpu" or not build.available():
    raise app.UsageError(f"needs the CPU kernel on a CPU backend: {build.info()}")
  from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
  model = model_io.load_model(assets.ensure_body_model())
  result = {"batch": _BATCH.value, "repeats": FLAGS.repeats, "rounds": FLAGS.rounds,
            "pieces": profile(model, _BATCH.value, FLAGS.repeats, FLAGS.rounds),
            "lbs_kernel": build.info(), "cpu_count": os.cpu_count()}
  for name, t in result["pieces"].items():
    if name != "loads":
      print(f"{name:16s} {t['ms']:8.2f} ms wall  {t['cpu_ms']:8.2f} ms CPU", flush=True)
  png = pathlib.Path(out).with_suffix(".png")
  save_chart(result, png)
  io_utils.atomic_write(out, json.dumps(result, indent=1).encode())
  print(f"wrote {out} and {png}")


if __name__ == "__main__":
  bench.define_flags()
  app.run(main)
