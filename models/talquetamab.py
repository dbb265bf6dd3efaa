"""Talquetamab (Talvey): GPRC5D x CD3 comparator, SC, weight-based. GPRC5D is not shed: NO soluble
sink, so ``MODEL`` has layers (0, 2, 3, 5) (no L1, no L4: GSI acts on BCMA shedding only).

The BCMA-named L2 parameters are read as GPRC5D: ``r_b0`` = GPRC5D per tumour cell, ``kd_b`` =
drug:GPRC5D KD. Units: days, nmol, nM, L. Not in science.md; everything here is [E]/[R] with wide
priors (generic IgG PK).

==========  ============  ==========  =============================================
parameter   typical       prior       source
==========  ============  ==========  =============================================
cl          0.3 L/day     log 0.5     generic IgG [E]
vc          3.5 L         log 0.3     generic IgG [E]
vp          3.0 L         log 0.5     generic IgG [E]
q           0.3 L/day     log 0.6     generic IgG [E]
ka          0.2 /day      log 0.5     generic SC IgG [E]
f_bio       0.6           logit 0.5   generic SC IgG [E]
kd_b        0.18 nM       log 1.5     no data [E]
kd_3        28 nM         log 1.0     no data [E]
r_b0        5000 /cell    log 1.5     GPRC5D density unknown [E]
==========  ============  ==========  =============================================

MW 146 kDa (IgG4 bispecific) [R]. ``REGIMEN`` (label weekly schedule [R], not in science.md):
SC 0.01 mg/kg Day 1, 0.06 mg/kg Day 4, 0.4 mg/kg Day 7, then 0.4 mg/kg weekly.
"""

import popkpd

from ._common import priors_for, typical_for

MW_KDA = 146.0
WEIGHT_KG = 74.0
MODEL = popkpd.BCMAModel(layers=(0, 2, 3, 5))
TYPICAL = typical_for(MODEL, dict(cl=0.3, vc=3.5, vp=3.0, q=0.3, ka=0.2, f_bio=0.6, kd_b=0.18, kd_3=28.0))
PRIORS = priors_for(MODEL, TYPICAL, dict(
    cl=0.5, vc=0.3, vp=0.5, q=0.6, ka=0.5, f_bio=0.5, kd_b=1.5, kd_3=1.0, r_b0=1.5,
))


def _sc(mg_per_kg):
    return popkpd.SC(popkpd.mg_to_nmol(mg_per_kg, MW_KDA), per_kg=True)


REGIMEN = popkpd.Regimen.step_up([(0, _sc(0.01)), (3, _sc(0.06))]).then_every(7, _sc(0.4), start=6)
