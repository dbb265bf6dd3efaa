"""popkpd: GPU-accelerated Bayesian population PK/PD on JAX, NumPyro and diffrax."""

from . import _config  # noqa: F401  (enables float64)
from ._events import Events as Events
from ._structural.base import AbstractStructuralModel as AbstractStructuralModel
from ._structural.linear import (
    MichaelisMentenOneCompartment as MichaelisMentenOneCompartment,
    OneCompartment as OneCompartment,
    ThreeCompartment as ThreeCompartment,
    TwoCompartment as TwoCompartment,
)

__version__ = "0.1.0"
