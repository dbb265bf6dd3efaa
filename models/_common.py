"""Typical system parameters shared by every drug model (science.md §1.5, §2 L1-L5).

Units: days, nmol, nM, L, cells; IL-6 in pg/mL. ``COMMON_TYPICAL`` holds the typical values,
``COMMON_PRIORS`` the priors (median = typical value). Tags as in science.md: [S] read from a source,
[S3] third-party transcription, [E] estimate proposed for popkpd.

=============  ==================  ============  ==============================================
parameter      typical             prior sd      source
=============  ==================  ============  ==============================================
k_s            0.55 /day           log 0.3       sBCMA t1/2 24-36 h [S] Berenson; POELS25 [S3]
k_x            0.043 /day          log 0.4       HIBMA26 complex kel [S3]
s0             45 ng/mL = 8.33 nM  log 1.35      HIBMA26 median 8.29 nM, IIV 135% [S3]
p_bm           0.5                 log 0.7       [E]
x_sbm          9 (marrow 10x)      log 1.0       [E] shedding is in the marrow (LAURENT15 [S]); sBCMA
                                                 accumulates in BM (PONT19 [S], not quantified);
                                                 value set with tau50_n so that 800 ng/mL abrogates
                                                 teclistamab (LEE24 [S]), see docs/mechanisms.md
v_bm           1.75 L              log 0.4       POELS25 [S3]
r_b0           5000 /cell          log 1.0       2,000 (CAM26) - 12,590 (POELS25) [S3]
r_cd3          60000 /cell         log 0.5       30k-100k [S3]
n0             6.55e9 cells        log 1.0       CAM26 [S3]
e0             1.8e9 cells         log 1.0       CAM26 9e8 CD4 + 9e8 CD8 [S3] (E:T 0.27)
chi            100                 log 2.0       [E]
kg             0.008 /day          log 1.0       POELS25 [S3]
nmax_rel       10                  log 1.0       [E]
kmax           0.5 /day            log 0.8       POELS25 0.48 /day [S3]
s_et           0.25 (kmax/s_et=2)  log 0.7       1-20 kills/CTL/day [S] Weigelin 2021
tau50_n        24 /cell            log 1.5       LI22 threshold 24 trimers/cell [S3]
tau50_e        10 /cell            log 1.5       [E]
hill_n/_e      1                   fixed         [E]
eps_kill       0.1                 logit 1.0     [E]
k_out          0.05 /day           log 1.0       LI22 kout [S3]
k_act          2 /day              log 1.0       HOSS20 [S3]
k_exp          1 /day              log 0.7       HOSS20 [S3]
tcap_rel       10                  log 1.0       [E]
k_con          0.1 /day            log 1.0       HOSS20 / LI22 / BETTS19 [S3]
k_exh          0.1 /day            log 0.7       PHIL22 [S-derived E]; per unit CD3 occupancy
k_rec          0.3 /day            log 0.7       PHIL22 [S-derived E]; per unit free CD3
k_dx           0.05 /day           log 1.0       [E]
k_m, m0        0.05 /day, 20 g/L   log 0.3, 1.0  POELS25 [S3]; m0 [E]
k_l, l0        4 /day, 400 mg/L    log 0.5, 1.5  POELS25 [S3]; l0 [E]
k_gsi          1 /day              log 0.5       oral GSI t1/2 ~1 day [R]
imax_gsi       0.9                 logit 1.0     science.md L4 [E]
ic50_gsi       50 mg               log 1.0       [E] (GSI exposure in mg in the body)
hill_gsi       1                   fixed         [E]
k_int_b        8.4 /day            log 0.5       BCMA internalisation t1/2 2 h, CAM26 [S3]
k_shed         19.6 /day           log 0.8       shed fraction 0.7 (fold 3.3 at full GSI) [E]
emax_il6       1.934e6 pg/mL/day   log 1.5       80,590 pg/mL/h POELS25/Chen 2019 [S3]
ec50_il6       0.5 pM              log 1.5       POELS25 [S3]
hill_il6       1                   fixed         POELS25 [S3]
imax_ih        0.99                logit 1.0     POELS25 Imax 1 [S3] (0.99: a fraction < 1)
ic50_ih        416.7 pg/mL day     log 1.0       10,000 pg/mL h POELS25 [S3]
hill_ih        2.5                 fixed         POELS25 [S3]
ktr_il6        15 /day             log 0.5       0.625 /h POELS25 [S3]
kdeg_il6       12 /day             log 0.5       0.5 /h POELS25 [S3]
il6_0          2 pg/mL             log 0.5       POELS25 basal [S3]
=============  ==================  ============  ==============================================
"""

import popkpd

LOG_SD = dict(
    k_s=0.3, k_x=0.4, s0=1.35, p_bm=0.7, x_sbm=1.0, v_bm=0.4, r_b0=1.0, r_cd3=0.5, n0=1.0, e0=1.0, chi=2.0,
    kg=1.0, nmax_rel=1.0, kmax=0.8, s_et=0.7, tau50_n=1.5, tau50_e=1.5, k_out=1.0, k_act=1.0,
    k_exp=0.7, tcap_rel=1.0, k_con=1.0, k_exh=0.7, k_rec=0.7, k_dx=1.0, k_m=0.3, m0=1.0, k_l=0.5,
    l0=1.5, k_gsi=0.5, ic50_gsi=1.0, k_int_b=0.5, k_shed=0.8, emax_il6=1.5, ec50_il6=1.5,
    ic50_ih=1.0, ktr_il6=0.5, kdeg_il6=0.5, il6_0=0.5,
)
LOGIT_SD = dict(eps_kill=1.0, imax_gsi=1.0, imax_ih=1.0)
FIXED = ("hill_n", "hill_e", "hill_gsi", "hill_il6", "hill_ih")

COMMON_TYPICAL = dict(
    k_s=0.55, k_x=0.043, s0=float(popkpd.ng_per_ml_to_nm(45.0, popkpd.SBCMA_MW_KDA)),
    p_bm=0.5, x_sbm=9.0, v_bm=1.75, r_b0=5000.0, r_cd3=6e4, n0=6.55e9, e0=1.8e9, chi=100.0,
    kg=0.008, nmax_rel=10.0, kmax=0.5, s_et=0.25, tau50_n=24.0, hill_n=1.0, tau50_e=10.0, hill_e=1.0,
    eps_kill=0.1, k_out=0.05, k_act=2.0, k_exp=1.0, tcap_rel=10.0, k_con=0.1, k_exh=0.1, k_rec=0.3,
    k_dx=0.05, k_m=0.05, m0=20.0, k_l=4.0, l0=400.0,
    k_gsi=1.0, imax_gsi=0.9, ic50_gsi=50.0, hill_gsi=1.0, k_int_b=8.4, k_shed=19.6,
    emax_il6=1.934e6, ec50_il6=0.5, hill_il6=1.0, imax_ih=0.99, ic50_ih=416.7, hill_ih=2.5,
    ktr_il6=15.0, kdeg_il6=12.0, il6_0=2.0,
)


def priors_for(model, typical, log_sd):
    """Priors for ``model.parameters``: LogNormal(typical, sd) for the names in ``log_sd``,
    LogitNormal for fractions, Fixed for Hill coefficients; every median is the typical value."""
    log_sd = {**LOG_SD, **log_sd}
    out = {}
    for name in model.parameters:
        value = typical[name]
        if name in FIXED:
            out[name] = popkpd.Fixed(value)
        elif name in LOGIT_SD or name == "f_bio":
            out[name] = popkpd.LogitNormal(value, log_sd.get(name, LOGIT_SD.get(name, 0.3)))
        else:
            out[name] = popkpd.LogNormal(value, log_sd[name])
    return out


def typical_for(model, drug_typical):
    """The typical values of ``model.parameters`` (drug values override the common ones)."""
    values = {**COMMON_TYPICAL, **drug_typical}
    missing = [n for n in model.parameters if n not in values]
    if missing:
        raise ValueError(f"typical_for: no typical value for {missing}; add them to the drug's TYPICAL.")
    return {n: float(values[n]) for n in model.parameters}
