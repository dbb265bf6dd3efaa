"""Mechanism simulations of the BCMA x CD3 model family (docs/mechanisms.md).

Every function simulates virtual patients at the drug's typical parameters (``TYPICAL``), changed
only where named, and returns plain numbers (numpy arrays, dicts). Scenarios of one model are
batched as subjects of one ``popkpd.simulate`` call; all calls of a model use the same padded
shapes (``N_SUBJECTS`` subjects, ``N_DOSES`` dose columns, the grid ``TIMES``), so each model
compiles once per process.

Units: days, nmol, nM; sBCMA levels given in ng/mL (5.4 kDa, ``popkpd.SBCMA_MW_KDA``); tumour as
N/N0; E:T = e0 / n0 (marrow T cells per myeloma cell at baseline).
"""

from __future__ import annotations

import math
import os

import numpy as np

import popkpd
from popkpd._structural.bcma import hill

from . import alnuctamab, teclistamab

SBCMA_NG_ML = (0.0, 50.0, 100.0, 200.0, 400.0, 800.0)
"""Baseline sBCMA grid of mechanism 1 (ng/mL)."""
ET_RATIOS = (0.03, 0.1, 0.27, 1.0)
"""Baseline marrow E:T grid (0.27 is the typical CAM26 value)."""
HORIZON = 182.0
"""Six months (days)."""
TIMES = np.concatenate([np.arange(0.05, 14.0, 0.05), np.arange(14.0, HORIZON + 1e-9, 0.5)])
"""Observation grid: 0.05 day over the priming fortnight (IL-6 peaks), then 0.5 day."""
N_SUBJECTS = 32
N_DOSES = 220
KILL_DAY = 28.0
"""Tumour reduction is read at day 28 (before eradication saturates it at typical values)."""
GSI_DAILY = 100.0
"""GSI dose (mg into state ``gsi``, daily for 28 days); ic50_gsi = 50 mg, k_gsi = 1 /day."""
CRS_SLOPES = (1.3, 1.1)
"""CRS logistic slope on ln IL-6 peak and high-burden effect (science.md L5 prior means);
the intercept is set so that P(CRS) after step-up dose 1 at typical values is 0.43 [E]."""
CRS_AFTER_SUD1 = 0.43


def sbcma_nm(ng_ml):
    return float(popkpd.ng_per_ml_to_nm(ng_ml, popkpd.SBCMA_MW_KDA)) if ng_ml > 0 else 0.0


def _tec_sc(mg_per_kg):
    return popkpd.SC(popkpd.mg_to_nmol(mg_per_kg, teclistamab.MW_KDA), per_kg=True)


def run(model, typical, scenarios, weight=teclistamab.WEIGHT_KG):
    """Simulate ``scenarios`` (a list of (regimen, parameter changes)) in one batched call.

    Returns (outputs, states): dicts name -> [len(scenarios), len(TIMES)] arrays."""
    if len(scenarios) > N_SUBJECTS:
        raise ValueError(f"run: received {len(scenarios)} scenarios; expected at most {N_SUBJECTS}. "
                         "Split them over several calls.")
    padded = list(scenarios) + [scenarios[-1]] * (N_SUBJECTS - len(scenarios))
    events = popkpd.stack_events(
        [reg.to_events(model, TIMES, weights=[weight], until=HORIZON + 1) for reg, _ in padded],
        min_doses=N_DOSES,
    )
    params = {name: np.array([changes.get(name, typical[name]) for _, changes in padded], dtype=float)
              for name in model.parameters}
    sol = popkpd.simulate(model, params, events)
    n = len(scenarios)
    out = np.asarray(sol.outputs)[:n]
    st = np.asarray(sol.states)[:n]
    return ({k: out[:, :, i] for i, k in enumerate(model.outputs)},
            {k: st[:, :, i] for i, k in enumerate(model.states)})


def _mean(values, t0=0.0, t1=KILL_DAY):
    keep = (TIMES >= t0) & (TIMES <= t1)
    return np.trapezoid(values[:, keep], TIMES[keep], axis=1) / (TIMES[keep][-1] - TIMES[keep][0])


def _at(values, day):
    return values[:, int(np.argmin(np.abs(TIMES - day)))]


def _log_reduction(tumour, day=KILL_DAY):
    """log10(N0 / N(day)): tumour reduction, in logs."""
    return -np.log10(np.maximum(_at(tumour, day), 1e-300))


def _et_changes(et, typical):
    return {"e0": et * typical["n0"]}


# --------------------------------------------------------------------------- 1 and 3
VISITS = np.arange(28.0, HORIZON, 28.0)
"""IMWG assessment visits (days 28, 56, ..., 168: monthly, as in MajesTEC-1)."""


def best_response(m_protein):
    """IMWG best confirmed response (``popkpd.imwg_response``, M-protein at ``VISITS``) as names."""
    best = np.asarray(popkpd.imwg_response(TIMES, m_protein, visits=VISITS).best)
    return np.array([popkpd.RESPONSE_CATEGORIES[int(k)] for k in best])


def sbcma_and_et(drug=teclistamab):
    """Mechanisms 1 and 3: baseline sBCMA grid x E:T grid at the drug's regimen, plus the typical
    patient itself (baseline sBCMA = the drug's typical s0, 45 ng/mL).

    Returns dict with ``sbcma_ng_ml`` [K], ``et`` [J], and [J, K] arrays: ``functional`` (mean
    functional free drug in serum over days 0-28, nM), ``functional_bm`` (the same in the marrow,
    after the marrow sBCMA excess), ``trimers`` (mean trimers per tumour cell, days 0-28),
    ``reduction`` (log10 tumour reduction at day 28), ``reduction_84`` (at day 84), ``tumour_end``
    (N/N0 at day 182), ``best`` (IMWG best confirmed response over six months); ``typical_best``,
    ``typical_reduction``: the typical patient's best response and day-28 reduction."""
    t = drug.TYPICAL
    scen = [(drug.REGIMEN, {"s0": sbcma_nm(s), **_et_changes(et, t)}) for et in ET_RATIOS for s in SBCMA_NG_ML]
    scen.append((drug.REGIMEN, {}))
    out, _ = run(drug.MODEL, t, scen)
    shape = (len(ET_RATIOS), len(SBCMA_NG_ML))
    grid = slice(0, len(scen) - 1)
    best = best_response(out["m_protein"])
    return dict(
        sbcma_ng_ml=np.array(SBCMA_NG_ML), et=np.array(ET_RATIOS),
        functional=_mean(out["conc_functional"][grid]).reshape(shape),
        functional_bm=_mean(out["conc_functional_bm"][grid]).reshape(shape),
        trimers=_mean(out["trimers_per_tumour_cell"][grid]).reshape(shape),
        reduction=_log_reduction(out["tumour"][grid]).reshape(shape),
        reduction_84=_log_reduction(out["tumour"][grid], 84.0).reshape(shape),
        tumour_end=_at(out["tumour"][grid], HORIZON).reshape(shape),
        best=best[grid].reshape(shape),
        tumour=out["tumour"][grid].reshape(*shape, -1),
        typical_best=str(best[-1]), typical_reduction=float(_log_reduction(out["tumour"][-1:])[0]),
    )


# --------------------------------------------------------------------------- 2
def valency():
    """Mechanism 2: alnuctamab (2 BCMA arms) against a 1:1 binder with the same per-arm kd_s and
    the same PK and regimen, over the sBCMA grid. Returns ``functional_fraction`` (mean over days
    0-28 of functional / total drug) for ``bivalent`` and ``monovalent``, each [K]."""
    mono = popkpd.BCMAModel(layers=5, valency=1)
    res = {"sbcma_ng_ml": np.array(SBCMA_NG_ML)}
    for name, model in (("bivalent", alnuctamab.MODEL), ("monovalent", mono)):
        scen = [(alnuctamab.REGIMEN, {"s0": sbcma_nm(s)}) for s in SBCMA_NG_ML]
        out, _ = run(model, alnuctamab.TYPICAL, scen)
        res[name] = _mean(out["conc_functional"] / out["conc"])
        res[name + "_functional"] = _mean(out["conc_functional"])
    return res


# --------------------------------------------------------------------------- 4
BURDENS = (0.3, 1.0, 3.0)
GSI_ET = (0.1, 0.27, 1.0)
GSI_SBCMA_NG_ML = 400.0
GSI_SCAN_ET = (0.03, 0.1, 0.27, 1.0)
"""E:T axis of the mechanism-4 scan (``GSI_ET`` plus 0.03, where CD3 limits the trimers)."""
GSI_R_B0 = (0.4, 1.0, 2.518)
"""Membrane BCMA density of the scan as multiples of the typical r_b0 (5000 /cell): 2000 (CAM26) and
12590 (POELS25) /cell, the ends of the range in models/_common.py."""
GSI_SETTINGS = {"typical": 1.0, "calibrated": 301.0}
"""tau50_n as a multiple of TYPICAL: the typical value (24 trimers / cell) and the MajesTEC-1
calibration of the virtual trials (``models.virtual_populations.CALIBRATION``, 301 x)."""


def matched_inhibition(p):
    """GSI parameters (imax_gsi, ic50_gsi) that give an arm WITHOUT the membrane-BCMA rise
    (k_shed ~ 0, R_B = R_B0) the per-cell shedding of the arm WITH it, at every GSI exposure.

    With the rise, membrane BCMA is in quasi-steady state with the inhibition I (L4:
    R_B/R_B0 = K / (k_int_b + k_shed (1 - I)), K = k_int_b + k_shed), so per-cell shedding is
    (R_B/R_B0)(1 - I). Setting 1 - I' equal to it gives I' = k_int_b I / (k_int_b + k_shed (1 - I)),
    and with I = imax c/(ic50 + c) (hill_gsi = 1) this is again a Hill function of the exposure c:
    imax' = k_int_b imax / (k_int_b + k_shed (1 - imax)), ic50' = ic50 K / (k_int_b + k_shed (1 - imax)).
    The only difference left is the lag of R_B behind I (time constant 1/(k_int_b + k_shed (1 - I)),
    1-2 h, against a GSI half-life of 0.7 day); ``gsi`` measures it."""
    if p["hill_gsi"] != 1.0:
        raise ValueError(f"matched_inhibition: received hill_gsi = {p['hill_gsi']}; expected 1 (the closed form "
                         "I' = Hill(imax', ic50') holds for a Hill coefficient of 1). Use hill_gsi = 1.")
    k_int, k_shed, imax = p["k_int_b"], p["k_shed"], p["imax_gsi"]
    low = k_int + k_shed * (1.0 - imax)
    return {"k_shed": 1e-6, "imax_gsi": k_int * imax / low, "ic50_gsi": p["ic50_gsi"] * (k_int + k_shed) / low}


def gsi():
    """Mechanism 4: GSI (``GSI_DAILY`` mg daily for 28 days) with teclistamab, at baseline sBCMA
    400 ng/mL x burden, tumour burden n0 x ``BURDENS`` (e0 scaled to keep E:T).

    Arms: ``none`` (no GSI), ``gsi``, ``gsi_no_rise`` (the same GSI, membrane BCMA held at R_B0 and
    the same per-cell shedding as ``gsi``: ``matched_inhibition``) and ``gsi_k_shed0`` (the earlier
    counterfactual: k_shed = 1e-6 with the GSI arm's inhibition, i.e. no rise AND less shedding, as
    shedding is R_B (1 - I)). ``bcma_benefit`` = reduction(gsi) - reduction(gsi_no_rise): the effect
    of the membrane-BCMA rise at matched sBCMA shedding; ``bcma_benefit_k_shed0`` the same against
    ``gsi_k_shed0`` (the rise together with the shedding it feeds).

    Returns [burden, E:T] arrays (``GSI_ET``, typical parameters) of log10 reduction at day 28
    (``reduction_<arm>``), mean sBCMA over days 0-28 (``sbcma_<arm>``, nM), peak R_B/R_B0
    (``bcma_fold_<arm>``), N/N0 at day 182 (``tumour_end_<arm>``), IMWG best response
    (``best_<arm>``); ``scan``: per setting of tau50_n (``GSI_SETTINGS``) [r_b0, burden, E:T] arrays
    (``GSI_R_B0`` x ``BURDENS`` x ``GSI_SCAN_ET``) of ``benefit``, ``reduction_*``, ``tumour_end_*``,
    ``best_*``, ``psi_*`` (mean fraction of tumour cells in a synapse, days 0-28) for arms gsi and
    gsi_no_rise; fairness checks: ``inhibition_error`` (max |I'(t) - k_int_b I/(k_int_b + k_shed
    (1 - I))| over the scan), ``sbcma_error`` (max over 0-182 days of |sBCMA(gsi_no_rise)/sBCMA(gsi)
    - 1| with kmax = 0, so that both tumours grow alike) and the mean per-cell shedding over days
    0-28 of that pair (``shedding_gsi``, ``shedding_no_rise``)."""
    t = teclistamab.TYPICAL
    gsi_reg = teclistamab.REGIMEN + popkpd.Regimen.every(1, popkpd.Bolus(GSI_DAILY, state="gsi"), start=0, count=28)
    fair = matched_inhibition(t)

    def patient(burden, et, **extra):
        return {"n0": burden * t["n0"], "e0": et * burden * t["n0"], "s0": burden * sbcma_nm(GSI_SBCMA_NG_ML), **extra}

    def simulate(scen):
        outs = [run(teclistamab.MODEL, t, scen[i:i + N_SUBJECTS])[0] for i in range(0, len(scen), N_SUBJECTS)]
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    grid = [(f * t["r_b0"], b, et) for f in GSI_R_B0 for b in BURDENS for et in GSI_SCAN_ET]
    scen = []
    for factor in GSI_SETTINGS.values():
        for rb, b, et in grid:
            for extra in ({}, fair):
                scen.append((gsi_reg, patient(b, et, r_b0=rb, tau50_n=factor * t["tau50_n"], **extra)))
    n_scan = len(scen)
    for reg, extra in ((teclistamab.REGIMEN, {}), (gsi_reg, {"k_shed": 1e-6})):
        scen += [(reg, patient(b, et, **extra)) for b in BURDENS for et in GSI_ET]
    scen += [(gsi_reg, patient(1.0, 0.27, kmax=0.0, **extra)) for extra in ({}, fair)]
    out = simulate(scen)
    red, best = _log_reduction(out["tumour"]), best_response(out["m_protein"])
    end, sb, fold = _at(out["tumour"], HORIZON), _mean(out["sbcma_total"]), out["bcma_fold"].max(axis=1)

    res = {"burden": np.array(BURDENS), "et": np.array(GSI_ET), "scan_et": np.array(GSI_SCAN_ET),
           "scan_r_b0": np.array(GSI_R_B0) * t["r_b0"], "scan": {}}
    shape = (len(GSI_R_B0), len(BURDENS), len(GSI_SCAN_ET))
    for k, (name, factor) in enumerate(GSI_SETTINGS.items()):
        rows = slice(k * len(grid) * 2, (k + 1) * len(grid) * 2)
        psi = _mean(np.asarray(hill(out["trimers_per_tumour_cell"][rows], factor * t["tau50_n"], t["hill_n"])))
        s = {"tau50_n": factor * t["tau50_n"]}
        for j, arm in enumerate(("gsi", "gsi_no_rise")):
            for key, x in (("reduction", red), ("tumour_end", end), ("best", best), ("sbcma", sb), ("bcma_fold", fold)):
                s[f"{key}_{arm}"] = x[rows][j::2].reshape(shape)
            s[f"psi_{arm}"] = psi[j::2].reshape(shape)
        s["benefit"] = s["reduction_gsi"] - s["reduction_gsi_no_rise"]
        res["scan"][name] = s
    # fairness of the matched arm: inhibition identity at every time of the scan, sBCMA with kill off
    i_gsi, i_fair = out["gsi_inhibition"][:n_scan:2], out["gsi_inhibition"][1:n_scan:2]
    k_int, k_shed = t["k_int_b"], t["k_shed"]
    res["inhibition_error"] = float(np.abs(i_fair - k_int * i_gsi / (k_int + k_shed * (1.0 - i_gsi))).max())
    pair = slice(len(scen) - 2, len(scen))
    s_pair = out["sbcma_total"][pair]
    res["sbcma_error"] = float(np.abs(s_pair[1] / s_pair[0] - 1.0).max())
    res["shedding_gsi"], res["shedding_no_rise"] = _mean(out["bcma_fold"][pair] * (1.0 - out["gsi_inhibition"][pair]))
    # the [burden, E:T] tables at typical values: the scan's typical-r_b0 rows, plus the other two arms
    typ = res["scan"]["typical"]
    rb, ets = GSI_R_B0.index(1.0), [GSI_SCAN_ET.index(e) for e in GSI_ET]
    for arm in ("gsi", "gsi_no_rise"):
        for key in ("reduction", "tumour_end", "best", "sbcma", "bcma_fold"):
            res[f"{key}_{arm}"] = typ[f"{key}_{arm}"][rb][:, ets]
    n3 = len(BURDENS) * len(GSI_ET)
    for k, arm in enumerate(("none", "gsi_k_shed0")):
        rows = slice(n_scan + k * n3, n_scan + (k + 1) * n3)
        for key, x in (("reduction", red), ("tumour_end", end), ("best", best), ("sbcma", sb), ("bcma_fold", fold)):
            res[f"{key}_{arm}"] = x[rows].reshape(len(BURDENS), len(GSI_ET))
    res["bcma_benefit"] = res["reduction_gsi"] - res["reduction_gsi_no_rise"]
    res["bcma_benefit_k_shed0"] = res["reduction_gsi"] - res["reduction_gsi_k_shed0"]
    return res


# --------------------------------------------------------------------------- 5
PERSISTENT = {"kmax": 0.1, "kg": 0.03}
"""Persistent-disease (slow-kill) patient of mechanism 5: kmax -2.0 log-SD and kg +1.3 log-SD from
typical, so that tumour (and hence T-cell engagement) persists past the schedule changes at day 34."""


def _schedules():
    full = _tec_sc(1.5)
    prime = popkpd.Regimen.step_up([(0, _tec_sc(0.06)), (3, _tec_sc(0.3))])
    qw = prime.then_every(7, full, start=6)
    tfi = qw
    for a in range(34, int(HORIZON), 42):  # 2 weeks off after every 4 weeks of full doses
        tfi = tfi.pause(a, a + 14)
    return {"QW continuous": qw, "QW with 2-week TFIs": tfi,
            "Q2W from week 5": qw.switch_interval(14, at=34), "Q4W from week 5": qw.switch_interval(28, at=34)}


def exhaustion():
    """Mechanism 5: teclistamab schedules (continuous QW, QW with 2-week treatment-free intervals
    after every 4 full doses from day 34, step-down to Q2W or Q4W from day 34) in a patient with
    persistent disease (``PERSISTENT``) and in the typical patient. Returns per
    schedule the mean exhausted T cells X/E0 over days 34-182 (``exhausted``) and over the whole
    course, and the tumour at day 182, for both patients."""
    t = teclistamab.TYPICAL
    sch = _schedules()
    patients = {"persistent": dict(PERSISTENT), "typical": {}}
    scen = [(reg, ch) for ch in patients.values() for reg in sch.values()]
    out, st = run(teclistamab.MODEL, t, scen)
    n = len(sch)
    res = {"schedules": list(sch)}
    for k, p in enumerate(patients):
        rows = slice(k * n, (k + 1) * n)
        res[p] = dict(
            exhausted=_mean(st["t_exhausted"][rows], 34.0, HORIZON),
            exhausted_all=_mean(st["t_exhausted"][rows], 0.0, HORIZON),
            tumour_end=_at(out["tumour"][rows], HORIZON),
            exhausted_curve=st["t_exhausted"][rows],
            exhausted_day34=_at(st["t_exhausted"][rows], 34.0),
            trimers_per_t_cell=_mean(out["trimers_per_t_cell"][rows], 34.0, HORIZON),
        )
    return res


# --------------------------------------------------------------------------- 6
DEBULK = (1.0, 0.5, 0.25, 0.1)


def debulking(sbcma_ng_ml=400.0):
    """Mechanism 6: debulking before teclistamab: baseline tumour n0 x f for f in ``DEBULK``, with
    sBCMA, M-protein and sFLC scaled by f (sBCMA tracks burden, science.md §1.5) and T cells
    unchanged (E:T = 0.27 / f). Starting from baseline sBCMA ``sbcma_ng_ml`` at f = 1. Returns
    [F] arrays: ``sbcma_ng_ml``, ``et``, ``reduction`` (log10 at day 28, relative to the debulked
    baseline), ``functional`` (mean functional drug days 0-28)."""
    t = teclistamab.TYPICAL
    scen = [(teclistamab.REGIMEN, {"n0": f * t["n0"], "s0": f * sbcma_nm(sbcma_ng_ml), "m0": f * t["m0"],
                                   "l0": f * t["l0"]}) for f in DEBULK]
    out, _ = run(teclistamab.MODEL, t, scen)
    return dict(fraction=np.array(DEBULK), sbcma_ng_ml=sbcma_ng_ml * np.array(DEBULK),
                et=t["e0"] / (t["n0"] * np.array(DEBULK)), reduction=_log_reduction(out["tumour"]),
                functional=_mean(out["conc_functional"]), tumour=out["tumour"])


# --------------------------------------------------------------------------- 7
def step_up():
    """Mechanism 7: teclistamab step-up (0.06, 0.3 mg/kg, then 1.5 mg/kg weekly from day 6)
    against a full first dose (1.5 mg/kg weekly from day 0). Returns the serum IL-6 peak after the
    first dose and over the first week (pg/mL), P(CRS) after the first dose and the probability of
    at least one CRS over the first 13 days (dose intervals independent), and the IL-6 curves."""
    full = _tec_sc(1.5)
    regs = {"step-up": teclistamab.REGIMEN, "full first dose": popkpd.Regimen.every(7, full, start=0)}
    out, _ = run(teclistamab.MODEL, teclistamab.TYPICAL, [(r, {}) for r in regs.values()])
    il6 = out["il6"]
    dose_times = {"step-up": [0.0, 3.0, 6.0], "full first dose": [0.0, 7.0]}
    early = TIMES < 13.0
    peaks = {k: np.asarray(popkpd.peak_per_interval(TIMES[early], il6[i, early], np.array(dose_times[k])))
             for i, k in enumerate(regs)}
    a1, a2 = CRS_SLOPES
    a0 = math.log(CRS_AFTER_SUD1 / (1 - CRS_AFTER_SUD1)) - a1 * math.log(peaks["step-up"][0])
    coefs = np.array([a0, a1, a2])
    res = {"il6": il6, "coefs": coefs}
    for k in regs:
        p = np.asarray(popkpd.crs_probability(peaks[k], 0.0, coefs))
        res[k] = dict(first_peak=float(peaks[k][0]), week_peak=float(il6[list(regs).index(k), TIMES < 7.0].max()),
                      peaks=peaks[k], p_first=float(p[0]), p_any=float(1 - np.prod(1 - p)))
    return res


# --------------------------------------------------------------------------- figures
def make_figures(outdir, results=None):
    """One PNG per mechanism in ``outdir``; ``results`` (from ``all_mechanisms``) avoids re-running."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = results or all_mechanisms()
    os.makedirs(outdir, exist_ok=True)
    paths = []

    def save(fig, name):
        path = os.path.join(outdir, name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    m = r["sbcma_and_et"]
    typ = list(ET_RATIOS).index(0.27)
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.6))
    x = m["sbcma_ng_ml"]
    ax[0].semilogy(x, m["functional"][typ], "o-", label="serum")
    ax[0].semilogy(x, m["functional_bm"][typ], "s-", label="marrow")
    ax[0].set_ylabel("functional drug, mean d0-28 (nM)"); ax[0].legend()
    ax[1].semilogy(x, np.maximum(m["trimers"][typ], 1e-3), "o-"); ax[1].set_ylabel("trimers / tumour cell, mean d0-28")
    ax[2].plot(x, m["reduction"][typ], "o-", label="day 28")
    ax[2].plot(x, np.minimum(m["reduction_84"][typ], 12), "s--", label="day 84 (capped at 12)")
    for xi, yi, b in zip(x, np.minimum(m["reduction_84"][typ], 12), m["best"][typ]):
        ax[2].annotate(b, (xi, yi), textcoords="offset points", xytext=(0, 5), fontsize=7, ha="center")
    ax[2].axhline(0, color="k", lw=0.5)
    ax[2].set_ylabel("log10 tumour reduction"); ax[2].legend(fontsize=7, loc="center left")
    ax[2].set_title("labels: IMWG best response, 6 months", fontsize=8)
    for a in ax:
        a.set_xlabel("baseline sBCMA (ng/mL)")
    fig.suptitle("1. teclistamab, typical patient (E:T 0.27): rising baseline sBCMA")
    save(fig, "mechanism1_sbcma.png")

    v = r["valency"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(v["sbcma_ng_ml"], v["bivalent"], "o-", label="2:1 (alnuctamab)")
    ax.plot(v["sbcma_ng_ml"], v["monovalent"], "s-", label="1:1, same per-arm kd_s")
    ax.set_xlabel("baseline sBCMA (ng/mL)"); ax.set_ylabel("functional / total drug, mean d0-28"); ax.legend()
    ax.set_title("2. valency and the sBCMA sink")
    save(fig, "mechanism2_valency.png")

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for j, et in enumerate(ET_RATIOS):
        ax.plot(m["sbcma_ng_ml"], m["reduction"][j], "o-", label=f"E:T {et:g}")
    ax.set_xlabel("baseline sBCMA (ng/mL)"); ax.set_ylabel("log10 tumour reduction, day 28"); ax.legend()
    ax.set_title("3. E:T ratio x sBCMA (teclistamab)")
    save(fig, "mechanism3_et.png")

    g = r["gsi"]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    labels = [f"x{b:g}\nE:T {e:g}" for b in g["burden"] for e in g["et"]]
    xs = np.arange(len(labels))
    for k, (arm, name) in enumerate((("none", "no GSI"), ("gsi", "GSI"), ("gsi_no_rise", "GSI, R_B held at R_B0"))):
        ax[0].bar(xs + (k - 1) * 0.27, g[f"reduction_{arm}"].ravel(), 0.27, label=name)
    ax[0].axhline(0, color="k", lw=0.5)
    ax[0].set_xticks(xs, labels, fontsize=7); ax[0].set_xlabel("burden, E:T")
    ax[0].set_ylabel("log10 reduction, day 28"); ax[0].legend(fontsize=7)
    ax[0].set_title("typical values (r_b0 5000, tau50_n 24); same shedding in both GSI arms", fontsize=8)
    top = max(s["benefit"].max() for s in g["scan"].values())
    rows = [f"r_b0 {rb:g}, x{b:g}" for rb in g["scan_r_b0"] for b in g["burden"]]
    for a, (name, s) in zip(ax[1:], g["scan"].items()):
        ben = s["benefit"].reshape(len(rows), -1)
        flip = ((s["tumour_end_gsi"] < 1) != (s["tumour_end_gsi_no_rise"] < 1)).reshape(len(rows), -1)
        im = a.imshow(ben, cmap="viridis", vmin=0, vmax=top, aspect="auto")
        for (i, j), x in np.ndenumerate(ben):
            a.text(j, i, f"{x:.2f}" + ("*" if flip[i, j] else ""), ha="center", va="center", fontsize=7,
                   color="w" if x < 0.6 * top else "k")
        a.set_xticks(range(len(g["scan_et"])), [f"E:T {e:g}" for e in g["scan_et"]], fontsize=7)
        a.set_yticks(range(len(rows)), rows, fontsize=7)
        a.set_title(f"effect of the rise, logs d28 ({name}: tau50_n {s['tau50_n']:g})\n"
                    "* growth at 6 months without the rise, control with it", fontsize=8)
    fig.colorbar(im, ax=ax[2], fraction=0.05)
    fig.suptitle(f"4. GSI with teclistamab (baseline sBCMA {GSI_SBCMA_NG_ML:g} ng/mL x burden): "
                 "membrane-BCMA rise at matched sBCMA shedding")
    save(fig, "mechanism4_gsi.png")

    e = r["exhaustion"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for k, p in enumerate(("persistent", "typical")):
        for i, name in enumerate(e["schedules"]):
            ax[k].plot(TIMES, e[p]["exhausted_curve"][i], label=name)
        ax[k].set_xlabel("day"); ax[k].set_ylabel("exhausted T cells X/E0"); ax[k].set_title(p + " patient")
    ax[0].legend(fontsize=7)
    fig.suptitle("5. exhaustion: continuous vs treatment-free intervals / step-down (teclistamab)")
    save(fig, "mechanism5_exhaustion.png")

    d = r["debulking"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, f in enumerate(d["fraction"]):
        ax.semilogy(TIMES, np.maximum(d["tumour"][i], 1e-12), label=f"n0 x {f:g} (E:T {d['et'][i]:.2g})")
    ax.set_xlabel("day"); ax.set_ylabel("N / N0 (own baseline)"); ax.legend(fontsize=7)
    ax.set_title("6. debulking (sBCMA 400 ng/mL at full burden)")
    save(fig, "mechanism6_debulking.png")

    s = r["step_up"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    early = TIMES < 14
    for i, k in enumerate(("step-up", "full first dose")):
        ax.plot(TIMES[early], s["il6"][i, early], label=f"{k}: P(CRS, dose 1) {s[k]['p_first']:.2f}")
    ax.set_xlabel("day"); ax.set_ylabel("serum IL-6 (pg/mL)"); ax.legend(fontsize=7)
    ax.set_title("7. step-up dosing and first-dose IL-6 (teclistamab)")
    save(fig, "mechanism7_step_up.png")
    return paths


SENSITIVITY = {"x_sbm": (0.0, 3.0, 9.0, 30.0), "tau50_n": (10.0, 24.0, 100.0)}
"""Values of the marrow sBCMA excess and of tau50_n for ``sensitivity`` (typical: 9 and 24)."""


def sensitivity(drug=teclistamab):
    """Mechanism 1 under other values of the two parameters it rests on: x_sbm (``SENSITIVITY``,
    tau50_n typical) and tau50_n (x_sbm typical), each over the sBCMA grid, typical E:T. Returns
    {parameter: {value: (reduction at day 28 [K], IMWG best response [K])}}."""
    t = drug.TYPICAL
    res = {}
    for name, values in SENSITIVITY.items():
        scen = [(drug.REGIMEN, {name: v, "s0": sbcma_nm(s)}) for v in values for s in SBCMA_NG_ML]
        out, _ = run(drug.MODEL, t, scen)
        red = _log_reduction(out["tumour"]).reshape(len(values), -1)
        best = best_response(out["m_protein"]).reshape(len(values), -1)
        res[name] = {v: (red[i], best[i]) for i, v in enumerate(values)}
    return res


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report(r, sens=None):
    """The tables of docs/mechanisms.md (markdown) from ``all_mechanisms()`` and ``sensitivity()``."""
    f2, f3 = (lambda x: f"{x:.2f}"), (lambda x: f"{x:.3g}")
    out = []
    m = r["sbcma_and_et"]
    typ = list(ET_RATIOS).index(0.27)
    sb = [f"{x:g}" for x in m["sbcma_ng_ml"]]
    out.append("### 1. teclistamab, typical patient (E:T 0.27)\n\n" + _table(["sBCMA ng/mL", *sb], [
        ["functional drug in serum, mean d0-28 (nM)", *map(f3, m["functional"][typ])],
        ["functional drug in marrow, mean d0-28 (nM)", *map(f3, m["functional_bm"][typ])],
        ["trimers / tumour cell, mean d0-28", *map(f3, m["trimers"][typ])],
        ["log10 reduction, day 28", *map(f2, m["reduction"][typ])],
        ["log10 reduction, day 84", *map(f2, m["reduction_84"][typ])],
        ["N/N0 at day 182", *map(f3, m["tumour_end"][typ])],
        ["IMWG best response (6 months)", *m["best"][typ]]]))
    out.append(f"Typical patient (s0 = typical, 45 ng/mL): day-28 reduction {m['typical_reduction']:.2f} logs, "
               f"best response {m['typical_best']}.")
    out.append("### 3. log10 reduction at day 28 (IMWG best response), E:T x sBCMA\n\n" + _table(
        ["E:T \\ sBCMA", *sb],
        [[f"{et:g}", *(f"{x:.2f} ({b})" for x, b in zip(m["reduction"][j], m["best"][j]))]
         for j, et in enumerate(ET_RATIOS)]))
    if sens is not None:
        rows = []
        for name, per in sens.items():
            for v, (red, best) in per.items():
                rows.append([f"{name} = {v:g}", *(f"{x:.2f} ({b})" for x, b in zip(red, best))])
        out.append("### 1, sensitivity: log10 reduction day 28 (best response)\n\n" + _table(["", *sb], rows))
    v = r["valency"]
    out.append("### 2. functional / total drug, mean d0-28\n\n" + _table(
        ["sBCMA ng/mL", *[f"{x:g}" for x in v["sbcma_ng_ml"]]],
        [["2:1", *map(f2, v["bivalent"])], ["1:1", *map(f2, v["monovalent"])]]))
    g = r["gsi"]
    ets = [f"E:T {e:g}" for e in g["et"]]
    arms = (("none", "no GSI"), ("gsi", "GSI"), ("gsi_no_rise", "GSI, R_B at R_B0, same shedding"),
            ("gsi_k_shed0", "GSI, k_shed = 0 (R_B at R_B0, less shedding)"))
    out.append("### 4. log10 reduction at day 28 (IMWG best response), typical values\n\n" + _table(
        ["burden", "arm", *ets],
        [[f"x{b:g}", name, *(f"{x:.2f} ({c})" for x, c in zip(g[f"reduction_{arm}"][i], g[f"best_{arm}"][i]))]
         for i, b in enumerate(g["burden"]) for arm, name in arms]))
    out.append("### 4. effect of the membrane-BCMA rise, logs at day 28: at matched shedding "
               "(GSI minus GSI with R_B at R_B0 and the same shedding) [against k_shed = 0]\n\n" + _table(
                   ["burden", *ets], [[f"x{b:g}", *(f"{x:.2f} [{y:.2f}]" for x, y in zip(
                       g["bcma_benefit"][i], g["bcma_benefit_k_shed0"][i]))] for i, b in enumerate(g["burden"])]))
    for name, s in g["scan"].items():
        flip = (s["tumour_end_gsi"] < 1) != (s["tumour_end_gsi_no_rise"] < 1)

        def cell(ijk):
            return (f"{s['benefit'][ijk]:.2f} ({s['best_gsi'][ijk]}/{s['best_gsi_no_rise'][ijk]}; psi "
                    f"{s['psi_gsi'][ijk]:.2g}/{s['psi_gsi_no_rise'][ijk]:.2g})" + (" *" if flip[ijk] else ""))

        rows = [[f"{rb:g}", f"x{b:g}", *(cell((i, j, k)) for k in range(len(g["scan_et"])))]
                for i, rb in enumerate(g["scan_r_b0"]) for j, b in enumerate(g["burden"])]
        out.append(f"### 4. scan, {name} tau50_n = {s['tau50_n']:g}: effect of the rise at matched shedding, logs "
                   "at day 28 (IMWG best response with/without the rise; mean psi days 0-28 with/without; "
                   "* tumour controlled at day 182 with the rise, growing without)\n\n" + _table(
                       ["r_b0", "burden", *[f"E:T {e:g}" for e in g["scan_et"]]], rows))
    drop = 1 - g["sbcma_gsi"] / g["sbcma_none"]
    out.append(f"GSI lowers mean sBCMA (days 0-28) by {100 * drop.min():.0f}-{100 * drop.max():.0f}%; "
               f"membrane BCMA peaks at {g['bcma_fold_gsi'].max():.2f} x R_B0. Matched arm: inhibition identity "
               f"error {g['inhibition_error']:.1e}; with kmax = 0 total sBCMA within "
               f"{100 * g['sbcma_error']:.2f}% of the GSI arm at every time, mean per-cell shedding days 0-28 "
               f"{g['shedding_gsi']:.4f} (GSI) vs {g['shedding_no_rise']:.4f} (matched).")
    e = r["exhaustion"]
    rows = []
    for p in ("persistent", "typical"):
        rows.append([f"{p}: mean X/E0 days 34-182", *map(f3, e[p]["exhausted"])])
        rows.append([f"{p}: X/E0 at day 34", *map(f3, e[p]["exhausted_day34"])])
        rows.append([f"{p}: N/N0 at day 182", *map(f3, e[p]["tumour_end"])])
    out.append("### 5. exhaustion by schedule\n\n" + _table(["", *e["schedules"]], rows))
    d = r["debulking"]
    out.append("### 6. debulking\n\n" + _table(["f", *[f"{x:g}" for x in d["fraction"]]], [
        ["sBCMA ng/mL", *[f"{x:g}" for x in d["sbcma_ng_ml"]]], ["E:T", *map(f2, d["et"])],
        ["functional drug d0-28 (nM)", *map(f3, d["functional"])],
        ["log10 reduction, day 28", *map(f2, d["reduction"])]]))
    s = r["step_up"]
    arms = ("step-up", "full first dose")
    out.append("### 7. step-up\n\n" + _table(["", *arms], [
        ["serum IL-6 peak after dose 1 (pg/mL)", *(f"{s[k]['first_peak']:.1f}" for k in arms)],
        ["IL-6 peaks per interval, first 13 days", *(" / ".join(f"{x:.1f}" for x in s[k]["peaks"]) for k in arms)],
        ["P(CRS) after dose 1", *(f"{s[k]['p_first']:.2f}" for k in arms)],
        ["P(>= 1 CRS, first 13 days)", *(f"{s[k]['p_any']:.2f}" for k in arms)]]))
    out.append(f"CRS intercept a0 = {s['coefs'][0]:.2f}.")
    return "\n\n".join(out) + "\n"


def all_mechanisms():
    """All seven mechanism results in a dict (mechanisms 1 and 3 share one simulation)."""
    return dict(sbcma_and_et=sbcma_and_et(), valency=valency(), gsi=gsi(), exhaustion=exhaustion(),
                debulking=debulking(), step_up=step_up())


if __name__ == "__main__":  # python -m models.mechanisms [outdir]: figures and the tables of docs/mechanisms.md
    import sys

    results = all_mechanisms()
    make_figures(sys.argv[1] if len(sys.argv) > 1 else os.path.join("docs", "figures"), results)
    print(report(results, sensitivity()))
