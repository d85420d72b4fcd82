r"""Pictures of `cmu_evidence` examples: clean evidence beside what training sees.

    python -m flowpose.data.tfds.cmu_evidence.preview --out=evidence.png \
        [--data.manual_dir=FOLDER] [--data.resolution=64] [--split=validation] [--num=8]

Each example gives three panels (upscaled `--scale` times, nearest neighbour): the stored part
map with the visible keypoints (skeleton), the corrupted part map with the keypoints of
non-zero confidence, and the corrupted mask with the sampled part pixels. The data are prepared
on first use (as training does). Bad flags: one line naming the flag, exit 1, nothing written.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from flowpose import io_utils
from flowpose.data import evidence

_DATA = config_flags.DEFINE_config_dict("data", evidence.default_config(),
                                        "config.data of the regressor (data.evidence).")
_OUT = flags.DEFINE_string("out", None, "PNG to write.")
_SPLIT = flags.DEFINE_string("split", "validation", "Split to show.")
_NUM = flags.DEFINE_integer("num", 8, "Examples to show.")
_SCALE = flags.DEFINE_integer("scale", 4, "Upscaling of the R x R maps.")


def panels(batch: dict, index: int, scale: int, num_parts: int) -> list:
  """Three [R*scale, R*scale, 3] uint8 panels of example `index` of a corrupted batch."""
  from flowpose.viz import images as viz  # pylint: disable=g-import-not-at-top
  palette = np.concatenate([[[255, 255, 255]], viz.part_palette(num_parts)]).astype(np.uint8)
  up = lambda m: np.repeat(np.repeat(m, scale, 0), scale, 1)
  centre = lambda uv: np.asarray(uv) * scale  # Corner-origin pixels scale exactly.
  clean = viz.draw_keypoints(up(palette[batch["part_map_clean"][index]]),
                             centre(batch["keypoints_clean"][index]),
                             visible=batch["visible"][index] > 0, radius=2, width=1)
  noisy = viz.draw_keypoints(up(palette[batch["part_map"][index]]),
                             centre(batch["keypoints"][index]),
                             visible=batch["confidence"][index] > 0, radius=2, width=1)
  mask = up(np.where(batch["mask"][index][..., None] > 0, 200, 255).astype(np.uint8)
            .repeat(3, -1))
  valid = batch["part_valid"][index]
  colors = palette[batch["part_labels"][index][valid] + 1]
  mask = viz.draw_points(mask, centre(batch["part_pixels"][index][valid]), colors=colors,
                         radius=1)
  return [clean, noisy, mask]


def write_preview(data_config, split: str, num: int, out: str, scale: int = 4) -> None:
  """Writes the picture of the first `num` examples of `split` (eval corruption) to `out`."""
  from flowpose.body.build import assets  # pylint: disable=g-import-not-at-top
  from flowpose.viz import images as viz  # pylint: disable=g-import-not-at-top
  clean_ds = evidence.examples(data_config, split)[0].batch(num)
  clean = next(clean_ds.as_numpy_iterator())
  batch = next(evidence.eval_dataset(data_config, split, num).as_numpy_iterator())
  batch["part_map_clean"] = clean["part_map"]
  num_parts = len(assets.load_cc0_model().part_names)
  tiles, captions = [], []
  for i in range(min(num, int(batch["weight"].sum()))):
    tiles += panels(batch, i, scale, num_parts)
    name = f"{batch['clip'][i].decode()}/{int(batch['frame'][i])}/{int(batch['view'][i])}"
    captions += [f"{name} clean", "corrupted", "mask + part pixels"]
  viz.save_png(out, viz.image_grid(tiles, captions, num_cols=6, font_size=11))


def main(argv):
  del argv
  try:
    if not _OUT.value:
      raise ValueError("--out: expected a PNG path")
    if _NUM.value < 1 or _SCALE.value < 1:
      raise ValueError("--num, --scale: expected ints >= 1")
    io_utils.require_output_path(_OUT.value, "--out", is_dir=False)
    evidence.validate(_DATA.value)
    write_preview(_DATA.value, _SPLIT.value, _NUM.value, _OUT.value, _SCALE.value)
  except (ValueError, FileNotFoundError) as e:  # OutputPathError is a ValueError.
    print(f"preview: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
