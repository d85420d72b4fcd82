"""Fitting the body to 2D evidence in a prior's latent space: the driver (`fit`: restarts,
stages, batching), one optax stage and its objective (`stage`), the reduced body it poses
(`reduced_body`), input/result checks (`checks`), configs (`config`) and the photo pipeline
(`photo`). Priors come from `flowpose.prior.registry`."""
