"""``popkpd demo``: the full story on bundled data, in three steps (README "What the demo does").

1. **Simulate a virtual trial.** A small MajesTEC-1-like trial (``models/virtual_populations.py``,
   design ``majestec1``: teclistamab 0.06 / 0.3 mg/kg step-up, then 1.5 mg/kg weekly SC; the full
   BCMA model L0-L5 at the drug's ``TYPICAL`` values with calibrated patient variability,
   ``docs/virtual_trials.md``) with ``simulate_trial``: 24 patients, 84 days (``--quick``: 8
   patients, 56 days), seed 1. Written as a NONMEM-style CSV (``trial/majestec1_virtual.csv``, DVID
   1 total drug nM, 2 total sBCMA nM, 3 M-protein, 4 T cells, 5 IL-6) and the patients' true
   values (``trial/majestec1_virtual_patients.csv``).
2. **Fit it.** What the data identify cheaply: teclistamab PK with the soluble-BCMA sink,
   ``BCMAModel(layers=1, clearance="exponential")``, fitted to the total drug (DVID 1) and total
   sBCMA (DVID 2) rows. Estimated: typical ``cl``, ``vc``, ``ka`` (L/day, L, 1/day), ``s0``
   (baseline sBCMA, nM) with log-normal IIV (``omega`` ~ HalfNormal), typical ``k_x`` (complex
   clearance, 1/day), and a log-normal residual sd per output; priors LogNormal(drug ``TYPICAL``,
   log-sd 1), i.e. a factor ~2.7 either way. Every other sink / PK parameter is fixed at
   ``TYPICAL``. Method: **Laplace** (MAP + Gaussian approximation of all population parameters
   and random effects, 400 draws; ``--quick`` 100): NUTS on this ODE model needs thousands of
   gradient evaluations through diffrax (by our estimate tens of minutes on a 2-core CPU, not
   measured), too slow for a demo; Laplace needs one optimisation and one Hessian. The model is misspecified on purpose (the trial
   was simulated with L0-L5: marrow binding, shed sBCMA from the tumour), as every real fit is.
   Saved atomically (``fit/fit.nc``, ``Fit.save``) with the diagnostics report
   (``fit/summary.md``, GOF, VPC, individual fits; ``write_report``), and a table of the fitted
   typical values against the trial's truth (median over its patients) in ``fit/recovery.csv``.
3. **Answer a dosing query** for a high-sBCMA patient (70 kg, baseline sBCMA 600 ng/mL, half the
   typical marrow T cells): rank teclistamab regimens (step-up 0.06 / 0.3 or 0.3 mg/kg, then 0.72,
   1.5 or 3 mg/kg weekly, and the approved regimen) by the mean log10 tumour reduction at week 12
   subject to P(CRS in the first 28 days) <= 0.72 (MajesTEC-1's any-grade rate) and at most 3
   clinic visits a week, over 16 parameter draws x 4 simulated patients (``--quick``: 2 x 2, two
   regimens, week 8). The draws take the parameters the fit estimated from the fit's posterior
   (``fit_and_prior_draws``: posterior draws, new random effects, the patient's sBCMA fixed) and
   every other parameter of the full model from the drug's priors (``PRIORS``, IIV as in
   ``fits/dosing/high_sbcma.toml``). The query runs through ``popkpd dose``'s ``run_query``: the
   ranked table is printed and ``dose/ranked.csv``, ``dose/trajectories.png`` and
   ``dose/pareto.png`` are written.

Each step prints its name and the elapsed time. Measured wall time on the 2-core CPU shared with
other jobs (load average 4-5), 21 Nov 2026: see README "What the demo does". The theophylline NUTS
fit of earlier versions is not part of this story and is left out: ``popkpd fit
fits/theophylline/config.toml`` runs it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parent.parent

FULL = dict(n_patients=24, horizon=84.0, laplace_draws=400, n_draws=16, n_patients_per_draw=4, response_week=12,
            step_up=[[0.06, 0.3], [0.3]], maintenance=[0.72, 1.5, 3.0], report_sims=100)
QUICK = dict(n_patients=8, horizon=56.0, laplace_draws=100, n_draws=2, n_patients_per_draw=2, response_week=8,
             step_up=[[0.06, 0.3]], maintenance=[1.5, 3.0], report_sims=20)

TRIAL_SEED = 1
ESTIMATED_IIV = {"cl": 0.5, "vc": 0.5, "ka": 0.5, "s0": 1.0}
"""HalfNormal scales of the IIV sds (log) of the fitted parameters."""
ESTIMATED_TYPICAL = ("k_x",)
"""Parameters estimated without IIV."""
PRIOR_SD = 1.0
"""log-sd of the LogNormal priors of the estimated typical values (around the drug's TYPICAL)."""
DVID_FITTED = {1: "conc", 2: "sbcma_total"}

QUERY = {
    "drug": "teclistamab",
    "objective": "log10_reduction",
    "constraints": ["p_crs <= 0.72", "visits_per_week <= 3"],
    "seed": 0,
    "patient": {"weight": 70.0, "sbcma_ng_ml": 600.0, "t_cells": 0.5},
    "draws": {"iiv": {"cl": 0.5, "vc": 0.4, "ka": 0.4, "n0": 1.0, "kmax": 0.5, "m0": 0.5}},
    "grid": {"interval": [7], "step_spacing": [3]},
    "settings": {"target": 1.0, "draws_per_batch": 8},
}
"""The dosing query (patient and IIV as in ``fits/dosing/high_sbcma.toml``); sizes from ``FULL`` /
``QUICK``. Objective: the mean log10 tumour reduction at the response week (continuous: with 64
simulated patients per regimen P(>= VGPR) moves in steps of 1/64 and often ties). Constraint: P(CRS in the
first 28 days) no higher than MajesTEC-1's any-grade CRS rate, 0.72 (docs/virtual_trials.md)."""


class _Progress:
    def __init__(self, steps: int):
        self.steps, self.t0, self.k = steps, time.perf_counter(), 0

    def step(self, name: str) -> None:
        self.k += 1
        self.t_step = time.perf_counter()
        print(f"[{self.k}/{self.steps}] {name} (elapsed {self.elapsed():.0f} s) ...", flush=True)

    def done(self, what: str) -> None:
        print(f"      {what} [step {time.perf_counter() - self.t_step:.0f} s, elapsed {self.elapsed():.0f} s]",
              flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def _models():
    if str(REPOSITORY) not in sys.path:
        sys.path.insert(0, str(REPOSITORY))  # models/ lives at the repository root
    from models import teclistamab, virtual_populations

    return teclistamab, virtual_populations


def simulate_virtual_trial(out: Path, n_patients: int, horizon: float, seed: int = TRIAL_SEED):
    """Simulate the ``majestec1`` design for ``n_patients`` over ``horizon`` days; write the
    dataset and the true values into ``out``. Returns (trial, dataset path)."""
    from ._trial import simulate_trial

    _, vp = _models()
    design = vp.DESIGNS["majestec1"].replace(horizon=float(horizon))
    trial = simulate_trial(design, n=n_patients, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "majestec1_virtual.csv"
    trial.dataset.to_csv(path, index=False)
    trial.covariates.merge(trial.params, on="ID").to_csv(out / "majestec1_virtual_patients.csv", index=False)
    return trial, path


def sink_population():
    """The fitted model: teclistamab PK + sBCMA sink (L0-L1), priors around the drug's TYPICAL."""
    import popkpd

    tec, _ = _models()
    model = popkpd.BCMAModel(layers=1, clearance=tec.MODEL.clearance)
    parameters = {}
    for name in model.parameters:
        value = float(tec.TYPICAL[name])
        if name in ESTIMATED_IIV:
            parameters[name] = popkpd.Parameter(popkpd.LogNormal(value, PRIOR_SD), iiv=popkpd.HalfNormal(ESTIMATED_IIV[name]))
        elif name in ESTIMATED_TYPICAL:
            parameters[name] = popkpd.Parameter(popkpd.LogNormal(value, PRIOR_SD))
        else:
            parameters[name] = popkpd.Parameter(popkpd.Fixed(value))
    error = {output: popkpd.LogNormalError(popkpd.HalfNormal(1.0)) for output in DVID_FITTED.values()}
    return popkpd.PopulationModel(model, parameters, error, method="ode")


def fit_trial(dataset_path: Path, out: Path, draws: int, report_sims: int, seed: int = 0):
    """Fit ``sink_population()`` to the drug and sBCMA rows of the trial by Laplace; save the fit
    and its report into ``out``. Returns (fit, population, dataset)."""
    import pandas as pd

    import popkpd

    population = sink_population()
    frame = pd.read_csv(dataset_path)
    frame = frame[(frame.EVID != 0) | frame.DVID.isin(list(DVID_FITTED))].reset_index(drop=True)
    dataset = popkpd.read_nonmem(frame, population.structural, dvid_outputs=DVID_FITTED)
    result = popkpd.fit(population, dataset, method="laplace", draws=draws, seed=seed, progress_bar=False)
    result.metadata["demo"] = f"popkpd demo: fit of {dataset_path.name} (DVID {sorted(DVID_FITTED)})"
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "fit.nc")
    popkpd.write_report(result, population, dataset, out, n_sim=report_sims, max_draws=min(draws, 50))
    return result, population, dataset


def recovery_table(fit, population, truth):
    """Fitted typical values (posterior median, 90 % interval) next to the trial's truth: the
    median over the trial's patients of each parameter's true value."""
    import pandas as pd

    from ._diagnostics import parameter_table

    table = parameter_table(fit, population)
    rows = []
    for name in list(ESTIMATED_IIV) + list(ESTIMATED_TYPICAL):
        row = table[table.parameter == f"{name}_pop"].iloc[0]
        rows.append(dict(parameter=name, fitted_median=row["median"], q05=row["q05"], q95=row["q95"],
                         true_median=float(np.median(truth[name]))))
    return pd.DataFrame(rows)


def answer_query(fit, population, out: Path, sizes: dict):
    """The dosing query ``QUERY`` with draws from the fit (estimated parameters) and the priors
    (the rest), through ``popkpd dose``'s ``run_query``. Returns the ``SearchResult``."""
    from ._optimise import Patient
    from ._optimise.command import run_query
    from ._optimise.draws import fit_and_prior_draws

    tec, _ = _models()
    q = {k: (dict(v) if isinstance(v, dict) else v) for k, v in QUERY.items()}
    q["grid"].update(step_up=sizes["step_up"], maintenance=sizes["maintenance"])
    q["settings"].update(horizon=sizes["horizon"], response_week=sizes["response_week"])
    patient = Patient(**q["patient"])
    draws = fit_and_prior_draws(fit, population, tec.MODEL, tec.TYPICAL, tec.PRIORS, iiv=q["draws"]["iiv"],
                                n_draws=sizes["n_draws"], n_patients=sizes["n_patients_per_draw"], patient=patient,
                                seed=q["seed"])
    print(f"      draws: {draws.source}", flush=True)
    result, _ = run_query(q, out, top=10, draws=draws)
    return result


def run_demo(out: Path, quick: bool = False) -> dict:
    """Run the three steps into ``out``; returns {"trial", "fit", "population", "recovery", "dose"}."""
    from ._trial import summarise_trial

    sizes = QUICK if quick else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    progress = _Progress(3)

    progress.step(f"simulating a MajesTEC-1-like virtual trial: {sizes['n_patients']} patients, "
                  f"{sizes['horizon']:g} days, full BCMA model L0-L5 (compiles the model first)")
    trial, path = simulate_virtual_trial(out / "trial", sizes["n_patients"], sizes["horizon"])
    obs = trial.dataset[trial.dataset.EVID == 0]
    summary = summarise_trial(trial)
    progress.done(f"{trial.n} patients, {len(obs)} observations ({int(obs.CENS.sum())} below LLOQ); best response "
                  f">= PR {summary['orr']:.2f}, >= VGPR {summary['vgpr']:.2f}; wrote {path}")

    progress.step("fitting teclistamab PK + sBCMA sink (BCMAModel layers=1) to total drug and sBCMA by Laplace")
    fit, population, dataset = fit_trial(path, out / "fit", sizes["laplace_draws"], sizes["report_sims"])
    recovery = recovery_table(fit, population, trial.params)
    recovery.to_csv(out / "fit" / "recovery.csv", index=False)
    print("      fitted typical values (median [90 % interval]) vs the trial's truth (median over patients):")
    for _, r in recovery.iterrows():
        print(f"        {r['parameter']:>4}: {r['fitted_median']:.3g} [{r['q05']:.3g}, {r['q95']:.3g}]  "
              f"true {r['true_median']:.3g}")
    progress.done(f"saved {out / 'fit' / 'fit.nc'}; report {out / 'fit' / 'summary.md'}")

    progress.step("dosing query for a high-sBCMA patient (600 ng/mL, half the T cells): fit draws + priors, "
                  "full BCMA model (compiles it for the regimen batch)")
    result = answer_query(fit, population, out / "dose", sizes)
    progress.done(f"wrote {out / 'dose'}/ranked.csv, trajectories.png, pareto.png")
    print(f"demo finished in {progress.elapsed():.0f} s; outputs in {out}/", flush=True)
    return {"trial": trial, "fit": fit, "population": population, "recovery": recovery, "dose": result}
