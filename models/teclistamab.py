"""Teclistamab (Tecvayli): BCMA x CD3 DuoBody IgG4, one BCMA arm, SC, weight-based dosing.

``MODEL``: layers L0-L5 with CL(t) = cl + cl2 exp(-kdes t) (MIAO23), SC depot, shared sink volume.
Units: days, nmol (1 mg = 1e6/146e3 nmol), nM, L. Shared system parameters: ``models._common``.

==========  ============  ==========  =============================================
parameter   typical       prior       source
==========  ============  ==========  =============================================
cl          0.449 L/day   log 0.2     MIAO23 [S3] (74 kg reference)
cl2         0.547 L/day   log 0.25    MIAO23 [S3]
kdes        0.0292 /day   log 0.2     MIAO23 [S3]
vc          4.13 L        log 0.2     MIAO23 [S3]
vp          1.34 L        log 0.35    MIAO23 [S3]
q           0.039 L/day   log 0.6     MIAO23 [S3] (RSE 55%)
ka          0.133 /day    log 0.2     MIAO23 [S3]
f_bio       0.72          logit 0.3   MIAO23 [S3] / label 0.69 [S]
kd_s        0.5 nM        log 1.2     GEV25 SPR 0.18 nM [S3] + in-vivo gap [E]
kd_b        0.18 nM       log 0.5     GEV25 [S3]
kd_3        28 nM         log 0.4     GEV25 [S3]
==========  ============  ==========  =============================================

``REGIMEN``: SC 0.06 mg/kg Day 1, 0.3 mg/kg Day 4, 1.5 mg/kg weekly from Day 7 [S] (label);
per-kg amounts in nmol/kg, so ``to_events`` needs ``weights=`` (``WEIGHT_KG`` = 74, MIAO23 ref).
"""

import popkpd

from ._common import priors_for, typical_for

MW_KDA = 146.0
WEIGHT_KG = 74.0
MODEL = popkpd.BCMAModel(layers=5, clearance="exponential")
TYPICAL = typical_for(MODEL, dict(
    cl=0.449, cl2=0.547, kdes=0.0292, vc=4.13, vp=1.34, q=0.039, ka=0.133, f_bio=0.72,
    kd_s=0.5, kd_b=0.18, kd_3=28.0,
))
PRIORS = priors_for(MODEL, TYPICAL, dict(
    cl=0.2, cl2=0.25, kdes=0.2, vc=0.2, vp=0.35, q=0.6, ka=0.2, f_bio=0.3, kd_s=1.2, kd_b=0.5, kd_3=0.4,
))


def _sc(mg_per_kg):
    return popkpd.SC(popkpd.mg_to_nmol(mg_per_kg, MW_KDA), per_kg=True)


REGIMEN = popkpd.Regimen.step_up([(0, _sc(0.06)), (3, _sc(0.3))]).then_every(7, _sc(1.5), start=6)
