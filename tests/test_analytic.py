"""Closed forms of the linear models against independent references.

References: hand formulas (1-cmt bolus, Bateman), high-precision ``decimal`` arithmetic for the
divided-difference kernels and the ka == k limit, and an event-driven scipy DOP853 solve
(rtol 1e-11, atol 1e-13) of a matrix written here from the compartment definitions; a steady-state
record is simulated there as a long train of doses until periodic.
"""

import functools
import math
from decimal import Decimal, getcontext

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import popkpd
from popkpd._ode.analytic import _divided_difference, _exp_dd3, _modes, closed_form

from .helpers import make_events

P = {
    1: dict(cl=2.0, vc=10.0),
    2: dict(cl=3.0, vc=8.0, q=3.0, vp=12.0),
    3: dict(cl=2.4, vc=6.0, q=2.5, vp=10.0, q2=0.8, vp2=5.0),
}
ABSORPTION = dict(ka=1.3, tlag=0.4, f_bio=0.7)
CLASSES = {1: popkpd.OneCompartment, 2: popkpd.TwoCompartment, 3: popkpd.ThreeCompartment}


def make_model(n, depot):
    return CLASSES[n](absorption=depot, lag_time=depot, bioavailable_fraction=depot)


def make_params(n, depot, **extra):
    return {**P[n], **(ABSORPTION if depot else {}), **extra}


# --- independent reference ----------------------------------------------------------------------


def reference_matrix(n, depot, p):
    """dA/dt of the amounts, written from the compartment definitions."""
    cl, vc = p["cl"], p["vc"]
    if n == 1:
        a = np.array([[-cl / vc]])
    elif n == 2:
        q, vp = p["q"], p["vp"]
        a = np.array([[-(cl + q) / vc, q / vp], [q / vc, -q / vp]])
    else:
        q, vp, q2, vp2 = p["q"], p["vp"], p["q2"], p["vp2"]
        a = np.array([[-(cl + q + q2) / vc, q / vp, q2 / vp2], [q / vc, -q / vp, 0.0], [q2 / vc, 0.0, -q2 / vp2]])
    if depot:
        full = np.zeros((n + 1, n + 1))
        full[1:, 1:] = a
        full[0, 0], full[1, 0] = -p["ka"], p["ka"]
        a = full
    return a


def _advance(a, y, t0, t1, running):
    """Integrate from t0 to t1 with the zero-order inputs in ``running`` [(stop, cmt, rate)]."""
    stops = sorted({s for s, _, _ in running if t0 < s < t1})
    for lo, hi in zip([t0] + stops, stops + [t1]):
        if hi <= lo:
            continue
        u = np.zeros(len(y))
        for stop, cmt, rate in running:
            if stop > lo:
                u[cmt] += rate
        sol = solve_ivp(lambda t, x: a @ x + u, (lo, hi), y, method="DOP853", rtol=1e-11, atol=1e-13)
        y = sol.y[:, -1]
    return y


def reference(a, records, obs, t_end=None):
    """Event-driven solve. records: dicts time (effective), row, cmt, amount (x F), rate (0 for a
    bolus), reset, ss, ii; obs: [(time, row)]. Ties are broken by row. Returns the states at obs,
    and (state, running inputs) at ``t_end``."""
    n = a.shape[0]
    items = sorted([(r["time"], r["row"], i, "dose") for i, r in enumerate(records)]
                   + [(t, row, j, "obs") for j, (t, row) in enumerate(obs)])
    y, running, out = np.zeros(n), [], np.zeros((len(obs), n))
    t = items[0][0] if items else t_end
    for time, _, idx, kind in items:
        if t_end is not None and time >= t_end:
            break
        y, t = _advance(a, y, t, time, running), time
        running = [r for r in running if r[0] > t]
        if kind == "obs":
            out[idx] = y
            continue
        rec = records[idx]
        if rec.get("reset") or rec.get("ss"):
            y, running = np.zeros(n), []
        if rec.get("ss"):
            y, running = steady_state_train(a, rec)
        if rec.get("rate", 0) > 0:
            running.append((t + rec["amount"] / rec["rate"], rec["cmt"], rec["rate"]))
        else:
            y = y.copy()
            y[rec["cmt"]] += rec["amount"]
    if t_end is not None:
        y = _advance(a, y, t, t_end, running)
        running = [r for r in running if r[0] > t_end]
    return out, y, running


def steady_state_train(a, rec):
    """State and running inputs just before an SS record: simulate the train of earlier doses
    every II, long enough that the first ones have decayed below 1e-16."""
    slowest = np.min(np.abs(np.linalg.eigvals(a).real))
    duration = rec["amount"] / rec["rate"] if rec.get("rate", 0) > 0 else 0.0
    n_doses = int(np.ceil(37.0 / (slowest * rec["ii"]) + duration / rec["ii"]))
    train = [dict(rec, ss=0, reset=False, time=rec["time"] - k * rec["ii"], row=-k) for k in range(n_doses, 0, -1)]
    _, y, running = reference(a, train, [], t_end=rec["time"])
    return y, running


def reference_states(n, depot, p, doses, obs):
    """Scipy states at the observations for make_events-style doses / obs (rows in list order)."""
    lag = p.get("tlag", 0.0) if depot else 0.0
    f = p.get("f_bio", 1.0) if depot else 1.0
    states = make_model(n, depot).states
    records = []
    for i, d in enumerate(doses):
        into_depot = depot and d["cmt"] == 0
        amount = d["amt"] * (f if into_depot else 1.0)
        rate = d.get("rate", 0.0)
        if rate == -1:
            rate = p[f"rate_{states[d['cmt']]}"]
        elif rate == -2:
            rate = amount / p[f"dur_{states[d['cmt']]}"]
        records.append(dict(time=d["time"] + (lag if into_depot else 0.0), row=d.get("row", i), cmt=d["cmt"],
                            amount=amount, rate=rate, reset=d.get("reset", False), ss=d.get("ss", 0),
                            ii=d.get("ii", 0.0)))
    obs_rows = [(o["time"], o.get("row", len(doses) + j)) for j, o in enumerate(obs)]
    out, _, _ = reference(reference_matrix(n, depot, p), records, obs_rows)
    return out


# --- regimens ------------------------------------------------------------------------------------

GRID = [0.0, 0.3, 1.0, 2.0, 2.5, 4.0, 7.5, 12.0, 12.4, 13.0, 18.0, 24.0, 25.5, 30.0, 36.5, 48.0, 60.0, 80.0]


def regimen(name, depot, n=2):
    c = 1 if depot else 0  # CMT of the central compartment
    if name == "bolus":  # the last dose goes into the (first) peripheral compartment, if any
        doses = [dict(time=0.0, amt=100.0, cmt=c), dict(time=12.0, amt=50.0, cmt=c),
                 dict(time=30.0, amt=80.0, cmt=c + (n > 1))]
    elif name == "infusion":  # overlapping inputs, RATE > 0, -1 and -2
        doses = [dict(time=0.0, amt=100.0, cmt=c, rate=40.0), dict(time=1.0, amt=60.0, cmt=c, rate=-1.0),
                 dict(time=12.0, amt=90.0, cmt=c, rate=-2.0), dict(time=13.0, amt=30.0, cmt=c)]
    elif name == "oral":  # depot doses with lag and F, one IV dose in between
        doses = [dict(time=0.0, amt=100.0, cmt=0), dict(time=7.5, amt=40.0, cmt=1),
                 dict(time=12.0, amt=100.0, cmt=0), dict(time=24.0, amt=100.0, cmt=0)]
    elif name == "depot_infusion":  # zero-order input into the depot, RATE > 0 and -2
        doses = [dict(time=0.0, amt=100.0, cmt=0, rate=25.0), dict(time=12.0, amt=100.0, cmt=0, rate=-2.0),
                 dict(time=13.0, amt=50.0, cmt=0)]
    elif name == "ss_bolus":  # the SS record replaces the first dose; a normal dose follows
        doses = [dict(time=0.0, amt=70.0, cmt=c), dict(time=12.0, amt=100.0, cmt=c, ss=1, ii=12.0),
                 dict(time=24.0, amt=100.0, cmt=c), dict(time=36.0, amt=50.0, cmt=c, ss=1, ii=6.0)]
    elif name == "ss_infusion":  # SS infusion shorter than II, then one longer than II (overlap)
        doses = [dict(time=0.0, amt=100.0, cmt=c, rate=-2.0, ss=1, ii=12.0), dict(time=24.0, amt=100.0, cmt=c),
                 dict(time=30.0, amt=120.0, cmt=c, rate=4.0, ss=1, ii=8.0)]
    elif name == "ss_depot":  # SS bolus into the depot (with lag), then SS zero-order input into it
        doses = [dict(time=0.0, amt=100.0, cmt=0, ss=1, ii=12.0), dict(time=12.0, amt=100.0, cmt=0),
                 dict(time=24.0, amt=100.0, cmt=0, rate=-2.0, ss=1, ii=12.0),
                 dict(time=36.5, amt=100.0, cmt=0, rate=5.0, ss=1, ii=8.0)]
    elif name == "reset":  # EVID 3 during an infusion, then EVID 4 (reset + dose)
        doses = [dict(time=0.0, amt=100.0, cmt=c), dict(time=10.0, amt=100.0, cmt=c, rate=10.0),
                 dict(time=12.0, amt=0.0, cmt=c, reset=True), dict(time=13.0, amt=50.0, cmt=c),
                 dict(time=24.0, amt=60.0, cmt=0, reset=True), dict(time=30.0, amt=20.0, cmt=c)]
    obs = [dict(time=t) for t in GRID]
    return doses, obs


EXTRA = dict(rate_central=30.0, dur_central=3.0, dur_depot=6.0)
REGIMENS = {False: ("bolus", "infusion", "ss_bolus", "ss_infusion", "reset"),
            True: ("bolus", "infusion", "oral", "depot_infusion", "ss_bolus", "ss_depot", "reset")}


@functools.lru_cache
def cached_reference(n, depot, name, p_items):
    return reference_states(n, depot, dict(p_items), *regimen(name, depot, n))


def check_against_scipy(n, depot, names, p=None):
    """closed_form on the regimens ``names`` (one subject each) against the scipy reference."""
    p = p or make_params(n, depot, **EXTRA)
    subjects = [regimen(name, depot, n) for name in names]
    sol = closed_form(make_model(n, depot), p, make_events(subjects))
    for i, name in enumerate(names):
        ref = cached_reference(n, depot, name, tuple(sorted(p.items())))
        atol = 1e-10 * np.abs(ref).max()
        np.testing.assert_allclose(np.asarray(sol.states[i]), ref, rtol=1e-9, atol=atol, err_msg=names[i])
        central = ref[:, 1 if depot else 0]
        np.testing.assert_allclose(np.asarray(sol.pred[i]), central / p["vc"], rtol=1e-9, atol=atol / p["vc"])
    assert np.all(np.asarray(sol.result) == 0) and np.all(np.asarray(sol.num_steps) == 0)


@pytest.mark.parametrize("n, depot", [(n, depot) for n in (1, 2, 3) for depot in (False, True)])
def test_matches_scipy(n, depot):
    # all regimens at once: every kind of record in one batch (the general graph)
    check_against_scipy(n, depot, REGIMENS[depot])


@pytest.mark.parametrize("n, depot, name", [(2, True, "oral"), (2, True, "depot_infusion"), (2, True, "ss_depot"),
                                            (3, False, "ss_infusion"), (1, True, "reset")])
def test_specialised_graphs_match_scipy(n, depot, name):
    # one regimen alone: only the terms its kinds of record need are traced
    check_against_scipy(n, depot, [name])


# --- hand-checkable closed forms -----------------------------------------------------------------

T_HAND = np.array([0.0, 0.1, 0.5, 1.0, 3.0, 7.0, 24.0, 100.0])


def test_one_compartment_bolus_by_hand():
    ev = make_events([([dict(time=0.0, amt=100.0, cmt=0)], [dict(time=t) for t in T_HAND])])
    sol = closed_form(popkpd.OneCompartment(absorption=False), dict(cl=2.0, vc=10.0), ev)
    np.testing.assert_allclose(np.asarray(sol.pred[0]), 100.0 / 10.0 * np.exp(-0.2 * T_HAND), rtol=1e-12, atol=0)


def bateman_decimal(dose, f, ka, cl, vc, tlag, t):
    """F D ka / (V (ka - k)) (e^{-k t'} - e^{-ka t'}), t' = t - tlag, in 50-digit arithmetic;
    the ka == k limit F D k t' e^{-k t'} / V."""
    getcontext().prec = 50
    ka, k, tt = Decimal(ka), Decimal(cl) / Decimal(vc), Decimal(t) - Decimal(tlag)
    if tt <= 0:
        return 0.0
    if ka == k:
        return float(Decimal(f) * Decimal(dose) * k * tt * (-k * tt).exp() / Decimal(vc))
    return float(Decimal(f) * Decimal(dose) * ka / (Decimal(vc) * (ka - k)) * ((-k * tt).exp() - (-ka * tt).exp()))


@pytest.mark.parametrize("ka", [1.3, 0.2, 0.2 * (1 + 1e-9), 0.2 * (1 - 1e-6), 0.2 * (1 + 3e-3), 0.05])
def test_bateman_with_lag_and_f(ka):
    # ka == cl/vc = 0.2 is the flip-flop coincidence; neighbours test the transition to the series
    p = dict(cl=2.0, vc=10.0, ka=ka, tlag=0.4, f_bio=0.7)
    model = popkpd.OneCompartment(lag_time=True, bioavailable_fraction=True)
    ev = make_events([([dict(time=0.0, amt=100.0, cmt=0)], [dict(time=t) for t in T_HAND])])
    sol = closed_form(model, p, ev)
    expected = [bateman_decimal(100.0, 0.7, ka, 2.0, 10.0, 0.4, t) for t in T_HAND]
    np.testing.assert_allclose(np.asarray(sol.pred[0]), expected, rtol=1e-12, atol=1e-300)
    depot = [0.7 * 100 * math.exp(-ka * (t - 0.4)) if t > 0.4 else 0.0 for t in T_HAND]
    np.testing.assert_allclose(np.asarray(sol.states[0, :, 0]), depot, rtol=1e-12, atol=0)


def test_two_compartment_absorption_at_an_eigenvalue_matches_scipy():
    # ka equal to a disposition eigenvalue: no division by ka - lambda anywhere
    p = make_params(2, True, **EXTRA)
    for lam in np.linalg.eigvals(reference_matrix(2, False, p)).real:
        check_against_scipy(2, True, ["ss_depot"], dict(p, ka=float(-lam)))


# --- the kernels and the eigen-decomposition -----------------------------------------------------


def divided_difference_decimal(nodes):
    """exp[x_0, ..., x_k] by the recursive definition in 60-digit arithmetic (distinct nodes)."""
    getcontext().prec = 60
    x = [Decimal(v) for v in nodes]
    table = [xi.exp() for xi in x]
    for level in range(1, len(x)):
        table = [(table[i + 1] - table[i]) / (x[i + level] - x[i]) for i in range(len(table) - 1)]
    return float(table[0])


NODES = [(-1.0, -2.0, -0.5), (0.0, -3e-3, -7e-3), (-4.0, -4.0 + 1e-9, -4.0 - 2e-9), (-0.3, -0.3 + 2e-2, -50.0),
         (-800.0, -1.0, 0.0), (-2.0, -2.0 + 5e-3, -2.0 + 1e-2), (-1e-12, 0.0, -5.0), (3.0, 2.0, -700.0)]


@pytest.mark.parametrize("nodes", NODES)
def test_divided_differences_against_decimal(nodes):
    p, q, r = nodes
    for y in (1.0, 0.37):  # (e^{py} - e^{qy}) / (p - q) from the exponentials
        first = _divided_difference(math.exp(p * y), math.exp(q * y), p, q, y)
        np.testing.assert_allclose(float(first), y * divided_difference_decimal([p * y, q * y]), rtol=1e-13)
    for perm in ((p, q, r), (r, p, q), (q, r, p), (r, q, p)):  # symmetric in its nodes
        np.testing.assert_allclose(float(_exp_dd3(*perm)), divided_difference_decimal([p, q, r]), rtol=1e-13)


def test_divided_differences_at_coinciding_nodes():
    x = -1.7
    np.testing.assert_allclose(float(_divided_difference(math.exp(x), math.exp(x), x, x, 1.0)), math.exp(x), rtol=1e-15)
    np.testing.assert_allclose(float(_exp_dd3(x, x, x)), math.exp(x) / 2, rtol=1e-15)
    # at a coincidence the gradient is the limit of the gradients: d/da exp[a, x] at a = x is e^x / 2
    g = jax.grad(lambda a: _divided_difference(jnp.exp(a), math.exp(x), a, x, 1.0))(x)
    np.testing.assert_allclose(float(g), math.exp(x) / 2, rtol=1e-14)
    g3 = jax.grad(lambda a: _exp_dd3(a, x, -0.4))(x)
    h = 1e-6
    fd = (divided_difference_decimal([x + h, x + 1e-30, -0.4])
          - divided_difference_decimal([x - h, x + 1e-30, -0.4])) / (2 * h)
    np.testing.assert_allclose(float(g3), fd, rtol=1e-8)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_modes_reproduce_the_model_matrix_and_its_exponential(n):
    model = make_model(n, False)
    p = {k: jnp.asarray(v) for k, v in P[n].items()}
    lam, v, w = _modes(model, p)
    np.testing.assert_allclose(np.asarray(v @ jnp.diag(lam) @ w), np.asarray(model.matrix(p)), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(np.asarray(w @ v), np.eye(n), atol=1e-14)
    np.testing.assert_allclose(np.asarray(model.matrix(p)), reference_matrix(n, False, P[n]), rtol=1e-15)
    # e^{A t} = V e^{lam t} W, and its gradient (rotation for n = 2, eigh for n = 3) by central differences
    names = list(P[n])

    @jax.jit
    def propagator(log_values):
        lam, v, w = _modes(model, {k: jnp.exp(log_values[i]) for i, k in enumerate(names)})
        return v @ jnp.diag(jnp.exp(lam * 7.0)) @ w

    x = np.log([P[n][k] for k in names])
    expected = expm(reference_matrix(n, False, P[n]) * 7.0)
    np.testing.assert_allclose(np.asarray(propagator(x)), expected, rtol=1e-12, atol=1e-15)
    weights = np.arange(1.0, n * n + 1).reshape(n, n)
    g = jax.grad(lambda lv: jnp.sum(propagator(lv) * weights))(jnp.asarray(x))
    h, fd = 1e-5, []
    for i in range(len(x)):
        step = np.eye(len(x))[i] * h
        difference = np.asarray(propagator(x + step)) - np.asarray(propagator(x - step))
        fd.append(float(np.sum(difference * weights)) / (2 * h))
    np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-6, atol=1e-10)


# --- event semantics -----------------------------------------------------------------------------


def test_observation_at_a_dose_time_follows_file_order():
    m = popkpd.OneCompartment(absorption=False)
    doses = [dict(time=0.0, amt=100.0, cmt=0, row=0), dict(time=6.0, amt=50.0, cmt=0, row=2)]
    obs = [dict(time=6.0, row=1), dict(time=6.0, row=3)]
    sol = closed_form(m, dict(cl=2.0, vc=10.0), make_events([(doses, obs)]))
    pre = 10.0 * math.exp(-1.2)
    np.testing.assert_allclose(np.asarray(sol.pred[0]), [pre, pre + 5.0], rtol=1e-14)


def test_ties_with_a_lag_use_the_effective_time():
    # depot dose at t=0 with tlag=0.5: an observation at 0.5 sees it only if its row comes later
    m = popkpd.OneCompartment(lag_time=True, bioavailable_fraction=True)
    p = dict(cl=2.0, vc=10.0, ka=1.0, tlag=0.5, f_bio=0.8)
    doses = [dict(time=0.0, amt=100.0, cmt=0, row=1)]
    obs = [dict(time=0.0, row=2), dict(time=0.5, row=0), dict(time=0.5, row=3), dict(time=0.6, row=4)]
    sol = closed_form(m, p, make_events([(doses, obs)]))
    np.testing.assert_allclose(np.asarray(sol.states[0, :, 0]), [0.0, 0.0, 80.0, 80.0 * math.exp(-0.1)], rtol=1e-14)


def test_reset_and_steady_state_cancel_earlier_records():
    m = popkpd.OneCompartment(absorption=False)
    p = dict(cl=2.0, vc=10.0)
    doses = [dict(time=0.0, amt=100.0, cmt=0, rate=5.0),  # runs until t=20, cancelled by the reset
             dict(time=5.0, amt=0.0, cmt=0, reset=True), dict(time=8.0, amt=30.0, cmt=0),
             dict(time=10.0, amt=40.0, cmt=0, ss=1, ii=24.0)]
    obs = [dict(time=t) for t in (5.0, 7.0, 9.0, 11.0)]
    sol = closed_form(m, p, make_events([(doses, obs)]))
    k = 0.2
    expected = [0.0, 0.0, 30.0 * math.exp(-k), 40.0 * math.exp(-k) / (1 - math.exp(-k * 24))]
    np.testing.assert_allclose(np.asarray(sol.states[0, :, 0]), expected, rtol=1e-13, atol=1e-300)


def test_subjects_padding_jit_and_vmap_are_consistent():
    model, p = make_model(2, True), make_params(2, True, **EXTRA)
    subjects = [regimen(name, True) for name in ("oral", "ss_depot", "oral")]
    subjects[2] = (subjects[2][0], subjects[2][1][:7])  # fewer observations: padded
    scale = np.array([1.0, 1.3, 0.7])
    params = {k: v * scale for k, v in p.items()}
    together = closed_form(model, params, make_events(subjects))
    for i, subject in enumerate(subjects):
        alone = closed_form(model, {k: v[i:i + 1] for k, v in params.items()}, make_events([subject]))
        k = len(subject[1])
        np.testing.assert_allclose(np.asarray(together.states[i, :k]), np.asarray(alone.states[0]),
                                   rtol=1e-12, atol=1e-300)
    assert np.all(np.asarray(together.states[2, 7:]) == 0.0)
    ev = make_events(subjects)
    traced = jax.jit(lambda prm, e: closed_form(model, prm, e).pred)(params, ev)  # traced events: every term
    np.testing.assert_allclose(np.asarray(traced), np.asarray(together.pred), rtol=1e-12)


# --- gradients -----------------------------------------------------------------------------------


def _grad_check(model, p, doses, obs, names, points):
    """jax.grad of a weighted sum of predictions against central differences in log-parameters."""
    ev = make_events([(doses, obs)])
    weights = np.linspace(0.5, 1.5, len(obs))

    def objective(log_values):
        q = dict(p, **{k: jnp.exp(log_values[i]) for i, k in enumerate(names)})
        return jnp.sum(closed_form(model, q, ev).pred[0] * weights)

    grad = jax.grad(objective)
    for point in points:
        x = np.log([point.get(k, p[k]) for k in names])
        g = np.asarray(grad(jnp.asarray(x)))
        assert np.all(np.isfinite(g))
        fd = np.zeros_like(x)
        for i in range(len(x)):
            h = 1e-5
            up, down = x.copy(), x.copy()
            up[i] += h
            down[i] -= h
            fd[i] = (float(objective(jnp.asarray(up))) - float(objective(jnp.asarray(down)))) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-8 * np.abs(fd).max())


def test_gradient_two_compartment_depot_every_kind_of_record():
    # SS bolus and SS zero-order input into the depot (lag, F), an IV input with RATE -1, and ka at a
    # generic value and exactly at each disposition eigenvalue (the flip-flop coincidence)
    doses = regimen("ss_depot", True)[0] + [dict(time=40.0, amt=50.0, cmt=1, rate=-1.0)]
    obs = [dict(time=t) for t in (0.2, 3.0, 12.5, 30.0, 37.0, 41.0, 60.0)]
    p = make_params(2, True, rate_central=20.0, dur_depot=6.0)
    lam = np.linalg.eigvals(reference_matrix(2, False, p)).real
    _grad_check(make_model(2, True), p, doses, obs,
                ["cl", "vc", "q", "vp", "ka", "tlag", "f_bio", "rate_central", "dur_depot"],
                [{}, {"ka": -lam[0]}, {"ka": -lam[1]}])


# --- errors --------------------------------------------------------------------------------------


def _simple_events(**dose):
    return make_events([([dict(dict(time=0.0, amt=100.0, cmt=0), **dose)], [dict(time=1.0)])])


def test_error_time_varying_parameter():
    ev = _simple_events()
    with pytest.raises(ValueError, match=r"parameter 'cl' has shape \(1, 3\).*varies in time.*popkpd.simulate"):
        closed_form(popkpd.OneCompartment(absorption=False), dict(cl=np.ones((1, 3)), vc=10.0), ev)


def test_error_wrong_parameter_shape():
    with pytest.raises(ValueError, match=r"parameter 'vc' has shape \(2,\); expected a scalar or \(1,\)"):
        closed_form(popkpd.OneCompartment(absorption=False), dict(cl=1.0, vc=np.ones(2)), _simple_events())


def test_error_missing_parameter():
    with pytest.raises(ValueError, match=r"needs parameters .*missing \['q', 'vp'\]"):
        closed_form(popkpd.TwoCompartment(absorption=False), dict(cl=1.0, vc=10.0), _simple_events())


def test_error_nonlinear_model():
    with pytest.raises(ValueError, match=r"received a MichaelisMentenOneCompartment.*popkpd.simulate"):
        closed_form(popkpd.MichaelisMentenOneCompartment(), dict(vmax=1.0, km=1.0, vc=1.0, ka=1.0), _simple_events())


@pytest.mark.parametrize("dose, match", [
    (dict(ss=1, ii=0.0), r"row 0 \(subject index 0\) has SS=1 with II=0.0; a steady-state dose needs II > 0"),
    (dict(rate=-3.0), r"row 0 \(subject index 0\) has RATE=-3.0; expected RATE >= 0, -1"),
    (dict(rate=-1.0), r"RATE=-1 \(modelled rate\) into state 'central' but params has no 'rate_central'"),
    (dict(rate=-2.0), r"RATE=-2 \(modelled duration\) into state 'central' but params has no 'dur_central'"),
    (dict(cmt=2), r"addresses state index 2 \(CMT 3\); OneCompartment has states \('central',\)"),
    (dict(ss=2, ii=12.0), r"has SS=2; closed_form supports SS=0 and SS=1"),
])
def test_error_bad_dose_records(dose, match):
    with pytest.raises(ValueError, match=match):
        closed_form(popkpd.OneCompartment(absorption=False), dict(cl=1.0, vc=10.0), _simple_events(**dose))


def test_error_bad_output_index():
    ev = make_events([([dict(time=0.0, amt=1.0, cmt=0)], [dict(time=1.0, output=1)])])
    match = r"observation 0 of subject index 0 asks for output index 1; OneCompartment has outputs \('conc',\)"
    with pytest.raises(ValueError, match=match):
        closed_form(popkpd.OneCompartment(absorption=False), dict(cl=1.0, vc=10.0), ev)


def test_non_finite_predictions_are_reported():
    # a steady state without elimination does not exist: flagged, never a silent inf / NaN
    model, ev = popkpd.OneCompartment(absorption=False), _simple_events(ss=1, ii=12.0)
    with pytest.raises(ValueError, match=r"non-finite predictions for 1 of 1 subjects.*cl > 0"):
        closed_form(model, dict(cl=0.0, vc=10.0), ev)
    sol = closed_form(model, dict(cl=0.0, vc=10.0), ev, throw=False)
    assert int(sol.result[0]) == -1
