"""TFDS dataset builders (`cmu_mocap`)."""
