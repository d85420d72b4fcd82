"""The CPU kernels as XLA FFI custom calls: batching rules and dispatch.

`model.forward` calls `fk_transforms` (rest joints + FK + skinning transforms)
and `pose_vertices` (shape/pose blend + sparse skinning + keypoints). On CPU,
when the library of `build.py` is available, each is one custom call for the
whole `vmap`ped batch (`csrc/fk_kernel.cc`; `csrc/lbs_kernel.cc`: SIMD over
blocks of bodies, both cores, writes only its outputs). The skinning's
backward w.r.t. the per-body inputs is a custom call too
(`csrc/lbs_backward.cc`: no `[B, 12, V]` intermediate, only the keypoint
regressor's vertices when the vertices get no cotangent, no regressor work
when the keypoints get none), and so is the FK's (`csrc/fk_kernel.cc`: one
walk of the tree per body instead of ~100 tiny XLA ops); the model arrays'
cotangents are XLA.
Elsewhere (GPU/TPU, no kernel, `FLOWPOSE_LBS_KERNEL=0`, `impl="xla"`) the pure
reference of `flowpose.body.lbs` runs; it is also what the kernels are tested
against. `impl`: `"auto"` (the kernel on CPU when `available()`), `"kernel"`
(raise if unavailable) or `"xla"`.
"""

import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from flowpose.body import lbs
from flowpose.body.cpu_kernel import build

IMPLS = ("auto", "kernel", "xla")
# Below this many bodies per call the skinning kernel's fixed cost (keypoint
# index, thread hand-off, padding) exceeds XLA's time, so XLA skins them.
MIN_KERNEL_BATCH = 4


def use_kernel(impl: str) -> bool:
  """Whether `impl` selects the kernel here; raises on a bad or unmet `impl`."""
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  if impl == "kernel" and not build.available():
    raise build.KernelBuildError(
        f"CPU skinning kernel unavailable: {build.info()}")
  return impl != "xla" and build.available()


# ---------------------------------------------------------------------------
# Batching: one custom call per vmapped batch
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


_f32 = lambda x: jnp.asarray(x, jnp.float32)


def _ffi(target, out_shapes, *args):
  out = tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in out_shapes)
  return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*args)


# ---------------------------------------------------------------------------
# Forward kinematics and skinning transforms
# ---------------------------------------------------------------------------


def fk_call(rotmats, betas, transl, parents, j_regressor, v_template,
            shapedirs):
  """The FK custom call on `N` bodies: `rotmats [N, J, 3, 3]`, `betas [N, S]`,
  `transl [N, 3]`, `parents` int32 `[J]`; outputs as `_posed_transforms_and_basis`
  with a leading `[N]`."""
  num, num_joints = rotmats.shape[:2]
  num_basis = betas.shape[-1] + 1
  return _ffi(build.FK_TARGET, [(num, num_joints, 3, 4), (num, num_joints, 3),
                                (num, num_joints, 3, 3), (num, num_joints, 3, num_basis)],
              _f32(rotmats), _f32(betas), _f32(transl), parents,
              _f32(j_regressor), _f32(v_template), _f32(shapedirs))


def fk_transforms(parents: Tuple[int, ...], rotmats: jax.Array,
                  betas: jax.Array, transl: jax.Array, j_regressor: jax.Array,
                  v_template: jax.Array, shapedirs: jax.Array,
                  fk_method: str = "levels", impl: str = "auto"):
  """Rest joints, FK and skinning transforms (unbatched; `vmap` it).

  Args:
    parents: the static kinematic tree (`parents[j] < j`).
    rotmats, betas, transl, j_regressor, v_template, shapedirs: `[J, 3, 3]`,
      `[S]`, `[3]`, `[J, V]`, `[V, 3]`, `[V, 3, S]`.
    fk_method: the XLA path's FK (`lbs.forward_kinematics`); the kernel
      composes the tree joint by joint.
    impl: `"auto"`, `"kernel"` or `"xla"` (module docstring).

  Returns:
    `(transforms [J, 3, 4], joints [J, 3], joint_rotmats [J, 3, 3])` as
    `lbs.posed_transforms`, whose VJP is the backward.
  """
  reference = functools.partial(lbs.posed_transforms, tuple(parents),
                                fk_method)
  args = (rotmats, betas, transl, j_regressor, v_template, shapedirs)
  if not use_kernel(impl):
    return reference(*args)
  parents_array = np.asarray(parents, np.int32)  # a constant, not a tracer
  with_basis = functools.partial(_posed_transforms_and_basis, tuple(parents), fk_method)
  ref_batched = lambda r, b, t, _, *model: jax.vmap(
      with_basis, (0, 0, 0, None, None, None))(r, b, t, *model)
  op = _batched_op(fk_call, ref_batched, 3)
  kernel = lambda *a: _unbatched(op, a[:3], (parents_array,) + a[3:])
  both = lambda *a: jax.lax.platform_dependent(*a, cpu=kernel, default=with_basis)
  fk = jax.custom_vjp(lambda *a: both(*a)[:3])

  def fk_fwd(*a):
    outs = both(*a)
    return outs[:3], (a, outs[3])

  def fk_bwd(res, cts):
    (rot, betas, transl, j_regressor, v_template, shapedirs), basis = res
    # One custom call on CPU (XLA's FK backward is ~100 tiny ops: ~3 ms of a B = 64 forward +
    # backward, WORKSPACE.md issue 15); the betas cotangent from the forward's joint basis (no
    # dense [J, V] @ [V, 3 S] per call). The model arrays' cotangents stay XLA's (dropped when
    # nothing asks for them).
    reference = functools.partial(fk_backward_reference, tuple(parents), fk_method)
    kernel = lambda *a: _unbatched(bwd_op, a, (parents_array,))
    d_rot, d_betas, d_transl, d_rest = jax.lax.platform_dependent(
        rot, betas, basis, *cts, cpu=kernel, default=reference)
    d_model = jax.vjp(lbs.joint_basis, j_regressor, v_template, shapedirs)[1](
        (d_rest, d_rest[..., None] * betas))
    return (d_rot, d_betas, d_transl) + tuple(d_model)

  bwd_op = _batched_op(fk_backward_call, lambda *a: jax.vmap(
      functools.partial(fk_backward_reference, tuple(parents), fk_method))(*a[:-1]), 6)
  fk.defvjp(fk_fwd, fk_bwd)
  return fk(*args)


def fk_backward_call(rotmats, betas, basis, d_transforms, d_joints, d_joint_rotmats,
                     parents):
  """The FK backward custom call on `N` bodies (`csrc/fk_kernel.cc`).

  Args:
    rotmats, betas: `[N, J, 3, 3]`, `[N, S]` (the forward's inputs).
    basis: `[N, J, 3, S + 1]`, the forward's joint basis output.
    d_transforms, d_joints, d_joint_rotmats: `[N, J, 3, 4]`, `[N, J, 3]`,
      `[N, J, 3, 3]` cotangents of the forward's outputs.
    parents: int32 `[J]`.

  Returns:
    `(d_rotmats [N, J, 3, 3], d_betas [N, S], d_transl [N, 3], d_rest [N, J, 3])`
    as `fk_backward_reference` (`d_rest`: of the rest joints).
  """
  num, num_joints = rotmats.shape[:2]
  return _ffi(build.FK_BWD_TARGET, [(num, num_joints, 3, 3), (num, betas.shape[-1]),
                                    (num, 3), (num, num_joints, 3)],
              _f32(rotmats), _f32(betas), parents, _f32(basis), _f32(d_transforms),
              _f32(d_joints), _f32(d_joint_rotmats))


def fk_backward_reference(parents, fk_method, rotmats, betas, basis, d_transforms, d_joints,
                          d_joint_rotmats):
  """XLA twin of `fk_backward_call` on one body (unbatched shapes, no `parents` array)."""
  rest = basis[..., 0] + basis[..., 1:] @ betas
  from_rest = functools.partial(_transforms_from_rest, tuple(parents), fk_method)
  d_rot, d_rest, d_transl = jax.vjp(from_rest, rotmats, rest, jnp.zeros(3, rest.dtype))[1](
      (d_transforms, d_joints, d_joint_rotmats))
  return d_rot, jnp.einsum("jcs,jc->s", basis[..., 1:], d_rest), d_transl, d_rest


def _transforms_from_rest(parents, fk_method, rotmats, rest_joints, transl):
  """`lbs.posed_transforms` after its rest joints `[J, 3]`."""
  global_rot, global_pos = lbs.forward_kinematics(parents, rotmats, rest_joints, fk_method)
  transforms = lbs.skinning_transforms(global_rot, global_pos, rest_joints)
  return transforms.at[:, :, 3].add(transl), global_pos + transl, global_rot


def _posed_transforms_and_basis(parents, fk_method, rotmats, betas, transl, j_regressor,
                                v_template, shapedirs):
  """`lbs.posed_transforms` and the joint basis `[J, 3, S + 1]` (`[j_template | j_shapedirs]`,
  the FK kernel's fourth output)."""
  j_template, j_shapedirs = lbs.joint_basis(j_regressor, v_template, shapedirs)
  rest = j_template + j_shapedirs @ betas
  return _transforms_from_rest(parents, fk_method, rotmats, rest, transl) + (
      jnp.concatenate([j_template[..., None], j_shapedirs], -1),)


# ---------------------------------------------------------------------------
# Shape blend + skinning + keypoints
# ---------------------------------------------------------------------------


def lbs_call(betas, transforms, pose_features, posedirs, v_template,
             shapedirs, skin_indices, skin_weights, kp_regressor):
  """The skinning custom call on `N` bodies: `betas [N, S]`, `transforms
  [N, J, 3, 4]`, `pose_features [N, P]` or None; same outputs as
  `lbs.pose_vertices_batched`."""
  num = betas.shape[0]
  empty = jnp.zeros((0,), jnp.float32)
  return _ffi(build.LBS_TARGET, [(num, v_template.shape[0], 3),
                                 (num, kp_regressor.shape[0], 3)],
              _f32(betas), _f32(transforms),
              empty if pose_features is None else _f32(pose_features),
              empty if posedirs is None else _f32(posedirs), _f32(v_template),
              _f32(shapedirs), jnp.asarray(skin_indices, jnp.int32),
              _f32(skin_weights), _f32(kp_regressor))


_lbs_op = _batched_op(lbs_call, lbs.pose_vertices_batched, 3, MIN_KERNEL_BATCH)


def _fused(*args):
  kernel = lambda *a: _unbatched(_lbs_op, a[:3], a[3:])
  return jax.lax.platform_dependent(*args, cpu=kernel,
                                    default=lbs.pose_vertices)


_pose_vertices = jax.custom_vjp(_fused)


def _pose_vertices_fwd(*primals):
  args = tuple(None if p is None else p.value for p in primals)
  out = _fused(*args)
  return out, (args, out[0])


def lbs_backward_call(betas, transforms, pose_features, d_vertices,
                      d_keypoints, posedirs, v_template, shapedirs,
                      skin_indices, skin_weights, kp_regressor):
  """The backward custom call on `N` bodies (`csrc/lbs_backward.cc`).

  Args:
    betas, transforms, pose_features: as `lbs_call` (`[N, S]`, `[N, J, 3, 4]`,
      `[N, P]` or None).
    d_vertices: `[N, V, 3]` cotangent of the vertices, or None (zero: only
      the keypoint regressor's vertices are visited).
    d_keypoints: `[N, Kp, 3]` cotangent of the keypoints, or None (zero: the
      regressor is not read). Not both None.
    posedirs .. kp_regressor: the model's arrays, as `lbs_call`.

  Returns:
    `(d_betas [N, S], d_transforms [N, J, 3, 4], d_features [N, max(P, 1)])`
    (zeros without pose features), as `backward_reference`.
  """
  num, num_joints = transforms.shape[:2]
  empty = jnp.zeros((0,), jnp.float32)
  num_features = 0 if pose_features is None else pose_features.shape[-1]
  return _ffi(build.LBS_BWD_TARGET,
              [(num, betas.shape[-1]), (num, num_joints, 3, 4),
               (num, max(num_features, 1))],
              _f32(betas), _f32(transforms),
              empty if pose_features is None else _f32(pose_features),
              empty if d_vertices is None else _f32(d_vertices),
              empty if d_keypoints is None else _f32(d_keypoints),
              empty if posedirs is None else _f32(posedirs), _f32(v_template),
              _f32(shapedirs), jnp.asarray(skin_indices, jnp.int32),
              _f32(skin_weights), _f32(kp_regressor))


def _vertex_cotangent(d_vertices, d_keypoints, kp_regressor):
  """`d_vertices + kp_regressor^T d_keypoints` `[V, 3]` (either may be None, not both)."""
  if d_keypoints is None:
    return d_vertices
  # (d_kp^T @ R)^T: under vmap a [B * 3, Kp] @ [Kp, V] GEMM.
  d_all = (d_keypoints.T @ kp_regressor).T
  return d_all if d_vertices is None else d_all + d_vertices


def backward_reference(betas, transforms, pose_features, d_vertices,
                       d_keypoints, posedirs, v_template, shapedirs,
                       skin_indices, skin_weights, kp_regressor):
  """XLA twin of `lbs_backward_call` on one body (unbatched shapes)."""
  d_all = _vertex_cotangent(d_vertices, d_keypoints, kp_regressor)
  rest = lbs.blend_shapes(betas, pose_features, posedirs, v_template,
                          shapedirs)
  d_rest, d_transforms, _ = lbs.skin_backward(rest, transforms, skin_indices,
                                              skin_weights, d_all)
  d_flat = d_rest.reshape(-1)  # [V * 3]; the blends' VJPs are GEMMs
  d_features = (jnp.zeros((1,), d_flat.dtype) if pose_features is None else
                d_flat @ posedirs.T)
  return (d_flat @ shapedirs.reshape(d_flat.shape[0], -1), d_transforms,
          d_features)


_backward_op = _batched_op(
    lbs_backward_call,
    jax.vmap(backward_reference, (0, 0, 0, 0, 0) + (None,) * 6),
    5, MIN_KERNEL_BATCH)


def _body_cotangents(*args):
  """`(d_betas, d_transforms, d_features)`: the kernel on CPU, else XLA."""
  kernel = lambda *a: _unbatched(_backward_op, a[:5], a[5:])
  return jax.lax.platform_dependent(*args, cpu=kernel,
                                    default=backward_reference)


def _pose_vertices_bwd(residuals, cotangents):
  """Per-body cotangents from `_body_cotangents` (the backward kernel on
  CPU); the model arrays' (rarely wanted: XLA drops them unless asked) from
  `lbs.skin_backward` plus the blends' and keypoints' VJPs."""
  args, vertices = residuals
  (betas, transforms, features, posedirs, v_template, shapedirs, skin_indices,
   skin_weights, kp_regressor) = args
  d_vertices, d_keypoints = cotangents
  zero = lambda x: isinstance(x, jax.custom_derivatives.SymbolicZero)
  d_vertices = None if zero(d_vertices) else d_vertices
  d_keypoints = None if zero(d_keypoints) else d_keypoints
  if d_vertices is None and d_keypoints is None:  # nothing reaches the inputs
    d_keypoints = jnp.zeros(cotangents[1].shape, cotangents[1].dtype)
  d_betas, d_transforms, d_features = _body_cotangents(
      betas, transforms, features, d_vertices, d_keypoints, posedirs,
      v_template, shapedirs, skin_indices, skin_weights, kp_regressor)
  # The model arrays' cotangents, in XLA.
  d_all = _vertex_cotangent(d_vertices, d_keypoints, kp_regressor)
  rest = lbs.blend_shapes(betas, features, posedirs, v_template, shapedirs)
  d_rest, _, d_weights = lbs.skin_backward(rest, transforms, skin_indices,
                                           skin_weights, d_all)
  d_pose = (None, None) if features is None else (
      d_features, features[:, None] * d_rest.reshape(-1))
  return (d_betas, d_transforms, *d_pose, d_rest, d_rest[:, :, None] * betas,
          None, d_weights, None if d_keypoints is None else d_keypoints @ vertices.T)


_pose_vertices.defvjp(_pose_vertices_fwd, _pose_vertices_bwd,
                      symbolic_zeros=True)


def pose_vertices(betas: jax.Array, transforms: jax.Array,
                  pose_features: Optional[jax.Array],
                  posedirs: Optional[jax.Array], v_template: jax.Array,
                  shapedirs: jax.Array, skin_indices: jax.Array,
                  skin_weights: jax.Array, kp_regressor: jax.Array,
                  impl: str = "auto") -> Tuple[jax.Array, jax.Array]:
  """Shaped (and pose-corrected) skinned vertices and keypoints (unbatched).

  `vertices = skin(v_template + shapedirs @ betas + pose_features @ posedirs,
  transforms)`, `keypoints = kp_regressor @ vertices` (`lbs.pose_vertices`).

  Args:
    betas: `[S]` shape coefficients.
    transforms: `[J, 3, 4]` skinning transforms (`lbs.skinning_transforms`).
    pose_features: `[P]` pose-corrective features, or None (no posedirs).
    posedirs: `[P, V * 3]`, or None; v_template: `[V, 3]`; shapedirs:
      `[V, 3, S]`; skin_indices and skin_weights: `[V, K]`; kp_regressor:
      `[Kp, V]` (the model's arrays).
    impl: `"auto"`, `"kernel"` or `"xla"` (module docstring).

  Returns:
    `(vertices [V, 3], keypoints [Kp, 3])`. Under `vmap` (model arrays
    unbatched) the kernel runs once per batch, and so does its backward.
  """
  fn = _pose_vertices if use_kernel(impl) else lbs.pose_vertices
  return fn(betas, transforms, pose_features, posedirs, v_template, shapedirs,
            skin_indices, skin_weights, kp_regressor)
