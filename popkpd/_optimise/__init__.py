"""Posterior-predictive dosing optimiser (issue 6): regimen evaluation over parameter draws,
grid search with constraints, Pareto front, gradient refinement and the ``popkpd dose`` command.
See ``docs/dosing.md``."""

from .draws import (
    Conditioned as Conditioned,
    ParameterDraws as ParameterDraws,
    Patient as Patient,
    condition_on_data as condition_on_data,
    fit_draws as fit_draws,
    patient_posterior as patient_posterior,
    prior_draws as prior_draws,
)
from .evaluate import Candidate as Candidate, Evaluation as Evaluation, EvaluationSettings as EvaluationSettings, evaluate as evaluate
from .refine import RefineResult as RefineResult, refine as refine
from .search import (
    Constraint as Constraint,
    RegimenGrid as RegimenGrid,
    SearchResult as SearchResult,
    pareto_mask as pareto_mask,
    rank as rank,
    search as search,
)
from .command import add_dose_parser as add_dose_parser, cmd_dose as cmd_dose
