"""Batched posterior-predictive evaluation of candidate regimens.

``evaluate(model, draws, candidates, settings)`` simulates every candidate regimen for every
simulated patient of ``draws`` (``ParameterDraws``: ``J`` draws x ``P`` patients) as one batch of
"subjects" of ``popkpd.simulate`` and computes the endpoints below per subject.

Batching. Subjects are ordered (draw batch, candidate, draw, patient). Each simulate call holds
*all* candidates for ``draws_per_batch`` draws, padded to the same dose count (``stack_events``
with ``min_doses``) and the same observation grid, so every call has the same shapes and the same
observations per dose interval: the model compiles once per query. Results do not depend on the
batching (tested against one-by-one evaluation).

Endpoints (per simulated patient; ``W`` = ``settings.response_week``, times in days):

=====================  ==========================================================================
``p_pr``, ``p_vgpr``    1 if the best confirmed IMWG response by week W (``imwg_response`` of
                        ``m_protein`` at visits every 28 days up to day 7 W) is >= PR / >= VGPR
``log10_reduction``     log10(N0 / N) of the tumour at day 7 W (capped at 9 logs: the solver's
                        absolute tolerance on N/N0 makes smaller values noise)
``days_above_target``   days in [0, horizon] with ``settings.target_output`` (``conc`` if the model
                        has no such output) >= ``settings.target``
                        (nM; trapezoid rule on the indicator over the observation grid)
``cmax``                largest total drug concentration ``conc`` (nM) on the observation grid
``p_crs_dose<k>``       P(CRS) in the interval after drug dose k (k = 1 .. the largest
                        ``priming_doses`` of the candidates; NaN past a candidate's own priming doses):
                        ``crs_probability(IL-6 peak in the interval, high_burden, coefs)``
``p_crs``               P(at least one CRS) over the intervals of the drug doses given before day
                        ``settings.crs_window`` (the same window for every candidate):
                        1 - prod_k (1 - p_k), the intervals taken as independent
``visits_per_week``     largest number of days with a drug dose in any 7-day window (a property of
                        the regimen; GSI doses, taken at home, do not count)
=====================  ==========================================================================

An endpoint is computed when the model has the outputs it needs (``m_protein``, ``tumour``,
``il6``, the target output).

Summary (``Evaluation.summary``). For each candidate and endpoint, the per-patient values are
averaged over the ``P`` patients of each draw: ``m_j`` is the population mean (a response rate,
a mean P(CRS)) under draw ``j``. Reported: ``mean`` = mean over draws of ``m_j`` (the
posterior-predictive value), ``q05``/``q95`` = the 5 % and 95 % quantiles of ``m_j`` over draws
(a 90 % interval for the population value: posterior or prior uncertainty, widened by the
Monte-Carlo noise of ``P`` patients per draw), and ``mcse`` = sd(m_j) / sqrt(J), the Monte-Carlo
standard error of ``mean``.

CRS coefficients. ``settings.crs_coefs = (a0, a1, a2)``, or ``None`` with ``settings.crs_reference``
naming a candidate: then a1, a2 = ``crs_slopes`` and a0 is set so that the mean P(CRS) after dose 1
of the reference, at its mean log IL-6 peak, equals ``crs_reference_p`` (0.43 by default, as in
``models/mechanisms.py``) [E].
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._dosing import Regimen, stack_events
from .._ode.simulate import simulate
from .._response import imwg_response
from .._structural.base import AbstractStructuralModel
from .._structural.crs import crs_probability, peak_per_interval
from .draws import ParameterDraws

NON_DRUG_STATES = ("gsi",)
"""Dose states that are not the drug (co-medication taken at home: not a clinic visit, no CRS)."""
LOG10_REDUCTION_CAP = 9.0
TRAJECTORY_OUTPUTS = ("conc", "conc_functional", "tumour", "m_protein", "il6")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A candidate: a ``Regimen`` plus optional parameter multipliers (e.g. debulking before start:
    ``scale={"n0": 0.5, "s0": 0.5, "m0": 0.5, "l0": 0.5}``). ``settings`` are the choices that
    made it (shown in tables); ``priming_doses``: step-up doses and the first full dose (their
    intervals get their own ``p_crs_dose<k>`` column). ``fixed``: parameter values that replace
    the draws' values for every patient of this candidate (e.g. the typical patient, for a CRS
    calibration reference); ``role="calibration"`` marks such a helper, which ``rank`` leaves out."""

    name: str
    regimen: Regimen
    scale: Mapping = dataclasses.field(default_factory=dict)
    settings: Mapping = dataclasses.field(default_factory=dict)
    priming_doses: int = 3
    fixed: Mapping = dataclasses.field(default_factory=dict)
    role: str = "candidate"

    def __post_init__(self):
        if not isinstance(self.regimen, Regimen):
            raise TypeError(
                f"Candidate {self.name!r}: received regimen of type {type(self.regimen).__name__}; expected "
                "a popkpd.Regimen."
            )
        if isinstance(self.priming_doses, bool) or not isinstance(self.priming_doses, int) or self.priming_doses < 1:
            raise ValueError(
                f"Candidate {self.name!r}: received priming_doses={self.priming_doses!r}; expected a whole "
                "number >= 1 (step-up doses + the first full dose)."
            )
        if self.role not in ("candidate", "calibration"):
            raise ValueError(f"Candidate {self.name!r}: role={self.role!r}; expected 'candidate' or 'calibration'.")
        for k, v in self.scale.items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(
                    f"Candidate {self.name!r}: scale[{k!r}] = {v!r}; expected a finite factor > 0."
                )

    def drug_dose_times(self, horizon: float) -> np.ndarray:
        """Times of the drug doses (days) before ``horizon``, one per visit."""
        times = [d.time for d in self.regimen.doses(until=horizon) if d.dose.state not in NON_DRUG_STATES]
        return np.unique(np.asarray(times, dtype=float))

    def visits_per_week(self, horizon: float) -> int:
        t = self.drug_dose_times(horizon)
        return int(max((np.sum((t >= a) & (t < a + 7.0)) for a in t), default=0))


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    """What to compute and how (times in days, concentrations in nM).

    horizon          simulated period
    response_week    week W of P(>= PR), P(>= VGPR) and the tumour reduction (W >= 8: two visits)
    target, target_output   threshold of ``days_above_target`` and the output compared with it
    fine_step, fine_until, coarse_step   observation grid: every ``fine_step`` days up to day
                     ``fine_until`` (IL-6 peaks of the priming doses), then every ``coarse_step``
    crs_window, crs_coefs, crs_slopes, crs_reference, crs_reference_p   see the module docstring
    high_burden      the patient has high tumour burden (CRS logistic covariate)
    draws_per_batch  draws per simulate call (all candidates each time); None: all draws at once
    min_doses        pad the dose columns to at least this many (equal shapes share a compilation)
    solver, rtol, atol, max_steps   ``simulate`` settings ("expm" for linear models: exact)
    keep_trajectories       keep per-patient trajectories of ``TRAJECTORY_OUTPUTS`` (for plots)
    """

    horizon: float = 84.0
    response_week: int = 12
    target: float = 1.0
    target_output: str = "conc_functional"
    fine_step: float = 0.25
    fine_until: float = 28.0
    coarse_step: float = 1.0
    crs_window: float = 28.0
    crs_coefs: tuple | None = None
    crs_slopes: tuple = (1.3, 1.1)
    crs_reference: str | None = None
    crs_reference_p: float = 0.43
    high_burden: bool = False
    draws_per_batch: int | None = None
    min_doses: int = 1
    solver: str = "tsit5"
    rtol: float = 1e-6
    atol: float = 1e-9
    max_steps: int = 100_000
    keep_trajectories: bool = True

    def __post_init__(self):
        if not (isinstance(self.horizon, (int, float)) and math.isfinite(self.horizon) and self.horizon > 0):
            raise ValueError(f"EvaluationSettings(horizon=...): received {self.horizon!r}; expected days > 0, e.g. 84.")
        w = self.response_week
        if isinstance(w, bool) or not isinstance(w, int) or w < 8 or 7 * w > self.horizon:
            raise ValueError(
                f"EvaluationSettings(response_week=...): received {w!r} with horizon {self.horizon:g} days; expected a "
                "whole week >= 8 (two monthly visits confirm a response) with 7 * week <= horizon. Raise the "
                "horizon or move the week."
            )
        for name in ("fine_step", "fine_until", "coarse_step", "target", "crs_window"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"EvaluationSettings({name}=...): received {v!r}; expected a finite number > 0.")
        if self.crs_coefs is not None and np.shape(self.crs_coefs) != (3,):
            raise ValueError(
                f"EvaluationSettings(crs_coefs=...): received {self.crs_coefs!r}; expected (a0, a1, a2) or None with "
                "crs_reference=<candidate name> to calibrate a0."
            )
        if self.draws_per_batch is not None and (
            isinstance(self.draws_per_batch, bool) or not isinstance(self.draws_per_batch, int) or self.draws_per_batch < 1
        ):
            raise ValueError(f"EvaluationSettings(draws_per_batch=...): received {self.draws_per_batch!r}; expected None or a whole number >= 1.")


def observation_times(settings: EvaluationSettings, candidates: Sequence[Candidate] = ()) -> np.ndarray:
    """The grid shared by all candidates (it depends on ``settings`` only, so that a candidate's
    results do not depend on which other candidates are evaluated with it): 0 and every
    ``fine_step`` up to ``fine_until`` (the priming period, where IL-6 peaks are read), then every
    ``coarse_step`` to the horizon."""
    fine_end = min(settings.fine_until, settings.horizon)
    fine = np.arange(0.0, fine_end, settings.fine_step)
    coarse = np.arange(fine_end, settings.horizon + 1e-9, settings.coarse_step)
    return np.unique(np.round(np.concatenate([fine, coarse, [settings.horizon]]), 9))


@dataclasses.dataclass
class Evaluation:
    """Result of ``evaluate``. ``values[endpoint]``: per-patient values [R, J, P] (candidate,
    draw, patient); ``trajectories[output]``: [R, J * P, T] at ``times`` (when kept);
    ``crs_coefs``: the (a0, a1, a2) used; ``visits_per_week``: [R]."""

    candidates: list
    settings: EvaluationSettings
    times: np.ndarray
    values: dict
    trajectories: dict
    crs_coefs: tuple | None
    visits_per_week: np.ndarray
    source: str = ""

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.candidates]

    def draw_means(self, endpoint: str) -> np.ndarray:
        """[R, J]: the mean over the patients of each draw (NaN where the endpoint does not apply,
        e.g. ``p_crs_dose3`` of a regimen with one step-up dose)."""
        return np.mean(self.values[endpoint], axis=2)

    def summary(self) -> pd.DataFrame:
        """One row per candidate: its settings, then ``<endpoint>`` (mean), ``<endpoint>_q05``,
        ``<endpoint>_q95``, ``<endpoint>_mcse`` for each endpoint, and ``visits_per_week``."""
        rows = []
        for r, c in enumerate(self.candidates):
            row = {"candidate": c.name, **dict(c.settings)}
            for name in self.values:
                m = self.draw_means(name)[r]
                if np.isnan(m).all():
                    row.update({name: math.nan, f"{name}_q05": math.nan, f"{name}_q95": math.nan,
                                f"{name}_mcse": math.nan})
                    continue
                row[name] = float(np.mean(m))
                row[f"{name}_q05"] = float(np.quantile(m, 0.05))
                row[f"{name}_q95"] = float(np.quantile(m, 0.95))
                row[f"{name}_mcse"] = float(np.std(m, ddof=1) / math.sqrt(len(m))) if len(m) > 1 else math.nan
            row["visits_per_week"] = int(self.visits_per_week[r])
            rows.append(row)
        return pd.DataFrame(rows)


def _check_inputs(model, draws, candidates, settings):
    if not isinstance(model, AbstractStructuralModel):
        raise TypeError(f"evaluate: received model of type {type(model).__name__}; expected a structural model.")
    if not isinstance(draws, ParameterDraws):
        raise TypeError(
            f"evaluate: received draws of type {type(draws).__name__}; expected ParameterDraws from "
            "prior_draws(...) or fit_draws(...)."
        )
    candidates = list(candidates)
    if not candidates or not all(isinstance(c, Candidate) for c in candidates):
        raise TypeError(
            f"evaluate: received candidates {[type(c).__name__ for c in candidates]}; expected a non-empty "
            "list of Candidate (e.g. from RegimenGrid(...).candidates(dose))."
        )
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"evaluate: two candidates are named {dup!r}; expected distinct names. Rename one.")
    missing = [p for p in model.parameters if p not in draws.values]
    if missing:
        raise ValueError(
            f"evaluate: the draws have no values for {missing} of {type(model).__name__}; expected draws made "
            "for this model (prior_draws(model, ...) / fit_draws with its population model)."
        )
    for c in candidates:
        bad = [k for k in (*c.scale, *c.fixed) if k not in model.parameters]
        if bad:
            raise ValueError(
                f"Candidate {c.name!r}: scale / fixed name {bad}, which are not parameters of {type(model).__name__}; "
                f"expected names from {tuple(model.parameters)}."
            )
    if settings.crs_coefs is None and "il6" in model.outputs:
        if settings.crs_reference is None:
            raise ValueError(
                "evaluate: the model has an IL-6 output but EvaluationSettings has neither crs_coefs nor crs_reference; "
                "expected crs_coefs=(a0, a1, a2), or crs_reference=<candidate name> to calibrate a0."
            )
        if settings.crs_reference not in names:
            raise ValueError(
                f"evaluate: EvaluationSettings(crs_reference={settings.crs_reference!r}) names no candidate; expected one "
                f"of {names}. Add the reference regimen to the candidates."
            )
    return candidates


def evaluate(model, draws: ParameterDraws, candidates, settings: EvaluationSettings | None = None) -> Evaluation:
    """Simulate ``candidates`` x ``draws`` in batches and compute the endpoints (module docstring)."""
    settings = settings or EvaluationSettings()
    candidates = _check_inputs(model, draws, candidates, settings)
    times = observation_times(settings, candidates)
    R, J, P = len(candidates), draws.n_draws, draws.n_patients
    per_batch = min(settings.draws_per_batch or J, J)
    n_batches = math.ceil(J / per_batch)
    # events of every candidate for every patient (host side), padded to one dose count
    events = [c.regimen.to_events(model, times, weights=draws.weights, until=settings.horizon) for c in candidates]
    min_doses = max([settings.min_doses] + [e.dose_time.shape[1] for e in events])
    n_out = len(model.outputs)
    outputs = np.zeros((R, draws.size, len(times), n_out))
    for b in range(n_batches):
        draw = np.arange(b * per_batch, (b + 1) * per_batch)
        real = np.repeat(draw < J, P)  # the last batch is filled up with repeated draws
        rows = ((draw % J)[:, None] * P + np.arange(P)[None, :]).ravel()
        batch_events = _pad_covariate_grid(stack_events([e.subset(rows) for e in events], min_doses=min_doses),
                                           len(times) + min_doses)
        params = {}
        for name in model.parameters:
            base = draws.values[name][rows]
            params[name] = np.concatenate([
                np.full(len(rows), float(c.fixed[name])) if name in c.fixed else base * c.scale.get(name, 1.0)
                for c in candidates
            ])
        sol = simulate(model, params, batch_events, solver=settings.solver, rtol=settings.rtol, atol=settings.atol,
                       max_steps=settings.max_steps)
        out = np.asarray(sol.outputs).reshape(R, len(rows), len(times), n_out)
        outputs[:, rows[real]] = out[:, real]
    values, coefs = _endpoints(model, times, outputs, candidates, settings)
    values = {k: v.reshape(R, J, P) for k, v in values.items()}
    trajectories = {}
    if settings.keep_trajectories:
        trajectories = {k: outputs[..., model.output_index(k)] for k in TRAJECTORY_OUTPUTS if k in model.outputs}
    visits = np.array([c.visits_per_week(settings.horizon) for c in candidates])
    return Evaluation(candidates, settings, times, values, trajectories, coefs, visits, draws.source)


def _pad_covariate_grid(events, size: int):
    """Pad the covariate axis (one column per record) to ``size`` columns, repeating the last
    column as ``stack_events`` does, so that the shapes depend on ``min_doses`` and the
    observation grid only (equal shapes share one compilation)."""
    extra = size - events.cov_time.shape[1]
    if extra <= 0:
        return events
    last = lambda x: jnp.repeat(x[:, -1:], extra, axis=1)  # noqa: E731
    return dataclasses.replace(
        events,
        cov_time=jnp.concatenate([events.cov_time, last(events.cov_time)], axis=1),
        cov_value=jnp.concatenate([events.cov_value, last(events.cov_value)], axis=1),
        cov_mask=jnp.concatenate([events.cov_mask, jnp.zeros((events.n_subjects, extra), bool)], axis=1),
    )


def _endpoints(model, times, outputs, candidates, settings):
    """Per-patient endpoints {name: [R, N]} from outputs [R, N, T, M]."""
    out = {}
    names = model.outputs
    day = 7.0 * settings.response_week
    if "m_protein" in names:
        m = outputs[..., names.index("m_protein")]
        visits = np.arange(28.0, day + 1e-9, 28.0)
        r = imwg_response(times, m.reshape(-1, len(times)), visits=visits)
        out["p_pr"] = np.asarray(r.at_least("PR"), dtype=float).reshape(m.shape[:2])
        out["p_vgpr"] = np.asarray(r.at_least("VGPR"), dtype=float).reshape(m.shape[:2])
    if "tumour" in names:
        tum = outputs[..., names.index("tumour")]
        at = np.array([np.interp(day, times, row) for row in tum.reshape(-1, len(times))]).reshape(tum.shape[:2])
        out["log10_reduction"] = np.minimum(-np.log10(np.maximum(at, 1e-300)), LOG10_REDUCTION_CAP)
    target_output = settings.target_output if settings.target_output in names else "conc"
    if target_output in names:
        c = outputs[..., names.index(target_output)]
        above = (c >= settings.target).astype(float)
        out["days_above_target"] = np.sum(0.5 * (above[..., 1:] + above[..., :-1]) * np.diff(times), axis=-1)
    if "conc" in names:
        out["cmax"] = outputs[..., names.index("conc")].max(axis=-1)
    coefs = None
    if "il6" in names:
        il6 = outputs[..., names.index("il6")]
        in_window = [c.drug_dose_times(min(settings.crs_window, settings.horizon)) for c in candidates]
        k_max = max([len(t) for t in in_window] + [1])
        peaks = np.full(il6.shape[:2] + (k_max,), np.nan)
        for r, c in enumerate(candidates):
            t_dose = c.drug_dose_times(settings.horizon)
            k = len(in_window[r])
            if k:
                peaks[r, :, :k] = np.asarray(peak_per_interval(times, il6[r], t_dose))[:, :k]
        floor = 1e-12  # the IL-6 peak is >= basal IL-6 > 0; the floor only guards a log of 0
        peaks = np.where(np.isnan(peaks), np.nan, np.maximum(peaks, floor))
        if settings.crs_coefs is not None:
            coefs = tuple(float(x) for x in settings.crs_coefs)
        else:
            ref = [c.name for c in candidates].index(settings.crs_reference)
            a1, a2 = settings.crs_slopes
            p = settings.crs_reference_p
            a0 = math.log(p / (1 - p)) - a1 * float(np.mean(np.log(peaks[ref, :, 0]))) - a2 * float(settings.high_burden)
            coefs = (a0, float(a1), float(a2))
        safe = np.where(np.isnan(peaks), 1.0, peaks)
        prob = np.asarray(crs_probability(safe, float(settings.high_burden), np.asarray(coefs)))
        prob = np.where(np.isnan(peaks), np.nan, prob)
        k_priming = min(max(c.priming_doses for c in candidates), k_max)
        for k in range(k_priming):
            own = np.array([k < c.priming_doses for c in candidates])[:, None]
            out[f"p_crs_dose{k + 1}"] = np.where(own, prob[..., k], np.nan)
        out["p_crs"] = 1.0 - np.prod(np.where(np.isnan(prob), 1.0, 1.0 - prob), axis=-1)
    if not out:
        raise ValueError(
            f"evaluate: {type(model).__name__} has outputs {tuple(names)}; expected at least one of 'conc', "
            "'m_protein', 'tumour', 'il6' or the target output to compute endpoints from."
        )
    return out, coefs

