"""Closed-form solutions of the linear mammillary models: the fast path and test oracle of ``simulate``.

``closed_form(model, params, events)`` gives what ``simulate`` gives for ``OneCompartment``,
``TwoCompartment`` and ``ThreeCompartment`` (with or without a depot, lag ``tlag`` and
bioavailability ``f_bio``), without an ODE solver: every state is a superposition, over dose
records, of exact unit responses.

Method. The disposition block (central + peripherals) is ``A = B diag(1/v)`` with ``B`` symmetric,
so ``diag(v)^-1/2 B diag(v)^-1/2`` has an orthogonal eigen-decomposition (one rotation for two
compartments, ``eigh`` for three): ``A = V diag(lam) W`` with real eigenvalues ``lam <= 0``. Per
eigenmode ``z``, the response to a dose is a scalar function ``r(z)`` of the time since the dose
(bolus ``e^{zx}``; zero-order input; and, for a steady-state dose, the sum over the infinite train of
doses every II). A depot dose reaches mode
``lam_k`` through the first-order input ``ka * depot``, and the response is ``ka`` times the divided
difference ``r[lam_k, -ka]``. All divided differences are divided differences of the exponential
(``_divided_difference``, ``_exp_dd3``) evaluated in a form that stays exact when the nodes meet,
so ``ka == -lam_k`` (the flip-flop coincidence ``ka == cl/vc`` of the one-compartment model) needs
no special case and has finite gradients. Cost: ``O(O * D * n)`` per subject after one eigen-
decomposition; only the terms for the kinds of dose record present in the data are traced.

Semantics (those of ``simulate``): a dose record takes effect at its effective time ``t + lag[cmt]``
with amount ``AMT * F[cmt]``; records are ordered by effective time, file row breaking ties, and an
observation sees a record only if the record comes first in that order. A reset (EVID 3/4) or a
steady-state record (SS=1) cancels every record before it (their amounts and running infusions).
An SS record is the train of identical doses at ``tau - k * II``, ``k = 0, 1, ...``: the state just
after it is the periodic steady state; when an infusion lasts longer than II, the infusions of the
train still running at ``tau`` keep running after it.

Units: time in the data's time unit, amounts in its amount unit, ``conc = central / vc``.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._events import Events, host_readable
from .._structural.linear import _Mammillary
from .simulate import Solution

_SERIES_BELOW = 1e-3  # below this spread (dimensionless: nodes x time) divided differences use series


# --- divided differences of exp, exact through coinciding nodes ---------------------------------


def _ome_series(d):
    """Taylor series of ``(1 - e^-d) / d`` (``exp[0, -d]``) for ``|d| < 1e-3``: error < d^5 / 6! < 2e-18."""
    return 1 - d / 2 * (1 - d / 3 * (1 - d / 4 * (1 - d / 5)))


def _one_minus_exp_over(d):
    """``(1 - e^-d) / d`` for ``d >= 0``, smooth and exact through ``d = 0``."""
    small = jnp.abs(d) < _SERIES_BELOW
    d_safe = jnp.where(small, 1.0, d)
    return jnp.where(small, _ome_series(d), -jnp.expm1(-d_safe) / d_safe)


def _divided_difference(ea, eb, a, b, y):
    """``(e^{ay} - e^{by}) / (a - b)`` from ``ea = e^{ay}``, ``eb = e^{by}`` (``y >= 0``): the response
    ``int_0^y e^{a(y-u)} e^{bu} du`` of mode ``a`` fed by mode ``b``; ``y e^{ay}`` when ``a == b``.
    The quotient loses ``2 eps (1 + |a y|) / |(a-b) y|`` to cancellation, so a series takes over below
    1e-3: relative error < 5e-13 (1 + |a y|)."""
    a_top = a > b  # one consistent choice of the larger node (also at a tie: keeps the gradient right)
    d = jnp.where(a_top, a - b, b - a) * y
    small = d < _SERIES_BELOW
    series = jnp.where(a_top, ea, eb) * y * _ome_series(d)
    return jnp.where(small, series, (ea - eb) / jnp.where(small, 1.0, a - b))


def _exp_dd3(p, q, r):
    """Second divided difference of exp at ``p, q, r``; ``e^p / 2`` when all three coincide."""
    def order(x, y):  # compare-exchange: a permutation even at ties, so gradients stay right
        first = x >= y
        return jnp.where(first, x, y), jnp.where(first, y, x)

    p, q = order(p, q)
    mid, lo = order(q, r)
    hi, mid = order(p, mid)
    a, b = hi - mid, hi - lo  # 0 <= a <= b; exp[0, -a, -b] = (exp[0,-a] - exp[-a,-b]) / b
    small = b < 1e-2  # the quotient loses 4 eps / b; the series below errs by < b^6 / 8! < 3e-17
    b_safe = jnp.where(small, 1.0, b)
    direct = (_one_minus_exp_over(a) - jnp.exp(-a) * _one_minus_exp_over(mid - lo)) / b_safe
    # series: sum_k (-1)^k h_k(a, b) / (k + 2)!, h_k the complete homogeneous polynomial
    series, h, bk, fact = 0.0, jnp.ones_like(b), jnp.ones_like(b), 2.0
    for k in range(6):
        if k:
            bk = bk * b
            h = a * h + bk
            fact *= k + 2
        series = series + (-1) ** k * h / fact
    return jnp.exp(hi) * jnp.where(small, series, direct)


def _stacked(fn, *calls):
    """``[fn(*args) for args in calls]`` with a single call of ``fn`` on the concatenated (broadcast,
    flattened) arguments: the traced graph holds ``fn`` once, which keeps compile times down."""
    if len(calls) == 1:
        return [fn(*calls[0])]
    shapes = [jnp.broadcast_shapes(*(jnp.shape(a) for a in args)) for args in calls]
    flat = [jnp.concatenate([jnp.broadcast_to(args[i], shape).ravel() for args, shape in zip(calls, shapes)])
            for i in range(len(calls[0]))]
    splits = np.cumsum([int(np.prod(shape)) for shape in shapes])[:-1]
    return [out.reshape(shape) for out, shape in zip(jnp.split(fn(*flat), splits), shapes)]


def _pick(table, index):
    """``table[index]`` along the first axis of a small table, as selects (gathers are slow on CPU)."""
    out = jnp.zeros(jnp.shape(index) + table.shape[1:], table.dtype)
    idx = jnp.reshape(index, jnp.shape(index) + (1,) * (table.ndim - 1))
    for j in range(table.shape[0]):
        out = jnp.where(idx == j, table[j], out)
    return out


# --- one subject ---------------------------------------------------------------------------------


def _modes(model: _Mammillary, p: dict):
    """Disposition block ``A = V diag(lam) W`` (central first, then peripherals); ``W = V^-1``.

    ``A = B diag(1/v)`` with ``B`` symmetric, so ``S = diag(v)^-1/2 B diag(v)^-1/2 = U diag(lam) U^T``
    with ``U`` orthogonal, ``V = diag(v)^1/2 U`` and ``W = U^T diag(v)^-1/2``. Two compartments: one
    Jacobi rotation, and the slow eigenvalue from the determinant ``cl q / (vc vp)`` (no cancellation);
    three: ``eigh``.
    """
    names = model._peripheral_names
    if not names:
        lam = jnp.reshape(-p["cl"] / p["vc"], (1,))
        return lam, jnp.ones((1, 1)), jnp.ones((1, 1))
    root_v = jnp.sqrt(jnp.stack([p["vc"]] + [p[n] for n in names[1::2]]))
    if len(names) == 2:
        a, d, b = -(p["cl"] + p["q"]) / p["vc"], -p["q"] / p["vp"], p["q"] / (root_v[0] * root_v[1])
        theta = 0.5 * jnp.arctan2(2 * b, a - d)
        c, s = jnp.cos(theta), jnp.sin(theta)
        fast = 0.5 * (a + d) - jnp.sqrt(0.25 * (a - d) ** 2 + b * b)
        lam = jnp.stack([p["cl"] * p["q"] / (p["vc"] * p["vp"] * fast), fast])
        u = jnp.stack([jnp.stack([c, -s]), jnp.stack([s, c])])
    else:
        q = jnp.stack([p[n] for n in names[0::2]])
        sym = jnp.diag(jnp.concatenate([jnp.reshape(-(p["cl"] + q.sum()), (1,)), -q]))
        sym = sym.at[0, 1:].set(q).at[1:, 0].set(q) / (root_v[:, None] * root_v[None, :])
        lam, u = jnp.linalg.eigh(sym)
    return lam, root_v[:, None] * u, u.T / root_v[None, :]


class _Features(NamedTuple):
    """Which kinds of dose record occur, decided on the host (all True for traced events): only
    the terms they need are traced, which keeps the common case (boluses) small and fast."""

    infusion: bool  # RATE != 0
    steady_state: bool  # SS=1
    cancel: bool  # resets (EVID 3/4) or SS records
    depot: bool  # doses into the depot of a model with absorption
    direct: bool  # doses into the central or a peripheral compartment
    rate: bool  # params carry rate_<state> (RATE -1)
    duration: bool  # params carry dur_<state> (RATE -2)


def _subject(model: _Mammillary, p: dict, ev: dict, feat: _Features):
    """States [O, n] of one subject at its observation times (zeros for padded observations)."""
    lam, v_mat, w_mat = _modes(model, p)
    m = lam.shape[0]
    d_mask, cmt = ev["dose_mask"], ev["dose_cmt"]
    no = jnp.zeros_like(d_mask)

    # dose records: effective time, entering amount, zero-order rate and duration
    tau = ev["dose_time"] + _pick(model.lag(p), cmt)
    amount = jnp.where(d_mask, ev["dose_amt"] * _pick(model.bioavailability(p), cmt), 0.0)
    amp = amount  # per unit response: amount for a bolus, rate for a zero-order input
    infusion = d_mask & (ev["dose_rate"] != 0) if feat.infusion else no
    if feat.infusion:
        code = ev["dose_rate"]
        m_rate = _pick(model.modelled_rate(p), cmt) if feat.rate else jnp.nan
        m_dur = _pick(model.modelled_duration(p), cmt) if feat.duration else jnp.nan
        rate = jnp.where(code > 0, code, jnp.where(code == -1, m_rate, amount / jnp.where(code == -2, m_dur, 1.0)))
        rate = jnp.where(infusion, rate, 1.0)
        dur = jnp.where(infusion, jnp.where(code == -2, m_dur, amount / rate), 0.0)
        amp = jnp.where(infusion, rate, amount)
    ss = d_mask & (ev["dose_ss"] == 1) if feat.steady_state else no
    ii = jnp.where(ss, ev["dose_ii"], 1.0)

    # which records each observation sees: those before it in (effective time, row) order, and
    # not before the last reset / SS record it sees
    s = ev["obs_time"][:, None] - tau[None, :]  # [O, D] time since the dose
    seen = d_mask & ((s > 0) | ((s == 0) & (ev["dose_row"][None, :] < ev["obs_row"][:, None])))
    if feat.cancel:
        order = jnp.lexsort((ev["dose_row"], jnp.where(d_mask, tau, jnp.inf)))
        rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))
        last_cancel = jnp.where(seen & (ev["dose_reset"] | ss), rank, -1).max(axis=1)
        seen = seen & (rank[None, :] >= last_cancel[:, None])
    seen = seen & ev["obs_mask"][:, None]

    # mode responses r(z) [O, D, k] at the nodes z: the eigenvalues, then -ka for depot doses. Each
    # kernel is evaluated once on all its arguments (_stacked): a small graph compiles fast.
    x = jnp.maximum(s, 0.0)[..., None]  # [O, D, 1]
    depot = model.absorption and feat.depot
    ka = p["ka"] if depot else None
    nodes = jnp.concatenate([lam, -jnp.reshape(ka, (1,))]) if depot else lam
    inf_, ss_, ssinf = infusion[:, None], ss[:, None], (ss & infusion)[:, None]  # [D, 1] against nodes
    times = {"x": x}  # time since the dose; for inputs y2, since the (oldest running) input ended
    if feat.infusion:
        running = jnp.where(ss & infusion, jnp.maximum(jnp.ceil((dur - x[..., 0]) / ii), 0.0), 0.0)[..., None]
        times["y2"] = jnp.maximum(jnp.where(ss_, x - dur[:, None] + running * ii[:, None], x - dur[:, None]), 0.0)
    if feat.steady_state:
        times["ii"] = ii[:, None]
    e = dict(zip(times, _stacked(jnp.exp, *((nodes * t,) for t in times.values()))))
    dd_args = {}  # first divided differences (_divided_difference)
    if feat.infusion:  # unit-rate input: (e^{zx} - 1)/z - (e^{z y2} - 1)/z
        dd_args.update({k: (e[k], 1.0, nodes, 0.0, times[k]) for k in ("x", "y2")})
    if depot:  # depot -> central -> mode lam_k: ka * r[lam_k, -ka]
        dd_args.update({f"ka_{k}": (e[k][..., :m], e[k][..., m:], lam, -ka, times[k]) for k in ("x", "ii") if k in e})
    dd = dict(zip(dd_args, _stacked(_divided_difference, *dd_args.values()))) if dd_args else {}
    pre = jnp.where(inf_, dd["x"] - dd["y2"], e["x"]) if feat.infusion else e["x"]  # response to one dose
    r = pre
    if feat.steady_state:  # sum over the train: factor 1 / (1 - e^{z II}), minus running / z for inputs
        v = -1.0 / jnp.expm1(nodes * ii[:, None])
        r = pre * jnp.where(ss_, v, 1.0)
        if feat.infusion:
            r = r - jnp.where(ssinf, running / jnp.where(ssinf, nodes, 1.0), 0.0)
    coef = amp[:, None] * _pick(w_mat.T, cmt - int(model.absorption))  # [D, m]
    if depot:
        to_depot = d_mask & (cmt == 0)
        depot_amount = jnp.where(seen & to_depot, amp * r[..., m], 0.0).sum(axis=1)
        # depot -> central -> mode lam_k: ka * r[lam_k, -ka] (Leibniz rule for the SS factor v)
        r_dd = dd["ka_x"]
        if feat.infusion:  # the divided difference of (e^{zy} - 1)/z: second divided differences
            xy = jnp.stack([x, times["y2"]])
            dd3 = xy * xy * _exp_dd3(lam * xy, -ka * xy, 0.0 * xy)
            r_dd = jnp.where(inf_, dd3[0] - dd3[1], r_dd)
        if feat.steady_state:
            v_lam, v_ka = v[:, :m], v[:, m:]
            v_dd = dd["ka_ii"] * v_lam * v_ka
            r_dd = r_dd * jnp.where(ss_, v_ka, 1.0) + jnp.where(ss_, pre[..., :m] * v_dd, 0.0)
            if feat.infusion:
                r_dd = r_dd + jnp.where(ssinf, running / jnp.where(ssinf, -ka * lam, 1.0), 0.0)
        r = jnp.where(to_depot[:, None], ka * r_dd, r[..., :m]) if feat.direct else ka * r_dd
        coef = jnp.where(to_depot[:, None], amp[:, None] * w_mat.T[0], coef)
    modal = jnp.where(seen[..., None], r * coef[None], 0.0).sum(axis=1)  # [O, m]
    states = (modal[:, None, :] * v_mat[None]).sum(axis=2)  # small: elementwise beats a batched dot
    if model.absorption:
        depot_amount = depot_amount if depot else jnp.zeros(states.shape[0])
        states = jnp.concatenate([depot_amount[:, None], states], axis=1)
    return states


# --- entry point ---------------------------------------------------------------------------------


def _check_params(model, params: dict, n_subjects: int) -> dict:
    missing = [name for name in model.parameters if name not in params]
    if missing:
        raise ValueError(
            f"closed_form: {type(model).__name__} needs parameters {list(model.parameters)}; missing "
            f"{missing}. Pass them in `params` as arrays of shape [{n_subjects}] (one value per subject)."
        )
    out = {}
    for name, value in params.items():
        v = jnp.asarray(value, dtype=float)
        if v.ndim == 0:
            v = jnp.broadcast_to(v, (n_subjects,))
        if v.ndim == 2 and v.shape[0] == n_subjects:
            raise ValueError(
                f"closed_form: parameter {name!r} has shape {v.shape}, i.e. it varies in time on the "
                f"covariate grid; closed forms need one constant value per subject, shape ({n_subjects},). "
                f"Use popkpd.simulate(model, params, events) for time-varying parameters."
            )
        if v.shape != (n_subjects,):
            raise ValueError(
                f"closed_form: parameter {name!r} has shape {v.shape}; expected a scalar or "
                f"({n_subjects},) (one value per subject). Reshape it."
            )
        out[name] = v
    return out


def _check_events(model, events: Events, params: dict):
    """Value checks on concrete (host) events, naming row and subject; skipped inside a trace (the
    data layer has checked the table by then)."""
    keys = ("dose_mask", "dose_cmt", "dose_rate", "dose_ss", "dose_ii", "dose_row", "obs_mask", "obs_output")
    if not all(host_readable(getattr(events, k)) for k in keys):
        return
    mask, cmt, code, ss, ii, row, obs_mask, output = (np.asarray(getattr(events, k)) for k in keys)
    name, states = type(model).__name__, model.states
    state = np.array(states, dtype=object)[np.clip(cmt, 0, len(states) - 1)]
    checks = [
        (mask & ((cmt < 0) | (cmt >= len(states))), lambda i, j: (
            f"addresses state index {cmt[i, j]} (CMT {cmt[i, j] + 1}); {name} has states {states} "
            f"(CMT 1..{len(states)}). Check CMT against the model.")),
        (mask & (code < 0) & (code != -1) & (code != -2), lambda i, j: (
            f"has RATE={code[i, j]}; expected RATE >= 0, -1 (modelled rate) or -2 (modelled duration). Fix RATE.")),
        (mask & (ss != 0) & (ss != 1), lambda i, j: (
            f"has SS={ss[i, j]}; closed_form supports SS=0 and SS=1. Use SS=1 or expand the doses.")),
        (mask & (ss == 1) & ~(ii > 0), lambda i, j: (
            f"has SS=1 with II={ii[i, j]}; a steady-state dose needs II > 0 (the dosing interval). "
            f"Set II on that row, or SS=0.")),
    ]
    for value, prefix, what in ((-1, "rate", "modelled rate"), (-2, "dur", "modelled duration")):
        missing = np.array([f"{prefix}_{s}" not in params for s in state.ravel()]).reshape(state.shape)
        checks.append((mask & (code == value) & missing, lambda i, j, value=value, prefix=prefix, what=what: (
            f"has RATE={value} ({what}) into state {state[i, j]!r} but params has no '{prefix}_{state[i, j]}'. "
            f"Add that parameter, or give RATE > 0 in the data.")))
    for bad, message in checks:
        if np.any(bad):
            i, j = np.argwhere(bad)[0]
            raise ValueError(f"closed_form: dose record at row {row[i, j]} (subject index {i}) {message(i, j)}")
    bad = obs_mask & ((output < 0) | (output >= len(model.outputs)))
    if np.any(bad):
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"closed_form: observation {j} of subject index {i} asks for output index {output[i, j]}; "
            f"{name} has outputs {model.outputs}. Check DVID.")


def _features(model, events: Events, params: dict) -> _Features:
    # RATE -1 / -2 read rate_<state> / dur_<state>; _check_events made sure they exist when needed
    rate, duration = (any(k.startswith(prefix) for k in params) for prefix in ("rate_", "dur_"))
    keys = ("dose_mask", "dose_rate", "dose_ss", "dose_reset", "dose_cmt")
    if not all(host_readable(getattr(events, k)) for k in keys):
        return _Features(True, True, True, True, True, rate, duration)
    mask, code, ss, reset, cmt = (np.asarray(getattr(events, k)) for k in keys)
    into_depot = mask & (cmt == 0) if model.absorption else np.zeros_like(mask)
    return _Features(
        infusion=bool(np.any(mask & (code != 0))),
        steady_state=bool(np.any(mask & (ss == 1))),
        cancel=bool(np.any(mask & (reset | (ss == 1)))),
        depot=bool(np.any(into_depot)),
        direct=bool(np.any(mask & ~into_depot)),
        rate=rate,
        duration=duration,
    )


def closed_form(model, params: dict, events: Events, *, throw: bool = True) -> Solution:
    """Exact predictions of a linear 1/2/3-compartment model, by superposition over dose records.

    Same contract as ``simulate`` (same dose semantics, same ``Solution``; ``result`` is 0, or -1
    for a subject with non-finite predictions, and ``num_steps`` is 0) for ``OneCompartment``,
    ``TwoCompartment`` and ``ThreeCompartment``, with or without depot, lag and bioavailability.

    Args:
        model: a linear mammillary model.
        params: parameter name -> scalar or array [S], constant in time (a time-varying [S, C]
            parameter needs ``simulate``). ``rate_<state>`` / ``dur_<state>`` serve RATE -1 / -2.
        events: from ``read_nonmem(...).events`` or ``Regimen.to_events(...)``.
        throw: outside a trace, raise ``ValueError`` naming the subjects with non-finite
            predictions (e.g. SS doses with ``cl = 0``); inside jit the per-subject ``result`` says so.

    Returns:
        ``Solution`` with ``pred`` [S, O], ``outputs`` [S, O, 1] (``conc``) and ``states`` [S, O, n]
        (amounts), zero for padded observations.

    Speed: with concrete (host) ``events`` only the terms for the kinds of dose record present are
    traced (a bolus-only dataset gets a much smaller graph than one with SS infusions); pass
    ``events`` as a constant closed over by your jitted function, not as a traced argument, to
    keep that. ``params`` may be traced (jit, grad, vmap).
    """
    if not isinstance(model, _Mammillary):
        raise ValueError(
            f"closed_form: received a {type(model).__name__}; closed forms exist for the linear "
            f"OneCompartment, TwoCompartment and ThreeCompartment models. Use popkpd.simulate(model, "
            f"params, events) for other structural models."
        )
    n_sub = events.n_subjects
    params = _check_params(model, params, n_sub)
    _check_events(model, events, params)
    sol = _closed_form_jit(model, params, events, _features(model, events, params))
    if throw and host_readable(sol.result) and np.any(np.asarray(sol.result) != 0):
        failed = np.flatnonzero(np.asarray(sol.result) != 0)
        values = {i: {k: float(np.asarray(v)[i]) for k, v in params.items()} for i in failed[:5]}
        raise ValueError(
            f"closed_form: non-finite predictions for {len(failed)} of {n_sub} subjects (subject index: "
            f"parameters) {values}; expected finite values. Check the parameters (cl > 0 is needed for "
            f"steady-state doses, ka > 0 for SS doses into the depot)."
        )
    return sol


@eqx.filter_jit
def _closed_form_jit(model, params, events, features):
    ev = {k: getattr(events, k) for k in events.__dataclass_fields__}
    states = jax.vmap(lambda p, e: _subject(model, p, e, features))(params, ev)

    def outputs_one(p, t, y):
        return jax.vmap(lambda tt, yy: model.output(tt, yy, p))(t, y)

    outs = jax.vmap(outputs_one)(params, events.obs_time, states)
    outs = jnp.where(events.obs_mask[..., None], outs, 0.0)
    pred = jnp.zeros(outs.shape[:2])
    for j in range(outs.shape[2]):  # outs[..., obs_output] without a gather
        pred = jnp.where(events.obs_output == j, outs[..., j], pred)
    bad = ~jnp.all(jnp.isfinite(jnp.where(events.obs_mask, pred, 0.0)), axis=1)
    zeros = jnp.zeros(events.n_subjects, dtype=jnp.int32)
    return Solution(pred=pred, outputs=outs, states=states, result=jnp.where(bad, -1, zeros), num_steps=zeros)
