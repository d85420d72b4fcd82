"""Fitting the body to 2D evidence in a prior's latent space: the optimizer (`fit`), the reduced
body it poses (`reduced_body`), configs (`config`) and the photo pipeline (`photo`)."""
