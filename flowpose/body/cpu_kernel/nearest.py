"""The part term's nearest pairs on CPU: `csrc/nearest_pairs.cc` as one XLA custom call.

    args = nearest.nearest_pair_indices(verts, pixels, vertex_ok, pixel_ok)  # None: no kernel
    pixel_arg, vertex_arg = args  # [..., P, Mp], [..., P, Mv] int32

Per part group, the slot of each pixel's nearest valid vertex and of each vertex's nearest valid
pixel (`losses.part_groups`): the argmins of the `[P, Mp, Mv]` squared distances that XLA
otherwise materialises (and walks ~4 times more in the minimum's VJP) every fitting step. The
caller recomputes the distances on the chosen pairs in XLA, so values and gradients stay XLA's.
CPU only (a custom call, no host callback); elsewhere, without the kernel or with
`FLOWPOSE_LBS_KERNEL=0`, it returns None and the caller keeps its XLA path.
"""

from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from flowpose.body.cpu_kernel import build


def available() -> bool:
  """Whether the kernel runs here: the default backend is CPU and the library loaded."""
  return jax.default_backend() == "cpu" and build.available()


def nearest_pair_indices(verts: jax.Array, pixels: jax.Array, vertex_ok: jax.Array,
                         pixel_ok: jax.Array) -> Optional[Tuple[jax.Array, jax.Array]]:
  """Nearest valid partner slots per group, or None where the kernel is unavailable.

  Args:
    verts: `[..., P, Mv, 2]`; pixels: `[..., P, Mp, 2]` (same leading dims; gradient stopped).
    vertex_ok: `[..., P, Mv]` bool; pixel_ok: `[..., P, Mp]` bool.

  Returns:
    `(pixel_arg [..., P, Mp], vertex_arg [..., P, Mv])` int32: argmin over the valid partners of
    `sum((pixel - vertex)^2)` (float32, ties: the lower slot); 0 for an invalid point or one
    without a valid partner. Under `vmap` one call serves the whole batch.
  """
  if not available():
    return None
  verts = jax.lax.stop_gradient(jnp.asarray(verts, jnp.float32))
  pixels = jax.lax.stop_gradient(jnp.asarray(pixels, jnp.float32))
  out = (jax.ShapeDtypeStruct(pixels.shape[:-1], jnp.int32),
         jax.ShapeDtypeStruct(verts.shape[:-1], jnp.int32))
  return jax.ffi.ffi_call(build.NEAREST_TARGET, out, vmap_method="broadcast_all")(
      verts, pixels, jnp.asarray(vertex_ok, bool), jnp.asarray(pixel_ok, bool))
