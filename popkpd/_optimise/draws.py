"""Sources of parameter draws for posterior-predictive regimen evaluation.

A ``ParameterDraws`` holds the structural parameters of ``J x P`` simulated patients: ``J``
parameter draws (posterior draws of the population parameters, or prior draws of the typical
values) and, for each, ``P`` new patients (fresh random effects). Endpoints are averaged over the
``P`` patients of a draw (a population rate under that draw) and summarised over the ``J`` draws
(mean and interval: the uncertainty about the population rate). See ``evaluate.py``.

Two sources, one result type:

* ``prior_draws(model, typical, priors, iiv=...)``: typical values drawn from ``priors`` (e.g. a
  drug module's ``PRIORS``; ``None``: fixed at ``typical``), then log-normal IIV with the stated
  ``iiv = {parameter: omega}`` (sd of the log), as ``theta_i = theta exp(omega eta_i)``.
* ``fit_draws(fit)``: posterior draws of a ``Fit`` (population sites ``*_pop``, ``omega_*``,
  covariate effects, ``corr_iiv``), new random effects ``eta ~ N(0, 1)`` per patient, and the
  individual parameters from ``PopulationModel.individual_parameters`` with the patient's
  covariates.

A ``Patient`` overrides parameters that are known for an individual (baseline sBCMA -> ``s0``,
tumour burden -> ``n0``, T cells -> ``e0``, M-protein -> ``m0``) in every draw; these parameters
then carry no IIV. Body weight scales per-kg doses (``ParameterDraws.weights``) and is passed as
covariate ``WT`` to a fit whose population model uses it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .._statistical.priors import Fixed
from .._structural.base import AbstractStructuralModel
from .._structural.units import SBCMA_MW_KDA, ng_per_ml_to_nm


@dataclasses.dataclass(frozen=True)
class ParameterDraws:
    """Structural parameters of ``n_draws x n_patients`` simulated patients (draw-major).

    values   {parameter: [n_draws * n_patients]} in the model's units
    weights  [n_draws * n_patients] body weight (kg), used for per-kg doses
    n_draws, n_patients   the two axes (patient k of draw j is entry j * n_patients + k)
    source   a short description ("prior", "fit", plus the patient's overrides)
    """

    values: dict
    weights: np.ndarray
    n_draws: int
    n_patients: int
    source: str = ""

    @property
    def size(self) -> int:
        return self.n_draws * self.n_patients

    def take(self, index) -> ParameterDraws:
        """The draws ``index`` (an int array over draws, not patients), all their patients."""
        index = np.asarray(index, dtype=int)
        rows = (index[:, None] * self.n_patients + np.arange(self.n_patients)[None, :]).ravel()
        return ParameterDraws({k: v[rows] for k, v in self.values.items()}, self.weights[rows], len(index),
                              self.n_patients, self.source)


@dataclasses.dataclass(frozen=True)
class Patient:
    """Known characteristics of one patient (``None``: unknown, drawn from the population).

    weight        body weight, kg (per-kg doses; covariate ``WT`` of a fit)
    sbcma_ng_ml   baseline serum sBCMA, ng/mL -> ``s0`` (nM, 5.4 kDa, ``SBCMA_MW_KDA``)
    tumour_burden marrow tumour cells relative to ``reference["n0"]`` -> ``n0``
    t_cells       marrow T cells relative to ``reference["e0"]`` -> ``e0``
    m_protein     baseline serum M-protein, g/L -> ``m0``
    high_burden   high tumour burden for the CRS logistic (BMPC >= 80 %, M-spike >= 50 g/L ...)
    covariates    further covariates for a fit's population model, {name: value}
    """

    weight: float | None = None
    sbcma_ng_ml: float | None = None
    tumour_burden: float | None = None
    t_cells: float | None = None
    m_protein: float | None = None
    high_burden: bool = False
    covariates: Mapping = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name in ("weight", "sbcma_ng_ml", "tumour_burden", "t_cells", "m_protein"):
            value = getattr(self, name)
            if value is None:
                continue
            ok = not isinstance(value, bool) and isinstance(value, (int, float, np.number)) and math.isfinite(value)
            low_ok = value >= 0 if name == "sbcma_ng_ml" else value > 0
            if not (ok and low_ok):
                bound = ">= 0" if name == "sbcma_ng_ml" else "> 0"
                raise ValueError(
                    f"Patient({name}=...): received {value!r}; expected a finite number {bound} "
                    f"({_PATIENT_UNITS[name]}). Correct it, or leave it out (None) to draw it from the population."
                )
        if not isinstance(self.high_burden, bool):
            raise ValueError(f"Patient(high_burden=...): received {self.high_burden!r}; expected True or False.")

    def overrides(self, model: AbstractStructuralModel, reference: Mapping) -> dict:
        """{parameter: value} this patient fixes, for ``model`` (``reference``: typical values
        that ``tumour_burden`` and ``t_cells`` are relative to)."""
        wanted = {
            "s0": None if self.sbcma_ng_ml is None else float(ng_per_ml_to_nm(self.sbcma_ng_ml, SBCMA_MW_KDA)),
            "n0": None if self.tumour_burden is None else ("n0", self.tumour_burden),
            "e0": None if self.t_cells is None else ("e0", self.t_cells),
            "m0": self.m_protein,
        }
        out = {}
        for name, value in wanted.items():
            if value is None:
                continue
            if name not in model.parameters:
                field = {"s0": "sbcma_ng_ml", "n0": "tumour_burden", "e0": "t_cells", "m0": "m_protein"}[name]
                raise ValueError(
                    f"Patient({field}=...): {type(model).__name__} has no parameter {name!r} (parameters "
                    f"{tuple(model.parameters)}); expected a model with the layer that uses it. Drop {field}, "
                    "or use a model with that layer (e.g. BCMAModel(layers=5))."
                )
            if isinstance(value, tuple):
                if name not in reference:
                    raise ValueError(
                        f"Patient: a relative {name} needs the reference (typical) value of {name!r}; "
                        "pass reference=TYPICAL of the drug module."
                    )
                value = value[1] * float(reference[name])
            out[name] = float(value)
        return out

    def describe(self) -> str:
        parts = [f"{k}={getattr(self, k):g}" for k in _PATIENT_UNITS if getattr(self, k) is not None]
        if self.high_burden:
            parts.append("high_burden")
        return ", ".join(parts) or "population"


_PATIENT_PARAMETER = {"sbcma_ng_ml": "s0", "tumour_burden": "n0", "t_cells": "e0", "m_protein": "m0"}

_PATIENT_UNITS = {
    "weight": "kg",
    "sbcma_ng_ml": "ng/mL",
    "tumour_burden": "relative to the typical n0",
    "t_cells": "relative to the typical e0",
    "m_protein": "g/L",
}


def _check_counts(n_draws, n_patients):
    for name, value in (("n_draws", n_draws), ("n_patients", n_patients)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: received {value!r}; expected a whole number >= 1.")


def _weights(patient, n, rng, weight_population):
    if patient.weight is not None:
        return np.full(n, float(patient.weight))
    mean, sd, low, high = weight_population
    return np.clip(rng.normal(mean, sd, n), low, high)


def prior_draws(
    model: AbstractStructuralModel,
    typical: Mapping,
    priors: Mapping | None = None,
    *,
    iiv: Mapping | None = None,
    n_draws: int = 20,
    n_patients: int = 4,
    patient: Patient | None = None,
    seed: int = 0,
    weight_population=(74.0, 15.0, 40.0, 140.0),
) -> ParameterDraws:
    """Draws from a model with priors: typical values ~ ``priors`` (one draw per ``n_draws``),
    patients with log-normal IIV ``iiv = {parameter: omega}`` (sd of log; 0.3 is about 30 % CV).

    Args:
        typical: {parameter: typical value} for every ``model.parameters`` (e.g. ``TYPICAL``).
        priors: {parameter: prior} (e.g. ``PRIORS``); ``None``: typical values fixed (IIV only).
        patient: known characteristics; their parameters are fixed and carry no IIV.
        weight_population: (mean, sd, low, high) kg of the weights of patients without a known weight.
        seed: all randomness comes from it (numpy ``default_rng(seed)``).
    """
    _check_counts(n_draws, n_patients)
    patient = patient or Patient()
    missing = [name for name in model.parameters if name not in typical]
    if missing:
        raise ValueError(
            f"prior_draws: typical has no value for {missing} of {type(model).__name__}; expected one for "
            f"each of {tuple(model.parameters)}. Add them (e.g. the drug module's TYPICAL)."
        )
    iiv = dict(iiv or {})
    for name, omega in iiv.items():
        if name not in model.parameters:
            raise ValueError(
                f"prior_draws iiv: received {name!r}, which is not a parameter of {type(model).__name__}; "
                f"expected names from {tuple(model.parameters)}."
            )
        if isinstance(omega, bool) or not isinstance(omega, (int, float)) or not (omega >= 0 and math.isfinite(omega)):
            raise ValueError(f"prior_draws iiv[{name!r}]: received {omega!r}; expected a finite sd of the log >= 0.")
    rng = np.random.default_rng(seed)
    n = n_draws * n_patients
    key = jax.random.PRNGKey(int(rng.integers(2**31)))
    values = {}
    for k, name in enumerate(model.parameters):
        if priors is not None and isinstance(priors.get(name), Fixed):
            draw = np.full(n_draws, float(priors[name].value))
        elif priors is not None and name in priors:
            draw = np.asarray(priors[name].distribution().sample(jax.random.fold_in(key, k), (n_draws,)), dtype=float)
        else:
            draw = np.full(n_draws, float(typical[name]))
        theta = np.repeat(draw, n_patients)
        omega = iiv.get(name, 0.0)
        if omega > 0:
            theta = theta * np.exp(omega * rng.standard_normal(n))
        values[name] = theta
    for name, value in patient.overrides(model, typical).items():
        values[name] = np.full(n, value)
    weights = _weights(patient, n, rng, weight_population)
    source = f"prior ({'priors' if priors is not None else 'typical values'}, IIV on {sorted(iiv) or 'nothing'})"
    return ParameterDraws(values, weights, n_draws, n_patients, f"{source}; patient: {patient.describe()}")


def fit_draws(
    fit,
    *,
    population=None,
    n_draws: int = 20,
    n_patients: int = 4,
    patient: Patient | None = None,
    seed: int = 0,
    weight_population=(74.0, 15.0, 40.0, 140.0),
) -> ParameterDraws:
    """Draws from a ``Fit``: ``n_draws`` posterior draws (chosen at random without replacement
    when there are enough), ``n_patients`` new patients each (fresh ``eta ~ N(0, 1)``).

    ``population``: the ``PopulationModel`` of the fit (default ``fit.population``; a loaded fit
    has none, pass it). Covariates of the population model come from ``patient.covariates`` and
    ``patient.weight`` (as ``WT``); every covariate it uses must be given.
    """
    _check_counts(n_draws, n_patients)
    patient = patient or Patient()
    population = population if population is not None else getattr(fit, "population", None)
    if population is None:
        raise ValueError(
            "fit_draws: the fit has no PopulationModel (a fit loaded from disk keeps only its description); "
            "expected population=<the PopulationModel used to fit>. Pass it."
        )
    posterior = fit.posterior
    posterior = getattr(posterior, "dataset", posterior)
    sites = {}
    for name in population.population_sites():
        if name not in posterior.data_vars:
            raise ValueError(
                f"fit_draws: the posterior has no variable {name!r}; expected the sites of the population "
                f"model {population.population_sites()}. Pass the PopulationModel this fit was made with."
            )
        x = np.asarray(posterior[name].values, dtype=float)
        sites[name] = x.reshape((-1,) + x.shape[2:])  # (chain * draw, ...)
    total = next(iter(sites.values())).shape[0] if sites else 1
    rng = np.random.default_rng(seed)
    pick = rng.choice(total, n_draws, replace=n_draws > total)
    n = n_draws * n_patients
    rows = np.repeat(pick, n_patients)
    values = {name: jnp.asarray(v[rows]) for name, v in sites.items()}
    for name in population.iiv_names:
        values[f"eta_{name}"] = jnp.asarray(rng.standard_normal(n))
        if population.is_centered(name):
            values[f"eta_{name}"] = values[f"eta_{name}"] * values[f"omega_{name}"]
    weights = _weights(patient, n, rng, weight_population)
    covariates = dict(patient.covariates)
    if patient.weight is not None:
        covariates.setdefault("WT", patient.weight)
    needed = sorted({e.covariate for p in population.parameters.values() for e in p.covariates})
    absent = [c for c in needed if c not in covariates]
    if absent:
        raise ValueError(
            f"fit_draws: the population model uses covariates {needed}; the patient gives no value for "
            f"{absent}. Pass Patient(covariates={{{absent[0]!r}: ...}}) (body weight: Patient(weight=...))."
        )
    names = tuple(covariates)
    cov = np.array([float(covariates[c]) for c in names]).reshape(1, 1, len(names))

    def one(v):
        from .._events import Events

        single = {k: (x[None] if k.startswith("eta_") else x) for k, x in v.items()}
        ev = Events(**{f: jnp.zeros((1, 1), dtype=float) for f in _EVENT_FLOAT},
                    **{f: jnp.zeros((1, 1), dtype=int) for f in _EVENT_INT},
                    **{f: jnp.ones((1, 1), dtype=bool) for f in _EVENT_BOOL},
                    cov_value=jnp.asarray(cov))
        out = population.individual_parameters(single, ev, names)
        return {k: jnp.reshape(x, (-1,))[0] for k, x in out.items()}

    individual = jax.vmap(one)(values)
    out = {name: np.asarray(individual[name], dtype=float) for name in population.structural.parameters}
    for name, value in patient.overrides(population.structural, {k: float(np.median(v)) for k, v in out.items()}).items():
        out[name] = np.full(n, value)
    return ParameterDraws(out, weights, n_draws, n_patients, f"fit ({total} posterior draws); patient: {patient.describe()}")


def estimated_parameters(population) -> tuple:
    """Names of the structural parameters a ``PopulationModel`` estimates: a typical value that is
    not ``Fixed``, IIV, or a covariate effect."""
    return tuple(name for name, p in population.parameters.items()
                 if not isinstance(p.typical, Fixed) or p.iiv is not None or p.covariates)


def fit_and_prior_draws(fit, population, model, typical: Mapping, priors: Mapping | None, *, iiv: Mapping | None = None,
                        n_draws: int = 20, n_patients: int = 4, patient: Patient | None = None,
                        seed: int = 0) -> ParameterDraws:
    """Draws for ``model`` (e.g. the full BCMA model L0-L5) from a ``Fit`` of a smaller model (e.g.
    PK + sBCMA sink): the parameters the fit estimated (``estimated_parameters(population)``) come
    from ``fit_draws`` (posterior draws, new random effects), every other parameter from
    ``prior_draws(model, typical, priors, iiv=...)``. Both use the same ``patient`` (its known
    values override either source) and draw ``n_draws x n_patients`` patients from ``seed``; the
    weights are those of the fit draws.
    """
    estimated = estimated_parameters(population)
    missing = [name for name in estimated if name not in model.parameters]
    if missing:
        raise ValueError(
            f"fit_and_prior_draws: the fit estimates {missing}, which {type(model).__name__} does not have "
            f"(parameters {tuple(model.parameters)}); expected a fit of a sub-model with the same parameter names."
        )
    prior = prior_draws(model, typical, priors, iiv={k: v for k, v in (iiv or {}).items() if k not in estimated},
                        n_draws=n_draws, n_patients=n_patients, patient=patient, seed=seed)
    patient = patient or Patient()
    fitted = population.structural.parameters  # the fit's model sees only the patient values it has
    sub = dataclasses.replace(patient, **{field: None for field, name in _PATIENT_PARAMETER.items()
                                          if name not in fitted})
    posterior = fit_draws(fit, population=population, n_draws=n_draws, n_patients=n_patients, patient=sub,
                          seed=seed + 1)
    values = dict(prior.values)
    values.update({name: posterior.values[name] for name in estimated})
    source = (f"fit for {list(estimated)} ({posterior.source.split(';')[0]}), {prior.source.split(';')[0]} for the "
              f"rest; patient: {patient.describe()}")
    return ParameterDraws(values, posterior.weights, n_draws, n_patients, source)


_EVENT_FLOAT = ("dose_time", "dose_amt", "dose_rate", "dose_ii", "obs_time", "obs_dv", "obs_limit", "cov_time")
_EVENT_INT = ("dose_cmt", "dose_ss", "dose_row", "obs_output", "obs_cens", "obs_row")
_EVENT_BOOL = ("dose_reset", "dose_mask", "obs_mask", "cov_mask")


@dataclasses.dataclass(frozen=True)
class Conditioned:
    """Result of ``condition_on_data``: ``draws`` (resampled, ``n_patients`` = 1: each draw is one
    sample of this patient's posterior), ``ess`` (effective sample size of the importance weights
    out of ``n_source`` simulated patients) and ``log_likelihood`` [n_source]."""

    draws: ParameterDraws
    ess: float
    n_source: int
    log_likelihood: np.ndarray


def condition_on_data(model, draws: ParameterDraws, regimen, observations: Mapping, sd: Mapping, *,
                      n_draws: int = 40, seed: int = 0, min_ess: float = 10.0, **simulate_options) -> Conditioned:
    """Update ``draws`` (the patient's prior: population draws with the patient's covariates) with
    the patient's first weeks of data, by importance resampling (SIR).

    Each simulated patient gets the likelihood of the data under the given ``regimen`` (the doses
    the patient received) and a log-normal residual error: log y ~ Normal(log prediction, sd[output]).
    ``n_draws`` patients are resampled with probability proportional to it. Exact as the number of
    source draws grows; the effective sample size says how well the source covers the posterior
    (a ``ValueError`` below ``min_ess``: give more source draws).

    Args:
        observations: {output name: (times [days], values)} e.g. {"conc": ([1, 3, 7], [5.1, 9.0, 12.2])},
            values > 0 in the output's unit.
        sd: {output name: sd of the log residual} for each observed output.
    """
    from .._ode.simulate import simulate

    if not isinstance(draws, ParameterDraws):
        raise TypeError(f"condition_on_data: received draws of type {type(draws).__name__}; expected ParameterDraws.")
    times, where = [], []
    for name, (t, y) in observations.items():
        if name not in model.outputs:
            raise ValueError(
                f"condition_on_data: received observations of {name!r}; expected outputs of {type(model).__name__} "
                f"{tuple(model.outputs)}."
            )
        t, y = np.atleast_1d(np.asarray(t, float)), np.atleast_1d(np.asarray(y, float))
        if t.shape != y.shape or not np.all(np.isfinite(t) & (t >= 0)) or not np.all(np.isfinite(y) & (y > 0)):
            raise ValueError(
                f"condition_on_data: observations[{name!r}] = ({t.tolist()}, {y.tolist()}); expected equal-length "
                "times >= 0 (days) and values > 0 (the residual error is log-normal). Remove values below the "
                "limit of quantification."
            )
        if name not in sd or not (isinstance(sd[name], (int, float)) and sd[name] > 0):
            raise ValueError(f"condition_on_data: sd[{name!r}] = {sd.get(name)!r}; expected the sd of the log residual > 0.")
        times.append(t)
        where.append((name, t, y))
    grid = np.unique(np.concatenate(times))
    events = regimen.to_events(model, grid, weights=draws.weights, until=float(grid[-1]) + 1e-9)
    sol = simulate(model, draws.values, events, **simulate_options)
    out = np.asarray(sol.outputs)
    loglik = np.zeros(draws.size)
    for name, t, y in where:
        pred = out[:, np.searchsorted(grid, t), model.output_index(name)]
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (np.log(y)[None, :] - np.log(pred)) / sd[name]
        loglik += np.where(np.isfinite(z), -0.5 * z**2, -np.inf).sum(axis=1)
    if not np.isfinite(loglik).any():
        raise ValueError("condition_on_data: no simulated patient gives a positive prediction at every observation; "
                         "check the regimen and the observation times.")
    w = np.exp(loglik - loglik.max())
    w /= w.sum()
    ess = float(1.0 / np.sum(w**2))
    if ess < min_ess:
        raise ValueError(
            f"condition_on_data: the importance weights have an effective sample size of {ess:.1f} out of "
            f"{draws.size} simulated patients; expected >= {min_ess:g}. The data are far from most prior "
            "patients: give more source draws (n_draws x n_patients), or check the data's units."
        )
    rng = np.random.default_rng(seed)
    pick = rng.choice(draws.size, n_draws, p=w)
    new = ParameterDraws({k: v[pick] for k, v in draws.values.items()}, draws.weights[pick], n_draws, 1,
                         f"{draws.source}; conditioned on {sum(len(t) for t in times)} observations (ESS {ess:.0f})")
    return Conditioned(new, ess, draws.size, loglik)


def patient_posterior(model, typical: Mapping, priors: Mapping | None, regimen, observations: Mapping, sd: Mapping,
                      *, iiv: Mapping | None = None, patient: Patient | None = None, n_draws: int = 40, seed: int = 0,
                      method: str = "laplace", ode_options: Mapping | None = None) -> ParameterDraws:
    """A patient's posterior from a model with priors and the patient's first weeks of data, by
    MAP + Laplace (``method="laplace"``, default: ``popkpd.fit(..., method="laplace")`` on this
    one patient) or by NUTS (``method="nuts"``: 2 chains, ``max(200, n_draws)`` warmup each,
    ``n_draws`` draws in all; exact up to Monte-Carlo error, slower).

    The prior of the patient's parameters is that of a new patient of ``prior_draws``: typical
    value ~ ``priors[name]`` (``Fixed(typical)`` when absent), times ``exp(omega eta)`` with
    ``omega = iiv[name]``; parameters fixed by ``patient`` are fixed. The data
    (``observations = {output: (times, values)}``, the ``regimen`` the patient received) enter with
    log-normal residuals of sd ``sd[output]``. Returns ``n_draws`` draws of the Gaussian
    approximation (``n_patients`` = 1). Faster than ``condition_on_data`` when the data are
    informative; an approximation where the posterior is far from Gaussian in the unconstrained
    parameters (then use ``condition_on_data`` with many source draws).
    """
    from .._inference import fit
    from .._statistical.population import Parameter, PopulationModel
    from .._statistical.priors import Fixed as FixedPrior
    from .._statistical.residual import LogNormalError

    patient = patient or Patient()
    iiv = dict(iiv or {})
    fixed = patient.overrides(model, typical)
    parameters = {}
    for name in model.parameters:
        if name in fixed:
            parameters[name] = Parameter(FixedPrior(fixed[name]))
            continue
        prior = priors.get(name) if priors is not None else None
        prior = prior if prior is not None else FixedPrior(float(typical[name]))
        omega = iiv.get(name, 0.0)
        parameters[name] = Parameter(prior, iiv=FixedPrior(float(omega)) if omega > 0 else None)
    if not any(p.iiv is not None or not isinstance(p.typical, FixedPrior) for p in parameters.values()):
        raise ValueError("patient_posterior: every parameter is fixed (no priors, no iiv); expected something to update.")
    names = list(observations)
    for name in names:
        if name not in model.outputs or name not in sd:
            raise ValueError(
                f"patient_posterior: observations of {name!r} need an output of {type(model).__name__} "
                f"{tuple(model.outputs)} and sd[{name!r}]; received sd for {sorted(sd)}."
            )
    grid = np.unique(np.concatenate([np.atleast_1d(np.asarray(observations[n][0], float)) for n in names]))
    weight = patient.weight if patient.weight is not None else 74.0
    events = regimen.to_events(model, grid, weights=[weight], outputs=names, until=float(grid[-1]) + 1e-9)
    dv = np.zeros(events.obs_time.shape)
    mask = np.zeros(events.obs_time.shape, bool)
    for k, name in enumerate(names):
        t, y = (np.atleast_1d(np.asarray(x, float)) for x in observations[name])
        if t.shape != y.shape or not np.all(y > 0):
            raise ValueError(f"patient_posterior: observations[{name!r}]: expected equal-length times and values > 0.")
        for ti, yi in zip(t, y):
            hit = (np.asarray(events.obs_time[0]) == ti) & (np.asarray(events.obs_output[0]) == model.output_index(name))
            dv[0, hit], mask[0, hit] = yi, True
    import jax.numpy as jnp

    events = dataclasses.replace(events, obs_dv=jnp.asarray(dv), obs_mask=jnp.asarray(mask))
    prediction = "closed_form" if getattr(model, "linear", False) and not ode_options else "ode"
    population = PopulationModel(model, parameters, {n: LogNormalError(FixedPrior(float(sd[n]))) for n in names},
                                 method=prediction, ode_options=ode_options)
    if method == "laplace":
        result = fit(population, events, method="laplace", draws=n_draws, seed=seed, progress_bar=False,
                     posterior_predictive=False)
    elif method == "nuts":
        half = -(-n_draws // 2)
        result = fit(population, events, method="nuts", chains=2, warmup=max(200, half), draws=half, seed=seed,
                     progress_bar=False, posterior_predictive=False)
    else:
        raise ValueError(f"patient_posterior(method={method!r}): expected 'laplace' (MAP + Gaussian "
                         "approximation, fast) or 'nuts' (exact up to Monte-Carlo error).")
    post = result.posterior
    post = getattr(post, "dataset", post)
    values = {}
    for name in model.parameters:
        if name in post.data_vars and post[name].ndim >= 3:
            values[name] = np.asarray(post[name].values, float).reshape(-1)
        elif f"{name}_pop" in post.data_vars:
            values[name] = np.asarray(post[f"{name}_pop"].values, float).reshape(-1)
        else:
            values[name] = np.full(n_draws, float(parameters[name].typical.value))
    n = len(values[model.parameters[0]])
    return ParameterDraws(values, np.full(n, float(weight)), n, 1,
                          f"{'Laplace' if method == 'laplace' else 'NUTS'} posterior of one patient ({int(mask.sum())} observations); patient: {patient.describe()}")
