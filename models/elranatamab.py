"""Elranatamab (Elrexfio): humanized IgG2, one BCMA arm, SC, flat dosing.

``MODEL``: layers L0-L5, constant CL, SC depot, ``sink_volumes="separate"`` (free drug, free sBCMA
and complex with their own volumes, HIBMA26). Units: days, nmol (1 mg = 1e6/148e3 nmol), nM, L.
The sink disposition is HIBMA26's joint fit of free/total drug and sBCMA: k_s = CL_s/V_s =
0.273/15.418 /day and k_x = 0.164/3.802 /day. science.md (§1.2 caveat) warns that this implies a
39-day apparent sBCMA half-life against a measured 24-36 h; the prior on k_s is therefore wide
(log-SD 2.0 reaches the mechanistic 0.55 /day at 1.7 sd). Shared system parameters: ``_common``.

==========  ==================  ==========  ==========================================
parameter   typical             prior       source
==========  ==================  ==========  ==========================================
cl          0.324 L/day         log 0.25    HIBMA26 / USPI [S3]
vc          4.777 L             log 0.2     HIBMA26 [S3]
vp          2.83 L              log 0.5     HIBMA26 [S3]; POELS25 7.8 L conflicts (wide)
q           0.225 L/day         log 0.4     HIBMA26 [S3]
ka          0.287 /day          log 0.3     HIBMA26 [S3]
f_bio       0.562               logit 0.3   HIBMA26 / label [S]
kd_s        3.138 nM            log 0.3     HIBMA26 in vivo [S3]
k_s         0.0177 /day         log 2.0     HIBMA26 0.273 L/day / 15.418 L [S3] (conflict, see above)
k_x         0.0431 /day         log 0.4     HIBMA26 0.164 L/day / 3.802 L [S3]
s0          6.914 nM            log 1.35    HIBMA26 [S3]
v_s         15.418 L            log 0.5     HIBMA26 [S3]
v_x         3.802 L             log 0.5     HIBMA26 [S3]
kd_b        0.03 nM             log 0.7     POELS25 kinetics [S3]
kd_3        41.5 nM             log 0.5     POELS25 [S3]
==========  ==================  ==========  ==========================================

``REGIMEN``: SC 12 mg Day 1, 32 mg Day 4, 76 mg weekly from Day 8, every 2 weeks from week 25,
every 4 weeks from week 49 [S] (label; regimen.py docstring).
"""

import popkpd

from ._common import priors_for, typical_for

MW_KDA = 148.0
MODEL = popkpd.BCMAModel(layers=5, sink_volumes="separate")
TYPICAL = typical_for(MODEL, dict(
    cl=0.324, vc=4.777, vp=2.83, q=0.225, ka=0.287, f_bio=0.562,
    kd_s=3.138, k_s=0.273 / 15.418, k_x=0.164 / 3.802, s0=6.914, v_s=15.418, v_x=3.802,
    kd_b=0.03, kd_3=41.5,
))
PRIORS = priors_for(MODEL, TYPICAL, dict(
    cl=0.25, vc=0.2, vp=0.5, q=0.4, ka=0.3, f_bio=0.3, kd_s=0.3, k_s=2.0, k_x=0.4, s0=1.35,
    v_s=0.5, v_x=0.5, kd_b=0.7, kd_3=0.5,
))


def _sc(mg):
    return popkpd.SC(popkpd.mg_to_nmol(mg, MW_KDA))


REGIMEN = (
    popkpd.Regimen.step_up([(0, _sc(12)), (3, _sc(32))])
    .then_every(7, _sc(76), start=7)
    .switch_interval(14, at=168)
    .switch_interval(28, at=336)
)
