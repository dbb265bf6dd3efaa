"""Diagnostics: PRED/IPRED/IWRES/NPDE, VPC, shrinkage, plots and the report.

One Laplace fit (the real ``fit``) of a one-compartment oral model to data simulated from the
same model: 12 richly sampled subjects and 10 subjects with a single early sample (t = 0.25 h,
which carries almost no information on CL). IIV is fixed at the true omegas: the Laplace
approximation uses the *joint* mode of the non-centred posterior, which overstates estimated
omegas (the prior on eta rewards a large omega), and the calibration checks below need a
calibrated posterior. The realised standardised random effects are standardised to sample mean
0 and sd 1 within each group, so that shrinkage checks measure shrinkage and not the sampling
noise of a dozen random effects.
"""

import json

import numpy as np
import pandas as pd
import pytest

import popkpd
from popkpd._diagnostics import (
    expected_shrinkage,
    plot_gof,
    plot_individual_fits,
    plot_trace,
    plot_vpc,
    predictions,
    shrinkage,
    vpc,
    vpc_coverage,
    write_report,
)
from popkpd._diagnostics.common import Context
from popkpd._diagnostics.predictions import pde_from_counts
from popkpd._diagnostics.shrinkage import random_effects
from popkpd._diagnostics.vpc import vpc_table
from popkpd._inference import Fit, fit
from popkpd._statistical import LKJ, HalfNormal, LogNormal, Normal, Parameter, PopulationModel, Power, Proportional

DOSE, LLOQ = 100.0, 0.1
TRUE = {"cl": 2.0, "beta": 0.75, "vc": 10.0, "ka": 1.2, "omega_cl": 0.3, "omega_vc": 0.25, "sigma": 0.1}
RICH_TIMES = [0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0]
N_RICH, N_SPARSE = 12, 10


def conc(t, cl, vc, ka):
    """One-compartment oral closed form (mg/L), the test's independent reference."""
    k = cl / vc
    return DOSE * ka / (vc * (ka - k)) * (np.exp(-k * t) - np.exp(-ka * t))


def _standard(z):
    return (z - z.mean()) / z.std(ddof=1)


def simulate_table(seed=3):
    rng = np.random.default_rng(seed)
    n = N_RICH + N_SPARSE
    wt = np.linspace(50.0, 100.0, n)
    rng.shuffle(wt)
    z_cl = np.concatenate([_standard(rng.normal(size=N_RICH)), _standard(rng.normal(size=N_SPARSE))])
    z_vc = np.concatenate([_standard(rng.normal(size=N_RICH)), _standard(rng.normal(size=N_SPARSE))])
    rows = []
    for i in range(n):
        cl = TRUE["cl"] * (wt[i] / 70.0) ** TRUE["beta"] * np.exp(TRUE["omega_cl"] * z_cl[i])
        vc = TRUE["vc"] * np.exp(TRUE["omega_vc"] * z_vc[i])
        rows.append(dict(ID=i + 1, TIME=0.0, DV=np.nan, AMT=DOSE, EVID=1, MDV=1, CMT=1, CENS=0, WT=wt[i]))
        for t in RICH_TIMES if i < N_RICH else [0.25]:
            y = conc(t, cl, vc, TRUE["ka"]) * (1.0 + TRUE["sigma"] * rng.normal())
            blq = int(y < LLOQ)
            rows.append(dict(ID=i + 1, TIME=t, DV=LLOQ if blq else y, AMT=0.0, EVID=0, MDV=0, CMT=2, CENS=blq, WT=wt[i]))
    return pd.DataFrame(rows)


def population_model():
    return PopulationModel(
        popkpd.OneCompartment(),
        {
            "cl": Parameter(LogNormal(2.0, 1.0), TRUE["omega_cl"], Power("WT", 70.0, Normal(0.75, 0.25))),
            "vc": Parameter(LogNormal(10.0, 1.0), TRUE["omega_vc"]),
            "ka": LogNormal(1.0, 0.5),
        },
        Proportional(HalfNormal(0.3)),
    )


@pytest.fixture(scope="module")
def case():
    frame = simulate_table()
    dataset = popkpd.read_nonmem(frame, popkpd.OneCompartment(), covariates=["WT"])
    population = population_model()
    result = fit(population, dataset, method="laplace", draws=200, seed=1, progress_bar=False)
    return {"frame": frame, "dataset": dataset, "population": population, "fit": result}


@pytest.fixture(scope="module")
def table(case):
    return predictions(case["fit"], case["population"], case["dataset"])


def _posterior(fit_, name):
    a = np.asarray(fit_.tree["posterior"][name].values, dtype=float)
    return a.reshape((-1,) + a.shape[2:])


# --- predictions ----------------------------------------------------------------------------


def test_pred_is_the_closed_form_at_typical_values(case, table):
    f, ds = case["fit"], case["dataset"]
    med = {k: np.median(_posterior(f, k)) for k in ("cl_pop", "beta_cl_WT", "vc_pop", "ka_pop")}
    wt = ds.baseline_covariates().set_index("ID")["WT"]
    cl = med["cl_pop"] * (wt.loc[table["ID"]].to_numpy() / 70.0) ** med["beta_cl_WT"]
    expected = conc(table["TIME"].to_numpy(), cl, med["vc_pop"], med["ka_pop"])
    np.testing.assert_allclose(table["PRED"], expected, rtol=1e-9)


def test_ipred_is_the_posterior_median_of_individual_predictions(case, table):
    f = case["fit"]
    subject = table["ID"].to_numpy() - 1  # IDs are 1..S in events order
    cl, vc = _posterior(f, "cl")[:, subject], _posterior(f, "vc")[:, subject]  # stored individual values
    ka = _posterior(f, "ka_pop")[:, None]
    draws = conc(table["TIME"].to_numpy()[None, :], cl, vc, ka)  # [200 draws, observations]
    np.testing.assert_allclose(table["IPRED"], np.median(draws, axis=0), rtol=1e-9)
    np.testing.assert_allclose(table["IPRED_5"], np.quantile(draws, 0.05, axis=0), rtol=1e-9)
    np.testing.assert_allclose(table["IPRED_95"], np.quantile(draws, 0.95, axis=0), rtol=1e-9)
    assert np.all(table["IPRED_5"] <= table["IPRED"]) and np.all(table["IPRED"] <= table["IPRED_95"])


def test_iwres_uses_the_proportional_sd_at_ipred(case, table):
    sigma = np.median(_posterior(case["fit"], "sigma_conc_prop"))
    quantified = table["CENS"] == 0
    expected = (table["DV"] - table["IPRED"]) / (sigma * table["IPRED"])
    np.testing.assert_allclose(table["IWRES"][quantified], expected[quantified], rtol=1e-9)
    assert table["IWRES"][~quantified].isna().all() and (~quantified).sum() > 0


def test_pde_from_counts_matches_the_normal_cdf():
    # replicates from N(0, 1): the PDE of value x estimates Phi(x) with MC sd <= 0.5 / sqrt(n)
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    n = 4000
    sims = rng.standard_normal((n, 5))
    x = np.array([-3.5, -1.0, 0.0, 1.5, 9.0])
    pde = pde_from_counts((sims < x).sum(axis=0), n, np.zeros(5, int), rng)
    assert np.all(np.abs(pde - norm.cdf(x)) < 4 * 0.5 / np.sqrt(n) + 1.0 / n)
    assert pde[-1] == (n + 0.5) / (n + 1)  # never exactly 1
    # censored below LLOQ = 0: imputed uniformly in (0, P(y < 0)) = (0, 0.5)
    cens = np.ones(2000, int)
    below = np.full(2000, n // 2)
    imputed = pde_from_counts(below, n, cens, rng)
    assert imputed.max() < 0.5 and abs(imputed.mean() - 0.25) < 4 * 0.5 / np.sqrt(12 * 2000)


def _cluster_z(values, clusters):
    """Mean of ``values`` and its standard error with observations of one subject correlated
    (cluster-robust: sum over subjects of the squared within-subject sums of deviations)."""
    m = values.mean()
    sums = pd.Series(values - m).groupby(np.asarray(clusters)).sum().to_numpy()
    return m, np.sqrt((sums**2).sum()) / len(values)


def test_npde_of_data_from_the_model_is_standard_normal(table):
    # For data from the fitted model each NPDE is N(0, 1); NPDEs of one subject are correlated
    # (shared random effects), so the Monte-Carlo error of their mean and of their mean square
    # is the cluster-robust one, with the 22 subjects as independent units. 3 standard errors.
    npde = table["NPDE"].to_numpy()
    mean, se = _cluster_z(npde, table["ID"])
    assert abs(mean) < 3 * se, (mean, se)
    second, se2 = _cluster_z(npde**2 - 1.0, table["ID"])
    assert abs(second) < 3 * se2, (second, se2)
    assert 0.0 < se < 0.25 and 0.0 < se2 < 0.6  # the bounds are informative
    # IPDE conditions on the subject's own data: never more dispersed than the population NPDE here
    assert table["INPDE"].std() < 1.05


def test_loaded_fit_and_the_simulated_posterior_predictive(case, table):
    f = case["fit"]
    loaded = Fit(f.tree, f.metadata)  # what load_fit returns: no population
    with pytest.raises(ValueError, match="population is None and the fit carries no PopulationModel"):
        predictions(loaded, None, case["dataset"])
    bare = Fit(f.tree.drop_nodes("posterior_predictive"), f.metadata)
    other = predictions(bare, case["population"], case["dataset"])
    for column in ("PRED", "IPRED", "IPRED_5", "IPRED_95", "IWRES", "NPDE"):
        np.testing.assert_array_equal(other[column], table[column])
    # same 200 draws, independent residual draws: each IPDE differs by MC error, sd <= 0.05
    q = table["CENS"] == 0
    diff = np.abs(other["IPDE"][q] - table["IPDE"][q])
    assert diff.mean() < 0.06 and diff.max() < 0.25


# --- shrinkage ------------------------------------------------------------------------------


def test_shrinkage_near_zero_for_rich_and_near_one_for_uninformative_data(case):
    f = case["fit"]
    everyone = shrinkage(f).set_index("parameter")
    rich = shrinkage(f, subjects=range(1, N_RICH + 1)).set_index("parameter")
    sparse = shrinkage(f, subjects=range(N_RICH + 1, N_RICH + N_SPARSE + 1)).set_index("parameter")
    for t in (everyone, rich, sparse):
        assert np.all(t["shrinkage"] <= 1.0)
        np.testing.assert_allclose(t.loc[["cl", "vc"], "omega"], [0.3, 0.25])
    # rich subjects: 7 samples at 10 % error give a posterior sd of z of about 0.2, i.e. shrinkage
    # of a few per cent; the realised z have sd 1 by construction
    assert np.all(np.abs(rich["shrinkage"]) < 0.2), rich
    # one sample at 0.25 h: d log C / d log CL = -(CL/V) t / 2, about -0.025, so no information on CL
    assert sparse.loc["cl", "shrinkage"] > 0.8, sparse
    assert rich.loc["cl", "shrinkage"] < everyone.loc["cl", "shrinkage"] < sparse.loc["cl", "shrinkage"]
    assert (everyone["n_subjects"] == N_RICH + N_SPARSE).all()
    # the same two groups seen through each subject's posterior sd of z: about 0.3 for the rich,
    # the prior's 1 for CL of the sparse
    assert np.all(rich["posterior_sd"] < 0.45), rich
    assert sparse.loc["cl", "posterior_sd"] > 0.85, sparse


def _from_dict(*args, **kwargs):
    # imported late: arviz_base imported before numpyro leaves numpyro half-initialised
    # (lazy_loader; numpyro.distributions.distribution goes missing)
    import arviz_base

    return arviz_base.from_dict(*args, **kwargs)


def _synthetic_fit(population, values, n_subjects, chains=1):
    """A Fit holding the given draws ([chains x N, ...], chain after chain) and the model description only."""
    tree = _from_dict({"posterior": {k: np.reshape(v, (chains, -1) + np.shape(v)[1:]) for k, v in values.items()}},
                                coords={"subject": np.arange(1, n_subjects + 1)},
                                dims={k: ["subject"] for k in values if k.startswith("eta_")})
    return Fit(tree, {"model": json.loads(json.dumps(population.describe()))})


@pytest.mark.parametrize("kind", ["correlated", "centered"])
def test_random_effects_agree_with_the_population_model(kind):
    # the deviations d = omega * (L eta) (or eta when centred) of PopulationModel._deviations
    rng = np.random.default_rng(1)
    n_draws, n_subjects = 7, 5
    structural = popkpd.OneCompartment()
    common = {"ka": LogNormal(1.0, 0.5)}
    if kind == "correlated":
        population = PopulationModel(structural, {"cl": Parameter(LogNormal(2.0, 1.0), HalfNormal(0.5)),
                                                  "vc": Parameter(LogNormal(10.0, 1.0), 0.4), **common},
                                     Proportional(HalfNormal(0.3)), correlation=LKJ(2.0))
        r = rng.uniform(-0.9, 0.9, n_draws)
        values = {"omega_cl": rng.uniform(0.1, 1.0, n_draws),
                  "corr_iiv": np.stack([np.array([[1.0, x], [x, 1.0]]) for x in r])}
    else:
        population = PopulationModel(structural, {"cl": Parameter(LogNormal(2.0, 1.0), HalfNormal(0.5)),
                                                  "vc": Parameter(LogNormal(10.0, 1.0), 0.4), **common},
                                     Proportional(HalfNormal(0.3)), centered=True)
        values = {"omega_cl": rng.uniform(0.1, 1.0, n_draws)}
    values.update({f"eta_{n}": rng.normal(size=(n_draws, n_subjects)) for n in ("cl", "vc")})
    effects = random_effects(_synthetic_fit(population, values, n_subjects))
    for i in range(n_draws):
        dev = population._deviations({k: v[i] for k, v in values.items()})
        omega = {"cl": values["omega_cl"][i], "vc": 0.4}
        for name in ("cl", "vc"):
            z, d = effects[name]
            np.testing.assert_allclose(d[i], dev[name], rtol=1e-12)
            np.testing.assert_allclose(z[i], dev[name] / omega[name], rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_ebe_mcse_is_the_monte_carlo_error_of_the_posterior_means(seed):
    # each subject's posterior of z: Normal(mu_i, 0.2^2), mu_i ~ Normal(0, 0.6^2); 4 chains x 500 draws.
    # Independent draws: the MCSE of the mean is 0.2 / sqrt(2000). Chains stuck apart (each chain of
    # each subject off by Normal(0, 0.4^2)): the pooled mean is off by 0.4 / sqrt(4) = 0.2 in rms,
    # the EBEs spread more and the shrinkage looks lower for the same posteriors.
    rng = np.random.default_rng(seed)
    chains, draws, n = 4, 500, 30
    population = PopulationModel(popkpd.OneCompartment(), {"cl": Parameter(LogNormal(2.0, 1.0), HalfNormal(0.5)),
                                                           "vc": Parameter(LogNormal(10.0, 1.0)),
                                                           "ka": Parameter(LogNormal(1.0, 0.5))},
                                 Proportional(HalfNormal(0.3)))
    mu = rng.normal(0.0, 0.6, n)
    noise = 0.2 * rng.normal(size=(chains, draws, n))
    offsets = rng.normal(0.0, 0.4, (chains, 1, n))
    draws_of = {"mixed": mu + noise, "stuck": mu + offsets + noise}
    tables = {}
    for kind, z in draws_of.items():
        values = {"omega_cl": np.full(chains * draws, 0.5), "eta_cl": z.reshape(chains * draws, n)}
        tables[kind] = shrinkage(_synthetic_fit(population, values, n, chains)).set_index("parameter").loc["cl"]
    mixed, stuck = tables["mixed"], tables["stuck"]
    assert mixed.ebe_mcse == pytest.approx(0.2 / np.sqrt(chains * draws), rel=0.1)
    # arviz's MCSE from the rank-normalised bulk ESS of 4 chains: 0.68-1.02 x 0.2 over seeds 0-39, and
    # 0.64-1.54 x the realised rms error of the pooled means (itself random: 30 subjects)
    assert 0.5 * 0.2 < stuck.ebe_mcse < 1.5 * 0.2
    realised = np.sqrt(np.mean((draws_of["stuck"].mean(axis=(0, 1)) - mu) ** 2))
    assert 0.4 * realised < stuck.ebe_mcse < 2.0 * realised
    assert stuck.shrinkage < mixed.shrinkage
    assert stuck.posterior_sd == pytest.approx(mixed.posterior_sd, rel=1e-9)  # within chains: the same draws


# --- VPC --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vpc_tables(case):
    args = (case["fit"], case["population"], case["dataset"])
    return vpc(*args, n_sim=200), vpc(*args, n_sim=200, prediction_corrected=True)


def test_vpc_of_data_from_the_model_covers(vpc_tables):
    # Each observed percentile falls in its simulated 90 % interval with probability >= 0.9 (the
    # intervals also carry parameter uncertainty). Cells share subjects, so they are not
    # independent; even if the 24 cells behaved like only 8 independent ones, P(fraction < 0.6)
    # = P(Binomial(8, 0.9) <= 4) < 0.01.
    for table in vpc_tables:
        assert len(table) >= 6
        assert vpc_coverage(table) >= 0.6, table
        for p in ("05", "50", "95"):  # NaN (below the LLOQ) compares False
            assert not (table[f"sim_p{p}_lo"] > table[f"sim_p{p}_med"]).any()
            assert not (table[f"sim_p{p}_med"] > table[f"sim_p{p}_hi"]).any()
    plain, corrected = vpc_tables
    assert not plain.attrs["prediction_corrected"] and corrected.attrs["prediction_corrected"]
    # the last bin (24 h) holds the censored samples: 5 of 12 are below the LLOQ there
    last = plain.iloc[-1]
    assert last["blq_obs"] == pytest.approx(5 / 12) and np.isnan(last["obs_p05"])
    assert 0.0 < last["blq_sim_med"] < 1.0 and (plain["blq_sim_lo"] <= plain["blq_sim_hi"]).all()


def test_vpc_table_observed_percentiles_and_a_misspecified_model(case, vpc_tables):
    ctx = Context(case["fit"], case["population"], case["dataset"], "test")
    obs = ctx.observations
    t, dv, cens, out = (obs[c].to_numpy() for c in ("TIME", "DV", "CENS", "output"))
    edges = {"conc": np.array([0.0, 1.5, 6.0, 24.0])}
    sims = ctx.replicates(200, seed=5, max_draws=200)
    lloq, uloq = ctx.limits()
    table = vpc_table(t, out, dv, cens, sims, lloq, uloq, edges)
    first = dv[t < 1.5]  # no censored values in the first bin: plain percentiles of DV
    np.testing.assert_allclose(table.loc[0, ["obs_p05", "obs_p50", "obs_p95"]].to_numpy(dtype=float),
                               np.quantile(first, [0.05, 0.5, 0.95]), rtol=1e-12)
    assert list(table["n_obs"]) == [int((t < 1.5).sum()), int(((t >= 1.5) & (t < 6)).sum()), int((t >= 6).sum())]
    assert vpc_coverage(table) >= 0.6
    # negative control: the same check on observations twice as high fails
    wrong = vpc_table(t, out, dv * 2.0, cens, sims, lloq, uloq, edges)
    assert vpc_coverage(wrong) < 0.5


def test_vpc_censoring_from_arrays():
    # 10 observations in one bin, 3 censored at LLOQ 1: the 5th percentile lies among them
    t = np.zeros(10)
    dv = np.array([1.0, 1.0, 1.0, 2, 3, 4, 5, 6, 7, 8])
    cens = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    out = np.array(["conc"] * 10)
    sims = np.tile(np.arange(10.0) * 0.1 + 0.5, (50, 1))  # values 0.5..1.4: five below the LLOQ
    lloq = np.ones(10)
    table = vpc_table(t, out, dv, cens, sims, lloq, np.full(10, np.inf), {"conc": np.array([0.0, 1.0])})
    row = table.iloc[0]
    # sorted: 3 censored, 2, 3, 4, ...: the median interpolates between 3 and 4
    assert np.isnan(row["obs_p05"]) and row["obs_p50"] == pytest.approx(3.5)
    assert row["blq_obs"] == 0.3 and row["blq_sim_med"] == 0.5
    assert np.isnan(row["sim_p05_med"]) and row["sim_p95_med"] == pytest.approx(np.quantile(np.arange(10) * 0.1 + 0.5, 0.95))


# --- plots and report -----------------------------------------------------------------------


def _is_png(path):
    with open(path, "rb") as handle:
        return handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_write_report_writes_every_file(case, tmp_path):
    paths = write_report(case["fit"], case["population"], case["dataset"], tmp_path / "report", n_sim=50)
    names = {p.name for p in paths}
    expected = {"predictions.csv", "vpc.csv", "pcvpc.csv", "shrinkage.csv", "parameters.csv", "gof.png", "gof_log.png",
                "npde.png", "vpc.png", "pcvpc.png", "eta_covariates.png", "trace.png", "summary.md",
                "individual_fits_01.png", "individual_fits_02.png"}
    assert expected <= names
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0
        if p.suffix == ".png":
            assert _is_png(p)
    text = (tmp_path / "report" / "summary.md").read_text()
    for heading in ("## Convergence", "## Parameters", "## Shrinkage", "## Residuals and predictive checks", "## Files"):
        assert heading in text
    assert "Laplace approximation" in text and "cl_pop" in text and "sigma_conc_prop" in text
    assert all(f"`{name}`" in text for name in names)
    params = pd.read_csv(tmp_path / "report" / "parameters.csv").set_index("parameter")
    assert params.loc["omega_cl", "cv_percent"] == pytest.approx(100 * np.sqrt(np.expm1(0.09)))
    assert params.loc["cl_pop", "q05"] < params.loc["cl_pop", "median"] < params.loc["cl_pop", "q95"]


def test_plots_log_pages_and_several_chains(case, table, vpc_tables, tmp_path):
    pages = plot_individual_fits(table[table["ID"] <= 5], tmp_path, per_page=2, log=True)
    assert [p.name for p in pages] == [f"individual_fits_0{i}.png" for i in (1, 2, 3)]
    assert _is_png(plot_vpc(vpc_tables[0], tmp_path / "vpc_log.png", log=True))
    # two chains of 100 draws from the one Laplace chain of 200
    f = case["fit"]
    posterior = {k: np.asarray(v.values).reshape((2, 100) + v.shape[2:]) for k, v in f.tree["posterior"].data_vars.items()}
    two = Fit(_from_dict({"posterior": posterior}), f.metadata)
    assert _is_png(plot_trace(two, tmp_path / "trace2.png"))


# --- bad input --------------------------------------------------------------------------------


def test_a_dataset_that_does_not_match_the_fit(case):
    f, pop, frame = case["fit"], case["population"], case["frame"]
    model = popkpd.OneCompartment()
    fewer = popkpd.read_nonmem(frame.drop(index=frame.index[frame.EVID == 0][0]), model, covariates=["WT"])
    with pytest.raises(ValueError, match=r"made on 94 observations of 22 subjects, but the dataset has 93 observations"):
        predictions(f, pop, fewer)
    changed = frame.copy()
    changed.loc[2, "DV"] += 1.0
    with pytest.raises(ValueError, match=r"observation 1 \(row 2, ID 1, TIME 1\) has DV"):
        vpc(f, pop, popkpd.read_nonmem(changed, model, covariates=["WT"]))
    heavier = frame.assign(WT=np.where(frame.ID == 3, 120.0, frame.WT))
    with pytest.raises(ValueError, match="hash .* differs"):
        write_report(f, pop, popkpd.read_nonmem(heavier, model, covariates=["WT"]), "unused")
    with pytest.raises(TypeError, match="expected the Dataset"):
        predictions(f, pop, frame)


def test_wrong_fit_population_and_options(case, table, tmp_path):
    f, pop, ds = case["fit"], case["population"], case["dataset"]
    with pytest.raises(TypeError, match="expected a Fit"):
        predictions(pop, pop, ds)
    with pytest.raises(TypeError, match="expected the PopulationModel"):
        predictions(f, "model", ds)
    other = PopulationModel(pop.structural, {**pop.parameters, "ka": LogNormal(2.0, 0.5)}, pop.error)
    with pytest.raises(ValueError, match=r"differs from the one the fit was made with: model.parameters.ka.typical.median is 2.0, the fit has 1.0"):
        predictions(f, other, ds)
    tree = f.tree.copy()
    tree["posterior"] = tree["posterior"].to_dataset().drop_vars("ka_pop")
    stripped = Fit(tree, f.metadata, population=pop)
    assert "ka_pop" in f.tree["posterior"].data_vars
    with pytest.raises(ValueError, match=r"no draws of \['ka_pop'\]"):
        predictions(stripped, pop, ds)
    with pytest.raises(ValueError, match=r"vpc\(n_sim=0\): expected an integer >= 1"):
        vpc(f, pop, ds, n_sim=0)
    with pytest.raises(ValueError, match="strictly increasing"):
        vpc(f, pop, ds, bins=[5.0, 1.0])
    with pytest.raises(ValueError, match=r"TIME 24, output 'conc'\) lies outside the bin edges \[0, 12\]"):
        vpc(f, pop, ds, bins=[0.0, 12.0])
    with pytest.raises(ValueError, match=r"predictions\(max_draws=0\)"):
        predictions(f, pop, ds, max_draws=0)
    ctx = Context(f, pop, ds, "vpc")
    ctx._pred = np.where(np.arange(len(table)) == 3, 0.0, table["PRED"].to_numpy())
    with pytest.raises(ValueError, match=r"PRED is 0 at row 4 \(ID 1, TIME 4\); prediction correction"):
        vpc(ctx, prediction_corrected=True)
    with pytest.raises(ValueError, match=r"IDs \[99\] are not subjects of the fit"):
        shrinkage(f, subjects=[1, 99])
    with pytest.raises(ValueError, match="received 1 subject"):
        shrinkage(f, subjects=[1])
    with pytest.raises(ValueError, match=r"plot_vpc: the table has no columns \['time', 'obs_p05'"):
        plot_vpc(table, tmp_path / "x.png")
    with pytest.raises(TypeError, match="expected the DataFrame"):
        plot_gof(table.to_numpy(), tmp_path / "x.png")


def test_failed_solves_are_left_out_and_counted(case, monkeypatch):
    """Draws and replicates whose solve fails (non-finite values) are dropped from IPRED, the VPC
    and the NPDE, and counted; the other draws give exactly the numbers of a run without failures;
    when every draw fails the error says so."""
    args = (case["fit"], case["population"], case["dataset"])
    ctx = Context(*args, "test")
    clean = ctx.replicates(20, seed=4, max_draws=50)
    clean_pred = ctx.simulate(ctx.draws(20), np.random.default_rng([0, 4]))[0]
    original = Context._solve

    def failing(self, values, rng):
        pred, y = original(self, values, rng)
        if len(pred) > 7:  # not the single PRED draw
            pred, y = pred.copy(), y.copy()
            pred[[0, 7]] = np.nan
            y[[0, 7]] = np.nan
        return pred, y

    monkeypatch.setattr(Context, "_solve", failing)
    ctx = Context(*args, "test")
    kept = ctx.replicates(20, seed=4, max_draws=50)
    assert kept.shape == (18, clean.shape[1])  # 2 of 20 left out
    np.testing.assert_array_equal(kept, np.delete(clean, [0, 7], axis=0))
    table = vpc(*args, n_sim=20, seed=4, max_draws=50)
    assert table.attrs["n_sim"] == 18 and table.attrs["failed_replicates"] == 2
    pr = predictions(*args, max_draws=20, n_sim=20, seed=0)
    assert pr.attrs["failed_draws"] == 2 and pr.attrs["failed_replicates"] == 2
    np.testing.assert_allclose(pr["IPRED"], np.median(np.delete(clean_pred, [0, 7], axis=0), axis=0), rtol=1e-12)

    def all_failing(self, values, rng):
        pred, y = original(self, values, rng)
        return np.full_like(pred, np.nan), y

    monkeypatch.setattr(Context, "_solve", all_failing)
    with pytest.raises(ValueError, match="All 20 simulated draws failed"):
        Context(*args, "test").simulate(ctx.draws(20), np.random.default_rng(0))


def _expected_shrinkage_reference(frame, z_cl, z_vc, sigma):
    """The module docstring's formulas by hand for the one-compartment oral model with
    proportional error, Normal(f, sigma f): per observation the information on (z_cl, z_vc) is
    g g' (1 / sigma**2 + 2) with g = d log f / dz, from the closed form's derivatives in k = CL/V."""
    v_kk, alone, info = [], [], []
    for i, rows in frame[frame.EVID == 0].groupby("ID", sort=True):
        wt = rows.WT.iloc[0]
        cl = TRUE["cl"] * (wt / 70.0) ** TRUE["beta"] * np.exp(TRUE["omega_cl"] * z_cl[i - 1])
        vc = TRUE["vc"] * np.exp(TRUE["omega_vc"] * z_vc[i - 1])
        k, ka = cl / vc, TRUE["ka"]
        fisher = np.zeros((2, 2))
        for t in rows.TIME[rows.CENS == 0]:
            dk = 1.0 / (ka - k) - t * np.exp(-k * t) / (np.exp(-k * t) - np.exp(-ka * t))  # d log f / dk
            g = np.array([k * dk * TRUE["omega_cl"], (-1.0 - k * dk) * TRUE["omega_vc"]])
            fisher += np.outer(g, g) * (1.0 / sigma**2 + 2.0)
        v = np.linalg.inv(fisher + np.eye(2))
        v_kk.append(np.diag(v))
        alone.append(1.0 / (np.diag(fisher) + 1.0))
        info.append(np.diag(fisher))
    v_kk, alone = np.array(v_kk), np.array(alone)
    return {"posterior_sd": np.sqrt(v_kk).mean(0), "shrinkage": 1.0 - np.sqrt((1.0 - v_kk).mean(0)),
            "shrinkage_others_known": 1.0 - np.sqrt((1.0 - alone).mean(0)), "information": np.mean(info, 0)}


@pytest.mark.parametrize("method", ["closed_form", "ode"])
def test_expected_shrinkage_is_the_closed_form_bayesian_information(method):
    frame = simulate_table()
    frame.loc[(frame.ID == 3) & (frame.TIME == 24.0), "CENS"] = 1  # left out of the information
    dataset = popkpd.read_nonmem(frame, popkpd.OneCompartment(), covariates=["WT"])
    pop = population_model()
    if method == "ode":
        pop = PopulationModel(pop.structural, pop.parameters, pop.error, method="ode",
                              ode_options={"rtol": 1e-10, "atol": 1e-12})
    values = {"cl_pop": TRUE["cl"], "beta_cl_WT": TRUE["beta"], "vc_pop": TRUE["vc"], "ka_pop": TRUE["ka"],
              "sigma_conc_prop": 0.2}
    rng = np.random.default_rng(5)
    z_cl, z_vc = rng.normal(size=N_RICH + N_SPARSE), rng.normal(size=N_RICH + N_SPARSE)
    got = expected_shrinkage(pop, dataset, values, {"cl": TRUE["omega_cl"] * z_cl, "vc": TRUE["omega_vc"] * z_vc})
    want = _expected_shrinkage_reference(frame, z_cl, z_vc, 0.2)
    assert list(got["parameter"]) == ["cl", "vc"]
    np.testing.assert_allclose(got["omega"], [TRUE["omega_cl"], TRUE["omega_vc"]])
    for column, reference in want.items():
        np.testing.assert_allclose(got[column], reference, rtol=1e-6, err_msg=column)
    # at typical subjects (no deviations) the numbers differ: the information depends on where it is taken
    typical = expected_shrinkage(pop, dataset, values)
    assert not np.allclose(typical["information"], got["information"], rtol=1e-3)
    # the data of the sparse subjects (one sample at 0.25 h) say almost nothing about CL
    sparse = popkpd.read_nonmem(frame[frame.ID > N_RICH], popkpd.OneCompartment(), covariates=["WT"])
    assert expected_shrinkage(pop, sparse, values).set_index("parameter").loc["cl", "shrinkage"] > 0.9


def test_expected_shrinkage_bad_input():
    dataset = popkpd.read_nonmem(simulate_table(), popkpd.OneCompartment(), covariates=["WT"])
    pop = population_model()
    values = {"cl_pop": 2.0, "beta_cl_WT": 0.75, "vc_pop": 10.0, "ka_pop": 1.2, "sigma_conc_prop": 0.2}
    with pytest.raises(ValueError, match=r"values has no \['sigma_conc_prop'\]"):
        expected_shrinkage(pop, dataset, {k: v for k, v in values.items() if k != "sigma_conc_prop"})
    with pytest.raises(ValueError, match="deviations has 'ka', which has no random effect"):
        expected_shrinkage(pop, dataset, values, {"ka": np.zeros(N_RICH + N_SPARSE)})
    with pytest.raises(ValueError, match=r"deviations\['cl'\] has shape \(3,\); expected \(22,\)"):
        expected_shrinkage(pop, dataset, values, {"cl": np.zeros(3)})
    far = np.zeros(N_RICH + N_SPARSE)
    far[[1, 4]] = 800.0  # CL = exp(800) typical: no finite prediction
    with pytest.raises(FloatingPointError, match=r"the information on \['cl', 'vc'\] of subjects \[2, 5\] is not finite"):
        expected_shrinkage(pop, dataset, values, {"cl": far})
