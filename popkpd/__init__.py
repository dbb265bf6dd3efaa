"""popkpd: GPU-accelerated Bayesian population PK/PD on JAX, NumPyro and diffrax.

Importing popkpd enables float64 in JAX (see ``popkpd._config``).
"""

from . import _config  # noqa: F401  (enables float64)

import numpyro as _numpyro  # noqa: F401  (import before arviz_base: its lazy loading otherwise breaks numpyro)
from ._data import DataError as DataError, Dataset as Dataset, read_nonmem as read_nonmem
from .datasets import load_dataset as load_dataset
from ._dosing import (
    Bolus as Bolus,
    Infusion as Infusion,
    Regimen as Regimen,
    SC as SC,
    stack_events as stack_events,
)
from ._configfile import ConfigError as ConfigError, load_config as load_config
from ._diagnostics import (
    expected_shrinkage as expected_shrinkage,
    parameter_table as parameter_table,
    plot_eta_covariates as plot_eta_covariates,
    plot_gof as plot_gof,
    plot_individual_fits as plot_individual_fits,
    plot_npde as plot_npde,
    plot_trace as plot_trace,
    plot_vpc as plot_vpc,
    predictions as predictions,
    shrinkage as shrinkage,
    vpc as vpc,
    write_report as write_report,
)
from ._events import Events as Events
from ._optimise import (
    Constraint as Constraint,
    EvaluationSettings as EvaluationSettings,
    Patient as Patient,
    RegimenGrid as RegimenGrid,
    condition_on_data as condition_on_data,
    evaluate as evaluate_regimens,
    fit_draws as fit_draws,
    prior_draws as prior_draws,
    refine as refine_regimen,
    search as search_regimens,
)
from ._trial import (
    TrialDesign as TrialDesign,
    VirtualPopulation as VirtualPopulation,
    sample_population as sample_population,
    simulate_trial as simulate_trial,
    summarise_trial as summarise_trial,
)
from ._inference import (
    Fit as Fit,
    continue_fit as continue_fit,
    fit as fit,
    load_fit as load_fit,
    merge_chains as merge_chains,
    sampler_geometry as sampler_geometry,
)
from ._ode.analytic import closed_form as closed_form
from ._response import RESPONSE_CATEGORIES as RESPONSE_CATEGORIES, Response as Response, imwg_response as imwg_response
from ._ode.simulate import Solution as Solution, SolverError as SolverError, simulate as simulate
from ._statistical import (
    LKJ as LKJ,
    Additive as Additive,
    Categorical as Categorical,
    Combined as Combined,
    Exponential as Exponential,
    Fixed as Fixed,
    HalfNormal as HalfNormal,
    Linear as Linear,
    LogitNormal as LogitNormal,
    LogNormal as LogNormal,
    LogNormalError as LogNormalError,
    Normal as Normal,
    Parameter as Parameter,
    PopulationModel as PopulationModel,
    Power as Power,
    Proportional as Proportional,
)
from ._structural.base import AbstractStructuralModel as AbstractStructuralModel
from ._structural.bcma import BCMAModel as BCMAModel
from ._structural.crs import (
    HIBMA26_CRS_COEFS as HIBMA26_CRS_COEFS,
    crs_probability as crs_probability,
    crs_probability_elranatamab as crs_probability_elranatamab,
    peak_per_interval as peak_per_interval,
)
from ._structural.units import (
    SBCMA_MW_KDA as SBCMA_MW_KDA,
    mg_to_nmol as mg_to_nmol,
    ng_per_ml_to_nm as ng_per_ml_to_nm,
    nm_to_ng_per_ml as nm_to_ng_per_ml,
    nmol_to_mg as nmol_to_mg,
    receptors_to_nm as receptors_to_nm,
)
from ._structural.linear import (
    MichaelisMentenOneCompartment as MichaelisMentenOneCompartment,
    OneCompartment as OneCompartment,
    ThreeCompartment as ThreeCompartment,
    TwoCompartment as TwoCompartment,
)

__version__ = "0.1.0"
