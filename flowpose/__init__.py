"""flowpose: normalizing-flow pose priors and weakly supervised 3D human pose and shape in JAX."""

__version__ = "0.1.0"
