"""``sampler_geometry``: the sampler's coordinates of the draws, and the metric and curvature ratios
against closed forms."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import popkpd
from popkpd._inference.fit import FlatPosterior
from popkpd._events import pad_events
from popkpd._inference.geometry import (coordinate_names, curvature_ratios, curvature_sources, flat_draws,
                                         scale_ratios)
from popkpd._statistical import Additive, Fixed, Normal, PopulationModel
from tests.test_inference import Line, line, line_problem, make_dataset, population


@pytest.fixture(scope="module")
def fits():
    data = make_dataset()
    settings = dict(chains=2, warmup=100, draws=40, seed=5, progress_bar=False, posterior_predictive=False)
    return data, {dense: popkpd.fit(population(), data, dense_mass=dense, **settings) for dense in (True, False)}


def test_flat_draws_are_the_samplers_coordinates(fits):
    """The constrained draws taken back through each site's bijection are the positions NUTS
    moved in: the last one is, to rounding, the position in the stored sampler state."""
    data, by_mass = fits
    posterior = FlatPosterior(population(), data.events, data.covariate_names)
    names = coordinate_names(posterior, data.ids)
    assert len(names) == posterior.x0.size and "eta_cl[ID 101]" in names and "omega_cl" in names
    for f in by_mass.values():
        x = flat_draws(f, posterior)
        state = f.tree["sampler_state"]
        z = state[f"leaf_{json.loads(state.attrs['paths']).index('.z')}"].values
        assert x.shape == (2, 40, posterior.x0.size)
        np.testing.assert_allclose(x[:, -1], z, rtol=1e-12, atol=1e-12)


def test_scale_ratios_closed_form():
    rotation = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    cov = rotation @ np.diag([9.0, 1.0]) @ rotation.T
    ratios, directions = scale_ratios(cov, np.eye(2))
    np.testing.assert_allclose(ratios, [1.0, 3.0], rtol=1e-12)
    np.testing.assert_allclose(abs(directions[:, 1] @ rotation[:, 0]), 1.0, rtol=1e-12)  # along the wide axis
    np.testing.assert_allclose(scale_ratios(cov, cov)[0], [1.0, 1.0], rtol=1e-12)  # the metric is the posterior
    np.testing.assert_allclose(scale_ratios(np.eye(2), np.diag([4.0, 1.0]))[0], [0.5, 1.0], rtol=1e-12)


def test_curvature_ratios_of_quadratics():
    """For ``0.5 x^T P x``: the squared ratios are the eigenvalues of ``S P`` (``S`` the posterior
    covariance); a saddle gives a negative one."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3))
    precision = a @ a.T + np.eye(3)
    cov = np.diag([4.0, 1.0, 0.25])
    grad = jax.jit(jax.grad(lambda x: 0.5 * x @ jnp.asarray(precision) @ x))
    ratios, _ = curvature_ratios(grad, rng.normal(size=3), np.linalg.cholesky(cov))
    np.testing.assert_allclose(ratios**2, np.sort(np.linalg.eigvals(cov @ precision).real), rtol=1e-6)
    saddle = jax.jit(jax.grad(lambda x: 0.5 * (x[0] ** 2 - 4 * x[1] ** 2)))
    ratios, directions = curvature_ratios(saddle, np.zeros(2), np.eye(2))
    np.testing.assert_allclose(ratios, [-2.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(np.abs(directions[:, 0]), [0.0, 1.0], atol=1e-9)
    log = jax.jit(jax.grad(lambda x: -jnp.sum(jnp.log(x))))  # not finite below 0
    with pytest.raises(FloatingPointError, match=r"not finite .* in coordinates \[1\]"):
        curvature_ratios(log, np.array([1.0, 0.0]), np.eye(2))


def test_sampler_geometry_report(fits):
    data, by_mass = fits
    for dense, f in by_mass.items():
        g = popkpd.sampler_geometry(f, population(), data, curvature_draws=2, top=2)
        assert list(g["metric"]["chain"]) == [0, 1] and list(g["curvature"]["draw"]) == [39, 0, 39, 0]
        metric = g["metric"]
        np.testing.assert_allclose(metric["condition"], metric["max"] / metric["min"], rtol=1e-12)
        if not dense:  # a diagonal metric is its own diagonal
            np.testing.assert_allclose(metric["condition_diagonal"], metric["condition"], rtol=1e-9)
        for table in (metric, g["curvature"]):
            assert (table["min"] <= table["median"]).all() and (table["median"] <= table["max"]).all()
            assert table["directions"].str.count(";").eq(1).all()  # two directions per row
    g = popkpd.sampler_geometry(f, population(), data, curvature_draws=[(1, 5)], top=2)
    assert list(zip(g["curvature"]["chain"], g["curvature"]["draw"])) == [(1, 5)]
    for kwargs in ({"curvature_draws": -1}, {"curvature_draws": [(2, 0)]}, {"curvature_draws": [(0, 40)]},
                   {"curvature_draws": 1.5}, {"curvature_draws": [(0, 2.5)]}, {"top": 0}, {"step": 0.0}):
        with pytest.raises(ValueError, match=f"sampler_geometry\\({next(iter(kwargs))}="):
            popkpd.sampler_geometry(f, population(), data, **kwargs)
    laplace = popkpd.fit(population(), data, method="laplace", draws=20, posterior_predictive=False)
    with pytest.raises(ValueError, match="has no sampler_state group"):
        popkpd.sampler_geometry(laplace, population(), data)


def test_curvature_of_a_gaussian_posterior_is_its_precision():
    """The line problem's posterior is Gaussian with a known precision ``P`` (its Hessian at every
    point): the curvature ratios are the square roots of the eigenvalues of ``S P``, ``S`` the
    covariance of the draws; and the ``S`` of 800 draws is near the exact covariance, so both near 1."""
    pm, events, _, cov = line_problem()
    f = popkpd.fit(pm, events, chains=2, warmup=150, draws=400, init="prior_median", seed=2, dense_mass=True,
                   progress_bar=False)
    g = popkpd.sampler_geometry(f, pm, events, curvature_draws=1)
    post = f.tree["posterior"]
    draws = np.stack([post["a_pop"].values.ravel(), post["b_pop"].values.ravel()], axis=1)
    expected = np.sqrt(np.sort(np.linalg.eigvals(np.cov(draws.T) @ np.linalg.inv(cov)).real))
    for _, row in g["curvature"].iterrows():
        np.testing.assert_allclose([row["min"], row["max"]], expected, rtol=1e-5)
    assert 0.7 < expected[0] and expected[1] < 1.4, expected  # 800 autocorrelated draws of 2 coordinates
    assert g["coordinates"] == ["a_pop", "b_pop"]
    chol = np.linalg.cholesky(np.cov(draws.T))  # the stiffest direction, and the data's share of its curvature
    precision = np.linalg.inv(cov)
    d = chol @ np.linalg.eigh(chol.T @ precision @ chol)[1][:, -1]
    prior = np.diag([1 / 2.0**2, 1 / 1.0**2])  # line_problem's priors
    share = 1 - d @ prior @ d / (d @ precision @ d)
    assert (g["curvature"]["sources"] == f"{share:.0%} data: ID 1 {share:.0%}; y {share:.0%}").all()


def test_curvature_sources_of_a_line_fitted_to_two_subjects():
    """y = a + b t observed in two subjects, Gaussian errors: along a direction ``d`` each
    subject's data curve the negative log density by ``d^T X_s^T X_s d / sigma^2`` and the prior by
    ``d^T diag(1 / s0^2) d``, exactly (a quadratic: its second differences are exact)."""
    times = [np.array([0.0, 1.0, 2.0]), np.array([0.0, 4.0, 8.0, 12.0])]
    none = dict(time=np.zeros(0), amt=np.zeros(0), cmt=np.zeros(0, int), rate=np.zeros(0), ss=np.zeros(0, int),
                ii=np.zeros(0), reset=np.zeros(0, bool), row=np.zeros(0, int))
    obs = [dict(time=t, dv=1.0 + 0.5 * t, output=np.zeros(t.size, int), cens=np.zeros(t.size, int),
                limit=np.full(t.size, np.nan), row=np.arange(t.size)) for t in times]
    events = pad_events([none, none], obs, [(np.zeros(1), np.zeros((1, 0)))] * 2, 0)
    sigma, s0 = 0.4, np.array([2.0, 1.0])
    pm = PopulationModel(Line(), {"a": Normal(0.0, s0[0]), "b": Normal(0.5, s0[1])}, Additive(Fixed(sigma)),
                         method=line)
    post = FlatPosterior(pm, events)
    density = (jax.jit(post.potential),
               jax.jit(lambda x: post.observe(post.constrain(x), jax.random.PRNGKey(0))[0]))
    data = [np.stack([np.ones_like(t), t], axis=1) for t in times]
    data = [x.T @ x / sigma**2 for x in data]
    precision = np.diag(1 / s0**2) + sum(data)
    for d in (np.array([0.0, 1.0]), np.array([1.0, -0.2])):
        d = d / np.sqrt(d @ precision @ d)  # unit curvature along it, as sampler_geometry scales it
        text = curvature_sources(density, np.array([0.3, 0.4]), d, events, np.array([7, 9]), ("y",), 2)
        shares = [d @ p @ d for p in data]
        order = np.argsort(shares)[::-1]
        expected = (f"{sum(shares):.0%} data: " + ", ".join(f"ID {(7, 9)[i]} {shares[i]:.0%}" for i in order)
                    + f"; y {sum(shares):.0%}")
        assert text == expected


def test_curvature_sources_where_the_density_curves_down():
    """Along a direction of negative curvature (a saddle) there is no share to give: the row says
    so with the second difference it found, not a share of a negative total."""
    potential = jax.jit(lambda x: 0.5 * (x[0] ** 2 - 4 * x[1] ** 2))
    loglik = jax.jit(lambda x: jnp.zeros((1, 1)))
    events = pad_events([dict(time=np.zeros(0), amt=np.zeros(0), cmt=np.zeros(0, int), rate=np.zeros(0),
                              ss=np.zeros(0, int), ii=np.zeros(0), reset=np.zeros(0, bool), row=np.zeros(0, int))],
                        [dict(time=np.zeros(1), dv=np.zeros(1), output=np.zeros(1, int), cens=np.zeros(1, int),
                              limit=np.full(1, np.nan), row=np.arange(1))], [(np.zeros(1), np.zeros((1, 0)))], 0)
    text = curvature_sources((potential, loglik), np.zeros(2), np.array([0.0, 1.0]), events, np.array([1]), ("y",), 2)
    assert text == "not computed (second difference of the log density -4)"
