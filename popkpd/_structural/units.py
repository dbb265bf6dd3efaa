"""Unit helpers for the BCMA x CD3 model family (science.md §0.1).

Drug and binding species are in nmol (amounts) and nM (concentrations); doses given in mg are
converted once, by the user or the drug module, with the molecular weight in kDa.

* 1 mg of a protein of ``mw_kda`` kDa is ``1000 / mw_kda`` nmol (146 kDa: 6.85 nmol).
* 1 ng/mL of a protein of ``mw_kda`` kDa is ``1 / mw_kda`` nM (sBCMA, 5.4 kDa: 0.185 nM).
* ``n`` cells with ``r`` receptors each in ``v`` litres: ``n * r / (N_A * v) * 1e9`` nM.
"""

from __future__ import annotations

import jax
import numpy as np

AVOGADRO = 6.02214076e23
"""Avogadro constant (1/mol, SI defined)."""

SBCMA_MW_KDA = 5.4
"""Molecular weight of soluble BCMA used by popkpd (kDa): the Pfizer elranatamab models' value
(HIBMA26 "1 nM = 5.4 ng/mL"; POELS25 185 pM per ng/mL). The calculated ECD mass is 5.8 kDa and
Western blots run at ~6 kDa (Laurent 2015): pass ``mw_kda=6.0`` to the converters for that scale."""


def _check_positive(value, what: str, fix: str):
    if isinstance(value, jax.core.Tracer):
        return
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr) & (arr > 0)):
        raise ValueError(f"{what}: received {value!r}; expected a finite number > 0. {fix}")


def _check_mw(mw_kda):
    _check_positive(mw_kda, "mw_kda", "Give the molecular weight in kDa, e.g. 146 for teclistamab, 148 for "
                    "elranatamab, SBCMA_MW_KDA (5.4) for sBCMA.")


def mg_to_nmol(mg, mw_kda):
    """Amount in nmol of ``mg`` milligrams of a molecule of ``mw_kda`` kDa (``mg * 1000 / mw_kda``)."""
    _check_mw(mw_kda)
    return mg * 1000.0 / mw_kda


def nmol_to_mg(nmol, mw_kda):
    """Amount in mg of ``nmol`` nanomoles of a molecule of ``mw_kda`` kDa."""
    _check_mw(mw_kda)
    return nmol * mw_kda / 1000.0


def ng_per_ml_to_nm(conc, mw_kda):
    """Concentration in nM of ``conc`` ng/mL of a molecule of ``mw_kda`` kDa (``conc / mw_kda``)."""
    _check_mw(mw_kda)
    return conc / mw_kda


def nm_to_ng_per_ml(conc, mw_kda):
    """Concentration in ng/mL of ``conc`` nM of a molecule of ``mw_kda`` kDa (``conc * mw_kda``)."""
    _check_mw(mw_kda)
    return conc * mw_kda


def receptors_to_nm(cells, receptors_per_cell, volume_l):
    """Receptor concentration (nM) of ``cells`` cells carrying ``receptors_per_cell`` each, in
    ``volume_l`` litres: ``cells * receptors_per_cell / (AVOGADRO * volume_l) * 1e9``."""
    _check_positive(volume_l, "volume_l", "Give the volume in litres (e.g. bone marrow 1.75 L).")
    return cells * receptors_per_cell / (AVOGADRO * volume_l) * 1e9
