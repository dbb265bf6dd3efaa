"""Population and individual predictions, residuals and prediction discrepancies per observation."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import ndtri

from .common import check_int, prepare


def pde_from_counts(below: np.ndarray, n: int, cens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Prediction discrepancies from ``below`` (replicates below DV, out of ``n``) per observation.

    Quantified records: ``(below + 0.5) / (n + 1)``, which keeps the value inside (0, 1). A
    left-censored record (DV = LLOQ) gets a uniform draw in ``(0, P(y < LLOQ))``, a right-censored
    one a draw in ``(P(y < ULOQ), 1)`` (the random imputation of Nguyen et al. 2012, AAPS J 14:145),
    then the same bounds.
    """
    p = (np.asarray(below, dtype=float) + 0.5) / (n + 1)
    u = rng.uniform(size=p.shape)
    p = np.where(cens == 1, u * p, np.where(cens == -1, p + u * (1.0 - p), p))
    return np.clip(p, 0.5 / (n + 1), (n + 0.5) / (n + 1))


def _below(samples: np.ndarray, dv: np.ndarray) -> np.ndarray:
    """Number of rows of ``samples`` [n, N] strictly below ``dv`` [N]."""
    return (samples < dv[None, :]).sum(axis=0)


def predictions(fit, population=None, dataset=None, *, max_draws: int = 200, n_sim: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Predictions, residuals and prediction discrepancies, one row per observation.

    Parameters
    ----------
    fit
        A ``Fit`` (from ``fit`` or ``load_fit``).
    population
        The ``PopulationModel`` of the fit; ``None`` uses ``fit.population`` (absent from a
        loaded fit).
    dataset
        The ``Dataset`` (or ``Events``) the fit was made on.
    max_draws
        Posterior draws used for IPRED and for the population-predictive simulations (evenly
        thinned, chains pooled).
    n_sim
        Replicates of every observation from the population predictive distribution (NPDE).
    seed
        Seed of the simulations (and of the imputation of censored records' discrepancies).

    Returns
    -------
    DataFrame with, per observation (subject then time order, like ``Dataset.observation_frame``):

    * ``ID``, ``TIME``, ``output``, ``DV`` (the limit for a censored record), ``CENS`` (0
      quantified, 1 below LLOQ, -1 above ULOQ), ``row`` (0-based source row), in data units;
    * ``PRED``: the population prediction: the model at the covariate-adjusted typical values
      (posterior medians of the population sites), random effects zero;
    * ``IPRED``, ``IPRED_5``, ``IPRED_95``: posterior median and 5 %/95 % quantiles of the
      individual prediction (over the thinned draws; a draw whose ODE solve fails is left out and
      counted in ``table.attrs["failed_draws"]``);
    * ``IWRES``: ``(g(DV) - g(IPRED)) / sd`` with the residual error model's sd at IPRED and the
      posterior-median residual parameters (``g = log`` for ``LogNormalError``, identity
      otherwise); NaN for censored records;
    * ``PDE``/``NPDE``: prediction discrepancy of DV under the *population* predictive
      distribution (new subjects: population parameters from the posterior draws, random effects
      from their distribution, residual error), ``PDE = (k + 0.5) / (n_sim + 1)`` with ``k`` the
      replicates below DV, and ``NPDE = Phi^-1(PDE)``. This is the per-observation version
      without decorrelation (``npd`` of Nguyen et al. 2017, CPT:PSP 6:87); for a correct model
      each NPDE is standard normal, while NPDEs of one subject are correlated;
    * ``IPDE``/``INPDE``: the same from the *individual* posterior predictive distribution (the
      fit's ``posterior_predictive`` group, or simulated from the observation distribution when
      the fit has none). It conditions on the subject's own data, including the observation
      itself, so even for a correct model it is under-dispersed (sd below 1): read it like IWRES,
      and use NPDE to judge calibration.

    Censored records get discrepancies by random imputation (``pde_from_counts``).
    """
    fn = "predictions"
    ctx = prepare(fit, population, dataset, fn)
    check_int(fn, "max_draws", max_draws, 1)
    check_int(fn, "n_sim", n_sim, 1)
    check_int(fn, "seed", seed, 0)
    obs = ctx.observations
    dv, cens = obs["DV"].to_numpy(), obs["CENS"].to_numpy()
    rng = np.random.default_rng([seed, 3])

    pred = ctx.pred()
    draws = ctx.draws(max_draws)
    ipred_draws, y_ind, failed_draws = ctx.simulate(draws, np.random.default_rng([seed, 4]))
    ipred = np.median(ipred_draws, axis=0)
    lo, hi = np.quantile(ipred_draws, [0.05, 0.95], axis=0)

    table = obs.drop(columns="subject").copy()
    table["PRED"] = pred
    table["IPRED"] = ipred
    table["IPRED_5"] = lo
    table["IPRED_95"] = hi
    table["IWRES"] = _iwres(ctx, ipred)

    tree = ctx.fit.tree
    if "posterior_predictive" in tree.children and "obs" in tree["posterior_predictive"].data_vars:
        pp = np.asarray(tree["posterior_predictive"]["obs"].values, dtype=float)
        pp = pp.reshape(-1, pp.shape[-1])
    else:
        pp = y_ind
    table["IPDE"] = pde_from_counts(_below(pp, dv), len(pp), cens, rng)
    table["INPDE"] = ndtri(table["IPDE"].to_numpy())
    sims = ctx.replicates(n_sim, seed, max_draws)
    table["PDE"] = pde_from_counts(_below(sims, dv), len(sims), cens, rng)  # failed replicates left out
    table.attrs["failed_replicates"] = n_sim - len(sims)
    table.attrs["failed_draws"] = failed_draws
    table["NPDE"] = ndtri(table["PDE"].to_numpy())
    return table.reset_index(drop=True)


def _iwres(ctx, ipred: np.ndarray) -> np.ndarray:
    """IWRES at IPRED with the posterior-median residual parameters (NaN for censored records)."""
    loc, scale, log_scale = ctx.residual_scale(ipred)
    dv = ctx.observations["DV"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        g = np.where(log_scale, np.log(np.where(log_scale, dv, 1.0)), dv)
        out = (g - loc) / scale
    return np.where(ctx.observations["CENS"].to_numpy() == 0, out, np.nan)
