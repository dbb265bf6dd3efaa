"""popkpd: GPU-accelerated Bayesian population PK/PD on JAX, NumPyro and diffrax.

Importing popkpd enables float64 in JAX (see ``popkpd._config``).
"""

from . import _config  # noqa: F401  (enables float64)
from ._data import DataError as DataError, Dataset as Dataset, read_nonmem as read_nonmem
from .datasets import load_dataset as load_dataset
from ._dosing import (
    Bolus as Bolus,
    Infusion as Infusion,
    Regimen as Regimen,
    SC as SC,
    stack_events as stack_events,
)
from ._events import Events as Events
from ._ode.analytic import closed_form as closed_form
from ._ode.simulate import Solution as Solution, SolverError as SolverError, simulate as simulate
from ._structural.base import AbstractStructuralModel as AbstractStructuralModel
from ._structural.linear import (
    MichaelisMentenOneCompartment as MichaelisMentenOneCompartment,
    OneCompartment as OneCompartment,
    ThreeCompartment as ThreeCompartment,
    TwoCompartment as TwoCompartment,
)

__version__ = "0.1.0"
