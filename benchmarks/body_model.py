"""Posing speed: flowpose.body.model vs smplx's `lbs` (PyTorch CPU).

    python -m benchmarks.body_model --out results/body_model.json

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
`block_until_ready` / `torch.no_grad`, warm-up excluded, the two libraries
interleaved repeat by repeat (so machine load hits both alike), median.
Forward+backward: gradient of `sum(vertices**2)` w.r.t. rotations and betas.

Skinning path: `--skinning auto` (default) is what `forward` picks: the CPU
kernels of `flowpose.body.cpu_kernel.ffi` (FK; shape/pose blend + skinning +
keypoints) when built, else XLA; `kernel` or `xla` force one. `--compare-xla`
also times the pure-XLA path, interleaved with the other two
(`flowpose_xla_ms`, `ratio_xla`; its big allocations also slow the other two
down). The JSON records the path that ran (`setup.skinning`) and the kernel
build (`setup.lbs_kernel`).

Memory note: at batch 512 every `[B, V, 3]` float32 buffer is 82 MB (cc0);
glibc serves allocations over 32 MB with fresh `mmap`s, so each such buffer
is page-faulted anew on every call, which on a small VM can cost as much as
the arithmetic. Both libraries pay it (smplx allocates several such tensors;
flowpose's kernel writes only the output and asks for transparent huge pages
on it, `FLOWPOSE_LBS_HUGEPAGES=0` to disable; its XLA path also writes the
blended rest vertices). Setting
`MALLOC_MMAP_MAX_=0 MALLOC_ARENA_MAX=1 MALLOC_TRIM_THRESHOLD_=<large>` in the
environment keeps the memory mapped between calls (recorded in the JSON under
`setup.malloc_env`).
"""

import argparse
import functools
import json
import os
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from flowpose import geometry
from flowpose.body.cpu_kernel import ffi as lbs_kernel
from flowpose.body import model as bm

SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16,
                17, 18, 19, 20, 21)


def smpl_sized_model(seed: int = 0) -> bm.BodyModel:
  """Random model with SMPL's sizes and tree (both sides do the same work)."""
  rng = np.random.default_rng(seed)
  num_v, num_j, num_b = 6890, len(SMPL_PARENTS), 10
  dense = rng.random((num_v, num_j)) * (rng.random((num_v, num_j)) < 0.1)
  dense[np.arange(num_v), rng.integers(0, num_j, num_v)] += 1.0
  idx, weights, _ = bm.sparsify_skin_weights(dense / dense.sum(1, keepdims=True
                                                               ), 4)
  j_regressor = rng.random((num_j, num_v)) * (rng.random((num_j, num_v)) < .01)
  j_regressor /= j_regressor.sum(1, keepdims=True)
  names = np.asarray([f"j{i}" for i in range(num_j)])
  return bm.model_from_arrays({
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
  rot = np.array(geometry.axis_angle_to_matrix(jnp.asarray(pose,
                                                             jnp.float32)))
  return rot, rng.normal(size=(batch, model.num_betas)).astype(np.float32)


def _timed(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _interleaved(fns, repeats):
  """Median seconds of each fn, run alternately after one warm-up each."""
  for fn in fns:
    fn()
  times = [[] for _ in fns]
  for _ in range(repeats):
    for t, fn in zip(times, fns):
      t.append(_timed(fn))
  return [statistics.median(t) for t in times]


class Poser:
  """Both libraries set up on one model, with inputs for a batch size."""

  def __init__(self, model: bm.BodyModel, skinning: str = "auto"):
    import torch  # pylint: disable=g-import-not-at-top
    from smplx.lbs import lbs  # pylint: disable=g-import-not-at-top
    self.torch, self.lbs, self.model = torch, lbs, model
    t = lambda x: torch.tensor(np.asarray(x, np.float32))
    num_j = model.num_joints
    posedirs = (model.posedirs if model.has_posedirs else
                np.zeros((9 * (num_j - 1), 3), np.float32))
    self.smplx_args = dict(
        v_template=t(model.v_template), shapedirs=t(model.shapedirs),
        posedirs=t(posedirs), J_regressor=t(model.j_regressor),
        parents=torch.tensor(model.parents, dtype=torch.long),
        lbs_weights=t(bm.dense_skin_weights(model)))
    self.fwd, self.grad = self.jitted(skinning)
    self.fwd_xla, self.grad_xla = self.jitted("xla")

  @staticmethod
  def jitted(skinning):
    """`(forward [B], grad of sum(vertices**2) w.r.t. (rot, betas))`, jitted."""
    fwd = jax.vmap(functools.partial(bm.forward, skinning=skinning),
                   (None, 0, 0))

    def loss(model, rot, betas):
      return jnp.sum(fwd(model, rot, betas).vertices**2)
    return jax.jit(fwd), jax.jit(jax.grad(loss, argnums=(1, 2)))

  def inputs(self, batch, seed=0):
    return random_inputs(self.model, batch, seed)

  def forward_fns(self, batch):
    """`(ours, theirs, ours_xla)`: callables running one batch."""
    rot, betas = self.inputs(batch)
    j_rot, j_betas = jnp.asarray(rot), jnp.asarray(betas)
    t_rot, t_betas = self.torch.from_numpy(rot), self.torch.from_numpy(betas)

    def ours(fwd=self.fwd):
      jax.block_until_ready(fwd(self.model, j_rot, j_betas))

    def theirs():
      with self.torch.no_grad():
        self.lbs(t_betas, t_rot, pose2rot=False, **self.smplx_args)
    return ours, theirs, functools.partial(ours, fwd=self.fwd_xla)

  def backward_fns(self, batch):
    """`(ours, theirs, ours_xla)` for forward+backward."""
    rot, betas = self.inputs(batch)
    j_rot, j_betas = jnp.asarray(rot), jnp.asarray(betas)

    def ours(grad=self.grad):
      jax.block_until_ready(grad(self.model, j_rot, j_betas))

    def theirs():
      t_rot = self.torch.from_numpy(rot).requires_grad_(True)
      t_betas = self.torch.from_numpy(betas).requires_grad_(True)
      verts, _ = self.lbs(t_betas, t_rot, pose2rot=False, **self.smplx_args)
      (verts**2).sum().backward()
    return ours, theirs, functools.partial(ours, grad=self.grad_xla)

  def check_agreement(self, batch=4):
    """Max |vertex difference| between the two libraries (metres)."""
    rot, betas = self.inputs(batch, seed=1)
    ours = self.fwd(self.model, jnp.asarray(rot), jnp.asarray(betas))
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
    fk = jax.jit(jax.vmap(lambda r, j, m=method: bm.forward_kinematics(
        model.parents, r, j, m)))
    fns.append(lambda fk=fk: jax.block_until_ready(fk(rot, rest)))
  return dict(zip(("fk_levels_ms", "fk_doubling_ms"),
                  (1e3 * t for t in _interleaved(fns, repeats))))


def _entry(name, label, batch, fns, reps, compare_xla):
  """Times `(ours, theirs[, ours_xla])` interleaved; returns the JSON entry."""
  ours, theirs, *xla = _interleaved(fns if compare_xla else fns[:2], reps)
  entry = {"flowpose_ms": 1e3 * ours, "smplx_ms": 1e3 * theirs,
           "flowpose_bodies_per_s": batch / ours,
           "smplx_bodies_per_s": batch / theirs, "ratio": theirs / ours}
  line = (f"{name:11s} {label:12s} B={batch:4d}  flowpose {1e3 * ours:9.2f} ms"
          f"  smplx {1e3 * theirs:9.2f} ms  ratio {theirs / ours:6.1f}x")
  if xla:
    entry.update(flowpose_xla_ms=1e3 * xla[0], ratio_xla=theirs / xla[0])
    line += f"  (xla path {1e3 * xla[0]:9.2f} ms, {theirs / xla[0]:6.1f}x)"
  print(line, flush=True)
  return entry


def run(models, batches, backward_batch, repeats, threads, skinning="auto",
        compare_xla=False):
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  results = {}
  for name, model in models.items():
    poser = Poser(model, skinning)
    res = {"num_vertices": model.num_vertices, "num_joints": model.num_joints,
           "num_betas": model.num_betas,
           "num_pose_basis": int(model.posedirs.shape[0]),
           "num_keypoints": model.num_keypoints,
           "top_k": int(model.skin_indices.shape[1]),
           "max_abs_vertex_diff_m": poser.check_agreement()}
    for batch in batches:
      reps = repeats if batch > 1 else 10 * repeats
      res[f"forward_b{batch}"] = _entry(name, "forward", batch,
                                        poser.forward_fns(batch), reps,
                                        compare_xla)
    res[f"forward_backward_b{backward_batch}"] = _entry(
        name, "fwd+backward", backward_batch,
        poser.backward_fns(backward_batch), repeats, compare_xla)
    res.update(fk_times(model, max(batches), repeats))
    top = res[f"forward_b{max(batches)}"]
    res.update({k: top[k] for k in ("flowpose_bodies_per_s",
                                    "smplx_bodies_per_s", "ratio")})
    results[name] = res
  return results


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--batches", default="1,64,512")
  parser.add_argument("--backward-batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=21)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--models", default="cc0,smpl_sized")
  parser.add_argument("--skinning", default="auto", choices=lbs_kernel.IMPLS,
                      help="flowpose's skinning path (see module docstring)")
  parser.add_argument("--compare-xla", action="store_true",
                      help="also time the pure-XLA skinning path")
  args = parser.parse_args(argv)
  import torch  # pylint: disable=g-import-not-at-top
  import smplx  # pylint: disable=g-import-not-at-top
  from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
  models = {}
  for name in args.models.split(","):
    models[name] = (bm.load_model(assets.ensure_body_model()) if name == "cc0"
                    else smpl_sized_model())
  batches = [int(b) for b in args.batches.split(",")]
  results = {
      "models": run(models, batches, args.backward_batch, args.repeats,
                    args.threads, args.skinning, args.compare_xla),
      "setup": {
          "threads": args.threads, "cpu_count": os.cpu_count(),
          "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
          "smplx": getattr(smplx, "__version__", "0.1.28"),
          "jax": jax.__version__, "platform": platform.platform(),
          "processor": platform.processor(), "repeats": args.repeats,
          "load_average_after": os.getloadavg(),
          "malloc_env": {k: v for k, v in os.environ.items()
                         if k.startswith("MALLOC_")},
          "skinning": (
              "kernel" if args.skinning == "kernel" or (
                  args.skinning == "auto" and lbs_kernel.available())
              else "xla"),
          "lbs_kernel": lbs_kernel.info(),
      },
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(results, indent=1))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
