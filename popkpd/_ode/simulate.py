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
   the same time counts only if its record comes first in the file).
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._events import Events
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


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


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


def _solve_subject(model, params, ev, config):
    (solver, rtol, atol, max_steps, adjoint, has_infusions, needs_rate, needs_dur, has_ss, time_varying) = config
    n = len(model.states)
    d_mask = ev["dose_mask"]
    t_obs_real = jnp.where(ev["obs_mask"], ev["obs_time"], -jnp.inf).max()
    t_dose_real = jnp.where(d_mask, ev["dose_time"], -jnp.inf).max()
    t_last = jnp.maximum(t_obs_real, t_dose_real)
    cov_time = ev["cov_time"]

    p_at = (lambda t: _lookup(params, cov_time, t)) if time_varying else (lambda t: params)

    # 1. doses: effective times, amounts, rates, durations (values in effect at the record time)
    def dose_terms(t, cmt, amt, rate_col):
        p = p_at(t)
        f = model.bioavailability(p)[cmt]
        lag = model.lag(p)[cmt]
        amount = amt * f
        if has_infusions:
            modelled_rate = model.modelled_rate(p)[cmt] if needs_rate else jnp.nan
            modelled_dur = model.modelled_duration(p)[cmt] if needs_dur else jnp.nan
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
    if has_infusions:
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
    else:
        u_of = None
        infusion_jumps = jnp.zeros((0,))

    jumps = infusion_jumps
    if time_varying:
        jumps = jnp.concatenate([jumps, cov_time])
    jump_ts = jnp.sort(jumps) if jumps.shape[0] else None

    def vf(t, y, args):
        p = p_at(t)
        dy = model.vector_field(t, y, p)
        if u_of is not None:
            dy = dy + u_of(t)
        return dy

    term = diffrax.ODETerm(vf)
    controller = diffrax.PIDController(rtol=rtol, atol=atol)
    if jump_ts is not None:
        controller = diffrax.ClipStepSizeController(controller, jump_ts=jump_ts)

    # observation -> segment: number of doses applied before it, minus one (-1: before any dose)
    o_t = jnp.where(ev["obs_mask"], ev["obs_time"], t_last)
    o_row = ev["obs_row"]
    before = (sorted_ev["t"][None, :] < o_t[:, None]) | (
        (sorted_ev["t"][None, :] == o_t[:, None]) & (sorted_ev["row"][None, :] < o_row[:, None])
    )
    seg = (before & sorted_ev["mask"][None, :]).sum(axis=1) - 1

    def integrate(y0, t0, t1):
        ts = jnp.clip(o_t, t0, t1)
        sol = diffrax.diffeqsolve(
            term,
            solver,
            t0,
            t1,
            None,
            y0,
            saveat=diffrax.SaveAt(ts=ts, t1=True),
            stepsize_controller=controller,
            max_steps=max_steps,
            adjoint=adjoint,
            throw=False,
        )
        y_obs = sol.ys[:-1]
        y_end = sol.ys[-1]
        steps = sol.stats["num_steps"]
        return y_obs, y_end, sol.result._value, steps

    y_init = model.initial_state(p_at(t_start))
    n_obs = o_t.shape[0]

    # segment before the first dose
    y_obs, y, res, steps = integrate(y_init, t_start, sorted_ev["t"][0])
    out = jnp.where((seg == -1)[:, None], y_obs, jnp.zeros((n_obs, n)))
    t_next_all = jnp.concatenate([sorted_ev["t"][1:], t_last[None]])

    def step(carry, k):
        y, out, res, steps = carry
        t0 = sorted_ev["t"][k]
        t1 = jnp.maximum(t_next_all[k], t0)
        p0 = p_at(t0)
        y = jnp.where(sorted_ev["reset"][k], model.initial_state(p0), y)
        if has_ss:
            y_ss = _steady_state(model, p0, sorted_ev["cmt"][k], sorted_ev["amount"][k], sorted_ev["rate"][k],
                                 sorted_ev["dur"][k], sorted_ev["ii"][k], n)
            y = jnp.where(sorted_ev["ss"][k], y_ss, y)
            bolus = jnp.where(sorted_ev["ss"][k] | (sorted_ev["rate"][k] > 0), 0.0, sorted_ev["amount"][k])
        else:
            bolus = jnp.where(sorted_ev["rate"][k] > 0, 0.0, sorted_ev["amount"][k])
        y = y.at[sorted_ev["cmt"][k]].add(bolus)
        y_obs, y_end, r, s = integrate(y, t0, t1)
        out = jnp.where((seg == k)[:, None], y_obs, out)
        return (y_end, out, jnp.maximum(res, r), steps + s), None

    (y, out, res, steps), _ = jax.lax.scan(step, (y, out, res, steps), jnp.arange(sorted_ev["t"].shape[0]))

    def outputs_at(t, y_t):
        return model.output(t, y_t, p_at(t))

    outs = jax.vmap(outputs_at)(o_t, out)
    pred = jnp.take_along_axis(outs, ev["obs_output"][:, None], axis=1)[:, 0]
    bad = ~jnp.all(jnp.isfinite(jnp.where(ev["obs_mask"], pred, 0.0)))
    res = jnp.where((res == 0) & bad, -1, res)
    return pred, outs, out, res, steps


def _static_flags(model, events: Events, params: dict):
    """Which code paths a batch needs, decided on the host (conservatively when traced)."""
    rates, ss, mask = events.dose_rate, events.dose_ss, events.dose_mask
    if _is_concrete(rates) and _is_concrete(mask):
        r = np.where(np.asarray(mask), np.asarray(rates), 0.0)
        has_infusions, needs_rate, needs_dur = bool(np.any(r != 0)), bool(np.any(r == -1)), bool(np.any(r == -2))
    else:  # traced events: take every path the model supports
        has_infusions = True
        needs_rate = any(p.startswith("rate_") for p in model.parameters)
        needs_dur = any(p.startswith("dur_") for p in model.parameters)
    has_ss = bool(np.any(np.asarray(ss) == 1)) if _is_concrete(ss) else model.linear
    time_varying = any(jnp.ndim(v) == 2 for v in params.values())
    return has_infusions, needs_rate, needs_dur, has_ss, time_varying


def _resolve_solver(solver):
    if isinstance(solver, str):
        if solver not in _SOLVERS:
            raise ValueError(f"Unknown solver {solver!r}; expected one of {sorted(_SOLVERS)} or a diffrax solver instance.")
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
            (implicit, for stiff systems such as mass-action binding), or a diffrax solver.
        rtol, atol: step-size control tolerances; max_steps: per dose interval.
        adjoint: a diffrax adjoint (default ``RecursiveCheckpointAdjoint``; ``ForwardMode()``
            for forward-mode sensitivities).
        throw: when called outside a trace, raise ``SolverError`` naming the failed subjects and
            their parameter values. Inside jit / inference the per-subject ``result`` is returned.
        subject_ids: names for the subjects in error messages (defaults to 0-based indices).
    """
    n_sub = events.n_subjects
    params = check_params(model, params, n_sub)
    for key in ("dose_cmt",):
        arr = getattr(events, key)
        if _is_concrete(arr) and np.asarray(arr).size and int(np.max(np.asarray(arr))) >= len(model.states):
            raise ValueError(
                f"Events address state index {int(np.max(np.asarray(arr)))} but {type(model).__name__} has "
                f"{len(model.states)} states {model.states}. Check CMT against the model."
            )
    if _is_concrete(events.obs_output) and np.asarray(events.obs_output).size:
        if int(np.max(np.asarray(events.obs_output))) >= len(model.outputs):
            raise ValueError(f"Events ask for output index {int(np.max(np.asarray(events.obs_output)))} but "
                             f"{type(model).__name__} has outputs {model.outputs}.")
    has_infusions, needs_rate, needs_dur, has_ss, time_varying = _static_flags(model, events, params)
    if has_ss and not model.linear:
        raise ValueError(
            f"Steady-state dose records (SS=1) need a linear model; {type(model).__name__} is nonlinear. "
            f"Replace the SS record by explicit repeated doses (ADDL/II)."
        )
    config = (_resolve_solver(solver), rtol, atol, max_steps, adjoint or diffrax.RecursiveCheckpointAdjoint(),
              has_infusions, needs_rate, needs_dur, has_ss, time_varying)
    sol = _simulate_jit(model, params, events, config)
    if throw and _is_concrete(sol.result):
        res = np.asarray(sol.result)
        if np.any(res != 0):
            failed = np.nonzero(res != 0)[0]
            ids = subject_ids if subject_ids is not None else list(range(n_sub))
            lines = []
            for i in failed[:10]:
                values = {k: np.asarray(v[i]).round(6).tolist() for k, v in params.items()}
                why = "non-finite predictions" if res[i] == -1 else f"diffrax result code {int(res[i])} (e.g. max_steps={max_steps} reached)"
                lines.append(f"  subject {ids[i]}: {why}; parameters {values}")
            raise SolverError(
                f"The ODE solve failed for {len(failed)} of {n_sub} subjects:\n" + "\n".join(lines) +
                "\nTry a stiff solver (solver='kvaerno5'), a larger max_steps, or check the parameter values."
            )
    return sol


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)  # counts traces; tests read eqx.debug.get_num_traces
def _simulate_jit(model, params, events, config):
    ev = {k: getattr(events, k) for k in events.__dataclass_fields__}
    pred, outs, states, res, steps = jax.vmap(
        lambda p, e: _solve_subject(model, p, e, config)
    )(params, ev)
    return Solution(pred=pred, outputs=outs, states=states, result=res, num_steps=steps)
