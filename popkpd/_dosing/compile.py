"""Compile a ``Regimen`` into the records of a NONMEM-style table and into ``Events``.

Both outputs come from one record layout, so that ``read_nonmem(regimen.to_nonmem(...), model)``
gives the same event arrays as ``regimen.to_events(...)``. Per subject the records are ordered by
time; at equal times observations come first (a sample at a dose time is a pre-dose trough, as in
NONMEM files), observations at one time follow the order of ``outputs`` and doses at one time the
order of the regimen's phases. Every subject gets the same records; per-kg amounts and infusion
rates differ with the subject's weight.

``stack_events`` pads several ``Events`` (e.g. one per candidate regimen) to common dose,
observation and covariate sizes and concatenates them along the subject axis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._events import Events, pad_events
from .._structural.base import AbstractStructuralModel


class _Layout:
    """The records of one subject: ``kind`` (0 observation, 1 dose), ``time``, ``index`` (output
    index for an observation, position in ``doses`` for a dose), plus the resolved doses."""

    def __init__(self, regimen, model, observation_times, outputs, until):
        if not isinstance(model, AbstractStructuralModel):
            raise TypeError(
                f"Compiling a regimen: received model={model!r} ({type(model).__name__}); expected a "
                "structural model (e.g. popkpd.OneCompartment()), whose state names the doses address."
            )
        obs = _observation_times(observation_times)
        self.output_index = _outputs(model, outputs)
        if until is None and not regimen.is_finite and obs.size:
            until = float(obs[-1])  # doses at or after the last sample cannot affect any sample
        self.doses = regimen.doses(until)
        self.cmt = []
        for d in self.doses:
            if d.dose.state not in model.states:
                raise ValueError(
                    f"{d.dose.label()} (first at time {d.time:g}) targets state {d.dose.state!r}, but "
                    f"{type(model).__name__} has states {tuple(model.states)}; expected one of them. Give "
                    f"the dose a state of the model, e.g. {type(d.dose).__name__}(..., state="
                    f"{model.states[0]!r}), or use a model with a {d.dose.state!r} state."
                )
            self.cmt.append(model.state_index(d.dose.state))
        records = [(float(t), 0, k) for t in obs for k in self.output_index]
        records += [(d.time, 1, j) for j, d in enumerate(self.doses)]
        records.sort(key=lambda r: (r[0], r[1]))  # stable: outputs and phases keep their order
        self.kind = np.array([r[1] for r in records], dtype=np.int64)
        self.time = np.array([r[0] for r in records], dtype=np.float64)
        self.index = np.array([r[2] for r in records], dtype=np.int64)

    @property
    def n_records(self) -> int:
        return len(self.kind)

    def amounts(self, weights: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Amounts and RATEs [S, D] for ``n`` subjects of ``weights`` (kg; None: no per-kg dose)."""
        w = np.ones(n) if weights is None else weights  # only read by per-kg doses
        amt = np.zeros((n, len(self.doses)))
        rate = np.zeros((n, len(self.doses)))
        for j, d in enumerate(self.doses):
            amt[:, j] = d.dose.amount_for(w)
            rate[:, j] = d.dose.rate_for(w)
        return amt, rate


def _observation_times(times) -> np.ndarray:
    t = np.atleast_1d(np.asarray(times if times is not None else [], dtype=float))
    if t.ndim != 1:
        raise ValueError(
            f"observation_times: received an array of shape {t.shape}; expected a 1-D sequence of times "
            "shared by all subjects. Flatten it, or compile subjects separately and use stack_events."
        )
    bad = ~np.isfinite(t) | (t < 0)
    if bad.any():
        raise ValueError(
            f"observation_times: received {t[bad][0]:g} at position {int(np.flatnonzero(bad)[0])}; expected "
            "finite times >= 0 on the model's time axis. Remove or correct it."
        )
    if np.any(np.diff(t) <= 0):
        k = int(np.flatnonzero(np.diff(t) <= 0)[0])
        raise ValueError(
            f"observation_times: received {t[k]:g} then {t[k + 1]:g} (positions {k}, {k + 1}); expected "
            "strictly increasing times. Sort and de-duplicate them, e.g. np.unique(times); several "
            "outputs at one time are asked for with outputs=(...)."
        )
    return t


def _outputs(model, outputs) -> list[int]:
    if outputs is None:
        return [0]
    names = [outputs] if isinstance(outputs, str) else list(outputs)
    if not names or len(set(names)) != len(names):
        raise ValueError(
            f"outputs: received {outputs!r}; expected one output name or a sequence of distinct names "
            f"of {type(model).__name__} {tuple(model.outputs)}."
        )
    for name in names:
        if name not in model.outputs:
            raise ValueError(
                f"outputs: received {name!r}; expected outputs of {type(model).__name__}: "
                f"{tuple(model.outputs)}. Pick one of them (default: {model.outputs[0]!r})."
            )
    return [model.output_index(name) for name in names]


def _subjects(layout, weights, n_subjects) -> tuple[np.ndarray | None, int]:
    """Weights per subject (kg) and the number of subjects."""
    if n_subjects is not None and (
        isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)) or n_subjects < 1
    ):
        raise ValueError(f"n_subjects: received {n_subjects!r}; expected a whole number >= 1 (or None).")
    if weights is None:
        per_kg = [d for d in layout.doses if d.dose.per_kg]
        if per_kg:
            d = per_kg[0]
            raise ValueError(
                f"{d.dose.label()} (first at time {d.time:g}) is dosed per kg, but no weights were given; "
                "expected weights=<kg> (one number, or one per subject). Pass weights=..., or make the "
                "dose flat (per_kg=False)."
            )
        return None, 1 if n_subjects is None else int(n_subjects)
    w = np.atleast_1d(np.asarray(weights, dtype=float))
    if w.ndim != 1 or w.size == 0:
        raise ValueError(
            f"weights: received shape {w.shape}; expected a number or a 1-D array, one weight (kg) per subject."
        )
    bad = ~np.isfinite(w) | (w <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"weights: received {w[i]:g} for subject {i}; expected body weights in kg, finite and > 0. "
            "Correct that subject's weight."
        )
    n = len(w) if n_subjects is None else int(n_subjects)
    if len(w) == 1:
        w = np.repeat(w, n)
    if len(w) != n:
        raise ValueError(
            f"weights: received {len(w)} weights for n_subjects={n_subjects}; expected one weight, or "
            "one per subject. Drop n_subjects (it follows the weights) or give matching weights."
        )
    return w, n


def _covariates(covariates, n: int) -> tuple[list[str], np.ndarray]:
    """Names and values [S, K] of baseline covariates (one number, or one per subject)."""
    if covariates is None:
        return [], np.zeros((n, 0))
    if not isinstance(covariates, Mapping):
        raise TypeError(
            f"covariates: received {type(covariates).__name__}; expected a mapping name -> value (one "
            "number, or one per subject), e.g. covariates={'WT': [70, 80]}."
        )
    names, columns = [], []
    for name, value in covariates.items():
        v = np.atleast_1d(np.asarray(value, dtype=float))
        if v.ndim != 1 or len(v) not in (1, n) or not np.all(np.isfinite(v)):
            raise ValueError(
                f"covariates[{name!r}]: received {value!r}; expected one finite number or {n} (one per "
                "subject). Correct the values."
            )
        names.append(str(name))
        columns.append(np.broadcast_to(v, (n,)))
    return names, np.stack(columns, axis=1)


def to_events(
    regimen,
    model: AbstractStructuralModel,
    observation_times,
    *,
    weights=None,
    n_subjects: int | None = None,
    outputs: str | Sequence[str] | None = None,
    covariates: Mapping | None = None,
    until: float | None = None,
) -> Events:
    """``Events`` for ``n_subjects`` subjects on ``regimen``, observed at ``observation_times``.

    Args:
        regimen: the dosing schedule.
        model: the structural model; each dose's ``state`` is resolved with ``model.state_index``.
        observation_times: 1-D, strictly increasing, the same for every subject (model time unit).
        weights: body weight(s) in kg, one number or one per subject; required when a dose is
            per kg (amount = per-kg amount x weight, capped at the dose's ``max_amount``).
        n_subjects: number of subjects; defaults to the number of weights (else 1).
        outputs: output name(s) observed at each time (default: the model's first output); with
            several, one observation record per time per output, ``obs_output`` set accordingly.
        covariates: baseline covariates, name -> one value or one per subject; they fill
            ``cov_value`` (constant over the subject's records, ``cov_time`` = record times).
        until: horizon (exclusive) for the doses; default: the last observation time when the
            regimen is open-ended, else all its doses.

    Infusions get RATE = amount / duration. ``dose_row`` / ``obs_row`` are the 0-based rows of the
    table ``to_nonmem`` writes with the same arguments, and observation values ``obs_dv`` are 0.
    """
    layout = _Layout(regimen, model, observation_times, outputs, until)
    w, n = _subjects(layout, weights, n_subjects)
    cov_names, cov_values = _covariates(covariates, n)
    amt, rate = layout.amounts(w, n)
    is_dose, is_obs = layout.kind == 1, layout.kind == 0
    order = layout.index[is_dose]  # dose positions in record order (== 0..D-1: doses are time-sorted)
    cmt = np.asarray(layout.cmt, dtype=np.int32)[order] if order.size else np.zeros(0, np.int32)
    doses, observations, covs = [], [], []
    n_rec = layout.n_records
    for i in range(n):
        rows = i * n_rec + np.arange(n_rec)
        doses.append(
            {
                "time": layout.time[is_dose],
                "amt": amt[i, order],
                "cmt": cmt,
                "rate": rate[i, order],
                "ss": np.zeros(order.size, np.int32),
                "ii": np.zeros(order.size),
                "reset": np.zeros(order.size, bool),
                "row": rows[is_dose],
            }
        )
        k = int(is_obs.sum())
        observations.append(
            {
                "time": layout.time[is_obs],
                "dv": np.zeros(k),
                "output": layout.index[is_obs],
                "cens": np.zeros(k, np.int32),
                "limit": np.full(k, np.nan),
                "row": rows[is_obs],
            }
        )
        covs.append((layout.time, np.tile(cov_values[i], (n_rec, 1))))
    return pad_events(doses, observations, covs, len(cov_names))


def to_nonmem(
    regimen,
    model: AbstractStructuralModel,
    observation_times,
    *,
    weights=None,
    n_subjects: int | None = None,
    ids: Sequence | None = None,
    outputs: str | Sequence[str] | None = None,
    covariates: Mapping | None = None,
    until: float | None = None,
) -> pd.DataFrame:
    """NONMEM-style table of ``regimen`` (arguments as ``to_events``; ``ids`` default 1..S).

    Columns: ID, TIME, DV (0), AMT, EVID (1 dose, 0 observation), CMT (1-based state of a dose;
    0, the default compartment, on observations), MDV, RATE (amount/duration for an infusion,
    else 0); WT (kg) when ``weights`` are given; DVID when ``outputs`` is given: DVID k is
    ``model.outputs[k - 1]``, so read it back with ``dvid_outputs={k: model.outputs[k - 1], ...}``;
    one column per entry of ``covariates``.
    """
    layout = _Layout(regimen, model, observation_times, outputs, until)
    w, n = _subjects(layout, weights, n_subjects)
    cov_names, cov_values = _covariates(covariates, n)
    if ids is None:
        ids = list(range(1, n + 1))
    ids = list(ids)
    if len(ids) != n or len(set(ids)) != n:
        raise ValueError(
            f"ids: received {len(ids)} ids ({len(set(ids))} distinct) for {n} subjects; expected {n} "
            "distinct ids. Give one id per subject."
        )
    reserved = {"ID", "TIME", "DV", "AMT", "EVID", "CMT", "MDV", "RATE", "DVID", "WT"}
    clash = [c for c in cov_names if c.upper() in reserved]
    if clash:
        raise ValueError(
            f"covariates: received the name {clash[0]!r}, which is a column the table already has; "
            "expected other names (body weight comes from weights=). Rename the covariate."
        )
    amt, rate = layout.amounts(w, n)
    is_dose = layout.kind == 1
    n_rec = layout.n_records
    dose_j = layout.index[is_dose]
    amt_rec, rate_rec, cmt_rec = np.zeros((n, n_rec)), np.zeros((n, n_rec)), np.zeros(n_rec, np.int64)
    amt_rec[:, is_dose], rate_rec[:, is_dose] = amt[:, dose_j], rate[:, dose_j]
    cmt_rec[is_dose] = np.asarray(layout.cmt, dtype=np.int64)[dose_j] + 1
    frame = {
        "ID": np.repeat(np.asarray(ids, dtype=object), n_rec),
        "TIME": np.tile(layout.time, n),
        "DV": np.zeros(n * n_rec),
        "AMT": amt_rec.ravel(),
        "EVID": np.tile(layout.kind, n),
        "CMT": np.tile(cmt_rec, n),
        "MDV": np.tile(layout.kind, n),
        "RATE": rate_rec.ravel(),
    }
    if outputs is not None:
        frame["DVID"] = np.tile(np.where(is_dose, 0, layout.index + 1), n)
    if w is not None:
        frame["WT"] = np.repeat(w, n_rec)
    for k, name in enumerate(cov_names):
        frame[name] = np.repeat(cov_values[:, k], n_rec)
    table = pd.DataFrame(frame)
    if table["ID"].map(lambda x: isinstance(x, (int, np.integer))).all():
        table["ID"] = table["ID"].astype(np.int64)
    return table


_FILL = {
    "dose_time": 0.0, "dose_amt": 0.0, "dose_cmt": 0, "dose_rate": 0.0, "dose_ss": 0, "dose_ii": 0.0,
    "dose_reset": False, "dose_row": -1, "dose_mask": False,
    "obs_time": 0.0, "obs_dv": 0.0, "obs_output": 0, "obs_cens": 0, "obs_limit": math.nan,
    "obs_row": -1, "obs_mask": False, "cov_mask": False,
}  # fmt: skip


def stack_events(events: Sequence[Events], *, min_doses: int = 1, min_observations: int = 1) -> Events:
    """Pad several ``Events`` to common sizes and concatenate them along the subject axis.

    The result has ``sum(e.n_subjects)`` subjects in the order given (for candidate regimens x
    subjects: regimen-major), ``max(D, min_doses)`` dose and ``max(O, min_observations)``
    observation columns; padding follows ``pad_events`` (masked entries, rows -1, covariates
    repeating the last value). Fixing ``min_doses``/``min_observations`` keeps shapes, and hence
    compilations, the same across queries. All must have the same number of covariates.
    """
    events = list(events)
    if not events or not all(isinstance(e, Events) for e in events):
        raise TypeError(
            f"stack_events: received {[type(e).__name__ for e in events]}; expected a non-empty sequence "
            "of Events, e.g. [regimen.to_events(model, times, weights=w) for regimen in candidates]."
        )
    ks = [e.cov_value.shape[2] for e in events]
    if len(set(ks)) != 1:
        raise ValueError(
            f"stack_events: received Events with {ks} covariates; expected the same covariates in all. "
            "Compile them with the same covariates=..."
        )
    sizes = {
        "dose": max([min_doses] + [e.dose_time.shape[1] for e in events]),
        "obs": max([min_observations] + [e.obs_time.shape[1] for e in events]),
        "cov": max(e.cov_time.shape[1] for e in events),
    }
    fields = {}
    for name in Events.__dataclass_fields__:
        prefix = name.split("_")[0]
        parts = []
        for e in events:
            x = np.asarray(getattr(e, name))
            extra = sizes[prefix] - x.shape[1]
            if extra:
                if name in _FILL:
                    pad = np.full((x.shape[0], extra) + x.shape[2:], _FILL[name], dtype=x.dtype)
                else:  # cov_time, cov_value: repeat the last column, as pad_events does
                    pad = np.repeat(x[:, -1:], extra, axis=1)
                x = np.concatenate([x, pad], axis=1)
            parts.append(x)
        fields[name] = jnp.asarray(np.concatenate(parts, axis=0))
    return Events(**fields)
