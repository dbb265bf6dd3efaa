"""Trial summaries (response, CRS, sBCMA, PK) and the side-by-side table simulated vs published.

``summarise_trial`` reads a ``SimulatedTrial``'s noise-free trajectories (the "true" course of
each virtual patient, as a trial's adjudicated endpoints would be) and returns plain numbers:

* IMWG best confirmed response from M-protein at the design's assessment visits
  (``popkpd._response.imwg_response``): ORR (>= PR), >= VGPR, >= CR; median time to first
  confirmed response among responders (months of 30.4375 days);
* CRS (drawn per dosing interval from ``crs_probability`` of the serum IL-6 peak): the fraction
  of patients with CRS in the interval after step-up dose 1, step-up dose 2 and the first full dose,
  with CRS in any of the first ``CRS_WINDOW`` intervals (``crs_any``) and in any interval up to the
  horizon (``crs_all``; the IL-6 logistic gives every interval a floor probability at basal IL-6);
* median baseline sBCMA (ng/mL) in responders and non-responders; ORR at baseline sBCMA above and
  at or below the design's threshold;
* PK at time points (``PKTimepoint``), from the drug concentration in ng/mL or ug/mL.

``compare`` puts a summary next to published ``Target``s with the tolerance each is held to:

* ``"rate"``: a proportion from a trial of ``n_published`` patients against the simulated trial of
  ``n`` patients; tolerance = 1.96 sqrt(p_pub (1 - p_pub) / n_pub + p_sim (1 - p_sim) / n_sim),
  the 95 % half-width of the difference of two independent binomial proportions (both trials
  carry sampling error);
* ``"ratio"``: within a factor ``tolerance`` (medians and mean PK, whose sampling error in the
  published trial is not reported);
* ``"absolute"``: within +- ``tolerance`` (same unit as the value);
* ``"lower"``: qualitative, the simulated value must be below the summary value named by
  ``tolerance`` (e.g. ORR above the sBCMA threshold below ORR under it).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd

from .._response import RESPONSE_CATEGORIES, category_index, imwg_response
from .design import SimulatedTrial

MONTH = 30.4375
"""Days per month."""
CRS_WINDOW = 4
"""``crs_any`` counts CRS in the first four dosing intervals (two step-up doses, first two full
doses), where published CRS occurs; ``crs_all`` counts every interval up to the horizon."""
Z95 = 1.959963984540054
"""Two-sided 95 % standard normal quantile."""


class PKTimepoint(NamedTuple):
    """A PK summary: ``statistic`` of ``output`` per patient ("value" at ``start``, "average" or
    "peak" over [``start``, ``end``], days), aggregated over patients by ``aggregate`` ("mean",
    "geomean" or "median"), in ``unit`` ("ug/mL" or "ng/mL")."""

    label: str
    output: str
    statistic: str
    start: float
    end: float | None = None
    aggregate: str = "mean"
    unit: str = "ug/mL"


class Target(NamedTuple):
    """A published value: ``key`` of the summary, ``label``, ``published`` value (None if only
    qualitative), ``n_published`` (trial size, for rates), ``kind`` and ``tolerance`` (see the
    module docstring), ``source`` (science.md key and tag)."""

    key: str
    label: str
    published: float | None
    n_published: int | None
    kind: str
    tolerance: float | str | None
    source: str


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion ``k / n``."""
    if n <= 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _pk_value(trial: SimulatedTrial, tp: PKTimepoint) -> float:
    scale = trial.design.mw_kda * (1.0 if tp.unit == "ng/mL" else 1e-3)
    values = trial.outputs[tp.output] * scale
    t = trial.times
    if tp.statistic == "value":
        per_patient = trial.at(tp.output, tp.start) * scale
    else:
        keep = (t >= tp.start - 1e-9) & (t <= tp.end + 1e-9)
        if keep.sum() < 2:
            raise ValueError(f"PKTimepoint {tp.label!r}: received the window [{tp.start}, {tp.end}] days, which holds "
                             "fewer than two times of the truth grid; expected a window spanning at least two grid "
                             "times (0.1 day apart to day 21, then daily). Widen the window.")
        if tp.statistic == "average":
            per_patient = np.trapezoid(values[:, keep], t[keep], axis=1) / (t[keep][-1] - t[keep][0])
        elif tp.statistic == "peak":
            per_patient = values[:, keep].max(axis=1)
        else:
            raise ValueError(f"PKTimepoint {tp.label!r}: received statistic={tp.statistic!r}; expected "
                             "'value', 'average' or 'peak'.")
    if tp.aggregate == "mean":
        return float(np.mean(per_patient))
    if tp.aggregate == "geomean":
        return float(np.exp(np.mean(np.log(per_patient))))
    if tp.aggregate == "median":
        return float(np.median(per_patient))
    raise ValueError(f"PKTimepoint {tp.label!r}: received aggregate={tp.aggregate!r}; expected 'mean', "
                     "'geomean' or 'median'.")


def responses(trial: SimulatedTrial):
    """IMWG ``Response`` of every patient (noise-free M-protein at the design's visits)."""
    return imwg_response(trial.times, trial.outputs["m_protein"], visits=trial.design.assessment_times())


def summarise_trial(trial: SimulatedTrial, pk_timepoints=()) -> dict:
    """Plain-number summary of a simulated trial (see the module docstring). Keys: ``n``, ``orr``,
    ``vgpr``, ``cr`` (fractions) and ``n_orr``, ``n_vgpr``, ``n_cr``; ``ttr_months``;
    ``crs_sud1``, ``crs_sud2``, ``crs_full1``, ``crs_any``, ``crs_all`` and ``n_crs_*``; ``sbcma_responders``,
    ``sbcma_nonresponders`` (ng/mL); ``orr_above``, ``orr_below``, ``n_above``, ``n_below``;
    ``best`` (list of best-response names); one key per PK time point label."""
    resp = responses(trial)
    best = np.asarray(resp.best)
    n = trial.n
    out: dict = {"n": n, "best": [RESPONSE_CATEGORIES[b] for b in best]}
    for key, cat in (("orr", "PR"), ("vgpr", "VGPR"), ("cr", "CR")):
        k = int((best >= category_index(cat)).sum())
        out[f"n_{key}"], out[key] = k, k / n
    responder = best >= category_index("PR")
    first = np.asarray(resp.first_response_time)
    out["ttr_months"] = float(np.median(first[responder]) / MONTH) if responder.any() else math.nan
    events = trial.crs_event
    for j, key in enumerate(("crs_sud1", "crs_sud2", "crs_full1")):
        out[f"n_{key}"] = int(events[:, j].sum())
        out[key] = out[f"n_{key}"] / n
    out["n_crs_any"] = int(events[:, :CRS_WINDOW].any(axis=1).sum())
    out["crs_any"] = out["n_crs_any"] / n
    out["n_crs_all"] = int(events.any(axis=1).sum())
    out["crs_all"] = out["n_crs_all"] / n
    sbcma = trial.covariates["sbcma"].to_numpy()
    out["sbcma_responders"] = float(np.median(sbcma[responder])) if responder.any() else math.nan
    out["sbcma_nonresponders"] = float(np.median(sbcma[~responder])) if (~responder).any() else math.nan
    above = sbcma > trial.design.sbcma_threshold
    out["n_above"], out["n_below"] = int(above.sum()), int((~above).sum())
    out["orr_above"] = float(responder[above].mean()) if above.any() else math.nan
    out["orr_below"] = float(responder[~above].mean()) if (~above).any() else math.nan
    for tp in pk_timepoints:
        out[tp.label] = _pk_value(trial, tp)
    return out


def compare(summary: dict, targets) -> pd.DataFrame:
    """Side-by-side table: label, published, simulated, simulated 95 % interval (rates: Wilson),
    tolerance, within (bool), source. See the module docstring for the tolerance of each kind."""
    rows = []
    n = summary["n"]
    for t in targets:
        if t.key not in summary:
            raise ValueError(f"compare: target {t.label!r} names the summary key {t.key!r}, which the summary "
                             f"does not have; expected one of {sorted(k for k in summary if k != 'best')}.")
        sim = summary[t.key]
        interval, tol_text, within = "", "", False
        if t.kind == "rate":
            n_sim = n if t.key in ("orr", "vgpr", "cr") or t.key.startswith("crs") else None
            if t.key == "orr_above":
                n_sim = summary["n_above"]
            elif t.key == "orr_below":
                n_sim = summary["n_below"]
            lo, hi = wilson_interval(round(sim * n_sim), n_sim) if n_sim else (math.nan, math.nan)
            interval = f"{lo:.2f}-{hi:.2f}"
            p = t.published
            tol = Z95 * math.sqrt(p * (1 - p) / t.n_published + sim * (1 - sim) / max(n_sim, 1))
            tol_text = f"+-{tol:.3f} (two-sample 95%, n={t.n_published} vs {n_sim})"
            within = abs(sim - p) <= tol
        elif t.kind == "ratio":
            tol_text = f"factor {t.tolerance:g}"
            within = bool(sim > 0 and abs(math.log(sim / t.published)) <= math.log(t.tolerance))
        elif t.kind == "absolute":
            tol_text = f"+-{t.tolerance:g}"
            within = abs(sim - t.published) <= t.tolerance
        elif t.kind == "lower":
            tol_text = f"< {t.tolerance} ({summary[t.tolerance]:.3g})"
            within = bool(sim < summary[t.tolerance])
        else:
            raise ValueError(f"compare: target {t.label!r} has kind={t.kind!r}; expected 'rate', 'ratio', "
                             "'absolute' or 'lower'.")
        rows.append({"target": t.label, "published": t.published, "simulated": sim, "simulated 95% CI": interval,
                     "tolerance": tol_text, "within": bool(within), "source": t.source})
    return pd.DataFrame(rows)
