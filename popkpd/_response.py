"""IMWG response categories from serum M-protein trajectories (science.md §3.5).

The model-based mapping of the IMWG criteria (Kumar et al. 2016), applied at assessment visits:

==========  ===========================================================================
category    at one visit (M = serum M-protein, M0 = baseline, nadir = lowest value so far)
==========  ===========================================================================
CR          M < ``cr_limit`` (default 0.05 g/L = 0.005 g/dL, an immunofixation-negative proxy)
VGPR        M / M0 <= 0.10
PR          M / M0 <= 0.50
MR          M / M0 <= 0.75
PD          M - nadir >= 25 % of nadir and >= 5 g/L (>= 10 g/L when nadir >= 50 g/L)
SD          otherwise
==========  ===========================================================================

PD is checked first (a rise from the nadir overrides the ratio to baseline). A category is
*confirmed* at a visit when the next visit is at least as good (IMWG: two consecutive
assessments); the confirmed level at visit k is the worse of visits k and k + 1, so the last
visit can confirm but not be confirmed. The best response is the best confirmed level over the
visits. Decisions [E]: the bone-marrow and FLC parts of CR/sCR and urine criteria are not modelled
(the model has no marrow biopsy or urine); SD needs no minimum duration; "best" is taken over
confirmed levels, so one isolated PD visit followed by SD is not PD.

Everything is written in ``jax.numpy`` so it runs inside ``jit``/``vmap`` and on GPU; inputs may be
numpy arrays. Units: M-protein in g/L (the BCMA model's ``m_protein`` output), times in days.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

RESPONSE_CATEGORIES = ("PD", "SD", "MR", "PR", "VGPR", "CR")
"""Response categories, worst to best; ``Response`` arrays hold indices into this tuple."""


class Response(NamedTuple):
    """IMWG response of S subjects at V visits (see the module docstring)."""

    visits: jax.Array
    """[V] assessment times (days)."""
    visit_category: jax.Array
    """[S, V] unconfirmed category index at each visit."""
    best: jax.Array
    """[S] best confirmed category index."""
    first_response_time: jax.Array
    """[S] time of the first visit with a confirmed response >= PR (days); NaN if none."""

    def at_least(self, category: str) -> jax.Array:
        """[S] bool: best confirmed response at least ``category`` (e.g. ``"PR"`` for ORR)."""
        return self.best >= category_index(category)

    def rate(self, category: str) -> jax.Array:
        """Fraction of subjects whose best confirmed response is at least ``category``."""
        return jnp.mean(self.at_least(category))


def category_index(category: str) -> int:
    """Index of ``category`` in ``RESPONSE_CATEGORIES``."""
    if category not in RESPONSE_CATEGORIES:
        raise ValueError(
            f"Unknown response category {category!r}; expected one of {RESPONSE_CATEGORIES} "
            "(IMWG, worst to best)."
        )
    return RESPONSE_CATEGORIES.index(category)


def _visit_categories(m, baseline, cr_limit):
    """[V] category indices for one subject's M-protein at the visits ``m`` [V]."""
    ratio = m / baseline
    nadir = jnp.minimum(baseline, jax.lax.cummin(m))
    nadir_before = jnp.concatenate([baseline[None], nadir[:-1]])
    rise = m - nadir_before
    pd = (rise >= 0.25 * nadir_before) & (rise >= jnp.where(nadir_before >= 50.0, 10.0, 5.0))
    cat = jnp.select(
        [pd, m < cr_limit, ratio <= 0.10, ratio <= 0.50, ratio <= 0.75],
        [0, 5, 4, 3, 2],
        default=1,
    )
    return cat


def imwg_response(times, m_protein, *, visits=None, baseline=None, cr_limit: float = 0.05,
                  confirm: bool = True) -> Response:
    """IMWG response categories of M-protein trajectories assessed at ``visits``.

    Args:
        times: [T] increasing times (days) at which ``m_protein`` is given.
        m_protein: [S, T] (or [T] for one subject) serum M-protein (g/L), e.g. the BCMA model's
            ``m_protein`` output.
        visits: [V] assessment times (days); values are interpolated linearly in ``times``.
            Default: every 28 days from day 28 to the last time (monthly assessments).
        baseline: [S] baseline M-protein (g/L); default the value at ``times[0]``.
        cr_limit: M-protein below which a visit counts as CR (g/L; 0.05 g/L = 0.005 g/dL).
        confirm: require confirmation at the next visit (IMWG); ``False`` uses single visits.
    """
    times = np.asarray(times, dtype=float)
    m_protein = jnp.asarray(m_protein, dtype=float)
    single = m_protein.ndim == 1
    m_protein = m_protein[None] if single else m_protein
    if times.ndim != 1 or m_protein.ndim != 2 or m_protein.shape[1] != times.shape[0]:
        raise ValueError(
            f"imwg_response: received times of shape {times.shape} and m_protein of shape "
            f"{tuple(m_protein.shape)}; expected times [T] and m_protein [S, T] (or [T]) with the same T. "
            "Pass the M-protein output at the times it was simulated."
        )
    if np.any(np.diff(times) <= 0):
        raise ValueError("imwg_response: times must be strictly increasing; sort them (and m_protein with them).")
    if visits is None:
        visits = np.arange(28.0, times[-1] + 1e-9, 28.0)
    visits = np.asarray(visits, dtype=float)
    if visits.ndim != 1 or visits.size == 0 or np.any(np.diff(visits) <= 0):
        raise ValueError(
            f"imwg_response: received visits {visits!r}; expected a non-empty, strictly increasing 1-D "
            "array of assessment times (days)."
        )
    if visits[0] < times[0] or visits[-1] > times[-1]:
        raise ValueError(
            f"imwg_response: visits span [{visits[0]}, {visits[-1]}] days but M-protein is given on "
            f"[{times[0]}, {times[-1]}]; simulate over the whole assessment period or drop the visits outside it."
        )
    if baseline is None:
        baseline = m_protein[:, 0]
    baseline = jnp.broadcast_to(jnp.asarray(baseline, dtype=float), m_protein.shape[:1])

    m_visits = jax.vmap(lambda m: jnp.interp(visits, times, m))(m_protein)
    cat = jax.vmap(_visit_categories, in_axes=(0, 0, None))(m_visits, baseline, cr_limit)
    if confirm:
        if visits.size < 2:
            raise ValueError(
                f"imwg_response: received one visit ({visits[0]} days); confirmation needs two consecutive "
                "assessments. Pass at least two visits, or confirm=False."
            )
        level, level_times = jnp.minimum(cat[:, :-1], cat[:, 1:]), visits[:-1]
    else:
        level, level_times = cat, visits
    best = jnp.max(level, axis=1)
    responded = level >= category_index("PR")
    first = jnp.where(jnp.any(responded, axis=1), jnp.asarray(level_times)[jnp.argmax(responded, axis=1)], jnp.nan)
    if single:
        return Response(jnp.asarray(visits), cat[0], best[0], first[0])
    return Response(jnp.asarray(visits), cat, best, first)
