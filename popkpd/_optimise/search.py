"""Grid search over candidate regimens: constraints, ranking, efficacy-safety Pareto front.

``RegimenGrid`` turns a small spec into ``Candidate``s (every combination of its lists):

==================  ========================================================================  =========
field               meaning                                                                   unit
==================  ========================================================================  =========
step_up             step-up sequences, each a list of doses, e.g. [[0.06, 0.3], [0.3], []]    dose unit
step_spacing        days between step-up doses (the first full dose follows the last one     days
                    after the same spacing)
maintenance         full (maintenance) dose                                                  dose unit
interval            days between full doses                                                  days
step_down           None, or (week, new interval): from week ``week`` dose every             week, days
                    ``new interval`` (``Regimen.switch_interval``; week w starts at day
                    7 (w - 1))
pause               None, or (week, weeks): a treatment-free interval of ``weeks`` weeks     weeks
                    starting at week ``week`` (``Regimen.pause``)
gsi                 None, or (start day, days, amount): an oral gamma-secretase inhibitor     day, days,
                    once a day into state ``gsi`` (models with layer L4)                      GSI unit
debulk              factor f on the baseline tumour and what follows it (n0, s0, m0, l0):    -
                    f < 1 is debulking before the first dose
==================  ========================================================================  =========

The dose unit is whatever ``dose`` (a function amount -> ``SC`` / ``Bolus`` / ``Infusion``)
takes, e.g. mg/kg for teclistamab (``dose = lambda x: SC(mg_to_nmol(x, 146.0), per_kg=True)``).

``search(...)`` evaluates the candidates (``evaluate``) and returns a ``SearchResult``: a table
ranked by the objective (posterior-predictive mean) among the candidates meeting every
constraint, followed by the infeasible ones with the constraints they violate. Constraints are
checked on the posterior-predictive mean of the endpoint, or on its 90 % interval bound with
``Constraint(..., bound="interval")`` (upper bound for ``<=``, lower for ``>=``). When no
candidate meets them, ``SearchResult.feasible`` is False and ``best`` is None: a violating
regimen is never returned as the answer. The Pareto front (efficacy = objective, safety =
``p_crs``, or ``cmax`` without an IL-6 output) is flagged among all candidates.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from .._dosing import Bolus, Regimen
from .evaluate import Candidate, Evaluation, EvaluationSettings, evaluate

MAX_CANDIDATES = 2000


@dataclasses.dataclass(frozen=True)
class RegimenGrid:
    """A grid of regimens (module docstring). Every field is a list of choices."""

    step_up: Sequence = ((),)
    step_spacing: Sequence = (3.0,)
    maintenance: Sequence = (1.0,)
    interval: Sequence = (7.0,)
    step_down: Sequence = (None,)
    pause: Sequence = (None,)
    gsi: Sequence = (None,)
    debulk: Sequence = (1.0,)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
                raise ValueError(
                    f"RegimenGrid({f.name}=...): received {value!r}; expected a non-empty list of choices, "
                    f"e.g. {f.name}=[{_EXAMPLES[f.name]}]."
                )
            object.__setattr__(self, f.name, tuple(value))
        for steps in self.step_up:
            if not isinstance(steps, Sequence) or isinstance(steps, str) or not all(_positive(x) for x in steps):
                raise ValueError(
                    f"RegimenGrid(step_up=...): received the sequence {steps!r}; expected a list of doses > 0 "
                    "(possibly empty: no step-up), e.g. step_up=[[0.06, 0.3], []]."
                )
        for name in ("step_spacing", "maintenance", "interval", "debulk"):
            for x in getattr(self, name):
                if not _positive(x):
                    raise ValueError(f"RegimenGrid({name}=...): received {x!r}; expected numbers > 0.")
        for choice in self.step_down:
            if choice is not None and not (len(choice) == 2 and _positive(choice[0]) and _positive(choice[1])):
                raise ValueError(
                    f"RegimenGrid(step_down=...): received {choice!r}; expected None or (week, new interval in "
                    "days), e.g. (25, 14) for every two weeks from week 25."
                )
        for choice in self.pause:
            if choice is not None and not (len(choice) == 2 and _positive(choice[0]) and _positive(choice[1])):
                raise ValueError(
                    f"RegimenGrid(pause=...): received {choice!r}; expected None or (start week, weeks off), "
                    "e.g. (9, 2)."
                )
        for choice in self.gsi:
            if choice is not None and not (
                len(choice) == 3 and _positive(choice[0], zero=True) and _positive(choice[1]) and _positive(choice[2])
            ):
                raise ValueError(
                    f"RegimenGrid(gsi=...): received {choice!r}; expected None or (start day, days, daily "
                    "amount), e.g. (0, 28, 100)."
                )

    @property
    def size(self) -> int:
        return math.prod(len(getattr(self, f.name)) for f in dataclasses.fields(self))

    def candidates(self, dose: Callable, *, horizon: float = math.inf) -> list[Candidate]:
        """All combinations as ``Candidate``s; ``dose(amount)`` makes the drug's dose."""
        if self.size > MAX_CANDIDATES:
            raise ValueError(
                f"RegimenGrid: {self.size} combinations; expected at most {MAX_CANDIDATES}. Shorten some lists "
                "(or evaluate the grid in parts)."
            )
        out = []
        fields = [f.name for f in dataclasses.fields(self)]
        for combo in itertools.product(*(getattr(self, f) for f in fields)):
            c = dict(zip(fields, combo))
            out.append(self._candidate(c, dose, horizon))
        return out

    @staticmethod
    def _candidate(c, dose, horizon) -> Candidate:
        steps, spacing = list(c["step_up"]), float(c["step_spacing"])
        first_full = len(steps) * spacing
        regimen = Regimen.every(float(c["interval"]), dose(float(c["maintenance"])), start=first_full)
        if steps:
            regimen = Regimen.step_up([(k * spacing, dose(float(x))) for k, x in enumerate(steps)]) + regimen
        if c["step_down"] is not None:
            week, new = c["step_down"]
            at = 7.0 * (float(week) - 1.0)
            if at < horizon:
                regimen = regimen.switch_interval(float(new), at=at)
        if c["pause"] is not None:
            week, weeks = c["pause"]
            start = 7.0 * (float(week) - 1.0)
            regimen = regimen.pause(start, start + 7.0 * float(weeks))
        if c["gsi"] is not None:
            start, days, amount = c["gsi"]
            regimen = regimen + Regimen.every(1.0, Bolus(float(amount), state="gsi"), start=float(start), count=int(days))
        f = float(c["debulk"])
        scale = {} if f == 1.0 else {"n0": f, "s0": f, "m0": f, "l0": f}
        settings = {
            "step_up": "/".join(f"{x:g}" for x in steps) or "none",
            "step_spacing": spacing if steps else math.nan,
            "maintenance": float(c["maintenance"]),
            "interval": float(c["interval"]),
            "step_down": "none" if c["step_down"] is None else f"Q{c['step_down'][1]:g}d from wk {c['step_down'][0]:g}",
            "pause": "none" if c["pause"] is None else f"wk {c['pause'][0]:g} for {c['pause'][1]:g} wk",
            "gsi": "none" if c["gsi"] is None else f"{c['gsi'][2]:g} daily d{c['gsi'][0]:g}-{c['gsi'][0] + c['gsi'][1] - 1:g}",
            "debulk": f,
        }
        name = " | ".join(
            [f"SU {settings['step_up']}" + (f" q{spacing:g}d" if steps else ""),
             f"{settings['maintenance']:g} q{settings['interval']:g}d"]
            + [f"{k} {settings[k]}" for k in ("step_down", "pause", "gsi") if settings[k] != "none"]
            + ([f"debulk x{f:g}"] if f != 1.0 else [])
        )
        return Candidate(name, regimen, scale, settings, priming_doses=len(steps) + 1)


_EXAMPLES = dict(step_up="[0.06, 0.3], []", step_spacing="2, 3", maintenance="0.72, 1.5", interval="7, 14",
                 step_down="None, (25, 14)", pause="None, (9, 2)", gsi="None, (0, 28, 100)", debulk="1.0, 0.5")


def _positive(x, zero=False) -> bool:
    ok = not isinstance(x, bool) and isinstance(x, (int, float, np.number)) and math.isfinite(x)
    return ok and (x >= 0 if zero else x > 0)


@dataclasses.dataclass(frozen=True)
class Constraint:
    """``endpoint <op> value`` with op ``"<="`` or ``">="``, checked on the posterior-predictive
    mean (``bound="mean"``) or on the 90 % interval bound (``bound="interval"``). Also parsed from
    text: ``Constraint.parse("p_crs <= 0.3")``."""

    endpoint: str
    op: str
    value: float
    bound: str = "mean"

    def __post_init__(self):
        if self.op not in ("<=", ">="):
            raise ValueError(f"Constraint({self.endpoint!r}, op={self.op!r}): expected '<=' or '>='.")
        if self.bound not in ("mean", "interval"):
            raise ValueError(f"Constraint(bound={self.bound!r}): expected 'mean' or 'interval'.")
        if not _positive(abs(self.value), zero=True):
            raise ValueError(f"Constraint({self.endpoint!r}): received value {self.value!r}; expected a finite number.")

    @classmethod
    def parse(cls, text: str) -> Constraint:
        m = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*([-+0-9.eE]+)\s*(\(interval\))?\s*", str(text))
        if not m:
            raise ValueError(
                f"Constraint: received {text!r}; expected '<endpoint> <= <number>' or '<endpoint> >= <number>', "
                "optionally followed by '(interval)', e.g. 'p_crs <= 0.3' or 'visits_per_week <= 1'."
            )
        return cls(m.group(1), m.group(2), float(m.group(3)), "interval" if m.group(4) else "mean")

    def column(self) -> str:
        if self.bound == "mean" or self.endpoint == "visits_per_week":
            return self.endpoint
        return f"{self.endpoint}_q95" if self.op == "<=" else f"{self.endpoint}_q05"

    def holds(self, table: pd.DataFrame) -> np.ndarray:
        x = table[self.column()].to_numpy(dtype=float)
        return x <= self.value if self.op == "<=" else x >= self.value

    def describe(self) -> str:
        return f"{self.endpoint} {self.op} {self.value:g}" + (" (90% bound)" if self.bound == "interval" else "")


@dataclasses.dataclass
class SearchResult:
    """``table``: one row per candidate, ranked (feasible first by objective, then infeasible),
    with ``feasible``, ``violates`` and ``pareto`` columns; ``best``: the top feasible row's
    candidate name (None when none is feasible); ``message``: a plain-language outcome."""

    table: pd.DataFrame
    evaluation: Evaluation
    objective: str
    maximise: bool
    constraints: list
    best: str | None
    message: str

    @property
    def feasible(self) -> bool:
        return self.best is not None

    def pareto_front(self) -> pd.DataFrame:
        return self.table[self.table["pareto"]]


def pareto_mask(efficacy: np.ndarray, risk: np.ndarray) -> np.ndarray:
    """True for candidates no other candidate dominates (efficacy >= and risk <=, one strictly)."""
    efficacy, risk = np.asarray(efficacy, float), np.asarray(risk, float)
    n = len(efficacy)
    mask = np.ones(n, bool)
    for i in range(n):
        dominated = (efficacy >= efficacy[i]) & (risk <= risk[i]) & ((efficacy > efficacy[i]) | (risk < risk[i]))
        mask[i] = not dominated.any()
    return mask


def rank(evaluation: Evaluation, objective: str, constraints=(), *, maximise: bool = True) -> SearchResult:
    """Rank the candidates of ``evaluation`` (see the module docstring)."""
    table = evaluation.summary()
    roles = [c.role for c in evaluation.candidates]
    table = table[[r == "candidate" for r in roles]].reset_index(drop=True)
    constraints = [c if isinstance(c, Constraint) else Constraint.parse(c) for c in constraints]
    known = [c for c in table.columns]
    for name in [objective] + [c.endpoint for c in constraints]:
        if name not in known:
            endpoints = list(evaluation.values) + ["visits_per_week"]
            raise ValueError(
                f"search: received the endpoint {name!r}; expected one of {endpoints} (the endpoints this model "
                "supports). Check the spelling, or use a model with the outputs the endpoint needs."
            )
    violates = [[] for _ in range(len(table))]
    for c in constraints:
        for i, ok in enumerate(c.holds(table)):
            if not ok:
                violates[i].append(c.describe())
    table["feasible"] = [not v for v in violates]
    table["violates"] = ["; ".join(v) for v in violates]
    risk = "p_crs" if "p_crs" in table else "cmax"
    table["pareto"] = pareto_mask(table[objective], table[risk]) if risk in table else False
    sign = -1.0 if maximise else 1.0
    order = np.lexsort((sign * table[objective].to_numpy(dtype=float), ~table["feasible"].to_numpy()))
    table = table.iloc[order].reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    direction = "highest" if maximise else "lowest"
    if table["feasible"].any():
        best = str(table.loc[0, "candidate"])
        message = (f"{int(table['feasible'].sum())} of {len(table)} candidates meet "
                   f"{', '.join(c.describe() for c in constraints) or 'no constraints'}; "
                   f"{direction} {objective}: {best} ({table.loc[0, objective]:.3g}, 90% "
                   f"{table.loc[0, objective + '_q05']:.3g}-{table.loc[0, objective + '_q95']:.3g})"
                   if objective + "_q05" in table else
                   f"{int(table['feasible'].sum())} of {len(table)} candidates are feasible; best: {best}")
    else:
        best = None
        closest = table.loc[0, "candidate"]
        message = (f"INFEASIBLE: none of the {len(table)} candidates meets "
                   f"{', '.join(c.describe() for c in constraints)}. Widen the grid or relax a constraint; the "
                   f"{direction}-{objective} candidate is {closest} (violates {table.loc[0, 'violates']}).")
    return SearchResult(table, evaluation, objective, maximise, constraints, best, message)


def search(model, draws, candidates, objective: str = "p_vgpr", constraints=(), *, maximise: bool = True,
           settings: EvaluationSettings | None = None) -> SearchResult:
    """Evaluate ``candidates`` (a list of ``Candidate``) on ``draws`` and rank them."""
    evaluation = evaluate(model, draws, candidates, settings)
    return rank(evaluation, objective, constraints, maximise=maximise)
