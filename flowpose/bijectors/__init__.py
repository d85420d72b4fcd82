"""Pure-function bijectors for normalizing flows (see `core` for conventions).

Every factory returns a `Bijector` NamedTuple of pure functions over an
explicit params pytree; `chain([f, g])(x) = f(g(x))` as in distrax. distrax
itself is not imported here: `distrax_adapter` (to_distrax, the distrax spline)
imports it on demand through `lazy_distrax`.
"""

from flowpose.bijectors.actnorm import actnorm
from flowpose.bijectors.actnorm import actnorm_data_init
from flowpose.bijectors.conditioners import Conditioner
from flowpose.bijectors.conditioners import ConditionerFactory
from flowpose.bijectors.conditioners import MLP
from flowpose.bijectors.conditioners import mlp_conditioner
from flowpose.bijectors.core import Bijector
from flowpose.bijectors.core import chain
from flowpose.bijectors.core import data_init
from flowpose.bijectors.core import forward
from flowpose.bijectors.core import inverse
from flowpose.bijectors.core import invert
from flowpose.bijectors.core import stack
from flowpose.bijectors.core import standard_normal_log_prob
from flowpose.bijectors.coupling import affine_coupling
from flowpose.bijectors.coupling import alternating_mask
from flowpose.bijectors.coupling import half_mask
from flowpose.bijectors.coupling import spline_coupling
from flowpose.bijectors.linear import lu_linear
from flowpose.bijectors.linear import lu_linear_matrix
from flowpose.bijectors.linear import permutation
from flowpose.bijectors.linear import random_permutation
from flowpose.bijectors.linear import reverse
from flowpose.bijectors.spline import rational_quadratic_forward
from flowpose.bijectors.spline import rational_quadratic_inverse

__all__ = [
    "Bijector", "Conditioner", "ConditionerFactory", "MLP", "actnorm",
    "actnorm_data_init", "affine_coupling", "alternating_mask", "chain",
    "data_init", "forward", "half_mask", "inverse", "invert", "lu_linear",
    "lu_linear_matrix", "mlp_conditioner", "permutation", "random_permutation",
    "rational_quadratic_forward", "rational_quadratic_inverse", "reverse",
    "spline_coupling", "stack", "standard_normal_log_prob",
]
