"""Dose kinds: what one administration puts into which state.

A dose has an ``amount`` in the amount unit of the structural model's parameters (e.g. mg, or mg/kg
with ``per_kg=True``) and a target ``state`` named as in the model's ``states``. Per-kg amounts are
multiplied by the subject's body weight (kg) when a regimen is compiled; ``max_amount`` caps the
resulting amount per administration (e.g. "1.5 mg/kg, at most 150 mg per dose").

* ``Bolus``: instantaneous input, by default into ``"central"`` (IV bolus). Any state can be named,
  e.g. an oral dose of a co-medication: ``Bolus(100, state="gsi_depot")``.
* ``SC``: subcutaneous injection, an instantaneous input into the absorption depot ``"depot"``;
  bioavailability and lag time are the structural model's (``f_bio``, ``tlag``), not the dose's.
* ``Infusion``: zero-order input over ``duration`` (model time unit), by default into
  ``"central"`` (IV). Compiles to NONMEM ``RATE = amount / duration``; as in NONMEM the actual
  duration is ``amount * F / RATE``, i.e. ``duration`` when the state's bioavailability is 1.

All dose kinds are immutable; they are validated when created.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


def _check_number(value, what: str, fix: str, *, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``), else a ValueError."""
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__")
    number = math.nan if bad else float(value)
    ok = math.isfinite(number) and (number >= 0 if allow_zero else number > 0)
    if not ok:
        expected = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"{what}: received {value!r}; expected {expected}. {fix}")
    return number


@dataclasses.dataclass(frozen=True, kw_only=True)
class AbstractDose:
    """Base of the dose kinds. Fields shared by all of them:

    amount      amount per administration (model amount unit; per kg of body weight if ``per_kg``)
    per_kg      True: ``amount`` is per kg, multiplied by the subject's weight (kg) when compiled
    max_amount  cap on the weight-scaled amount of a per-kg dose (model amount unit); None: no cap
    state       name of the receiving state of the structural model
    """

    amount: float = dataclasses.field(kw_only=False)
    per_kg: bool = False
    max_amount: float | None = None
    state: str = "central"

    def __post_init__(self):
        name = type(self).__name__
        amount = _check_number(
            self.amount,
            f"{name} amount",
            f"Give the amount per administration in the model's amount unit, e.g. {name}(1.5, per_kg=True) "
            "for 1.5 per kg, or leave the dose out.",
        )
        object.__setattr__(self, "amount", amount)
        if not isinstance(self.per_kg, bool):
            raise ValueError(
                f"{name}(per_kg=...): received {self.per_kg!r}; expected True (amount per kg body weight) "
                "or False (flat amount)."
            )
        if self.max_amount is not None:
            if not self.per_kg:
                raise ValueError(
                    f"{name}({amount:g}, max_amount={self.max_amount!r}): received a cap on a flat dose; "
                    "max_amount caps a per-kg dose after scaling by weight. Give per_kg=True, or drop "
                    "max_amount (a flat dose is its own amount)."
                )
            cap = _check_number(
                self.max_amount,
                f"{name} max_amount",
                "Give the largest amount per administration in the model's amount unit, or None.",
            )
            object.__setattr__(self, "max_amount", cap)
        if not isinstance(self.state, str) or not self.state:
            raise ValueError(
                f"{name}(state=...): received {self.state!r}; expected the name of a state of the "
                "structural model, e.g. 'central' or 'depot'."
            )

    @property
    def is_infusion(self) -> bool:
        return False

    def amount_for(self, weight):
        """Amount given to a subject of ``weight`` kg (a number or an array of weights; ignored
        for a flat dose)."""
        if not self.per_kg:
            return self.amount
        if weight is None:
            raise ValueError(f"{self.label()} is per kg but no weight was given; pass weight=... (kg).")
        amount = self.amount * weight
        return amount if self.max_amount is None else np.minimum(amount, self.max_amount)

    def rate_for(self, weight):
        """NONMEM RATE of the dose for ``weight`` kg: 0 for an instantaneous input."""
        return 0.0 * np.asarray(self.amount_for(weight))

    def label(self) -> str:
        """Short description for tables and messages, e.g. ``SC 1.5/kg into 'depot'``."""
        per = "/kg" if self.per_kg else ""
        cap = f" (max {self.max_amount:g})" if self.max_amount is not None else ""
        return f"{type(self).__name__} {self.amount:g}{per}{cap} into {self.state!r}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Bolus(AbstractDose):
    """Instantaneous input into ``state`` (default ``"central"``: IV bolus)."""

    state: str = "central"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SC(AbstractDose):
    """Subcutaneous injection: instantaneous input into the absorption depot (default ``"depot"``).
    Bioavailability (``f_bio``) and lag (``tlag``) belong to the structural model."""

    state: str = "depot"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Infusion(AbstractDose):
    """Zero-order input of ``amount`` over ``duration`` (model time unit) into ``state`` (default
    ``"central"``: IV infusion). RATE = amount / duration (weight-scaled for a per-kg dose)."""

    duration: float
    state: str = "central"

    def __post_init__(self):
        super().__post_init__()
        duration = _check_number(
            self.duration,
            "Infusion duration",
            "Give the infusion time in the model's time unit, e.g. Infusion(200, duration=4 / 24) for "
            "4 hours when the model time is in days; for an instantaneous dose use Bolus.",
        )
        object.__setattr__(self, "duration", duration)

    @property
    def is_infusion(self) -> bool:
        return True

    def rate_for(self, weight):
        return np.asarray(self.amount_for(weight)) / self.duration

    def label(self) -> str:
        return super().label().replace(" into", f" over {self.duration:g} into")
