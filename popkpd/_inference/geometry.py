"""Why NUTS is slow on a posterior: its adapted metric against the posterior's spread, and the
local curvature against that spread (``sampler_geometry``).

NUTS moves in the sampler's unconstrained coordinates ``x`` (``FlatPosterior``), preconditioned by
the inverse mass matrix ``M`` (the metric) it adapted in warmup. Its step is set by the narrowest
direction of the posterior measured in the metric, and a trajectory must be long enough to cross
the widest, so the cost of an independent draw grows with the ratio of the two. Two ratios say
which part limits a run:

- ``metric``: posterior sd over metric sd along each direction, the square roots of the
  eigenvalues of ``L^-1 S L^-T`` (``M = L L^T``, ``S`` the covariance of the draws of all chains in
  ``x``). All near 1: the metric fits the posterior. Large ones: directions the warmup did not
  explore (the trajectories, capped at the maximum tree depth, then random-walk along them), or
  a dense metric estimated from too few warmup draws for its dimension, whose smallest
  eigenvalues come out far too small; then its diagonal alone fits better (``condition_diagonal``).
- ``curvature``: posterior sd over local sd at a draw, the square roots of the eigenvalues of
  ``C^T H C`` (``S = C C^T``, ``H`` the Hessian of the negative log density at the draw, by central
  differences of its gradient). Large ones, or negative eigenvalues (the density is not log-concave
  there, e.g. a banana-shaped ridge), are curvature no constant metric removes: they call for a
  reparameterisation.

Both use the draws' covariance ``S``, whose own smallest eigenvalues are too small unless there are
many more draws than coordinates (a few times as many effective draws): read the ratios of a
short run with that in mind.

Each ratio comes with its leading directions in the model's sites (``eta_kmax[ID 12]``: subject 12's
random effect), the loadings of the direction ``L v`` (``C v``) scaled to a largest of 1. For the
largest curvature ratio at a draw, ``sources`` says whose data make it: the second difference of
each observation's log-likelihood along that direction, summed by subject and by output, as shares
of the whole density's (the rest is the prior's). A stiff direction that one subject's data pin
points at that subject (e.g. a fast-growing tumour whose growth and kill rates the M-protein pins
only as their difference), not at the sampler.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.flatten_util import ravel_pytree
from numpyro.distributions.transforms import biject_to

from .fit import FlatPosterior, _Data
from .io import Fit


def sampler_geometry(fit: Fit, population, data, *, covariate_names=None,
                     curvature_draws: int | Sequence[tuple[int, int]] = 0, top: int = 4, step: float = 1e-4) -> dict:
    """The metric and curvature ratios of a NUTS ``fit`` (module doc).

    Parameters
    ----------
    fit
        A NUTS fit with its ``sampler_state`` (fits made, continued or merged by ``merge_chains``
        since 24 Nov 2026); each chain's metric is compared with the draws of all its chains.
    population, data
        The fit's model and data (as for ``continue_fit``).
    curvature_draws
        Draws per chain (evenly spaced, the last one included) at which the curvature is computed,
        or the ``(chain, draw)`` pairs themselves (e.g. where the divergences are); each costs two
        gradient evaluations per coordinate. 0 or no pairs: the metric ratios only.
    top
        Directions reported per row, and coordinates per direction.
    step
        Central-difference step of the gradient, in units of the posterior sd.

    Returns
    -------
    dict
        ``"metric"``: one row per chain (``chain``, ``min``, ``median``, ``max`` of the ratios,
        ``condition``: max over min, the spread of scales a trajectory must cover,
        ``condition_diagonal``: the same in the metric's diagonal alone, i.e. whether a diagonal
        mass matrix would do better, ``directions``: the ``top`` largest as ``ratio: coordinate
        loading, ...``);
        ``"curvature"``: one row per draw (``chain``, ``draw``, ``min``, ``median``, ``max`` of the
        signed ratios, ``negative``: how many are negative, ``directions``, ``sources``: the data's
        share of the largest curvature and the ``top`` subjects' and outputs' shares, module doc);
        ``"coordinates"``: the names of the sampler's coordinates.
    """
    if isinstance(top, bool) or not isinstance(top, int | np.integer) or top < 1:
        raise ValueError(f"sampler_geometry(top={top!r}): expected an integer >= 1.")
    if not (isinstance(step, int | float) and step > 0):
        raise ValueError(f"sampler_geometry(step={step!r}): expected a positive number (in posterior sds), e.g. 1e-4.")
    if "sampler_state" not in fit.tree.children:
        raise ValueError(
            "sampler_geometry: the fit has no sampler_state group (a Laplace fit, a NUTS fit saved before 24 Nov "
            "2026, or draws merged from a running fit's chain files); expected a NUTS fit as fit(), continue_fit() "
            "or merge_chains() returned it."
        )
    d = _Data(data, covariate_names)
    posterior = FlatPosterior(population, d.events, d.covariate_names)
    names = coordinate_names(posterior, d.ids)
    x = flat_draws(fit, posterior)  # [chain, draw, dim]
    if x.shape[0] * x.shape[1] <= x.shape[-1]:
        raise ValueError(f"sampler_geometry: {x.shape[0]} chain(s) x {x.shape[1]} draws for {x.shape[-1]} coordinates; "
                         "expected more draws than coordinates, for their covariance. Draw more (continue_fit).")
    cov = np.atleast_2d(np.cov(x.reshape(-1, x.shape[-1]).T))
    metric = []
    for chain, inverse_mass in enumerate(_metrics(fit.tree["sampler_state"], x.shape[-1])):
        ratios, directions = scale_ratios(cov, inverse_mass)
        diagonal = scale_ratios(cov, np.diag(np.diag(inverse_mass)))[0]
        metric.append(_row(chain, None, ratios, directions, names, top)
                      | {"condition": ratios[-1] / ratios[0], "condition_diagonal": diagonal[-1] / diagonal[0]})
    columns = ["chain", "min", "median", "max", "condition", "condition_diagonal", "directions"]
    out = {"metric": pd.DataFrame(metric, columns=columns), "coordinates": names}
    curvature = []
    at = _curvature_at(curvature_draws, x.shape[:2])
    if at:
        chol = np.linalg.cholesky(cov)
        grad = jax.jit(jax.grad(posterior.potential))
        density = (jax.jit(posterior.potential),
                   jax.jit(lambda x: posterior.observe(posterior.constrain(x), jax.random.PRNGKey(0))[0]))
        outputs = tuple(population.structural.outputs)
        for chain, draw in at:
            try:
                ratios, directions = curvature_ratios(grad, x[chain, draw], chol, step)
            except FloatingPointError as e:
                raise FloatingPointError(f"sampler_geometry: chain {chain}, draw {draw}: {e}") from None
            sources = curvature_sources(density, x[chain, draw], directions[:, -1] / max(ratios[-1], 1e-12),
                                        d.events, d.ids, outputs, top)
            curvature.append(_row(chain, draw, ratios, directions, names, top) | {"sources": sources})
    out["curvature"] = pd.DataFrame(curvature, columns=["chain", "draw", "min", "median", "max", "negative",
                                                        "directions", "sources"])
    return out


def _curvature_at(value, shape) -> list[tuple[int, int]]:
    """``sampler_geometry``'s ``curvature_draws`` as ``(chain, draw)`` pairs, checked against the
    fit's ``shape`` (chains, draws)."""
    chains, draws = shape
    if isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 0:
        steps = np.unique(np.linspace(draws - 1, 0, value).round().astype(int))[::-1] if value else []
        return [(c, int(t)) for c in range(chains) for t in steps]
    try:
        pairs = [(operator.index(c), operator.index(t)) for c, t in value] if not isinstance(value, str) else None
    except (TypeError, ValueError):
        pairs = None
    if pairs is None or any(not (0 <= c < chains and 0 <= t < draws) for c, t in pairs):
        raise ValueError(f"sampler_geometry(curvature_draws={value!r}): expected an integer >= 0 (draws per chain) "
                         f"or (chain, draw) pairs within the fit's {chains} chain(s) x {draws} draws, e.g. [(0, "
                         f"{draws - 1})].")
    return pairs


def coordinate_names(posterior: FlatPosterior, ids) -> list[str]:
    """A name per coordinate of the sampler's vector: the site, with ``[ID i]`` for a subject's
    entry of a per-subject site and ``[k]`` for other vector sites."""
    names = []
    for site, value in sorted(posterior.unravel(posterior.x0).items()):
        shape = np.shape(value)
        if not shape:
            names.append(site)
        elif shape == (len(ids),):
            names += [f"{site}[ID {i}]" for i in ids]
        else:
            names += [f"{site}[{k}]" for k in range(int(np.prod(shape)))]
    return names


def flat_draws(fit: Fit, posterior: FlatPosterior) -> np.ndarray:
    """The fit's draws in the sampler's unconstrained coordinates, ``[chain, draw, dim]``: each
    sampled site's constrained draws through the inverse of its support's bijection, raveled as
    ``FlatPosterior`` ravels them."""
    post = fit.tree["posterior"]
    sites = posterior.unravel(posterior.x0)
    missing = sorted(set(sites) - set(post.data_vars))
    if missing:
        raise ValueError(f"sampler_geometry: the fit's posterior has no {missing}; expected the draws of the model "
                         "given (the same sites).")
    z = {s: biject_to(posterior.supports[s]).inv(jnp.asarray(post[s].values)) for s in sites}
    lead = post[next(iter(sites))].shape[:2]
    z = {s: v.reshape(lead + np.shape(sites[s])) for s, v in z.items()}
    ravel = jax.vmap(jax.vmap(lambda values: ravel_pytree(values)[0]))
    return np.asarray(ravel(z))


def _metrics(state, dim: int) -> list[np.ndarray]:
    """Each chain's adapted inverse mass matrix from the stored sampler state, ``[dim, dim]``."""
    paths = json.loads(state.attrs["paths"])
    values = state[f"leaf_{paths.index('.adapt_state.inverse_mass_matrix')}"].values
    out = [np.diag(v) if v.ndim == 1 else v for v in values]
    if out[0].shape != (dim, dim):
        raise ValueError(f"sampler_geometry: the stored metric is {out[0].shape}, the model has {dim} coordinates; "
                         "expected the fit's own model and data.")
    return out


def scale_ratios(cov: np.ndarray, inverse_mass: np.ndarray):
    """``(ratios, directions)``: the square roots of the eigenvalues of ``L^-1 cov L^-T``
    (``inverse_mass = L L^T``), ascending, and the directions ``L v`` as columns."""
    chol = np.linalg.cholesky(inverse_mass)
    whitened = np.linalg.solve(chol, np.linalg.solve(chol, cov).T)
    lam, v = np.linalg.eigh((whitened + whitened.T) / 2)
    return np.sqrt(np.clip(lam, 0, None)), chol @ v


def curvature_ratios(grad, x: np.ndarray, chol: np.ndarray, step: float = 1e-4):
    """``(ratios, directions)``: for ``H`` the Hessian of the function whose gradient is ``grad``
    at ``x``, the signed square roots of the eigenvalues of ``C^T H C`` (``chol = C``), ascending
    (negative: negative curvature), and the directions ``C v`` as columns. ``H C`` by central
    differences of ``grad`` along ``C``'s columns, ``step`` apart."""
    columns = []
    for c in chol.T:
        up, down = (np.asarray(grad(jnp.asarray(x + sign * step * c))) for sign in (1.0, -1.0))
        bad = np.nonzero(~(np.isfinite(up) & np.isfinite(down)))[0]
        if bad.size:
            raise FloatingPointError(f"the gradient is not finite within {step} posterior sd of the draw, in "
                                     f"coordinates {bad[:10].tolist()}; expected a finite log density there (try a "
                                     "smaller step).")
        columns.append((up - down) / (2 * step))
    a = chol.T @ np.stack(columns, axis=1)
    lam, v = np.linalg.eigh((a + a.T) / 2)
    return np.sign(lam) * np.sqrt(np.abs(lam)), chol @ v


def curvature_sources(density, x: np.ndarray, direction: np.ndarray, events, ids, outputs, top: int) -> str:
    """Whose data curve the negative log density along ``direction`` at ``x`` (module doc), as
    ``"98% data: ID 3 87%, ID 24 6%; m_protein 95%, sbcma 4%"``. ``density``: the jitted potential
    and pointwise log-likelihood ``[S, O]`` of ``x``; ``direction`` scaled so that the potential's
    second difference over a unit step along it is about 1, the step (0.3) then small against the
    direction's local sd and its change in log density (about 0.05) large against the ODE solver's
    error. Shares are of the potential's second difference; single observations can curve it
    negatively, so a share can exceed 100 %."""
    potential, loglik = density
    h = 0.3
    points = [jnp.asarray(x + k * h * direction) for k in (1.0, 0.0, -1.0)]
    total = sum(w * float(potential(p)) for w, p in zip((1.0, -2.0, 1.0), points)) / h**2
    curve = -sum(w * np.asarray(loglik(p)) for w, p in zip((1.0, -2.0, 1.0), points)) / h**2
    curve = np.where(np.asarray(events.obs_mask), curve, 0.0)
    if not (np.isfinite(total) and np.isfinite(curve).all()) or total <= 0:
        return f"not computed (second difference of the log density {total:.3g})"
    by_subject = curve.sum(axis=1) / total
    output = np.asarray(events.obs_output)
    by_output = np.array([curve[output == k].sum() for k in range(len(outputs))]) / total
    subjects = ", ".join(f"ID {ids[i]} {by_subject[i]:.0%}" for i in np.argsort(-by_subject)[:top])
    shares = ", ".join(f"{outputs[k]} {by_output[k]:.0%}" for k in np.argsort(-by_output)[:top] if by_output[k])
    return f"{curve.sum() / total:.0%} data: {subjects}; {shares}"


def _row(chain, draw, ratios, directions, names, top) -> dict:
    parts = []
    for j in range(len(ratios) - 1, max(len(ratios) - 1 - top, -1), -1):
        w = directions[:, j] / np.abs(directions[:, j]).max()
        lead = np.argsort(-np.abs(w))[:top]
        parts.append(f"{ratios[j]:.3g}: " + ", ".join(f"{names[k]} {w[k]:+.2f}" for k in lead))
    return {"chain": chain, "draw": draw, "min": float(ratios[0]), "median": float(np.median(ratios)),
            "max": float(ratios[-1]), "negative": int(np.sum(ratios < 0)), "directions": "; ".join(parts)}
