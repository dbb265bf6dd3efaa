"""Trial designs and their simulation: virtual patients -> model trajectories -> a NONMEM-style table.

``TrialDesign`` holds everything a virtual trial needs: the structural model and its typical
values, the regimen, the ``VirtualPopulation`` and the ``link`` from covariates/etas to model
parameters, the horizon, the sampling schedule, the residual error models and LLOQs of the
measured outputs, the CRS read-out and the IMWG assessment visits. ``simulate_trial`` draws the
patients, simulates them in batches of a fixed padded shape (one compilation per design), and
returns a ``SimulatedTrial`` with the noise-free trajectories ("truth") on a dense grid and the
trial dataset with measurement noise and BLQ flags.

Units: days; drug and sBCMA in nM, M-protein g/L, IL-6 pg/mL, T cells as (E+A+X)/E0 (relative to
the patient's drug-free baseline), as the BCMA model's outputs. Dataset DVs are in these units so
that ``read_nonmem(path, model, dvid_outputs=DVID_OUTPUTS)`` fits them directly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from .._dosing.regimen import Regimen
from .._ode.simulate import simulate
from .._statistical.priors import Fixed
from .._statistical.residual import AbstractResidualError
from .._structural.base import AbstractStructuralModel
from .._structural.crs import crs_probability, peak_per_interval
from .population import VirtualPopulation, sample_population

DVID_OUTPUTS = {1: "conc", 2: "sbcma_total", 3: "m_protein", 4: "t_cells", 5: "il6", 6: "t_exhausted_fraction"}
"""DVID of each measured output in a simulated trial dataset (``read_nonmem(..., dvid_outputs=)``).
DVID 6, the exhausted share of the marrow T cells (an on-treatment flow panel), is not in
``standard_sampling``: a design measures it only when its ``sampling`` says when."""

OWN_NOISE_STREAM = ("t_exhausted_fraction",)
"""Outputs whose measurement noise comes from a stream of its own (``to_dataset``), so that
measuring them leaves every other value of a trial as it was (outputs added after the first five)."""

BATCH = 32
"""Patients per ``simulate`` call (the last batch is padded): one compiled shape per design."""

DENSE_STEP, DENSE_UNTIL = 0.1, 21.0
"""Truth grid: every 0.1 day over the first three weeks (IL-6 peaks after the priming doses),
then daily to the horizon, plus every sampling and assessment time."""


def standard_sampling(dose_times, horizon: float) -> dict:
    """A trial-like sampling schedule (days) from the nominal dose times [E, typical of phase 2]:

    * ``conc``: 1 and 2 days after each of the first three doses (post-dose), pre-dose (1 h before)
      at doses 2 to 8, then pre-dose at every 4th dose;
    * ``sbcma_total`` and ``m_protein``: baseline (day 0, pre-dose) and every 28 days;
    * ``t_cells``: baseline and days 7, 28, 56, 84;
    * ``il6``: baseline and 0.5, 1 and 2 days after each of the first three doses.

    Times at or after ``horizon`` are dropped.
    """
    d = np.asarray(sorted(dose_times), dtype=float)
    pre = 1.0 / 24.0
    conc = [t + k for t in d[:3] for k in (1.0, 2.0)] + [t - pre for t in d[1:8]] + [t - pre for t in d[8::4]]
    monthly = list(np.arange(0.0, horizon, 28.0))
    il6 = [0.0] + [t + k for t in d[:3] for k in (0.5, 1.0, 2.0)]
    sampling = {"conc": conc, "sbcma_total": monthly, "m_protein": monthly,
                "t_cells": [0.0, 7.0, 28.0, 56.0, 84.0], "il6": il6}
    return {k: sorted({round(float(t), 6) for t in v if 0.0 <= t < horizon}) for k, v in sampling.items()}


@dataclasses.dataclass(frozen=True)
class TrialDesign:
    """A virtual trial. Attributes (units in brackets):

    name: short name (e.g. "MajesTEC-1-like").
    model, typical: the structural model and its typical parameter values.
    regimen: the dosing regimen (per-kg doses use the ``weight`` covariate [kg]).
    population: the ``VirtualPopulation``; it must have a ``weight`` covariate.
    link: ``link(covariates, eta, typical) -> {parameter: [n] array}`` for every parameter of
        ``model`` (covariate effects and IIV; drug specific).
    n_patients: default trial size.
    horizon: length of follow-up [day].
    sampling: output name -> sampling times [day] (outputs of ``DVID_OUTPUTS``); default
        ``standard_sampling`` of the regimen's doses.
    errors: output name -> residual error model with ``Fixed`` sigmas (measurement noise).
    lloq: output name -> lower limit of quantification (output unit); absent = no BLQ.
    baseline_errors: covariate -> log-sd of its baseline measurement (log-normal, unbiased on the
        log scale); the dataset gets a column ``{COVARIATE}_MEASURED`` with the measured value
        beside the true one (e.g. marrow T cells by flow cytometry: ``{"t_marrow": 0.4}``).
    crs_coefs: (a0, a1, a2) of ``crs_probability`` on ln(serum IL-6 peak per dosing interval).
    high_burden: ``high_burden(covariates) -> [n] bool`` (the CRS model's high tumour burden).
    assessments: IMWG assessment visits [day]; default every 28 days from day 28.
    mw_kda: drug molecular weight [kDa] (nM x mw_kda = ng/mL).
    sbcma_threshold: baseline sBCMA threshold for the stratified ORR [ng/mL].
    """

    name: str
    model: AbstractStructuralModel
    typical: dict
    regimen: Regimen
    population: VirtualPopulation
    link: Callable
    n_patients: int
    horizon: float
    errors: dict
    crs_coefs: tuple
    high_burden: Callable
    mw_kda: float
    sbcma_threshold: float
    lloq: dict = dataclasses.field(default_factory=dict)
    baseline_errors: dict = dataclasses.field(default_factory=dict)
    sampling: dict | None = None
    assessments: tuple | None = None

    def __post_init__(self):
        if "weight" not in self.population.covariates:
            raise ValueError(f"TrialDesign {self.name!r}: the population has covariates "
                             f"{list(self.population.covariates)} but no 'weight'; expected a 'weight' "
                             "covariate in kg (it scales per-kg doses). Add weight=LogNormalCovariate(...).")
        if not (self.horizon > 28.0):
            raise ValueError(f"TrialDesign {self.name!r}: received horizon={self.horizon}; expected more "
                             "than 28 days (IMWG needs two monthly assessments).")
        measured = set(self.sampling_times()) | set(self.errors) | set(self.lloq)
        unknown = sorted(measured - set(DVID_OUTPUTS.values()))
        if unknown:
            raise ValueError(f"TrialDesign {self.name!r}: received sampling/errors/lloq for {unknown}; expected "
                             f"outputs among {sorted(DVID_OUTPUTS.values())} (DVID_OUTPUTS).")
        missing = sorted(n for n in self.sampling_times() if n not in self.errors)
        if missing:
            raise ValueError(f"TrialDesign {self.name!r}: outputs {missing} are sampled but have no error model; "
                             "expected errors={output: e.g. LogNormalError(Fixed(0.3))} for each.")
        for out, err in self.errors.items():
            if not isinstance(err, AbstractResidualError) or not all(
                    isinstance(p, Fixed) for p in err.priors(out).values()):
                raise ValueError(f"TrialDesign {self.name!r}: errors[{out!r}] = {err!r}; expected a residual error "
                                 "model with Fixed sigmas, e.g. popkpd.LogNormalError(popkpd.Fixed(0.3)).")
        for name, sd in self.baseline_errors.items():
            if name not in self.population.covariates or isinstance(sd, bool) or not isinstance(sd, (int, float)) \
                    or not sd > 0:
                raise ValueError(f"TrialDesign {self.name!r}: received baseline_errors[{name!r}] = {sd!r}; expected "
                                 f"a covariate of the population ({sorted(self.population.covariates)}) with a "
                                 "log-sd > 0 of its measurement, e.g. baseline_errors={'t_marrow': 0.4}.")
        if len(tuple(self.crs_coefs)) != 3:
            raise ValueError(f"TrialDesign {self.name!r}: received crs_coefs={self.crs_coefs!r}; expected "
                             "(a0, a1, a2) = (intercept, slope on ln IL-6 peak, high-burden effect).")
        if len(self.dose_times()) < 4:
            raise ValueError(f"TrialDesign {self.name!r}: the regimen gives {len(self.dose_times())} doses before "
                             f"day {self.horizon}; expected at least 4 (two step-up doses and two full doses).")

    def replace(self, **changes) -> "TrialDesign":
        return dataclasses.replace(self, **changes)

    def dose_times(self) -> np.ndarray:
        """Nominal dose times before the horizon [day]."""
        return np.array(sorted({d.time for d in self.regimen.doses(self.horizon)}), dtype=float)

    def sampling_times(self) -> dict:
        if self.sampling is not None:
            return {k: sorted(float(t) for t in v) for k, v in self.sampling.items()}
        return standard_sampling(self.dose_times(), self.horizon)

    def assessment_times(self) -> np.ndarray:
        if self.assessments is not None:
            return np.asarray(self.assessments, dtype=float)
        return np.arange(28.0, self.horizon + 1e-9, 28.0)

    def grid(self) -> np.ndarray:
        """The truth grid [day] (see ``DENSE_STEP``)."""
        parts = [np.arange(0.0, DENSE_UNTIL, DENSE_STEP), np.arange(DENSE_UNTIL, self.horizon + 1e-9, 1.0),
                 self.assessment_times(), *[np.asarray(v) for v in self.sampling_times().values()]]
        return np.unique(np.round(np.concatenate(parts), 6))


@dataclasses.dataclass(frozen=True)
class SimulatedTrial:
    """A simulated trial. ``covariates``/``eta``/``params``: one row per patient (``ID``);
    ``times`` [T] the truth grid (days); ``outputs``: output name -> [n, T] noise-free values;
    ``crs_probability``/``crs_event``: [n, K] per dosing interval (K = doses before the horizon);
    ``dataset``: the NONMEM-style table (see ``to_dataset``); ``seed``."""

    design: TrialDesign
    covariates: pd.DataFrame
    eta: pd.DataFrame
    params: pd.DataFrame
    times: np.ndarray
    outputs: dict
    crs_probability: np.ndarray
    crs_event: np.ndarray
    dataset: pd.DataFrame
    seed: int

    @property
    def n(self) -> int:
        return len(self.covariates)

    def at(self, output: str, time: float) -> np.ndarray:
        """[n] noise-free ``output`` at ``time`` (a grid time, day; pre-dose at a dose time)."""
        k = int(np.argmin(np.abs(self.times - time)))
        if abs(self.times[k] - time) > 1e-6:
            raise ValueError(f"SimulatedTrial.at: time {time} is not on the truth grid; expected one of the "
                             "grid times (design.grid()), e.g. a sampling time.")
        return self.outputs[output][:, k]


def _check_params(design: TrialDesign, params: dict, n: int) -> dict:
    missing = [p for p in design.model.parameters if p not in params]
    if missing:
        raise ValueError(f"TrialDesign {design.name!r}: link returned no values for {missing}; expected every "
                         "parameter of the model (use the typical value where there is no IIV).")
    out = {}
    for name in design.model.parameters:
        v = np.broadcast_to(np.asarray(params[name], dtype=float), (n,)).copy()
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise ValueError(f"TrialDesign {design.name!r}: link gave {name}={v[bad[0]]} for patient ID "
                             f"{bad[0] + 1}; expected finite values. Check the covariates and IIV of this parameter.")
        out[name] = v
    return out


def simulate_patients(design: TrialDesign, params: dict, weights) -> dict:
    """Noise-free trajectories on ``design.grid()``: output name -> [n, T]. ``params``: parameter ->
    [n]; ``weights`` [n] kg. Patients run in padded batches of ``BATCH``."""
    grid = design.grid()
    model = design.model
    weights = np.asarray(weights, dtype=float)
    n = weights.size
    chunks = []
    for start in range(0, n, BATCH):
        idx = np.arange(start, min(start + BATCH, n))
        idx = np.concatenate([idx, np.full(BATCH - idx.size, idx[-1])])
        events = design.regimen.to_events(model, grid, weights=weights[idx], until=design.horizon)
        sol = simulate(model, {k: v[idx] for k, v in params.items()}, events)
        chunks.append(np.asarray(sol.outputs)[: min(BATCH, n - start)])
    out = np.concatenate(chunks, axis=0)
    return {name: out[:, :, k] for k, name in enumerate(model.outputs)}


def simulate_trial(design: TrialDesign, *, n: int | None = None, seed: int = 0) -> SimulatedTrial:
    """Draw ``n`` patients (default ``design.n_patients``) with ``seed`` and simulate the trial."""
    n = design.n_patients if n is None else n
    cov, eta = sample_population(design.population, n, seed)
    params = _check_params(design, design.link(cov, eta, dict(design.typical)), n)
    outputs = simulate_patients(design, params, cov["weight"].to_numpy())
    times = design.grid()
    peaks = np.asarray(peak_per_interval(times, outputs["il6"], design.dose_times()))
    high = np.asarray(design.high_burden(cov), dtype=float)
    prob = np.asarray(crs_probability(np.maximum(peaks, 1e-12), high[:, None], design.crs_coefs))
    rng = np.random.default_rng([int(seed), 2])
    event = rng.random(prob.shape) < prob
    dataset = to_dataset(design, cov, times, outputs, np.random.default_rng([int(seed), 3]))
    return SimulatedTrial(design=design, covariates=cov, eta=eta, params=pd.DataFrame({"ID": cov["ID"], **params}),
                          times=times, outputs=outputs, crs_probability=prob, crs_event=event, dataset=dataset,
                          seed=int(seed))


def _noisy(error: AbstractResidualError, output: str, f: np.ndarray, rng) -> np.ndarray:
    sigma = {site: prior.value for site, prior in error.priors(output).items()}
    loc, scale = (np.asarray(a) for a in error.loc_scale(np.asarray(f, dtype=float), sigma, output))
    g = loc + scale * rng.standard_normal(f.shape)
    return np.exp(g) if error.log_scale else g


def to_dataset(design: TrialDesign, covariates: pd.DataFrame, times: np.ndarray, outputs: dict, rng) -> pd.DataFrame:
    """The trial as a NONMEM-style table, one block of rows per patient, time-ordered.

    Columns: ID, TIME (day), DV, AMT (nmol), EVID (1 dose, 0 observation), CMT (dose: 1-based
    state; observation: 0), MDV, RATE, DVID (``DVID_OUTPUTS``; 0 on doses), CENS (1 = below the
    LLOQ, DV then holds the LLOQ), then the baseline covariates of the population (one column per
    covariate, upper case: the true values), then ``{COVARIATE}_MEASURED`` for each covariate of
    ``design.baseline_errors``: the true value times exp(sd z), drawn after all DVs (so a design
    without them gives the same DVs). An observation at a dose time is listed before the dose
    (pre-dose). DV = the noise-free value at the sampling time with noise from ``design.errors``;
    the noise of the outputs in ``OWN_NOISE_STREAM`` comes from a stream spawned from ``rng``
    (one per output), which leaves ``rng``'s own draws as they are.
    """
    model = design.model
    sampling = design.sampling_times()
    own = {out: rng.spawn(1)[0] for out in OWN_NOISE_STREAM if out in sampling}
    index = {round(float(t), 6): k for k, t in enumerate(times)}
    blocks = []
    for i in range(len(covariates)):
        w = float(covariates["weight"].iloc[i])
        doses = design.regimen.dose_table(weight=w, until=design.horizon)
        rows = {"TIME": list(doses["time"]), "DV": [0.0] * len(doses), "AMT": list(doses["amount"]),
                "EVID": [1] * len(doses), "CMT": [model.state_index(s) + 1 for s in doses["state"]],
                "RATE": list(doses["rate"]), "DVID": [0] * len(doses), "CENS": [0] * len(doses),
                "ORDER": [1] * len(doses)}
        for dvid, out in DVID_OUTPUTS.items():
            if out not in sampling:
                continue
            t = np.asarray(sampling[out], dtype=float)
            f = outputs[out][i, [index[round(float(x), 6)] for x in t]]
            y = _noisy(design.errors[out], out, f, own.get(out, rng))
            lloq = design.lloq.get(out, -math.inf)
            blq = y < lloq
            rows["TIME"] += list(t)
            rows["DV"] += list(np.where(blq, lloq, y))
            rows["AMT"] += [0.0] * t.size
            rows["EVID"] += [0] * t.size
            rows["CMT"] += [0] * t.size
            rows["RATE"] += [0.0] * t.size
            rows["DVID"] += [dvid] * t.size
            rows["CENS"] += list(blq.astype(int))
            rows["ORDER"] += [0] * t.size
        block = pd.DataFrame(rows).sort_values(["TIME", "ORDER", "DVID"], kind="stable").drop(columns="ORDER")
        block.insert(0, "ID", int(covariates["ID"].iloc[i]))
        block["MDV"] = (block["EVID"] != 0).astype(int)
        for name in design.population.covariates:
            block[name.upper()] = covariates[name].iloc[i]
        blocks.append(block)
    table = pd.concat(blocks, ignore_index=True)
    for name, sd in design.baseline_errors.items():
        measured = covariates[name].to_numpy(dtype=float) * np.exp(sd * rng.standard_normal(len(covariates)))
        table[f"{name.upper()}_MEASURED"] = table["ID"].map(dict(zip(covariates["ID"].astype(int), measured)))
    order = ["ID", "TIME", "DV", "AMT", "EVID", "CMT", "MDV", "RATE", "DVID", "CENS"]
    return table[order + [c for c in table.columns if c not in order]]
