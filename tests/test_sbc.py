"""Simulation-based calibration (Talts et al. 2018, arXiv:1804.06788) of ``fit`` (NUTS).

If parameters are drawn from the prior and data from the model given them, the rank of each true
value among independent draws of the posterior given those data is uniform on ``0..L``, whatever
the model; a sampler or a log density that is wrong shows as ranks piling up at the ends (too
narrow or biased posteriors) or in the middle (too wide). The model is small so that many
replicates are affordable: one compartment, IV bolus, 8 subjects, 4 samples each, log-normal IIV
on CL, proportional residual error.

The data are simulated with numpy from the closed form ``C = dose / V exp(-CL / V t)`` and the
priors' definitions, independently of popkpd's model code, so a mismatch between the model's
density and its stated priors/likelihood would show as well.
"""

import time

import numpy as np
import pytest
import scipy.stats

import popkpd

MODEL = popkpd.OneCompartment(absorption=False)
DOSE_MG = 100.0
TIMES_H = np.array([0.5, 2.0, 8.0, 24.0])
N_SUBJECTS = 8
# priors: LogNormal(median, sd of log) for everything, omega and sigma included (a HalfNormal
# would put mass at omega -> 0, a funnel that needs long warmups; the point here is calibration)
PRIORS = {
    "cl_pop": (2.0, 0.3),  # L/h
    "vc_pop": (20.0, 0.3),  # L
    "omega_cl": (0.3, 0.3),  # sd of log CL between subjects
    "sigma_conc_prop": (0.15, 0.3),  # proportional residual sd
}
QUANTITIES = tuple(PRIORS) + ("cl[0]",)  # the population sites and the CL of the first subject

R = 50  # replicates
L = 19  # posterior draws per replicate after thinning: ranks 0..19
THIN = 20
N_BINS = 5  # ranks binned 0-3, 4-7, ..., 16-19: R / 5 = 10 expected per bin
ALPHA = 1e-3  # family-wise level, Bonferroni over QUANTITIES


def population() -> popkpd.PopulationModel:
    p = {k: popkpd.LogNormal(*v) for k, v in PRIORS.items()}
    return popkpd.PopulationModel(
        MODEL,
        {"cl": popkpd.Parameter(p["cl_pop"], iiv=p["omega_cl"]), "vc": p["vc_pop"]},
        popkpd.Proportional(p["sigma_conc_prop"]),
    )


def draw_prior(rng) -> dict:
    """True values from the prior: log x ~ Normal(log median, sd); CL_i = CL_pop exp(omega eta_i)."""
    truth = {k: m * np.exp(s * rng.standard_normal()) for k, (m, s) in PRIORS.items()}
    truth["cl"] = truth["cl_pop"] * np.exp(truth["omega_cl"] * rng.standard_normal(N_SUBJECTS))
    return truth


def simulate_events(truth, rng, template: popkpd.Events) -> popkpd.Events:
    """``template`` (the design: dose at 0, samples at TIMES_H) with DV simulated from ``truth``."""
    import equinox as eqx
    import jax.numpy as jnp

    f = DOSE_MG / truth["vc_pop"] * np.exp(-truth["cl"][:, None] / truth["vc_pop"] * TIMES_H[None, :])
    y = f * (1.0 + truth["sigma_conc_prop"] * rng.standard_normal(f.shape))
    return eqx.tree_at(lambda e: e.obs_dv, template, jnp.asarray(y))


def ranks_of_one_replicate(r: int, template) -> dict:
    rng = np.random.default_rng([2026, r])
    truth = draw_prior(rng)
    events = simulate_events(truth, rng, template)
    result = popkpd.fit(
        population(), events, chains=1, warmup=200, draws=L * THIN, seed=r, init="prior_median",
        progress_bar=False, posterior_predictive=False,
    )
    post = result.tree["posterior"]
    ranks = {}
    for q in QUANTITIES:
        if q == "cl[0]":
            draws, value = np.asarray(post["cl"].values)[0, :, 0], truth["cl"][0]
        else:
            draws, value = np.asarray(post[q].values)[0], truth[q]
        thinned = draws[THIN - 1 :: THIN]
        assert len(thinned) == L
        ranks[q] = int(np.sum(thinned < value))
    return ranks


def test_design_matches_the_simulator():
    """The template events hold the design the numpy simulator assumes."""
    template = design()
    assert template.n_subjects == N_SUBJECTS
    np.testing.assert_array_equal(np.asarray(template.obs_time), np.tile(TIMES_H, (N_SUBJECTS, 1)))
    assert np.asarray(template.obs_mask).all() and np.asarray(template.dose_mask).sum() == N_SUBJECTS
    np.testing.assert_array_equal(np.asarray(template.dose_amt)[:, 0], DOSE_MG)
    truth = {"cl_pop": 2.0, "vc_pop": 20.0, "omega_cl": 0.3, "sigma_conc_prop": 0.0, "cl": np.linspace(1, 3, N_SUBJECTS)}
    events = simulate_events(truth, np.random.default_rng(0), template)
    pred = popkpd.closed_form(MODEL, {"cl": truth["cl"], "vc": np.full(N_SUBJECTS, 20.0)}, events).pred
    np.testing.assert_allclose(np.asarray(events.obs_dv), np.asarray(pred), rtol=1e-12)


def design() -> popkpd.Events:
    regimen = popkpd.Regimen.at([0.0], popkpd.Bolus(DOSE_MG))
    return regimen.to_events(MODEL, TIMES_H, n_subjects=N_SUBJECTS)


def chi_square_p(ranks) -> float:
    counts = np.bincount(np.asarray(ranks) * N_BINS // (L + 1), minlength=N_BINS)
    return float(scipy.stats.chisquare(counts).pvalue)


@pytest.mark.slow
def test_nuts_posteriors_are_calibrated():
    """R = 50 replicates, one chain each of 200 warmup + 380 draws thinned every 20th to L = 19
    nearly independent draws (the autocorrelation of NUTS on this small posterior dies out well
    within 20 iterations), so each rank is uniform on 0..19 under calibration.

    Uniformity of the 50 ranks of each quantity: chi-square test on 5 bins of 4 ranks (10
    expected per bin, 4 degrees of freedom), rejected at p < 1e-3 / 5 (Bonferroni over the 5
    quantities). The level is conservative on purpose: a correct sampler fails this test by
    chance about once in a thousand runs, not once in twenty, yet gross miscalibration (a
    posterior too narrow or shifted by about half its width, which piles ranks into the end
    bins) gives chi-square statistics in the tens to hundreds and is still caught. Ranks of one
    replicate are dependent across quantities, which Bonferroni allows.
    """
    t0 = time.perf_counter()
    template = design()
    ranks = {q: [] for q in QUANTITIES}
    for r in range(R):
        for q, k in ranks_of_one_replicate(r, template).items():
            ranks[q].append(k)
    p = {q: chi_square_p(v) for q, v in ranks.items()}
    counts = {q: np.bincount(np.asarray(v) * N_BINS // (L + 1), minlength=N_BINS).tolist() for q, v in ranks.items()}
    print(f"SBC: {R} replicates in {time.perf_counter() - t0:.0f} s; p-values {p}; bin counts {counts}")
    bad = {q: (p[q], counts[q]) for q in QUANTITIES if p[q] < ALPHA / len(QUANTITIES)}
    assert not bad, f"ranks not uniform (p-value, counts per bin): {bad}"
