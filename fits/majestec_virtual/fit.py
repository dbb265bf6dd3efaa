"""Patient-level fit of a simulated MajesTEC-1-like trial at the week-8 data cut (issue 5).

    python fits/majestec_virtual/fit.py [--config fits/majestec_virtual/config.toml] [--out DIR]
    python fits/majestec_virtual/fit.py --out DIR --reuse-fit          # analyse DIR/fit.nc again
    python fits/majestec_virtual/fit.py --out DIR --pool RUN1 RUN2 ... # runs with other [fit] seeds as one
    python fits/majestec_virtual/fit.py --config C --out DIR --continue  # run DIR's saved chains on to C's draws
    python fits/majestec_virtual/fit.py --config C --out DIR --so-far    # analyse a running run's draws so far

Steps (README.md in this folder states the decisions and the measured results):

1. **Trial.** Simulate the calibrated MajesTEC-1-like virtual trial (``models/virtual_populations.py``,
   design ``majestec1``: teclistamab label regimen, full model L0-L5, 12 months) with the config's
   size and seed; write ``trial.csv`` (NONMEM-style) and ``truth.csv`` (the patients' true
   covariates and parameters).
2. **Fit.** Give the fit the rows up to ``[data] until`` (default day 56: the week-8 data cut) of
   total drug, total sBCMA, M-protein and T cells (and, with ``[trial] panel`` and 6 in ``[data]
   dvid``, the exhausted share of the marrow T cells on the panel's days), all jointly, and fit
   ``population()`` (the identifiable configuration, below) by NUTS. Saved atomically (``fit.nc``) with its diagnostics
   report (``report/``: convergence, parameters, shrinkage, GOF, VPC per output, individual fits).
   The chains are saved every ``[fit] checkpoint`` draws while they run (``chains/chain_K.nc``,
   one process per chain, or ``fit.nc``); ``--continue`` runs a stopped run's chains on, or a
   finished run's further when ``[fit] draws`` is raised, exactly as one longer run would.
3. **Recovery.** Population parameters: posterior median and 90 % interval against the values the
   trial was simulated with (``population_recovery.csv``). Patients: posterior median and 90 %
   interval of baseline sBCMA (``s0``, the synthesis is ``k_s s0``), E:T (``e0 / n0``), exhaustion rate
   ``k_exh`` and the other parameters with IIV against each patient's true value: Spearman
   correlation, correlation of logs, coverage of the 90 % intervals (``individual_recovery.csv``).
4. **Early-data classification.** Each patient's probability of responding (best confirmed IMWG
   response >= PR over the trial's 12 months), predicted from the fit: for ``[classify] draws``
   posterior draws, the patient's parameters simulated to month 12 and assessed monthly
   (``imwg_response``). Compared by ROC AUC (95 % bootstrap interval) with baseline sBCMA alone
   (the measured baseline; lower predicts response), with the measured baseline marrow E:T alone
   (``T_MARROW_MEASURED / BURDEN``; higher predicts response) and with the week-8 M-protein ratio alone;
   the truth is the trial's response from its noise-free M-protein (``classification.csv``).
5. ``summary.md``: all of the above with the run times, and R-hat and bulk ESS over the chains'
   first n draws (``convergence_by_draws``: still converging, or stuck), and each chain's adapted metric
   against the posterior's spread (``metric_geometry``: why it mixes slowly); ``recovery.png``: true vs estimated s0,
   E:T and k_exh per patient, and the ROC curves.

**The identifiable configuration** (science.md §2.1; ``population()``): teclistamab PK (L0,
time-varying clearance) + sBCMA sink (L1) + trimer closed form (L2, QE) + tumour and T cells (L3)
as in ``BCMAModel(layers=3)``. L4 (no GSI in the trial) and L5 (IL-6 is a read-out that feeds back
on nothing) are left out. "Reduced" L3: the T-cell states stay, but only kg, kmax, k_exh and E0
are estimated; every other rate, the binding constants and receptor numbers are fixed at the
drug's ``TYPICAL`` values (science.md: "fix binding constants, receptor numbers, sBCMA t1/2 and
paraprotein clearances"). Estimated, each with log-normal IIV (omega ~ HalfNormal): cl, cl2, vc,
ka, s0, m0, e0, kg, kmax, k_exh (non-centred, except those listed in ``[fit] centred``: s0 and
m0 in the shipped config), unless ``[fit] fixed`` holds them at their prior's centre (the shipped
config holds tau50_n; runs 1-6 held cl2); ``[fit] without_iiv`` drops the random effect of the
parameters it lists (cl2 in the shipped config, whose trial has no cl2 IIV: ``[trial]
without_iiv``); tau50_n typical value only; one residual sd per output (two for M-protein).
Priors of typical values: LogNormal around the drug's ``TYPICAL`` (tau50_n around the value the
trial calibration found, ``CALIBRATION``; s0 and m0 around the population medians 90 ng/mL and
20 g/L) with the log-sds of ``ESTIMATED``; the config's ``[priors]`` overrides any of them
(``cl = {sd = 0.5, iiv = 1.0}``, the keys of ``popkpd fit``'s ``[parameters]``). Known covariates (measured at
baseline in a trial): weight and ISS on cl / vc / vp with MIAO23's fixed effects, bone-marrow
tumour burden (``BURDEN``: n0 = n0_typ x BURDEN, from the marrow plasma-cell fraction) and
membrane BCMA density (``BCMA_DENSITY``: r_b0, by flow cytometry); with ``[data] marrow_t_cells``
also the marrow T cells as measured by flow cytometry with error (``T_MARROW_MEASURED``, log-sd 0.4:
e0 = e0_pop x T_MARROW_MEASURED x exp(eta), so that eta is the measurement error; the dataset's
DVID 4 T cells are relative to each patient's baseline and carry nothing on e0's level). Not given
to the fit: the true sBCMA, M-protein and marrow T cells of the dataset's covariate columns.

Not modelled by the fit, although the trial has them (misspecification, as in every real fit):
IIV on cl2 (when held fixed), chi, tau50_n and k_rec (log-sds 0.84, 1.0, 1.0, 0.7), absorbed by
the estimated random effects; the covariates' correlations (sBCMA with burden 0.73).
``[trial] without_iiv = ["chi", "tau50_n", "k_rec"]`` simulates the same patients without those
three random effects (each at its typical value; ``trial_design``): a trial the fitted model can
describe, to tell a sampler's trouble from the misspecification's (run 26 in README.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parent.parent
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))  # models/ lives at the repository root

import popkpd  # noqa: E402
from models import teclistamab, virtual_populations  # noqa: E402
from popkpd._inference import check_convergence  # noqa: E402
from popkpd._inference.io import DRAW_GROUPS  # noqa: E402
from popkpd._response import category_index  # noqa: E402
from popkpd._trial import simulate_trial  # noqa: E402
from popkpd._trial.summary import responses  # noqa: E402

DVID_OUTPUTS = {1: "conc", 2: "sbcma_total", 3: "m_protein", 4: "t_cells", 6: "t_exhausted_fraction"}
PANEL_DVID = 6  # the exhausted share of the marrow T cells: measured on the days of [trial] panel only
WEEK_8 = 56.0  # day of the early-data cut (issue 5: the first 4-8 weeks) and of the week-8 M-protein ratio
COVARIATES = ["WEIGHT", "ISS", "BURDEN", "BCMA_DENSITY", "T_MARROW_MEASURED"]

ESTIMATED = {
    # name: (log-sd of the LogNormal prior of the typical value, HalfNormal scale of omega or None)
    "cl": (0.2, 0.50), "cl2": (0.25, 0.84), "vc": (0.2, 0.46), "ka": (0.2, 0.43),
    "s0": (1.0, 1.5), "m0": (1.0, 1.0), "e0": (1.0, 1.0),
    "kg": (1.0, 1.0), "kmax": (0.8, 1.0), "k_exh": (0.7, 1.0),
    "tau50_n": (1.0, None),
}
"""Estimated parameters (unless ``[fit] fixed`` holds them). PK: science.md §2 L0's priors from
MIAO23, typical values LogNormal with log-sd max(RSE, 0.2), IIV sds HalfNormal(published omega)
(runs 1-8 of README.md had log-sd 0.5 and HalfNormal(1.0): ``[priors]`` restores them; cl2 is
the early, decaying part of teclistamab's clearance); s0, m0 1.0 (population spread, science.md
§3.2); e0, kg, kmax, k_exh from science.md L3 (E:T's 1.5 narrowed to 1.0), their IIV sds
HalfNormal(1.0) (none published); tau50_n 1.0 around the calibrated value."""

ERRORS = {
    "conc": popkpd.LogNormalError(popkpd.HalfNormal(0.5)),
    "sbcma_total": popkpd.LogNormalError(popkpd.HalfNormal(0.5)),
    "m_protein": popkpd.Combined(popkpd.HalfNormal(2.0), popkpd.HalfNormal(0.3)),
    "t_cells": popkpd.LogNormalError(popkpd.HalfNormal(0.5)),
    "t_exhausted_fraction": popkpd.LogNormalError(popkpd.HalfNormal(0.5)),
}
"""Residual error of each output a fit may be given (``DVID_OUTPUTS``), the priors of its sds:
log-normal, sd ~ HalfNormal(0.5), but M-protein's combined additive (g/L, HalfNormal(2.0)) and
proportional (HalfNormal(0.3)) error."""

INDIVIDUAL = ("s0", "et", "k_exh", "e0", "m0", "kmax", "kg", "cl", "cl2", "vc", "ka")
"""Patient-level quantities of the recovery table (``et`` = e0 / n0, the marrow E:T at baseline);
those the fit gives one value for every patient (``[fit] fixed``, ``without_iiv``) are left out."""

DEFAULTS = {
    "trial": {"design": "majestec1", "patients": 24, "seed": 11, "without_iiv": ["chi", "tau50_n", "k_rec", "cl2"],
              "panel": [7, 28, 56]},
    "data": {"until": WEEK_8, "dvid": [1, 2, 3, 4, 6], "marrow_t_cells": 0.4},
    "fit": {"method": "nuts", "chains": 2, "warmup": 1200, "draws": 2000, "max_tree_depth": 7,
            "target_accept": 0.9, "seed": 3, "rtol": 1e-4, "atol": 1e-7, "max_steps": 4096, "processes": "auto",
            "centred": ["s0", "m0"], "dense_mass": False, "init": "pathfinder", "fixed": ["tau50_n"],
            "without_iiv": ["cl2"], "iiv_shares": {}, "checkpoint": 100},
    "priors": {},
    "classify": {"draws": 100},
}


INITS = ("laplace", "pathfinder", "map", "prior_median")

CHAIN_SEEDS = 1000
"""Chain ``k`` of fit seed ``s`` runs with seed ``CHAIN_SEEDS * s + k`` (``chain_seed``), so that runs
with different fit seeds share no chain (up to 1,000 chains); fit seed 0 gives chain seeds 0, 1, ..."""


def load_config(path: Path | None) -> dict:
    """The config (``config.toml``) over ``DEFAULTS``; unknown sections or keys are an error."""
    config = {section: dict(values) for section, values in DEFAULTS.items()}
    if path is None:
        return config
    with open(path, "rb") as f:
        given = tomllib.load(f)
    for section, values in given.items():
        if section not in config or not isinstance(values, dict):
            raise ValueError(f"{path}: section [{section}] is not known; expected sections {sorted(DEFAULTS)}.")
        if section == "priors":
            config["priors"] = _check_priors(path, values)
            continue
        unknown = sorted(set(values) - set(config[section]))
        if unknown:
            raise ValueError(f"{path}: [{section}] has unknown keys {unknown}; expected keys from "
                             f"{sorted(config[section])}.")
        config[section].update(values)
    return check_config(config, path)


def check_config(config: dict, path) -> dict:
    """``config`` if its values are valid, else a ``ValueError`` naming the key (``path``: where the
    config came from, for the message)."""
    if config["trial"]["design"] not in virtual_populations.DESIGNS:
        raise ValueError(f"{path}: [trial] design = {config['trial']['design']!r}; expected one of "
                         f"{sorted(virtual_populations.DESIGNS)}.")
    trial_iiv = sorted(virtual_populations.DESIGNS[config["trial"]["design"]].population.iiv)
    trial_without = config["trial"]["without_iiv"]
    if not isinstance(trial_without, list) or not set(trial_without) <= set(trial_iiv):
        raise ValueError(f"{path}: [trial] without_iiv = {trial_without!r}; expected a list of parameters with "
                         f"IIV in the trial design, from {trial_iiv} (simulated at their typical value for every "
                         "patient instead).")
    panel = config["trial"]["panel"]
    horizon = virtual_populations.DESIGNS[config["trial"]["design"]].horizon
    if (not isinstance(panel, list) or not all(isinstance(d, int | float) and not isinstance(d, bool)
                                               and 0 < d < horizon for d in panel)):
        raise ValueError(f"{path}: [trial] panel = {panel!r}; expected a list of days after the first dose and "
                         f"before the horizon ({horizon:g}) on which the exhausted share of the marrow T cells is "
                         "measured, e.g. [7, 28, 56] (the model has none before the first dose).")
    bad = sorted(set(config["data"]["dvid"]) - set(DVID_OUTPUTS))
    if bad:
        raise ValueError(f"{path}: [data] dvid has {bad}; expected a subset of {sorted(DVID_OUTPUTS)} "
                         f"({DVID_OUTPUTS}).")
    if PANEL_DVID in config["data"]["dvid"] and not panel:
        raise ValueError(f"{path}: [data] dvid has {PANEL_DVID} (the exhausted share of the T cells), which the trial "
                         "measures only on the days of [trial] panel, and that list is empty. Give the days, or "
                         f"remove {PANEL_DVID} from [data] dvid.")
    marrow = config["data"]["marrow_t_cells"]
    if not (isinstance(marrow, bool) or (isinstance(marrow, (int, float)) and marrow > 0)):
        raise ValueError(f"{path}: [data] marrow_t_cells = {marrow!r}; expected false, true (the baseline marrow "
                         "T-cell measurement informs e0, whose IIV is estimated) or the measurement's log-sd > 0 "
                         "(e0's IIV fixed at it), e.g. 0.4.")
    if not isinstance(marrow, bool) and "e0" in config["fit"]["without_iiv"] + config["fit"]["fixed"]:
        raise ValueError(f"{path}: [data] marrow_t_cells = {marrow!r} fixes e0's IIV at the measurement's log-sd, "
                         "but [fit] without_iiv or fixed lists e0. Remove e0 there, or set marrow_t_cells = true.")
    chains = config["fit"]["chains"]
    if isinstance(chains, bool) or not isinstance(chains, int) or not 1 <= chains <= CHAIN_SEEDS:
        raise ValueError(f"{path}: [fit] chains = {chains!r}; expected a whole number from 1 to {CHAIN_SEEDS}.")
    processes = config["fit"]["processes"]
    if not (isinstance(processes, bool) or processes == "auto"):
        raise ValueError(f"{path}: [fit] processes = {processes!r}; expected true, false or \"auto\" (one process "
                         "per chain on a CPU, one process on a GPU).")
    checkpoint = config["fit"]["checkpoint"]
    if isinstance(checkpoint, bool) or not isinstance(checkpoint, int) or checkpoint < 0:
        raise ValueError(f"{path}: [fit] checkpoint = {checkpoint!r}; expected a whole number >= 0: the draws per "
                         "chain between saves of the chains so far (0: saved only at the end).")
    if not isinstance(config["fit"]["dense_mass"], bool):
        raise ValueError(f"{path}: [fit] dense_mass = {config['fit']['dense_mass']!r}; expected true or false.")
    fixed = config["fit"]["fixed"]
    if not isinstance(fixed, list) or not set(fixed) <= set(ESTIMATED):
        raise ValueError(f"{path}: [fit] fixed = {fixed!r}; expected a list of estimated parameters, from "
                         f"{sorted(ESTIMATED)} (held at their prior's centre instead).")
    if config["fit"]["init"] not in INITS:
        raise ValueError(f"{path}: [fit] init = {config['fit']['init']!r}; expected one of {list(INITS)} "
                         "(popkpd.fit's init).")
    with_iiv = sorted(name for name, (_, omega) in ESTIMATED.items() if omega is not None)
    centred = config["fit"]["centred"]
    weights = centred.values() if isinstance(centred, dict) else [1.0]
    if (not isinstance(centred, list | dict) or not set(centred) <= set(with_iiv)
            or not all(isinstance(w, int | float) and not isinstance(w, bool) and 0 <= w <= 1 for w in weights)):
        raise ValueError(f"{path}: [fit] centred = {centred!r}; expected a list of parameters with a random "
                         f"effect, from {with_iiv} (the others stay non-centred), or a table of their centring "
                         "weights from 0 (non-centred) to 1 (centred), e.g. {s0 = 1.0, kg = 0.6}.")
    if set(centred) & set(fixed):
        raise ValueError(f"{path}: [fit] {sorted(set(centred) & set(fixed))} both centred and fixed; a fixed "
                         "parameter has no random effect to centre. Remove it from one of the lists.")
    without = config["fit"]["without_iiv"]
    if not isinstance(without, list) or not set(without) <= set(with_iiv):
        raise ValueError(f"{path}: [fit] without_iiv = {without!r}; expected a list of parameters with a random "
                         f"effect, from {with_iiv} (their typical value stays estimated).")
    if set(without) & (set(centred) | set(fixed)):
        raise ValueError(f"{path}: [fit] {sorted(set(without) & (set(centred) | set(fixed)))} in without_iiv and "
                         "in centred or fixed; without a random effect there is nothing to centre, and a fixed "
                         "parameter is not estimated. Remove it from one of the lists.")
    shares = config["fit"]["iiv_shares"]
    members = [n for names in shares.values() for n in names] if isinstance(shares, dict) else [None]
    if (not isinstance(shares, dict) or not all(isinstance(v, list) and len(v) >= 2 for v in shares.values())
            or not set(members) <= set(with_iiv) - set(without) - set(fixed) or len(set(members)) != len(members)):
        raise ValueError(f"{path}: [fit] iiv_shares = {shares!r}; expected a table of groups of two or more "
                         f"parameters with a random effect, from {with_iiv}, each in one group at most, e.g. "
                         "{kill = [\"kmax\", \"k_exh\"]} (their omegas sampled as a total and its shares).")
    return config


def _check_priors(path, priors: dict) -> dict:
    """``[priors]``: ``name = {sd = ..., iiv = ...}`` overrides ``ESTIMATED``'s prior of ``name``
    (either key may be left out; the keys are those of ``popkpd fit``'s ``[parameters]`` tables)."""
    for name, given in priors.items():
        if name not in ESTIMATED:
            raise ValueError(f"{path}: [priors] {name} is not an estimated parameter; expected names from "
                             f"{sorted(ESTIMATED)}.")
        if not isinstance(given, dict) or not given or not set(given) <= {"sd", "iiv"}:
            raise ValueError(f"{path}: [priors] {name} = {given!r}; expected a table with keys sd and/or iiv, "
                             f"e.g. {name} = {{sd = 0.2, iiv = 0.5}} (log-sd of the typical value's LogNormal, "
                             "HalfNormal scale of the random effect's sd).")
        for key, value in given.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{path}: [priors] {name}.{key} = {value!r}; expected a positive number.")
        if "iiv" in given and ESTIMATED[name][1] is None:
            raise ValueError(f"{path}: [priors] {name}.iiv: {name} has no random effect in the fitted model; "
                             "give sd only.")
    return priors


def centres() -> dict:
    """Prior medians / fixed values of every parameter of the fitted model."""
    typical = dict(teclistamab.TYPICAL)
    medians = virtual_populations.CALIBRATION["majestec1"]["medians"]
    out = {name: float(value) * medians.get(name, 1.0) for name, value in typical.items()}
    out["s0"] = float(popkpd.ng_per_ml_to_nm(90.0, popkpd.SBCMA_MW_KDA))
    out["m0"] = 20.0
    out["r_b0"] = 1.0  # x BCMA_DENSITY (receptors per cell)
    return out


def _covariate_effects(marrow_t_cells: bool | float = False) -> dict:
    p = popkpd
    marrow = {"e0": [p.Power("T_MARROW_MEASURED", 1.0, p.Fixed(1.0))]} if marrow_t_cells else {}
    return marrow | {
        "cl": [p.Power("WEIGHT", 74.0, p.Fixed(0.704)),
               p.Categorical("ISS", p.Fixed(1.31), equals=2, label="iss2"),
               p.Categorical("ISS", p.Fixed(1.67), equals=3, label="iss3")],
        "vc": [p.Power("WEIGHT", 74.0, p.Fixed(0.358))],
        "vp": [p.Power("WEIGHT", 74.0, p.Fixed(1.40))],
        "n0": [p.Power("BURDEN", 1.0, p.Fixed(1.0))],
        "r_b0": [p.Power("BCMA_DENSITY", 1.0, p.Fixed(1.0))],
    }


def population(rtol: float = 1e-6, atol: float = 1e-9, max_steps: int = 4096, centred=(),
               fixed=(), without_iiv=(), priors=None, marrow_t_cells=False,
               iiv_shares=None, outputs=tuple(DVID_OUTPUTS[k] for k in DEFAULTS["data"]["dvid"])
               ) -> popkpd.PopulationModel:
    """The fitted population model (module docstring, "The identifiable configuration"); the
    random effects of ``centred`` are sampled centred (``PopulationModel(centered=...)``; a dict
    ``{name: weight}``: partly centred with those weights), the others non-centred; the
    parameters of ``fixed`` (of ``ESTIMATED``) are held at their prior's centre (the drug's
    typical or calibrated value) instead of estimated, and those of ``without_iiv`` keep an
    estimated typical value without a random effect. ``priors`` (``{name: {"sd": ..., "iiv":
    ...}}``, the config's ``[priors]``) overrides ``ESTIMATED``.
    ``marrow_t_cells`` (the config's ``[data] marrow_t_cells``): true makes e0 proportional to the
    patient's measured baseline marrow T cells (``T_MARROW_MEASURED``, exponent fixed at 1), so
    that e0's random effect is the measurement's error; a number does the same with that random
    effect's sd fixed at the number (the assay's log-sd, known from its validation).
    ``iiv_shares`` (``{group: [name, ...]}``, the config's ``[fit] iiv_shares``): those omegas are
    sampled as their total and its shares (``PopulationModel(iiv_shares=...)``; same prior).
    ``outputs``: the fitted outputs (the config's ``[data] dvid``), each with its ``ERRORS``
    residual error; an output the fit is not given has no residual sd to sample."""
    model = popkpd.BCMAModel(layers=3, clearance=teclistamab.MODEL.clearance)
    centre, effects = centres(), _covariate_effects(marrow_t_cells)
    parameters = {}
    for name in model.parameters:
        covariates = effects.get(name, ())
        if name in ESTIMATED and name not in fixed:
            sd, omega = ESTIMATED[name]
            given = (priors or {}).get(name, {})
            sd, omega = given.get("sd", sd), given.get("iiv", omega)
            iiv = None if omega is None or name in without_iiv else popkpd.HalfNormal(omega)
            if name == "e0" and not isinstance(marrow_t_cells, bool):
                iiv = popkpd.Fixed(float(marrow_t_cells))  # the measurement's known log-sd
            parameters[name] = popkpd.Parameter(popkpd.LogNormal(centre[name], sd), iiv=iiv, covariates=covariates)
        else:
            parameters[name] = popkpd.Parameter(popkpd.Fixed(centre[name]), covariates=covariates)
    error = {output: ERRORS[output] for output in outputs}
    centred = dict(centred) if isinstance(centred, dict) else tuple(centred)
    return popkpd.PopulationModel(model, parameters, error, method="ode", centered=centred,
                                  ode_options={"rtol": rtol, "atol": atol, "max_steps": max_steps},
                                  iiv_shares=iiv_shares)


def trial_design(trial: dict):
    """The ``[trial]`` design, with the IIV of the parameters in ``without_iiv`` set to 0: every
    patient has their typical value. The random draws are the same (a zero sd scales its eta), so
    the patients, their covariates and their other parameters are those of the design's trial."""
    design = virtual_populations.DESIGNS[trial["design"]]
    if trial["without_iiv"]:
        iiv = {name: 0.0 if name in trial["without_iiv"] else sd for name, sd in design.population.iiv.items()}
        design = design.replace(population=design.population.replace(iiv=iiv))
    if trial["panel"]:
        design = design.replace(sampling=design.sampling_times() | {DVID_OUTPUTS[PANEL_DVID]: sorted(trial["panel"])})
    return design


def population_truth(design, marrow_t_cells: bool | float = False, dvid=tuple(DEFAULTS["data"]["dvid"])) -> dict:
    """The values the trial was simulated with, under the fitted model's site names: typical
    values (the trial's population medians at the reference covariates), omegas (the trial's
    log-sds) and residual sds. With ``marrow_t_cells`` e0 = E0_typ x measured marrow T cells x
    exp(eta), and the trial's measured value is the true one times exp(sd z), so omega_e0's true
    value is the measurement's log-sd. Residual sds of the outputs of ``dvid``, the fitted ones."""
    centre = centres()
    covs = design.population.covariates
    omega = dict(design.population.iiv)
    omega.update(s0=covs["sbcma"].log_sd, m0=covs["m0"].log_sd,
                 e0=design.baseline_errors["t_marrow"] if marrow_t_cells else covs["t_marrow"].log_sd)
    truth = {f"{name}_pop": centre[name] for name in ESTIMATED}
    truth.update({f"omega_{name}": omega[name] for name, (_, w) in ESTIMATED.items() if w is not None})
    for output in (DVID_OUTPUTS[k] for k in dvid):
        truth.update({site: float(prior.value) for site, prior in design.errors[output].priors(output).items()})
    return truth


def trial_data(frame: pd.DataFrame, until: float, dvid) -> pd.DataFrame:
    """The rows of the trial table ``frame`` a fit at the data cut ``until`` (day) sees: doses and
    observations of ``dvid`` up to it."""
    keep = (frame.TIME <= until) & ((frame.EVID != 0) | frame.DVID.isin(list(dvid)))
    return frame[keep].reset_index(drop=True)


KEYS_ADDED_LATER = (("fit", "iiv_shares"), ("trial", "without_iiv"), ("trial", "panel"))
"""Config keys added after earlier runs were saved, whose default is what those runs did (no
shares, the trial's full IIV, no exhaustion panel): a saved config without them is the same
config, for ``--reuse-fit`` and ``--pool``. Not ``[data] marrow_t_cells``: runs 1-10 ran without it, unlike its default."""


def _results_config(config, *, seed: bool = True) -> dict | None:
    """The config without the settings that do not change the results (how chains are run and
    saved), and without ``[fit] seed`` when ``seed`` is false (runs that ``--pool`` may merge)."""
    if config is None:
        return None
    config = json.loads(json.dumps(config))
    for section, key in KEYS_ADDED_LATER:
        config[section].setdefault(key, DEFAULTS[section][key])
    config["fit"].pop("processes", None)
    config["fit"].pop("checkpoint", None)  # pieces of a run give the draws of one piece (popkpd.continue_fit)
    if not seed:
        config["fit"].pop("seed", None)
    return config


def fitted_population(config: dict) -> popkpd.PopulationModel:
    """``population()`` as the config's ``[fit]``, ``[priors]`` and ``[data]`` set it."""
    fc = config["fit"]
    return population(fc["rtol"], fc["atol"], int(fc["max_steps"]), centred=fc["centred"], fixed=fc["fixed"],
                      without_iiv=fc["without_iiv"], priors=config["priors"],
                      marrow_t_cells=config["data"]["marrow_t_cells"], iiv_shares=fc["iiv_shares"],
                      outputs=[DVID_OUTPUTS[k] for k in config["data"]["dvid"]])


def fitted_data(config: dict, trial_csv: Path):
    """``(population, dataset, rows)``: the fitted model and the data cut of the trial in ``trial_csv``."""
    pop = fitted_population(config)
    dataset, frame = cut_dataset(pop, pd.read_csv(trial_csv), float(config["data"]["until"]), config["data"]["dvid"])
    return pop, dataset, frame


def cut_dataset(pop, trial_frame: pd.DataFrame, until: float, dvid):
    """``(dataset, rows)``: the rows of the trial table a fit at the data cut ``until`` sees
    (``trial_data``), of the outputs ``dvid``, read for the fitted model ``pop``."""
    frame = trial_data(trial_frame, until, dvid)
    dataset = popkpd.read_nonmem(frame, pop.structural, covariates=COVARIATES,
                                 dvid_outputs={k: DVID_OUTPUTS[k] for k in dvid})
    return dataset, frame


def _fit(config: dict, pop, dataset, *, chains=None, seed=None, progress_bar=None, on_checkpoint=None):
    fc = config["fit"]
    options = {}
    if fc["method"] == "nuts":
        options = {k: fc[k] for k in ("warmup", "max_tree_depth", "target_accept", "dense_mass", "init")}
        options["chains"] = int(fc["chains"] if chains is None else chains)
        if on_checkpoint is not None:
            options.update(checkpoint_every=int(fc["checkpoint"]), on_checkpoint=on_checkpoint)
    return popkpd.fit(pop, dataset, method=fc["method"], draws=int(fc["draws"]),
                      seed=int(fc["seed"] if seed is None else seed),
                      progress_bar=sys.stderr.isatty() if progress_bar is None else progress_bar, **options)


def chain_seed(seed: int, k: int) -> int:
    """The seed of chain ``k`` of a run with fit seed ``seed`` run one process per chain (README.md:
    until run 13 it was ``seed + k``, so that seeds 0 and 1 shared a chain)."""
    return CHAIN_SEEDS * int(seed) + int(k)


def fit_and_save(config: dict, pop, dataset, path: Path, *, chains=None, seed=None, progress_bar=None,
                 resume: bool = False):
    """NUTS fit saved to ``path`` every ``[fit] checkpoint`` draws and after the last piece
    (``popkpd.fit``'s ``checkpoint_every``, ``on_checkpoint``), so that a stopped run loses one
    piece. ``resume``: run the fit saved in ``path`` (its config must be this one up to ``[fit]
    draws``) on to ``[fit] draws`` (``popkpd.continue_fit``: exactly as one longer run would)."""
    fc = config["fit"]
    save = lambda f: _save_piece(f, config, path)  # noqa: E731
    if resume:
        fit = _saved_for_continuing(config, path)
        more = int(fc["draws"]) - int(fit.metadata["sampler"]["draws"])
        if more > 0:
            fit = popkpd.continue_fit(fit, pop, dataset, draws=more, checkpoint_every=int(fc["checkpoint"]),
                                      on_checkpoint=save,
                                      progress_bar=sys.stderr.isatty() if progress_bar is None else progress_bar)
    else:
        fit = _fit(config, pop, dataset, chains=chains, seed=seed, progress_bar=progress_bar, on_checkpoint=save)
    return fit  # saved by the last checkpoint (a resumed fit with no draws to add: as it was saved)


def _save_piece(fit, config: dict, path: Path):
    fit.metadata["majestec_virtual"] = {"config": config}
    fit.tree.attrs["popkpd"] = json.dumps(fit.metadata)
    fit.save(path)


def _saved_for_continuing(config: dict, path: Path, where: str = "--continue"):
    """The fit saved in ``path`` by an earlier run of ``config`` (up to ``[fit] draws``), for ``--continue``
    (or ``--so-far``: ``where``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no saved fit {path}; expected the output folder of an earlier run of "
                                "this config (run without --continue to start one).")
    fit = popkpd.load_fit(path)
    made = fit.metadata.get("majestec_virtual", {}).get("config")

    def comparable(c):
        c = _results_config(c)
        c["fit"].pop("draws")
        return c

    if made is None or comparable(made) != comparable(config):
        raise ValueError(f"{where}: {path} was made with another config; expected the run's config with only "
                         "[fit] draws (or checkpoint, processes) changed.")
    if int(fit.metadata["sampler"]["draws"]) > int(config["fit"]["draws"]):
        raise ValueError(f"{where}: {path} already has {fit.metadata['sampler']['draws']} draws per chain, more "
                         f"than [fit] draws = {config['fit']['draws']}; expected draws >= the run's (the total "
                         "per chain to reach).")
    return fit


def saved_so_far(config: dict, run_dir: Path):
    """The draws a running (or stopped) run of ``config`` in ``run_dir`` has saved so far (its
    checkpoints: ``chains/chain_K.nc``, or ``fit.nc``), each chain cut to the shortest one's
    draws and merged, for ``--so-far``. Returns ``(fit, config)``, ``config`` with ``[fit] draws``
    those draws per chain. The fit keeps each chain's ``sampler_state`` for its metric, fixed after
    warmup (``metric_geometry``); the rest of that state is the one after the chain's last draw,
    not after draw n, so ``run`` drops it before saving."""
    files = sorted((run_dir / "chains").glob("chain_*.nc")) or [run_dir / "fit.nc"]
    fits = [_saved_for_continuing(config, f, "--so-far") for f in files]
    n = min(int(f.metadata["sampler"]["draws"]) for f in fits)
    cut = []
    for fit in fits:
        tree = fit.tree.copy()
        for group in DRAW_GROUPS:
            if group in tree.children:
                tree[group] = xr.DataTree(dataset=tree[group].to_dataset().isel(draw=slice(0, n)))
        metadata = json.loads(json.dumps(fit.metadata))
        metadata["sampler"]["draws"] = n
        tree.attrs["popkpd"] = json.dumps(metadata)
        cut.append(popkpd.Fit(tree, metadata))
    config = json.loads(json.dumps(config))
    config["fit"]["draws"] = n
    return (popkpd.merge_chains(cut) if len(cut) > 1 else cut[0]), config


def fit_chain(config: dict, out: Path, k: int, *, resume: bool = False) -> Path:
    """Chain ``k`` alone (seed ``chain_seed``), from the trial table the driver wrote; saved as
    ``out/chains/chain_k.nc`` after every piece (``fit_and_save``). Run by ``--chain k`` in a
    process of its own, whose output goes to ``out/chains/chain_k.log``: NumPyro's progress bar is
    written there (follow a long run with ``tail -c 300 out/chains/chain_0.log``)."""
    pop, dataset, _ = fitted_data(config, out / "trial.csv")
    path = out / "chains" / f"chain_{k}.nc"
    fit_and_save(config, pop, dataset, path, chains=1, seed=chain_seed(config["fit"]["seed"], k), progress_bar=True,
                 resume=resume)
    return path


def pooled_fit(config: dict, runs: list[Path]):
    """The chains of several earlier runs of ``config`` that differ only in ``[fit] seed`` (and
    ``processes``), merged into one fit (``popkpd.merge_chains``, which refuses two chains with the
    same seed or fits of other data). A run's chains are its ``chains/chain_K.nc`` (one process
    per chain) or else its ``fit.nc``. Returns ``(fit, config)``: ``config`` with ``[fit] chains``
    the total and ``seed`` the list of the runs' fit seeds."""
    chains, seeds = [], []
    for run_dir in runs:
        saved = popkpd.load_fit(run_dir / "fit.nc")
        made = saved.metadata.get("majestec_virtual", {}).get("config")
        if made is None or _results_config(made, seed=False) != _results_config(config, seed=False):
            raise ValueError(f"--pool: {run_dir / 'fit.nc'} was made with another config; expected runs of the "
                             "given config that differ only in [fit] seed.")
        files = sorted((run_dir / "chains").glob("chain_*.nc"))
        chains += [popkpd.load_fit(f) for f in files] if files else [saved]
        seeds.append(made["fit"]["seed"])
    fit = popkpd.merge_chains(chains)
    config = json.loads(json.dumps(config))
    config["fit"].update(chains=int(fit.metadata["sampler"]["chains"]), seed=seeds)
    return fit, config


def _chain_processes(setting) -> bool:
    """``[fit] processes``: true / false, or "auto" = one process per chain on a CPU (each chain
    gets a core), vectorised chains in one process on a GPU."""
    if setting == "auto":
        import jax

        return jax.default_backend() == "cpu"
    return setting  # a bool (load_config checks)


def _chains_in_processes(config: dict, out: Path, resume: bool = False):
    """NUTS chains in parallel processes, one per chain (NumPyro's parallel chains fail on a
    diffrax solve; vectorised chains share one core), merged with ``popkpd.merge_chains``.
    ``resume``: each process runs its saved chain on (``fit_and_save``)."""
    (out / "chains").mkdir(parents=True, exist_ok=True)
    (out / "config_used.json").write_text(json.dumps(config))
    procs = []
    for k in range(int(config["fit"]["chains"])):
        log = open(out / "chains" / f"chain_{k}.log", "w")
        command = [sys.executable, __file__, "--out", str(out), "--chain", str(k)] + (["--continue"] if resume else [])
        procs.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for k, (proc, log) in enumerate(procs):
        if proc.wait() != 0:
            failed.append(k)
        log.close()
    if failed:
        raise RuntimeError(f"chains {failed} failed; see {out / 'chains'}/chain_K.log")
    return popkpd.merge_chains([popkpd.load_fit(out / "chains" / f"chain_{k}.nc") for k in range(len(procs))])


# ------------------------------------------------------------------------------------------------
# recovery


def _draws(fit, name) -> np.ndarray:
    """[draws, subjects] individual values of ``name`` (``et`` = e0 / n0) from the posterior."""
    posterior = fit.tree["posterior"]

    def flat(n):
        x = np.asarray(posterior[n].values, dtype=float)
        return x.reshape((-1,) + x.shape[2:])

    return flat("e0") / flat("n0") if name == "et" else flat(name)


def _per_patient(fit, name) -> bool:
    """Whether the posterior holds a value of ``name`` per patient (not so for a parameter that
    ``[fit] fixed`` or ``without_iiv`` gives one value for every patient)."""
    return name == "et" or name in fit.tree["posterior"]


def population_recovery(fit, pop, truth: dict) -> pd.DataFrame:
    """Posterior median and 90 % interval of each population site against ``truth``."""
    table = popkpd.parameter_table(fit, pop)
    table = table[~table.fixed & table.parameter.isin(list(truth))].copy()
    table["truth"] = table.parameter.map(truth)
    table["covered"] = (table.q05 <= table.truth) & (table.truth <= table.q95)
    return table[["parameter", "kind", "median", "q05", "q95", "truth", "covered"]].reset_index(drop=True)


def individual_recovery(fit, truth: pd.DataFrame, ids) -> pd.DataFrame:
    """Per patient-level quantity: Spearman correlation of posterior medians with the true values,
    Pearson correlation of their logs, and the coverage of the 90 % intervals. ``truth``: the
    trial's ``params`` (one row per ID); ``ids``: the fit's subject IDs in order."""
    from scipy import stats

    true = truth.set_index("ID").loc[list(ids)]
    rows = []
    for name in INDIVIDUAL:
        if not _per_patient(fit, name):
            continue
        x = _draws(fit, name)
        t = (true["e0"] / true["n0"]).to_numpy() if name == "et" else true[name].to_numpy()
        med, lo, hi = np.median(x, 0), np.quantile(x, 0.05, 0), np.quantile(x, 0.95, 0)
        rows.append({"quantity": name, "spearman": stats.spearmanr(med, t).statistic,
                     "pearson_log": float(np.corrcoef(np.log(med), np.log(t))[0, 1]),
                     "coverage_90": float(np.mean((lo <= t) & (t <= hi))),
                     "true_log_sd": float(np.std(np.log(t))), "n": len(t)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# early-data classification


def auc(score, label) -> float:
    """ROC area: P(score of a random responder > that of a random non-responder), ties count 1/2."""
    score, label = np.asarray(score, dtype=float), np.asarray(label, dtype=bool)
    pos, neg = score[label], score[~label]
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"auc: received {pos.size} responders and {neg.size} non-responders; expected at "
                         "least one of each. Use more patients or a longer follow-up.")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (pos.size * neg.size))


def bootstrap_auc(scores: dict, label, n_boot: int = 2000, seed: int = 0) -> dict:
    """AUC of each score with a 95 % percentile bootstrap interval over patients, and the
    interval of each score's AUC minus the first score's (paired: the same resamples)."""
    rng = np.random.default_rng(seed)
    label = np.asarray(label, dtype=bool)
    names = list(scores)
    values = {n: [] for n in names}
    for _ in range(n_boot):
        idx = rng.integers(0, label.size, label.size)
        if label[idx].all() or not label[idx].any():
            continue
        for n in names:
            values[n].append(auc(np.asarray(scores[n])[idx], label[idx]))
    out = {}
    for n in names:
        v = np.asarray(values[n])
        d = v - np.asarray(values[names[0]])
        out[n] = {"auc": auc(scores[n], label), "lo": float(np.quantile(v, 0.025)), "hi": float(np.quantile(v, 0.975)),
                  "diff_lo": float(np.quantile(d, 0.025)), "diff_hi": float(np.quantile(d, 0.975))}
    return out


def predicted_response(fit, pop, dataset, design, n_draws: int) -> np.ndarray:
    """[subjects] posterior probability of a best confirmed response >= PR over ``design.horizon``:
    each of ``n_draws`` posterior draws (evenly thinned, as the diagnostics thin them) gives every
    patient's parameters (fitted model), simulated on the regimen to the horizon and assessed at
    the design's monthly visits."""
    import jax.numpy as jnp

    from popkpd._diagnostics.common import prepare

    draws = prepare(fit, pop, dataset, "predicted_response").draws(n_draws)
    n_pick = len(next(iter(draws.values())))
    n_sub = dataset.events.n_subjects
    params = []
    for k in range(n_pick):
        ind = pop.individual_parameters({s: jnp.asarray(v[k]) for s, v in draws.items()}, dataset.events, COVARIATES)
        params.append({n: np.broadcast_to(np.asarray(v), (n_sub,)) for n, v in ind.items()})
    stacked = {n: np.concatenate([p[n] for p in params]) for n in params[0]}
    weights = dataset.events.cov_value[:, 0, COVARIATES.index("WEIGHT")]
    visits = design.assessment_times()
    times = np.concatenate([[0.0], visits])
    model = pop.structural
    out = model.outputs.index("m_protein")
    events = design.regimen.to_events(model, times, weights=np.tile(np.asarray(weights), n_pick),
                                      until=design.horizon)
    sol = popkpd.simulate(model, stacked, events, rtol=1e-6, atol=1e-9, throw=False)
    ok = (np.asarray(sol.result) == 0).reshape(n_pick, n_sub)
    if not ok.all():
        print(f"      predicted_response: {int((~ok).sum())} of {ok.size} draw x patient solves failed; "
              "left out of those patients' probabilities", flush=True)
    m_protein = np.asarray(sol.outputs)[:, :, out]
    m_protein = np.where(np.isfinite(m_protein), m_protein, 1.0)  # failed solves: left out below
    best = np.asarray(popkpd.imwg_response(times, m_protein, visits=visits).best).reshape(n_pick, n_sub)
    responds = (best >= category_index("PR")) & ok
    return responds.sum(axis=0) / np.maximum(ok.sum(axis=0), 1)


def roc_curve(score, label):
    """(false-positive rate, true-positive rate) over every threshold of ``score``."""
    score, label = np.asarray(score, dtype=float), np.asarray(label, dtype=bool)
    thresholds = np.concatenate([[np.inf], np.unique(score)[::-1]])
    tpr = np.array([(score[label] >= c).mean() for c in thresholds])
    fpr = np.array([(score[~label] >= c).mean() for c in thresholds])
    return fpr, tpr


def plot_recovery(fit, truth: pd.DataFrame, ids, scores: dict, label, until: float, path: Path) -> Path:
    """``recovery.png``: posterior median and 90 % interval vs the true value of s0, E:T and k_exh
    (log axes, identity line), and the ROC curves of the classification scores (fit to the data up
    to day ``until``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    true = truth.set_index("ID").loc[list(ids)]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for ax, (name, title) in zip(axes, (("s0", "baseline sBCMA s0 (nM)"), ("et", "E:T = e0 / n0"),
                                       ("k_exh", "exhaustion rate k_exh (1/day)"))):
        if not _per_patient(fit, name):
            ax.set(title=title, xticks=[], yticks=[])
            ax.text(0.5, 0.5, "one value for every patient\n([fit] fixed or without_iiv)", ha="center",
                    va="center", transform=ax.transAxes)
            continue
        x = _draws(fit, name)
        t = (true["e0"] / true["n0"]).to_numpy() if name == "et" else true[name].to_numpy()
        med, lo, hi = np.median(x, 0), np.quantile(x, 0.05, 0), np.quantile(x, 0.95, 0)
        ax.errorbar(t, med, yerr=[med - lo, hi - med], fmt="o", ms=3, lw=0.8, alpha=0.8)
        span = [min(t.min(), lo.min()), max(t.max(), hi.max())]
        ax.plot(span, span, "k--", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="true", ylabel="posterior median, 90 % interval", title=title)
    ax = axes[3]
    if 0 < np.sum(label) < np.size(label):
        for name, score in scores.items():
            fpr, tpr = roc_curve(score, label)
            ax.plot(fpr, tpr, drawstyle="steps-post", label=f"{name}: AUC {auc(score, label):.2f}")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.legend(fontsize=6, loc="lower right")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=f"responders from days 0-{until:g}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def observed_at(frame: pd.DataFrame, dvid: int, time: float, ids) -> np.ndarray:
    """[subjects] observed DV of ``dvid`` at ``time`` (NaN where missing), in the order of ``ids``."""
    rows = frame[(frame.EVID == 0) & (frame.DVID == dvid) & np.isclose(frame.TIME, time)]
    return rows.set_index("ID").DV.reindex(list(ids)).to_numpy(dtype=float)


# ------------------------------------------------------------------------------------------------
# the run


def convergence_by_draws(tree, sites) -> pd.DataFrame:
    """R-hat and bulk ESS of the population ``sites`` over the chains' first n draws, n in about
    ten equal steps up to all of them (one row, all the draws, for fewer than 100): falling R-hat
    and growing ESS say the chains are still converging, and how fast; flat ones, that they are
    stuck. The last row is the convergence table's (``check_convergence`` on every draw)."""
    posterior, stats = tree["posterior"].to_dataset()[sites], tree["sample_stats"].to_dataset()
    draws = posterior.sizes["draw"]
    step = -(-draws // 10)
    step = -(-step // 100) * 100 if draws >= 1000 else step
    rows = []
    for n in ([*range(step, draws, step)] if draws >= 100 else []) + [draws]:
        cut = xr.DataTree.from_dict({"posterior": posterior.isel(draw=slice(0, n)),
                                     "sample_stats": stats.isel(draw=slice(0, n))})
        table = check_convergence(cut, sites, loo=False).table
        divergent = stats["diverging"].isel(draw=slice(0, n)).sum("draw").values
        rows.append({"draws": n, "max R-hat": table.r_hat.max(), "worst R-hat site": table.r_hat.idxmax(),
                     "median R-hat": table.r_hat.median(), "sites above 1.1": int((table.r_hat > 1.1).sum()),
                     "min bulk ESS": table.ess_bulk.min(), "slowest site": table.ess_bulk.idxmin(),
                     "divergences per chain": " / ".join(str(int(d)) for d in divergent)})
    return pd.DataFrame(rows)


def metric_geometry(fit, pop, dataset) -> dict:
    """The adapted NUTS metric against the posterior's spread, per chain, and the local curvature
    with whose data make its stiffest direction (``popkpd.sampler_geometry``) at each chain's last
    draw and, if the chain diverged, at the middle divergent draw of its 100 draws with the most
    divergences (up to two Hessians per chain, about 15-60 s each for the shipped config on 2
    cores): ``{"metric": [rows], "curvature": [rows]}``, or ``{"not_computed": why}`` for a fit
    without a sampler state (Laplace, pooled runs saved before it was stored) or with too few draws."""
    at = []
    stats = fit.tree["sample_stats"] if "sample_stats" in fit.tree.children else {}
    for chain, diverging in enumerate(np.asarray(stats["diverging"].values, dtype=bool) if "diverging" in stats else []):
        at.append((chain, diverging.size - 1))
        if diverging.any():
            width = min(100, diverging.size)
            start = int(np.argmax(np.convolve(diverging, np.ones(width), "valid")))
            hits = start + np.flatnonzero(diverging[start:start + width])
            at.append((chain, int(hits[hits.size // 2])))
    try:
        tables = popkpd.sampler_geometry(fit, pop, dataset, curvature_draws=at, top=3)
    except ValueError as e:
        return {"not_computed": str(e)}
    return {name: tables[name].to_dict("records") for name in ("metric", "curvature")}


def _markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    def cell(v):
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "**no**"
        if isinstance(v, (float, np.floating)):
            return f"{v:.{digits}g}"
        return str(v)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def run(config: dict, out: Path, *, report_sims: int = 100, reuse_fit: bool = False,
        pool: list[Path] | None = None, resume: bool = False, so_far: Path | None = None) -> dict:
    """Steps 1-5 of the module docstring into ``out``; returns the tables and timings.
    ``reuse_fit``: take the fit from ``out/fit.nc`` (written by an earlier run with the same
    config) instead of fitting again. ``pool``: the chains of these earlier runs of the config with
    other seeds, merged (``pooled_fit``), instead of fitting again. ``resume``: run the chains
    saved in ``out`` by an earlier run of the config on to ``[fit] draws`` (``fit_and_save``;
    the config may differ from that run's only in ``[fit] draws``, ``checkpoint`` and ``processes``,
    and the chains are found where that run ran them: ``out/chains`` or ``out/fit.nc``). ``so_far``:
    the output folder of a running (or stopped) run of the config, whose draws saved so far are
    analysed instead of fitting (``saved_so_far``; ``out`` must be another folder)."""
    out.mkdir(parents=True, exist_ok=True)
    timing = {}
    t0 = time.perf_counter()

    def step(msg):
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)

    tc, dc, fc = config["trial"], config["data"], config["fit"]
    design = trial_design(tc)
    step(f"simulating {design.name}: {tc['patients']} patients, seed {tc['seed']}, {design.horizon:g} days")
    trial = simulate_trial(design, n=int(tc["patients"]), seed=int(tc["seed"]))
    trial.dataset.to_csv(out / "trial.csv", index=False)
    trial.covariates.merge(trial.params, on="ID").to_csv(out / "truth.csv", index=False)
    timing["trial_s"] = time.perf_counter() - t0

    pop, dataset, frame = fitted_data(config, out / "trial.csv")
    n_obs = int((frame.EVID == 0).sum())
    verb = "continuing" if resume else "fitting" if so_far is None else "reading the run's draws so far"
    step(f"{verb} ({fc['method']}, {fc['chains']} chains x ({fc['warmup']} + "
         f"{fc['draws']})) to {n_obs} observations up to day {dc['until']:g}")
    t1 = time.perf_counter()
    pooled_from = [str(p) for p in pool or []]
    if pool:
        fit, config = pooled_fit(config, pool)
        step(f"pooled {config['fit']['chains']} chains of the runs with seeds {config['fit']['seed']}")
    elif so_far is not None:
        fit, config = saved_so_far(config, so_far)
        step(f"the draws {so_far} has saved so far: {config['fit']['draws']} per chain")
    elif reuse_fit:
        fit = popkpd.load_fit(out / "fit.nc")
        if _results_config(fit.metadata.get("majestec_virtual", {}).get("config")) != _results_config(config):
            raise ValueError(f"--reuse-fit: {out / 'fit.nc'} was made with another config; expected the same "
                             "config (run without --reuse-fit to fit again).")
    elif fc["method"] == "nuts" and int(fc["chains"]) > 1 and _chain_processes(fc["processes"]):
        fit = _chains_in_processes(config, out, resume)
    elif fc["method"] == "nuts":
        fit = fit_and_save(config, pop, dataset, out / "fit.nc", resume=resume)
    else:
        fit = _fit(config, pop, dataset)
    timing["fit_s"] = time.perf_counter() - t1
    geometry = metric_geometry(fit, pop, dataset)
    if so_far is not None and "sampler_state" in fit.tree.children:
        del fit.tree["sampler_state"]  # the state after each chain's last draw, not after draw n: not to go on from
    fit.metadata["majestec_virtual"] = {"config": config, "trial_seed": int(tc["seed"]),
                                        "script": "fits/majestec_virtual/fit.py",
                                        "pooled_from": pooled_from,
                                        "so_far_of": None if so_far is None else str(so_far)}
    fit.tree.attrs["popkpd"] = json.dumps(fit.metadata)  # saved with the fit
    fit.save(out / "fit.nc")
    step(f"fit saved ({timing['fit_s']:.0f} s); writing the diagnostics report")
    t1 = time.perf_counter()
    popkpd.write_report(fit, pop, dataset, out / "report", n_sim=report_sims, max_draws=min(50, int(fc["draws"])))
    timing["report_s"] = time.perf_counter() - t1

    step("recovery and early-data classification")
    t1 = time.perf_counter()
    truth = population_truth(design, config["data"]["marrow_t_cells"], config["data"]["dvid"])
    pop_table = population_recovery(fit, pop, truth)
    ind_table = individual_recovery(fit, trial.params, dataset.ids)
    label = np.asarray(responses(trial).best)[np.asarray(dataset.ids) - 1] >= category_index("PR")
    p_model = predicted_response(fit, pop, dataset, design, int(config["classify"]["draws"]))
    sbcma0 = observed_at(trial.dataset, 2, 0.0, dataset.ids)
    week8 = observed_at(trial.dataset, 3, WEEK_8, dataset.ids) / observed_at(trial.dataset, 3, 0.0, dataset.ids)
    baseline = dataset.baseline_covariates()  # the fit's subjects in order
    et_measured = (baseline["T_MARROW_MEASURED"] / baseline["BURDEN"]).to_numpy()
    scores = {"baseline sBCMA (lower = response)": -sbcma0, "fitted model P(>= PR)": p_model,
              "measured baseline E:T (higher = response)": et_measured}
    if float(dc["until"]) >= WEEK_8 and np.all(np.isfinite(week8)):
        scores["week-8 M-protein ratio (lower = response)"] = -week8
    both = 0 < label.sum() < label.size  # an AUC needs responders and non-responders
    classification = bootstrap_auc(scores, label) if both else {}
    timing["analysis_s"] = time.perf_counter() - t1
    timing["total_s"] = time.perf_counter() - t0
    plot_recovery(fit, trial.params, dataset.ids, scores, label, float(dc["until"]), out / "recovery.png")
    pop_table.to_csv(out / "population_recovery.csv", index=False)
    ind_table.to_csv(out / "individual_recovery.csv", index=False)
    pd.DataFrame({"ID": dataset.ids, "responder": label, "p_model": p_model, "sbcma0_nM": sbcma0,
                  "et_measured": et_measured, "m_protein_ratio_week8": week8}).to_csv(out / "classification.csv",
                                                                                      index=False)

    sites = pop.population_sites()
    conv = fit.convergence(sites, loo=False)
    mcmc = "sample_stats" in fit.tree.children and "diverging" in fit.tree["sample_stats"]
    by_draws = convergence_by_draws(fit.tree, sites) if mcmc else None
    summary = {"timing_s": timing, "fit_timing_s": fit.metadata.get("timing_s", {}),
               "n_patients": trial.n, "n_observations": n_obs, "responders": int(label.sum()),
               "classification": classification, "convergence": str(conv), "config": config,
               "convergence_by_draws": None if by_draws is None else by_draws.to_dict("records"),
               "geometry": geometry,
               "pooled_from": pooled_from, "so_far_of": None if so_far is None else str(so_far)}
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=float))
    (out / "summary.md").write_text(_summary_markdown(summary, pop_table, ind_table, design))
    step(f"done; {out / 'summary.md'}")
    return {"fit": fit, "population": pop_table, "individual": ind_table, "classification": classification,
            "timing": timing, "convergence": conv}


def _summary_markdown(summary, pop_table, ind_table, design) -> str:
    c = summary["config"]
    cls = pd.DataFrame([{"score": k, "AUC": v["auc"], "95 % interval": f"[{v['lo']:.2f}, {v['hi']:.2f}]",
                         "AUC minus baseline sBCMA's, 95 % interval": f"[{v['diff_lo']:.2f}, {v['diff_hi']:.2f}]"}
                        for k, v in summary["classification"].items()])
    t = summary["timing_s"]
    return "\n".join([
        f"# Patient-level fit of a simulated {design.name} trial (generated by fits/majestec_virtual/fit.py)",
        "",
        f"Trial: {summary['n_patients']} patients (seed {c['trial']['seed']}), {design.horizon:g} days; the fit sees "
        f"{summary['n_observations']} observations (DVID {c['data']['dvid']}) up to day {c['data']['until']:g}. "
        + (f"The trial's patients have no IIV on {', '.join(c['trial']['without_iiv'])} ([trial] without_iiv): "
           "each has the typical value. " if c["trial"]["without_iiv"] else "")
        + (f"The trial measures the exhausted share of the marrow T cells (DVID {PANEL_DVID}) on days "
           f"{', '.join(f'{d:g}' for d in c['trial']['panel'])} ([trial] panel). " if c["trial"]["panel"] else "")
        + f"Fit: {c['fit']['method']}, {c['fit']['chains']} chains x ({c['fit']['warmup']} warmup + {c['fit']['draws']} draws), "
        f"max tree depth {c['fit']['max_tree_depth']}, target acceptance {c['fit']['target_accept']}, seed {c['fit']['seed']}, "
        f"ODE rtol {c['fit']['rtol']:g} / atol {c['fit']['atol']:g}."
        + (f" Held at their prior's centre ([fit] fixed): {', '.join(c['fit']['fixed'])}." if c["fit"]["fixed"] else "")
        + (f" Estimated without IIV ([fit] without_iiv): {', '.join(c['fit']['without_iiv'])}."
           if c["fit"]["without_iiv"] else "")
        + (f" The chains of {len(summary['pooled_from'])} runs pooled (`--pool`, their fit seeds above): "
           + ", ".join(summary["pooled_from"]) + "; the fit time below is the pooling's, the runs' own in their "
           "summaries." if summary.get("pooled_from") else "")
        + (f" The draws saved so far by the unfinished run in {summary['so_far_of']} (`--so-far`), each chain cut "
           "to the shortest one's; the fit time below is the merging's." if summary.get("so_far_of") else ""),
        "",
        f"Times (s): trial {t['trial_s']:.0f}, fit {t['fit_s']:.0f} (of which "
        + ", ".join(f"{k} {max(v) if isinstance(v, list) else v:.0f}" for k, v in summary["fit_timing_s"].items()) + f"), report {t['report_s']:.0f}, "
        f"recovery and classification {t['analysis_s']:.0f}, total {t['total_s']:.0f}.",
        "",
        "## Convergence (population sites)", "", "```", summary["convergence"], "```", "",
        *(["## Convergence over the chains' first n draws (population sites)", "",
           "R-hat falling and bulk ESS growing with n: the chains are still converging; flat: they are stuck "
           "(the last row is the table above).", "",
           _markdown(pd.DataFrame(summary["convergence_by_draws"])), ""] if summary.get("convergence_by_draws") else []),
        *(["## The sampler's metric against the posterior (popkpd.sampler_geometry)", "",
           "Per chain, the posterior's sd over the adapted metric's along every direction: all near 1, the metric "
           "fits the posterior; the condition (max over min) is the spread of scales a trajectory must cover, "
           "`condition_diagonal` the same in the metric's diagonal alone (the repository README: \"Why a run "
           "mixes slowly\").", "",
           _markdown(pd.DataFrame(summary["geometry"]["metric"])) if "metric" in summary.get("geometry", {})
           else f"Not computed: {summary['geometry']['not_computed']}", "",
           *(["At each chain's last draw and at a divergent draw amid its most divergences (if any), the "
              "posterior's sd over the local sd (the Hessian's) along every direction: NUTS's step must be below "
              "about 2 over the largest, or the trajectories diverge; `sources`: whose data curve the stiffest "
              "direction (the subjects' and outputs' shares).", "",
              _markdown(pd.DataFrame(summary["geometry"]["curvature"])), ""]
             if summary.get("geometry", {}).get("curvature") else [])] if summary.get("geometry") else []),
        "## Population parameters: posterior median, 90 % interval, the trial's value", "",
        _markdown(pop_table), "",
        "## Patient-level parameters against each patient's true value", "",
        "`et` = e0 / n0 (marrow E:T at baseline); `s0` baseline sBCMA (nM; synthesis k_s s0). Spearman: "
        "posterior medians vs truth; coverage: fraction of patients whose 90 % interval holds the truth; "
        "true_log_sd: spread of the true values (log scale) among these patients.", "",
        _markdown(ind_table), "",
        f"## Classification of responders from the data up to day {c['data']['until']:g} "
        f"({summary['responders']} of {summary['n_patients']} respond)", "",
        ("" if c["data"]["until"] <= WEEK_8 else "This data cut is later than the early data (weeks 4-8) of issue 5: "
         "the fitted model's AUC here is not an early-data classification. ")
        + "Truth: best confirmed IMWG response >= PR over the 12 months (noise-free M-protein, monthly visits). "
        "95 % intervals: percentile bootstrap over patients (2,000 resamples, paired for the differences).", "",
        _markdown(cls) if len(cls) else "Not computed: every patient has the same response.", "",
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "config.toml")
    parser.add_argument("--out", type=Path, default=HERE / "outputs")
    parser.add_argument("--reuse-fit", action="store_true", help="analyse the fit already in OUT/fit.nc")
    parser.add_argument("--pool", type=Path, nargs="+", metavar="RUN",
                        help="analyse the chains of these earlier runs (output folders) of the config, made "
                             "with other [fit] seeds, together")
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="run the chains saved in OUT (a stopped run, or one to run longer) on to the config's "
                             "[fit] draws, without a new warmup")
    parser.add_argument("--so-far", action="store_true",
                        help="analyse the draws a running (or stopped) run in OUT has saved so far, into OUT/so_far "
                             "(the run's config; its chains cut to the shortest)")
    parser.add_argument("--chain", type=int, default=None, help="internal: run one chain (see fit_chain)")
    args = parser.parse_args(argv)
    if args.chain is not None:
        fit_chain(json.loads((args.out / "config_used.json").read_text()), args.out, args.chain, resume=args.resume)
        return 0
    if sum([bool(args.pool), args.reuse_fit, args.resume, args.so_far]) > 1:
        parser.error("--pool, --reuse-fit, --continue and --so-far: give one (--pool and --reuse-fit analyse saved "
                     "chains again, --continue runs them on, --so-far analyses a running run's draws so far).")
    if args.so_far:
        run(load_config(args.config), args.out / "so_far", so_far=args.out)
        return 0
    run(load_config(args.config), args.out, reuse_fit=args.reuse_fit, pool=args.pool, resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
