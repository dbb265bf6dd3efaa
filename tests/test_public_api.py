"""Pin the public surface: these names are the API (site names are documented in population.py)."""

import popkpd

PUBLIC = {
    "AbstractStructuralModel", "Additive", "Bolus", "Categorical", "Combined", "DataError", "Dataset", "Events",
    "Exponential", "Fit", "Fixed", "HalfNormal", "Infusion", "LKJ", "Linear", "LogNormal", "LogNormalError",
    "LogitNormal", "MichaelisMentenOneCompartment", "Normal", "OneCompartment", "Parameter", "PopulationModel",
    "Power", "Proportional", "Regimen", "SC", "Solution", "SolverError", "ThreeCompartment", "TwoCompartment",
    "closed_form", "fit", "load_dataset", "load_fit", "plot_eta_covariates", "plot_gof", "plot_individual_fits",
    "plot_npde", "plot_trace", "plot_vpc", "predictions", "read_nonmem", "shrinkage", "expected_shrinkage", "simulate",
    "stack_events",
    "vpc", "write_report", "imwg_response", "Response", "RESPONSE_CATEGORIES", "merge_chains", "continue_fit", "sampler_geometry",
    "TrialDesign", "VirtualPopulation", "Constraint", "EvaluationSettings", "Patient", "RegimenGrid", "condition_on_data",
    "evaluate_regimens", "fit_draws", "prior_draws", "refine_regimen", "search_regimens", "sample_population", "simulate_trial", "summarise_trial",
}


def test_public_names():
    exported = {n for n in dir(popkpd) if not n.startswith("_")}
    assert PUBLIC <= exported, f"missing from popkpd: {sorted(PUBLIC - exported)}"


def test_float64_enabled():
    import jax.numpy as jnp

    assert jnp.asarray(1.0).dtype == jnp.float64
