"""Loads a user's SMPL / SMPL-H / SMPL-X `.npz` into a `BodyModel`.

The SMPL-family files are not redistributable, so flowpose never ships them;
a user with a licence can pose their file with the same functions as the CC0
model. Expected keys (as written by the official `.npz` releases and by
smplx's conversion scripts): `v_template [V, 3]`, `shapedirs [V, 3, S']`,
`posedirs [V, 3, P]`, `J_regressor [J, V]` (dense), `weights [V, J]` (dense),
`kintree_table [2, J]` (parent of the root is `2**32 - 1` or `-1`), `f [F, 3]`.

Conversions:
* `posedirs [V, 3, P]` -> `[P, V * 3]` (smplx's layout; feature
  `(R[1:] - I).ravel()`).
* `shapedirs`: the first `num_betas` columns (SMPL-X files append expression
  directions after the 300 shape ones; they are not betas).
* Dense weights -> top-K sparse, renormalised; the largest dropped weight is
  logged and returned by `convert_smpl_arrays`.
* Keypoints: SMPL has no keypoint regressor; by default the keypoints are the
  joints regressed from the *posed* vertices (`keypoint_regressor =
  J_regressor`, names = joint names), which is what SMPL-based pipelines call
  "regressed joints"; `keypoints="none"` gives an empty `[0, V]` regressor.
* Part labels: the joint with the largest weight (part names = joint names).

Files saved with chumpy objects (the original `.pkl` releases) cannot be read
without unpickling arbitrary code; they are rejected with a clear error.
"""

import pathlib
from typing import Any, Dict, Tuple

from absl import logging
import numpy as np

from flowpose.body import model_io
from flowpose.body.model import BodyModel
from flowpose.body.model_io import BodyModelError

# smplx's joint order (smplx/joint_names.py).
SMPL_JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee",
    "spine2", "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot",
    "neck", "left_collar", "right_collar", "head", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hand", "right_hand")
_HAND = tuple(f"{finger}{i}" for finger in ("index", "middle", "pinky", "ring",
                                             "thumb") for i in (1, 2, 3))
_HANDS = tuple(f"{side}_{j}" for side in ("left", "right") for j in _HAND)
SMPLH_JOINT_NAMES = SMPL_JOINT_NAMES[:22] + _HANDS
SMPLX_JOINT_NAMES = (SMPL_JOINT_NAMES[:22] + ("jaw", "left_eye_smplhf",
                                              "right_eye_smplhf") + _HANDS)
_NAMES_BY_COUNT = {len(n): n for n in (SMPL_JOINT_NAMES, SMPLH_JOINT_NAMES,
                                       SMPLX_JOINT_NAMES)}
_REQUIRED = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights",
             "kintree_table", "f")


def _read(path: pathlib.Path) -> Dict[str, np.ndarray]:
  if path.suffix == ".pkl":
    raise BodyModelError(
        f"{path}: .pkl model files need unpickling (and often chumpy); "
        "convert it once to .npz with plain arrays (e.g. with smplx's "
        "tools/clean_ch.py, then np.savez) and load that")
  if not path.is_file():
    raise BodyModelError(f"{path}: no such SMPL model file")
  try:
    with np.load(path, allow_pickle=False) as npz:
      return {key: npz[key] for key in npz.files if key in _REQUIRED}
  except ValueError as e:
    if "pickle" in str(e):
      raise BodyModelError(
          f"{path}: holds pickled objects (chumpy arrays?) in one of "
          f"{_REQUIRED}; re-save it with plain numpy arrays") from e
    raise BodyModelError(f"{path}: not a readable .npz file ({e})") from e


def convert_smpl_arrays(arrays: Dict[str, np.ndarray], num_betas: int = 10,
                        top_k: int = 4, keypoints: str = "joints",
                        source: str = "<arrays>"
                        ) -> Tuple[BodyModel, Dict[str, Any]]:
  """SMPL-layout arrays -> (`BodyModel`, conversion info).

  Args:
    arrays: the file's arrays (see module docstring).
    num_betas: shape directions kept (at most the file's).
    top_k: skinning weights kept per vertex.
    keypoints: `"joints"` (regressed joints as keypoints) or `"none"`.
    source: name used in error messages.

  Returns:
    `(model, info)` with `info = {"max_dropped_weight", "num_betas",
    "num_pose_basis"}`.

  Raises:
    BodyModelError: on missing keys or inconsistent shapes.
  """
  for key in _REQUIRED:
    if key not in arrays:
      raise BodyModelError(f"{source}: field {key!r}: expected an array, got "
                           "nothing (missing)")
  v_template = np.asarray(arrays["v_template"], np.float64)
  num_v = v_template.shape[0]
  shapedirs = np.asarray(arrays["shapedirs"], np.float64)
  if shapedirs.ndim != 3 or shapedirs.shape[:2] != (num_v, 3):
    raise BodyModelError(f"{source}: field 'shapedirs': expected shape "
                         f"({num_v}, 3, S), got {shapedirs.shape}")
  kintree = np.asarray(arrays["kintree_table"]).astype(np.int64)
  num_j = kintree.shape[-1]
  if kintree.shape != (2, num_j) or not np.array_equal(kintree[1],
                                                       np.arange(num_j)):
    raise BodyModelError(f"{source}: field 'kintree_table': expected [2, J] "
                         f"with row 1 = 0..J-1, got {kintree.shape}")
  parents = np.where((kintree[0] < 0) | (kintree[0] >= num_j), -1, kintree[0])
  # SMPL-X stores 300 shape then 100 expression directions.
  max_betas = 300 if num_j == len(SMPLX_JOINT_NAMES) else shapedirs.shape[2]
  num_betas = min(num_betas, max_betas, shapedirs.shape[2])
  posedirs = np.asarray(arrays["posedirs"], np.float64)
  if posedirs.ndim != 3 or posedirs.shape[:2] != (num_v, 3):
    raise BodyModelError(f"{source}: field 'posedirs': expected shape "
                         f"({num_v}, 3, P), got {posedirs.shape}")
  posedirs = posedirs.reshape(num_v * 3, -1).T
  weights = np.asarray(arrays["weights"], np.float64)
  if weights.shape != (num_v, num_j):
    raise BodyModelError(f"{source}: field 'weights': expected shape "
                         f"({num_v}, {num_j}), got {weights.shape}")
  idx, skin_weights, max_dropped = model_io.sparsify_skin_weights(weights, top_k)
  j_regressor = np.asarray(arrays["J_regressor"], np.float64)
  names = _NAMES_BY_COUNT.get(num_j,
                              tuple(f"joint_{i:02d}" for i in range(num_j)))
  if keypoints == "joints":
    kp_regressor, kp_names = j_regressor, names
  elif keypoints == "none":
    kp_regressor, kp_names = np.zeros((0, num_v)), ()
  else:
    raise ValueError(f"keypoints must be 'joints' or 'none', got {keypoints!r}")
  model = model_io.model_from_arrays({
      "v_template": v_template, "shapedirs": shapedirs[:, :, :num_betas],
      "posedirs": posedirs, "j_regressor": j_regressor,
      "skin_indices": idx, "skin_weights": skin_weights,
      "keypoint_regressor": kp_regressor,
      "faces": np.asarray(arrays["f"]).astype(np.int64),
      "part_labels": weights.argmax(axis=1),
      "parents": parents, "joint_names": np.asarray(names),
      "part_names": np.asarray(names), "keypoint_names": np.asarray(kp_names),
  }, source)
  info = {"max_dropped_weight": max_dropped, "num_betas": num_betas,
          "num_pose_basis": posedirs.shape[0]}
  return model, info


def load_smpl_npz(path, num_betas: int = 10, top_k: int = 4,
                  keypoints: str = "joints") -> BodyModel:
  """Loads an SMPL / SMPL-H / SMPL-X `.npz` as a `BodyModel`.

  Args:
    path: the `.npz` file.
    num_betas: shape coefficients kept (SMPL-X expression directions, stored
      after the shape ones, are never included).
    top_k: skinning weights kept per vertex (renormalised); the largest
      dropped weight is logged.
    keypoints: `"joints"` or `"none"` (see module docstring).

  Raises:
    BodyModelError: unreadable file, pickled/chumpy content, bad arrays.
  """
  path = pathlib.Path(path)
  model, info = convert_smpl_arrays(_read(path), num_betas, top_k, keypoints,
                                    str(path))
  logging.info("Loaded %s: V=%d J=%d betas=%d pose basis=%d, top-%d skinning "
               "(max dropped weight %.4g)", path, model.num_vertices,
               model.num_joints, info["num_betas"], info["num_pose_basis"],
               top_k, info["max_dropped_weight"])
  return model
