"""Visual predictive check (VPC) and prediction-corrected VPC, as tables.

Replicate data sets of the same design (doses, times, covariates) are simulated for new
subjects: population parameters from the posterior draws, random effects from their
distribution, residual error added. Simulated values are censored like the data (below the
LLOQ / above the ULOQ, see ``Context.limits``). Observations are binned by time, per output, and
in each bin the 5th, 50th and 95th percentiles of the observed values are set against the 90 %
interval (5th-95th percentile over replicates) of the same percentile of the simulated values.

Censored values take part in the percentiles as values below the LLOQ (above the ULOQ); a
percentile that falls among them is reported as NaN ("below LLOQ"), for the observations as for
each replicate, as in Bergstrand & Karlsson (2009), AAPS J 11:371. The fraction of censored
values per bin is reported alongside.

Prediction correction (Bergstrand et al. 2011, AAPS J 13:143): observed and simulated values are
multiplied by ``PRED_bin / PRED``, with ``PRED_bin`` the median PRED of the bin; this removes the
part of the spread that the design (doses, covariates, time within the bin) explains.
Percentiles use linear interpolation (numpy's default, R's type 7).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .common import check_int, prepare

PERCENTILES = (5, 50, 95)
_BIG = 1e300  # finite stand-in for censored values: interpolation stays finite, and detectable
_SHOWN = 1e290  # beyond this, a percentile was interpolated from a stand-in (censored region)


def time_bins(time: np.ndarray, bins) -> np.ndarray:
    """Bin edges for ``time``: ``bins`` equal-count (quantile) bins, or the given edges."""
    if isinstance(bins, int | np.integer) and not isinstance(bins, bool):
        if bins < 1:
            raise ValueError(f"vpc(bins={bins!r}): expected a number of bins >= 1 or increasing bin edges.")
        edges = np.unique(np.quantile(time, np.linspace(0.0, 1.0, int(bins) + 1)))
        return edges if len(edges) > 1 else np.repeat(edges, 2)  # all at one time: one bin
    edges = np.asarray(bins, dtype=float)
    if edges.ndim != 1 or len(edges) < 2 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError(
            f"vpc(bins={bins!r}): expected a number of bins (quantile bins) or strictly increasing, "
            "finite bin edges in the data's time unit, e.g. bins=[0, 2, 6, 12, 24]."
        )
    return edges


def _assign(time, edges):
    """Bin index of each time: [e_k, e_k+1), the last bin closed."""
    return np.clip(np.searchsorted(edges, time, side="right") - 1, 0, len(edges) - 2)


def _percentiles(values, q, axis):
    return np.quantile(values, np.asarray(q) / 100.0, axis=axis)


def _shown(x):
    """Percentiles in the censored region (interpolated from a stand-in) -> NaN."""
    return np.where(np.abs(x) > _SHOWN, np.nan, x)


def vpc_table(time, output, observed, observed_cens, simulated, lloq, uloq, edges_by_output, pred=None) -> pd.DataFrame:
    """The VPC from arrays (one entry per observation; ``simulated`` is ``[n_sim, N]``, uncensored).

    ``observed_cens``: 0/1/-1 as in the data; ``lloq``/``uloq``: per observation limits for the
    simulated values; ``edges_by_output``: ``{output: bin edges}``; ``pred``: PRED per
    observation for prediction correction (``None``: no correction).
    """
    observed = np.asarray(observed, dtype=float)
    simulated = np.asarray(simulated, dtype=float)
    rows = []
    for name, edges in edges_by_output.items():
        sel = np.flatnonzero(output == name)
        idx = _assign(time[sel], edges)
        for b in range(len(edges) - 1):
            k = sel[idx == b]
            if len(k) == 0:
                continue
            obs_b, sim_b = observed[k], simulated[:, k]
            sim_blq = sim_b < lloq[k]
            if pred is not None:
                ratio = np.median(pred[k]) / pred[k]
                obs_b, sim_b = obs_b * ratio, sim_b * ratio
            obs_b = np.where(observed_cens[k] == 1, -_BIG, np.where(observed_cens[k] == -1, _BIG, obs_b))
            # censoring decided on the uncorrected values, like the data's
            sim_b = np.where(sim_blq, -_BIG, np.where(simulated[:, k] > uloq[k], _BIG, sim_b))
            obs_q = _shown(_percentiles(obs_b, PERCENTILES, axis=0))
            sim_q = _percentiles(sim_b, PERCENTILES, axis=1)  # [3, n_sim]
            band = _shown(_percentiles(sim_q, (5, 50, 95), axis=1))  # [3 bands, 3 percentiles]
            blq_sim = np.quantile(sim_blq.mean(axis=1), [0.05, 0.5, 0.95])
            row = {
                "output": name,
                "bin": b,
                "time_lo": edges[b],
                "time_hi": edges[b + 1],
                "time": float(np.median(time[k])),
                "n_obs": len(k),
            }
            for j, p in enumerate(PERCENTILES):
                row[f"obs_p{p:02d}"] = obs_q[j]
                row[f"sim_p{p:02d}_lo"] = band[0, j]
                row[f"sim_p{p:02d}_med"] = band[1, j]
                row[f"sim_p{p:02d}_hi"] = band[2, j]
            row["blq_obs"] = float(np.mean(observed_cens[k] == 1))
            row["blq_sim_lo"], row["blq_sim_med"], row["blq_sim_hi"] = (float(v) for v in blq_sim)
            rows.append(row)
    return pd.DataFrame(rows)


def coverage(table: pd.DataFrame) -> float:
    """Fraction of (bin, percentile) cells whose observed percentile lies in the simulated 90 %
    interval; cells where the observed and the interval are both below the LLOQ count as inside,
    cells where only one is count as outside."""
    inside, total = 0, 0
    for p in PERCENTILES:
        o, lo, hi = (table[f"{c}"].to_numpy() for c in (f"obs_p{p:02d}", f"sim_p{p:02d}_lo", f"sim_p{p:02d}_hi"))
        for oi, li, hi_ in zip(o, lo, hi):
            total += 1
            if np.isnan(oi):  # observed percentile below LLOQ: inside if the band reaches there
                inside += bool(np.isnan(li))
            elif np.isnan(hi_):
                inside += 0
            else:
                inside += bool((np.isnan(li) or li <= oi) and oi <= hi_)
    return inside / total if total else float("nan")


def vpc(
    fit,
    population=None,
    dataset=None,
    *,
    n_sim: int = 200,
    bins=8,
    prediction_corrected: bool = False,
    seed: int = 0,
    max_draws: int = 200,
) -> pd.DataFrame:
    """Visual predictive check table (see the module docstring).

    Parameters
    ----------
    fit, population, dataset
        The fit, its ``PopulationModel`` (``None``: ``fit.population``) and the ``Dataset`` it
        was made on.
    n_sim
        Number of replicate data sets.
    bins
        Number of time bins with equal numbers of observations (per output; ties in time stay in
        one bin, so there may be fewer), or strictly increasing bin edges in the data's time unit
        covering every observation time.
    prediction_corrected
        pcVPC (Bergstrand et al. 2011); needs PRED > 0 for every observation.
    seed
        Seed of the simulation.
    max_draws
        Posterior draws the replicates cycle through (evenly thinned).

    Returns
    -------
    DataFrame, one row per output and non-empty bin: ``output``, ``bin``, ``time_lo``,
    ``time_hi`` (edges), ``time`` (median observation time), ``n_obs``; ``obs_p05``, ``obs_p50``,
    ``obs_p95`` (observed percentiles, DV units, NaN where below the LLOQ);
    ``sim_pXX_lo``/``_med``/``_hi`` (5th, 50th and 95th percentile over replicates of the
    simulated percentile XX); ``blq_obs`` and ``blq_sim_lo``/``_med``/``_hi`` (fraction of
    censored values below the LLOQ). ``DataFrame.attrs`` records the settings.
    """
    fn = "vpc"
    ctx = prepare(fit, population, dataset, fn)
    check_int(fn, "n_sim", n_sim, 1)
    check_int(fn, "seed", seed, 0)
    check_int(fn, "max_draws", max_draws, 1)
    if not isinstance(prediction_corrected, bool):
        raise ValueError(f"vpc(prediction_corrected={prediction_corrected!r}): expected True or False.")
    obs = ctx.observations
    time, output = obs["TIME"].to_numpy(), obs["output"].to_numpy()
    edges = {}
    for name in dict.fromkeys(output):
        t = time[output == name]
        e = time_bins(t, bins)
        outside = (t < e[0]) | (t > e[-1])
        if outside.any():
            o = obs[output == name].iloc[int(np.argmax(outside))]
            raise ValueError(
                f"vpc(bins=...): the observation at row {o['row']} (ID {o['ID']}, TIME {o['TIME']:g}, output "
                f"{name!r}) lies outside the bin edges [{e[0]:g}, {e[-1]:g}]; expected edges covering every "
                "observation time. Widen the first or last edge."
            )
        edges[name] = e
    pred = None
    if prediction_corrected:
        pred = ctx.pred()
        bad = ~(pred > 0)
        if bad.any():
            o = obs.iloc[int(np.argmax(bad))]
            raise ValueError(
                f"vpc(prediction_corrected=True): PRED is {pred[bad][0]:g} at row {o['row']} (ID {o['ID']}, "
                f"TIME {o['TIME']:g}); prediction correction divides by PRED, so it needs PRED > 0. Drop "
                "such observations (e.g. pre-dose samples) from the data, or use prediction_corrected=False."
            )
    sims = ctx.replicates(n_sim, seed, max_draws)
    lloq, uloq = ctx.limits()
    table = vpc_table(time, output, obs["DV"].to_numpy(), obs["CENS"].to_numpy(), sims, lloq, uloq, edges, pred)
    table.attrs.update(n_sim=len(sims), failed_replicates=n_sim - len(sims),
                       prediction_corrected=prediction_corrected, seed=seed)
    return table
