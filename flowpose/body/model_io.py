"""Reading and writing `BodyModel` `.npz` files, with validation, and building a
`BodyModel` from arrays (`model_from_arrays`; `sparsify_skin_weights` converts
the dense `[V, J]` weights of other formats to the model's top-K layout).

File layout (format_version 1): one array per `BodyModel` field under the same
name (`parents` as int32 `[J]`, the name tuples as unicode arrays), plus
`format_version` (int, 1) and any extra arrays (the CC0 file carries
`shape_explained_variance`, `metadata_json`, `joint_tails`, `tail_regressor`).
Files are plain numpy zips (no pickles), written atomically and
deterministically (sorted members, fixed timestamps).

Depends on `flowpose.body.model` for `BodyModel` only; `model` does not import
this module (posing needs no files).
"""

import io
import os
import pathlib
import zipfile
from typing import Any, Dict, Tuple, Union

import jax.numpy as jnp
import numpy as np

from flowpose import io_utils
from flowpose.body.model import BodyModel

FORMAT_VERSION = 1
PathLike = Union[str, os.PathLike]

# field -> dtype kind expected in the file ("f" float, "i" integer, "U" text).
_ARRAY_FIELDS = {
    "v_template": "f", "shapedirs": "f", "posedirs": "f", "j_regressor": "f",
    "skin_indices": "i", "skin_weights": "f", "keypoint_regressor": "f",
    "faces": "i", "part_labels": "i",
}
_STATIC_FIELDS = {"parents": "i", "joint_names": "U", "part_names": "U",
                  "keypoint_names": "U"}
_RESERVED = set(_ARRAY_FIELDS) | set(_STATIC_FIELDS) | {"format_version"}
_WEIGHT_SUM_TOL = 1e-4
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class BodyModelError(ValueError):
  """A body-model file (or array) is missing, malformed or inconsistent."""


def _kind_ok(array: np.ndarray, kind: str) -> bool:
  if kind == "f":
    return array.dtype.kind == "f"
  if kind == "i":
    return array.dtype.kind in "iu"
  return array.dtype.kind == "U"


def validate_arrays(arrays: Dict[str, np.ndarray], source: str = "<arrays>"):
  """Checks a dict of body-model arrays; raises `BodyModelError` if invalid.

  Checks presence, dtype kind, rank and shape (one consistent V, J, S, K, Kp,
  F across fields), finiteness, the kinematic tree (`parents[0] = -1`,
  `0 <= parents[i] < i`), index ranges (skin indices, faces, part labels),
  non-negative skin weights whose rows sum to 1, and `posedirs` rows
  (0 or `9 (J - 1)`).

  Args:
    arrays: field name -> numpy array (extra keys are ignored).
    source: file name used in error messages.
  """
  def fail(field, expected, got):
    raise BodyModelError(f"{source}: field {field!r}: expected {expected}, "
                         f"got {got}")

  for field, kind in {**_ARRAY_FIELDS, **_STATIC_FIELDS}.items():
    if field not in arrays:
      fail(field, "an array", "nothing (missing)")
    if not _kind_ok(arrays[field], kind):
      fail(field, {"f": "a float", "i": "an integer", "U": "a str"}[kind] +
           " array", f"dtype {arrays[field].dtype}")
  # Ranks first, so the sizes below are well defined.
  ranks = {"v_template": 2, "shapedirs": 3, "posedirs": 2, "j_regressor": 2,
           "skin_indices": 2, "skin_weights": 2, "keypoint_regressor": 2,
           "faces": 2, "part_labels": 1, "parents": 1, "joint_names": 1,
           "part_names": 1, "keypoint_names": 1}
  for field, rank in ranks.items():
    if arrays[field].ndim != rank:
      fail(field, f"rank {rank}", f"shape {arrays[field].shape}")
  num_v = arrays["v_template"].shape[0]
  num_j = arrays["parents"].shape[0]
  num_s = arrays["shapedirs"].shape[2]
  num_k = arrays["skin_indices"].shape[1]
  num_kp = arrays["keypoint_regressor"].shape[0]
  expected = {
      "v_template": (num_v, 3), "shapedirs": (num_v, 3, num_s),
      "j_regressor": (num_j, num_v), "skin_indices": (num_v, num_k),
      "skin_weights": (num_v, num_k), "keypoint_regressor": (num_kp, num_v),
      "faces": (arrays["faces"].shape[0], 3), "part_labels": (num_v,),
      "joint_names": (num_j,), "keypoint_names": (num_kp,),
  }
  for field, shape in expected.items():
    if arrays[field].shape != shape:
      fail(field, f"shape {shape} (V={num_v}, J={num_j}, S={num_s}, "
           f"K={num_k}, Kp={num_kp})", f"shape {arrays[field].shape}")
  num_p = arrays["posedirs"].shape[0]
  if num_p not in (0, 9 * (num_j - 1)) or (
      arrays["posedirs"].shape[1] != num_v * 3):
    fail("posedirs", f"shape (0 or {9 * (num_j - 1)}, {num_v * 3})",
         f"shape {arrays['posedirs'].shape}")
  if num_j < 1 or num_k < 1:
    fail("parents" if num_j < 1 else "skin_indices", "at least one joint/"
         "weight per vertex", "none")
  for field, kind in _ARRAY_FIELDS.items():
    if kind == "f" and not np.all(np.isfinite(arrays[field])):
      fail(field, "finite values", "NaN or inf")
  parents = arrays["parents"].astype(np.int64)
  if parents[0] != -1 or np.any(parents[1:] < 0) or np.any(
      parents[1:] >= np.arange(1, num_j)):
    bad = [i for i, p in enumerate(parents)
           if (i == 0 and p != -1) or (i > 0 and not 0 <= p < i)]
    fail("parents", "a topologically ordered tree (parents[0] = -1, "
         "0 <= parents[i] < i)", f"bad entries at joints {bad[:10]}")

  def check_range(field, high):
    values = arrays[field]
    if values.size and (values.min() < 0 or values.max() >= high):
      fail(field, f"indices in [0, {high})",
           f"range [{values.min()}, {values.max()}]")
  check_range("skin_indices", num_j)
  check_range("faces", num_v)
  check_range("part_labels", max(len(arrays["part_names"]), 1))
  weights = arrays["skin_weights"]
  if np.any(weights < -1e-6):
    fail("skin_weights", "non-negative weights", f"min {weights.min()}")
  sums = weights.astype(np.float64).sum(axis=1)
  worst = int(np.argmax(np.abs(sums - 1.0))) if num_v else 0
  if num_v and abs(sums[worst] - 1.0) > _WEIGHT_SUM_TOL:
    fail("skin_weights", "rows summing to 1",
         f"row {worst} sums to {sums[worst]:.6g}")


def model_from_arrays(arrays: Dict[str, np.ndarray],
                      source: str = "<arrays>") -> BodyModel:
  """Validates arrays and builds a `BodyModel` (float32 / int32 arrays)."""
  validate_arrays(arrays, source)
  fields = {
      name: jnp.asarray(arrays[name],
                        jnp.float32 if kind == "f" else jnp.int32)
      for name, kind in _ARRAY_FIELDS.items()
  }
  names = {name: tuple(str(s) for s in arrays[name])
           for name in ("joint_names", "part_names", "keypoint_names")}
  return BodyModel(
      parents=tuple(int(p) for p in arrays["parents"]), **fields, **names)


def _read_npz(path: PathLike) -> Dict[str, np.ndarray]:
  path = pathlib.Path(path)
  if not path.is_file():
    raise BodyModelError(f"{path}: no such body-model file")
  try:
    with np.load(path, allow_pickle=False) as npz:
      return {key: npz[key] for key in npz.files}
  except ValueError as e:
    if "pickle" in str(e):
      raise BodyModelError(
          f"{path}: contains pickled Python objects (e.g. chumpy arrays); "
          "re-save it with plain numpy arrays") from e
    raise BodyModelError(f"{path}: not a readable .npz file ({e})") from e
  except (OSError, zipfile.BadZipFile, EOFError) as e:
    raise BodyModelError(f"{path}: not a readable .npz file ({e})") from e


def load_model(path: PathLike) -> BodyModel:
  """Loads and validates a body-model `.npz` written by `save_model`.

  Raises:
    BodyModelError: naming the file and the offending field.
  """
  arrays = _read_npz(path)
  if "format_version" not in arrays:
    raise BodyModelError(f"{path}: field 'format_version': expected "
                         f"{FORMAT_VERSION}, got nothing (missing)")
  version = arrays["format_version"]
  if version.size != 1 or version.dtype.kind not in "iu" or (
      int(version.reshape(())) != FORMAT_VERSION):
    raise BodyModelError(f"{path}: field 'format_version': expected "
                         f"{FORMAT_VERSION}, got {version!r}")
  return model_from_arrays(arrays, str(path))


def load_extras(path: PathLike) -> Dict[str, Any]:
  """The file's arrays that are not `BodyModel` fields.

  Returns:
    name -> numpy array; 0-d text arrays (e.g. `metadata_json`) become str.
  """
  extras = {}
  for key, value in _read_npz(path).items():
    if key in _RESERVED:
      continue
    extras[key] = str(value) if value.dtype.kind == "U" and not value.shape \
        else value
  return extras


def model_to_arrays(model: BodyModel) -> Dict[str, np.ndarray]:
  """`BodyModel` -> dict of numpy arrays in the file layout."""
  arrays = {name: np.asarray(getattr(model, name)) for name in _ARRAY_FIELDS}
  arrays["parents"] = np.asarray(model.parents, np.int32)
  for name in ("joint_names", "part_names", "keypoint_names"):
    arrays[name] = np.asarray(getattr(model, name), dtype=np.str_).reshape(-1)
  return arrays


def save_model(model: BodyModel, path: PathLike, **extra_arrays: Any) -> pathlib.Path:
  """Writes `model` (+ extra arrays, e.g. `metadata_json="..."`) atomically.

  The output is deterministic: members are sorted and time-stamped 1980-01-01,
  so the same model gives the same bytes.

  Raises:
    BodyModelError: if the model is invalid or an extra name is reserved.
  """
  path = pathlib.Path(path)
  clash = sorted(_RESERVED.intersection(extra_arrays))
  if clash:
    raise BodyModelError(f"{path}: extra arrays {clash} clash with model "
                         "fields")
  arrays = model_to_arrays(model)
  validate_arrays(arrays, str(path))
  arrays["format_version"] = np.asarray(FORMAT_VERSION, np.int64)
  for key, value in extra_arrays.items():
    arrays[key] = np.asarray(value)
    if arrays[key].dtype.kind == "O":
      raise BodyModelError(f"{path}: extra array {key!r} has dtype object")
  with io_utils.atomic_open(path) as f:
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
      for key in sorted(arrays):
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.asarray(arrays[key]),
                                  allow_pickle=False)
        info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_DATE)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        zf.writestr(info, buf.getvalue())
  return path


# ---------------------------------------------------------------------------
# Dense skinning weights (other formats) -> the model's sparse top-K layout
# ---------------------------------------------------------------------------


def sparsify_skin_weights(weights: np.ndarray, k: int = 4
                          ) -> Tuple[np.ndarray, np.ndarray, float]:
  """Keeps the `k` largest weights per vertex and renormalises them.

  Args:
    weights: `[V, J]` dense non-negative weights (rows sum to ~1).
    k: weights kept per vertex (clipped to J).

  Returns:
    `(indices [V, k] int32, weights [V, k] float32, max_dropped)` where
    `max_dropped` is the largest weight discarded (0 when nothing was lost).
    Padding slots (fewer than k non-zeros) have weight 0 and index of the
    vertex's largest weight.
  """
  weights = np.asarray(weights, np.float64)
  k = min(k, weights.shape[1])
  order = np.argsort(-weights, axis=1, kind="stable")
  idx = order[:, :k]
  kept = np.take_along_axis(weights, idx, axis=1)
  dropped = np.take_along_axis(weights, order[:, k:], axis=1)
  max_dropped = float(dropped.max()) if dropped.size else 0.0
  idx = np.where(kept > 0, idx, idx[:, :1])
  kept = np.where(kept > 0, kept, 0.0)
  kept = kept / np.maximum(kept.sum(axis=1, keepdims=True), 1e-12)
  return idx.astype(np.int32), kept.astype(np.float32), max_dropped
