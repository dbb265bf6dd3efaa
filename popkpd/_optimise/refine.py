"""Gradient-based refinement of continuous dose choices through the ODE.

``refine(model, draws, candidate, loss, settings=...)`` scales the amounts of groups of the
candidate's drug doses by factors ``x_g`` and minimises ``loss`` over ``log x_g`` with L-BFGS-B
(``scipy.optimize``, bounds on the factors), using gradients of the whole simulation
(``jax.value_and_grad`` through ``simulate``; diffrax's checkpointed reverse mode). The draws are
the same as in ``evaluate`` and stay fixed during the optimisation (common random numbers), so
the loss is a smooth deterministic function of the factors.

Groups: ``"step_up"`` = the drug doses before the first full dose (``candidate.priming_doses - 1``
doses), ``"maintenance"`` = the others; or a function ``group(k, time) -> group name`` of the
k-th drug dose (0-based) and its time (days).

``loss(times, outputs)`` gets the observation grid [T] and ``{output name: [N, T]}`` for the N
simulated patients, and returns a scalar written in ``jax.numpy``. It must be smooth: IMWG
categories and indicator counts are step functions with zero gradient; use e.g. the mean log
tumour at a day, log trough concentrations, or a log IL-6 peak (a max is piecewise smooth), with
penalty terms for constraints. The result is a local optimum; start it from the grid search's
best candidate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from .._ode.simulate import simulate
from .draws import ParameterDraws
from .evaluate import NON_DRUG_STATES, Candidate, EvaluationSettings, observation_times


@dataclasses.dataclass
class RefineResult:
    """``factors``: {group: multiplier of the candidate's doses of that group}; ``loss`` at the
    optimum and ``initial_loss`` at factors 1; ``converged`` and ``message`` from L-BFGS-B."""

    factors: dict
    loss: float
    initial_loss: float
    converged: bool
    message: str
    n_evaluations: int


def _dose_groups(candidate, events, horizon, group):
    """Group name of every dose column of ``events`` (None: not scaled: co-medication, padding)."""
    drug_times = [d.time for d in candidate.regimen.doses(until=horizon) if d.dose.state not in NON_DRUG_STATES]
    drug_times = sorted(set(drug_times))
    doses = candidate.regimen.doses(until=horizon)
    names = []
    for d in doses:
        if d.dose.state in NON_DRUG_STATES:
            names.append(None)
            continue
        k = drug_times.index(d.time)
        if callable(group):
            names.append(str(group(k, d.time)))
        else:
            names.append("step_up" if k < candidate.priming_doses - 1 else "maintenance")
    width = events.dose_time.shape[1]
    return names + [None] * (width - len(names))


def refine(
    model,
    draws: ParameterDraws,
    candidate: Candidate,
    loss: Callable,
    *,
    settings: EvaluationSettings | None = None,
    groups: Callable | None = None,
    bounds: tuple = (0.1, 10.0),
    max_iterations: int = 50,
) -> RefineResult:
    """Minimise ``loss`` over dose-group factors (module docstring)."""
    settings = settings or EvaluationSettings()
    if not isinstance(candidate, Candidate):
        raise TypeError(f"refine: received {type(candidate).__name__}; expected a Candidate.")
    low, high = bounds
    if not (0 < low < 1 < high):
        raise ValueError(
            f"refine(bounds={bounds!r}): expected (low, high) factors with 0 < low < 1 < high, so that the "
            "start (factor 1, the candidate itself) lies inside. E.g. bounds=(0.1, 10)."
        )
    times = observation_times(settings, [candidate])
    events = candidate.regimen.to_events(model, times, weights=draws.weights, until=settings.horizon)
    names = _dose_groups(candidate, events, settings.horizon, groups)
    group_names = sorted({n for n in names if n is not None})
    if not group_names:
        raise ValueError(f"refine: candidate {candidate.name!r} has no drug doses before the horizon; nothing to refine.")
    index = jnp.asarray([group_names.index(n) if n is not None else len(group_names) for n in names])
    params = {k: jnp.asarray(draws.values[k] * candidate.scale.get(k, 1.0)) for k in model.parameters}
    base_amt = events.dose_amt

    def objective(log_x):
        factor = jnp.concatenate([jnp.exp(log_x), jnp.ones(1)])[index]
        ev = eqx.tree_at(lambda e: e.dose_amt, events, base_amt * factor[None, :])
        sol = simulate(model, params, ev, solver=settings.solver, rtol=settings.rtol, atol=settings.atol, max_steps=settings.max_steps,
                       throw=False)
        outputs = {name: sol.outputs[..., i] for i, name in enumerate(model.outputs)}
        return loss(jnp.asarray(times), outputs)

    # not wrapped in jax.jit: simulate is jitted itself and inspects the (concrete) event layout
    value_and_grad = jax.value_and_grad(objective)
    calls = [0]

    def fun(z):
        calls[0] += 1
        v, g = value_and_grad(jnp.asarray(z))
        v = float(v)
        if not np.isfinite(v):
            raise FloatingPointError(
                f"refine: the loss is {v} at factors {dict(zip(group_names, np.exp(z).round(4)))}; expected a finite "
                "value. Check the loss (e.g. a log of 0) or narrow the bounds."
            )
        return v, np.asarray(g, dtype=float)

    z0 = np.zeros(len(group_names))
    initial = fun(z0)[0]
    res = scipy.optimize.minimize(fun, z0, jac=True, method="L-BFGS-B",
                                  bounds=[(np.log(low), np.log(high))] * len(group_names),
                                  options={"maxiter": max_iterations, "ftol": 1e-12, "gtol": 1e-9})
    factors = {g: float(np.exp(z)) for g, z in zip(group_names, res.x)}
    return RefineResult(factors, float(res.fun), float(initial), bool(res.success), str(res.message), calls[0])

