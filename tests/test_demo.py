"""``popkpd demo`` (popkpd/_demo.py): the full story, and the draws it builds (fit + priors).

The demo itself compiles the full BCMA model twice and fits an ODE model (2-3 minutes with
``--quick`` on the 2-core CPU), so it is a slow test; the draw combination it relies on
(``fit_and_prior_draws``) is checked fast with a synthetic posterior.
"""

import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import popkpd
from popkpd._optimise import Patient
from popkpd._optimise.draws import estimated_parameters, fit_and_prior_draws
from popkpd._structural.units import SBCMA_MW_KDA

SUB = popkpd.BCMAModel(layers=0, absorption=False)  # cl, vc, q, vp
FULL = popkpd.BCMAModel(layers=1, absorption=False)  # + kd_s, k_s, k_x, s0
TYPICAL = dict(cl=0.5, vc=4.0, q=0.04, vp=1.3, kd_s=0.5, k_s=0.55, k_x=0.043, s0=8.0)
PRIORS = {name: popkpd.LogNormal(value, 0.3) for name, value in TYPICAL.items()}


def _sub_fit(n_chain=2, n_draw=100, seed=0):
    population = popkpd.PopulationModel(
        SUB,
        {"cl": popkpd.Parameter(popkpd.LogNormal(0.5, 1.0), iiv=popkpd.HalfNormal(0.5)),
         "vc": popkpd.LogNormal(4.0, 1.0), "q": popkpd.Fixed(0.04), "vp": popkpd.Fixed(1.3)},
        popkpd.LogNormalError(popkpd.HalfNormal(1.0)),
    )
    rng = np.random.default_rng(seed)
    data = {"cl_pop": 2.0 * np.exp(0.1 * rng.standard_normal((n_chain, n_draw))),  # far from the prior (0.5)
            "vc_pop": np.full((n_chain, n_draw), 7.0),
            "omega_cl": np.full((n_chain, n_draw), 0.2),
            "sigma_conc": np.full((n_chain, n_draw), 0.3)}
    tree = xr.DataTree.from_dict({"posterior": xr.Dataset({k: (("chain", "draw"), v) for k, v in data.items()})})
    return popkpd.Fit(tree, {}, population), population, data


def test_fit_and_prior_draws_take_estimated_parameters_from_the_fit_and_the_rest_from_priors():
    fit, population, data = _sub_fit()
    assert estimated_parameters(population) == ("cl", "vc")
    n_draws, n_patients = 300, 4
    d = fit_and_prior_draws(fit, population, FULL, TYPICAL, PRIORS, iiv={"k_x": 0.5, "cl": 9.0},
                            n_draws=n_draws, n_patients=n_patients, patient=Patient(weight=70.0, sbcma_ng_ml=600.0),
                            seed=3)
    assert set(d.values) == set(FULL.parameters) and d.size == n_draws * n_patients
    # fitted: vc is the posterior's constant 7 (not the prior's 4); cl centres are posterior cl_pop
    # draws (log-mean of 4 patients with omega 0.2: within 4 standard errors of a posterior value)
    np.testing.assert_allclose(d.values["vc"], 7.0)
    centres = np.log(d.values["cl"].reshape(n_draws, n_patients)).mean(axis=1)
    distance = np.abs(centres[:, None] - np.log(data["cl_pop"].ravel())[None, :]).min(axis=1)
    assert np.all(distance < 4 * 0.2 / math.sqrt(n_patients))
    # the iiv given for a fitted parameter (cl: 9.0) is ignored: the spread within a draw is omega 0.2
    within = np.log(d.values["cl"].reshape(n_draws, n_patients)) - centres[:, None]
    assert np.std(within) * math.sqrt(n_patients / (n_patients - 1)) < 0.3
    # fixed in the fit (q, vp) and absent from it (kd_s, k_s): drawn from the prior, one value per
    # draw; the sd of log over 300 draws is 0.3 +- 4 * 0.3 / sqrt(600)
    for name in ("q", "vp", "kd_s", "k_s"):
        per_draw = np.log(d.values[name].reshape(n_draws, n_patients))
        np.testing.assert_allclose(per_draw, per_draw[:, :1] * np.ones((1, n_patients)))
        assert abs(np.std(per_draw[:, 0], ddof=1) - 0.3) < 4 * 0.3 / math.sqrt(2 * n_draws)
        assert abs(np.mean(per_draw[:, 0]) - math.log(TYPICAL[name])) < 4 * 0.3 / math.sqrt(n_draws)
    # k_x: prior typical value plus the stated IIV 0.5 within a draw
    log_kx = np.log(d.values["k_x"].reshape(n_draws, n_patients))
    within_kx = np.std(log_kx - log_kx.mean(axis=1, keepdims=True), ddof=1) * math.sqrt(n_patients / (n_patients - 1))
    assert abs(within_kx - 0.5) < 4 * 0.5 / math.sqrt(2 * n_draws * (n_patients - 1))
    # the patient's sBCMA fixes s0 (a parameter the fit does not have), weight fixes the weights
    np.testing.assert_allclose(d.values["s0"], 600.0 / (SBCMA_MW_KDA * 1000.0) * 1000.0)
    np.testing.assert_allclose(d.weights, 70.0)
    assert "fit for ['cl', 'vc']" in d.source


def test_fit_and_prior_draws_refuse_a_fit_of_parameters_the_model_lacks():
    fit, population, _ = _sub_fit(n_draw=5)
    other = popkpd.OneCompartment()  # ka, cl, vc: no q, vp
    fit2 = popkpd.Fit(fit.tree, {}, popkpd.PopulationModel(
        popkpd.TwoCompartment(absorption=False),
        {"cl": popkpd.Parameter(popkpd.LogNormal(0.5, 1.0)), "vc": popkpd.Fixed(4.0), "q": popkpd.LogNormal(0.04, 1.0),
         "vp": popkpd.Fixed(1.3)}, popkpd.LogNormalError(popkpd.HalfNormal(1.0))))
    with pytest.raises(ValueError, match=r"the fit estimates \['q'\], which OneCompartment does not have"):
        fit_and_prior_draws(fit2, fit2.population, other, dict(ka=1.0, cl=0.5, vc=4.0), None, n_draws=2, n_patients=1)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    from popkpd._demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, quick=True)


@pytest.mark.slow
def test_quick_demo_writes_consistent_outputs(quick_demo):
    from popkpd._demo import QUICK, ESTIMATED_IIV

    out, result = quick_demo
    # 1. the trial: a NONMEM-style CSV with every DVID, the right number of patients, true values
    trial = pd.read_csv(out / "trial" / "majestec1_virtual.csv")
    assert trial.ID.nunique() == QUICK["n_patients"]
    assert set(trial.loc[trial.EVID == 0, "DVID"]) == {1, 2, 3, 4, 5}
    assert trial.TIME.max() <= QUICK["horizon"]
    truth = pd.read_csv(out / "trial" / "majestec1_virtual_patients.csv")
    assert len(truth) == QUICK["n_patients"]
    # 2. the fit: saved, readable, reported; the typical values of the PK and baseline sBCMA are
    # near the truth (the median over the trial's patients) within a factor 3, a wide interval
    # (8 patients, a misspecified L0-L1 model of an L0-L5 trial)
    loaded = popkpd.load_fit(out / "fit" / "fit.nc")
    assert "cl_pop" in loaded.tree["posterior"].data_vars
    assert (out / "fit" / "summary.md").is_file() and (out / "fit" / "gof.png").is_file()
    recovery = pd.read_csv(out / "fit" / "recovery.csv").set_index("parameter")
    for name in ESTIMATED_IIV:
        r = recovery.loc[name]
        assert r["q05"] <= r["fitted_median"] <= r["q95"]
        assert abs(math.log(r["fitted_median"] / float(np.median(truth[name])))) < math.log(3.0), name
        assert r["true_median"] == pytest.approx(float(np.median(truth[name])))
    # 3. the dose query: files written, the table ranks feasible candidates first and by the
    # objective (maximised), the calibration helper is not ranked, the approved regimen is
    dose = result["dose"]
    for name in ("ranked.csv", "trajectories.png", "pareto.png"):
        assert (out / "dose" / name).is_file()
    table = pd.read_csv(out / "dose" / "ranked.csv")
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    assert "approved" in set(table.candidate) and not table.candidate.str.startswith("calibration").any()
    feasible = table["feasible"].to_numpy()
    assert not np.any(~feasible[:-1] & feasible[1:])  # no infeasible row above a feasible one
    objective = table.loc[feasible, dose.objective].to_numpy()
    assert np.all(np.diff(objective) <= 1e-12)
    assert len(table) == len(QUICK["step_up"]) * len(QUICK["maintenance"]) + 1
