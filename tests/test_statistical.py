"""Statistical layer: priors, covariate effects, residual errors / BLQ, the NumPyro model.

References are scipy.stats log densities and plain numpy re-implementations of the formulas in the
docstrings (independent of the code under test). Tolerance: atol 1e-8 on log densities (float64).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
import scipy.stats as st

import popkpd
from popkpd._events import pad_events
from popkpd._statistical import (
    LKJ,
    Additive,
    Categorical,
    Combined,
    Exponential,
    Fixed,
    HalfNormal,
    Linear,
    LogitNormal,
    LogNormal,
    LogNormalError,
    Normal,
    ObservationDistribution,
    Parameter,
    PopulationModel,
    Power,
    Proportional,
)
from popkpd._statistical.priors import as_prior
from popkpd._structural.base import AbstractStructuralModel

ATOL = 1e-8


# ------------------------------------------------------------------------------------------------
# helpers: a tiny IV-bolus prediction written here, and event builders


def iv_bolus(structural, params, events):
    """One compartment, IV boluses into the central state: sum of amt/vc * exp(-cl/vc (t - td))."""
    t = events.obs_time[:, :, None]
    td = events.dose_time[:, None, :]
    k = (params["cl"] / params["vc"])[:, None, None]
    after = (t >= td) & events.dose_mask[:, None, :]
    c = jnp.where(after, events.dose_amt[:, None, :] * jnp.exp(-k * jnp.where(after, t - td, 0.0)), 0.0)
    return c.sum(-1) / params["vc"][:, None]


def iv_bolus_np(cl, vc, dose_times, dose_amts, t):
    c = np.zeros_like(t)
    for td, amt in zip(dose_times, dose_amts):
        c = c + np.where(t >= td, amt * np.exp(-cl / vc * np.clip(t - td, 0, None)), 0.0)
    return c / vc


def make_events(subjects, n_cov):
    """subjects: list of dicts with dose_times, dose_amts, times, dv, cens, limit, output, cov."""
    doses, obs, covs = [], [], []
    for s in subjects:
        nd, no = len(s["dose_times"]), len(s["times"])
        doses.append(dict(
            time=np.asarray(s["dose_times"], float), amt=np.asarray(s["dose_amts"], float),
            cmt=np.zeros(nd, int), rate=np.zeros(nd), ss=np.zeros(nd, int), ii=np.zeros(nd),
            reset=np.zeros(nd, bool), row=np.arange(nd),
        ))
        obs.append(dict(
            time=np.asarray(s["times"], float), dv=np.asarray(s["dv"], float),
            output=np.asarray(s.get("output", np.zeros(no)), int),
            cens=np.asarray(s.get("cens", np.zeros(no)), int),
            limit=np.asarray(s.get("limit", np.full(no, np.nan)), float),
            row=nd + np.arange(no),
        ))
        cov_t = np.asarray(s.get("cov_time", [0.0]), float)
        covs.append((cov_t, np.asarray(s["cov"], float).reshape(len(cov_t), n_cov)))
    return pad_events(doses, obs, covs, n_cov)


SUBJECTS = [
    dict(dose_times=[0.0], dose_amts=[100.0], times=[0.5, 2.0, 6.0], dv=[4.1, 3.0, 0.5],
         cens=[0, 0, 1], cov=[[62.0, 1.0]]),
    dict(dose_times=[0.0, 12.0], dose_amts=[100.0, 50.0], times=[1.0, 4.0, 13.0, 20.0],
         dv=[3.9, 2.2, 3.1, 1.7], cov=[[80.0, 0.0]]),
    dict(dose_times=[0.0], dose_amts=[80.0], times=[1.0, 3.0], dv=[2.5, 2.6], cov=[[71.0, 1.0]]),
]
COVS = ("WT", "SEX")
IV = popkpd.OneCompartment(absorption=False)


def log_density(model, args, kwargs, values):
    """numpyro's log_density under one jit (eager evaluation compiles every operation): returns
    the joint log density and the trace values."""

    def run(values):
        lp, trace = numpyro.infer.util.log_density(model, args, kwargs, values)
        return lp, {k: v["value"] for k, v in trace.items() if v["type"] in ("sample", "deterministic")}

    lp, values = jax.jit(run)(values)
    return lp, {k: {"value": v} for k, v in values.items()}


def subject_arrays(events, s):
    m = np.asarray(events.obs_mask[s])
    dm = np.asarray(events.dose_mask[s])
    return (np.asarray(events.dose_time[s])[dm], np.asarray(events.dose_amt[s])[dm],
            np.asarray(events.obs_time[s])[m], np.asarray(events.obs_dv[s])[m],
            np.asarray(events.obs_cens[s])[m], np.asarray(events.obs_output[s])[m])


def additive_loglik(events, cl, vc, sd):
    """Reference log-likelihood, summed over subjects: one-compartment IV bolus (per-subject cl, vc,
    or one value for all), additive normal error of sd ``sd``, censored rows (cens 1) by M3."""
    n = events.obs_mask.shape[0]
    cl, vc = np.broadcast_to(cl, (n,)), np.broadcast_to(vc, (n,))
    total = 0.0
    for s in range(n):
        td, amt, t, dv, cens, _ = subject_arrays(events, s)
        f = iv_bolus_np(cl[s], vc[s], td, amt, t)
        total += np.where(cens == 1, st.norm.logcdf((dv - f) / sd), st.norm.logpdf(dv, f, sd)).sum()
    return total

# ------------------------------------------------------------------------------------------------
# priors


@pytest.mark.parametrize(
    "prior, ref, xs",
    [
        (LogNormal(2.0, 0.5), lambda x: st.lognorm.logpdf(x, s=0.5, scale=2.0), [0.3, 2.0, 7.5]),
        (LogitNormal(0.7, 0.8), lambda x: st.norm.logpdf(np.log(x / (1 - x)), np.log(0.7 / 0.3), 0.8) - np.log(x * (1 - x)), [0.05, 0.5, 0.97]),
        (Normal(0.75, 0.2), lambda x: st.norm.logpdf(x, 0.75, 0.2), [-1.0, 0.75, 2.0]),
        (HalfNormal(0.4), lambda x: st.halfnorm.logpdf(x, scale=0.4), [0.01, 0.4, 2.0]),
    ],
)
def test_prior_log_density_matches_scipy(prior, ref, xs):
    xs = np.asarray(xs)
    np.testing.assert_allclose(np.asarray(prior.distribution().log_prob(jnp.asarray(xs))), ref(xs), atol=1e-10)


def test_prior_init_values_are_medians():
    assert LogNormal(3.0, 1.0).init_value() == 3.0
    assert LogitNormal(0.2, 1.0).init_value() == 0.2
    np.testing.assert_allclose(HalfNormal(0.5).init_value(), st.halfnorm.median(scale=0.5), rtol=1e-12)
    assert Fixed(1.5).init_value() == 1.5


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: LogNormal(-1.0, 0.5), "median on the natural scale"),
        (lambda: LogNormal(2.0, 0.0), r"sd=0.0\): expected a finite number > 0"),
        (lambda: LogitNormal(1.5, 1.0), "strictly between 0 and 1"),
        (lambda: HalfNormal(-0.1), "expected a finite number > 0"),
        (lambda: Normal(float("nan"), 1.0), "expected a finite number"),
        (lambda: Fixed(float("inf")), "expected a finite number"),
        (lambda: LKJ(0.0), "concentration"),
    ],
)
def test_prior_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_as_prior_rejects_strings():
    with pytest.raises(TypeError, match="expected a prior"):
        as_prior("2.0", "Parameter typical value")
    assert as_prior(2, "x") == Fixed(2.0)


# ------------------------------------------------------------------------------------------------
# covariate effects


def test_covariate_effect_functions():
    x = np.array([40.0, 70.0, 95.0])
    np.testing.assert_allclose(Power("WT", 70.0, Normal(0.75, 0.1)).factor(x, 0.75), (x / 70) ** 0.75, rtol=1e-14)
    np.testing.assert_allclose(Linear("WT", 70.0, Normal(0, 0.01)).factor(x, 0.01), 1 + 0.01 * (x - 70), rtol=1e-14)
    np.testing.assert_allclose(Exponential("WT", 70.0, Normal(0, 0.01)).factor(x, -0.02), np.exp(-0.02 * (x - 70)), rtol=1e-14)
    sex = np.array([0.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(Categorical("SEX", LogNormal(1, 0.5), equals=1).factor(sex, 0.8), [1, 0.8, 0.8, 1])
    score = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(Categorical("ECOG", LogNormal(1, 0.5), below=2).factor(score, 1.3), [1.3, 1, 1])
    np.testing.assert_allclose(Categorical("ECOG", LogNormal(1, 0.5), above=2).factor(score, 1.3), [1, 1, 1.3])
    assert Power("WT", 70.0, 0.75).prior == Fixed(0.75)
    assert Power("WT", 70.0, Fixed(0.75)).site_name("cl") == "beta_cl_WT"
    assert Categorical("SEX", Fixed(1.2), equals=1, label="male").site_name("vc") == "beta_vc_male"


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: Categorical("SEX", LogNormal(1, 0.5)), "exactly one of equals=, below= or above="),
        (lambda: Categorical("SEX", LogNormal(1, 0.5), equals=1, below=2), "exactly one of"),
        (lambda: Categorical("SEX", Normal(0, 1), equals=1), "positive factor"),
        (lambda: Power("WT", 0.0, Normal(0.75, 0.1)), "expected a reference > 0"),
        (lambda: Linear("WT", float("nan"), Normal(0, 1)), "finite number in the covariate's unit"),
    ],
)
def test_covariate_effect_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_covariate_value_errors_name_the_subject():
    ids = np.array([101, 102, 103])
    with pytest.raises(ValueError, match=r"ID 102 has WT=-3.0; expected values > 0"):
        Power("WT", 70.0, 0.75).check_values(np.array([60.0, -3.0, 70.0]), ids, "cl")
    with pytest.raises(ValueError, match=r"'AGE' \(used on 'cl'\) is missing or not finite for ID 103"):
        Linear("AGE", 50.0, Normal(0, 0.1)).check_values(np.array([60.0, 30.0, np.nan]), ids, "cl")


# ------------------------------------------------------------------------------------------------
# residual errors and the observation likelihood


def test_residual_loc_scale_conventions():
    f = jnp.array([0.5, 2.0, 10.0])
    sig = {"sigma_conc_add": 0.3, "sigma_conc_prop": 0.2, "sigma_conc": 0.25}
    loc, scale = Combined(HalfNormal(1.0), HalfNormal(0.5)).loc_scale(f, sig, "conc")
    np.testing.assert_allclose(np.asarray(scale) ** 2, 0.3**2 + (0.2 * np.asarray(f)) ** 2, rtol=1e-14)
    np.testing.assert_allclose(loc, f)
    np.testing.assert_allclose(Additive(HalfNormal(1.0)).loc_scale(f, sig, "conc")[1], [0.3] * 3)
    np.testing.assert_allclose(Proportional().loc_scale(-f, sig, "conc")[1], 0.2 * np.asarray(f))
    loc, scale = LogNormalError().loc_scale(f, sig, "conc")
    np.testing.assert_allclose(loc, np.log(np.asarray(f)), rtol=1e-14)
    assert Combined(HalfNormal(1.0)).priors("pd") == {"sigma_pd_add": HalfNormal(1.0), "sigma_pd_prop": HalfNormal(0.5)}
    assert list(LogNormalError().priors("conc")) == ["sigma_conc"]


def test_residual_prior_must_be_positive():
    with pytest.raises(ValueError, match=r"Additive\(sigma=.*a standard deviation needs a prior on \(0, inf\)"):
        Additive(Normal(0.0, 1.0))


def test_observation_log_prob_matches_scipy():
    f, sd, y = 2.0, 0.4, 2.5
    d = ObservationDistribution(jnp.array(f), jnp.array(sd))
    np.testing.assert_allclose(d.log_prob(y), st.norm.logpdf(y, f, sd), atol=ATOL)
    # log-normal: density of y (Jacobian included)
    d = ObservationDistribution(jnp.log(f), sd, log_scale=True)
    np.testing.assert_allclose(d.log_prob(y), st.lognorm.logpdf(y, s=sd, scale=f), atol=ATOL)
    # M3: below LLOQ and above ULOQ
    lloq = 1.1
    d = ObservationDistribution(jnp.array(f), sd, cens=1)
    np.testing.assert_allclose(d.log_prob(lloq), st.norm.logcdf((lloq - f) / sd), atol=ATOL)
    d = ObservationDistribution(jnp.array(f), sd, cens=-1)
    np.testing.assert_allclose(d.log_prob(lloq), st.norm.logsf((lloq - f) / sd), atol=ATOL)
    d = ObservationDistribution(jnp.log(f), sd, cens=1, log_scale=True)
    np.testing.assert_allclose(d.log_prob(lloq), st.norm.logcdf((np.log(lloq) - np.log(f)) / sd), atol=ATOL)
    # far in the tails (log Phi of -20 and of +20)
    d = ObservationDistribution(jnp.array(f), sd, cens=1)
    np.testing.assert_allclose(d.log_prob(f - 20 * sd), st.norm.logcdf(-20.0), rtol=1e-10)
    d = ObservationDistribution(jnp.array(f), sd, cens=-1)
    np.testing.assert_allclose(d.log_prob(f + 20 * sd), st.norm.logsf(20.0), rtol=1e-10)


@pytest.mark.parametrize("lo, hi", [(-0.5, 0.7), (-9.0, -8.0), (8.0, 9.0), (-3.0, 5.0)])
def test_interval_censoring_matches_scipy(lo, hi):
    """M4-style intervals (LIMIT given), including both tails, against direct scipy differences."""
    ref = np.log(st.norm.sf(lo) - st.norm.sf(hi)) if lo > 0 else np.log(st.norm.cdf(hi) - st.norm.cdf(lo))
    f, sd = 1.0, 0.5
    below = ObservationDistribution(jnp.array(f), sd, cens=1, limit=f + lo * sd)  # (LIMIT, LLOQ)
    np.testing.assert_allclose(below.log_prob(f + hi * sd), ref, rtol=1e-9)
    above = ObservationDistribution(jnp.array(f), sd, cens=-1, limit=f + hi * sd)  # (ULOQ, LIMIT)
    np.testing.assert_allclose(above.log_prob(f + lo * sd), ref, rtol=1e-9)


def test_observation_gradients_are_finite_in_the_tails():
    """jnp.where does not hide NaN gradients of unused branches: all branches must stay finite."""
    z = jnp.array([-40.0, -12.0, 0.0, 12.0, 40.0])
    cens = jnp.array([0, 1, -1, 1, -1])

    def total(loc, scale, cens, limit, log_scale):
        y = jnp.where(log_scale, 2.0, 1.0 + z * 0.3)
        return ObservationDistribution(loc, scale, cens, limit, log_scale).log_prob(y).sum()

    grad = jax.jit(jax.grad(total, argnums=(0, 1)))
    for c in (jnp.zeros(5, int), cens):
        for limit in (jnp.full(5, jnp.nan), jnp.array([jnp.nan, -5.0, 30.0, -50.0, 80.0])):
            for log_scale in (jnp.zeros(5, bool), jnp.ones(5, bool)):
                g = grad(jnp.full(5, 1.0), jnp.full(5, 0.3), c, limit, log_scale)
                assert all(np.all(np.isfinite(np.asarray(a))) for a in g)


# ------------------------------------------------------------------------------------------------
# the NumPyro model


def base_model(**kw):
    parameters = {
        "cl": Parameter(LogNormal(2.0, 0.5), iiv=HalfNormal(0.4),
                        covariates=[Power("WT", 70.0, Normal(0.75, 0.2)), Categorical("SEX", LogNormal(1.0, 0.3), equals=1)]),
        "vc": Parameter(Fixed(20.0)),
    }
    parameters.update(kw.pop("parameters", {}))
    error = kw.pop("error", Combined(HalfNormal(0.5), HalfNormal(0.3)))
    return PopulationModel(IV, parameters, error, method=iv_bolus, **kw)


def test_log_density_equals_scipy_sum():
    events = make_events(SUBJECTS, 2)
    pm = base_model()
    values = {
        "cl_pop": 1.7, "beta_cl_WT": 0.8, "beta_cl_SEX": 0.85, "omega_cl": 0.35,
        "sigma_conc_add": 0.2, "sigma_conc_prop": 0.15, "eta_cl": jnp.array([0.3, -1.1, 0.6]),
    }
    lp, trace = log_density(pm.model, (events,), {"covariate_names": COVS}, values)
    ref = (st.lognorm.logpdf(1.7, s=0.5, scale=2.0) + st.norm.logpdf(0.8, 0.75, 0.2)
           + st.lognorm.logpdf(0.85, s=0.3, scale=1.0) + st.halfnorm.logpdf(0.35, scale=0.4)
           + st.halfnorm.logpdf(0.2, scale=0.5) + st.halfnorm.logpdf(0.15, scale=0.3)
           + st.norm.logpdf([0.3, -1.1, 0.6]).sum())
    for s, subj in enumerate(SUBJECTS):
        wt, sex = subj["cov"][0]
        cl = 1.7 * (wt / 70) ** 0.8 * (0.85 if sex == 1 else 1.0) * np.exp(0.35 * float(values["eta_cl"][s]))
        np.testing.assert_allclose(trace["cl"]["value"][s], cl, rtol=1e-13)
        td, amt, t, dv, cens, _ = subject_arrays(events, s)
        f = iv_bolus_np(cl, 20.0, td, amt, t)
        sd = np.sqrt(0.2**2 + (0.15 * f) ** 2)
        ref += np.where(cens == 1, st.norm.logcdf((dv - f) / sd), st.norm.logpdf(dv, f, sd)).sum()
    np.testing.assert_allclose(float(lp), ref, atol=ATOL)
    assert "vc" not in trace and "vc_pop" not in trace  # fixed, not varying: no site


def test_pointwise_log_likelihood_for_loo():
    events = make_events(SUBJECTS, 2)
    pm = base_model(error=LogNormalError(HalfNormal(0.5)))
    values = {"cl_pop": 2.2, "beta_cl_WT": 0.7, "beta_cl_SEX": 1.1, "omega_cl": 0.2, "sigma_conc": 0.3,
              "eta_cl": jnp.array([0.1, 0.2, -0.4])}
    samples = {k: jnp.asarray(v)[None] for k, v in values.items()}
    ll = jax.jit(lambda s: numpyro.infer.log_likelihood(pm.model, s, events, covariate_names=COVS)["obs"])(samples)
    ll = np.asarray(ll[0])
    assert ll.shape == events.obs_dv.shape
    mask = np.asarray(events.obs_mask)
    assert np.all(ll[~mask] == 0.0)  # padding contributes nothing
    for s, subj in enumerate(SUBJECTS):
        wt, sex = subj["cov"][0]
        cl = 2.2 * (wt / 70) ** 0.7 * (1.1 if sex == 1 else 1.0) * np.exp(0.2 * float(values["eta_cl"][s]))
        td, amt, t, dv, cens, _ = subject_arrays(events, s)
        f = iv_bolus_np(cl, 20.0, td, amt, t)
        ref = np.where(cens == 1, st.norm.logcdf((np.log(dv) - np.log(f)) / 0.3), st.lognorm.logpdf(dv, s=0.3, scale=f))
        np.testing.assert_allclose(ll[s][mask[s]], ref, atol=ATOL)


def test_correlated_iiv_with_lkj():
    events = make_events(SUBJECTS, 2)
    pm = PopulationModel(
        IV,
        {"cl": Parameter(LogNormal(2.0, 0.5), iiv=HalfNormal(0.4)), "vc": Parameter(LogNormal(20.0, 0.5), iiv=HalfNormal(0.3))},
        Additive(HalfNormal(1.0)), correlation=LKJ(2.0), method=iv_bolus,
    )
    r = 0.45
    eta_cl, eta_vc = np.array([0.3, -1.1, 0.6]), np.array([-0.2, 0.4, 1.3])
    values = {"cl_pop": 2.5, "vc_pop": 18.0, "omega_cl": 0.3, "omega_vc": 0.25, "sigma_conc_add": 0.4,
              "corr_iiv": jnp.array([[1.0, r], [r, 1.0]]), "eta_cl": jnp.asarray(eta_cl), "eta_vc": jnp.asarray(eta_vc)}
    lp, trace = log_density(pm.model, (events,), {"covariate_names": COVS}, values)
    # individual parameters: d = omega * (L @ eta), L the Cholesky factor of corr_iiv
    cl = 2.5 * np.exp(0.3 * eta_cl)
    vc = 18.0 * np.exp(0.25 * (r * eta_cl + np.sqrt(1 - r**2) * eta_vc))
    np.testing.assert_allclose(trace["cl"]["value"], cl, rtol=1e-13)
    np.testing.assert_allclose(trace["vc"]["value"], vc, rtol=1e-13)
    # LKJ(2) in dimension 2: (r + 1) / 2 ~ Beta(2, 2)
    ref = (st.lognorm.logpdf(2.5, s=0.5, scale=2.0) + st.lognorm.logpdf(18.0, s=0.5, scale=20.0)
           + st.halfnorm.logpdf(0.3, scale=0.4) + st.halfnorm.logpdf(0.25, scale=0.3) + st.halfnorm.logpdf(0.4, scale=1.0)
           + st.beta.logpdf((r + 1) / 2, 2.0, 2.0) - np.log(2.0)
           + st.norm.logpdf(eta_cl).sum() + st.norm.logpdf(eta_vc).sum())
    ref += additive_loglik(events, cl, vc, 0.4)
    np.testing.assert_allclose(float(lp), ref, atol=ATOL)
    assert pm.population_sites()[-1] == "corr_iiv"


def test_logit_and_identity_links():
    events = make_events(SUBJECTS, 2)
    model = popkpd.OneCompartment(bioavailable_fraction=True)
    pm = PopulationModel(
        model,
        {"cl": 1.0, "vc": 10.0,
         "ka": Parameter(Normal(1.0, 0.3), iiv=Fixed(0.2)),
         "f_bio": Parameter(LogitNormal(0.6, 1.0), iiv=HalfNormal(0.5),
                            covariates=[Categorical("SEX", LogNormal(1.0, 0.5), equals=1)])},
        Additive(HalfNormal(1.0)), method=iv_bolus,
    )
    assert pm.parameters["ka"].link == "identity" and pm.parameters["f_bio"].link == "logit"
    eta = jnp.array([0.5, -2.0, 1.0])
    values = {"f_bio_pop": 0.6, "omega_f_bio": 0.7, "beta_f_bio_SEX": 1.5, "eta_f_bio": eta, "ka_pop": 1.2, "eta_ka": eta}
    p = pm.individual_parameters(values, events, COVS)
    sex = np.array([1.0, 0.0, 1.0])
    logit = np.log(0.6 / 0.4) + np.where(sex == 1, np.log(1.5), 0.0) + 0.7 * np.asarray(eta)
    np.testing.assert_allclose(p["f_bio"], 1 / (1 + np.exp(-logit)), rtol=1e-13)
    np.testing.assert_allclose(p["ka"], 1.2 + 0.2 * np.asarray(eta), rtol=1e-13)  # fixed omega, additive
    np.testing.assert_allclose(p["cl"], [1.0] * 3)
    # zero random effects by default: population predictions
    np.testing.assert_allclose(pm.individual_parameters({"f_bio_pop": 0.6, "beta_f_bio_SEX": 1.0, "ka_pop": 1.2}, events, COVS)["f_bio"], [0.6] * 3)


def test_centred_random_effects():
    events = make_events(SUBJECTS, 2)
    pm = PopulationModel(IV, {"cl": Parameter(LogNormal(2.0, 0.5), iiv=HalfNormal(0.4)), "vc": 20.0},
                         Additive(Fixed(0.5)), method=iv_bolus, centered=True)
    eta = np.array([0.1, -0.3, 0.2])
    values = {"cl_pop": 2.0, "omega_cl": 0.3, "z_cl": jnp.asarray(np.log(2.0) + eta)}  # sampled: log cl_i
    lp, trace = log_density(pm.model, (events,), {"covariate_names": COVS}, values)
    np.testing.assert_allclose(trace["cl"]["value"], 2.0 * np.exp(eta), rtol=1e-13)
    np.testing.assert_allclose(trace["eta_cl"]["value"], eta, rtol=1e-12)  # the deviation, recorded
    assert set(pm.init_values(3)) == {"cl_pop", "omega_cl", "z_cl"}
    np.testing.assert_allclose(pm.init_values(3)["z_cl"], [np.log(2.0)] * 3)  # at the prior median
    ref = st.lognorm.logpdf(2.0, s=0.5, scale=2.0) + st.halfnorm.logpdf(0.3, scale=0.4) + st.norm.logpdf(eta, 0, 0.3).sum()
    ref += additive_loglik(events, 2.0 * np.exp(eta), 20.0, 0.5)
    np.testing.assert_allclose(float(lp), ref, atol=ATOL)


def test_centred_identity_link_is_centred_on_the_typical_value():
    """An identity-linked centred effect: z ~ Normal(theta_pop, omega), theta_i = theta_pop + eta_i."""
    events = make_events(SUBJECTS, 2)
    pm = PopulationModel(IV, {"cl": 2.0, "vc": Parameter(Normal(20.0, 2.0), iiv=HalfNormal(3.0), link="identity")},
                         Additive(Fixed(0.5)), method=iv_bolus, centered=True)
    e = np.array([1.0, -2.0, 0.5])
    lp, trace = log_density(pm.model, (events,), {"covariate_names": COVS},
                            {"vc_pop": 21.0, "omega_vc": 1.5, "z_vc": jnp.asarray(21.0 + e)})
    np.testing.assert_allclose(trace["vc"]["value"], 21.0 + e, rtol=1e-13)
    np.testing.assert_allclose(trace["eta_vc"]["value"], e, rtol=1e-12)


def test_centred_for_some_parameters_only():
    """centered=("cl",): cl's effect is the deviation itself, vc's stays standardised; the log
    density is the scipy sum of both kinds of prior and the likelihood."""
    events = make_events(SUBJECTS, 2)
    pm = PopulationModel(IV, {"cl": Parameter(LogNormal(2.0, 0.5), iiv=HalfNormal(0.4)),
                              "vc": Parameter(LogNormal(20.0, 0.5), iiv=HalfNormal(0.4))},
                         Additive(Fixed(0.5)), method=iv_bolus, centered=("cl",))
    assert pm.is_centered("cl") and not pm.is_centered("vc") and pm.describe()["centered"] == ["cl"]
    d_cl, z_vc = np.array([0.1, -0.3, 0.2]), np.array([0.5, 1.0, -1.5])
    values = {"cl_pop": 2.0, "omega_cl": 0.3, "z_cl": jnp.asarray(np.log(2.0) + d_cl), "vc_pop": 20.0,
              "omega_vc": 0.2, "eta_vc": jnp.asarray(z_vc)}
    lp, trace = log_density(pm.model, (events,), {"covariate_names": COVS}, values)
    cl, vc = 2.0 * np.exp(d_cl), 20.0 * np.exp(0.2 * z_vc)
    np.testing.assert_allclose(trace["cl"]["value"], cl, rtol=1e-13)
    np.testing.assert_allclose(trace["vc"]["value"], vc, rtol=1e-13)
    ref = (st.lognorm.logpdf(2.0, s=0.5, scale=2.0) + st.halfnorm.logpdf(0.3, scale=0.4) + st.norm.logpdf(d_cl, 0, 0.3).sum()
           + st.lognorm.logpdf(20.0, s=0.5, scale=20.0) + st.halfnorm.logpdf(0.2, scale=0.4) + st.norm.logpdf(z_vc).sum())
    ref += additive_loglik(events, cl, vc, 0.5)
    np.testing.assert_allclose(float(lp), ref, atol=ATOL)
    every = PopulationModel(IV, pm.parameters, pm.error, method=iv_bolus, centered=("vc", "cl"))
    assert every.centered == (("cl", 1.0), ("vc", 1.0)) and every.describe()["centered"] is True
    with pytest.raises(ValueError, match=r"\['ka'\] have no IIV"):
        PopulationModel(IV, pm.parameters, pm.error, method=iv_bolus, centered=("ka",))
    with pytest.raises(TypeError, match="expected True, False, a collection"):
        PopulationModel(IV, pm.parameters, pm.error, method=iv_bolus, centered="cl")


def test_partly_centred_random_effects():
    """centered={"cl": w}: z ~ Normal(w log cl_pop, omega^w), cl_i = cl_pop exp(omega^(1-w) (z - w log
    cl_pop)); the log density is the scipy sum in the sampled z; weight 1 is the centred model,
    weight 0 the non-centred one; weights outside [0, 1] are refused."""
    events = make_events(SUBJECTS, 2)
    parameters = {"cl": Parameter(LogNormal(2.0, 0.5), iiv=HalfNormal(0.4)), "vc": 20.0}
    pm = PopulationModel(IV, parameters, Additive(Fixed(0.5)), method=iv_bolus, centered={"cl": 0.6})
    assert pm.is_centered("cl") and pm.centring("cl") == 0.6 and pm.describe()["centered"] == {"cl": 0.6}
    w, cl_pop, omega, z = 0.6, 2.5, 0.3, np.array([0.4, 0.9, 0.2])
    lp, trace = log_density(pm.model, (events,), {"covariate_names": COVS},
                            {"cl_pop": cl_pop, "omega_cl": omega, "z_cl": jnp.asarray(z)})
    d = omega ** (1 - w) * (z - w * np.log(cl_pop))
    cl = cl_pop * np.exp(d)
    np.testing.assert_allclose(trace["cl"]["value"], cl, rtol=1e-13)
    np.testing.assert_allclose(trace["eta_cl"]["value"], d, rtol=1e-12)  # the deviation, recorded
    ref = (st.lognorm.logpdf(cl_pop, s=0.5, scale=2.0) + st.halfnorm.logpdf(omega, scale=0.4)
           + st.norm.logpdf(z, w * np.log(cl_pop), omega**w).sum())
    ref += additive_loglik(events, cl, 20.0, 0.5)
    np.testing.assert_allclose(float(lp), ref, atol=ATOL)
    np.testing.assert_allclose(pm.init_values(3)["z_cl"], [w * np.log(2.0)] * 3)  # zero deviation
    # the same subjects' values: d ~ Normal(0, omega) whatever the weight
    np.testing.assert_allclose(pm.individual_parameters({"cl_pop": cl_pop, "omega_cl": omega, "eta_cl": d},
                                                        events, COVS)["cl"], cl, rtol=1e-13)
    one = PopulationModel(IV, parameters, Additive(Fixed(0.5)), method=iv_bolus, centered={"cl": 1})
    centred = PopulationModel(IV, parameters, Additive(Fixed(0.5)), method=iv_bolus, centered=True)
    at = {"cl_pop": cl_pop, "omega_cl": omega, "z_cl": jnp.asarray(np.log(cl))}
    assert one.describe()["centered"] is True
    assert float(log_density(one.model, (events,), {"covariate_names": COVS}, at)[0]) == float(
        log_density(centred.model, (events,), {"covariate_names": COVS}, at)[0])
    assert PopulationModel(IV, parameters, Additive(Fixed(0.5)), method=iv_bolus, centered={"cl": 0}).centered == ()
    for bad in (1.5, -0.1, True, "half"):
        with pytest.raises(ValueError, match="centring weights from 0"):
            PopulationModel(IV, parameters, Additive(Fixed(0.5)), method=iv_bolus, centered={"cl": bad})


def _halfnormal_pair_in_shares(omega, scale):
    """(total, shares) of ``iiv_shares``, written here: u = omega / scale, total = sum(u**2), shares u**2 / total."""
    u = np.asarray(omega) / np.asarray(scale)
    return float((u**2).sum()), u**2 / (u**2).sum()


@pytest.mark.parametrize("scales", [(0.4, 0.8), (1.0, 0.5, 2.0)])
def test_iiv_shares_keep_the_halfnormal_prior(scales):
    """The change of variables omega -> (total, shares) maps the Chi2(k) x Dirichlet(1/2, ...) prior
    onto independent HalfNormal(scale_i) omegas: log densities (scipy) plus the log-Jacobian
    (finite differences, here) agree at any point."""
    k = len(scales)
    rng = np.random.default_rng(3)
    for omega in rng.uniform(0.05, 2.5, size=(5, k)):
        def coords(w):  # (total, the first k - 1 shares): the sampled sites' free coordinates
            total, share = _halfnormal_pair_in_shares(w, scales)
            return np.concatenate([[total], share[:-1]])

        h = 1e-6
        jac = np.column_stack([(coords(omega + h * e) - coords(omega - h * e)) / (2 * h) for e in np.eye(k)])
        total, share = _halfnormal_pair_in_shares(omega, scales)
        new = st.chi2.logpdf(total, k) + st.dirichlet.logpdf(share, [0.5] * k) + np.log(abs(np.linalg.det(jac)))
        old = sum(st.halfnorm.logpdf(w, scale=s) for w, s in zip(omega, scales))
        np.testing.assert_allclose(new, old, rtol=0, atol=1e-7)


def test_iiv_shares_in_the_model():
    """iiv_shares={"pk": ("cl", "vc")}: sampled iiv_total_pk ~ Chi2(2) and iiv_share_pk ~ Dirichlet(1/2,
    1/2); omega_cl = 0.4 sqrt(total share_0), omega_vc = 0.8 sqrt(total share_1) recorded; the log
    density is the scipy sum; init values put every omega at its HalfNormal median; bad groups refused."""
    events = make_events(SUBJECTS, 2)
    parameters = {"cl": Parameter(LogNormal(2.0, 0.5), iiv=HalfNormal(0.4)),
                  "vc": Parameter(LogNormal(20.0, 0.5), iiv=HalfNormal(0.8))}
    pm = PopulationModel(IV, parameters, Additive(Fixed(0.5)), method=iv_bolus, iiv_shares={"pk": ("cl", "vc")})
    assert pm.describe()["iiv_shares"] == {"pk": ["cl", "vc"]}
    assert pm.population_sites()[-2:] == ["iiv_total_pk", "iiv_share_pk"] and "omega_cl" in pm.population_sites()
    total, share = 1.7, np.array([0.3, 0.7])
    eta_cl, eta_vc = np.array([0.5, -1.0, 0.2]), np.array([-0.4, 0.3, 1.1])
    values = {"cl_pop": 2.2, "vc_pop": 18.0, "iiv_total_pk": total, "iiv_share_pk": jnp.asarray(share),
              "eta_cl": jnp.asarray(eta_cl), "eta_vc": jnp.asarray(eta_vc)}
    lp, trace = log_density(pm.model, (events,), {"covariate_names": COVS}, values)
    omega_cl, omega_vc = 0.4 * np.sqrt(total * 0.3), 0.8 * np.sqrt(total * 0.7)
    np.testing.assert_allclose(trace["omega_cl"]["value"], omega_cl, rtol=1e-13)
    np.testing.assert_allclose(trace["omega_vc"]["value"], omega_vc, rtol=1e-13)
    cl, vc = 2.2 * np.exp(omega_cl * eta_cl), 18.0 * np.exp(omega_vc * eta_vc)
    np.testing.assert_allclose(trace["cl"]["value"], cl, rtol=1e-13)
    ref = (st.lognorm.logpdf(2.2, s=0.5, scale=2.0) + st.lognorm.logpdf(18.0, s=0.5, scale=20.0)
           + st.chi2.logpdf(total, 2) + st.dirichlet.logpdf(share, [0.5, 0.5])
           + st.norm.logpdf(eta_cl).sum() + st.norm.logpdf(eta_vc).sum())
    ref += additive_loglik(events, cl, vc, 0.5)
    np.testing.assert_allclose(float(lp), ref, atol=ATOL)
    init = pm.init_values(3)
    assert set(init) == {"cl_pop", "vc_pop", "iiv_total_pk", "iiv_share_pk", "eta_cl", "eta_vc"}
    t0, s0 = float(init["iiv_total_pk"]), np.asarray(init["iiv_share_pk"])
    np.testing.assert_allclose([0.4 * np.sqrt(t0 * s0[0]), 0.8 * np.sqrt(t0 * s0[1])],
                               [st.halfnorm.median(scale=0.4), st.halfnorm.median(scale=0.8)], rtol=1e-12)
    one = {"cl": parameters["cl"], "vc": 20.0}
    fixed = {"cl": parameters["cl"], "vc": Parameter(LogNormal(20.0, 0.5), iiv=Fixed(0.3))}
    for given, bad, match in [(parameters, {"pk": ("cl",)}, "two or more distinct"),
                              (one, {"pk": ("cl", "vc")}, "'vc' has no IIV"),
                              (fixed, {"pk": ("cl", "vc")}, "'vc' has iiv="),
                              (parameters, {"pk": ("cl", "ka")}, "'ka' is not a parameter"),
                              (parameters, {"a": ("cl", "vc"), "b": ("vc", "cl")}, "in groups 'a' and 'b'"),
                              (parameters, {"p k": ("cl", "vc")}, "expected an identifier")]:
        with pytest.raises(ValueError, match=match):
            PopulationModel(IV, given, Additive(Fixed(0.5)), method=iv_bolus, iiv_shares=bad)


def test_time_varying_covariate_gives_s_by_c_parameter():
    subjects = [dict(SUBJECTS[0], cov_time=[0.0, 2.0, 5.0], cov=[[60.0, 1], [64.0, 1], [66.0, 1]]),
                dict(SUBJECTS[1], cov=[[80.0, 0.0]])]
    events = make_events(subjects, 2)
    pm = base_model(parameters={"cl": Parameter(LogNormal(2.0, 0.5), iiv=HalfNormal(0.4),
                                                covariates=[Power("WT", 70.0, 0.75, time_varying=True)])})
    eta = jnp.array([0.2, -0.1])
    p = pm.individual_parameters({"cl_pop": 2.0, "omega_cl": 0.5, "eta_cl": eta}, events, COVS)
    assert p["cl"].shape == events.cov_time.shape
    wt = np.asarray(events.cov_value[:, :, 0])
    np.testing.assert_allclose(p["cl"], 2.0 * (wt / 70) ** 0.75 * np.exp(0.5 * np.asarray(eta))[:, None], rtol=1e-13)
    np.testing.assert_allclose(p["cl"][0], 2.0 * (np.array([60.0, 64, 66]) / 70) ** 0.75 * np.exp(0.1), rtol=1e-13)


class TwoOutputs(AbstractStructuralModel):
    """One compartment observed twice: concentration and a (made-up) effect = 10 * concentration."""

    states = ("central",)
    parameters = ("cl", "vc")
    outputs = ("conc", "effect")

    def vector_field(self, t, y, p):
        return -p["cl"] / p["vc"] * y

    def output(self, t, y, p):
        return jnp.stack([y[0] / p["vc"], 10 * y[0] / p["vc"]])


def two_output_predict(structural, params, events):
    conc = iv_bolus(structural, params, events)
    return jnp.where(events.obs_output == 1, 10 * conc, conc)


def test_error_model_per_output():
    subjects = [dict(dose_times=[0.0], dose_amts=[100.0], times=[1.0, 1.0, 4.0, 4.0], dv=[4.0, 41.0, 3.1, 25.0],
                     output=[0, 1, 0, 1], cens=[0, 0, 0, -1], cov=[[70.0, 0.0]])]
    events = make_events(subjects, 2)
    pm = PopulationModel(TwoOutputs(), {"cl": LogNormal(2.0, 0.5), "vc": 20.0},
                         {"conc": Additive(HalfNormal(1.0)), "effect": LogNormalError(HalfNormal(0.5))},
                         method=two_output_predict)
    values = {"cl_pop": 1.5, "sigma_conc_add": 0.3, "sigma_effect": 0.2}
    lp, _ = log_density(pm.model, (events,), {"covariate_names": COVS}, values)
    f = iv_bolus_np(1.5, 20.0, [0.0], [100.0], np.array([1.0, 4.0]))
    ref = (st.lognorm.logpdf(1.5, s=0.5, scale=2.0) + st.halfnorm.logpdf(0.3, scale=1.0) + st.halfnorm.logpdf(0.2, scale=0.5)
           + st.norm.logpdf([4.0, 3.1], f, 0.3).sum() + st.lognorm.logpdf(41.0, s=0.2, scale=10 * f[0])
           + st.norm.logsf((np.log(25.0) - np.log(10 * f[1])) / 0.2))
    np.testing.assert_allclose(float(lp), ref, atol=ATOL)
    # an observed output without an error model is refused, naming the row and ID
    pm_conc_only = PopulationModel(TwoOutputs(), {"cl": LogNormal(2.0, 0.5), "vc": 20.0},
                                   {"conc": Additive(HalfNormal(1.0))}, method=two_output_predict)
    with pytest.raises(ValueError, match=r"row 2 \(ID 7\): observation of output 'effect', which has no residual error"):
        pm_conc_only.check(events, COVS, ids=[7])
    with pytest.raises(ValueError, match="received one residual error but TwoOutputs has outputs"):
        PopulationModel(TwoOutputs(), {"cl": 1.0, "vc": 20.0}, Additive(HalfNormal(1.0)))


def test_site_names_and_description():
    pm = base_model(correlation=None)
    events = make_events(SUBJECTS, 2)
    init = pm.init_values(3)
    assert set(init) == {"cl_pop", "beta_cl_WT", "beta_cl_SEX", "omega_cl", "sigma_conc_add", "sigma_conc_prop", "eta_cl"}
    trace = numpyro.handlers.trace(numpyro.handlers.seed(pm.model, 0)).get_trace(events, covariate_names=COVS)
    sampled = {k for k, v in trace.items() if v["type"] == "sample" and not v["is_observed"]}
    assert sampled == set(init)
    assert trace["eta_cl"]["value"].shape == (3,) and trace["obs"]["value"].shape == events.obs_dv.shape
    assert trace["cl"]["type"] == "deterministic"
    assert pm.population_sites() == ["cl_pop", "beta_cl_WT", "beta_cl_SEX", "omega_cl", "sigma_conc_add", "sigma_conc_prop"]
    d = pm.describe()
    assert json.loads(json.dumps(d)) == d
    assert d["parameters"]["vc"]["typical"] == {"distribution": "Fixed", "value": 20.0}
    assert d["parameters"]["cl"]["covariates"][0] == {"effect": "Power", "covariate": "WT", "reference": 70.0,
                                                      "prior": {"distribution": "Normal", "mean": 0.75, "sd": 0.2}}


def test_prior_predictive_observations_follow_the_error_model():
    """Sampled obs (observed=False) around a fixed prediction: standardised residuals ~ N(0, 1)."""
    events = make_events([dict(dose_times=[0.0], dose_amts=[100.0], times=[1.0, 2.0, 4.0, 8.0], dv=[1.0] * 4, cov=[[70.0, 0.0]])], 2)
    pm = PopulationModel(IV, {"cl": 2.0, "vc": 20.0}, Combined(Fixed(0.3), Fixed(0.2)), method=iv_bolus)
    pred = numpyro.infer.Predictive(pm.model, num_samples=4000)(jax.random.PRNGKey(1), events, covariate_names=COVS, observed=False)
    y = np.asarray(pred["obs"][:, 0, :])
    f = iv_bolus_np(2.0, 20.0, [0.0], [100.0], np.array([1.0, 2.0, 4.0, 8.0]))
    z = (y - f) / np.sqrt(0.3**2 + (0.2 * f) ** 2)
    n = z.size
    assert abs(z.mean()) < 4 / np.sqrt(n)
    assert abs(z.var() - 1) < 4 * np.sqrt(2 / n)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: PopulationModel(IV, {"cl": LogNormal(2, 0.5)}, Additive(HalfNormal(1.0))),
         r"no entry for parameters \['vc'\] of OneCompartment"),
        (lambda: PopulationModel(IV, {"cl": 1.0, "vc": 1.0, "kk": 1.0}, Additive(HalfNormal(1.0))),
         r"parameters \['kk'\] are not parameters of OneCompartment"),
        (lambda: PopulationModel(IV, {"cl": 1.0, "vc": 1.0}, {"cp": Additive(HalfNormal(1.0))}),
         "output 'cp' is not an output of OneCompartment"),
        (lambda: PopulationModel(IV, {"cl": 1.0, "vc": 1.0}, Additive(HalfNormal(1.0)), method="euler"),
         "expected 'closed_form', 'ode' or a function"),
        (lambda: PopulationModel(IV, {"cl": Parameter(LogNormal(2, 0.5), iiv=HalfNormal(0.3)), "vc": 1.0},
                                 Additive(HalfNormal(1.0)), correlation=LKJ(2.0)),
         "a correlation needs at least two parameters with iiv"),
        (lambda: PopulationModel(IV, {"cl": Parameter(LogNormal(2, 0.5), iiv=HalfNormal(0.3)),
                                      "vc": Parameter(LogNormal(2, 0.5), iiv=HalfNormal(0.3))},
                                 Additive(HalfNormal(1.0)), correlation=LKJ(2.0), centered=True),
         "only available non-centred"),
        (lambda: PopulationModel(IV, {"cl": Parameter(LogNormal(2, 0.5), covariates=[
            Categorical("SEX", Fixed(1.2), equals=1), Categorical("SEX", Fixed(0.8), equals=2)]), "vc": 1.0},
            Additive(HalfNormal(1.0))), "share the site 'beta_cl_SEX'; give one of them a distinct label"),
        (lambda: Parameter(Normal(1.0, 1.0), link="log"), "a log link needs a positive typical value"),
        (lambda: Parameter(LogNormal(1.0, 1.0), link="logit"), "a logit link needs a typical value in"),
        (lambda: Parameter(LogNormal(1.0, 1.0), link="probit"), "expected one of"),
        (lambda: Parameter(LogNormal(1.0, 1.0), iiv=Normal(0.0, 1.0)), "omega is a standard deviation"),
    ],
)
def test_population_model_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_check_errors_name_rows_and_ids():
    pm = base_model()
    events = make_events(SUBJECTS, 2)
    with pytest.raises(ValueError, match=r"Covariate 'SEX' \(effect on 'cl'\) is not in the data; the dataset has covariates \['WT', 'AGE'\]"):
        pm.check(events, ("WT", "AGE"))
    bad = [dict(SUBJECTS[0]), dict(SUBJECTS[1], dv=[3.9, -2.2, 3.1, 1.7])]
    pm_log = base_model(error=LogNormalError())
    with pytest.raises(ValueError, match=r"row 3 \(ID 12\): DV is -2.2 for output 'conc' with LogNormalError"):
        pm_log.check(make_events(bad, 2), COVS, ids=[11, 12])
    bad = [dict(SUBJECTS[0], limit=[np.nan, np.nan, 0.9])]  # LIMIT above the LLOQ of a CENS=1 record
    with pytest.raises(ValueError, match=r"row 3 \(ID 1\): LIMIT=0.9 with DV=0.5 and CENS=1"):
        pm.check(make_events(bad, 2), COVS)
    bad = [dict(SUBJECTS[0], dv=[4.1, np.nan, 0.5])]
    with pytest.raises(ValueError, match=r"row 2 \(ID 1\): DV is nan"):
        pm.check(make_events(bad, 2), COVS)
    with pytest.raises(ValueError, match="no observation records"):
        pm.check(make_events([dict(SUBJECTS[0], times=[], dv=[], cens=[])], 2), COVS)
