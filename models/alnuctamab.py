"""Alnuctamab (CC-93269): "2+1" T-cell bispecific, two BCMA arms (bivalent), one CD3 arm, SC.

``MODEL``: layers L0-L5, ``valency=2`` (sBCMA binding per arm with kd_s; membrane BCMA binding of
drug with both arms free at kd_b / avidity), constant CL, SC depot, shared sink volume. Units: days,
nmol, nM, L. No published PK or KD was found (science.md §1.4): generic IgG priors [E], wide.

==========  ============  ==========  =============================================
parameter   typical       prior       source
==========  ============  ==========  =============================================
cl          0.3 L/day     log 0.5     generic IgG [E]
vc          3.5 L         log 0.3     generic IgG [E]
vp          3.0 L         log 0.5     generic IgG [E]
q           0.3 L/day     log 0.6     generic IgG [E]
ka          0.2 /day      log 0.5     generic SC IgG [E]
f_bio       0.6           logit 0.5   generic SC IgG [E]
kd_s        1 nM (arm)    log 1.5     no data [E]
kd_b        0.18 nM (arm) log 1.5     no data; teclistamab value as anchor [E]
kd_3        28 nM         log 1.0     no data; teclistamab value as anchor [E]
avidity     10            log 1.0     science.md L1 [E]
==========  ============  ==========  =============================================

MW 195 kDa: three Fabs on an Fc (2+1 format) [E]. ``REGIMEN`` (studied SC schedule, phase 1,
[R] not verified: Wong et al. ASH 2022): 3 mg Day 1, 10 mg Day 4, 30 mg weekly from Day 8 to
week 12, then every 2 weeks.
"""

import popkpd

from ._common import priors_for, typical_for

MW_KDA = 195.0
MODEL = popkpd.BCMAModel(layers=5, valency=2)
TYPICAL = typical_for(MODEL, dict(
    cl=0.3, vc=3.5, vp=3.0, q=0.3, ka=0.2, f_bio=0.6, kd_s=1.0, kd_b=0.18, kd_3=28.0, avidity=10.0,
))
PRIORS = priors_for(MODEL, TYPICAL, dict(
    cl=0.5, vc=0.3, vp=0.5, q=0.6, ka=0.5, f_bio=0.5, kd_s=1.5, kd_b=1.5, kd_3=1.0, avidity=1.0,
))


def _sc(mg):
    return popkpd.SC(popkpd.mg_to_nmol(mg, MW_KDA))


REGIMEN = (
    popkpd.Regimen.step_up([(0, _sc(3)), (3, _sc(10))])
    .then_every(7, _sc(30), start=7, end=84)
    .then_every(14, _sc(30), start=84)
)
