"""Layer L2: membrane BCMA / CD3 trimers (immune synapses) in the bone marrow (science.md §2, L2).

Concentrations are nM in the bone-marrow volume ``v_bm``: total membrane BCMA
``B = R_B N / (N_A v_bm) 1e9`` and total CD3 ``T = R_CD3 E / (N_A v_bm) 1e9``.

Drug species seen in the marrow (all with a free CD3 arm):

* ``c_full``: drug with all its BCMA arms free of sBCMA; binds membrane BCMA with ``kd_b_full``
  (``kd_b`` for a monovalent drug; ``kd_b / avidity`` for a bivalent one);
* ``c_part``: bivalent drug with one arm carrying sBCMA; binds membrane BCMA monovalently (``kd_b``);
* ``c_cd3``: all drug with a free CD3 arm (the above plus sBCMA-neutralised drug), which competes for
  CD3.

**Option A** (``trimer_qe``, the default): quasi-equilibrium of the binding scheme below, with
receptor conservation and no depletion of drug by receptors. With binding weights
``a = c_full/kd_b_full + c_part/kd_b`` (BCMA arm) and ``u = c_cd3/kd_3`` (CD3 arm)::

    B = B_free (1 + a) + Tri,   T = T_free (1 + u) + Tri,   Tri = (chi/kd_3) a B_free T_free
    =>  Tri^2 - (B + T + K) Tri + B T = 0,   K = (1 + a)(1 + u) kd_3 / (chi a)
    Tri = 2 B T / (B + T + K + sqrt((B + T + K)^2 - 4 B T))          (the root <= min(B, T))

When trimers are few compared with B and T (B + T << K) this is science.md's formula
``Tri = chi B T a / ((1 + a)(1 + u) kd_3)``, i.e. for a monovalent drug without sBCMA
``chi B T C / ((K_B + C)(K_3 + C))``, bell-shaped in C with its peak at sqrt(K_B K_3). The exact
root keeps trimers below the receptor numbers when chi is large (science.md's prior on chi reaches
far into that regime). ``chi`` is the cross-linking enhancement of the second arm's binding in the
2-D synapse (chi = 1: bulk binding). Competition of sBCMA-bound drug for CD3 (``c_cd3 > c_full``;
the "useless trimers" of GEV25) is an addition to science.md's formula; it vanishes without sBCMA.

**Option B** (``mass_action_rates``): explicit binding kinetics, monovalent drug, states as
fractions of the receptors (so that tumour and T-cell numbers can change underneath them)::

    u_B  drug-BCMA dimers / B            u_T  productive trimers / B
    w_3  drug-CD3 dimers / T             w_U  drug-sBCMA-CD3 "useless trimers" / T
    free fractions  b_f = 1 - u_B - u_T,   t_f = 1 - w_3 - w_U - u_T B/T

    R1  C + B_free    <-> dimer_B    kon_b C B b_f          - koff_b B u_B
    R2  C + T_free    <-> dimer_3    kon_3 C T t_f          - koff_3 T w_3
    R3  dimer_B + T_f <-> trimer     chi kon_3 B u_B T t_f  - koff_3 B u_T
    R4  dimer_3 + B_f <-> trimer     chi kon_b T w_3 B b_f  - koff_b B u_T
    R5  Cx + T_free   <-> useless    kon_3 Cx T t_f         - koff_3 T w_U
    (kon = koff / kd; the cycle R1 R3 = R2 R4 satisfies detailed balance)

Its equilibrium (Tri = chi B_free T_free C / (kd_b kd_3) with both receptors conserved) is
option A's closed form, with c_full = C, c_part = 0 and c_cd3 = C + Cx.
"""

from __future__ import annotations

import jax.numpy as jnp


def trimers_per_pair(c_full, c_part, c_cd3, kd_b_full, kd_b, kd_3, chi, bcma_conc, cd3_conc):
    """Tri / (B T) at QE, option A (1/nM); finite for any B, T >= 0. See the module docstring."""
    a = c_full / kd_b_full + c_part / kd_b
    w = chi / kd_3 * a
    d = (1.0 + a) * (1.0 + c_cd3 / kd_3)
    b = w * (bcma_conc + cd3_conc) + d
    # b^2 - 4 w^2 B T without cancellation
    disc = (w * (bcma_conc - cd3_conc)) ** 2 + d * (2.0 * w * (bcma_conc + cd3_conc) + d)
    return 2.0 * w / (b + jnp.sqrt(disc))


def trimer_qe(c_full, c_part, c_cd3, kd_b_full, kd_b, kd_3, chi, bcma_conc, cd3_conc):
    """Trimer concentration (nM in the marrow) at QE, option A. See the module docstring."""
    pair = trimers_per_pair(c_full, c_part, c_cd3, kd_b_full, kd_b, kd_3, chi, bcma_conc, cd3_conc)
    return pair * bcma_conc * cd3_conc


def mass_action_rates(c, cx, u_b, u_t, w_3, w_u, bcma_conc, cd3_conc, kd_b, kd_3, koff_b, koff_3, chi):
    """Option B. Returns (drug_binding, du_b, du_t, dw_3, dw_u): the free drug consumed by binding
    (nM/day) and the time derivatives of the four receptor fractions (1/day)."""
    kon_b, kon_3 = koff_b / kd_b, koff_3 / kd_3
    ratio = bcma_conc / cd3_conc  # B/T
    b_free = 1.0 - u_b - u_t
    t_free = 1.0 - w_3 - w_u - u_t * ratio
    r1 = kon_b * c * b_free - koff_b * u_b  # per B
    r2 = kon_3 * c * t_free - koff_3 * w_3  # per T
    r3 = chi * kon_3 * u_b * cd3_conc * t_free - koff_3 * u_t  # per B
    r4 = chi * kon_b * w_3 * cd3_conc * b_free - koff_b * u_t  # per B
    r5 = kon_3 * cx * t_free - koff_3 * w_u  # per T
    drug_binding = bcma_conc * r1 + cd3_conc * r2
    return drug_binding, r1 - r3, r3 + r4, r2 - r4 * ratio, r5
