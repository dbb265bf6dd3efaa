"""Linvoseltamab (Lynozyfic): BCMA x CD3, one BCMA arm, IV infusion, flat dosing.

``MODEL``: layers L0-L5, constant CL, ``absorption=False`` (no depot: central is the first state,
doses are ``Infusion`` into ``"central"``), shared sink volume. Units: days, nmol, nM, L.
No published PK, KD or MW was found (science.md §1.3): generic IgG priors [E], wide.

==========  ============  ==========  =============================================
parameter   typical       prior       source
==========  ============  ==========  =============================================
cl          0.3 L/day     log 0.5     generic IgG [E]
vc          3.5 L         log 0.3     generic IgG [E]
vp          3.0 L         log 0.5     generic IgG [E]
q           0.3 L/day     log 0.6     generic IgG [E]
kd_s        1 nM          log 1.5     no data [E]
kd_b        0.18 nM       log 1.5     no data; teclistamab value as anchor [E]
kd_3        50 nM         log 1.0     "low-affinity CD3" design [R]/[E]
==========  ============  ==========  =============================================

MW 146 kDa is an IgG-like assumption [E]. ``REGIMEN``: IV 5 mg Day 1 (4 h), 25 mg Day 8 (4 h),
200 mg Day 15 and weekly for 10 more doses (weeks 4-13), then every 2 weeks from week 14 [S]
(label; the 1 h infusion of the later doses is illustrative).
"""

import popkpd

from ._common import priors_for, typical_for

MW_KDA = 146.0
MODEL = popkpd.BCMAModel(layers=5, absorption=False)
TYPICAL = typical_for(MODEL, dict(cl=0.3, vc=3.5, vp=3.0, q=0.3, kd_s=1.0, kd_b=0.18, kd_3=50.0))
PRIORS = priors_for(MODEL, TYPICAL, dict(cl=0.5, vc=0.3, vp=0.5, q=0.6, kd_s=1.5, kd_b=1.5, kd_3=1.0))


def _iv(mg, hours):
    return popkpd.Infusion(popkpd.mg_to_nmol(mg, MW_KDA), duration=hours / 24)


REGIMEN = (
    popkpd.Regimen.step_up([(0, _iv(5, 4)), (7, _iv(25, 4))])
    .then_every(7, _iv(200, 1), start=14, count=11)
    .then_every(14, _iv(200, 1), start=91)
)
