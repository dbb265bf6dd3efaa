"""``sampler_geometry``: the sampler's coordinates of the draws, and the metric and curvature ratios
against closed forms."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import popkpd
from popkpd._inference.fit import FlatPosterior
from popkpd._inference.geometry import coordinate_names, curvature_ratios, flat_draws, scale_ratios
from tests.test_inference import line_problem, make_dataset, population


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
    for kwargs in ({"curvature_draws": -1}, {"top": 0}, {"step": 0.0}):
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
