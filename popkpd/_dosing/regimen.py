"""``Regimen``: an immutable, composable dosing schedule (host side).

Time axis. Times are on the structural model's time axis and in its time unit. popkpd's BCMA models
use days, but the unit is the user's choice: it must match the model's parameters (a regimen in hours
with clearances in L/day is off by a factor 24). Time 0 is the first dose: clinical "Day 1" is time
0, "Day 4" is time 3, and week ``w`` starts at day ``7 * (w - 1)`` (week 25 starts at day 168).

All windows are half-open: a phase ending at ``end`` has no dose at ``end``, ``pause(a, b)`` removes
the doses at ``a <= t < b``, ``stop(at)`` removes those at ``t >= at`` and a horizon ``until`` keeps
the doses at ``t < until``.

Building blocks (each returns a new ``Regimen``):

    Regimen.at(times, dose)               the same dose at each listed time (or one dose per time)
    Regimen.step_up([(t, dose), ...])     a dose per visit, times strictly increasing
    Regimen.every(interval, dose, start=, end=None, count=None)      periodic doses
    r.then_every(interval, dose, start=, ...)   periodic doses after the last dose of r
    r.switch_interval(interval, at=)      from the first scheduled dose at or after ``at``, dose
                                          every ``interval`` instead (Q1W -> Q2W -> Q4W)
    r.pause(a, b)                         treatment-free interval: drop doses at a <= t < b; the
                                          schedule resumes on its own grid at the first time >= b
    r.stop(at)                            no doses at or after ``at`` (stop after a duration)
    r1 + r2 == Regimen.combine(r1, r2)    doses of both (co-treatment, each dose with its state)

Examples (times in days; science.md §1.1-1.3). Teclistamab, SC 0.06 mg/kg Day 1, 0.3 mg/kg Day 4,
then 1.5 mg/kg weekly from Day 7::

    mgkg = lambda x: SC(x, per_kg=True)
    teclistamab = Regimen.step_up([(0, mgkg(0.06)), (3, mgkg(0.3))]).then_every(7, mgkg(1.5), start=6)

Elranatamab, SC 12 mg Day 1, 32 mg Day 4, 76 mg weekly from Day 8, every 2 weeks from week 25,
every 4 weeks from week 49::

    elranatamab = (
        Regimen.step_up([(0, SC(12)), (3, SC(32))])
        .then_every(7, SC(76), start=7)
        .switch_interval(14, at=168)
        .switch_interval(28, at=336)
    )

Linvoseltamab, IV 5 mg Day 1 (4 h), 25 mg Day 8, 200 mg Day 15 and weekly to week 13, then every
2 weeks from week 14 (the infusion times of the later doses are illustrative)::

    iv = lambda mg, hours: Infusion(mg, duration=hours / 24)
    linvoseltamab = (
        Regimen.step_up([(0, iv(5, 4)), (7, iv(25, 4))])
        .then_every(7, iv(200, 1), start=14, count=11)
        .then_every(14, iv(200, 1), start=91)
    )

Co-treatment with an oral gamma-secretase inhibitor into its own state, daily for 4 weeks::

    teclistamab + Regimen.every(1, Bolus(100, state="gsi"), start=0, count=28)

A regimen without an end (``every`` without ``end``/``count``) is open-ended; it is cut at a horizon
when compiled (``until``, or by default the last observation time).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from .doses import AbstractDose, _check_number


_TIME_FIX = "Times are on the model's time axis with the first dose at 0; negative times are not allowed."


class ScheduledDose(NamedTuple):
    """One administration of an expanded regimen."""

    time: float
    dose: AbstractDose
    phase: int  # index of the phase it comes from (combination order breaks ties at equal times)


@dataclasses.dataclass(frozen=True)
class Phase:
    """Doses of one kind on a grid: ``start + k * interval`` for ``k = 0, 1, ...`` while ``< end``
    (a single dose at ``start`` when ``interval`` is None), except inside the ``gaps``
    (treatment-free windows ``[a, b)``). Built by ``Regimen``'s methods; rarely made by hand."""

    dose: AbstractDose
    start: float
    interval: float | None = None
    end: float = math.inf
    gaps: tuple[tuple[float, float], ...] = ()

    def __post_init__(self):
        if not isinstance(self.dose, AbstractDose):
            raise TypeError(
                f"Regimen dose: received {self.dose!r} ({type(self.dose).__name__}); expected a dose "
                "such as SC(1.5, per_kg=True), Bolus(10) or Infusion(200, duration=1 / 24)."
            )
        start = _check_number(self.start, f"time of {self.dose.label()}", _TIME_FIX, allow_zero=True)
        object.__setattr__(self, "start", start)
        if self.interval is not None:
            interval = _check_number(
                self.interval,
                f"dosing interval of {self.dose.label()}",
                "Give the time between doses in the model's time unit, e.g. 7 for weekly in days.",
            )
            object.__setattr__(self, "interval", interval)
        if not self.end > self.start:
            raise ValueError(
                f"Phase of {self.dose.label()}: received start={self.start:g} and end={self.end:g}; "
                "expected end > start (end is exclusive). Give a later end, or a positive count."
            )

    @property
    def is_finite(self) -> bool:
        return self.interval is None or math.isfinite(self.end)

    def times(self, until: float = math.inf) -> np.ndarray:
        """Dose times of this phase before ``until`` (exclusive)."""
        stop = min(self.end, until)
        if self.interval is None:
            t = np.array([self.start])
        else:
            if not math.isfinite(stop):
                raise ValueError(f"open-ended phase of {self.dose.label()} expanded without a horizon")
            n = max(0, math.ceil((stop - self.start) / self.interval)) + 1
            t = self.start + np.arange(n) * self.interval
        keep = t < stop
        for a, b in self.gaps:
            keep &= ~((t >= a) & (t < b))
        return t[keep]

    def describe(self) -> str:
        if self.interval is None:
            return f"{self.dose.label()} at {self.start:g}"
        end = "" if math.isinf(self.end) else f" until {self.end:g}"
        return f"{self.dose.label()} every {self.interval:g} from {self.start:g}{end}"


def _as_times(times, what: str) -> list[float]:
    values = np.atleast_1d(np.asarray(times, dtype=object)).tolist()
    if len(values) == 0:
        raise ValueError(f"{what}: received no times; expected at least one dose time.")
    return [_check_number(t, f"{what} time", _TIME_FIX, allow_zero=True) for t in values]


@dataclasses.dataclass(frozen=True)
class Regimen:
    """An immutable dosing schedule: a tuple of ``Phase``s. See the module docstring for the
    vocabulary and for the approved teclistamab, elranatamab and linvoseltamab schedules.

    Two doses of the same kind (instantaneous or infusion) into the same state at the same time are
    rejected as contradictory; give one dose with the summed amount instead.
    """

    phases: tuple[Phase, ...] = ()

    def __post_init__(self):
        phases = tuple(self.phases)
        for p in phases:
            if not isinstance(p, Phase):
                raise TypeError(
                    f"Regimen(phases=...): received an element of type {type(p).__name__}; expected "
                    "Phase. Build regimens with Regimen.at / step_up / every and combine them with +."
                )
        object.__setattr__(self, "phases", phases)
        # Check for contradictions at once over the span the phases describe (one period past the
        # last finite bound); open-ended phases are checked again over the horizon when compiled.
        bounds = [p.start for p in phases] + [p.end for p in phases if math.isfinite(p.end)]
        longest = max([p.interval for p in phases if p.interval is not None], default=0.0)
        if phases:
            self.doses(until=max(bounds) + 2 * longest + 1.0)

    # ---- building blocks -------------------------------------------------------------------------

    @classmethod
    def at(cls, times, dose: AbstractDose | Sequence[AbstractDose]) -> Regimen:
        """``dose`` at each of ``times`` (a number or a sequence); or, with a sequence of doses of
        the same length, ``dose[i]`` at ``times[i]``."""
        ts = _as_times(times, "Regimen.at")
        doses = list(dose) if isinstance(dose, (list, tuple)) else [dose] * len(ts)
        if len(doses) != len(ts):
            raise ValueError(
                f"Regimen.at: received {len(ts)} times and {len(doses)} doses; expected one dose, or "
                "one dose per time. Pair them up, e.g. Regimen.step_up([(0, SC(12)), (3, SC(32))])."
            )
        return cls(tuple(Phase(d, t) for t, d in zip(ts, doses)))

    @classmethod
    def step_up(cls, steps: Sequence[tuple[float, AbstractDose]]) -> Regimen:
        """One dose per visit, ``steps = [(time, dose), ...]`` with strictly increasing times, e.g.
        ``Regimen.step_up([(0, SC(0.06, per_kg=True)), (3, SC(0.3, per_kg=True))])``."""
        steps = list(steps)
        if not steps or not all(isinstance(s, (tuple, list)) and len(s) == 2 for s in steps):
            raise ValueError(
                f"Regimen.step_up: received {steps!r}; expected a non-empty list of (time, dose) pairs, "
                "e.g. [(0, SC(12)), (3, SC(32))]."
            )
        ts = _as_times([s[0] for s in steps], "Regimen.step_up")
        if any(b <= a for a, b in zip(ts, ts[1:])):
            raise ValueError(
                f"Regimen.step_up: received times {ts}; expected strictly increasing times (one visit "
                "each). Sort the steps; for two doses at one visit give one dose with the sum."
            )
        return cls.at(ts, [s[1] for s in steps])

    @classmethod
    def every(
        cls,
        interval: float,
        dose: AbstractDose,
        *,
        start: float = 0.0,
        end: float | None = None,
        count: int | None = None,
    ) -> Regimen:
        """``dose`` every ``interval`` from ``start``: ``count`` doses, or those before ``end``
        (exclusive), or open-ended when neither is given."""
        interval = _check_number(
            interval, "Regimen.every interval", "Give the time between doses, e.g. 7 for weekly in days."
        )
        if end is not None and count is not None:
            raise ValueError(
                f"Regimen.every: received end={end!r} and count={count!r}; expected one of them (or "
                "neither, for an open-ended phase). Drop one."
            )
        stop = math.inf
        if count is not None:
            if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
                raise ValueError(
                    f"Regimen.every count: received {count!r}; expected a whole number of doses >= 1."
                )
            start = _check_number(start, "Regimen.every start", "The first dose time must be >= 0.", allow_zero=True)
            stop = start + int(count) * interval
        if end is not None:
            stop = _check_number(end, "Regimen.every end", "Give the (exclusive) end time of the phase.")
        return cls((Phase(dose, start, interval, stop),))

    @classmethod
    def combine(cls, *regimens: Regimen) -> Regimen:
        """All doses of all ``regimens`` (e.g. a bispecific and a co-medication, each dose naming
        its state). Same as ``r1 + r2 + ...``."""
        phases = []
        for r in regimens:
            if not isinstance(r, Regimen):
                raise TypeError(
                    f"Regimen.combine: received {type(r).__name__}; expected Regimen objects. Wrap a "
                    "single dose as Regimen.at(time, dose)."
                )
            phases.extend(r.phases)
        return cls(tuple(phases))

    def __add__(self, other: Regimen) -> Regimen:
        if not isinstance(other, Regimen):
            return NotImplemented
        return Regimen.combine(self, other)

    def then_every(
        self,
        interval: float,
        dose: AbstractDose,
        *,
        start: float,
        end: float | None = None,
        count: int | None = None,
    ) -> Regimen:
        """This regimen followed by ``Regimen.every(interval, dose, start=start, ...)``; ``start``
        must come after the last dose of this regimen (which must therefore have an end)."""
        if not self.is_finite:
            open_phase = next(p for p in self.phases if not p.is_finite)
            raise ValueError(
                f"then_every: the regimen already has an open-ended phase ({open_phase.describe()}), so "
                "nothing can follow it. End it first with .stop(at=...), or use .switch_interval(...) "
                "to change its interval, or combine independent schedules with +."
            )
        nxt = Regimen.every(interval, dose, start=start, end=end, count=count)
        last = self.last_dose_time()
        if last is not None and nxt.phases[0].start <= last:
            raise ValueError(
                f"then_every: received start={nxt.phases[0].start:g}, but the regimen's last dose is at "
                f"{last:g}; expected start > {last:g}. Give a later start, or combine overlapping "
                "schedules with + if they are meant to run together."
            )
        return self + nxt

    def switch_interval(self, interval: float, *, at: float) -> Regimen:
        """From the first scheduled dose at or after ``at`` of the periodic phase running then,
        dose every ``interval`` instead (same dose, same end and pauses). E.g. Q1W -> Q2W from week
        25: ``.switch_interval(14, at=168)``. Combine co-treatments after switching."""
        at = _check_number(at, "switch_interval at", "Give the time from which the interval changes.", allow_zero=True)
        interval = _check_number(
            interval, "switch_interval interval", "Give the new time between doses, e.g. 14 for every two weeks."
        )
        running = []
        for i, p in enumerate(self.phases):
            if p.interval is None:
                continue
            k = max(0, math.ceil((at - p.start) / p.interval))
            first = p.start + k * p.interval
            if first < p.end:
                running.append((i, first))
        if len(running) != 1:
            found = "none" if not running else ", ".join(self.phases[i].describe() for i, _ in running)
            raise ValueError(
                f"switch_interval(at={at:g}): received a regimen with {len(running)} periodic phases "
                f"scheduled at or after {at:g} ({found}); expected exactly one. Switch the drug's own "
                "regimen before combining it with others, and make sure its periodic phase runs past "
                f"{at:g} (Regimen.every / then_every)."
            )
        i, first = running[0]
        old = self.phases[i]
        phases = list(self.phases)
        phases[i : i + 1] = [
            dataclasses.replace(old, end=first) if first > old.start else None,
            Phase(old.dose, first, interval, old.end, old.gaps),
        ]
        return Regimen(tuple(p for p in phases if p is not None))

    def pause(self, start: float, end: float) -> Regimen:
        """Treatment-free interval: no dose at ``start <= t < end``. Periodic phases keep their grid
        and resume at their first grid time >= ``end``. To restart at exactly ``end`` on a new grid,
        use ``.stop(at=start).then_every(interval, dose, start=end)`` instead."""
        start = _check_number(start, "pause start", "Give the first day without doses (>= 0).", allow_zero=True)
        end = _check_number(end, "pause end", "Give the day dosing may resume.")
        if not end > start:
            raise ValueError(
                f"pause: received start={start:g}, end={end:g}; expected end > start (the pause covers "
                "start <= t < end). Swap the arguments or widen the window."
            )
        return Regimen(tuple(dataclasses.replace(p, gaps=p.gaps + ((start, end),)) for p in self.phases))

    def stop(self, at: float) -> Regimen:
        """No doses at or after ``at`` (e.g. stop after 24 weeks: ``.stop(at=168)``)."""
        at = _check_number(at, "stop at", "Give the time from which no dose is given (> 0).")
        return Regimen(tuple(dataclasses.replace(p, end=min(p.end, at)) for p in self.phases if p.start < at))

    # ---- queries --------------------------------------------------------------------------------

    @property
    def is_finite(self) -> bool:
        """True when every phase has an end (the regimen has a last dose)."""
        return all(p.is_finite for p in self.phases)

    def last_dose_time(self) -> float | None:
        """Time of the last dose of a finite regimen (None when there are no doses)."""
        doses = self.doses()
        return doses[-1].time if doses else None

    def doses(self, until: float | None = None) -> list[ScheduledDose]:
        """All doses before ``until`` (exclusive; required for an open-ended regimen), ordered by
        time, then by phase (the order phases were combined in)."""
        if until is None:
            if not self.is_finite:
                open_phase = next(p for p in self.phases if not p.is_finite)
                raise ValueError(
                    f"The regimen is open-ended ({open_phase.describe()}) and no horizon was given; "
                    "expected until=<time> (or observation times when compiling). Pass until=..., or "
                    "end the regimen with .stop(at=...) or Regimen.every(..., end=... / count=...)."
                )
            until = math.inf
        out = [ScheduledDose(float(t), p.dose, i) for i, p in enumerate(self.phases) for t in p.times(until)]
        out.sort(key=lambda d: (d.time, d.phase))
        _check_conflicts(out, self.phases)
        return out

    def dose_table(self, *, weight: float | None = None, until: float | None = None) -> pd.DataFrame:
        """The doses as a table: ``time``, ``kind`` (Bolus, SC, Infusion), ``state``, ``amount``,
        ``per_kg``, ``duration`` (NaN unless an infusion) and ``rate`` (0 unless an infusion).

        Without ``weight`` per-kg amounts and rates stay per kg; with ``weight`` (kg) they are the
        amounts given to that subject (scaled and capped at ``max_amount``)."""
        if weight is not None:
            weight = _check_number(weight, "dose_table weight", "Give the body weight in kg.")
        rows = []
        for d in self.doses(until):
            w = weight if d.dose.per_kg and weight is not None else None
            amount = d.dose.amount_for(w) if w is not None else d.dose.amount
            rows.append(
                {
                    "time": d.time,
                    "kind": type(d.dose).__name__,
                    "state": d.dose.state,
                    "amount": amount,
                    "per_kg": d.dose.per_kg,
                    "duration": getattr(d.dose, "duration", math.nan),
                    "rate": amount / d.dose.duration if d.dose.is_infusion else 0.0,
                }
            )
        columns = ["time", "kind", "state", "amount", "per_kg", "duration", "rate"]
        return pd.DataFrame(rows, columns=columns)

    def to_nonmem(
        self, model, observation_times, *, weights=None, n_subjects=None, ids=None, outputs=None,
        covariates=None, until=None,
    ) -> pd.DataFrame:
        """NONMEM-style table (ID, TIME, DV, AMT, EVID, CMT, MDV, RATE, and WT when ``weights``
        are given) that ``read_nonmem`` reads back into the same ``Events`` as ``to_events``.
        See ``popkpd._dosing.compile.to_nonmem``."""
        from .compile import to_nonmem

        return to_nonmem(
            self, model, observation_times, weights=weights, n_subjects=n_subjects, ids=ids,
            outputs=outputs, covariates=covariates, until=until,
        )

    def to_events(
        self, model, observation_times, *, weights=None, n_subjects=None, outputs=None, covariates=None,
        until=None,
    ):
        """``Events`` for ``n_subjects`` subjects (or one per weight) observed at
        ``observation_times``; doses resolved by state name with ``model.state_index``, per-kg
        doses scaled by ``weights`` (kg). See ``popkpd._dosing.compile.to_events``."""
        from .compile import to_events

        return to_events(
            self, model, observation_times, weights=weights, n_subjects=n_subjects, outputs=outputs,
            covariates=covariates, until=until,
        )


def _check_conflicts(doses: list[ScheduledDose], phases: tuple[Phase, ...]) -> None:
    seen: dict[tuple, ScheduledDose] = {}
    for d in doses:
        key = (d.time, d.dose.state, d.dose.is_infusion)
        if key in seen:
            first = seen[key]
            kind = "infusions" if d.dose.is_infusion else "instantaneous doses"
            raise ValueError(
                f"Regimen: received two {kind} into state {d.dose.state!r} at time {d.time:g}: from "
                f"'{phases[first.phase].describe()}' and from '{phases[d.phase].describe()}'; expected at "
                "most one per state and time. If both are meant, give one dose with the summed amount; "
                "otherwise end the first phase earlier (end=/count=/.stop) or start the second later."
            )
        seen[key] = d
