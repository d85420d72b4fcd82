"""Label-exact geometric augmentation of clean `cmu_evidence` batches, in TensorFlow.

    batch = augment_batch(batch, seed, data_config)   # before the corruption; training only

Two camera-frame maps that the stored 3D labels follow exactly, so an example's evidence and
labels stay one consistent scene (what the network learns from a labelled example is then
not that example's pixels but the map from evidence to pose):
* left-right flip, with probability `augment_flip_prob`: the camera frame reflected in its
  x = 0 plane (`F = diag(-1, 1, 1)`), the image mirrored about the principal point (R/2),
  the body mirrored in its own sagittal plane: pose DOFs by
  `cmu_skeleton.mirror_permutation_and_signs`, `root_rotmat -> F R diag(-1, 1, 1)` (the body's
  x is its left-right axis), COCO keypoints and the model's parts with left and right
  exchanged. `betas` are kept: the CC0 shape space is left-right symmetric to ~4 mm on a
  1-sigma shape (`tests/test_evidence_augment.py` poses both sides).
* in-plane rotation by an angle uniform in +-`augment_roll_deg` about the optical axis (a
  camera rolled about its axis): 2D points and maps rotate about the principal point
  (exact for a pinhole camera), the camera-frame labels (`root_rotmat`, `transl`, `joints3d`)
  by the same rotation; the articulated pose (DOFs) does not change.
The body turns about its root joint `j0(betas)` (rest position, linear in betas), not the
origin, so `transl -> A (transl + j0) - j0`: the caller passes the root's basis
(`root_basis`, from `root_joint_basis(model)`). Keypoints rotated out of
  the crop become invisible; map pixels with no source are background.
Maps are resampled by nearest pixel centre (labels stay labels). Draws are stateless from
`seed`, so a batch's augmentation is a pure function of (clean batch, seed), as its corruption.
With both knobs 0 the batch is returned unchanged.
"""

import math

import ml_collections
import numpy as np

from flowpose.data import cmu_skeleton
from flowpose.data import evidence_corruption

# The model's part order (`BodyModel.part_names`): head, neck, chest, abdomen, pelvis, then
# left/right upper arm, forearm, hand, upper leg, lower leg, foot.
PART_LR_PAIRS = ((5, 8), (6, 9), (7, 10), (11, 14), (12, 15), (13, 16))
NUM_PARTS = 17
# Fields of 2D points `[B, K, 2]` and per-keypoint values `[B, K]` (present ones are mapped).
_POINT_FIELDS = ("keypoints", "keypoints_true")
_PER_KEYPOINT_FIELDS = ("visible", "visible_true", "keypoint_score")
_MAP_FIELDS = ("part_map", "mask")


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


def _swap_permutation(pairs, size: int) -> np.ndarray:
  perm = np.arange(size)
  for a, b in pairs:
    perm[a], perm[b] = b, a
  return perm


def keypoint_permutation() -> np.ndarray:
  """`[17]`: COCO keypoint i of a flipped image is keypoint perm[i] of the original."""
  return _swap_permutation(evidence_corruption.COCO_LR_PAIRS, evidence_corruption.NUM_KEYPOINTS)


def part_label_table() -> np.ndarray:
  """`[P + 1]` uint8: a part-map value (0 background, part + 1) -> its mirror's value."""
  perm = _swap_permutation(PART_LR_PAIRS, NUM_PARTS)
  return np.concatenate([[0], perm + 1]).astype(np.uint8)


def enabled(data_config: ml_collections.ConfigDict) -> bool:
  """Whether `augment_batch` changes anything under `data_config`."""
  return (float(data_config.get("augment_flip_prob", 0.0)) > 0.0
          or float(data_config.get("augment_roll_deg", 0.0)) > 0.0)


def root_joint_basis(model) -> tuple:
  """`(j0 [3], j0_dirs [3, S])` float32 numpy: the body model's root joint at rest, linear in
  betas (`body.model.joint_shape_basis`, row 0)."""
  from flowpose.body import model as body_lib  # pylint: disable=g-import-not-at-top
  template, dirs = body_lib.joint_shape_basis(model)
  return (np.asarray(template[0], np.float32), np.asarray(dirs[0], np.float32))


def augment_batch(batch: dict, seed, data_config: ml_collections.ConfigDict,
                  root_basis: tuple = None) -> dict:
  """The batch flipped and rolled per example (module docstring); other fields unchanged.

  Args:
    batch: clean stored fields, at least keypoints [B, 17, 2], visible [B, 17], part_map and
      mask [B, R, R] uint8, pose_dofs [B, 50], root_rotmat [B, 3, 3], betas [B, S],
      transl [B, 3], joints3d [B, 17, 3].
    seed: [2] int64 stateless seed.
    data_config: `augment_flip_prob` in [0, 1], `augment_roll_deg` >= 0.
    root_basis: `root_joint_basis(model)` of the batch's body model (needed when enabled).
  """
  if not enabled(data_config):
    return batch
  if root_basis is None:
    raise ValueError("evidence_augment.augment_batch: root_basis (root_joint_basis(model)) "
                     "is needed to move transl with the body's turn about its root joint")
  tf = _tf()
  out = dict(batch)
  res = int(batch["part_map"].shape[-1])
  num = tf.shape(batch["keypoints"])[0]
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
  flip = tf.random.stateless_uniform([num], seeds[0]) < float(
      data_config.get("augment_flip_prob", 0.0))
  max_roll = math.radians(float(data_config.get("augment_roll_deg", 0.0)))
  angle = tf.random.stateless_uniform([num], seeds[1], -max_roll, max_roll)
  # The camera-frame map A = Rz(angle) F (F = diag(-1, 1, 1) where flipped), and its 2D block.
  sign = tf.where(flip, -1.0, 1.0)
  cos, sin = tf.cos(angle), tf.sin(angle)
  zero, one = tf.zeros_like(cos), tf.ones_like(cos)
  a3 = tf.reshape(tf.stack([cos * sign, -sin, zero, sin * sign, cos, zero, zero, zero, one],
                           -1), [-1, 3, 3])
  a2 = a3[:, :2, :2]
  centre = res / 2.0

  def select(flipped, plain, rank):
    return tf.where(tf.reshape(flip, [-1] + [1] * (rank - 1)), flipped, plain)

  kp_perm = tf.constant(keypoint_permutation(), tf.int32)
  for field in _POINT_FIELDS:
    if field in batch:
      uv = tf.cast(batch[field], tf.float32)
      uv = select(tf.gather(uv, kp_perm, axis=1), uv, 3)
      out[field] = tf.einsum("bij,bkj->bki", a2, uv - centre) + centre
  for field in _PER_KEYPOINT_FIELDS:
    if field in batch:
      x = batch[field]
      out[field] = select(tf.gather(x, kp_perm, axis=1), x, 2)
  inside = tf.reduce_all((out["keypoints"] >= 0.0) & (out["keypoints"] < res), -1)
  out["visible"] = out["visible"] * tf.cast(inside, out["visible"].dtype)

  # Maps: each output pixel centre p takes the source pixel containing c + A2^-1 (p - c).
  centres = (tf.range(res, dtype=tf.float32) + 0.5) - centre
  gx, gy = tf.meshgrid(centres, centres)            # [R, R]: x = column, y = row.
  grid = tf.stack([gx, gy], -1)                     # [R, R, 2]
  source = tf.einsum("bji,rcj->brci", a2, grid) + centre  # A2^-1 = A2^T (orthogonal).
  cols = tf.cast(tf.floor(source[..., 0]), tf.int32)
  rows = tf.cast(tf.floor(source[..., 1]), tf.int32)
  valid = (cols >= 0) & (cols < res) & (rows >= 0) & (rows < res)
  index = tf.stack([rows, cols], -1)
  index = tf.where(valid[..., None], index, tf.zeros_like(index))
  table = tf.constant(part_label_table())
  for field in _MAP_FIELDS:
    image = tf.gather_nd(batch[field], index, batch_dims=1)
    if field == "part_map":
      image = select(tf.gather(table, tf.cast(image, tf.int32)), image, 3)
    out[field] = tf.where(valid, image, tf.zeros_like(image))

  # 3D labels: A x in the camera frame; the mirrored body's DOFs and root.
  perm, signs = cmu_skeleton.mirror_permutation_and_signs()
  dofs = batch["pose_dofs"]
  out["pose_dofs"] = select(tf.gather(dofs, perm, axis=1) * tf.constant(signs, dofs.dtype),
                            dofs, 2)
  body_flip = tf.constant(np.diag([-1.0, 1.0, 1.0]), tf.float32)
  root = tf.cast(batch["root_rotmat"], tf.float32)
  out["root_rotmat"] = tf.matmul(a3, select(root @ body_flip, root, 3))
  j0 = tf.constant(root_basis[0]) + tf.einsum(
      "is,bs->bi", tf.constant(root_basis[1]), tf.cast(batch["betas"], tf.float32))
  out["transl"] = tf.einsum("bij,bj->bi", a3, batch["transl"] + j0) - j0
  joints = select(tf.gather(batch["joints3d"], kp_perm, axis=1), batch["joints3d"], 3)
  out["joints3d"] = tf.einsum("bij,bkj->bki", a3, joints)
  return out
