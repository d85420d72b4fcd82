"""Pseudo 3D labels in the served `cmu_evidence` pipeline (`config.data.pseudo_labels`).

    labels = load(path, builder)             # checked .npz of `tasks.regressor_pseudo.save`
    ds = with_labels(tf, ds, labels)         # found examples: the file's labels, has_3d True

The file: `key [N]` ("subject/clip/frame/view", `example_key`), `builder` (the `cmu_evidence`
config it was made for), and `PSEUDO_FIELDS` rows. `flowpose.data.evidence.train_dataset` applies
it to the training split only; evaluation keeps the true labels.
"""

import numpy as np

# The 3D labels a pseudo-label file replaces (+ `key`: "subject/clip/frame/view", `builder`).
PSEUDO_FIELDS = ("pose_dofs", "root_rotmat", "betas", "transl", "joints3d")
_SHAPES = dict(pose_dofs=(None,), root_rotmat=(3, 3), betas=(None,), transl=(3,),
               joints3d=(None, 3))


def example_key(tf, ex):
  """"subject/clip/frame/view" of a `cmu_evidence` example (a tf string scalar)."""
  return tf.strings.join([ex["subject"], ex["clip"], tf.strings.as_string(ex["frame"]),
                          tf.strings.as_string(ex["view"])], "/")


def load(path: str, builder: str) -> dict:
  """`{key [N] str, builder str, PSEUDO_FIELDS...}` of the .npz at `path`, checked against the
  data's builder config `builder` and the label shapes; ValueError naming
  `data.pseudo_labels` and the file."""
  def fail(what):
    raise ValueError(f"config data.pseudo_labels: {path}: {what}")
  try:
    with np.load(path, allow_pickle=False) as f:
      labels = {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    fail(f"not a readable .npz ({e})")
  missing = [k for k in ("key", "builder") + PSEUDO_FIELDS if k not in labels]
  if missing:
    fail(f"missing arrays {missing} (write it with python -m launch.pseudo_labels)")
  if str(labels["builder"]) != builder:
    fail(f"made for cmu_evidence/{labels['builder']}, the config's data are "
         f"cmu_evidence/{builder}")
  num = len(labels["key"])
  for k, shape in _SHAPES.items():
    v = labels[k]
    if (v.ndim != len(shape) + 1 or len(v) != num or
        any(a is not None and a != b for a, b in zip(shape, v.shape[1:]))):
      fail(f"{k} has shape {v.shape}, expected [{num}, {', '.join(map(str, shape))}]")
    if not np.all(np.isfinite(v)):
      fail(f"{k} holds non-finite values")
  return labels


def with_labels(tf, ds, labels: dict):
  """Examples whose key is in `labels` get its 3D labels and `has_3d` True; others unchanged."""
  table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
      tf.constant(labels["key"].astype(str)), tf.range(len(labels["key"]), dtype=tf.int64)), -1)
  values = {k: tf.constant(labels[k]) for k in PSEUDO_FIELDS}

  def add(ex):
    row = table.lookup(example_key(tf, ex))
    found = row >= 0
    out = dict(ex)
    for k, v in values.items():
      out[k] = tf.where(found, tf.cast(tf.gather(v, tf.maximum(row, 0)), ex[k].dtype), ex[k])
    out["has_3d"] = ex["has_3d"] | found
    return out
  return ds.map(tf.autograph.experimental.do_not_convert(add),
                num_parallel_calls=tf.data.AUTOTUNE)
