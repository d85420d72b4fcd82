"""Linear blend skinning and FK: XLA implementations and fused CPU kernels.

`model.forward` calls `fk_transforms` (FK + skinning transforms) and
`pose_vertices` (shape blend + sparse skinning + keypoint regression). On CPU,
when the library is available, each is one XLA FFI custom call for the whole
`vmap`ped batch (`csrc/fk_kernel.cc`; `csrc/lbs_kernel.cc`: SIMD over blocks of
bodies, both cores, writes only its outputs) with an XLA backward; elsewhere
(GPU/TPU, no compiler, `FLOWPOSE_LBS_KERNEL=0`) the XLA path, the reference,
whose skinning is `skin` below. The library is built into
`$FLOWPOSE_CACHE/kernels/` (default `~/.cache/flowpose/kernels/`), keyed by a
hash of the sources, jaxlib's FFI headers and the compiler flags, by `python -m
flowpose.body.cpu_kernel.ffi --build` (`launch/setup.sh`) or on first use; a failed
build logs a warning and leaves the XLA path in use.
"""

import argparse
import ctypes
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import threading
from typing import List, Optional, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

_SOURCES = tuple(pathlib.Path(__file__).resolve().parent / "csrc" / name
                 for name in ("lbs_kernel.cc", "fk_kernel.cc"))
_TARGET, _SYMBOL = "flowpose_lbs", "FlowposeLbs"
_FK_TARGET, _FK_SYMBOL = "flowpose_fk", "FlowposeFk"
# x86-64-v3 (AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE) as /proc/cpuinfo spells it.
_X86_64_V3_FLAGS = {"avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "abm",
                    "movbe", "xsave"}
IMPLS = ("auto", "kernel", "xla")
# Below this many bodies per call the skinning kernel's fixed cost (keypoint
# index, thread hand-off, padding) exceeds XLA's time, so XLA skins them.
MIN_KERNEL_BATCH = 4


class KernelBuildError(RuntimeError):
  """The CPU skinning kernel could not be compiled or loaded."""


# ---------------------------------------------------------------------------
# Building and loading the library
# ---------------------------------------------------------------------------


def kernel_dir() -> pathlib.Path:
  """`$FLOWPOSE_CACHE/kernels` (default `~/.cache/flowpose/kernels`)."""
  env = os.environ.get("FLOWPOSE_CACHE")
  return (pathlib.Path(env) if env else
          pathlib.Path.home() / ".cache" / "flowpose") / "kernels"


def cpu_level() -> str:
  """`"x86-64-v3"` where this CPU has AVX2 + FMA (Linux), else `"generic"`."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      flags = next((set(line.split(":", 1)[1].split()) for line in f
                    if line.startswith("flags")), set())
  except OSError:
    flags = set()
  x86 = platform.machine().lower() in ("x86_64", "amd64")
  return "x86-64-v3" if x86 and _X86_64_V3_FLAGS <= flags else "generic"


def _compiler() -> Optional[str]:
  names = (os.environ.get("CXX"), "g++", "c++", "clang++")
  return next((shutil.which(n) for n in names if n and shutil.which(n)), None)


def _compile_flags() -> List[str]:
  flags = ["-O3", "-std=c++17", "-shared", "-fPIC",
           "-fno-math-errno", "-isystem", jax.ffi.include_dir()]
  if cpu_level() == "x86-64-v3":
    flags.append("-march=x86-64-v3")
  return flags


def library_path() -> pathlib.Path:
  """Where this machine's build of the kernel lives (it may not exist yet)."""
  digest = hashlib.sha256()
  for source in _SOURCES:
    digest.update(source.read_bytes())
  api = pathlib.Path(jax.ffi.include_dir()) / "xla" / "ffi" / "api"
  for header in ("api.h", "c_api.h", "ffi.h"):
    path = api / header
    digest.update(path.read_bytes() if path.exists() else header.encode())
  digest.update(" ".join([str(_compiler())] + _compile_flags()).encode())
  return kernel_dir() / f"lbs_kernel-{cpu_level()}-{digest.hexdigest()[:16]}.so"


def build(force: bool = False) -> pathlib.Path:
  """Compiles the kernel (if missing) atomically into `library_path()`.

  Raises:
    KernelBuildError: no C++ compiler, or the compilation failed.
  """
  out = library_path()
  if out.exists() and not force:
    return out
  compiler = _compiler()
  if compiler is None:
    raise KernelBuildError("no C++ compiler (set CXX or install g++)")
  logging.info("flowpose: compiling the CPU skinning kernel into %s", out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".tmp", prefix=f".{out.name}.", dir=out.parent)
  os.close(fd)
  try:
    cmd = [compiler] + _compile_flags() + [*map(str, _SOURCES), "-o", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      raise KernelBuildError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return out


_LOCK = threading.Lock()
_STATE = {}  # "available": bool, "path"/"error": str (once per process)


def available() -> bool:
  """Whether the CPU kernel is built, loaded and registered (builds lazily)."""
  with _LOCK:
    if "available" not in _STATE:
      _STATE["available"] = False
      if os.environ.get("FLOWPOSE_LBS_KERNEL", "1") == "0":
        _STATE["error"] = "disabled by FLOWPOSE_LBS_KERNEL=0"
        return False
      try:
        path = build()
        lib = ctypes.CDLL(str(path))
        for target, symbol in ((_TARGET, _SYMBOL), (_FK_TARGET, _FK_SYMBOL)):
          jax.ffi.register_ffi_target(
              target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
        _STATE.update(available=True, path=str(path), lib=lib)
      except Exception as e:  # pylint: disable=broad-except
        # Any failure (no compiler, bad build, registration) falls back.
        _STATE["error"] = f"{type(e).__name__}: {e}"
        logging.warning("flowpose: CPU skinning kernel unavailable, using the "
                        "XLA path (%s)", _STATE["error"])
    return _STATE["available"]


def info() -> dict:
  """`{"available", "path" or "error", "cpu_level"}` for logs and benchmarks."""
  available()
  return {"available": _STATE["available"], "cpu_level": cpu_level(),
          **{k: _STATE[k] for k in ("path", "error") if k in _STATE}}


# ---------------------------------------------------------------------------
# XLA skinning (the reference; used on GPU/TPU and without the kernel)
# ---------------------------------------------------------------------------


def _gather_rows(table: jax.Array, idx: jax.Array) -> jax.Array:
  """`table[idx]`; indices are validated at load time, so skip the wrapping."""
  dnums = jax.lax.GatherDimensionNumbers(
      offset_dims=tuple(range(1, table.ndim)), collapsed_slice_dims=(0,),
      start_index_map=(0,))
  return jax.lax.gather(table, idx[:, None], dnums,
                        slice_sizes=(1,) + table.shape[1:],
                        mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _apply_transform(transform: jax.Array, points: jax.Array) -> jax.Array:
  """`transform [V, 3, 4]` applied to `points [V, 3]`, as multiply-adds."""
  return (transform[:, :, 0] * points[:, 0:1] +
          transform[:, :, 1] * points[:, 1:2] +
          transform[:, :, 2] * points[:, 2:3] + transform[:, :, 3])


def _skin_impl(vertices, transforms, skin_indices, skin_weights):
  blended = 0.0
  for k in range(skin_indices.shape[1]):
    blended = blended + skin_weights[:, k, None, None] * _gather_rows(
        transforms, skin_indices[:, k])
  return _apply_transform(blended, vertices)


@jax.custom_vjp
def skin(vertices: jax.Array, transforms: jax.Array, skin_indices: jax.Array,
         skin_weights: jax.Array) -> jax.Array:
  """Linear blend skinning with K sparse weights per vertex.

  `out_v = (sum_k w_vk [R | t]_{j_vk}) [v; 1]`. Written as K gathers of the
  tiny `[J, 3, 4]` table and plain multiply-adds (no dots, reductions or
  concatenations), so XLA fuses the gathers, the blend and the transform into
  a single loop over the `[V, 3]` outputs: ~12 (K + 1) multiply-adds per
  vertex instead of the dense `[V, J] @ [J, 12]` product (J = 31: 372), and
  no `[V, 12]` intermediate. (A dense-weight GEMM was ~5x slower on CPU: it
  writes and re-reads a `[B, V, 12]` blended-transform tensor.)

  The VJP is custom: autodiff would transpose the gathers into a scatter-add
  of `[V, K, 3, 4]` updates (slow and serial on CPU); instead the transform
  cotangent is one dense `[12, V] @ [V, J]` product (a GEMM under `vmap`).

  Args:
    vertices: `[V, 3]` rest-pose (shaped, pose-corrected) vertices.
    transforms: `[J, 3, 4]` from `skinning_transforms`.
    skin_indices: `[V, K]` int joint indices, in `[0, J)`.
    skin_weights: `[V, K]` weights (rows sum to 1).

  Returns:
    `[V, 3]` posed vertices.
  """
  chex.assert_rank(vertices, 2)
  chex.assert_equal_shape([skin_indices, skin_weights])
  return _skin_impl(vertices, transforms, skin_indices, skin_weights)


def _skin_fwd(vertices, transforms, skin_indices, skin_weights):
  out = skin(vertices, transforms, skin_indices, skin_weights)
  if jax.default_backend() == "cpu":
    # Under differentiation the output feeds the loss and (through it) the
    # cotangent; XLA on CPU inlines the skinning into every consumer and
    # recomputes the gathers there (3-7x slower backward). Fusion does not
    # cross a conditional (optimization_barrier is dropped before fusion on
    # CPU), so routing the output through one (both branches are identity;
    # the predicate is data so XLA cannot fold it) writes it once.
    out = jax.lax.cond(skin_weights[0, 0] <= 1.0, lambda x: x,
                       lambda x: x + 0.0, out)
  return out, (vertices, transforms, skin_indices, skin_weights)


def _skin_bwd(residuals, cotangent):
  vertices, transforms, skin_indices, skin_weights = residuals
  num_joints = transforms.shape[0]
  # Gathered from its own table (R^T, not the forward's [R | t]) so that XLA
  # does not merge it with the forward gathers: a gather with several
  # consumers gets materialised as [V, 3, 4] per weight instead of fused.
  rot_t = jnp.swapaxes(transforms[:, :, :3], 1, 2)  # [J, 3, 3]
  d_vertices = 0.0
  d_weights = []
  for k in range(skin_indices.shape[1]):
    g_t = _gather_rows(rot_t, skin_indices[:, k])  # [V, 3, 3]
    d_vertices = d_vertices + skin_weights[:, k, None] * (
        g_t[:, :, 0] * cotangent[:, 0:1] + g_t[:, :, 1] * cotangent[:, 1:2] +
        g_t[:, :, 2] * cotangent[:, 2:3])
    moved = _apply_transform(_gather_rows(transforms, skin_indices[:, k]),
                             vertices)
    d_weights.append(jnp.sum(moved * cotangent, axis=-1))
  dense = 0.0  # [V, J] weights; per call (not per body) under vmap.
  for k in range(skin_indices.shape[1]):
    dense = dense + skin_weights[:, k, None] * (
        skin_indices[:, k, None] == jnp.arange(num_joints)[None, :])
  # [12, V] with V minor, so that under vmap this is one [B * 12, V] @ [V, J]
  # GEMM with no transposed operand.
  homog_t = jnp.concatenate([vertices.T, jnp.ones_like(vertices.T[:1])])
  outer_t = (cotangent.T[:, None, :] * homog_t[None, :, :]).reshape(12, -1)
  d_transforms = (outer_t @ dense).reshape(3, 4, num_joints).transpose(2, 0, 1)
  return d_vertices, d_transforms, None, jnp.stack(d_weights, axis=-1)


skin.defvjp(_skin_fwd, _skin_bwd)


# ---------------------------------------------------------------------------
# The custom calls, batched: one call per vmapped batch
# ---------------------------------------------------------------------------


def _batched_op(call, reference, num_body, min_batch=1):
  """`call(*body_args [N, ...], *shared_args)` with a custom `vmap` rule.

  `vmap` folds into `N` (a batch is one call); batched shared arrays
  (per-body models) or `N < min_batch` use `reference` (same I/O, XLA)."""
  @jax.custom_batching.custom_vmap
  def op(*args):
    return (reference if args[0].shape[0] < min_batch else call)(*args)

  @op.def_vmap
  def rule(axis_size, in_batched, *args):
    flags = [x is not None and bool(b) for x, b in zip(args, in_batched)]
    if any(flags[num_body:]):
      outs = jax.vmap(reference, [0 if f else None for f in flags])(*args)
      return outs, tuple(True for _ in outs)
    num = args[0].shape[1] if flags[0] else args[0].shape[0]

    def fold(x, is_batched):
      if x is not None and not is_batched:
        x = jnp.broadcast_to(x, (axis_size,) + x.shape)
      return None if x is None else x.reshape((-1,) + x.shape[2:])
    outs = op(*map(fold, args[:num_body], flags), *args[num_body:])
    outs = tuple(o.reshape((axis_size, num) + o.shape[1:]) for o in outs)
    return outs, tuple(True for _ in outs)
  return op


def _unbatched(op, body, shared):
  """`op` on one body: adds and strips the leading `N = 1`."""
  outs = op(*[None if x is None else x[None] for x in body], *shared)
  return tuple(o[0] for o in outs)


def _use_kernel(impl: str) -> bool:
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  if impl == "kernel" and not available():
    raise KernelBuildError(f"CPU skinning kernel unavailable: {info()}")
  return impl != "xla" and available()


_f32 = lambda x: jnp.asarray(x, jnp.float32)


def _ffi(target, out_shapes, *args):
  out = tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in out_shapes)
  return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*args)


# ---------------------------------------------------------------------------
# Forward kinematics and skinning transforms
# ---------------------------------------------------------------------------


def _fk_call(rotmats, betas, transl, parents, j_regressor, v_template,
             shapedirs):
  num, num_joints = rotmats.shape[:2]
  return _ffi(_FK_TARGET, [(num, num_joints, 3, 4), (num, num_joints, 3),
                           (num, num_joints, 3, 3)],
              _f32(rotmats), _f32(betas), _f32(transl), parents,
              _f32(j_regressor), _f32(v_template), _f32(shapedirs))


def fk_transforms(parents: Tuple[int, ...], rotmats: jax.Array,
                  betas: jax.Array, transl: jax.Array, j_regressor: jax.Array,
                  v_template: jax.Array, shapedirs: jax.Array, reference,
                  impl: str = "auto"):
  """Rest joints, FK and skinning transforms (unbatched; `vmap` it).

  Args:
    parents: the static kinematic tree (`parents[j] < j`).
    rotmats, betas, transl, j_regressor, v_template, shapedirs: `[J, 3, 3]`,
      `[S]`, `[3]`, `[J, V]`, `[V, 3]`, `[V, 3, S]`.
    reference: the XLA version (same args) -> `(transforms [J, 3, 4], joints
      [J, 3], joint_rotmats [J, 3, 3])`; used off CPU, without the kernel, and
      (through `jax.vjp`) as the backward.
    impl: as in `pose_vertices`.

  Returns:
    `reference`'s outputs, from `csrc/fk_kernel.cc` on CPU.
  """
  args = (rotmats, betas, transl, j_regressor, v_template, shapedirs)
  if not _use_kernel(impl):
    return reference(*args)
  parents_array = np.asarray(parents, np.int32)  # a constant, not a tracer
  ref_batched = lambda r, b, t, _, *model: jax.vmap(
      reference, (0, 0, 0, None, None, None))(r, b, t, *model)
  op = _batched_op(_fk_call, ref_batched, 3)
  kernel = lambda *a: _unbatched(op, a[:3], (parents_array,) + a[3:])
  fk = jax.custom_vjp(lambda *a: jax.lax.platform_dependent(
      *a, cpu=kernel, default=reference))
  fk.defvjp(lambda *a: (fk(*a), a),
            lambda a, cts: jax.vjp(reference, *a)[1](cts))
  return fk(*args)


# ---------------------------------------------------------------------------
# Shape blend + skinning + keypoints
# ---------------------------------------------------------------------------


def _rest_vertices(betas, features, posedirs, v_template, shapedirs):
  """`v_template + shapedirs @ betas (+ features @ posedirs)`, `[V, 3]`."""
  num_vertices = v_template.shape[0]
  # Coefficients on the left: under vmap [B, S] @ [S, V * 3] GEMMs.
  offsets = betas @ shapedirs.reshape(num_vertices * 3, -1).T
  if features is not None:
    offsets = offsets + features @ posedirs
  return v_template + offsets.reshape(num_vertices, 3)


def _reference(betas, transforms, features, posedirs, v_template, shapedirs,
               skin_indices, skin_weights, kp_regressor):
  vertices = skin(_rest_vertices(betas, features, posedirs, v_template,
                                 shapedirs),
                  transforms, skin_indices, skin_weights)
  # = model.regress_keypoints: a [B * 3, V] @ [V, Kp] GEMM under vmap.
  return vertices, (vertices.T @ kp_regressor.T).T


def _reference_batched(betas, transforms, features, *model_arrays):
  in_axes = (0, 0, None if features is None else 0) + (None,) * 6
  return jax.vmap(_reference, in_axes)(betas, transforms, features,
                                       *model_arrays)


def _ffi_call(betas, transforms, features, posedirs, v_template, shapedirs,
              skin_indices, skin_weights, kp_regressor):
  """The custom call on a batch: `betas [N, S]`, `transforms [N, J, 3, 4]`."""
  num = betas.shape[0]
  empty = jnp.zeros((0,), jnp.float32)
  return _ffi(_TARGET, [(num, v_template.shape[0], 3),
                        (num, kp_regressor.shape[0], 3)],
              _f32(betas), _f32(transforms),
              empty if features is None else _f32(features),
              empty if posedirs is None else _f32(posedirs), _f32(v_template),
              _f32(shapedirs), jnp.asarray(skin_indices, jnp.int32),
              _f32(skin_weights), _f32(kp_regressor))


_lbs_op = _batched_op(_ffi_call, _reference_batched, 3, MIN_KERNEL_BATCH)


def _fused(*args):
  kernel = lambda *a: _unbatched(_lbs_op, a[:3], a[3:])
  return jax.lax.platform_dependent(*args, cpu=kernel, default=_reference)


_pose_vertices = jax.custom_vjp(_fused)


def _pose_vertices_fwd(*primals):
  args = tuple(None if p is None else p.value for p in primals)
  out = _fused(*args)
  return out, (args, out[0])


def _pose_vertices_bwd(residuals, cotangents):
  """XLA backward: `_skin_bwd` plus the blends' and keypoints' VJPs."""
  args, vertices = residuals
  (betas, transforms, features, posedirs, v_template, shapedirs, skin_indices,
   skin_weights, kp_regressor) = args
  d_vertices, d_keypoints = cotangents
  zero = lambda x: isinstance(x, jax.custom_derivatives.SymbolicZero)
  d_vertices = jnp.zeros_like(vertices) if zero(d_vertices) else d_vertices
  if zero(d_keypoints):  # e.g. a loss on vertices only: skip the GEMM
    d_keypoints = jnp.zeros(d_keypoints.shape, d_keypoints.dtype)
  else:  # + (d_kp^T @ R)^T: under vmap a [B * 3, Kp] @ [Kp, V] GEMM
    d_vertices = d_vertices + (d_keypoints.T @ kp_regressor).T
  rest = _rest_vertices(betas, features, posedirs, v_template, shapedirs)
  d_rest, d_transforms, _, d_weights = _skin_bwd(
      (rest, transforms, skin_indices, skin_weights), d_vertices)
  d_flat = d_rest.reshape(-1)  # [V * 3]; the blends' VJPs are GEMMs too
  d_pose = (None, None) if features is None else (
      d_flat @ posedirs.T, features[:, None] * d_flat)
  return (d_flat @ shapedirs.reshape(d_flat.shape[0], -1), d_transforms,
          *d_pose, d_rest, d_rest[:, :, None] * betas, None, d_weights,
          d_keypoints @ vertices.T)


_pose_vertices.defvjp(_pose_vertices_fwd, _pose_vertices_bwd, symbolic_zeros=True)


def pose_vertices(betas: jax.Array, transforms: jax.Array,
                  pose_features: Optional[jax.Array],
                  posedirs: Optional[jax.Array], v_template: jax.Array,
                  shapedirs: jax.Array, skin_indices: jax.Array,
                  skin_weights: jax.Array, kp_regressor: jax.Array,
                  impl: str = "auto") -> Tuple[jax.Array, jax.Array]:
  """Shaped (and pose-corrected) skinned vertices and keypoints (unbatched).

  `vertices = skin(v_template + shapedirs @ betas + pose_features @ posedirs,
  transforms)`, `keypoints = kp_regressor @ vertices`.

  Args:
    betas: `[S]` shape coefficients.
    transforms: `[J, 3, 4]` skinning transforms (`skinning_transforms`).
    pose_features: `[P]` pose-corrective features, or None (no posedirs).
    posedirs: `[P, V * 3]`, or None; v_template: `[V, 3]`; shapedirs:
      `[V, 3, S]`; skin_indices and skin_weights: `[V, K]`; kp_regressor:
      `[Kp, V]` (the model's arrays).
    impl: `"auto"` (the fused kernel on CPU when `available()`, else XLA),
      `"kernel"` (raise if unavailable) or `"xla"` (always the XLA path).

  Returns:
    `(vertices [V, 3], keypoints [Kp, 3])`. Under `vmap` (model arrays
    unbatched) the kernel runs once per batch; the backward is XLA.
  """
  fn = _pose_vertices if _use_kernel(impl) else _reference
  return fn(betas, transforms, pose_features, posedirs, v_template, shapedirs,
            skin_indices, skin_weights, kp_regressor)


def main(argv=None):
  parser = argparse.ArgumentParser(description="Builds the CPU LBS kernel.")
  parser.add_argument("--build", action="store_true",
                      help="build if missing (a failure is reported, not raised)")
  parser.add_argument("--force", action="store_true", help="always recompile")
  if parser.parse_args(argv).force:
    build(force=True)
  print(f"[lbs_kernel] {info()}")


if __name__ == "__main__":
  main()
