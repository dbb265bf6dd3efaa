"""Inference: MAP/Laplace, NUTS, the Fit object (groups, metadata), save/load, convergence report.

One small NUTS fit (6 subjects, 2 chains) is shared by the tests of a module-scoped fixture; the
Laplace machinery is checked against a conjugate Gaussian model whose posterior is known exactly.
"""

import json
import os
import subprocess
import sys
import textwrap

import arviz_base
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.stats as st
import xarray as xr

import popkpd
from popkpd._events import pad_events
from popkpd._inference import check_convergence, default_chain_method, fit, load_fit
from popkpd._inference import io as fit_io
from popkpd._inference.fit import FlatPosterior, find_map
from popkpd._statistical import (
    Additive,
    Combined,
    Fixed,
    HalfNormal,
    LogNormal,
    Normal,
    Parameter,
    PopulationModel,
    Power,
    Proportional,
)
from popkpd._structural.base import AbstractStructuralModel

IV = popkpd.OneCompartment(absorption=False)
TIMES = [0.5, 2.0, 6.0, 12.0, 24.0, 36.0]
LLOQ = 0.3


def simulate_table(n_subjects, seed, cl=2.0, vc=20.0, omega_cl=0.3, add=0.05, prop=0.1):
    """A NONMEM-style table: IV bolus 100 at t=0 (CMT 1), samples at TIMES, BLQ as CENS=1, DV=LLOQ."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_subjects):
        wt = rng.uniform(50, 90)
        cl_i = cl * (wt / 70) ** 0.75 * np.exp(omega_cl * rng.normal())
        rows.append(dict(ID=101 + i, TIME=0.0, DV=0.0, AMT=100.0, EVID=1, CMT=1, MDV=1, CENS=0, WT=wt))
        for t in TIMES:
            f = 100 / vc * np.exp(-cl_i / vc * t)
            y = f + np.sqrt(add**2 + (prop * f) ** 2) * rng.normal()
            cens = int(y < LLOQ)
            rows.append(dict(ID=101 + i, TIME=t, DV=LLOQ if cens else y, AMT=0.0, EVID=0, CMT=1, MDV=0, CENS=cens, WT=wt))
    return pd.DataFrame(rows)


def population(method="closed_form", ode_options=None):
    return PopulationModel(
        IV,
        {"cl": Parameter(LogNormal(2.0, 0.5), iiv=HalfNormal(0.5), covariates=[Power("WT", 70.0, Fixed(0.75))]),
         "vc": LogNormal(20.0, 0.5)},
        Combined(HalfNormal(0.2), HalfNormal(0.3)),
        method=method,
        ode_options=ode_options,
    )


def make_dataset():
    table = simulate_table(6, seed=2)
    assert table.CENS.sum() >= 1  # the M3 path is exercised
    return popkpd.read_nonmem(table, IV, covariates=["WT"])


@pytest.fixture(scope="module")
def dataset():
    return make_dataset()


@pytest.fixture(scope="module")
def nuts_fit(dataset):
    return fit(population(), dataset, chains=2, warmup=150, draws=100, seed=3, progress_bar=False)


def individual_predictions(result):
    """Predictions [chain, draw, observation] recomputed with numpy from the posterior draws."""
    post, const = result.tree["posterior"], result.tree["constant_data"]
    subject = np.searchsorted(post["cl"].subject.values, const["obs_id"].values)
    cl = post["cl"].values[:, :, subject]
    vc = post["vc_pop"].values[:, :, None]
    t = const["obs_time"].values
    return 100 / vc * np.exp(-cl / vc * t)


# ------------------------------------------------------------------------------------------------
# NUTS fit


def test_fit_groups_shapes_and_metadata(nuts_fit, dataset):
    tree = nuts_fit.tree
    for group in ("posterior", "sample_stats", "log_likelihood", "posterior_predictive", "observed_data",
                  "constant_data", "map"):
        assert group in tree.children, group
    n_obs = dataset.n_observations
    assert tree["posterior"]["eta_cl"].shape == (2, 100, 6)
    assert list(tree["posterior"]["cl"].subject.values) == list(dataset.ids)
    assert tree["log_likelihood"]["obs"].shape == (2, 100, n_obs)
    assert tree["posterior_predictive"]["obs"].shape == (2, 100, n_obs)
    obs = dataset.observation_frame()
    np.testing.assert_array_equal(tree["observed_data"]["obs"].values, obs.DV.values)
    np.testing.assert_array_equal(tree["constant_data"]["obs_id"].values, obs.ID.values)
    np.testing.assert_array_equal(tree["constant_data"]["obs_time"].values, obs.TIME.values)
    np.testing.assert_array_equal(tree["constant_data"]["obs_cens"].values, obs.cens.values)
    assert set(tree["sample_stats"].data_vars) >= {"diverging", "energy", "lp", "n_steps", "tree_depth", "step_size"}
    meta = nuts_fit.metadata
    assert meta["data_hash"] == dataset.hash
    assert meta["model"] == population().describe()
    assert meta["sampler"] == {"method": "nuts", "seed": 3, "draws": 100, "chains": 2, "warmup": 150,
                               "target_accept": 0.8, "max_tree_depth": 10, "dense_mass": False,
                               "chain_method": "vectorized", "init": "laplace"}
    assert {"popkpd", "jax", "numpyro", "diffrax", "arviz", "python"} <= set(meta["packages"])
    assert {"compile_s", "map_s", "mcmc_s", "predictive_s", "total_s"} <= set(meta["timing_s"])
    assert meta["n_subjects"] == 6 and meta["n_observations"] == n_obs
    assert meta["map"]["converged"]


def test_stored_log_likelihood_matches_scipy(nuts_fit):
    """The pointwise log-likelihood (for LOO) recomputed from the draws with scipy."""
    tree = nuts_fit.tree
    f = individual_predictions(nuts_fit)
    post = tree["posterior"]
    sd = np.sqrt(post["sigma_conc_add"].values[:, :, None] ** 2 + (post["sigma_conc_prop"].values[:, :, None] * f) ** 2)
    y = tree["observed_data"]["obs"].values
    cens = tree["constant_data"]["obs_cens"].values
    ref = np.where(cens == 1, st.norm.logcdf((y - f) / sd), st.norm.logpdf(y, f, sd))
    np.testing.assert_allclose(tree["log_likelihood"]["obs"].values, ref, atol=1e-8)


def test_posterior_predictive_follows_the_error_model(nuts_fit):
    """Replicates minus the draw's prediction, standardised by its sd: mean 0, variance 1."""
    tree = nuts_fit.tree
    f = individual_predictions(nuts_fit)
    post = tree["posterior"]
    sd = np.sqrt(post["sigma_conc_add"].values[:, :, None] ** 2 + (post["sigma_conc_prop"].values[:, :, None] * f) ** 2)
    z = (tree["posterior_predictive"]["obs"].values - f) / sd
    n = z.size
    assert abs(z.mean()) < 4 / np.sqrt(n)
    assert abs(z.var() - 1.0) < 4 * np.sqrt(2 / n)


def test_summary_and_convergence_report(nuts_fit):
    summary = nuts_fit.summary()
    assert list(summary.index) == ["cl_pop", "omega_cl", "vc_pop", "sigma_conc_add", "sigma_conc_prop"]
    assert {"mean", "sd", "ess_bulk", "ess_tail", "r_hat"} <= set(summary.columns)
    conv = nuts_fit.convergence()
    assert list(conv.table.index) == list(summary.index)
    np.testing.assert_allclose(conv.table["r_hat"].values, summary["r_hat"].values.astype(float), rtol=1e-12)
    assert conv.n_chains == 2 and conv.n_draws == 200
    assert conv.n_divergent == int(nuts_fit.tree["sample_stats"]["diverging"].values.sum())
    assert conv.ebfmi.shape == (2,)
    assert np.isfinite(float(conv.loo.elpd))
    assert str(conv).startswith("Convergence: 2 chain(s) x 100 draws")


def test_too_few_draws_for_loo_are_explained(nuts_fit):
    """20 draws in all: PSIS's Pareto tail fit would have 4 tail draws (arviz raises); the report
    says why LOO is missing instead of failing."""
    from popkpd._inference.convergence import check_convergence

    short = nuts_fit.tree.isel(draw=slice(0, 10), missing_dims="ignore")
    conv = check_convergence(short)
    assert conv.n_draws == 20 and conv.loo is None
    assert any("PSIS-LOO not computed: 20 draws in all" in w for w in conv.warnings), conv.warnings


def test_save_and_load_reproduce_the_fit_exactly(nuts_fit, tmp_path):
    path = nuts_fit.save(tmp_path / "fit.nc")
    loaded = load_fit(path)
    pd.testing.assert_frame_equal(nuts_fit.summary(), loaded.summary())
    for node in nuts_fit.tree.subtree:
        xr.testing.assert_identical(node.to_dataset(inherit=False), loaded.tree[node.path].to_dataset(inherit=False))
    assert loaded.metadata == nuts_fit.metadata
    assert loaded.population is None
    assert os.listdir(tmp_path) == ["fit.nc"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's private 0600


def test_interrupted_save_leaves_the_old_file_intact(nuts_fit, tmp_path, monkeypatch):
    path = tmp_path / "fit.nc"
    nuts_fit.save(path)
    before = path.read_bytes()

    def failing_write(tree, target, fmt):
        with open(target, "wb") as handle:
            handle.write(b"CDF\x01 partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(fit_io, "_write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        nuts_fit.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["fit.nc"]  # no temporary file left behind
    monkeypatch.undo()
    pd.testing.assert_frame_equal(load_fit(path).summary(), nuts_fit.summary())


# ------------------------------------------------------------------------------------------------
# MAP / Laplace against an exact Gaussian posterior


class Line(AbstractStructuralModel):
    """y = a + b t (no states of interest; the prediction is given by ``line``)."""

    states = ("unused",)
    parameters = ("a", "b")
    outputs = ("y",)

    def vector_field(self, t, y, p):
        return jnp.zeros(1)

    def output(self, t, y, p):
        return jnp.stack([p["a"] + p["b"] * t])


def line(structural, params, events):
    return params["a"][:, None] + params["b"][:, None] * events.obs_time


def line_problem():
    t = np.array([0.0, 1.0, 2.0, 3.0, 5.0])
    y = np.array([1.1, 1.9, 3.2, 3.8, 6.1])
    doses = [dict(time=np.zeros(0), amt=np.zeros(0), cmt=np.zeros(0, int), rate=np.zeros(0), ss=np.zeros(0, int),
                  ii=np.zeros(0), reset=np.zeros(0, bool), row=np.zeros(0, int))]
    obs = [dict(time=t, dv=y, output=np.zeros(5, int), cens=np.zeros(5, int), limit=np.full(5, np.nan), row=np.arange(5))]
    events = pad_events(doses, obs, [(np.zeros(1), np.zeros((1, 0)))], 0)
    sigma, m0, s0 = 0.4, np.array([0.0, 0.5]), np.array([2.0, 1.0])
    pm = PopulationModel(Line(), {"a": Normal(m0[0], s0[0]), "b": Normal(m0[1], s0[1])}, Additive(Fixed(sigma)), method=line)
    X = np.stack([np.ones_like(t), t], axis=1)
    precision = np.diag(1 / s0**2) + X.T @ X / sigma**2
    cov = np.linalg.inv(precision)
    mean = cov @ (m0 / s0**2 + X.T @ y / sigma**2)
    return pm, events, mean, cov


def test_laplace_is_exact_for_a_gaussian_posterior():
    pm, events, mean, cov = line_problem()
    laplace, timing = find_map(FlatPosterior(pm, events))
    assert laplace.converged
    mode = laplace.constrained_mode()
    np.testing.assert_allclose([mode["a_pop"], mode["b_pop"]], mean, rtol=1e-6)
    # flat vector order follows the site names (a_pop, b_pop); identity transforms (real support)
    np.testing.assert_allclose(laplace.covariance, cov, rtol=1e-6)
    assert timing["compile_s"] > 0


def test_laplace_on_the_expm_path_uses_differences_of_the_gradient(dataset):
    """solver="expm" has reverse-mode derivatives only (its squaring loop): the Laplace Hessian
    comes from central differences of the gradient, and matches the closed form's exact one."""
    names = dataset.covariate_names
    exact, _ = find_map(FlatPosterior(population(), dataset.events, names))
    approx, _ = find_map(FlatPosterior(population("ode", {"solver": "expm"}), dataset.events, names))
    assert (exact.hessian_method, approx.hessian_method) == ("exact", "finite differences")
    assert approx.converged
    np.testing.assert_allclose(approx.mode, exact.mode, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(approx.covariance, exact.covariance, rtol=1e-4, atol=1e-8)


def test_laplace_fit_draws_and_reproducibility():
    pm, events, mean, cov = line_problem()
    result = fit(pm, events, method="laplace", draws=2000, seed=5)
    post = result.tree["posterior"]
    draws = np.stack([post["a_pop"].values[0], post["b_pop"].values[0]], axis=1)
    se = np.sqrt(np.diag(cov) / len(draws))
    assert np.all(np.abs(draws.mean(0) - mean) < 4 * se)
    np.testing.assert_allclose(np.cov(draws.T), cov, rtol=0.15)
    # q is exact here, so log p - log q is the same constant at every draw
    stats = result.tree["sample_stats"]
    assert np.ptp(stats["lp"].values - stats["log_q"].values) < 1e-8
    conv = result.convergence()
    assert "not from MCMC" in conv.warnings[0]
    assert np.isfinite(float(conv.loo.elpd))
    assert result.metadata["sampler"] == {"method": "laplace", "seed": 5, "draws": 2000, "chains": 1}
    again = fit(pm, events, method="laplace", draws=2000, seed=5)
    xr.testing.assert_equal(again.tree["posterior"].to_dataset(), result.tree["posterior"].to_dataset())


def test_nuts_single_chain_from_prior_medians_matches_the_exact_posterior():
    """One chain, no MAP: the posterior means agree with the exact Gaussian posterior within 4 MCSE."""
    pm, events, mean, cov = line_problem()
    result = fit(pm, events, chains=1, warmup=200, draws=400, init="prior_median", seed=7, progress_bar=False)
    assert "map" not in result.tree.children and result.metadata["sampler"]["chain_method"] == "sequential"
    summary = result.summary(var_names=["a_pop", "b_pop"])
    z = (summary["mean"].values - mean) / summary["mcse_mean"].values
    assert np.all(np.abs(z) < 4), z
    assert result.tree["sample_stats"]["diverging"].shape == (1, 400)


# ------------------------------------------------------------------------------------------------
# chains, arguments, errors


def test_default_chain_method():
    assert default_chain_method(population(), 1) == "sequential"
    assert default_chain_method(population("ode"), 4) == "vectorized"
    # the test process sees one CPU device
    assert default_chain_method(population(), 4) == "vectorized"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="advi"), "expected 'nuts' \\(default\\) or 'laplace'"),
        (dict(chains=0), r"fit\(chains=0\): expected an integer >= 1"),
        (dict(draws=2.5), r"fit\(draws=2.5\): expected an integer >= 1"),
        (dict(warmup=-1), r"fit\(warmup=-1\): expected an integer >= 0"),
        (dict(target_accept=1.0), "strictly between 0 and 1"),
        (dict(init="random"), "expected 'laplace' \\(default\\), 'map', 'pathfinder' or 'prior_median'"),
        (dict(chain_method="threads"), "expected 'parallel', 'vectorized', 'sequential' or None"),
        (dict(chain_method="parallel", chains=2), r"JAX sees 1 device\(s\); expected at least 2.*set_host_device_count\(2\)"),
        (dict(covariate_names=("AGE",)), "the dataset already names its covariates"),
    ],
)
def test_fit_argument_errors(dataset, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit(population(), dataset, progress_bar=False, **kwargs)


def test_fit_refuses_parallel_chains_with_the_ode_path(dataset):
    with pytest.raises(ValueError, match="parallel chains fail on a diffrax solve"):
        fit(population("ode"), dataset, chains=2, chain_method="parallel")


def test_fit_type_errors(dataset):
    with pytest.raises(TypeError, match="expected a PopulationModel"):
        fit(IV, dataset)
    with pytest.raises(TypeError, match=r"received DataFrame; expected a Dataset"):
        fit(population(), dataset.frame)


def test_fit_explains_an_impossible_start():
    """A zero prediction (sample before the dose) with a proportional error: name the record."""
    table = simulate_table(2, seed=4)
    table.loc[table.EVID == 1, "TIME"] = 1.0
    table = table[(table.EVID == 1) | (table.TIME > 0.5)]
    early = pd.DataFrame([dict(ID=102, TIME=0.5, DV=1.0, AMT=0.0, EVID=0, CMT=1, MDV=0, CENS=0, WT=70.0)])
    table = pd.concat([table[table.ID == 101], early, table[table.ID == 102]], ignore_index=True)
    data = popkpd.read_nonmem(table, IV, covariates=["WT"])
    pm = PopulationModel(IV, {"cl": LogNormal(2.0, 0.5), "vc": LogNormal(20.0, 0.5)}, Proportional(HalfNormal(0.3)), method="closed_form")
    row = int(np.flatnonzero((table.ID == 102).values & (table.TIME == 0.5).values)[0])
    with pytest.raises(ValueError, match=rf"cannot start: the likelihood of the observation at row {row} \(ID 102, TIME 0.5, DV 1.0\)"):
        fit(pm, data, method="laplace")


# ------------------------------------------------------------------------------------------------
# convergence messages on synthetic draws


def synthetic_tree(rng, shift=0.0, divergences=0, sticky_energy=False):
    chains, draws = 4, 500
    x = rng.normal(size=(chains, draws))
    x[0] += shift
    energy = rng.normal(size=(chains, draws))
    if sticky_energy:  # a random walk: E-BFMI far below 0.3
        energy = np.cumsum(rng.normal(scale=0.05, size=(chains, draws)), axis=1)
    diverging = np.zeros((chains, draws), bool)
    diverging.ravel()[:divergences] = True
    return arviz_base.from_dict({
        "posterior": {"cl_pop": x, "omega_cl": np.abs(rng.normal(size=(chains, draws)))},
        "sample_stats": {"diverging": diverging, "energy": energy},
    })


def test_convergence_messages():
    rng = np.random.default_rng(0)
    good = check_convergence(synthetic_tree(rng))
    assert good.ok, good.warnings
    assert "No problems detected." in str(good)
    bad = check_convergence(synthetic_tree(rng, shift=3.0, divergences=7, sticky_energy=True))
    text = "\n".join(bad.warnings)
    assert "R-hat above 1.01 for cl_pop" in text and "the chains disagree" in text
    assert "7 of 2000 draws ended in a divergent transition" in text and "target_accept" in text
    assert "E-BFMI below 0.3 in chain(s) [0, 1, 2, 3]" in text
    assert "Effective sample size below 400" in text
    assert bad.n_divergent == 7 and not bad.ok


def test_load_and_save_errors(tmp_path, nuts_fit):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_fit(tmp_path / "missing.nc")
    (tmp_path / "text.nc").write_text("hello")
    with pytest.raises(ValueError, match="not a NetCDF file"):
        load_fit(tmp_path / "text.nc")
    xr.Dataset({"a": ("x", [1.0])}).to_netcdf(tmp_path / "other.nc", engine="scipy")
    with pytest.raises(ValueError, match="without popkpd's layout"):
        load_fit(tmp_path / "other.nc")
    with pytest.raises(ValueError, match="ending in .nc"):
        nuts_fit.save(tmp_path / "fit.zarr")
    with pytest.raises(ValueError, match="expected one of"):
        nuts_fit.save(tmp_path / "fit.nc", format="hdf5")
    if not fit_io._has_h5py():
        with pytest.raises(ValueError, match="h5netcdf needs h5py"):
            nuts_fit.save(tmp_path / "fit.nc", format="netcdf4")


# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_parameter_recovery():
    """Simulate 24 subjects from known values; each population parameter lies within 3 posterior
    sds of its true value (z-score against the posterior, not a single lucky seed)."""
    truth = {"cl_pop": 2.0, "vc_pop": 20.0, "omega_cl": 0.3, "sigma_conc_add": 0.05, "sigma_conc_prop": 0.1}
    data = popkpd.read_nonmem(simulate_table(24, seed=11), IV, covariates=["WT"])
    result = fit(population(), data, chains=4, warmup=500, draws=500, seed=1, progress_bar=False)
    conv = result.convergence()
    assert conv.n_divergent == 0
    post = result.tree["posterior"]
    for name, value in truth.items():
        draws = post[name].values.ravel()
        z = (draws.mean() - value) / draws.std()
        assert abs(z) < 3, (name, draws.mean(), draws.std(), value)


@pytest.mark.slow
def test_parallel_chains_on_host_devices(tmp_path):
    """chain_method defaults to 'parallel' for the closed form when JAX sees enough devices; the
    device count must be set before JAX initialises, hence a fresh process."""
    script = textwrap.dedent(
        """
        import numpyro
        numpyro.set_host_device_count(2)
        import sys
        sys.path.insert(0, %r)
        import popkpd
        from test_inference import make_dataset, population, fit
        data = make_dataset()
        result = fit(population(), data, chains=2, warmup=50, draws=20, progress_bar=False)
        assert result.metadata["sampler"]["chain_method"] == "parallel", result.metadata["sampler"]
        assert result.tree["posterior"]["cl_pop"].shape == (2, 20)
        print("ok")
        """
    ) % os.path.dirname(__file__)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_merge_chains_concatenates_single_chain_fits_in_order():
    """Two one-chain fits (separate processes in practice) merge into one two-chain fit whose draws
    are exactly theirs; diagnostics then see two chains. Mismatched fits are refused."""
    pm, events, mean, cov = line_problem()
    a, b = (fit(pm, events, chains=1, warmup=100, draws=200, init="prior_median", seed=s, progress_bar=False)
            for s in (1, 2))
    merged = popkpd.merge_chains([a, b])
    post = merged.tree["posterior"]
    assert post.sizes["chain"] == 2 and list(post.chain.values) == [0, 1]
    np.testing.assert_array_equal(post["a_pop"].values[0], a.tree["posterior"]["a_pop"].values[0])
    np.testing.assert_array_equal(post["a_pop"].values[1], b.tree["posterior"]["a_pop"].values[0])
    for group in ("sample_stats", "log_likelihood", "posterior_predictive"):
        assert merged.tree[group].sizes["chain"] == 2
    assert merged.metadata["sampler"]["chains"] == 2 and merged.metadata["sampler"]["seed"] == [1, 2]
    assert len(merged.metadata["timing_s"]["mcmc_s"]) == 2
    summary = merged.summary(var_names=["a_pop", "b_pop"])
    z = (summary["mean"].values - mean) / summary["mcse_mean"].values
    assert np.all(np.abs(z) < 4), z
    with pytest.raises(ValueError, match="expected a different seed per fit"):
        popkpd.merge_chains([a, a])
    other = fit(pm, events, chains=1, warmup=100, draws=150, init="prior_median", seed=3, progress_bar=False)
    with pytest.raises(ValueError, match="fit 1 has draws=150"):
        popkpd.merge_chains([a, other])
    renamed = popkpd.Fit(b.tree.copy(), json.loads(json.dumps(b.metadata)), population=b.population)
    renamed.metadata["sampler"]["seed"] = 5
    renamed.tree["posterior"] = xr.DataTree(dataset=b.tree["posterior"].to_dataset().rename_vars({"a_pop": "z_a"}))
    with pytest.raises(ValueError, match=r"fit 1 and fit 0 differ in the posterior variables \['a_pop', 'z_a'\]"):
        popkpd.merge_chains([a, renamed])  # e.g. centred effects sampled before and after z_<param>
    laplace = fit(pm, events, method="laplace", draws=10, seed=4)
    with pytest.raises(ValueError, match="Laplace draws are not chains"):
        popkpd.merge_chains([a, laplace])


@pytest.mark.parametrize("chains", [1, 2])
def test_continued_chains_are_one_longer_run(chains, tmp_path):
    """``continue_fit`` runs the chains on from their saved state (step size, mass matrix, key):
    20 draws saved, loaded and continued by 10 are exactly the 30 draws of one run, in both file
    formats; metadata counts the draws and records the continuation."""
    pm, events, _, _ = line_problem()
    settings = dict(chains=chains, warmup=100, init="prior_median", seed=1, dense_mass=True, progress_bar=False)
    whole = fit(pm, events, draws=30, **settings)
    first = fit(pm, events, draws=20, **settings)
    for fmt in ("netcdf4", "netcdf3-flat"):
        saved = load_fit(first.save(tmp_path / f"{fmt}.nc", format=fmt))
        more = popkpd.continue_fit(saved, pm, events, draws=10, progress_bar=False)
        for group in ("posterior", "sample_stats", "log_likelihood"):
            for name, value in whole.tree[group].data_vars.items():
                np.testing.assert_array_equal(more.tree[group][name].values, value.values, err_msg=f"{group}/{name}")
        assert more.tree["posterior_predictive"].sizes["draw"] == 30
        assert list(more.tree["posterior"].draw.values) == list(range(30))
        assert more.metadata["sampler"]["draws"] == 30 and [c["draws"] for c in more.metadata["continued"]] == [10]
    again = popkpd.continue_fit(more, pm, events, draws=5, progress_bar=False)
    assert again.metadata["sampler"]["draws"] == 35 and len(again.metadata["continued"]) == 2


@pytest.mark.parametrize("chains,chain_method", [(2, None), (2, "sequential"), (1, None)])
def test_checkpoints_hold_the_draws_so_far_and_a_stopped_run_goes_on(chains, chain_method):
    """``checkpoint_every``: the fit so far after every piece; the pieces (after the first, one
    compiled scan of the kernel's transitions) are one run's draws, and a run stopped after a
    checkpoint, continued from it, ends where the whole run ends."""
    pm, events, _, _ = line_problem()
    settings = dict(chains=chains, chain_method=chain_method, warmup=100, init="prior_median", seed=1,
                    dense_mass=True, progress_bar=False)
    whole = fit(pm, events, draws=30, **settings)
    saved = []
    pieces = fit(pm, events, draws=30, checkpoint_every=7, on_checkpoint=saved.append, **settings)
    assert [f.metadata["sampler"]["draws"] for f in saved] == [7, 14, 21, 28, 30]
    resumed = popkpd.continue_fit(saved[1], pm, events, draws=16, checkpoint_every=10, on_checkpoint=saved.append,
                                  progress_bar=False)
    assert [f.metadata["sampler"]["draws"] for f in saved[5:]] == [24, 30]
    assert pieces is saved[4] and resumed is saved[-1]  # the last checkpoint's fit, not built again
    for result in (pieces, saved[4], resumed, saved[-1]):
        for group in ("posterior", "sample_stats", "log_likelihood"):
            for name, value in whole.tree[group].data_vars.items():
                np.testing.assert_array_equal(result.tree[group][name].values, value.values, err_msg=f"{group}/{name}")
    assert "continued" not in pieces.metadata and pieces.metadata["timing_s"]["mcmc_s"] > 0
    with pytest.raises(ValueError, match="checkpoint_every=5 without a callable on_checkpoint"):
        fit(pm, events, draws=30, checkpoint_every=5, **settings)


def test_merged_chains_continue_as_each_chain_alone():
    """The saved states merge with the chains (``merge_chains``): the merged fit's chains, run on
    together, give what each chain gives run on alone."""
    pm, events, _, _ = line_problem()
    a, b = (fit(pm, events, chains=1, warmup=100, draws=20, init="prior_median", seed=s, progress_bar=False)
            for s in (1, 2))
    merged = popkpd.continue_fit(popkpd.merge_chains([a, b]), pm, events, draws=10, progress_bar=False)
    for k, one in enumerate((a, b)):
        alone = popkpd.continue_fit(one, pm, events, draws=10, progress_bar=False)
        np.testing.assert_array_equal(merged.tree["posterior"]["a_pop"].values[k],
                                      alone.tree["posterior"]["a_pop"].values[0])


def test_continue_fit_errors(dataset, nuts_fit):
    pm, events, _, _ = line_problem()
    laplace = fit(pm, events, method="laplace", draws=10, seed=4)
    with pytest.raises(ValueError, match="method='laplace'.* has no stored NUTS state"):
        popkpd.continue_fit(laplace, pm, events, draws=10)
    with pytest.raises(ValueError, match=r"draws=0\): expected an integer >= 1"):
        popkpd.continue_fit(nuts_fit, population(), dataset, draws=0)
    other = popkpd.read_nonmem(simulate_table(6, seed=9), IV, covariates=["WT"])
    with pytest.raises(ValueError, match="the data's hash .* differs from the previous fit's"):
        popkpd.continue_fit(nuts_fit, population(), other, draws=5)
    with pytest.raises(ValueError, match="the population model differs from the previous fit's"):
        popkpd.continue_fit(nuts_fit, population(method="ode"), dataset, draws=5)
    with pytest.raises(TypeError, match="expected a Fit"):
        popkpd.continue_fit("fit.nc", population(), dataset, draws=5)


def test_iiv_shares_sample_the_same_posterior(dataset):
    """``iiv_shares`` changes the coordinates, not the model: NUTS in (total, shares) and in the
    omegas themselves agree on the posterior means of the omegas and typical values within 4 Monte
    Carlo standard errors, and the fit records the omegas, reports them and checks the group's sites."""
    def model(**kw):
        return PopulationModel(
            IV, {"cl": Parameter(LogNormal(2.0, 0.5), iiv=HalfNormal(0.5), covariates=[Power("WT", 70.0, Fixed(0.75))]),
                 "vc": Parameter(LogNormal(20.0, 0.5), iiv=HalfNormal(0.3))},
            Combined(HalfNormal(0.2), HalfNormal(0.3)), **kw)

    shared = model(iiv_shares={"pk": ("cl", "vc")})
    fits = [fit(pm, dataset, chains=2, warmup=300, draws=600, seed=11, progress_bar=False) for pm in (model(), shared)]
    names = ["cl_pop", "vc_pop", "omega_cl", "omega_vc"]
    one, two = (f.summary(var_names=names) for f in fits)
    z = (one["mean"] - two["mean"]) / np.hypot(one["mcse_mean"], two["mcse_mean"])
    assert np.all(np.abs(z.values) < 4), z
    conv = fits[1].convergence(shared.population_sites(), loo=False)
    assert {"omega_cl", "iiv_total_pk"} <= {name.split("[")[0] for name in conv.table.index}
    table = popkpd.parameter_table(fits[1], shared)
    assert {"omega_cl", "omega_vc"} <= set(table.parameter)
