"""TFDS dataset `cmu_evidence` (synthetic 2D evidence + 3D labels of CMU poses on the CC0 body).

The builder lives in `cmu_evidence_dataset_builder.py` (class `Builder`, TFDS convention);
`flowpose.data.evidence` imports it (which registers the name `cmu_evidence` with TFDS) and
serves it to training.
"""
