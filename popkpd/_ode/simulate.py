"""The ODE core: solve a structural model across dose events with diffrax.

How a subject is solved (one jit region, ``vmap`` over subjects):

1. Dose records get their effective time (record time + lag of the receiving state), their
   entering amount (AMT x F) and, for zero-order inputs, a rate and a duration (RATE > 0, or the
   model's ``modelled_rate`` / ``modelled_duration`` for RATE -1 / -2). They are ordered by
   effective time, file order breaking ties.
2. Integration is split into segments at the dose times (a ``lax.scan`` over doses). At the start
   of each segment the dose is applied as a state jump: reset to the initial state (EVID 3/4),
   replacement by the steady state (SS=1, linear models: from the matrix exponential), or a bolus
   added to its state. Dose discontinuities are therefore never left to the step-size controller.
3. Zero-order inputs are piecewise-constant terms added to the vector field; their start and stop
   times, and the change points of time-varying parameters, are declared as ``jump_ts`` so the
   controller steps onto them. A reset or a steady-state dose cancels running infusions.
4. An observation is read in the segment that follows the last dose applied before it (a dose at
   the same time counts only if its record comes first in the file). When the host can count them
   beforehand, each segment saves the solution only at its own observations.

``solver="expm"`` (linear models) replaces step 2's numerical integration by the exact linear
propagator: matrix exponentials between consecutive knots (start, doses, infusion stops, changes of
time-varying parameters), computed in one batch, then a scan of matrix-vector products and the same
dose jumps. ``sensitivity="forward"`` wraps the per-subject solve in a custom VJP whose backward pass
uses the subject's forward-mode Jacobian (see ``_forward_sensitivities``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._events import Events, host_readable
from .._structural.base import AbstractStructuralModel

_SOLVERS = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "kvaerno5": diffrax.Kvaerno5,
    "kvaerno3": diffrax.Kvaerno3,
}


class Solution(eqx.Module):
    """What ``simulate`` returns, per subject ``S`` and observation record ``O``.

    pred     the output each observation record asks for (``events.obs_output``)
    outputs  all model outputs at each observation time
    states   all states at each observation time
    result   0 where the solve succeeded, else a diffrax result code (per subject)
    num_steps  accepted + rejected solver steps per subject (a cost diagnostic)
    """

    pred: Float[Array, "S O"]
    outputs: Float[Array, "S O M"]
    states: Float[Array, "S O N"]
    result: Int[Array, " S"]
    num_steps: Int[Array, " S"]


class SolverError(RuntimeError):
    """The ODE solver failed for one or more subjects (step limit, non-finite values)."""


def _lookup(params: dict, cov_time, t):
    """Parameters at time t: [C]-shaped entries follow NONMEM's (t_{i-1}, t_i] convention."""
    idx = jnp.clip(jnp.searchsorted(cov_time, t, side="left"), 0, cov_time.shape[0] - 1)
    return {k: (v[idx] if v.ndim == 1 else v) for k, v in params.items()}


def _steady_state(model, p, cmt, amount, rate, duration, ii, n):
    """State just after an SS=1 dose (bolus) or at the start of an SS infusion (linear models)."""
    a = model.matrix(p)
    e_j = jax.nn.one_hot(cmt, n, dtype=a.dtype)
    # Bolus: y+ = e^{A ii} y+ + amount e_j
    decay = jax.scipy.linalg.expm(a * ii)
    bolus = jnp.linalg.solve(jnp.eye(n) - decay, amount * e_j)
    # Infusion of `rate` for `duration` (<= ii), starting now: y0 = e^{A ii} y0 + e^{A(ii-T)} int_0^T e^{As} ds rate e_j
    aug = jnp.zeros((n + 1, n + 1), a.dtype).at[:n, :n].set(a).at[:n, n].set(rate * e_j)
    during = jax.scipy.linalg.expm(aug * duration)[:n, n]  # state after the infusion from zero
    after = jax.scipy.linalg.expm(a * jnp.maximum(ii - duration, 0.0)) @ during
    infusion = jnp.linalg.solve(jnp.eye(n) - decay, after)
    return jnp.where(rate > 0, infusion, bolus)


class _Config(NamedTuple):
    """Static choices of one ``simulate`` call (hashable: part of the jit cache key)."""

    solver: object  # a diffrax solver instance, or "expm"
    rtol: float
    atol: float
    max_steps: int
    adjoint: object
    sensitivity: str  # "reverse" (through the diffrax adjoint) or "forward" (per-subject Jacobian)
    has_infusions: bool
    needs_rate: bool
    needs_dur: bool
    has_ss: bool
    time_varying: bool
    obs_slots: int = 0  # observations saved per dose interval (0: all of them; see _obs_slots)


def _schedule(model, params, ev, config: _Config) -> dict:
    """Doses in order of effective time, zero-order inputs, jump times and the observation layout
    of one subject: everything both propagators (diffrax and the matrix exponential) share."""
    n = len(model.states)
    d_mask = ev["dose_mask"]
    t_obs_real = jnp.where(ev["obs_mask"], ev["obs_time"], -jnp.inf).max()
    t_dose_real = jnp.where(d_mask, ev["dose_time"], -jnp.inf).max()
    t_last = jnp.maximum(t_obs_real, t_dose_real)
    cov_time = ev["cov_time"]

    p_at = (lambda t: _lookup(params, cov_time, t)) if config.time_varying else (lambda t: params)

    # 1. doses: effective times, amounts, rates, durations (values in effect at the record time)
    def dose_terms(t, cmt, amt, rate_col):
        p = p_at(t)
        f = model.bioavailability(p)[cmt]
        lag = model.lag(p)[cmt]
        amount = amt * f
        if config.has_infusions:
            modelled_rate = model.modelled_rate(p)[cmt] if config.needs_rate else jnp.nan
            modelled_dur = model.modelled_duration(p)[cmt] if config.needs_dur else jnp.nan
            rate = jnp.where(rate_col > 0, rate_col, jnp.where(rate_col == -1, modelled_rate, amount / modelled_dur))
            rate = jnp.where(rate_col == 0, 0.0, rate)
            dur = jnp.where(rate > 0, amount / jnp.where(rate > 0, rate, 1.0), 0.0)
        else:
            rate = jnp.zeros_like(amount)
            dur = jnp.zeros_like(amount)
        return t + lag, amount, rate, dur

    t_eff, amount, rate, dur = jax.vmap(dose_terms)(ev["dose_time"], ev["dose_cmt"], ev["dose_amt"], ev["dose_rate"])
    t_last = jnp.maximum(t_last, jnp.where(d_mask, t_eff, -jnp.inf).max())
    t_eff = jnp.where(d_mask, t_eff, t_last)
    amount = jnp.where(d_mask, amount, 0.0)
    rate = jnp.where(d_mask, rate, 0.0)
    order = jnp.argsort(t_eff, stable=True)
    sorted_ev = {
        "t": t_eff[order],
        "amount": amount[order],
        "rate": rate[order],
        "dur": dur[order],
        "cmt": ev["dose_cmt"][order],
        "reset": (ev["dose_reset"] & d_mask)[order],
        "ss": ((ev["dose_ss"] == 1) & d_mask)[order],
        "ii": ev["dose_ii"][order],
        "row": jnp.where(d_mask, ev["dose_row"], jnp.iinfo(jnp.int32).max)[order],
        "mask": d_mask[order],
    }
    t_start = jnp.minimum(jnp.where(ev["obs_mask"], ev["obs_time"], jnp.inf).min(), sorted_ev["t"][0])
    t_start = jnp.where(jnp.isfinite(t_start), t_start, 0.0)

    # 2. zero-order inputs: active on [start, min(stop, next reset or SS dose))
    if config.has_infusions:
        is_inf = sorted_ev["rate"] > 0
        start = sorted_ev["t"]
        stop = start + sorted_ev["dur"]
        cancels = sorted_ev["reset"] | sorted_ev["ss"]
        # first cancelling event strictly after each infusion's own position in the order
        pos = jnp.arange(start.shape[0])
        later_cancel = jnp.where(cancels[None, :] & (pos[None, :] > pos[:, None]), start[None, :], jnp.inf).min(axis=1)
        stop = jnp.where(is_inf, jnp.minimum(stop, later_cancel), start)
        inf_rate = jnp.where(is_inf, sorted_ev["rate"], 0.0)
        inf_cmt = jax.nn.one_hot(sorted_ev["cmt"], n)

        def u_of(t):
            active = (t >= start) & (t < stop)
            return (jnp.where(active, inf_rate, 0.0)[:, None] * inf_cmt).sum(axis=0)

        # SS infusions restart their own infusion: the dose's own input runs as a normal infusion
        infusion_jumps = jnp.concatenate([jnp.where(is_inf, start, t_start), jnp.where(is_inf, stop, t_start)])
        infusion_stops = jnp.where(is_inf, stop, t_start)
    else:
        u_of = None
        infusion_jumps = jnp.zeros((0,))
        infusion_stops = jnp.zeros((0,))

    jumps = infusion_jumps
    if config.time_varying:
        jumps = jnp.concatenate([jumps, cov_time])
    jump_ts = jnp.sort(jumps) if jumps.shape[0] else None

    # observation -> segment: number of doses applied before it, minus one (-1: before any dose)
    o_t = jnp.where(ev["obs_mask"], ev["obs_time"], t_last)
    o_row = ev["obs_row"]
    before = (sorted_ev["t"][None, :] < o_t[:, None]) | (
        (sorted_ev["t"][None, :] == o_t[:, None]) & (sorted_ev["row"][None, :] < o_row[:, None])
    )
    before = before & sorted_ev["mask"][None, :]
    seg = before.sum(axis=1) - 1
    return dict(n=n, p_at=p_at, sorted_ev=sorted_ev, u_of=u_of, jump_ts=jump_ts, t_start=t_start, t_last=t_last,
                o_t=o_t, seg=seg, before=before, infusion_stops=infusion_stops, cov_time=cov_time,
                obs_mask=ev["obs_mask"])


def _apply_dose(model, y, k, sch, config: _Config):
    """State just after the k-th dose (in effective-time order): reset, steady state or bolus."""
    sorted_ev, n = sch["sorted_ev"], sch["n"]
    t0 = sorted_ev["t"][k]
    p0 = sch["p_at"](t0)
    y = jnp.where(sorted_ev["reset"][k], model.initial_state(p0), y)
    if config.has_ss:
        # a non-SS record has II = 0, where the SS formula is singular: give it II = 1 (unused), so
        # that the discarded branch of the `where` below has finite gradients
        ii = jnp.where(sorted_ev["ss"][k], sorted_ev["ii"][k], 1.0)
        y_ss = _steady_state(model, p0, sorted_ev["cmt"][k], sorted_ev["amount"][k], sorted_ev["rate"][k],
                             sorted_ev["dur"][k], ii, n)
        y = jnp.where(sorted_ev["ss"][k], y_ss, y)
        bolus = jnp.where(sorted_ev["ss"][k] | (sorted_ev["rate"][k] > 0), 0.0, sorted_ev["amount"][k])
    else:
        bolus = jnp.where(sorted_ev["rate"][k] > 0, 0.0, sorted_ev["amount"][k])
    return y.at[sorted_ev["cmt"][k]].add(bolus)


def _states_diffrax(model, sch, config: _Config):
    """States [O, n] at the observation times: diffrax, one ``diffeqsolve`` per dose interval."""
    n, p_at, u_of, sorted_ev = sch["n"], sch["p_at"], sch["u_of"], sch["sorted_ev"]
    o_t, seg, t_start, t_last = sch["o_t"], sch["seg"], sch["t_start"], sch["t_last"]

    def vf(t, y, args):
        p = p_at(t)
        dy = model.vector_field(t, y, p)
        if u_of is not None:
            dy = dy + u_of(t)
        return dy

    term = diffrax.ODETerm(vf)
    controller = diffrax.PIDController(rtol=config.rtol, atol=config.atol)
    if sch["jump_ts"] is not None:
        controller = diffrax.ClipStepSizeController(controller, jump_ts=sch["jump_ts"])

    n_obs = o_t.shape[0]
    n_dose = sorted_ev["t"].shape[0]
    if config.obs_slots:
        # each interval saves only at its own observations, in K = obs_slots slots (host-computed
        # maximum); slot j of interval k holds the j-th observation whose segment is k
        seg_real = jnp.where(sch["obs_mask"], seg, n_dose)
        by_seg = jnp.lexsort((o_t, seg_real))  # by interval, then time (diffrax saves in time order)
        seg_sorted = seg_real[by_seg]
        first = jnp.searchsorted(seg_sorted, jnp.arange(-1, n_dose), side="left")
        count = jnp.searchsorted(seg_sorted, jnp.arange(-1, n_dose), side="right") - first
        slot = jnp.arange(config.obs_slots)
        slot_valid = slot[None, :] < count[:, None]  # [D + 1, K], row 0: before the first dose
        slot_obs = jnp.where(slot_valid, by_seg[jnp.clip(first[:, None] + slot[None, :], 0, n_obs - 1)], n_obs)
        overflow = jnp.any(count > config.obs_slots)
    else:
        slot_obs = None
        overflow = jnp.zeros((), bool)

    def integrate(y0, t0, t1, k):
        if slot_obs is None:
            ts = jnp.clip(o_t, t0, t1)
        else:
            ts = jnp.clip(jnp.where(slot_obs[k + 1] < n_obs, o_t[jnp.minimum(slot_obs[k + 1], n_obs - 1)], t1), t0, t1)
        sol = diffrax.diffeqsolve(
            term,
            config.solver,
            t0,
            t1,
            None,
            y0,
            saveat=diffrax.SaveAt(ts=ts, t1=True),
            stepsize_controller=controller,
            max_steps=config.max_steps,
            adjoint=config.adjoint,
            throw=False,
        )
        return sol.ys[:-1], sol.ys[-1], sol.result._value, sol.stats["num_steps"]

    def store(out, y_obs, k):
        if slot_obs is None:
            return jnp.where((seg == k)[:, None], y_obs, out)
        return out.at[slot_obs[k + 1]].set(y_obs, mode="drop")

    y_init = model.initial_state(p_at(t_start))

    # segment before the first dose
    y_obs, y, res, steps = integrate(y_init, t_start, sorted_ev["t"][0], -1)
    out = store(jnp.zeros((n_obs, n)), y_obs, -1)
    t_next_all = jnp.concatenate([sorted_ev["t"][1:], t_last[None]])

    def step(carry, k):
        y, out, res, steps = carry
        t0 = sorted_ev["t"][k]
        t1 = jnp.maximum(t_next_all[k], t0)
        y = _apply_dose(model, y, k, sch, config)
        y_obs, y_end, r, s = integrate(y, t0, t1, k)
        out = store(out, y_obs, k)
        return (y_end, out, jnp.maximum(res, r), steps + s), None

    (y, out, res, steps), _ = jax.lax.scan(step, (y, out, res, steps), jnp.arange(n_dose))
    res = jnp.where(overflow, _SLOT_OVERFLOW, res)
    return out, res, steps


_TAYLOR = tuple(1.0 / math.factorial(k) for k in range(20))
_MAX_SQUARINGS = 20


def _expm(x):
    """Matrix exponential by scaling and squaring of a degree-19 Taylor polynomial.

    ``x`` is scaled by ``2^-s`` to 1-norm <= 1 (truncation error <= e/20! ~ 1e-18 relative), the
    polynomial is evaluated with 7 matrix products (Paterson-Stockmeyer in blocks of four), then
    squared ``s`` times (at most 20: 1-norms up to 1e6; beyond that the result is NaN and
    ``simulate`` reports the subject; ``_square`` runs only as many rounds as the batch needs).
    No linear solve, which keeps batched gradients cheap; agrees with ``scipy.linalg.expm`` to
    ~1e-12 relative (tests/test_performance_paths.py)."""
    n = x.shape[0]
    norm = jnp.max(jnp.sum(jnp.abs(x), axis=0))
    s = jnp.ceil(jnp.log2(jnp.maximum(norm, jnp.finfo(x.dtype).tiny)))
    s = jnp.clip(s, 0, _MAX_SQUARINGS)
    y = x / 2.0**s
    eye = jnp.eye(n, dtype=x.dtype)
    y2 = y @ y
    y3 = y2 @ y
    y4 = y2 @ y2

    def block(j):
        c = _TAYLOR[4 * j:4 * j + 4]
        return c[0] * eye + c[1] * y + c[2] * y2 + c[3] * y3

    r = block(4)
    for j in (3, 2, 1, 0):
        r = block(j) + y4 @ r

    r = _square(r, jax.lax.stop_gradient(s).astype(jnp.int32))
    return jnp.where(norm <= 2.0**_MAX_SQUARINGS, r, jnp.nan)


@jax.custom_vjp
def _square(r, s):
    """``r`` squared ``s`` times (``0 <= s <= _MAX_SQUARINGS``; ``r`` [..., n, n], ``s`` [...]).

    The loops run as many squarings as the largest ``s`` of the whole batch needs (about 3-8 for
    dose intervals of days), not ``_MAX_SQUARINGS``: a masked scan over the maximum cost as much as
    the rest of the propagator. A while loop has no reverse-mode derivative, hence this VJP, and
    under ``vmap`` its trip count would become per-element, hence the batching rules below that
    keep one count for the batch. Forward mode is not available through it (the Laplace Hessian
    then falls back to differences of the gradient)."""
    return _squarings(r, s)[0]


def _batch_rule(fn):
    def rule(axis_size, in_batched, *args):
        args = [a if b else jnp.broadcast_to(a, (axis_size,) + a.shape) for a, b in zip(args, in_batched)]
        out = fn(*args)
        return out, jax.tree.map(lambda _: True, out)

    return rule


@jax.custom_batching.custom_vmap
def _squarings(r, s):
    """Forward loop of ``_square``: the result and every intermediate power [..., MAX, n, n]."""
    def body(carry):
        i, r, powers = carry
        powers = powers.at[..., i, :, :].set(r)
        return i + 1, jnp.where((i < s)[..., None, None], r @ r, r), powers

    rounds = jnp.max(s, initial=0)  # one trip count for the whole batch
    powers = jnp.zeros(r.shape[:-2] + (_MAX_SQUARINGS,) + r.shape[-2:], r.dtype)
    _, r, powers = jax.lax.while_loop(lambda carry: carry[0] < rounds, body, (jnp.zeros((), jnp.int32), r, powers))
    return r, powers


@jax.custom_batching.custom_vmap
def _unsquarings(powers, s, g):
    """Backward loop of ``_square``: r_{i+1} = r_i r_i, so the cotangent of r_i is
    g r_i^T + r_i^T g, from i = s - 1 down to 0."""
    def body(carry):
        i, g = carry
        r = powers[..., i - 1, :, :]
        rt = jnp.swapaxes(r, -1, -2)
        return i - 1, jnp.where((i - 1 < s)[..., None, None], g @ rt + rt @ g, g)

    _, g = jax.lax.while_loop(lambda carry: carry[0] > 0, body, (jnp.max(s, initial=0), g))
    return g


_squarings.def_vmap(_batch_rule(_squarings))
_unsquarings.def_vmap(_batch_rule(_unsquarings))


@jax.custom_jvp
def _reverse_only(x):
    """The identity, whose forward-mode derivative is a clear error: guards the custom-batched
    loops, which JAX cannot differentiate in forward mode (it would recurse)."""
    return x


@_reverse_only.defjvp
def _reverse_only_jvp(primals, tangents):
    raise TypeError("the matrix exponential of solver='expm' has a reverse-mode derivative only "
                    "(its squaring loop); use jax.grad / jax.vjp, or finite differences of the gradient")


def _square_fwd(r, s):
    r, powers = _squarings(_reverse_only(r), s)
    return r, (powers, s)


def _square_bwd(residual, g):
    powers, s = residual
    return _unsquarings(_reverse_only(powers), s, _reverse_only(g)), None


_square.defvjp(_square_fwd, _square_bwd)


def _flow(a, u, dt):
    """Exact propagator over ``dt`` of ``dy/dt = A y + u`` (``A`` [n, n] and ``u`` [n] constant,
    ``u`` may be None): the map ``y -> Phi y + psi`` as ``(Phi, psi)``, from one matrix exponential."""
    n = a.shape[0]
    if u is None:
        return _expm(a * dt), jnp.zeros(n, a.dtype)
    aug = jnp.zeros((n + 1, n + 1), a.dtype).at[:n, :n].set(a).at[:n, n].set(u)
    e = _expm(aug * dt)
    return e[:n, :n], e[:n, n]


def _states_expm(model, sch, config: _Config):
    """States [O, n] at the observation times for a linear model, exactly: between consecutive
    "knots" (the start, every dose, every infusion stop, every change of a time-varying
    parameter) the system is ``dy/dt = A y + u`` with ``A`` and ``u`` constant, whose solution is
    a matrix exponential. All propagators depend on the parameters and times only, so they are
    computed in one batch; the scan over knots is then matrix-vector products and dose jumps."""
    n, p_at, u_of, sorted_ev = sch["n"], sch["p_at"], sch["u_of"], sch["sorted_ev"]
    o_t, t_start = sch["o_t"], sch["t_start"]
    n_dose = sorted_ev["t"].shape[0]
    # knots: the start, the doses (in order), then the non-dose change points
    extra = [sch["infusion_stops"]] if config.has_infusions else []
    if config.time_varying:
        extra.append(jnp.clip(sch["cov_time"], t_start, sch["t_last"]))
    extra_t = jnp.concatenate(extra) if extra else jnp.zeros((0,))
    k_t = jnp.concatenate([t_start[None], sorted_ev["t"], extra_t])
    k_dose = jnp.concatenate([jnp.full((1,), -1), jnp.arange(n_dose), jnp.full(extra_t.shape, -1)])
    k_real_dose = jnp.concatenate([jnp.zeros(1, bool), sorted_ev["mask"], jnp.zeros(extra_t.shape, bool)])
    # order by time; at equal times non-dose knots first (they change nothing), doses in their order
    order = jnp.lexsort((jnp.arange(k_t.shape[0]), k_dose >= 0, k_t))
    k_t, k_dose, k_real_dose = k_t[order], k_dose[order], k_real_dose[order]

    a_const = None if config.time_varying else model.matrix(p_at(t_start))

    def flow_between(t0, t1):
        mid = 0.5 * (t0 + t1)
        a = model.matrix(p_at(mid)) if a_const is None else a_const
        return _flow(a, u_of(mid) if u_of is not None else None, t1 - t0)

    def step(y, j):
        # y: state just after knot j - 1; propagate to knot j, then apply its dose (if any)
        y = phi[j - 1] @ y + psi[j - 1]
        k = jnp.maximum(k_dose[j], 0)
        y = jnp.where(k_dose[j] >= 0, _apply_dose(model, y, k, sch, config), y)
        return y, y

    # the last knot each observation has seen: doses by (time, row) order, others strictly before
    dose_seen = jnp.concatenate([jnp.zeros((o_t.shape[0], 1), bool), sch["before"],
                                 jnp.zeros((o_t.shape[0], extra_t.shape[0]), bool)], axis=1)[:, order]
    seen = jnp.where(k_real_dose[None, :], dose_seen, k_t[None, :] < o_t[:, None])
    seen = seen.at[:, 0].set(True)
    last = jnp.max(jnp.where(seen, jnp.arange(k_t.shape[0])[None, :], 0), axis=1)

    # every propagator in one batch: knot j -> knot j + 1, then last seen knot -> observation
    n_k = k_t.shape[0] - 1
    phi, psi = jax.vmap(flow_between)(jnp.concatenate([k_t[:-1], k_t[last]]), jnp.concatenate([k_t[1:], o_t]))

    y0 = model.initial_state(p_at(t_start))
    _, y_knots = jax.lax.scan(step, y0, jnp.arange(1, k_t.shape[0]))
    y_knots = jnp.concatenate([y0[None], y_knots])  # state just after each knot
    out = jnp.einsum("oij,oj->oi", phi[n_k:], y_knots[last]) + psi[n_k:]
    zeros = jnp.zeros((), jnp.int32)
    return out, zeros, zeros


def _solve_subject(model, params, ev, config: _Config):
    sch = _schedule(model, params, ev, config)
    if config.solver == "expm":
        out, res, steps = _states_expm(model, sch, config)
    else:
        out, res, steps = _states_diffrax(model, sch, config)
    p_at = sch["p_at"]

    def outputs_at(t, y_t):
        return model.output(t, y_t, p_at(t))

    outs = jax.vmap(outputs_at)(sch["o_t"], out)
    if config.has_ss:
        # the steady state of an SS infusion is derived for duration <= II (no overlapping infusions
        # of the virtual train; closed_form covers overlap): refuse, with NaN predictions
        ev_ = sch["sorted_ev"]
        overlap = jnp.any(ev_["ss"] & (ev_["rate"] > 0) & (ev_["dur"] > ev_["ii"]))
        res = jnp.where(overlap, _SS_OVERLAP, res)
        outs = jnp.where(overlap, jnp.nan, outs)
    return outs, out, res, steps


def _forward_sensitivities(model, config: _Config):
    """Per-subject solve whose reverse-mode derivative is computed in forward mode: the custom
    VJP computes the full Jacobian of the outputs and states with respect to the subject's
    parameters by ``jax.jacfwd`` (diffrax ``ForwardMode``), in the same pass as the solution, and
    the backward pass is a contraction with it. Cheap when a subject has few parameters."""
    fwd_config = config._replace(adjoint=diffrax.ForwardMode())

    def solve(p, ev):
        return _solve_subject(model, p, ev, fwd_config)

    @jax.custom_vjp
    def solve_vjp(p, ev):
        return solve(p, ev)

    def fwd(p, ev):
        def differentiable(q):
            outs, states, res, steps = solve(q, ev)
            return (outs, states), (outs, states, res, steps)

        jac, primal = jax.jacfwd(differentiable, has_aux=True)(p)
        return primal, (jac, ev)

    def bwd(residual, cotangent):
        (jac_outs, jac_states), ev = residual
        ct_outs, ct_states = cotangent[0], cotangent[1]

        def contract(ct, jac):
            return jnp.tensordot(ct, jac, axes=ct.ndim)

        ct_p = jax.tree.map(lambda jo, js: contract(ct_outs, jo) + contract(ct_states, js), jac_outs, jac_states)
        ct_ev = jax.tree.map(
            lambda x: jnp.zeros_like(x) if jnp.issubdtype(x.dtype, jnp.inexact)
            else np.zeros(x.shape, jax.dtypes.float0), ev)
        return ct_p, ct_ev

    solve_vjp.defvjp(fwd, bwd)
    return solve_vjp


def _static_flags(model, events: Events, params: dict):
    """Which code paths a batch needs, decided on the host (conservatively when traced)."""
    rates, ss, mask = events.dose_rate, events.dose_ss, events.dose_mask
    if host_readable(rates) and host_readable(mask):
        r = np.where(np.asarray(mask), np.asarray(rates), 0.0)
        has_infusions, needs_rate, needs_dur = bool(np.any(r != 0)), bool(np.any(r == -1)), bool(np.any(r == -2))
    else:  # traced events: take every path the model supports
        has_infusions = True
        needs_rate = any(p.startswith("rate_") for p in model.parameters)
        needs_dur = any(p.startswith("dur_") for p in model.parameters)
    has_ss = bool(np.any(np.asarray(ss) == 1)) if host_readable(ss) else model.linear
    time_varying = any(jnp.ndim(v) == 2 for v in params.values())
    return has_infusions, needs_rate, needs_dur, has_ss, time_varying


_SLOT_OVERFLOW = -2  # result code: an interval had more observations than obs_slots (a bug if seen)
_SS_OVERLAP = -3  # result code: a steady-state infusion lasts longer than its II


def _obs_slots(model, events: Events) -> int:
    """Largest number of observations of one subject between two consecutive doses (or before the
    first), computed on the host with the dose ordering of ``_schedule``. Each diffrax solve then
    saves at that many points instead of at every observation time. 0 (save at all observation
    times) when it cannot be known beforehand: traced events, or lag times that depend on the
    parameters (they move doses across observations)."""
    keys = ("dose_time", "dose_cmt", "dose_row", "dose_mask", "obs_time", "obs_row", "obs_mask")
    if not all(host_readable(getattr(events, k)) for k in keys):
        return 0
    try:
        lag = np.asarray(model.lag({name: np.nan for name in model.parameters}), dtype=float)
    except (KeyError, TypeError, ValueError):
        return 0
    if lag.shape != (len(model.states),) or not np.all(np.isfinite(lag)):
        return 0
    ev = {k: np.asarray(getattr(events, k)) for k in keys}
    if ev["obs_time"].shape[1] == 0:
        return 0
    t_eff = ev["dose_time"] + lag[np.clip(ev["dose_cmt"], 0, len(lag) - 1)]
    t_o = ev["obs_time"][:, :, None]
    before = ev["dose_mask"][:, None, :] & ((t_eff[:, None, :] < t_o) | (
        (t_eff[:, None, :] == t_o) & (ev["dose_row"][:, None, :] < ev["obs_row"][:, :, None])))
    seg = before.sum(axis=2)  # 0 .. D
    counts = np.zeros((seg.shape[0], ev["dose_time"].shape[1] + 1), dtype=int)
    np.add.at(counts, (np.repeat(np.arange(seg.shape[0]), seg.shape[1]), seg.ravel()), ev["obs_mask"].ravel())
    return max(int(counts.max()), 1)


def _resolve_solver(solver, model):
    if isinstance(solver, str):
        if solver == "expm":
            if not model.linear:
                raise ValueError(
                    f"solver='expm' needs a linear model (dy/dt = A(p) y); {type(model).__name__} is nonlinear. "
                    f"Use an ODE solver such as solver='tsit5' (or 'kvaerno5' for stiff systems)."
                )
            return "expm"
        if solver not in _SOLVERS:
            raise ValueError(f"Unknown solver {solver!r}; expected 'expm' (linear models), one of "
                             f"{sorted(_SOLVERS)} or a diffrax solver instance.")
        return _SOLVERS[solver]()
    return solver


def check_params(model: AbstractStructuralModel, params: dict, n_subjects: int) -> dict:
    """Validate and broadcast ``params`` to arrays of shape [S] (or [S, C])."""
    missing = [name for name in model.parameters if name not in params]
    if missing:
        raise ValueError(
            f"{type(model).__name__} needs parameters {list(model.parameters)}; missing {missing}. "
            f"Pass them in `params` as arrays of shape [n_subjects] (or scalars)."
        )
    out = {}
    for name, value in params.items():
        v = jnp.asarray(value, dtype=float)
        if v.ndim == 0:
            v = jnp.broadcast_to(v, (n_subjects,))
        if v.ndim not in (1, 2) or v.shape[0] != n_subjects:
            raise ValueError(
                f"Parameter {name!r} has shape {v.shape}; expected a scalar, [{n_subjects}] (one value per "
                f"subject) or [{n_subjects}, C] (a value per covariate record). Reshape it."
            )
        out[name] = v
    return out


def simulate(
    model: AbstractStructuralModel,
    params: dict,
    events: Events,
    *,
    solver="tsit5",
    rtol: float = 1e-8,
    atol: float = 1e-10,
    max_steps: int = 100_000,
    adjoint: diffrax.AbstractAdjoint | None = None,
    sensitivity: str = "reverse",
    throw: bool = True,
    subject_ids=None,
) -> Solution:
    """Solve ``model`` for every subject of ``events`` and return the predictions.

    Args:
        model: the structural model.
        params: parameter name -> scalar, array [S] (per subject) or [S, C] (piecewise constant on
            ``events.cov_time``, NONMEM convention: the value of record i covers (t_{i-1}, t_i]).
        events: from ``read_nonmem(...).events`` or ``Regimen.to_events(...)``.
        solver: "tsit5" (explicit, default), "dopri5", "dopri8", "kvaerno5" / "kvaerno3"
            (implicit, for stiff systems such as mass-action binding), a diffrax solver, or
            "expm" for linear models (``model.linear``): not a numerical integrator but the exact
            linear propagator, a matrix exponential between consecutive events (doses, infusion
            stops, changes of time-varying parameters); exact up to rounding, no step-size
            control (``rtol``, ``atol``, ``max_steps``, ``adjoint`` do not apply), ``num_steps``
            is 0. Much cheaper than an ODE solver, for values and gradients (reverse mode only:
            ``jax.grad`` / ``jax.vjp``; forward mode raises a TypeError).
        rtol, atol: step-size control tolerances; max_steps: per dose interval.
        adjoint: a diffrax adjoint (default ``RecursiveCheckpointAdjoint``; ``ForwardMode()``
            for forward-mode sensitivities).
        sensitivity: how reverse-mode derivatives (``jax.grad`` of a log density) are computed.
            "reverse" (default): through the diffrax ``adjoint``. "forward": each subject's
            Jacobian with respect to its own parameters is computed in forward mode (``jacfwd``
            with diffrax ``ForwardMode``) in the same pass as the solution, and the gradient is a
            product with it (a ``jax.custom_vjp``): cheaper when each subject has few
            parameters. Values are identical; only derivatives are computed differently.
        throw: when called outside a trace, raise ``SolverError`` naming the failed subjects and
            their parameter values. Inside jit / inference the per-subject ``result`` is returned.
        subject_ids: names for the subjects in error messages (defaults to 0-based indices).

    A steady-state infusion (SS=1 with RATE) must not last longer than its II here: such a subject
    fails with a clear error (NaN predictions inside a trace); ``closed_form`` covers that case.
    """
    n_sub = events.n_subjects
    params = check_params(model, params, n_sub)
    for key in ("dose_cmt",):
        arr = getattr(events, key)
        if host_readable(arr) and np.asarray(arr).size and int(np.max(np.asarray(arr))) >= len(model.states):
            raise ValueError(
                f"Events address state index {int(np.max(np.asarray(arr)))} but {type(model).__name__} has "
                f"{len(model.states)} states {model.states}. Check CMT against the model."
            )
    if host_readable(events.obs_output) and np.asarray(events.obs_output).size:
        if int(np.max(np.asarray(events.obs_output))) >= len(model.outputs):
            raise ValueError(f"Events ask for output index {int(np.max(np.asarray(events.obs_output)))} but "
                             f"{type(model).__name__} has outputs {model.outputs}.")
    has_infusions, needs_rate, needs_dur, has_ss, time_varying = _static_flags(model, events, params)
    if has_ss and not model.linear:
        raise ValueError(
            f"Steady-state dose records (SS=1) need a linear model; {type(model).__name__} is nonlinear. "
            f"Replace the SS record by explicit repeated doses (ADDL/II)."
        )
    if sensitivity not in ("reverse", "forward"):
        raise ValueError(f"simulate(sensitivity={sensitivity!r}): expected 'reverse' (through the diffrax "
                         f"adjoint, default) or 'forward' (per-subject forward-mode Jacobian).")
    resolved = _resolve_solver(solver, model)
    config = _Config(resolved, rtol, atol, max_steps, adjoint or diffrax.RecursiveCheckpointAdjoint(), sensitivity,
                     has_infusions, needs_rate, needs_dur, has_ss, time_varying,
                     0 if resolved == "expm" else _obs_slots(model, events))
    sol = _simulate_jit(model, params, events, config)
    if throw and host_readable(sol.result):
        res = np.asarray(sol.result)
        if np.any(res != 0):
            failed = np.nonzero(res != 0)[0]
            ids = subject_ids if subject_ids is not None else list(range(n_sub))
            lines = []
            for i in failed[:10]:
                values = {k: np.asarray(v[i]).round(6).tolist() for k, v in params.items()}
                why = ("non-finite predictions" if res[i] == -1 else
                       "internal error: more observations in a dose interval than planned (please report)"
                       if res[i] == _SLOT_OVERFLOW else
                       "a steady-state infusion (SS=1) lasts longer than its dosing interval II; simulate's "
                       "steady state needs duration <= II: use closed_form (PopulationModel method="
                       "'closed_form'), which covers overlapping infusions, or a shorter infusion"
                       if res[i] == _SS_OVERLAP else
                       f"diffrax result code {int(res[i])} (e.g. max_steps={max_steps} reached)")
                lines.append(f"  subject {ids[i]}: {why}; parameters {values}")
            raise SolverError(
                f"The ODE solve failed for {len(failed)} of {n_sub} subjects:\n" + "\n".join(lines) +
                ("" if np.all(res[failed] == _SS_OVERLAP) else
                 "\nTry a stiff solver (solver='kvaerno5'), a larger max_steps, or check the parameter values.")
            )
    return sol


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)  # counts traces; tests read eqx.debug.get_num_traces
def _simulate_jit(model, params, events, config):
    ev = {k: getattr(events, k) for k in events.__dataclass_fields__}
    if config.sensitivity == "forward" and config.solver != "expm":
        one = _forward_sensitivities(model, config)
    else:
        one = lambda p, e: _solve_subject(model, p, e, config)  # noqa: E731
    outs, states, res, steps = jax.vmap(one)(params, ev)
    pred = jnp.take_along_axis(outs, events.obs_output[..., None], axis=2)[..., 0]
    bad = ~jnp.all(jnp.isfinite(jnp.where(events.obs_mask, pred, 0.0)), axis=1)
    res = jnp.where((res == 0) & bad, -1, res)
    return Solution(pred=pred, outputs=outs, states=states, result=res, num_steps=steps)
