"""Independent references for the tests: a scipy piecewise integrator and event builders."""

import numpy as np
from scipy.integrate import solve_ivp

from popkpd._events import pad_events


def scipy_solve(rhs, y0, doses, obs_times, t0=0.0, rtol=1e-11, atol=1e-13, method="DOP853"):
    """Integrate ``rhs(t, y, u)`` (numpy) with doses applied as jumps / piecewise inputs.

    doses: list of dicts with keys time (effective), cmt, amount (already x F), and optionally
    rate (zero-order input; duration = amount / rate). Observations at a dose time are post-dose.
    Returns states at ``obs_times`` [O, n].
    """
    y = np.array(y0, float)
    n = len(y)
    infusions = [(d["time"], d["time"] + d["amount"] / d["rate"], d["cmt"], d["rate"]) for d in doses if d.get("rate", 0) > 0]
    boluses = [d for d in doses if d.get("rate", 0) == 0]
    breaks = sorted({t0, *[b["time"] for b in boluses], *[i[0] for i in infusions], *[i[1] for i in infusions], *obs_times})
    out = {}
    breaks = [b for b in breaks if b >= t0]
    for i, t in enumerate(breaks):
        for b in boluses:
            if b["time"] == t:
                y[b["cmt"]] += b["amount"]
        for k, to in enumerate(obs_times):
            if to == t:
                out[k] = y.copy()
        if i + 1 == len(breaks):
            break
        u = np.zeros(n)
        for start, stop, cmt, rate in infusions:
            if start <= t < stop:
                u[cmt] += rate
        sol = solve_ivp(lambda tt, yy: rhs(tt, yy, u), (t, breaks[i + 1]), y, method=method, rtol=rtol, atol=atol)
        y = sol.y[:, -1]
    return np.array([out[k] for k in range(len(obs_times))])


def make_events(subjects, n_covariates=0):
    """subjects: list of (doses, obs) where doses is a list of dicts (time, amt, cmt, rate=0, ss=0,
    ii=0, reset=False) and obs a list of dicts (time, output=0); rows follow list order with all
    doses listed before observations unless a dict carries ``row``."""
    dose_arrays, obs_arrays, covs = [], [], []
    for doses, obs in subjects:
        rows_d = [d.get("row", i) for i, d in enumerate(doses)]
        rows_o = [o.get("row", len(doses) + i) for i, o in enumerate(obs)]
        dose_arrays.append(dict(
            time=np.array([d["time"] for d in doses], float),
            amt=np.array([d["amt"] for d in doses], float),
            cmt=np.array([d["cmt"] for d in doses], int),
            rate=np.array([d.get("rate", 0.0) for d in doses], float),
            ss=np.array([d.get("ss", 0) for d in doses], int),
            ii=np.array([d.get("ii", 0.0) for d in doses], float),
            reset=np.array([d.get("reset", False) for d in doses], bool),
            row=np.array(rows_d, int),
        ))
        obs_arrays.append(dict(
            time=np.array([o["time"] for o in obs], float),
            dv=np.zeros(len(obs)),
            output=np.array([o.get("output", 0) for o in obs], int),
            cens=np.zeros(len(obs), int),
            limit=np.full(len(obs), np.nan),
            row=np.array(rows_o, int),
        ))
        covs.append((np.zeros(1), np.zeros((1, n_covariates))))
    return pad_events(dose_arrays, obs_arrays, covs, n_covariates)


def finite_difference_grad(f, x, eps=1e-6):
    x = np.asarray(x, float)
    g = np.zeros_like(x)
    for i in range(x.size):
        h = eps * max(1.0, abs(x[i]))
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        g[i] = (f(xp) - f(xm)) / (2 * h)
    return g
