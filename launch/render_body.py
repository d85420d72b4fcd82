r"""Renders PNGs of the CC0 body model: rest pose parts, random shapes, joints and keypoints.

  python -m launch.render_body --out_dir /tmp/body_png [--num_shapes 4] [--size 512] [--seed 0]

`--num_shapes` must be >= 1 (0 would leave out `shapes.png`, so it is refused, not skipped);
`--out_dir` is checked writable before anything is rendered.

Writes into `--out_dir` (each file written atomically):
  rest_front.png        rest pose, mean shape, parts coloured, seen from the front (+Z);
  rest_side.png         the same seen from the body's right side (-X; the body faces right);
  parts_legend.png      part colour legend;
  shapes.png            `num_shapes` random shapes (betas ~ N(0, 1), `--seed`), front row and
                        side row, one shared camera per row so heights compare;
  joints_keypoints.png  front view with the joints + bones (left) and the COCO-17 keypoints +
                        limbs (right) drawn over a faded mesh; body left = blue, right = orange;
  overview.png          one row: rest front, rest side, legend, joints, keypoints.
Front views are not mirrored: the body's left side (+X) appears on the image's right.
"""

import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from absl import logging

from flowpose import io_utils
from flowpose.evidence import raster
from flowpose.viz import images as viz

FRONT = (0.0, 0.0, 1.0)  # The body faces +Z.
RIGHT_SIDE = (-1.0, 0.0, 0.0)  # The body's right side is -X.
SKIN = (0.80, 0.72, 0.66)


def _pose(model, betas=None):
  """Rest pose (identity local rotations) at `betas` (default: mean shape) -> numpy output."""
  from flowpose.body import model as body_model  # pylint: disable=g-import-not-at-top
  num_joints = len(model.parents)
  rotmats = jnp.broadcast_to(jnp.eye(3), (num_joints, 3, 3))
  if betas is None:
    betas = jnp.zeros(model.shapedirs.shape[-1])
  out = jax.jit(body_model.forward)(model, rotmats, jnp.asarray(betas, jnp.float32), None)
  return jax.tree.map(np.asarray, out)


def _view(vertices, faces, camera, size, **kwargs) -> raster.Rendering:
  return raster.render(vertices, faces, camera, (size, size), smooth=True, **kwargs)


def render_body_pngs(model, out_dir, num_shapes: int = 4, size: int = 512,
                     seed: int = 0) -> dict[str, pathlib.Path]:
  """Renders the PNG set described in the module docstring.

  Args:
    model: a `flowpose.body.model.BodyModel`.
    out_dir: output directory (created).
    num_shapes: number of random shapes (>= 1).
    size: pixels per view (square).
    seed: seed of the random betas.

  Returns:
    File stem -> path written.

  Raises:
    ValueError: `num_shapes` < 1 (`shapes.png` would be missing).
  """
  if num_shapes < 1:
    raise ValueError(f"render_body: num_shapes must be >= 1 (shapes.png), got {num_shapes}")
  out_dir = pathlib.Path(out_dir)
  faces = np.asarray(model.faces)
  part_labels = np.asarray(model.part_labels)
  palette = viz.part_palette(len(model.part_names))
  written = {}

  def save(name, image):
    written[name] = viz.save_png(out_dir / f"{name}.png", image)
    return image

  # Rest pose, parts coloured.
  rest = _pose(model)
  views = {}
  for name, view_dir in (("rest_front", FRONT), ("rest_side", RIGHT_SIDE)):
    camera = raster.fit_camera(rest.vertices, view_dir, (size, size))
    views[name] = (camera, _view(rest.vertices, faces, camera, size,
                                 vertex_labels=part_labels, label_colors=palette))
    save(name, views[name][1].rgb)
  legend = save("parts_legend", viz.legend(model.part_names, palette,
                                           num_cols=1 if size >= 384 else 2))

  # Random shapes: one camera per row, fitted to all shapes, so relative sizes are kept.
  rng = np.random.default_rng(seed)
  num_betas = model.shapedirs.shape[-1]
  shaped = [_pose(model, rng.standard_normal(num_betas)) for _ in range(num_shapes)]
  cells, captions = [], []
  everything = np.concatenate([s.vertices for s in shaped])
  for view_dir, label in ((FRONT, "front"), (RIGHT_SIDE, "side")):
    camera = raster.fit_camera(everything, view_dir, (size, size))
    for i, s in enumerate(shaped):
      cells.append(_view(s.vertices, faces, camera, size, face_colors=SKIN).rgb)
      height = np.ptp(s.vertices[:, 1])
      captions.append(f"shape {i}, {height:.2f} m" if label == "front" else f"{i} side")
  save("shapes", viz.image_grid(cells, captions, num_cols=num_shapes))

  # Joints and keypoints over the faded front view.
  camera, rendering = views["rest_front"]
  faded = viz.overlay(np.full((size, size, 3), 255, np.uint8),
                      _view(rest.vertices, faces, camera, size, face_colors=SKIN).rgb,
                      alpha=0.45, mask=np.isfinite(rendering.depth))
  radius, width = max(2.0, size / 160), max(1, round(size / 250))
  joints_uv, _ = raster.project(rest.joints, camera)
  with_joints = viz.draw_skeleton(faded, joints_uv, model.parents, names=model.joint_names,
                                  radius=radius, width=width)
  keypoints_uv, _ = raster.project(rest.keypoints, camera)
  with_keypoints = viz.draw_keypoints(
      faded, keypoints_uv, skeleton=viz.skeleton_from_names(model.keypoint_names),
      names=model.keypoint_names, radius=radius, width=width)
  joint_caption = f"{len(model.parents)} joints + bones"
  keypoint_caption = f"{len(model.keypoint_names)} keypoints"
  save("joints_keypoints", viz.image_grid([with_joints, with_keypoints],
                                          [joint_caption, keypoint_caption], num_cols=2))

  overview = [views["rest_front"][1].rgb, views["rest_side"][1].rgb, legend, with_joints,
              with_keypoints]
  save("overview", viz.image_grid(overview, ["rest pose, front", "rest pose, right side",
                                             "parts", joint_caption, keypoint_caption],
                                  num_cols=len(overview)))
  return written


def run(out_dir, num_shapes: int = 4, size: int = 512, seed: int = 0):
  """Checks `out_dir`, loads (building if needed) the CC0 model and renders the PNG set."""
  if num_shapes < 1:
    raise ValueError(f"--num_shapes: must be >= 1 (shapes.png), got {num_shapes}")
  io_utils.require_output_path(out_dir, "--out_dir")
  from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
  model = assets.load_cc0_model()
  written = render_body_pngs(model, out_dir, num_shapes=num_shapes, size=size, seed=seed)
  for path in written.values():
    logging.info("wrote %s", path)
  return written


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this command's flags. Called only when run as a program, so that importing the
  module (tests, notebooks) cannot clash with same-named flags of other launchers."""
  flags.DEFINE_string("out_dir", None, "Directory for the PNG files.", required=True,
                      flag_values=flag_values)
  flags.DEFINE_integer("num_shapes", 4, "Random body shapes to render (>= 1).", lower_bound=1,
                       flag_values=flag_values)
  flags.DEFINE_integer("size", 512, "Height and width of each view in pixels.", lower_bound=16,
                       flag_values=flag_values)
  flags.DEFINE_integer("seed", 0, "Seed for the random shapes.", flag_values=flag_values)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  try:
    run(f.out_dir, num_shapes=f.num_shapes, size=f.size, seed=f.seed)
  except io_utils.OutputPathError as e:
    logging.error("%s", e)
    raise app.UsageError(str(e)) from e


if __name__ == "__main__":
  define_flags()
  app.run(main)
