"""Learned models above the pose prior: the reconstruction network (`regressor`) and the
latent motion model (`dynamics`). Pure Flax modules + pure functions; the trainer plugs them
in through `flowpose.tasks`."""
