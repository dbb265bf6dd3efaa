"""Virtual populations and trial designs calibrated to MajesTEC-1 and MagnetisMM-3 (issue 5).

``DESIGNS``: name -> ``TrialDesign``:

* ``"majestec1"``: teclistamab, label regimen (0.06 / 0.3 mg/kg step-up, 1.5 mg/kg SC weekly), n = 165;
* ``"magnetismm3"``: elranatamab cohort A, label regimen (12 / 32 mg step-up, 76 mg SC weekly,
  every 2 weeks from week 25 for every patient), n = 123.

Both follow patients for ``HORIZON`` days with monthly IMWG assessments. ``TARGETS`` holds the
published values (science.md §3) with the tolerance each is held to; ``PK_TIMEPOINTS`` the PK
summaries. Regenerate the calibration table with ``python -m models.virtual_populations``
(writes docs/virtual_trials_table.md; ``--quick`` for a smaller smoke run; ``--calibrate`` re-runs
the calibration first; ``--at TRIAL MEDIANS`` prints the calibration population's ORR and sBCMA
summaries at other population medians; docs/virtual_trials.md section 3).

Everything that calibration changes is in ``CALIBRATION`` (one place): population medians of
mechanistic parameters as multipliers of the drug's ``TYPICAL`` (so re-tuned typical values in
``models/_common.py`` and the drug modules carry through) and the CRS intercept. Covariate
distributions and IIVs are literature values or stated estimates, not tuned. Tags as in
science.md: [S] source, [S3] third-party transcription, [R] recalled, [B] commentary, [E] estimate.

Covariates (``VirtualPopulation``), units, basis:

==============  =============================  ===================================================
covariate       marginal (median, log-sd)      basis
==============  =============================  ===================================================
weight          74 kg (71.45 elra), 0.2        MIAO23 / HIBMA26 reference weights [S3]; sd [E]
sbcma           90 ng/mL tec, 45 elra; 1.35    HIBMA26 median 45 ng/mL, IIV 135 % [S3]; tec assay
                                               median from GIR23 responder / non-responder medians
                                               54.9 / 304 ng/mL [B] -> ~90 [E]
burden          N0 / N0_typ: 1, 0.8            [E]; N0_typ 6.55e9 cells (CAM26 [S3])
m0              20 g/L, 0.8 (1 - 100 g/L)      POELS25 range 0-70 g/L [S3]; median [E]
cd3_blood       203 cells/uL, 1.0 (16-2580)    POELS25 range 16-2580, geometric mid 203 [S3]
t_marrow        E0 / E0_typ: 1, 0.7            [E]; E:T = 0.27 t_marrow / burden (CAM26 [S3])
bcma_density    5000 /cell, 1.0 (500-20000)    2,000-12,590 (CAM26, POELS25) [S3]; range [E]
iss             I/II/III 0.53/0.35/0.12        MajesTEC-1 baseline [R]; MagnetisMM-3 similar [R]
==============  =============================  ===================================================

Latent correlations: sbcma-burden 0.73 (Spearman 0.71 with marrow plasma cells, Ghermezi 2017 [S];
latent rho = 2 sin(pi 0.71 / 6)); m0-burden 0.5, iss-burden 0.5, iss-sbcma 0.4, cd3_blood-t_marrow
0.6, t_marrow-burden -0.3 (high burden with low E:T, LEE24 [S] qualitative) [E]; BCMA density
independent of everything (CORTES24: density not associated with response [S]).

Covariate effects (``link``): teclistamab CL1 (WT/74)^0.704 x 1.31 [ISS II] x 1.67 [ISS III],
Vc (WT/74)^0.358, Vp (WT/74)^1.40 (MIAO23 [S3]); elranatamab Vc (WT/71.45)^1.017 (HIBMA26 [S3]);
s0 = sbcma (ng/mL -> nM at 5.4 kDa), n0 = N0_typ burden, e0 = E0_typ t_marrow, r_b0 =
bcma_density, m0 = m0. Not modelled: IgG type, sex, age effects on PK.

IIV (log-sd): teclistamab cl 0.50, cl2 0.84, vc 0.46, ka 0.43 (MIAO23 53.6 / 107 / 48.8 / 45.2 % CV
[S3], log-sd = sqrt(ln(1 + CV^2))); elranatamab cl 1.0, vc 0.69, ka 0.68 (HIBMA26 100 / 68.6 / 68.4 %,
log-sd = CV [S3]); both: kg 1.0 (POELS25 VPop +-10-fold [S3]), kmax 0.8, chi 1.0, tau50_n 1.0,
k_exh 0.7, k_rec 0.7 (prior sds, models/_common.py), emax_il6 1.0 [E].

Measurement (``errors``, ``lloq``): drug log-normal 0.417 (tec, MIAO23 [S3]) / 0.42 (elra total
drug, HIBMA26 [S3]), LLOQ 0.1 nM [E]; total sBCMA log-normal 0.347 (HIBMA26 [S3]), LLOQ 0.05 nM [E];
M-protein additive 0.5 g/L + proportional 10 % [E], LLOQ 1 g/L (electrophoresis) [E]; T cells
log-normal 0.3 [E]; IL-6 log-normal 0.4 [E], LLOQ 1 pg/mL [E]; exhausted share of the marrow T
cells (DVID 6, measured only by designs whose ``sampling`` has it: a flow panel of exhaustion
markers on treatment) log-normal 0.3 [E], LLOQ 0.01 (1 % of the T cells) [E]. Baseline marrow T cells
(``baseline_errors``; dataset column T_MARROW_MEASURED beside the true T_MARROW): flow cytometry of
a marrow aspirate, log-normal 0.4 [E] (aspirate haemodilution and gating; the fit of
fits/majestec_virtual may use it as the patients' measured E0).

CRS: P(CRS in a dosing interval) = expit(a0 + 1.3 ln IL-6 peak + 1.1 [high burden]) (slopes:
science.md L5 prior means [E]); high burden = M-protein >= 50 g/L or burden >= 2.7 (HIBMA26's
definition uses BMPC >= 80 % or M-spike >= 5 g/dL [S3]; the burden cut-off [E]); a0 calibrated to
CRS after step-up dose 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import popkpd
from popkpd._trial import (
    LogNormalCovariate,
    PKTimepoint,
    StageCovariate,
    Target,
    TrialDesign,
    VirtualPopulation,
    compare,
    simulate_trial,
    summarise_trial,
)

from . import elranatamab, teclistamab

HORIZON = 336.0
"""Follow-up (days): 12 cycles of 28 days (MajesTEC-1 median follow-up 14.1 months [S])."""

CALIBRATION = {
    "majestec1": {"medians": {"tau50_n": 301.0}, "crs_a0": -3.816},
    "magnetismm3": {"medians": {"tau50_n": 2158.0}, "crs_a0": -6.481},
}
"""The calibrated quantities: population medians of mechanistic parameters as multipliers of the
drug's TYPICAL, and the CRS intercept a0. Set by ``calibrate`` (see docs/virtual_trials.md)."""

CRS_SLOPES = (1.3, 1.1)
MECHANISTIC_IIV = {"kg": 1.0, "kmax": 0.8, "chi": 1.0, "tau50_n": 1.0, "k_exh": 0.7, "k_rec": 0.7, "emax_il6": 1.0}


def population(sbcma_median: float, weight_median: float, iss=(0.527, 0.352, 0.121), pk_iiv=None):
    """The virtual population of module docstring's table (drug PK IIV in ``pk_iiv``)."""
    return VirtualPopulation(
        covariates={
            "weight": LogNormalCovariate(weight_median, 0.2, 40.0, 140.0),
            "sbcma": LogNormalCovariate(sbcma_median, 1.35, 1.0, 1500.0),
            "burden": LogNormalCovariate(1.0, 0.8, 0.05, 10.0),
            "m0": LogNormalCovariate(20.0, 0.8, 1.0, 100.0),
            "cd3_blood": LogNormalCovariate(203.0, 1.0, 16.0, 2580.0),
            "t_marrow": LogNormalCovariate(1.0, 0.7, 0.05, 10.0),
            "bcma_density": LogNormalCovariate(5000.0, 1.0, 500.0, 20000.0),
            "iss": StageCovariate(tuple(iss)),
        },
        correlation={
            ("sbcma", "burden"): 0.73, ("m0", "burden"): 0.5, ("iss", "burden"): 0.5, ("iss", "sbcma"): 0.4,
            ("cd3_blood", "t_marrow"): 0.6, ("t_marrow", "burden"): -0.3,
        },
        iiv={**MECHANISTIC_IIV, **(pk_iiv or {})},
    )


def _common_link(cov, eta, typical, medians):
    """Parameters shared by both drugs: system covariates, calibrated medians, IIV."""
    n = len(cov)
    p = {name: np.full(n, value) for name, value in typical.items()}
    for name, factor in medians.items():
        p[name] = p[name] * factor
    for name in eta.columns.drop("ID"):
        p[name] = p[name] * np.exp(eta[name].to_numpy())
    p["s0"] = np.asarray(popkpd.ng_per_ml_to_nm(cov["sbcma"].to_numpy(), popkpd.SBCMA_MW_KDA))
    p["n0"] = typical["n0"] * cov["burden"].to_numpy()
    p["e0"] = typical["e0"] * cov["t_marrow"].to_numpy()
    p["r_b0"] = cov["bcma_density"].to_numpy()
    p["m0"] = cov["m0"].to_numpy()
    return p


def teclistamab_link(cov, eta, typical, medians=None):
    """Teclistamab parameters (MIAO23 covariate effects, module docstring)."""
    medians = CALIBRATION["majestec1"]["medians"] if medians is None else medians
    p = _common_link(cov, eta, typical, medians)
    wt = cov["weight"].to_numpy() / 74.0
    iss = cov["iss"].to_numpy()
    p["cl"] = p["cl"] * wt**0.704 * np.where(iss == 2, 1.31, 1.0) * np.where(iss == 3, 1.67, 1.0)
    p["vc"] = p["vc"] * wt**0.358
    p["vp"] = p["vp"] * wt**1.40
    return p


def elranatamab_link(cov, eta, typical, medians=None):
    """Elranatamab parameters (HIBMA26 weight effect on Vc, module docstring)."""
    medians = CALIBRATION["magnetismm3"]["medians"] if medians is None else medians
    p = _common_link(cov, eta, typical, medians)
    p["vc"] = p["vc"] * (cov["weight"].to_numpy() / 71.45) ** 1.017
    return p


def high_burden(cov):
    """High tumour burden for the CRS model: M-protein >= 50 g/L or burden >= 2.7 (module docstring)."""
    return (cov["m0"].to_numpy() >= 50.0) | (cov["burden"].to_numpy() >= 2.7)


def _errors(drug_sd):
    return {
        "conc": popkpd.LogNormalError(popkpd.Fixed(drug_sd)),
        "sbcma_total": popkpd.LogNormalError(popkpd.Fixed(0.347)),
        "m_protein": popkpd.Combined(popkpd.Fixed(0.5), popkpd.Fixed(0.1)),
        "t_cells": popkpd.LogNormalError(popkpd.Fixed(0.3)),
        "il6": popkpd.LogNormalError(popkpd.Fixed(0.4)),
        "t_exhausted_fraction": popkpd.LogNormalError(popkpd.Fixed(0.3)),
    }


BASELINE_ERRORS = {"t_marrow": 0.4}
"""Log-sd of the baseline covariates measured with error (module docstring, "Measurement")."""

LLOQ = {"conc": 0.1, "sbcma_total": 0.05, "m_protein": 1.0, "il6": 1.0, "t_exhausted_fraction": 0.01}


def designs(calibration=None) -> dict:
    """The two trial designs at ``calibration`` (default ``CALIBRATION``)."""
    cal = CALIBRATION if calibration is None else calibration
    tec_med, elra_med = cal["majestec1"]["medians"], cal["magnetismm3"]["medians"]
    return {
        "majestec1": TrialDesign(
            name="MajesTEC-1-like (teclistamab)", model=teclistamab.MODEL, typical=teclistamab.TYPICAL,
            regimen=teclistamab.REGIMEN,
            population=population(90.0, 74.0, pk_iiv={"cl": 0.50, "cl2": 0.84, "vc": 0.46, "ka": 0.43}),
            link=lambda c, e, t: teclistamab_link(c, e, t, tec_med),
            n_patients=165, horizon=HORIZON, errors=_errors(0.417), lloq=LLOQ,
            crs_coefs=(cal["majestec1"]["crs_a0"], *CRS_SLOPES), high_burden=high_burden,
            mw_kda=teclistamab.MW_KDA, sbcma_threshold=400.0, baseline_errors=BASELINE_ERRORS,
        ),
        "magnetismm3": TrialDesign(
            name="MagnetisMM-3-like (elranatamab, cohort A)", model=elranatamab.MODEL, typical=elranatamab.TYPICAL,
            regimen=elranatamab.REGIMEN,
            population=population(45.0, 71.45, pk_iiv={"cl": 1.0, "vc": 0.69, "ka": 0.68}),
            link=lambda c, e, t: elranatamab_link(c, e, t, elra_med),
            n_patients=123, horizon=HORIZON, errors=_errors(0.42), lloq=LLOQ,
            crs_coefs=(cal["magnetismm3"]["crs_a0"], *CRS_SLOPES), high_burden=high_burden,
            mw_kda=elranatamab.MW_KDA, sbcma_threshold=100.0, baseline_errors=BASELINE_ERRORS,
        ),
    }


DESIGNS = designs()

_PRE = 1.0 / 24.0
PK_TIMEPOINTS = {
    "majestec1": (
        PKTimepoint("C pre first full dose (ug/mL)", "conc", "value", 6.0 - _PRE),
        PKTimepoint("C trough after 1 full dose (ug/mL)", "conc", "value", 13.0 - _PRE),
        PKTimepoint("C trough after 2 full doses (ug/mL)", "conc", "value", 20.0 - _PRE),
        PKTimepoint("C trough after 3 full doses (ug/mL)", "conc", "value", 27.0 - _PRE),
        PKTimepoint("Cave first full-dose week, median (ug/mL)", "conc", "average", 6.0, 13.0, "median"),
        PKTimepoint("C trough after 4 full doses, median (ug/mL)", "conc", "value", 34.0 - _PRE, None, "median"),
    ),
    "magnetismm3": (
        PKTimepoint("free C peak after 12 mg SUD1, geo. mean (ng/mL)", "conc_free", "peak", 0.0, 3.0, "geomean",
                    "ng/mL"),
        PKTimepoint("C trough 76 mg QW week 23, mean (ug/mL)", "conc", "value", 161.0 - _PRE),
    ),
}

TARGETS = {
    "majestec1": (
        Target("orr", "ORR (>= PR)", 0.630, 165, "rate", None, "MOREAU22 104/165 [S]"),
        Target("vgpr", ">= VGPR", 0.588, 165, "rate", None, "nature s41408-025-01259-z [S]"),
        Target("cr", ">= CR", 0.394, 165, "rate", None, "MOREAU22 65/165 [S]"),
        Target("ttr_months", "median time to first response (months)", 1.2, 150, "absolute", 0.5,
               "J&J Dec 2021, N=150 [S]"),
        Target("crs_sud1", "CRS after step-up dose 1", 0.42, 165, "rate", None, "label recollection [R]"),
        Target("crs_sud2", "CRS after step-up dose 2", 0.35, 165, "rate", None, "label recollection [R]"),
        Target("crs_full1", "CRS after first full dose", 0.24, 165, "rate", None, "label recollection [R]"),
        Target("crs_any", "CRS any (model: first 4 dosing intervals)", 0.721, 165, "rate", None,
               "Cancer 2023;129:2035 119/165 [S]"),
        Target("sbcma_responders", "median baseline sBCMA, responders (ng/mL)", 54.9, None, "ratio", 1.5,
               "GIR23 [B]"),
        Target("sbcma_nonresponders", "median baseline sBCMA, non-responders (ng/mL)", 304.0, None, "ratio", 1.5,
               "GIR23 [B]"),
        Target("orr_above", "ORR, baseline sBCMA > 400 ng/mL (vs <= 400)", None, None, "lower", "orr_below",
               "LEE24: > 400 ng/mL associated with refractoriness [S]"),
        Target("C pre first full dose (ug/mL)", "mean C at first full dose (ug/mL)", 1.1, None, "ratio", 1.5,
               "FDA BLA Fig 9 digitised mean [S3]"),
        Target("C trough after 1 full dose (ug/mL)", "mean C 1 week after first full dose (ug/mL)", 6.0, None,
               "ratio", 1.5, "FDA BLA Fig 9 digitised mean [S3]"),
        Target("C trough after 2 full doses (ug/mL)", "mean C 2 weeks after first full dose (ug/mL)", 10.0, None,
               "ratio", 1.5, "FDA BLA Fig 9 digitised mean [S3]"),
        Target("C trough after 3 full doses (ug/mL)", "mean C 3 weeks after first full dose (ug/mL)", 14.0, None,
               "ratio", 1.5, "FDA BLA Fig 9 digitised mean 13-15 [S3]"),
        Target("Cave first full-dose week, median (ug/mL)", "median Cave, first full-dose week (ug/mL)", 5.4, None,
               "ratio", 1.5, "MIAO23 Fig 3 read-off [S3]"),
        Target("C trough after 4 full doses, median (ug/mL)", "median C trough after 4 full doses (ug/mL)", 15.8,
               None, "ratio", 1.5, "MIAO23 Fig 3 read-off [S3]"),
    ),
    "magnetismm3": (
        Target("orr", "ORR (>= PR)", 0.610, 123, "rate", None, "LESOK23 75/123 [S]"),
        Target("vgpr", ">= VGPR", 0.561, 123, "rate", None, "LESOK23 [R]"),
        Target("cr", ">= CR", 0.350, 123, "rate", None, "LESOK23 [S]"),
        Target("ttr_months", "median time to first response (months)", 1.2, 123, "absolute", 0.5, "[R]"),
        Target("crs_sud1", "CRS after step-up dose 1", 0.43, 183, "rate", None, "Niesvizky ASH 2023 79/183 [S]"),
        Target("crs_sud2", "CRS after step-up dose 2", 0.19, 180, "rate", None, "35/180 [S]"),
        Target("crs_full1", "CRS after first full dose", 0.07, 183, "rate", None, "13/183 [S]"),
        Target("crs_any", "CRS any (model: first 4 dosing intervals)", 0.577, 123, "rate", None, "LESOK23 [S]"),
        Target("orr_above", "ORR, baseline sBCMA > 100 ng/mL", 0.38, 123, "rate", None,
               "POELS25 VPop target ~38 % (n assumed 123) [S3]"),
        Target("orr_below", "ORR, baseline sBCMA <= 100 ng/mL", 0.80, 123, "rate", None,
               "POELS25 VPop target ~80 % (n assumed 123) [S3]"),
        Target("free C peak after 12 mg SUD1, geo. mean (ng/mL)", "geo. mean peak free drug after SUD1 (ng/mL)",
               212.0, None, "ratio", 1.5, "HIBMA26 [S3]"),
        Target("C trough 76 mg QW week 23, mean (ug/mL)", "C trough at steady state, 76 mg QW (ug/mL)", 12.4, None,
               "ratio", 1.5, "POELS25 model output, not data [S3]"),
    ),
}


def run_trial(name: str, *, n=None, seed: int = 0, calibration=None):
    """Simulate trial ``name`` and return (trial, summary, comparison table)."""
    design = designs(calibration)[name]
    trial = simulate_trial(design, n=n, seed=seed)
    summary = summarise_trial(trial, PK_TIMEPOINTS[name])
    return trial, summary, compare(summary, TARGETS[name])


def calibrate_crs_intercept(trial, target: float) -> float:
    """The intercept a0 for which the mean P(CRS after step-up dose 1) over the trial's patients
    equals ``target`` (the IL-6 peaks do not depend on a0, so no re-simulation is needed)."""
    from scipy.optimize import brentq

    a0, a1, a2 = trial.design.crs_coefs
    logit_rest = np.log(trial.crs_probability[:, 0]) - np.log1p(-trial.crs_probability[:, 0]) - a0

    def gap(x):
        return float(np.mean(1.0 / (1.0 + np.exp(-(x + logit_rest))))) - target

    return float(brentq(gap, -50.0, 50.0))


CALIBRATION_SEED = 100
"""Seed of the calibration populations (the reported trials use other seeds)."""
CALIBRATION_SIZE = 2
"""Calibration populations are this many times the trial size (less Monte-Carlo error)."""


def calibration_population(name: str, medians: dict):
    """Simulate the calibration population of trial ``name`` (``CALIBRATION_SIZE`` x the trial size,
    seed ``CALIBRATION_SEED``) with population ``medians`` (multipliers of TYPICAL; they replace
    ``CALIBRATION[name]["medians"]``). Returns (trial, summary, calibration used)."""
    typical = DESIGNS[name].typical
    unknown = sorted(set(medians) - set(typical))
    if unknown:
        raise ValueError(f"calibration_population({name!r}): received medians for {unknown}; expected names of "
                         f"the drug's TYPICAL parameters ({sorted(typical)}); fix the parameter name.")
    cal = {k: {"medians": dict(v["medians"]), "crs_a0": v["crs_a0"]} for k, v in CALIBRATION.items()}
    cal[name]["medians"] = dict(medians)
    design = designs(cal)[name]
    trial = simulate_trial(design, n=CALIBRATION_SIZE * DESIGNS[name].n_patients, seed=CALIBRATION_SEED)
    return trial, summarise_trial(trial), cal


def describe_population(name: str, medians: dict, s: dict) -> str:
    """One line: ORR (with its target) and the sBCMA-stratified summaries of a summary ``s``."""
    orr_target = next(t.published for t in TARGETS[name] if t.key == "orr")
    threshold = DESIGNS[name].sbcma_threshold
    return (f"{name} medians x {medians}: ORR {s['orr']:.3f} (target {orr_target}), >= VGPR {s['vgpr']:.3f}, "
            f">= CR {s['cr']:.3f}; ORR above / at or below {threshold:g} ng/mL {s['orr_above']:.2f} / "
            f"{s['orr_below']:.2f} (n above {s['n_above']}); median sBCMA responders / non-responders "
            f"{s['sbcma_responders']:.1f} / {s['sbcma_nonresponders']:.1f} ng/mL")


def calibrate(name: str, *, parameter: str = "tau50_n", steps: int = 11, log10_range=(-3.0, 5.0),
              verbose=True) -> dict:
    """Calibrate trial ``name``: the population median of ``parameter`` (default ``tau50_n``; as a
    multiplier of TYPICAL) by bisection on log10 of the multiplier within ``log10_range`` until the
    ORR of a calibration population (``CALIBRATION_SIZE`` x the trial size, seed
    ``CALIBRATION_SEED``, common random numbers across steps) matches the published ORR; then the
    CRS intercept a0 so that the mean P(CRS after step-up dose 1) of that population matches its
    target. Everything else is a prediction. ORR must fall as the multiplier rises (true of
    ``tau50_n`` and ``x_sbm``); each step prints the ORR and the sBCMA-stratified summaries.

    Returns ``{"medians": {...}, "crs_a0": a0}`` for ``CALIBRATION[name]``.
    """
    targets = {t.key: t.published for t in TARGETS[name]}
    lo, hi = log10_range

    def run(log10_factor):
        medians = {parameter: 10.0**log10_factor}
        trial, s, cal = calibration_population(name, medians)
        if verbose:
            print(f"  log10 multiplier {log10_factor:.3f}: {describe_population(name, medians, s)}", flush=True)
        return s["orr"], trial, cal

    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        orr, trial, cal = run(mid)
        if orr > targets["orr"]:
            lo = mid
        else:
            hi = mid
    orr, trial, cal = run(0.5 * (lo + hi))
    result = cal[name]
    result["medians"][parameter] = float(f"{result['medians'][parameter]:.4g}")
    result["crs_a0"] = round(calibrate_crs_intercept(trial, targets["crs_sud1"]), 3)
    return result


def response_drivers(trial) -> dict:
    """Spearman correlation of response (best >= PR, 0/1) with each covariate, E:T and the
    parameters with IIV: what separates responders from non-responders in the virtual trial."""
    from scipy import stats

    from popkpd._trial.summary import responses

    responder = np.asarray(responses(trial).best) >= 3
    values = {c: trial.covariates[c].to_numpy() for c in trial.covariates.columns if c != "ID"}
    values["E:T"] = 0.27 * values["t_marrow"] / values["burden"]
    values.update({f"{p} (IIV)": trial.params[p].to_numpy() for p in trial.eta.columns if p != "ID"})
    return {k: float(stats.spearmanr(v, responder).statistic) for k, v in values.items()}


def _table_markdown(name, summary, table, seconds, drivers, label=""):
    lines = [f"### {designs()[name].name}{label}: n = {summary['n']}, horizon {HORIZON:g} days, {seconds:.0f} s", "",
             "| target | published | simulated | simulated 95% CI | tolerance | within | source |",
             "|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        pub = "-" if r["published"] is None or np.isnan(r["published"]) else f"{r['published']:.3g}"
        lines.append(f"| {r['target']} | {pub} | {r['simulated']:.3g} | {r['simulated 95% CI']} | {r['tolerance']} | "
                     f"{'yes' if r['within'] else '**no**'} | {r['source']} |")
    best = summary["best"]
    counts = {c: best.count(c) for c in ("PD", "SD", "MR", "PR", "VGPR", "CR")}
    lines += ["", f"Best response counts: {counts}; patients above the sBCMA threshold: {summary['n_above']}; "
              f"ORR above / at or below: {summary['orr_above']:.2f} / {summary['orr_below']:.2f}; CRS in any "
              f"dosing interval to the horizon: {summary['crs_all']:.2f}.", "",
              "Spearman correlation of response (>= PR) with: "
              + ", ".join(f"{k} {v:+.2f}" for k, v in sorted(drivers.items(), key=lambda kv: -abs(kv[1]))) + ".", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the calibration table (docs/virtual_trials_table.md).")
    parser.add_argument("--quick", action="store_true", help="32 patients per trial (smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--large", type=int, default=5,
                        help="also simulate a population of LARGE x the trial size (seed + 1), whose smaller "
                        "Monte-Carlo error tells model misses from one trial's chance (0: skip)")
    parser.add_argument("--out", default="docs/virtual_trials_table.md")
    parser.add_argument("--calibrate", action="store_true",
                        help="re-run the calibration first (prints the new CALIBRATION to paste into this module)")
    parser.add_argument("--parameter", default="tau50_n",
                        help="population median moved by --calibrate (default tau50_n; e.g. x_sbm)")
    parser.add_argument("--trials", nargs="+", default=["majestec1", "magnetismm3"], choices=["majestec1", "magnetismm3"],
                        help="trials to calibrate (the others keep CALIBRATION)")
    parser.add_argument("--log10-range", nargs=2, type=float, default=(-3.0, 5.0), metavar=("LO", "HI"),
                        help="bisection range of log10 of the multiplier (default -3 5; the first step is its middle)")
    parser.add_argument("--at", nargs=2, action="append", metavar=("TRIAL", "MEDIANS"),
                        help="print the calibration population's ORR and sBCMA summaries with these population "
                        "medians (JSON multipliers of TYPICAL, e.g. majestec1 '{\"x_sbm\": 7.39}'; repeatable) and exit")
    args = parser.parse_args(argv)
    if args.at:
        import json

        for name, text in args.at:
            if name not in DESIGNS:
                parser.error(f"--at received trial {name!r}; expected one of {sorted(DESIGNS)}")
            try:
                medians = {str(k): float(v) for k, v in json.loads(text).items()}
            except (ValueError, AttributeError) as err:
                parser.error(f"--at {name} received {text!r} ({err}); expected a JSON object of multipliers, "
                             "e.g. '{\"tau50_n\": 20}'")
            print(describe_population(name, medians, calibration_population(name, medians)[1]), flush=True)
        return 0
    calibration = CALIBRATION
    if args.calibrate:
        calibration = dict(CALIBRATION)
        for name in args.trials:
            calibration[name] = calibrate(name, parameter=args.parameter, steps=4 if args.quick else 11,
                                        log10_range=tuple(args.log10_range))
        print(f"CALIBRATION = {calibration}", flush=True)
    parts = ["# Virtual trials: simulated vs published (generated by `python -m models.virtual_populations`)", "",
             f"CALIBRATION = {calibration}", "", f"seed {args.seed}; calibration population seed {CALIBRATION_SEED}, "
             f"{CALIBRATION_SIZE} x trial size", ""]
    for name in ("majestec1", "magnetismm3"):
        t0 = time.perf_counter()
        trial, summary, table = run_trial(name, n=32 if args.quick else None, seed=args.seed, calibration=calibration)
        parts.append(_table_markdown(name, summary, table, time.perf_counter() - t0, response_drivers(trial)))
        print(parts[-1], flush=True)
    for name in ("majestec1", "magnetismm3") if args.large > 0 and not args.quick else ():
        t0 = time.perf_counter()
        n_large = args.large * DESIGNS[name].n_patients
        trial, summary, table = run_trial(name, n=n_large, seed=args.seed + 1, calibration=calibration)
        parts.append(_table_markdown(name, summary, table, time.perf_counter() - t0, response_drivers(trial),
                                     f", {args.large} x trial size (seed {args.seed + 1})"))
        print(parts[-1], flush=True)
    Path(args.out).write_text("\n".join(parts) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
