"""Layer L5 read-out: probability of cytokine release syndrome (CRS) per dosing interval.

Two logistic forms (science.md §2, L5):

* IL-6 form:   P(CRS >= G1 in an interval) = expit(a0 + a1 ln(IL6_peak) + a2 [high burden]),
  with IL6_peak the largest serum IL-6 (pg/mL) of the model within the interval
  (``peak_per_interval``). Priors [E]: a1 ~ N(1.3, 0.5), a2 ~ N(1.1, 0.5), a0 calibrated.
* Exposure form of HIBMA26 (elranatamab, after step-up dose 1 only):
  logit P = -7.65 + 1.35 ln(free C_trough on day 4, ng/mL) + 1.14 [high tumour burden]  [S3],
  high tumour burden = BMPC >= 80 % or M-spike >= 5 g/dL or sFLC >= 5000 mg/L.

Coefficients are ``(a0, a1, a2)`` = (intercept, slope on the log of the driver, high-burden
effect), in that order, as a length-3 sequence or an array whose last axis has length 3 (so that
posterior draws broadcast).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._events import host_readable

HIBMA26_CRS_COEFS = (-7.65, 1.35, 1.14)
"""HIBMA26 (elranatamab) CRS after step-up dose 1: intercept, slope on ln(free C_trough day 4 in
ng/mL), high tumour burden. N = 183, 79 events, AUROC 0.746 [S3]."""


def crs_probability(il6_peak, high_burden, coefs):
    """P(CRS of any grade within a dosing interval) = expit(a0 + a1 ln(il6_peak) + a2 high_burden).

    Args:
        il6_peak: peak serum IL-6 in the interval, pg/mL (> 0); or any positive exposure driver.
        high_burden: 1 for high tumour burden, 0 otherwise (a probability in [0, 1] is allowed).
        coefs: (a0, a1, a2); an array with last axis 3 broadcasts against the inputs.
    """
    c = jnp.asarray(coefs, dtype=float)
    if c.ndim == 0 or c.shape[-1] != 3:
        raise ValueError(
            f"crs_probability coefs: received shape {c.shape}; expected 3 coefficients (a0, a1, a2) = "
            "(intercept, slope on ln IL-6 peak, high-burden effect) on the last axis. "
            "E.g. coefs=(-4.0, 1.3, 1.1), or HIBMA26_CRS_COEFS for the elranatamab exposure form."
        )
    if host_readable(il6_peak):
        x = np.asarray(il6_peak, dtype=float)
        if not np.all(np.isfinite(x) & (x > 0)):
            raise ValueError(
                f"crs_probability il6_peak: received {il6_peak!r}; expected finite values > 0 (pg/mL). "
                "A peak of 0 has no logarithm: use the basal IL-6 level as the floor."
            )
    if host_readable(high_burden):
        h = np.asarray(high_burden, dtype=float)
        if not np.all((h >= 0) & (h <= 1)):
            raise ValueError(
                f"crs_probability high_burden: received {high_burden!r}; expected 0 (no) or 1 (yes), or a "
                "probability in [0, 1]."
            )
    logit = c[..., 0] + c[..., 1] * jnp.log(il6_peak) + c[..., 2] * high_burden
    return jax.nn.sigmoid(logit)


def crs_probability_elranatamab(free_ctrough_day4_ng_ml, high_burden):
    """HIBMA26 exposure form: P(any-grade CRS after elranatamab step-up dose 1) from the free
    elranatamab trough on day 4 (ng/mL; 1 nM = 148 ng/mL) and high tumour burden (0/1)."""
    return crs_probability(free_ctrough_day4_ng_ml, high_burden, HIBMA26_CRS_COEFS)


def peak_per_interval(times, values, boundaries):
    """Largest value in each interval ``[boundaries[k], boundaries[k+1])`` (the last interval is
    ``[boundaries[-1], inf)``); NaN where an interval holds no time point.

    Args:
        times: [T] sorted sample times; values: [..., T] e.g. serum IL-6 at ``times``.
        boundaries: [K] interval starts, e.g. the dose times.
    Returns:
        [..., K] peaks.
    """
    times = jnp.asarray(times)
    boundaries = jnp.asarray(boundaries)
    ends = jnp.concatenate([boundaries[1:], jnp.array([jnp.inf])])
    inside = (times[None, :] >= boundaries[:, None]) & (times[None, :] < ends[:, None])  # [K, T]
    v = jnp.asarray(values)[..., None, :]
    peak = jnp.where(inside, v, -jnp.inf).max(axis=-1)
    return jnp.where(inside.any(axis=-1), peak, jnp.nan)
