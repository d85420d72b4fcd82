"""Motion-capture readers/writers, retargeting and TFDS datasets."""
