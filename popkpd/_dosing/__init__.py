"""Dosing: dose kinds, the ``Regimen`` builder, and its compilation to ``Events`` / NONMEM tables."""

from .compile import stack_events as stack_events, to_events as to_events, to_nonmem as to_nonmem
from .doses import AbstractDose as AbstractDose, Bolus as Bolus, Infusion as Infusion, SC as SC
from .regimen import Phase as Phase, Regimen as Regimen, ScheduledDose as ScheduledDose
