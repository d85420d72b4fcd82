"""TFDS dataset `cmu_mocap` (CMU mocap retargeted onto the CC0 body model).

The builder lives in `cmu_mocap_dataset_builder.py` (class `Builder`, TFDS convention); it is
not imported here so that `splits` stays usable without TensorFlow. `flowpose.data.poses`
imports it (which registers the name `cmu_mocap` with TFDS).
"""
