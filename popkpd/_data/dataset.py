"""``read_nonmem``: a NONMEM-style table -> ``Dataset`` (host metadata + padded ``Events``).

Conventions are those of ``_data/validate.py`` (column roles, defaults, errors) and of
``_events.py`` (the padded arrays). Nothing is dropped or reordered: every row of the table is a
covariate record of its subject; EVID 0/MDV 0 rows are observations; EVID 1/3/4 rows are dose
records (ADDL expanded); EVID 2 rows and EVID 0/MDV 1 rows only carry covariate values.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .._events import Events, pad_events
from .._structural.base import AbstractStructuralModel
from .validate import Checked, DataError, check, read_table

__all__ = ["Dataset", "DataError", "read_nonmem"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A validated NONMEM-style dataset for one structural model.

    Attributes:
        events: the padded ``Events`` (device arrays) consumed by ``simulate`` and the likelihood.
            Subject ``i`` of ``events`` is ``ids[i]``.
        ids: original subject IDs, in file order.
        covariate_names: names of the ``K`` covariates of ``events.cov_value[..., k]``.
        output_names: the structural model's outputs; ``events.obs_output`` indexes them.
        frame: the input table with its original columns, rows and order (index reset to
            0..N-1), the NONMEM and covariate columns converted to float (missing -> NaN).
        hash: sha256 (hex) of a canonical CSV serialisation of ``frame``, for fit metadata
            (computed on first access).
        source: the CSV path, or ``"DataFrame"``.
    """

    events: Events = field(repr=False)
    ids: tuple
    covariate_names: tuple[str, ...]
    output_names: tuple[str, ...]
    frame: pd.DataFrame = field(repr=False)
    source: str
    _obs_row: np.ndarray = field(repr=False)

    @functools.cached_property
    def hash(self) -> str:
        return hashlib.sha256(self.frame.to_csv(index=False, lineterminator="\n").encode()).hexdigest()

    @property
    def n_subjects(self) -> int:
        return len(self.ids)

    @property
    def n_observations(self) -> int:
        return int((self._obs_row >= 0).sum())

    def source_row(self, subject: int, observation: int) -> int:
        """0-based row of ``frame`` of observation ``observation`` of subject index ``subject``."""
        row = int(self._obs_row[subject, observation])
        if row < 0:
            raise IndexError(f"Subject index {subject} (ID {self.ids[subject]}) has no observation "
                             f"{observation}: it has {int((self._obs_row[subject] >= 0).sum())}.")
        return row

    def observation_frame(self) -> pd.DataFrame:
        """One row per observation, in ``events`` order: subject index, ID, TIME, DV (the LLOQ for a
        BLQ=1 sample), output name, cens, and the source ``row`` of ``frame``."""
        ev = self.events
        mask = np.asarray(ev.obs_mask)
        subject, _ = np.nonzero(mask)
        return pd.DataFrame({
            "subject": subject,
            "ID": [self.ids[s] for s in subject],
            "TIME": np.asarray(ev.obs_time)[mask],
            "DV": np.asarray(ev.obs_dv)[mask],
            "output": [self.output_names[k] for k in np.asarray(ev.obs_output)[mask]],
            "cens": np.asarray(ev.obs_cens)[mask],
            "row": self._obs_row[mask],
        })

    def baseline_covariates(self) -> pd.DataFrame:
        """One row per subject (file order): ``ID`` and each covariate's first value (after the
        gap filling of ``read_nonmem``)."""
        first = np.asarray(self.events.cov_value)[:, 0, :]
        table = pd.DataFrame(first, columns=list(self.covariate_names))
        table.insert(0, "ID", list(self.ids))
        return table


def read_nonmem(source, model: AbstractStructuralModel, *, covariates=(), dvid_outputs=None) -> Dataset:
    """Read and validate a NONMEM-style table for ``model``.

    Args:
        source: a CSV path (``.`` and empty cells are missing) or a pandas DataFrame.
        model: the structural model; it decides the valid CMT numbers (``CMT k`` = ``states[k-1]``),
            the default dose state (``states[0]``, the depot when there is one), the outputs, and
            whether SS=1 doses are allowed (``model.linear``).
        covariates: names of columns to carry as (time-varying) covariates, ``events.cov_value``.
            Gaps inside a subject are filled by last observation carried forward (leading gaps by
            the first value) with a ``UserWarning``; a subject without any value is an error.
        dvid_outputs: mapping DVID value -> model output name, e.g. ``{1: "conc"}``. Required
            when the observations have more than one DVID; without a DVID column every
            observation is of output 0. To fit a subset of observation types, filter the table
            first, e.g. ``df[df.DVID != 2]``.

    Returns:
        a ``Dataset``. Units are those of the table (TIME, AMT, DV as given).

    Raises:
        DataError: (a ``ValueError``) for any problem with the table, naming the row (0-based
            position in the table), the ID and the column. See ``popkpd/_data/validate.py``.
    """
    if not isinstance(model, AbstractStructuralModel):
        raise TypeError(f"read_nonmem: model must be a structural model (AbstractStructuralModel), received "
                        f"{type(model).__name__}. Pass e.g. popkpd.OneCompartment().")
    frame, name = read_table(source)
    checked = check(frame, name, model, covariates, dvid_outputs)
    events = _build_events(checked)
    return Dataset(
        events=events,
        ids=tuple(_plain(i) for i in checked.ids),
        covariate_names=checked.covariate_names,
        output_names=tuple(model.outputs),
        frame=checked.frame,
        source=name,
        _obs_row=np.asarray(events.obs_row).copy(),
    )


def _plain(value):
    """numpy scalars -> Python scalars; integral floats -> int (IDs 1.0 -> 1)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def expand_doses(c: Checked) -> dict[str, np.ndarray]:
    """Dose records (EVID 1, 3, 4) with ADDL/II expanded, sorted by (subject, time, row).

    Additional doses copy AMT, CMT and RATE of their record; they are neither resets nor
    steady-state doses (the steady state, if any, is the record's own dose). Each keeps the row of
    the record it came from. As in NONMEM, a later reset (EVID 3/4) or SS=1 dose record of the
    subject cancels the additional doses still pending: those at or after its time are not given.
    """
    rows = np.flatnonzero(np.isin(c.evid, [1, 3, 4]))
    copies = np.where(c.evid[rows] == 3, 0, c.addl[rows]) + 1
    rep = np.repeat(rows, copies)
    k = np.arange(len(rep)) - np.repeat(np.cumsum(copies) - copies, copies)  # 0 = the record itself
    time = c.time[rep] + k * c.ii[rep]
    cancellers = np.flatnonzero(np.isin(c.evid, [3, 4]) | ((c.evid == 1) & (c.ss == 1)))
    nxt = np.searchsorted(cancellers, rows, side="right")  # first canceller after each record
    has = nxt < len(cancellers)
    nxt_row = cancellers[np.minimum(nxt, max(len(cancellers) - 1, 0))] if len(cancellers) else rows
    cancel_at = np.where(has & (c.subject[nxt_row] == c.subject[rows]), c.time[nxt_row], np.inf)
    keep = (k == 0) | (time < np.repeat(cancel_at, copies))
    rep, k, time = rep[keep], k[keep], time[keep]
    first = k == 0
    order = np.lexsort((k, rep, time, c.subject[rep]))
    ss = np.where(first, c.ss[rep], 0)
    doses = {
        "subject": c.subject[rep],
        "time": time,
        "amt": c.amt[rep],
        "cmt": c.state[rep],
        "rate": c.rate[rep],
        "ss": ss,
        "ii": np.where(ss == 1, c.ii[rep], 0.0),
        "reset": first & np.isin(c.evid[rep], [3, 4]),
        "row": rep,
    }
    return {key: value[order] for key, value in doses.items()}


def _build_events(c: Checked) -> Events:
    n_subjects = len(c.ids)
    doses = expand_doses(c)
    dose_bounds = np.searchsorted(doses["subject"], np.arange(n_subjects + 1))
    obs_rows = np.flatnonzero(c.is_obs)
    obs_bounds = np.searchsorted(c.subject[obs_rows], np.arange(n_subjects + 1))
    per_dose, per_obs, per_cov = [], [], []
    for s in range(n_subjects):
        d = slice(dose_bounds[s], dose_bounds[s + 1])
        per_dose.append({key: doses[key][d] for key in ("time", "amt", "cmt", "rate", "ss", "ii", "reset", "row")})
        r = obs_rows[obs_bounds[s]:obs_bounds[s + 1]]
        per_obs.append({"time": c.time[r], "dv": c.dv[r], "output": c.output[r], "cens": c.cens[r],
                        "limit": c.limit[r], "row": r})
        a, b = c.starts[s], c.starts[s + 1]
        per_cov.append((c.time[a:b], c.cov[a:b]))
    return pad_events(per_dose, per_obs, per_cov, n_covariates=c.cov.shape[1])
