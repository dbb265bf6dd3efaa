"""Virtual trials (popkpd/_trial, models/virtual_populations.py).

Oracles: the Gaussian-copula theory of the population sampler (medians, stage probabilities,
Spearman correlations; Monte-Carlo intervals), the residual error models (standardised residuals
of the dataset against the noise-free truth), NONMEM round trip through ``read_nonmem``, dose
amounts recomputed from the label regimen, CRS probabilities recomputed with numpy from the IL-6
trajectories, and scipy for binomial intervals. The simulated trial is a small teclistamab trial
(6 patients, 9 weeks) simulated once per module.
"""

import argparse
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import popkpd
from models import teclistamab
from models import virtual_populations as vp
from popkpd._trial import (
    DVID_OUTPUTS,
    LogNormalCovariate,
    PKTimepoint,
    StageCovariate,
    Target,
    VirtualPopulation,
    add_simulate_parser,
    cmd_simulate,
    compare,
    sample_population,
    simulate_trial,
    standard_sampling,
    summarise_trial,
)
from popkpd._trial.design import to_dataset
from popkpd._trial.summary import wilson_interval

N_PATIENTS, HORIZON, SEED = 6, 63.0, 3


@pytest.fixture(scope="module")
def design():
    return vp.DESIGNS["majestec1"].replace(horizon=HORIZON)


@pytest.fixture(scope="module")
def trial(design):
    return simulate_trial(design, n=N_PATIENTS, seed=SEED)


# --------------------------------------------------------------------------- population
def test_marginal_medians_and_stage_probabilities_match_the_specification():
    pop = vp.population(90.0, 74.0)
    n = 20_000
    cov, _ = sample_population(pop, n, seed=11)
    for name, m in pop.covariates.items():
        if isinstance(m, LogNormalCovariate):
            # sd of the sample median of log X: sqrt(pi / 2) sigma / sqrt(n)
            se = math.sqrt(math.pi / 2) * m.log_sd / math.sqrt(n)
            assert abs(np.log(np.median(cov[name])) - np.log(m.median)) < 4 * se, name
            assert cov[name].min() >= m.low and cov[name].max() <= m.high
    p = np.asarray(pop.covariates["iss"].probabilities)
    freq = np.array([(cov["iss"] == k).mean() for k in (1, 2, 3)])
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / n))


def test_latent_correlations_give_the_gaussian_copula_rank_correlations():
    """Spearman's rho of a Gaussian copula is (6 / pi) asin(rho / 2), whatever the marginals."""
    pop = vp.population(45.0, 71.45)
    n = 20_000
    cov, _ = sample_population(pop, n, seed=5)
    for (a, b), rho in pop.correlation.items():
        if "iss" in (a, b):
            continue  # ties of a 3-level category lower Spearman's rho
        expected = 6 / np.pi * np.arcsin(rho / 2)
        observed = stats.spearmanr(cov[a], cov[b]).statistic
        assert abs(observed - expected) < 4 / math.sqrt(n), (a, b)
    # sBCMA rises with burden; BCMA density is independent of sBCMA
    assert stats.spearmanr(cov["sbcma"], cov["burden"]).statistic > 0.6
    assert abs(stats.spearmanr(cov["sbcma"], cov["bcma_density"]).statistic) < 4 / math.sqrt(n)
    # higher stages go with higher burden
    med = [np.median(cov["burden"][cov["iss"] == k]) for k in (1, 2, 3)]
    assert med[0] < med[1] < med[2]


def test_sampling_is_seeded_and_each_iiv_has_its_own_stream():
    pop = VirtualPopulation({"weight": LogNormalCovariate(70.0, 0.2)}, iiv={"kg": 1.0, "kmax": 0.5})
    cov1, eta1 = sample_population(pop, 4000, seed=1)
    cov2, eta2 = sample_population(pop, 4000, seed=1)
    pd.testing.assert_frame_equal(cov1, cov2)
    pd.testing.assert_frame_equal(eta1, eta2)
    _, eta3 = sample_population(pop.replace(iiv={"kg": 1.0, "chi": 2.0}), 4000, seed=1)
    np.testing.assert_array_equal(eta1["kg"], eta3["kg"])
    _, eta4 = sample_population(pop, 4000, seed=2)
    assert not np.allclose(eta1["kg"], eta4["kg"])
    # sd of eta within its chi-square 99.9 % interval
    for name, sd in (("kg", 1.0), ("kmax", 0.5)):
        ratio = np.var(eta1[name], ddof=0) / sd**2 * 4000
        assert stats.chi2.ppf(0.0005, 4000) < ratio < stats.chi2.ppf(0.9995, 4000)


@pytest.mark.parametrize("kwargs, match", [
    (dict(covariates={}), "received no covariates"),
    (dict(covariates={"w": (70, 0.2)}), "covariate 'w': received"),
    (dict(covariates={"w": LogNormalCovariate(-1.0, 0.2)}), "expected median > 0"),
    (dict(covariates={"s": StageCovariate((0.5, 0.4))}), "summing to 1"),
    (dict(covariates={"w": LogNormalCovariate(70.0, 0.2)}, correlation={("w", "x"): 0.5}), "received the key"),
    (dict(covariates={"w": LogNormalCovariate(70.0, 0.2), "x": LogNormalCovariate(1.0, 1.0)},
          correlation={("w", "x"): 1.5}), "expected -1 < rho < 1"),
    (dict(covariates={k: LogNormalCovariate(1.0, 1.0) for k in "abc"},
          correlation={("a", "b"): 0.9, ("b", "c"): 0.9, ("a", "c"): -0.9}), "not positive definite"),
    (dict(covariates={"w": LogNormalCovariate(70.0, 0.2)}, iiv={"kg": -1.0}), r"iiv\['kg'\]"),
])
def test_population_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VirtualPopulation(**kwargs)


def test_sample_population_rejects_a_bad_size():
    with pytest.raises(ValueError, match="received n=0"):
        sample_population(vp.population(45.0, 70.0), 0, seed=0)


# --------------------------------------------------------------------------- design errors
@pytest.mark.parametrize("change, match", [
    (lambda d: dict(population=VirtualPopulation({"sbcma": LogNormalCovariate(45.0, 1.0)})), "no 'weight'"),
    (lambda d: dict(horizon=20.0), "received horizon=20"),
    (lambda d: dict(sampling={"flc": [1.0]}), r"expected outputs among"),
    (lambda d: dict(errors={k: v for k, v in d.errors.items() if k != "il6"}), r"\['il6'\] are sampled"),
    (lambda d: dict(errors={**d.errors, "conc": popkpd.LogNormalError(popkpd.HalfNormal(0.5))}), "Fixed sigmas"),
    (lambda d: dict(crs_coefs=(1.0, 2.0)), "received crs_coefs"),
    (lambda d: dict(baseline_errors={"marrow_t": 0.4}), r"baseline_errors\['marrow_t'\] = 0.4; expected a covariate"),
    (lambda d: dict(baseline_errors={"t_marrow": 0.0}), r"baseline_errors\['t_marrow'\] = 0.0; expected a covariate"),
    (lambda d: dict(regimen=popkpd.Regimen.at([0.0, 3.0], teclistamab.REGIMEN.phases[0].dose)),
     "expected at least 4"),
])
def test_design_errors(design, change, match):
    with pytest.raises(ValueError, match=match):
        design.replace(**change(design))


def test_link_must_give_every_parameter(design):
    bad = design.replace(link=lambda c, e, t: {k: v for k, v in t.items() if k != "kg"})
    with pytest.raises(ValueError, match=r"no values for \['kg'\]"):
        simulate_trial(bad, n=2, seed=0)
    nan = design.replace(link=lambda c, e, t: {**t, "kg": np.array([0.01, np.nan])})
    with pytest.raises(ValueError, match="kg=nan for patient ID 2"):
        simulate_trial(nan, n=2, seed=0)


def test_standard_sampling_schedule():
    s = standard_sampling([0.0, 3.0, 6.0, 13.0, 20.0], horizon=15.0)
    assert s["conc"] == pytest.approx([1, 2, 3 - 1 / 24, 4, 5, 6 - 1 / 24, 7, 8, 13 - 1 / 24])
    assert s["m_protein"] == [0.0] and s["t_cells"] == [0.0, 7.0]
    assert s["il6"] == pytest.approx([0, 0.5, 1, 2, 3.5, 4, 5, 6.5, 7, 8])


# --------------------------------------------------------------------------- dataset
def test_dataset_reads_back_exactly_with_read_nonmem(trial, design, tmp_path):
    path = tmp_path / "trial.csv"
    trial.dataset.to_csv(path, index=False)
    ds = popkpd.read_nonmem(path, design.model, dvid_outputs=DVID_OUTPUTS, covariates=["WEIGHT", "SBCMA"])
    table = trial.dataset
    obs = table[table.EVID == 0].reset_index()
    got = ds.observation_frame()
    assert len(got) == len(obs) and ds.n_subjects == N_PATIENTS
    np.testing.assert_array_equal(got["row"], obs["index"])
    np.testing.assert_array_equal(got["TIME"], obs["TIME"])
    np.testing.assert_array_equal(got["DV"], obs["DV"])  # CSV round trip of float64 is exact
    np.testing.assert_array_equal(got["cens"], obs["CENS"])
    assert list(got["output"]) == [DVID_OUTPUTS[k] for k in obs["DVID"]]
    base = ds.baseline_covariates()
    np.testing.assert_array_equal(base["WEIGHT"], trial.covariates["weight"])
    np.testing.assert_array_equal(base["SBCMA"], trial.covariates["sbcma"])


def test_dose_records_follow_the_label_regimen(trial):
    """0.06 and 0.3 mg/kg on days 0 and 3, then 1.5 mg/kg weekly from day 6 into the depot (CMT 1);
    nmol = mg x 1e6 / 146e3."""
    for i, w in enumerate(trial.covariates["weight"]):
        doses = trial.dataset[(trial.dataset.ID == i + 1) & (trial.dataset.EVID == 1)]
        times = [0.0, 3.0] + list(np.arange(6.0, HORIZON, 7.0))
        mgkg = [0.06, 0.3] + [1.5] * (len(times) - 2)
        np.testing.assert_array_equal(doses["TIME"], times)
        np.testing.assert_allclose(doses["AMT"], np.array(mgkg) * w * 1e6 / 146e3, rtol=1e-12)
        assert set(doses["CMT"]) == {1} and set(doses["MDV"]) == {1} and set(doses["RATE"]) == {0.0}


def test_samples_follow_the_schedule_and_precede_doses_at_the_same_time(trial, design):
    table = trial.dataset
    sampling = design.sampling_times()
    assert "t_exhausted_fraction" not in sampling  # measured only by designs that say when
    for dvid, out in DVID_OUTPUTS.items():
        for i in range(N_PATIENTS):
            t = table[(table.ID == i + 1) & (table.EVID == 0) & (table.DVID == dvid)]["TIME"]
            np.testing.assert_allclose(t, sampling.get(out, []))
    first = table[table.ID == 1].reset_index(drop=True)
    at0 = first[first.TIME == 0.0]
    assert list(at0.EVID) == [0, 0, 0, 0, 1]  # baseline samples, then the first dose


@pytest.mark.parametrize("conc_lloq", [None, 5.0])
def test_blq_records_hold_the_lloq_and_quantified_records_are_above_it(trial, design, conc_lloq):
    """With the design's LLOQs, and with a drug LLOQ of 5 nM, which the samples after step-up dose
    1 (~0.1-1 nM) fall below and the maintenance troughs (~50-150 nM) lie above."""
    if conc_lloq is None:
        table = trial.dataset
    else:
        design = design.replace(lloq={**design.lloq, "conc": conc_lloq})
        table = to_dataset(design, trial.covariates, trial.times, trial.outputs, np.random.default_rng(0))
    table = table[table.EVID == 0]
    lloq = table["DVID"].map({k: design.lloq.get(v, -np.inf) for k, v in DVID_OUTPUTS.items()})
    cens = table["CENS"] == 1
    np.testing.assert_array_equal(table.loc[cens, "DV"], lloq[cens])
    assert np.all(table.loc[~cens, "DV"] >= lloq[~cens])
    assert not table.loc[table.DVID == 4, "CENS"].any()  # T cells: no LLOQ
    if conc_lloq is not None:
        conc = table[table.DVID == 1]
        assert conc.loc[conc.TIME < 3, "CENS"].all() and not conc.loc[conc.TIME > 20, "CENS"].any()


def test_measurement_noise_follows_the_error_models(trial, design):
    """Standardised residuals z = (g(DV) - loc) / scale against the noise-free truth, pooled over
    samples whose truth is >= 10 x LLOQ (censoring negligible): mean 0, variance 1."""
    table = trial.dataset[trial.dataset.EVID == 0]
    z_all = []
    for dvid, out in DVID_OUTPUTS.items():
        err = design.errors[out]
        sigma = {site: p.value for site, p in err.priors(out).items()}
        rows = table[table.DVID == dvid]
        f = np.array([trial.at(out, t)[i - 1] for i, t in zip(rows.ID, rows.TIME)])
        keep = f >= 10 * design.lloq.get(out, 0.0)
        loc, scale = (np.asarray(a) for a in err.loc_scale(f[keep], sigma, out))
        y = rows["DV"].to_numpy()[keep]
        z_all.append(((np.log(y) if err.log_scale else y) - loc) / scale)
    z = np.concatenate(z_all)
    m = z.size
    assert m > 150
    assert abs(z.mean()) < 4 / math.sqrt(m)
    assert stats.chi2.ppf(0.0005, m) < np.sum(z**2) < stats.chi2.ppf(0.9995, m)


def test_an_exhaustion_panel_adds_its_rows_and_leaves_the_rest_of_the_trial_alone(trial, design):
    """A design that samples DVID 6 (the exhausted share of the T cells) gets its rows at those
    times, with its noise from its own stream: every other row and the baseline measurement are
    those of the design without it. Its standardised residuals against the truth are N(0, 1)."""
    days = [7.0, 28.0, 56.0]
    panel = design.replace(sampling=design.sampling_times() | {"t_exhausted_fraction": days})
    table = to_dataset(panel, trial.covariates, trial.times, trial.outputs, np.random.default_rng([3, 3]))
    plain = to_dataset(design, trial.covariates, trial.times, trial.outputs, np.random.default_rng([3, 3]))
    rows = table[table.DVID == 6]
    pd.testing.assert_frame_equal(table[table.DVID != 6].reset_index(drop=True), plain)
    for i in range(N_PATIENTS):
        np.testing.assert_allclose(rows[rows.ID == i + 1].TIME, days)
    f = np.array([trial.at("t_exhausted_fraction", t)[i - 1] for i, t in zip(rows.ID, rows.TIME)])
    assert np.all((f > 0) & (f < 1))
    lloq = design.lloq["t_exhausted_fraction"]
    cens = rows.CENS.to_numpy() == 1
    np.testing.assert_array_equal(rows.DV.to_numpy()[cens], lloq)
    z = np.log(rows.DV.to_numpy()[~cens] / f[~cens]) / 0.3
    m = z.size
    assert m >= 2 * N_PATIENTS and np.all(np.abs(z) < 4.5)
    assert abs(z.mean()) < 4 / math.sqrt(m)  # Monte-Carlo limits, as for the other outputs
    assert stats.chi2.ppf(0.0005, m) < np.sum(z**2) < stats.chi2.ppf(0.9995, m)


def test_baseline_measurements_are_lognormal_around_the_truth_and_leave_the_dvs_alone(trial, design):
    """``T_MARROW_MEASURED`` = T_MARROW x exp(0.4 z), one value per patient (400 patients, the
    trial's truth grid with constant outputs): z has mean 0 and variance 1 (Monte-Carlo limits),
    and the DVs are those of the same design without the measurement (drawn after them)."""
    n = 400
    cov, _ = sample_population(design.population, n, seed=7)
    outputs = {out: np.ones((n, trial.times.size)) for out in design.model.outputs}
    table = to_dataset(design, cov, trial.times, outputs, np.random.default_rng(1))
    sd = design.baseline_errors["t_marrow"]
    assert sd == 0.4
    per_patient = table.groupby("ID")
    assert (per_patient["T_MARROW_MEASURED"].nunique() == 1).all()
    z = np.log(per_patient["T_MARROW_MEASURED"].first() / per_patient["T_MARROW"].first()).to_numpy() / sd
    assert abs(z.mean()) < 4 / math.sqrt(n)
    assert stats.chi2.ppf(0.0005, n) < np.sum(z**2) < stats.chi2.ppf(0.9995, n)
    without = to_dataset(design.replace(baseline_errors={}), cov, trial.times, outputs, np.random.default_rng(1))
    assert "T_MARROW_MEASURED" not in without
    pd.testing.assert_frame_equal(without, table.drop(columns="T_MARROW_MEASURED"))


# --------------------------------------------------------------------------- summaries
def test_crs_probabilities_recomputed_from_il6(trial, design):
    doses = design.dose_times()
    il6 = trial.outputs["il6"]
    high = vp.high_burden(trial.covariates).astype(float)
    a0, a1, a2 = design.crs_coefs
    for k in range(3):
        inside = (trial.times >= doses[k]) & (trial.times < doses[k + 1])
        peak = il6[:, inside].max(axis=1)
        expected = 1 / (1 + np.exp(-(a0 + a1 * np.log(peak) + a2 * high)))
        np.testing.assert_allclose(trial.crs_probability[:, k], expected, rtol=1e-10)
    s = summarise_trial(trial)
    assert s["crs_sud1"] == trial.crs_event[:, 0].mean()
    assert s["crs_any"] == trial.crs_event[:, :4].any(axis=1).mean()
    assert s["crs_all"] == trial.crs_event.any(axis=1).mean()


def test_crs_intercept_calibration_hits_the_target(trial):
    a0 = vp.calibrate_crs_intercept(trial, 0.42)
    _, a1, a2 = trial.design.crs_coefs
    p = trial.crs_probability[:, 0]
    logit = np.log(p / (1 - p)) - trial.design.crs_coefs[0]
    assert np.mean(1 / (1 + np.exp(-(a0 + logit)))) == pytest.approx(0.42, abs=1e-9)


def test_calibrate_bisects_the_median_to_the_published_orr(trial, monkeypatch):
    """With the simulation replaced by a known ORR curve, ORR = 1 / (1 + m / 100) in the multiplier m
    of the calibrated median, the bisection returns its closed-form inverse m = 100 (1 / ORR - 1) for
    the published ORR 0.63 (to the bisection's resolution in log10 m), moves only the named
    parameter, and a0 is the CRS intercept of the last simulated population."""
    seen = []

    def fake_designs(cal=None):
        seen.append(dict(cal["majestec1"]["medians"]))
        return {"majestec1": trial.design}

    def fake_simulate(design, n, seed):
        assert n == vp.CALIBRATION_SIZE * 165 and seed == vp.CALIBRATION_SEED
        return trial

    monkeypatch.setattr(vp, "designs", fake_designs)
    monkeypatch.setattr(vp, "simulate_trial", fake_simulate)
    monkeypatch.setattr(vp, "summarise_trial", lambda t: {"orr": 1.0 / (1.0 + seen[-1]["x_sbm"] / 100.0)})
    steps, (lo, hi) = 12, (-1.0, 4.0)
    result = vp.calibrate("majestec1", parameter="x_sbm", steps=steps, log10_range=(lo, hi), verbose=False)
    expected = 100.0 * (1.0 / 0.63 - 1.0)
    assert abs(np.log10(result["medians"]["x_sbm"]) - np.log10(expected)) <= (hi - lo) / 2**steps
    assert set(result["medians"]) == {"x_sbm"} and all(set(m) == {"x_sbm"} for m in seen)
    assert len(seen) == steps + 1
    assert result["crs_a0"] == round(vp.calibrate_crs_intercept(trial, 0.42), 3)


@pytest.mark.parametrize("argv, match", [
    (["--at", "nope", "{}"], "--at received trial 'nope'; expected one of"),
    (["--at", "majestec1", "[1]"], "--at majestec1 received '\\[1\\]'.*expected a JSON object of multipliers"),
    (["--at", "majestec1", "{tau"], "--at majestec1 received '{tau'.*expected a JSON object"),
])
def test_virtual_populations_at_errors(argv, match, capsys):
    with pytest.raises(SystemExit):
        vp.main(argv)
    assert re.search(match, capsys.readouterr().err)


def test_calibration_population_rejects_an_unknown_parameter():
    with pytest.raises(ValueError, match=r"received medians for \['tau50'\]; expected names of the drug's TYPICAL"):
        vp.calibration_population("majestec1", {"tau50": 2.0})


def test_summary_is_consistent(trial):
    s = summarise_trial(trial, vp.PK_TIMEPOINTS["majestec1"])
    assert s["n"] == N_PATIENTS
    assert s["n_orr"] >= s["n_vgpr"] >= s["n_cr"]
    assert s["n_above"] + s["n_below"] == N_PATIENTS
    above = trial.covariates["sbcma"] > 400.0
    assert s["n_above"] == above.sum()
    conc = trial.outputs["conc"] * teclistamab.MW_KDA / 1e3
    k = np.argmin(np.abs(trial.times - (13.0 - 1 / 24)))
    assert s["C trough after 1 full dose (ug/mL)"] == pytest.approx(conc[:, k].mean(), rel=1e-12)


def test_pk_timepoint_errors(trial):
    with pytest.raises(ValueError, match="not on the truth grid"):
        summarise_trial(trial, [PKTimepoint("x", "conc", "value", 1.2345)])
    with pytest.raises(ValueError, match=r"window \[30.2, 30.3\] days, which holds fewer than two"):
        summarise_trial(trial, [PKTimepoint("x", "conc", "average", 30.2, 30.3)])
    with pytest.raises(ValueError, match="expected 'value', 'average' or 'peak'"):
        summarise_trial(trial, [PKTimepoint("x", "conc", "trough", 0.0, 3.0)])
    with pytest.raises(ValueError, match="expected 'mean', 'geomean' or 'median'"):
        summarise_trial(trial, [PKTimepoint("x", "conc", "peak", 0.0, 3.0, "max")])


def test_wilson_interval_matches_scipy():
    for k, n in ((0, 20), (7, 20), (104, 165), (165, 165)):
        ci = stats.binomtest(k, n).proportion_ci(method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_compare_tolerances():
    summary = {"n": 100, "orr": 0.55, "n_orr": 55, "ttr_months": 1.5, "sbcma_responders": 80.0,
               "orr_above": 0.2, "orr_below": 0.6, "n_above": 20, "n_below": 80}
    targets = [
        Target("orr", "ORR", 0.63, 165, "rate", None, "s"),
        Target("ttr_months", "TTR", 1.2, None, "absolute", 0.5, "s"),
        Target("sbcma_responders", "sB", 54.9, None, "ratio", 1.5, "s"),
        Target("orr_above", "hi", None, None, "lower", "orr_below", "s"),
        Target("orr_below", "lo", 0.8, 123, "rate", None, "s"),
    ]
    t = compare(summary, targets)
    tol = 1.959963984540054 * math.sqrt(0.63 * 0.37 / 165 + 0.55 * 0.45 / 100)
    assert f"+-{tol:.3f}" in t.loc[0, "tolerance"] and t.loc[0, "within"] == (0.08 <= tol)
    assert t.loc[1, "within"] and t.loc[2, "within"] == (80 / 54.9 <= 1.5) and t.loc[3, "within"]
    tol_lo = 1.959963984540054 * math.sqrt(0.8 * 0.2 / 123 + 0.6 * 0.4 / 80)
    assert "n=123 vs 80" in t.loc[4, "tolerance"] and t.loc[4, "within"] == (0.2 <= tol_lo)
    with pytest.raises(ValueError, match="names the summary key 'cr'"):
        compare(summary, [Target("cr", "CR", 0.4, 165, "rate", None, "s")])
    with pytest.raises(ValueError, match="has kind='odds'"):
        compare(summary, [Target("orr", "ORR", 0.63, 165, "odds", None, "s")])


# --------------------------------------------------------------------------- command line
def _parse(argv):
    parser = argparse.ArgumentParser(prog="popkpd")
    add_simulate_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_simulate_writes_the_same_trial(trial, tmp_path, capsys):
    out = tmp_path / "tec.csv"
    args = _parse(["simulate", "majestec1", "--n", str(N_PATIENTS), "--seed", str(SEED), "--horizon",
                   str(HORIZON), "--out", str(out)])
    assert args.func(args) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(_roundtrip(trial.dataset, tmp_path)))
    patients = pd.read_csv(tmp_path / "tec_patients.csv")
    np.testing.assert_allclose(patients["kg"], trial.params["kg"], rtol=1e-14)
    assert "MajesTEC-1-like" in capsys.readouterr().out


def _roundtrip(frame, folder):
    path = folder / "reference.csv"
    frame.to_csv(path, index=False)
    return path


def test_cli_errors():
    with pytest.raises(SystemExit, match="received trial 'nope'"):
        cmd_simulate(_parse(["simulate", "nope"]))
    with pytest.raises(SystemExit, match="received --n 0"):
        cmd_simulate(_parse(["simulate", "majestec1", "--n", "0"]))
    with pytest.raises(SystemExit, match="module 'popkpd' has no DESIGNS mapping"):
        cmd_simulate(_parse(["simulate", "majestec1", "--designs", "popkpd"]))
    with pytest.raises(SystemExit, match="could not import 'no_such_module'"):
        cmd_simulate(_parse(["simulate", "majestec1", "--designs", "no_such_module"]))


# --------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_dataset_doses_reproduce_the_truth_when_resimulated(trial, design, tmp_path):
    """Simulating the read-back dataset with the patients' true parameters reproduces the noise-free
    values at every sample (doses, times and compartments are encoded correctly)."""
    path = tmp_path / "trial.csv"
    trial.dataset.to_csv(path, index=False)
    ds = popkpd.read_nonmem(path, design.model, dvid_outputs=DVID_OUTPUTS)
    params = {k: trial.params[k].to_numpy() for k in design.model.parameters}
    sol = popkpd.simulate(design.model, params, ds.events)
    frame = ds.observation_frame()
    pred = np.asarray(sol.pred)[np.asarray(ds.events.obs_mask)]
    truth = np.array([trial.at(o, t)[s] for s, o, t in zip(frame.subject, frame.output, frame.TIME)])
    np.testing.assert_allclose(pred, truth, rtol=1e-6, atol=1e-9)
