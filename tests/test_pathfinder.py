"""Pathfinder (``fit(init="pathfinder")``): its inverse Hessian against the textbook BFGS
recursion, its draws and densities against scipy, its approximation of a Gaussian target, and a
fit started from it."""

import numpy as np
import scipy.optimize
import scipy.stats

import popkpd

from popkpd._inference.fit import fit
from popkpd._inference.pathfinder import _Normal, _update_diagonal, pathfinder

from .test_inference import make_dataset, population


def gaussian_target(dim=5, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((dim, dim))
    cov = a @ a.T / dim + 0.1 * np.eye(dim)
    mean = rng.standard_normal(dim)
    prec = np.linalg.inv(cov)

    def value_and_grad(x):
        d = x - mean
        return 0.5 * d @ prec @ d, prec @ d

    return mean, cov, value_and_grad


def lbfgs_path(value_and_grad, dim):
    path = [(np.full(dim, 3.0), *value_and_grad(np.full(dim, 3.0)))]

    def accepted(intermediate_result):
        x = np.array(intermediate_result.x)
        path.append((x, *value_and_grad(x)))

    scipy.optimize.minimize(value_and_grad, path[0][0], jac=True, method="L-BFGS-B", callback=accepted,
                            options={"gtol": 1e-10})
    return path


def bfgs_inverse(alpha, pairs):
    """The textbook recursion H <- (I - r s y^T) H (I - r y s^T) + r s s^T from diag(alpha)."""
    h = np.diag(alpha)
    eye = np.eye(len(alpha))
    for s, y in pairs:
        r = 1.0 / (y @ s)
        h = (eye - r * np.outer(s, y)) @ h @ (eye - r * np.outer(y, s)) + r * np.outer(s, s)
    return h


def test_compact_inverse_hessian_equals_the_bfgs_recursion():
    rng = np.random.default_rng(1)
    dim, m = 7, 4
    prec = np.cov(rng.standard_normal((dim, 3 * dim))) + np.eye(dim)
    pairs = [(s, prec @ s + 0.01 * rng.standard_normal(dim)) for s in rng.standard_normal((m, dim))]
    assert all(s @ y > 0 for s, y in pairs)
    alpha = rng.uniform(0.5, 2.0, dim)
    x, g = rng.standard_normal(dim), rng.standard_normal(dim)
    approx = _Normal(x, g, alpha, pairs)
    h = bfgs_inverse(alpha, pairs)
    np.testing.assert_allclose(approx.covariance(), h, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(approx.mean, x - h @ g, rtol=1e-10, atol=1e-12)
    # draws: x = mean + F u with F F^T = H, and log q equals scipy's density at x
    u = rng.standard_normal((6, dim))
    draws, log_q = approx.sample(u)
    np.testing.assert_allclose(log_q, scipy.stats.multivariate_normal(approx.mean, h).logpdf(draws), rtol=1e-10)
    f = approx.sample(np.eye(dim))[0] - approx.mean  # rows: F e_i
    np.testing.assert_allclose(f.T @ f, h, rtol=1e-10, atol=1e-12)


def test_diagonal_recursion_is_the_diagonal_of_a_scaled_bfgs_hessian_update():
    """The paper's update: diag(1/alpha_new) = diagonal of the BFGS update of the Hessian
    (a/b) diag(1/alpha), a = y' alpha y, b = y' s."""
    rng = np.random.default_rng(2)
    dim = 6
    alpha, s = rng.uniform(0.5, 2.0, dim), rng.standard_normal(dim)
    y = s * rng.uniform(0.5, 2.0, dim)
    a, b = y @ (alpha * y), y @ s
    hess = (a / b) * np.diag(1 / alpha)
    updated = hess - np.outer(hess @ s, hess @ s) / (s @ hess @ s) + np.outer(y, y) / b
    np.testing.assert_allclose(1 / _update_diagonal(alpha, s, y), np.diag(updated), rtol=1e-12)


def path_kl(path, mean, cov, history=6):
    """KL(q_l || target) in closed form for every iterate's approximation q_l."""
    dim = len(mean)
    xs, gs = np.array([p[0] for p in path]), np.array([p[2] for p in path])
    alpha, pairs, prec, out = np.ones(dim), [], np.linalg.inv(cov), []
    for k in range(len(path)):
        if k > 0:
            s, y = xs[k] - xs[k - 1], gs[k] - gs[k - 1]
            if s @ y > 1e-12 * (y @ y):
                alpha, pairs = _update_diagonal(alpha, s, y), (pairs + [(s, y)])[-history:]
        approx = _Normal(xs[k], gs[k], alpha, pairs)
        h, d = approx.covariance(), approx.mean - mean
        out.append(0.5 * (np.trace(prec @ h) + d @ prec @ d - dim + np.linalg.slogdet(cov)[1] - np.linalg.slogdet(h)[1]))
    return np.array(out)


def test_pathfinder_picks_a_close_approximation_of_a_gaussian_target():
    """Correlated Gaussian targets in 5 and 6 dimensions, started far away (the start's
    approximation has KL in the thousands): over 20 seeds of the ELBO draws, the chosen
    iterate's KL divergence (closed form) has median below 0.2 and is never above 1 % of the
    start's; the chosen iterate has the largest estimated ELBO, and a finite one."""
    for dim in (5, 6):
        mean, cov, value_and_grad = gaussian_target(dim, seed=dim - 5)
        path = lbfgs_path(value_and_grad, dim)
        kl = path_kl(path, mean, cov)
        chosen = []
        for seed in range(20):
            points, info = pathfinder(path, lambda x: value_and_grad(x)[0], seed, 4)
            assert points.shape == (4, dim) and info["iterates"] == len(path)
            assert np.isfinite(info["elbo"][info["iterate"]]) and max(info["elbo"]) == info["elbo"][info["iterate"]]
            chosen.append(kl[info["iterate"]])
        assert np.median(chosen) < 0.2, (dim, chosen)
        assert max(chosen) < 0.01 * kl[0], (dim, max(chosen), kl[0])


def test_fit_starts_from_pathfinder():
    """Chains started from Pathfinder run and record where they started; merged single-chain
    fits keep each chain's record."""
    fits = [fit(population(), make_dataset(), chains=1, warmup=30, draws=20, seed=seed, init="pathfinder",
                progress_bar=False, posterior_predictive=False) for seed in (4, 5)]
    for result in fits:
        info = result.metadata["sampler"]["pathfinder"]
        assert 0 <= info["iterate"] < info["iterates"] and np.isfinite(info["elbo"])
        assert result.metadata["sampler"]["init"] == "pathfinder"
        assert "pathfinder_s" in result.metadata["timing_s"] and "map_s" not in result.metadata["timing_s"]
        assert np.all(np.isfinite(result.tree["posterior"]["cl_pop"].values))
    merged = popkpd.merge_chains(fits)
    assert merged.metadata["sampler"]["pathfinder"] == [f.metadata["sampler"]["pathfinder"] for f in fits]
