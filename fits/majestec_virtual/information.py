"""What the virtual trial's data can tell about each patient, by data cut, before any fit.

    python fits/majestec_virtual/information.py [--config CONFIG] [--until 28 56 84 168 336]
                                                [--weekly OUTPUT ...] [--panel DAY ...]
                                                [--observed RUN_OUT] [--out DIR]

For the config's trial (``[trial]``) and fitted model (``[fit]``, ``[priors]``, ``[data]
marrow_t_cells``), the expected eta shrinkage of each random effect of the fit
(``popkpd.expected_shrinkage``: the Bayesian information matrix of each patient's random effects
from the observations the data cut gives the fit, at that patient's true parameters and the
trial's population values) for each data cut in ``--until`` (days). Beside it the shrinkage with
the other random effects known: where the two differ, the data move two effects the same way and
cannot tell them apart. ``--weekly m_protein t_cells`` asks the same of another sampling
schedule: those outputs measured every 7 days from day 0 instead of the trial's schedule
(``popkpd._trial.design.standard_sampling``: M-protein and sBCMA every 28 days, T cells at days 0,
7, 28, 56 and 84), the rest unchanged. ``--panel 7 28 56`` adds (to the config's ``[trial]
panel``; the shipped config has these days since run 34) a measurement: the exhausted share of
the marrow T cells (DVID 6, the model's ``t_exhausted_fraction``, what an on-treatment flow
panel of exhaustion markers such as PD-1+TIM-3+ measures) on those days, fitted. ``--observed``
puts a finished run's shrinkage (``popkpd.shrinkage`` of ``RUN_OUT/fit.nc``) beside the cut it
was fitted at, with the Monte Carlo error of its patients' posterior means (``ebe_mcse``): where that is not small, the chains'
noise spreads the posterior means and the observed shrinkage is lower than the data's. Writes
``DIR/expected_shrinkage.csv`` (default ``outputs/``) and prints the tables.

Then, per fitted output, the noise the trial's data at the config's cut actually hold
(``realised_noise``): the root mean square of the standardised residuals of the uncensored
observations against the noise-free values, with the 90 % interval that a fit knowing every
patient's true prediction would give the error model's sd (chi-square, n degrees of freedom). A
residual sd whose interval misses the simulated value in every run may be this trial's draw, not
the fit's fault: then this interval misses it too.

Decisions: the patients' true parameters are those of the trial's own model; for the parameters
the fitted model estimates they are mapped one to one (a patient's deviation = log of its true
value over the fitted model's typical value at its covariates: for e0, the measurement error of
``T_MARROW_MEASURED``), the rest stay at the fitted model's fixed values. With the trial's IIV on
chi, tau50_n and k_rec (the shipped config until run 34) the fitted model is not the trial's and the
numbers are those of the fitted model at the patients' parameters; with ``[trial] without_iiv =
["chi", "tau50_n", "k_rec"]`` (run 26; the shipped config also drops cl2's, which its fit does not
estimate) it is the trial's. The sensitivities are taken at ODE tolerances
1e-6 / 1e-9, not the fit's 1e-4 / 1e-7. Only the observation times count (not the noisy values),
the censored ones left out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import fit as majestec  # noqa: E402  (fits/majestec_virtual/fit.py)
import popkpd  # noqa: E402
from popkpd._trial import simulate_trial  # noqa: E402

CUTS = (28.0, 56.0, 84.0, 168.0, 336.0)
"""Default data cuts (days): weeks 4, 8, 12, 24 and 48 (the trial's horizon, 12 cycles of 28 days)."""


def true_deviations(pop, dataset, values: dict, params: pd.DataFrame) -> dict:
    """Each patient's random effect of ``pop`` (log scale, the dataset's subject order): log of its
    true value (``params``, one row per ID) over the fitted model's typical value at its covariates."""
    typical = pop.individual_parameters(values, dataset.events, dataset.covariate_names)
    true = params.set_index("ID").loc[list(dataset.ids)]
    return {name: np.log(true[name].to_numpy() / np.asarray(typical[name])) for name in pop.iiv_names}


def with_panel(config: dict, days) -> dict:
    """A copy of ``config`` whose trial measures the exhausted share of the T cells on ``days`` too
    (``[trial] panel``) and whose fit has it (``[data] dvid``); checked as ``load_config`` checks."""
    config = {section: dict(values) for section, values in config.items()}
    if days:
        config["trial"]["panel"] = sorted(set(config["trial"]["panel"]) | {float(d) for d in days})
        config["data"]["dvid"] = sorted(set(config["data"]["dvid"]) | {majestec.PANEL_DVID})
    return majestec.check_config(config, "--panel")


def config_trial(config: dict, weekly=()):
    """The config's trial (``[trial]``), with the outputs in ``weekly`` sampled every 7 days."""
    tc = config["trial"]
    design = majestec.trial_design(tc)
    if weekly:
        every_week = list(np.arange(0.0, design.horizon, 7.0))
        design = design.replace(sampling=design.sampling_times() | {out: every_week for out in weekly})
    return simulate_trial(design, n=int(tc["patients"]), seed=int(tc["seed"]))


def expected_by_cut(config: dict, trial, cuts=CUTS, progress=print) -> pd.DataFrame:
    """``popkpd.expected_shrinkage`` of the config's fit to ``trial`` (``config_trial``) at each data
    cut (module docstring), one row per cut and random effect, with the number of observations the
    cut gives. An exhaustion panel comes with the config (``with_panel``)."""
    config = {section: dict(values) for section, values in config.items()}
    config["fit"].update(rtol=1e-6, atol=1e-9)
    pop = majestec.fitted_population(config)
    truth = majestec.population_truth(trial.design, config["data"]["marrow_t_cells"], config["data"]["dvid"])
    sampled = [s for s in pop.population_sites() if s in truth]
    values = {s: truth[s] for s in sampled}
    tables = []
    for until in cuts:
        t0 = time.perf_counter()
        dataset, cut = majestec.cut_dataset(pop, trial.dataset, float(until), config["data"]["dvid"])
        deviations = true_deviations(pop, dataset, values, trial.params)
        table = popkpd.expected_shrinkage(pop, dataset, values, deviations)
        table.insert(0, "observations", int((cut.EVID == 0).sum()))
        table.insert(0, "until", float(until))
        tables.append(table)
        progress(f"day {until:g}: {int((cut.EVID == 0).sum())} observations, {time.perf_counter() - t0:.0f} s")
    return pd.concat(tables, ignore_index=True)


def realised_noise(trial, until: float, dvid) -> pd.DataFrame:
    """Per fitted output (``dvid``), the noise in the trial's observations up to ``until``
    (module docstring): ``observations`` (uncensored), ``rms`` of ``(g(DV) - loc) / scale`` with
    the trial's error model at its sds (``g`` = log for log-normal errors) and its 90 % interval
    ``[rms_q05, rms_q95]`` (chi-square); for an error model with one sd, ``sd`` (the simulated
    value) and ``realised_sd`` = sd x rms with its interval."""
    from scipy import stats

    design, frame = trial.design, trial.dataset
    column = {round(float(t), 6): k for k, t in enumerate(trial.times)}
    row = {int(i): k for k, i in enumerate(trial.covariates["ID"])}
    rows = []
    for number in dvid:
        output = majestec.DVID_OUTPUTS[number]
        obs = frame[(frame.EVID == 0) & (frame.DVID == number) & (frame.TIME <= until) & (frame.CENS == 0)]
        f = trial.outputs[output][[row[int(i)] for i in obs.ID], [column[round(float(t), 6)] for t in obs.TIME]]
        error = design.errors[output]
        sds = {site: float(prior.value) for site, prior in error.priors(output).items()}
        loc, scale = (np.asarray(a) for a in error.loc_scale(np.asarray(f, dtype=float), sds, output))
        y = obs.DV.to_numpy(dtype=float)
        r = ((np.log(y) if error.log_scale else y) - loc) / scale
        n = r.size
        rms = float(np.sqrt(np.mean(r**2)))
        lo, hi = (rms * np.sqrt(n / stats.chi2.ppf(q, n)) for q in (0.95, 0.05))
        entry = {"output": output, "observations": n, "rms": rms, "rms_q05": lo, "rms_q95": hi}
        if len(sds) == 1:
            ((site, sd),) = sds.items()
            entry.update(site=site, sd=sd, realised_sd=sd * rms, realised_sd_q05=sd * lo, realised_sd_q95=sd * hi)
        rows.append(entry)
    return pd.DataFrame(rows)


def wide(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """One row per random effect, one column per data cut (``week N``)."""
    out = table.pivot(index="parameter", columns="until", values=column)
    out = out.loc[list(dict.fromkeys(table.parameter))]
    out.columns = [f"week {c / 7:g}" for c in out.columns]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "config.toml")
    parser.add_argument("--until", type=float, nargs="+", default=list(CUTS), help="data cuts (days)")
    standard = sorted(majestec.DVID_OUTPUTS[k] for k in majestec.DEFAULTS["data"]["dvid"])
    parser.add_argument("--weekly", nargs="+", default=[], choices=standard, metavar="OUTPUT",
                        help=f"sample these outputs every 7 days instead ({', '.join(standard)})")
    parser.add_argument("--panel", type=float, nargs="+", default=[], metavar="DAY",
                        help="add an exhausted-fraction measurement (flow panel) on these days (> 0)")
    parser.add_argument("--observed", type=Path, help="a run's output folder: the shrinkage of its fit.nc beside")
    parser.add_argument("--out", type=Path, default=HERE / "outputs")
    args = parser.parse_args(argv)
    try:
        config = with_panel(majestec.load_config(args.config), args.panel)
    except ValueError as err:
        parser.error(str(err))
    observed = None
    if args.observed is not None:
        path = args.observed / "fit.nc"
        if not path.is_file():
            parser.error(f"--observed {args.observed}: no {path}; expected the output folder of a fit.py run.")
        observed = popkpd.shrinkage(popkpd.load_fit(path)).set_index("parameter")
        used = args.observed / "config_used.json"
        observed_cut = json.loads(used.read_text())["data"]["until"] if used.is_file() else "?"
    trial = config_trial(config, args.weekly)
    table = expected_by_cut(config, trial, args.until)
    if args.weekly:  # the noise table is the config's trial's
        trial = config_trial(config)
    noise = realised_noise(trial, float(config["data"]["until"]), config["data"]["dvid"])
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "expected_shrinkage.csv"
    tmp = path.with_suffix(".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)
    shrink, known = wide(table, "shrinkage"), wide(table, "shrinkage_others_known")
    if observed is not None:
        run = Path(*args.observed.resolve().parts[-2:])  # "mv32/out": fit.py's output folders end in "out"
        shrink[f"observed ({run}, day {observed_cut})"] = observed.shrinkage.reindex(shrink.index)
        shrink["its ebe_mcse"] = observed.ebe_mcse.reindex(shrink.index)
    pd.set_option("display.width", 200)
    counts = table.drop_duplicates("until").set_index("until").observations
    print("\nObservations given to the fit: " + ", ".join(f"week {u / 7:g}: {n}" for u, n in counts.items()))
    print("\nExpected eta shrinkage (popkpd.expected_shrinkage; 0: the data set each patient's value, 1: the prior):")
    print(shrink.round(2).to_string())
    print("\nThe same with the other random effects known (the gap to the table above: confounding):")
    print(known.round(2).to_string())
    print(f"\nThe noise in the trial's data up to day {config['data']['until']:g} (realised_noise; rms 1 = the error "
          "model's sd; 90 % intervals of a fit that knew every true prediction):")
    print(noise.round(3).to_string(index=False))
    print(f"\n{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
