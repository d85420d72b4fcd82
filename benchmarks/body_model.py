"""Posing speed: flowpose.body.model vs smplx's `lbs` (PyTorch CPU).

    python -m benchmarks.body_model --out=results/body_model.json
    python -m benchmarks.body_model --out=F.json --baseline=none  # no torch/smplx

Two models, the same arrays on both sides:
* `cc0`: the CC0 body model (built with `ensure_body_model()` if missing):
  ~13.4k vertices, 31 joints, 16 betas, no pose correctives. smplx's `lbs`
  always applies `pose_feature @ posedirs`; it gets a zero `[9 (J-1), 3]`
  posedirs whose `[B, 1, 3]` product broadcasts onto every vertex, so it does
  no V-sized pose-corrective work it would not do for a model without them.
* `smpl_sized`: random arrays of SMPL's sizes (6890 vertices, SMPL's 24-joint
  tree, 10 betas, posedirs `[207, 6890 * 3]`, 4 weights per vertex).

smplx gets dense `[V, J]` weights built from flowpose's sparse top-K ones and
rotation matrices (`pose2rot=False`). flowpose additionally regresses the
keypoints (`keypoint_regressor @ vertices`: COCO-17 for cc0, the 24 regressed
joints for smpl_sized); smplx's time is `lbs` alone. Timings: `jit` +
`block_until_ready` / `torch.no_grad`, warm-up excluded, the libraries
interleaved call by call (A B A B ...: load hits both alike) for `--rounds`
rounds of `--repeats`; medians of wall and process CPU time, each round's
ratio and the load average at its start in the JSON (a loaded ratio is
indicative only). Forward+backward: gradient of `sum(vertices**2)` w.r.t.
rotations, betas and translation (smplx: `lbs` + translation added to its
vertices) at each of `--backward_batches`; on CPU the FK's and the skinning's
backward are custom calls too (`csrc/`); `--compare_xla` times XLA's.

Skinning path: `--skinning=auto` (default) is what `forward` picks: the CPU
kernels of `flowpose.body.cpu_kernel` when built, else XLA; `kernel` or `xla`
force one. `--compare_xla` also times the pure-XLA path (`flowpose.body.lbs`),
interleaved with the other two (`flowpose_xla_ms`, `ratio_xla`; its big
allocations also slow the other two down). The JSON records the path that ran
(`setup.skinning`) and the kernel build (`setup.lbs_kernel`, its `cpu_level`).

`--baseline=none` times flowpose alone (no torch/smplx): the selected path vs the
pure-XLA path (`xla_over_flowpose`, `max_abs_vertex_diff_vs_xla_m`).

Memory note: at batch 512 every `[B, V, 3]` float32 buffer is 82 MB (cc0), fresh
glibc `mmap`s page-faulted on every call, on both sides (flowpose's kernel asks for
transparent huge pages on its output; `FLOWPOSE_LBS_HUGEPAGES=0` disables). `MALLOC_MMAP_MAX_=0 MALLOC_ARENA_MAX=1 MALLOC_TRIM_THRESHOLD_=<large>`
keeps the memory mapped between calls (recorded under `setup.malloc_env`).
"""

import functools
import json
import os
import platform
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from flowpose import geometry
from flowpose import io_utils
from flowpose.body import lbs
from flowpose.body import model as bm
from flowpose.body import model_io
from flowpose.body.cpu_kernel import build as kernel_build
from flowpose.body.cpu_kernel import ffi

FLAGS = flags.FLAGS


def define_flags():
  """The CLI's flags, defined when run as a script (tests and `body_model_profile` import this
  module beside other CLIs' flags)."""
  flags.DEFINE_string("out", None, "output JSON (required)")
  flags.DEFINE_list("batches", ["1", "64", "512"], "forward batches")
  flags.DEFINE_list("backward_batches", ["64", "512"], "forward+backward batches")
  flags.DEFINE_integer(
      "rounds", 3, "rounds of --repeats interleaved calls per entry (each round's "
      "ratio and load are recorded; the medians are over all rounds)", lower_bound=1)
  flags.DEFINE_integer("repeats", 21, "timed repeats per round (x10 at B=1)", lower_bound=1)
  flags.DEFINE_integer("threads", os.cpu_count(), "torch threads", lower_bound=1)
  flags.DEFINE_list("models", ["cc0", "smpl_sized"], "models to time")
  flags.DEFINE_enum("skinning", "auto", ffi.IMPLS, "flowpose's skinning path (module docstring)")
  flags.DEFINE_bool("compare_xla", False, "also time the pure-XLA skinning path")
  flags.DEFINE_enum("baseline", "smplx", ["smplx", "none"],
                    "smplx's lbs (torch + smplx) or flowpose alone")


SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16,
                17, 18, 19, 20, 21)


def smpl_sized_model(seed: int = 0) -> bm.BodyModel:
  """Random model with SMPL's sizes and tree (both sides do the same work)."""
  rng = np.random.default_rng(seed)
  num_v, num_j, num_b = 6890, len(SMPL_PARENTS), 10
  dense = rng.random((num_v, num_j)) * (rng.random((num_v, num_j)) < 0.1)
  dense[np.arange(num_v), rng.integers(0, num_j, num_v)] += 1.0
  idx, weights, _ = model_io.sparsify_skin_weights(
      dense / dense.sum(1, keepdims=True), 4)
  j_regressor = rng.random((num_j, num_v)) * (rng.random((num_j, num_v)) < .01)
  j_regressor /= j_regressor.sum(1, keepdims=True)
  names = np.asarray([f"j{i}" for i in range(num_j)])
  return model_io.model_from_arrays({
      "v_template": rng.normal(size=(num_v, 3)),
      "shapedirs": 0.01 * rng.normal(size=(num_v, 3, num_b)),
      "posedirs": 0.01 * rng.normal(size=(9 * (num_j - 1), num_v * 3)),
      "j_regressor": j_regressor, "skin_indices": idx, "skin_weights": weights,
      "keypoint_regressor": j_regressor,
      "faces": rng.integers(0, num_v, (13776, 3)),
      "part_labels": dense.argmax(1), "parents": np.asarray(SMPL_PARENTS),
      "joint_names": names, "part_names": names, "keypoint_names": names,
  })


def random_inputs(model, batch, seed=0):
  """`(rotmats [B, J, 3, 3], betas [B, S])` float32 numpy."""
  rng = np.random.default_rng(seed)
  pose = 0.5 * rng.normal(size=(batch, model.num_joints, 3))
  rot = np.array(geometry.axis_angle_to_matrix(jnp.asarray(pose, jnp.float32)))
  return rot, rng.normal(size=(batch, model.num_betas)).astype(np.float32)


def _timed(fn):
  """`(wall seconds, process CPU seconds)` of one call (CPU: all threads, so
  under load it shows the work where the wall clock shows the queue)."""
  cpu, start = time.process_time(), time.perf_counter()
  fn()
  return time.perf_counter() - start, time.process_time() - cpu


def interleaved(fns, repeats, rounds=1):
  """Times each fn alternately (A B A B ...) after one warm-up each.

  Returns:
    One dict per fn: `wall` / `cpu` medians (s) over all `rounds * repeats`
    calls and `round_walls`, the median of each round. Each round records
    the load average (`os.getloadavg`, 1 min) where it starts.
  """
  for fn in fns:
    fn()
  walls, cpus = [[] for _ in fns], [[] for _ in fns]
  round_walls, loads = [[] for _ in fns], []
  for _ in range(rounds):
    loads.append(os.getloadavg()[0])
    first = len(walls[0])
    for _ in range(repeats):
      for w, c, fn in zip(walls, cpus, fns):
        wall, cpu = _timed(fn)
        w.append(wall)
        c.append(cpu)
    for r, w in zip(round_walls, walls):
      r.append(statistics.median(w[first:]))
  return [{"wall": statistics.median(w), "cpu": statistics.median(c),
           "round_walls": r, "loads": loads}
          for w, c, r in zip(walls, cpus, round_walls)]


class Poser:
  """Both libraries set up on one model, with inputs for a batch size."""

  def __init__(self, model: bm.BodyModel, skinning: str = "auto",
               baseline: str = "smplx"):
    self.model, self.torch = model, None
    self.fwd, self.grad = self.jitted(skinning)
    self.fwd_xla, self.grad_xla = self.jitted("xla")
    if baseline == "none":
      return
    import torch  # pylint: disable=g-import-not-at-top
    from smplx.lbs import lbs as smplx_lbs  # pylint: disable=g-import-not-at-top
    self.torch, self.lbs = torch, smplx_lbs
    t = lambda x: torch.tensor(np.asarray(x, np.float32))
    num_j = model.num_joints
    posedirs = (model.posedirs if model.has_posedirs else
                np.zeros((9 * (num_j - 1), 3), np.float32))
    self.smplx_args = dict(
        v_template=t(model.v_template), shapedirs=t(model.shapedirs),
        posedirs=t(posedirs), J_regressor=t(model.j_regressor),
        parents=torch.tensor(model.parents, dtype=torch.long),
        lbs_weights=t(bm.dense_skin_weights(model)))

  @staticmethod
  def jitted(skinning):
    """`(forward [B], grad of sum(vertices**2) w.r.t. (rot, betas, transl))`,
    jitted."""
    pose = functools.partial(bm.forward, skinning=skinning)
    loss = lambda model, rot, betas, transl: jnp.sum(
        jax.vmap(pose, (None, 0, 0, 0))(model, rot, betas, transl).vertices**2)
    return (jax.jit(jax.vmap(pose, (None, 0, 0))),
            jax.jit(jax.grad(loss, argnums=(1, 2, 3))))

  def inputs(self, batch, seed=0):
    return random_inputs(self.model, batch, seed)

  def forward_fns(self, batch):
    """`(ours, theirs or None without a baseline, ours_xla)`: one batch each."""
    rot, betas = self.inputs(batch)
    j_rot, j_betas = jnp.asarray(rot), jnp.asarray(betas)

    def ours(fwd=self.fwd):
      jax.block_until_ready(fwd(self.model, j_rot, j_betas))

    def theirs():
      with self.torch.no_grad():
        self.lbs(self.torch.from_numpy(betas), self.torch.from_numpy(rot),
                 pose2rot=False, **self.smplx_args)
    return (ours, theirs if self.torch else None,
            functools.partial(ours, fwd=self.fwd_xla))

  def backward_fns(self, batch):
    """`(ours, theirs, ours_xla)` for forward+backward."""
    rot, betas = self.inputs(batch)
    transl = np.random.default_rng(2).normal(size=(batch, 3)).astype(
        np.float32)
    j_rot, j_betas, j_transl = map(jnp.asarray, (rot, betas, transl))

    def ours(grad=self.grad):
      jax.block_until_ready(grad(self.model, j_rot, j_betas, j_transl))

    def theirs():
      t_rot = self.torch.from_numpy(rot).requires_grad_(True)
      t_betas = self.torch.from_numpy(betas).requires_grad_(True)
      t_transl = self.torch.from_numpy(transl).requires_grad_(True)
      verts, _ = self.lbs(t_betas, t_rot, pose2rot=False, **self.smplx_args)
      ((verts + t_transl[:, None])**2).sum().backward()
    return (ours, theirs if self.torch else None,
            functools.partial(ours, grad=self.grad_xla))

  def check_agreement(self, batch=4):
    """Max |vertex difference| from smplx (or, without it, the XLA path), m."""
    rot, betas = self.inputs(batch, seed=1)
    ours = self.fwd(self.model, jnp.asarray(rot), jnp.asarray(betas))
    if self.torch is None:
      xla = self.fwd_xla(self.model, jnp.asarray(rot), jnp.asarray(betas))
      return float(np.abs(np.asarray(ours.vertices - xla.vertices)).max())
    with self.torch.no_grad():
      theirs, _ = self.lbs(self.torch.from_numpy(betas),
                           self.torch.from_numpy(rot), pose2rot=False,
                           **self.smplx_args)
    return float(np.abs(np.asarray(ours.vertices) - theirs.numpy()).max())


def fk_times(model: bm.BodyModel, batch: int, repeats: int):
  """Median ms of the two FK methods alone on a batch."""
  rot = jnp.asarray(random_inputs(model, batch)[0])
  rest = jnp.broadcast_to(bm.regress_joints(model, jnp.zeros(model.num_betas)),
                          (batch, model.num_joints, 3))
  fns = []
  for method in ("levels", "doubling"):
    fk = jax.jit(jax.vmap(lambda r, j, m=method: lbs.forward_kinematics(
        model.parents, r, j, m)))
    fns.append(lambda fk=fk: jax.block_until_ready(fk(rot, rest)))
  return dict(zip(("fk_levels_ms", "fk_doubling_ms"),
                  (1e3 * t["wall"] for t in interleaved(fns, repeats))))


def _entry(name, label, batch, fns, reps, compare_xla, rounds=1):
  """Times `(ours, theirs[, ours_xla])` interleaved; returns the JSON entry.

  Without a baseline (`theirs` None) the XLA path is always timed. With one,
  `ratio` = smplx / flowpose medians over every round, `round_ratios` the
  same per round (their medians), `loads` the load average at each round."""
  ours_fn, theirs_fn, xla_fn = fns
  ms = lambda t: 1e3 * t["wall"]
  if theirs_fn is None:
    ours, xla = interleaved([ours_fn, xla_fn], reps, rounds)
    print(f"{name:11s} {label:12s} B={batch:4d}  flowpose {ms(ours):9.2f} ms"
          f"  xla path {ms(xla):9.2f} ms  xla/flowpose {xla['wall'] / ours['wall']:6.2f}x",
          flush=True)
    return {"flowpose_ms": ms(ours), "flowpose_bodies_per_s": batch / ours["wall"],
            "flowpose_xla_ms": ms(xla), "xla_over_flowpose": xla["wall"] / ours["wall"],
            "loads": ours["loads"]}
  timed = [ours_fn, theirs_fn] + ([xla_fn] if compare_xla else [])
  ours, theirs, *xla = interleaved(timed, reps, rounds)
  ratio = theirs["wall"] / ours["wall"]
  entry = {"flowpose_ms": ms(ours), "smplx_ms": ms(theirs),
           "flowpose_cpu_ms": 1e3 * ours["cpu"], "smplx_cpu_ms": 1e3 * theirs["cpu"],
           "flowpose_bodies_per_s": batch / ours["wall"], "ratio": ratio,
           "smplx_bodies_per_s": batch / theirs["wall"], "cpu_ratio": theirs["cpu"] / ours["cpu"],
           "round_ratios": [t / o for t, o in zip(theirs["round_walls"], ours["round_walls"])],
           "loads": ours["loads"]}
  line = (f"{name:11s} {label:12s} B={batch:4d}  flowpose {ms(ours):9.2f} ms"
          f"  smplx {ms(theirs):9.2f} ms  ratio {ratio:6.1f}x"
          f"  rounds {' '.join(f'{r:.1f}x' for r in entry['round_ratios'])}"
          f"  load {' '.join(f'{x:.1f}' for x in entry['loads'])}")
  if xla:
    entry.update(flowpose_xla_ms=ms(xla[0]), ratio_xla=theirs["wall"] / xla[0]["wall"])
    line += f"  (xla path {ms(xla[0]):9.2f} ms, {entry['ratio_xla']:6.1f}x)"
  print(line, flush=True)
  return entry


def run(models, batches, backward_batches, repeats, threads, skinning="auto",
        compare_xla=False, baseline="smplx", rounds=1):
  if baseline == "smplx":
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(threads)
  results = {}
  for name, model in models.items():
    poser = Poser(model, skinning, baseline)
    diff_key = ("max_abs_vertex_diff_m" if baseline == "smplx" else
                "max_abs_vertex_diff_vs_xla_m")
    res = {"num_vertices": model.num_vertices, "num_joints": model.num_joints,
           "num_betas": model.num_betas,
           "num_pose_basis": int(model.posedirs.shape[0]),
           "num_keypoints": model.num_keypoints,
           "top_k": int(model.skin_indices.shape[1]),
           diff_key: poser.check_agreement()}
    for batch in batches:
      reps = repeats if batch > 1 else 10 * repeats
      res[f"forward_b{batch}"] = _entry(name, "forward", batch,
                                        poser.forward_fns(batch), reps,
                                        compare_xla, rounds)
    for batch in backward_batches:
      res[f"forward_backward_b{batch}"] = _entry(
          name, "fwd+backward", batch, poser.backward_fns(batch), repeats,
          compare_xla, rounds)
    res.update(fk_times(model, max(batches), repeats))
    top = res[f"forward_b{max(batches)}"]
    res.update({k: top[k] for k in ("flowpose_bodies_per_s",
                                    "smplx_bodies_per_s", "ratio",
                                    "xla_over_flowpose") if k in top})
    results[name] = res
  return results


def _baseline_setup(baseline, threads):
  if baseline == "none":
    return {"baseline": "none (flowpose's selected path vs its XLA path)"}
  import torch  # pylint: disable=g-import-not-at-top
  import smplx  # pylint: disable=g-import-not-at-top
  return {"baseline": "smplx", "threads": threads,
          "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
          "smplx": getattr(smplx, "__version__", "0.1.28")}


def _positive_ints(flag):
  """A list flag's values as positive ints, else one UsageError naming the flag."""
  try:
    values = [int(b) for b in flag.value]
  except ValueError:
    values = [0]
  if min(values, default=1) < 1:
    raise app.UsageError(f"--{flag.name}: expected positive integers, got {flag.value}")
  return values


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:  # Checked before minutes of timing, not after.
    out = io_utils.require_output_path(FLAGS.out, "--out", is_dir=False)
  except io_utils.OutputPathError as e:
    raise app.UsageError(str(e)) from e
  unknown = sorted(set(FLAGS.models) - {"cc0", "smpl_sized"})
  if unknown:
    raise app.UsageError(f"--models: unknown {unknown}; "
                         "expected cc0, smpl_sized")
  batches, backward_batches = (_positive_ints(FLAGS[f])
                               for f in ("batches", "backward_batches"))
  if not batches:
    raise app.UsageError("--batches: expected at least one batch size")
  if FLAGS.baseline == "smplx":
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
      import smplx  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError as e:
      raise app.UsageError(
          f"--baseline=smplx needs torch and smplx "
          f"(benchmarks/requirements.txt): {e}; --baseline=none times "
          "flowpose alone") from e
  from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
  models = {name: (model_io.load_model(assets.ensure_body_model())
                   if name == "cc0" else smpl_sized_model())
            for name in FLAGS.models}
  load_before = os.getloadavg()
  results = {
      "models": run(models, batches, backward_batches, FLAGS.repeats,
                    FLAGS.threads, FLAGS.skinning, FLAGS.compare_xla,
                    FLAGS.baseline, FLAGS.rounds),
      "setup": {
          **_baseline_setup(FLAGS.baseline, FLAGS.threads),
          "cpu_count": os.cpu_count(),
          "jax": jax.__version__, "platform": platform.platform(),
          "processor": platform.processor(), "repeats": FLAGS.repeats,
          "rounds": FLAGS.rounds, "load_average_before": load_before,
          "load_average_after": os.getloadavg(),
          "malloc_env": {k: v for k, v in os.environ.items()
                         if k.startswith("MALLOC_")},
          "skinning": (
              "kernel" if FLAGS.skinning == "kernel" or (
                  FLAGS.skinning == "auto" and kernel_build.available())
              else "xla"),
          "lbs_kernel": kernel_build.info(),
      },
  }
  io_utils.atomic_write(out, json.dumps(results, indent=1).encode())
  print(f"wrote {out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
