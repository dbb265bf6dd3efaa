"""Statistical layer: priors, inter-individual variability, covariate effects, residual error."""

from .covariates import (
    AbstractCovariateEffect as AbstractCovariateEffect,
    Categorical as Categorical,
    Exponential as Exponential,
    Linear as Linear,
    Power as Power,
)
from .population import Parameter as Parameter, PopulationModel as PopulationModel
from .priors import (
    LKJ as LKJ,
    AbstractPrior as AbstractPrior,
    Fixed as Fixed,
    HalfNormal as HalfNormal,
    LogitNormal as LogitNormal,
    LogNormal as LogNormal,
    Normal as Normal,
)
from .residual import (
    AbstractResidualError as AbstractResidualError,
    Additive as Additive,
    Combined as Combined,
    LogNormalError as LogNormalError,
    ObservationDistribution as ObservationDistribution,
    Proportional as Proportional,
)
