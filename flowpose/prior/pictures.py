"""Pictures of a trained flow prior: samples and a latent interpolation, posed on the CC0 body.

    samples_path, interpolation_path = render_pictures(workdir, prior, params, poses)

`samples.png`: flow samples (mean shape, root upright, front view, parts coloured);
`interpolation.png`: the straight line in latent space between two evaluation poses.
The body model, rasterizer and image helpers are imported when a picture is drawn.
"""

import math
import os
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from flowpose.prior import charts


@jax.jit
def _posed_vertices(model, rotmats):
  """`[N, V, 3]` vertices of the body `model` at mean shape for local `rotmats [N, J, 3, 3]`."""
  from flowpose.body import model as body_model  # pylint: disable=g-import-not-at-top
  betas = jnp.zeros(model.shapedirs.shape[-1])
  return jax.vmap(lambda r: body_model.forward(model, r, betas, None).vertices)(rotmats)


def _render_poses(dofs: np.ndarray, size: int) -> list:
  """Renders chart poses `[N, D]` on the CC0 body (mean shape, root upright, parts coloured).

  Returns:
    N `[size, size, 3]` uint8 images, front view, each framed on its own mesh.
  """
  from flowpose.evidence import raster as render  # pylint: disable=g-import-not-at-top
  from flowpose.viz import images as viz  # pylint: disable=g-import-not-at-top
  from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
  from flowpose.data import retarget  # pylint: disable=g-import-not-at-top
  model = assets.load_cc0_model()
  # root_rotmat None = CMU root identity: the body stands upright facing +Z (front view).
  rotmats = retarget.pose_dofs_to_body_rotmats(jnp.asarray(dofs, jnp.float32))
  vertices = np.asarray(_posed_vertices(model, rotmats))
  faces = np.asarray(model.faces)
  labels = np.asarray(model.part_labels)
  palette = viz.part_palette(len(model.part_names))
  images = []
  for verts in vertices:
    camera = render.fit_camera(verts, (0.0, 0.0, 1.0), (size, size))
    images.append(render.render(verts, faces, camera, (size, size), vertex_labels=labels,
                                label_colors=palette, smooth=True).rgb)
  return images


def interpolate_latent(prior, params, pose_a: np.ndarray, pose_b: np.ndarray,
                       num_steps: int = 8) -> np.ndarray:
  """`[num_steps, D]` poses along the straight line between the latents of two poses `[D]`."""
  def path(params, ends):
    z = prior.pose_to_latent(params, ends)
    t = jnp.linspace(0.0, 1.0, num_steps)[:, None]
    return prior.latent_to_pose(params, (1.0 - t) * z[0] + t * z[1])

  # Jitted: op-by-op dispatch of a deep flow costs more than compiling it.
  ends = jnp.stack([jnp.asarray(pose_a, jnp.float32), jnp.asarray(pose_b, jnp.float32)])
  return np.asarray(jax.jit(path)(params, ends))


def render_pictures(workdir: str, prior, params, poses: np.ndarray, num_samples: int = 16,
                    num_steps: int = 8, size: int = 192, seed: int = 0) -> Tuple[str, str]:
  """Writes `samples.png` (flow samples) and `interpolation.png` into `workdir`.

  Args:
    workdir: output folder.
    prior, params: the trained prior.
    poses: `[N, D]` evaluation poses; the interpolation runs between two of them (picked
      by `seed`, far apart in the latent space among a few candidates).
    num_samples, num_steps, size: number of samples, interpolation steps, pixels per view.
    seed: sampling seed.

  Returns:
    The two paths.
  """
  from flowpose.viz import images as viz  # pylint: disable=g-import-not-at-top
  samples = np.asarray(jax.jit(prior.sample, static_argnums=2)(
      params, jax.random.key(seed), num_samples))
  # Two distinct poses: the pair farthest apart in z among 16 random candidates, so the
  # strip shows a real transition rather than two near-identical frames.
  rng = np.random.default_rng(seed)
  candidates = np.asarray(poses)[rng.choice(len(poses), min(16, len(poses)), replace=False)]
  z = np.asarray(jax.jit(prior.pose_to_latent)(params, jnp.asarray(candidates)))
  dist = np.sum((z[:, None] - z[None]) ** 2, -1)
  i, j = np.unravel_index(np.argmax(dist), dist.shape)
  path_poses = interpolate_latent(prior, params, candidates[i], candidates[j], num_steps)
  # One posing call for both pictures (one compile).
  poses_dofs = charts.to_dofs(prior.chart, np.concatenate([samples, path_poses]))
  images = _render_poses(np.asarray(poses_dofs), size)
  grid = viz.image_grid(images[:num_samples], [f"sample {k}" for k in range(num_samples)],
                        num_cols=int(math.ceil(math.sqrt(num_samples))))
  samples_path = str(viz.save_png(os.path.join(workdir, "samples.png"), grid))
  strip = viz.image_grid(images[num_samples:],
                         [f"t={t:.2f}" for t in np.linspace(0, 1, num_steps)],
                         num_cols=num_steps)
  interp_path = str(viz.save_png(os.path.join(workdir, "interpolation.png"), strip))
  return samples_path, interp_path
