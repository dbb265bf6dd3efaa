"""Read and validate a NONMEM-style table. Every input error of the data layer is raised here.

Rows are named by their **0-based position** in the table (the DataFrame position after
``reset_index``; for a CSV file, data row ``r`` is on line ``r + 2`` when the file has one header
line and no blank lines). Each message says what was received, what was expected and how to fix
it, and names the row, the subject ``ID`` and the column.

Column roles (names matched case-insensitively; ``.`` or an empty cell means missing):

==========  ===========================================================================
ID          subject identifier; a subject's records must be contiguous (required)
TIME        time of the record, >= 0, non-decreasing within a subject (required)
DV          observed value (required; may be missing on non-observation records)
AMT         dose amount (required; missing = 0)
EVID        0 observation, 1 dose, 2 other (covariate change), 3 reset, 4 reset + dose.
            Absent or missing: NM-TRAN's rule, 1 if AMT != 0 or SS != 0, else 2 if MDV = 1,
            else 0
MDV         1 = DV is not an observation. Absent or missing: 0 on EVID 0, else 1
CMT         NONMEM compartment k = the structural model's ``states[k-1]``; 0 or missing = the
            default (doses: the first state, the depot when the model has one)
RATE        0 bolus, > 0 infusion rate, -1 modelled rate, -2 modelled duration
ADDL, II    additional doses and their interval (expanded into separate dose records; as in
            NONMEM, a later reset or SS=1 dose cancels those still pending)
SS          1 steady-state dose (linear models only); 2 and 3 are not supported
DVID        observation type; mapped to model outputs with ``dvid_outputs``
CENS/LIMIT  1 left-censored (DV holds the LLOQ), -1 right-censored (DV holds the ULOQ),
            0 quantified; LIMIT the other bound of a censored record (read on censored rows)
BLQ/LLOQ    alternative to CENS: BLQ = 1 means left-censored at the LLOQ column's value
==========  ===========================================================================
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._structural.base import AbstractStructuralModel

REQUIRED = ("ID", "TIME", "DV", "AMT")
OPTIONAL = ("EVID", "MDV", "CMT", "RATE", "ADDL", "II", "SS", "DVID", "CENS", "LIMIT", "BLQ", "LLOQ")
MAX_ADDL = 100_000  # additional doses per record; more would exhaust memory when expanded


class DataError(ValueError):
    """A NONMEM-style table that popkpd cannot read. The message names the row (0-based
    position in the table), the subject ID and the column, and says how to fix it."""


def _fmt(value) -> str:
    """A cell value for a message: integers without '.0', missing as 'missing'."""
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "missing"
        if float(value).is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{float(value):g}"
    if isinstance(value, (np.integer,)):
        return str(int(value))
    return str(value)


@dataclass
class Checked:
    """The validated table as host arrays, one entry per row (length N), in file order.

    ``state`` is the 0-based receiving/observed state index (default applied); ``output`` the
    model output index of observation rows; ``cens``/``limit``/``dv`` already resolve BLQ/LLOQ.
    ``subject`` is the 0-based subject index of each row and ``starts`` the first row of each
    subject plus N at the end.
    """

    frame: pd.DataFrame
    source: str
    ids: list
    subject: np.ndarray
    starts: np.ndarray
    time: np.ndarray
    dv: np.ndarray
    amt: np.ndarray
    evid: np.ndarray
    is_obs: np.ndarray
    state: np.ndarray
    rate: np.ndarray
    addl: np.ndarray
    ii: np.ndarray
    ss: np.ndarray
    output: np.ndarray
    cens: np.ndarray
    limit: np.ndarray
    covariate_names: tuple
    cov: np.ndarray  # [N, K], gaps filled


class _Context:
    """Knows the table and the subject IDs, so that every message names row and ID alike."""

    def __init__(self, frame: pd.DataFrame, id_column):
        self.frame = frame
        self.id_column = id_column

    def where(self, row: int) -> str:
        if self.id_column is None:
            return f"row {row}"
        return f"row {row} (ID {_fmt(self.frame[self.id_column].iloc[row])})"

    def fail(self, bad, column: str, received: str, expected: str, fix: str):
        """Raise a DataError for the first row where ``bad`` is True (a boolean array)."""
        rows = np.flatnonzero(bad)
        if rows.size == 0:
            return
        row = int(rows[0])
        more = f" ({rows.size} rows have this problem; the first is shown)" if rows.size > 1 else ""
        text = {key: (f(row) if callable(f) else f) for key, f in (("r", received), ("x", fix))}
        raise DataError(f"{self.where(row)}, column {column}: {text['r']}; expected {expected}.{more} {text['x']}")


def read_table(source) -> tuple[pd.DataFrame, str]:
    """A CSV path or a DataFrame -> (copy with index 0..N-1, description of the source)."""
    if isinstance(source, pd.DataFrame):
        frame, name = source.copy(), "DataFrame"
    elif isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        try:
            frame = pd.read_csv(name, na_values=["."], skipinitialspace=True)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise DataError(f"Could not parse {name} as a CSV table: {err}. Check the delimiter "
                            f"(comma) and that the first line holds the column names.") from err
    else:
        raise TypeError(f"read_nonmem: source must be a CSV path or a pandas DataFrame, received "
                        f"{type(source).__name__}. Pass e.g. read_nonmem('data.csv', model).")
    if len(frame) == 0:
        raise DataError(f"The table from {name} has no rows; expected at least one record per subject.")
    return frame.reset_index(drop=True), name


def _resolve_columns(frame: pd.DataFrame) -> dict[str, object]:
    """Map each reserved column role present (upper case) to the frame's column label."""
    duplicated = frame.columns[frame.columns.duplicated()]
    if len(duplicated):
        raise DataError(f"The table has duplicated column names {list(dict.fromkeys(duplicated))}; "
                        f"expected unique names. Rename or drop the copies.")
    roles: dict[str, object] = {}
    for label in frame.columns:
        key = str(label).strip().upper()
        if key in REQUIRED or key in OPTIONAL:
            if key in roles:
                raise DataError(f"Columns {roles[key]!r} and {label!r} both name the {key} column "
                                f"(names are case-insensitive); expected one. Rename or drop one.")
            roles[key] = label
    missing = [k for k in REQUIRED if k not in roles]
    if missing:
        raise DataError(
            f"Required column(s) {missing} not found; received columns {[str(c) for c in frame.columns]}; "
            f"expected at least {list(REQUIRED)} (case-insensitive). Rename your columns, e.g. "
            f"df.rename(columns={{'CONC': 'DV'}}), or add AMT=0 / DV='.' where a column does not apply."
        )
    return roles


def _to_float(frame: pd.DataFrame, label, name: str, ctx: _Context) -> np.ndarray:
    """Convert a column to float64 with NaN for missing ('.', empty, NaN); text is an error."""
    series = frame[label]
    if pd.api.types.is_bool_dtype(series.dtype):
        values = series.to_numpy(dtype=float, na_value=np.nan)
    elif pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_complex_dtype(series.dtype):
        values = series.to_numpy(dtype=float, na_value=np.nan)
    else:
        text = series.astype("string").str.strip()
        missing = (text.isna() | text.isin([".", ""])).to_numpy(dtype=bool)
        numbers = pd.to_numeric(text.mask(missing), errors="coerce")
        values = numbers.to_numpy(dtype=float, na_value=np.nan)
        ctx.fail(
            ~missing & np.isnan(values), name,
            lambda r: f"received the text {series.iloc[r]!r}",
            "a number ('.' or an empty cell for a missing value)",
            f"Correct or remove the non-numeric entries of column {label!r}.",
        )
    ctx.fail(np.isinf(values), name, lambda r: f"received {values[r]}", "a finite number",
             f"Replace the infinite values in column {label!r}.")
    return values


def _subjects(frame: pd.DataFrame, label, ctx: _Context):
    """Subject index per row, first row of each subject, and the original IDs in file order."""
    ids = frame[label]
    missing = np.array(ids.isna(), dtype=bool)
    if not pd.api.types.is_numeric_dtype(ids.dtype):
        missing |= ids.astype("string").str.strip().isin([".", ""]).to_numpy(dtype=bool)
    ctx.fail(missing, "ID", "received a missing ID", "an ID on every record", "Fill in the ID of each record.")
    codes, uniques = pd.factorize(ids, sort=False)
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    if len(starts) != len(uniques):
        block_codes = codes[starts]
        seen: dict[int, int] = {}
        for b, c in enumerate(block_codes):
            if c in seen:
                first, row = int(starts[seen[c]]), int(starts[b])
                end = int(starts[seen[c] + 1]) - 1
                raise DataError(
                    f"{ctx.where(row)}, column ID: ID {_fmt(uniques[c])} appears in separate blocks "
                    f"(rows {first}-{end}, then again from row {row}); expected each subject's records "
                    f"to be contiguous. Sort the table, e.g. df.sort_values(['ID', 'TIME'], kind='stable'), "
                    f"or give the second block its own ID if it is another subject."
                )
            seen[c] = b
    return codes.astype(np.int64), np.r_[starts, len(frame)], list(uniques)


def _integer(values, allowed=None) -> np.ndarray:
    """Rows whose value is not an integer (or not in ``allowed``)."""
    bad = ~np.isfinite(values) | (values != np.round(values))
    if allowed is not None:
        bad |= ~np.isin(values, allowed)
    return bad


def check(frame: pd.DataFrame, source: str, model: AbstractStructuralModel, covariates, dvid_outputs) -> Checked:
    """Validate ``frame`` against ``model``; return the resolved per-row arrays. See module docstring."""
    roles = _resolve_columns(frame)
    ctx = _Context(frame, roles["ID"])
    n = len(frame)
    n_states = len(model.states)

    cov_labels = _covariate_labels(frame, roles, covariates)
    data = {role: _to_float(frame, label, role, ctx) for role, label in roles.items() if role != "ID"}
    cov_raw = [_to_float(frame, label, str(label), ctx) for label in cov_labels]
    subject, starts, ids = _subjects(frame, roles["ID"], ctx)
    numeric = {roles[role]: values for role, values in data.items()} | dict(zip(cov_labels, cov_raw))
    frame = pd.DataFrame({c: numeric.get(c, frame[c]) for c in frame.columns})  # '.' -> NaN, text -> float

    def col(role, default):
        values = data.get(role)
        if values is None:
            return np.full(n, float(default))
        return np.where(np.isnan(values), default, values)

    fail = ctx.fail
    time = data["TIME"]
    fail(np.isnan(time), "TIME", "received a missing TIME", "a time on every record",
         "Fill in TIME (in the data's time unit, e.g. hours after the first dose).")
    fail(time < 0, "TIME", lambda r: f"received TIME={_fmt(time[r])}", "TIME >= 0",
         "Shift the times of the subject so that they start at 0 or later.")

    amt, rate, ss = col("AMT", 0.0), col("RATE", 0.0), col("SS", 0.0)
    addl, ii = col("ADDL", 0.0), col("II", 0.0)
    mdv_given = data.get("MDV", np.full(n, np.nan))
    evid = data.get("EVID", np.full(n, np.nan)).copy()
    infer = np.isnan(evid)
    evid[infer] = np.where((amt != 0) | (ss != 0), 1.0, np.where(mdv_given == 1, 2.0, 0.0))[infer]
    fail(_integer(evid, [0, 1, 2, 3, 4]), "EVID", lambda r: f"received EVID={_fmt(evid[r])}",
         "EVID in {0 observation, 1 dose, 2 other, 3 reset, 4 reset and dose}",
         "Tool-specific codes (e.g. rxode2 EVID 5-7) are not supported; rewrite those records.")
    mdv = np.where(np.isnan(mdv_given), np.where(evid == 0, 0.0, 1.0), mdv_given)
    fail(np.isin(mdv, [100, 101]), "MDV", lambda r: f"received MDV={_fmt(mdv[r])}", "MDV 0 or 1",
         "MDV 100/101 (ignore during estimation) is not supported; use MDV=1 or remove the record.")
    fail(_integer(mdv, [0, 1]), "MDV", lambda r: f"received MDV={_fmt(mdv[r])}", "MDV 0 or 1",
         "Set MDV=0 for an observation and MDV=1 otherwise.")
    fail((evid != 0) & (mdv == 0), "MDV", lambda r: f"received MDV=0 on an EVID={_fmt(evid[r])} record",
         "MDV=1 on every EVID 1-4 record (only EVID 0 records carry observations)",
         "Set MDV=1, and put a sample taken at the time of a dose on its own EVID=0 row.")

    same_subject = np.r_[False, subject[1:] == subject[:-1]]
    back = np.r_[False, time[1:] < time[:-1]] & same_subject
    reset_back = back & np.isin(evid, [3, 4])
    fail(reset_back, "TIME",
         lambda r: f"received TIME={_fmt(time[r])} on a reset record (EVID={_fmt(evid[r])}) after "
                   f"TIME={_fmt(time[r - 1])}",
         "TIME non-decreasing within a subject, also across a reset: popkpd does not support a "
         "reset (EVID 3/4) that restarts time",
         "Keep time running across occasions, e.g. add an offset to the times from the reset on.")
    fail(back, "TIME", lambda r: f"received TIME={_fmt(time[r])} after TIME={_fmt(time[r - 1])} on row {r - 1}",
         "TIME non-decreasing within a subject (records are processed in file order)",
         "Sort the subject's records by time, e.g. df.sort_values(['ID', 'TIME'], kind='stable').")

    is_dose = np.isin(evid, [1, 4])
    is_obs = (evid == 0) & (mdv == 0)
    kind = {0: "an observation (EVID=0)", 2: "an other-type (EVID=2)", 3: "a reset (EVID=3)"}
    not_dose = ~is_dose
    fail(not_dose & (amt > 0) & (evid == 3), "AMT", lambda r: f"received AMT={_fmt(amt[r])} on a reset (EVID=3) record",
         "AMT=0 on a pure reset", "Use EVID=4 for a reset followed by this dose.")
    fail(not_dose & (amt != 0), "AMT", lambda r: f"received AMT={_fmt(amt[r])} on {kind[int(evid[r])]} record",
         "AMT=0 (or '.') on records that are not doses",
         "If this is a dose, set EVID=1 and MDV=1; a sample taken at the time of a dose needs its own row.")
    for role, values in (("RATE", rate), ("ADDL", addl), ("II", ii), ("SS", ss)):
        fail(not_dose & (values != 0), role,
             lambda r, v=values, c=role: f"received {c}={_fmt(v[r])} on {kind[int(evid[r])]} record",
             f"{role}=0 (or '.') on records that are not doses (EVID 1 or 4)",
             f"Set {role}=0 here, or EVID=1 if the record is a dose.")
    cmt_given = data.get("CMT", np.zeros(n))
    cmt = np.where(np.isnan(cmt_given), 0.0, cmt_given)
    fail((evid == 2) & (cmt != 0), "CMT", lambda r: f"received CMT={_fmt(cmt[r])} on an EVID=2 record",
         "CMT=0 on EVID=2 records: turning compartments on/off is not supported",
         "Set CMT=0 (the record then only carries covariate values) or remove the record.")

    # dose records
    fail(is_dose & _integer(ss, [0, 1, 2, 3]), "SS", lambda r: f"received SS={_fmt(ss[r])}", "SS in {0, 1}",
         "Set SS=0 (transient dose) or SS=1 (steady state).")
    fail(is_dose & np.isin(ss, [2, 3]), "SS", lambda r: f"received SS={_fmt(ss[r])}",
         "SS 0 or 1: SS=2 (superposition) and SS=3 are not supported",
         "Write the dose history explicitly (ADDL/II) or use SS=1.")
    if not model.linear:
        fail(is_dose & (ss == 1), "SS", "received SS=1",
             f"no steady-state doses: SS=1 is not supported for nonlinear models ({type(model).__name__} "
             f"has linear=False)", "Give the dose history explicitly (e.g. ADDL/II) so that steady state builds up.")
    fail(is_dose & ~np.isin(rate, [-1, -2]) & (rate < 0), "RATE", lambda r: f"received RATE={_fmt(rate[r])}",
         "RATE 0 (bolus), > 0 (infusion rate), -1 (modelled rate) or -2 (modelled duration)",
         "Correct the rate.")
    fail(is_dose & (amt < 0), "AMT", lambda r: f"received AMT={_fmt(amt[r])} on a dose record", "AMT > 0",
         "Doses are positive amounts; remove the record or correct AMT.")
    ss_infusion = is_dose & (ss == 1) & (amt == 0) & (ii == 0) & ((rate > 0) | (rate == -1))
    fail(is_dose & (amt == 0) & ~ss_infusion, "AMT",
         lambda r: f"received AMT=0 on a dose record (EVID={_fmt(evid[r])})",
         "AMT > 0 on dose records (AMT=0 only on a steady-state constant infusion: SS=1, II=0, RATE > 0 or -1)",
         "Set AMT to the dose, or EVID=0 (observation) / EVID=2 (covariate record) if this is not a dose.")
    fail(is_dose & (ss == 1) & (amt > 0) & (ii <= 0), "II", lambda r: f"received II={_fmt(ii[r])} on an SS=1 dose",
         "II > 0 on a steady-state dose (the interval of the repeated doses)",
         "Set II to the dosing interval, or SS=0.")
    fail(ss_infusion & (addl != 0), "ADDL", lambda r: f"received ADDL={_fmt(addl[r])} on a steady-state infusion",
         "ADDL=0 on a steady-state constant infusion (SS=1, AMT=0)", "Set ADDL=0.")
    fail(is_dose & (addl < 0), "ADDL", lambda r: f"received ADDL={_fmt(addl[r])}",
         "ADDL >= 0: the negative ADDL of NONMEM 7.5's empirical steady state is not supported",
         "Give the number of additional doses, or use SS=1 for a linear model.")
    fail(is_dose & _integer(addl), "ADDL", lambda r: f"received ADDL={_fmt(addl[r])}", "a whole number of additional doses",
         "Correct ADDL.")
    fail(is_dose & (addl > MAX_ADDL), "ADDL", lambda r: f"received ADDL={_fmt(addl[r])}",
         f"at most {MAX_ADDL} additional doses per record", "Shorten the regimen or use SS=1 for a linear model.")
    fail(is_dose & (addl > 0) & (ii <= 0), "II", lambda r: f"received ADDL={_fmt(addl[r])} with II={_fmt(ii[r])}",
         "II > 0 when ADDL > 0 (the time between the additional doses)", "Set II to the dosing interval.")
    fail(is_dose & (ii < 0), "II", lambda r: f"received II={_fmt(ii[r])}", "II >= 0", "Correct II.")
    fail(is_dose & (ss == 0) & (addl == 0) & (ii > 0), "II", lambda r: f"received II={_fmt(ii[r])} with ADDL=0",
         "II > 0 only with ADDL > 0 or SS=1 (NONMEM: ADDL > 0 if and only if II > 0)",
         "Set II=0, or ADDL to the number of additional doses.")

    # observations: DVID -> output, BLQ, DV
    output = _outputs(data, is_obs, model, dvid_outputs, ctx)
    cmt_states = ", ".join(f"CMT {k + 1} = {s}" for k, s in enumerate(model.states))
    check_cmt = evid != 3  # NONMEM ignores CMT on a pure reset
    fail(check_cmt & _integer(cmt), "CMT", lambda r: f"received CMT={_fmt(cmt[r])}", "a whole compartment number",
         "Correct CMT.")
    fail(check_cmt & ((cmt < 0) | (cmt > n_states)), "CMT",
         lambda r: f"received CMT={_fmt(cmt[r])} on an EVID={_fmt(evid[r])} record",
         f"CMT 0 (default) or one of {type(model).__name__}'s compartments ({cmt_states}); negative CMT "
         f"(compartment off) is not supported",
         "Renumber CMT for this structural model, or drop records of quantities it does not model.")
    state = np.where(check_cmt & (cmt > 0), cmt - 1, 0).astype(np.int64)

    dv = data["DV"].copy()
    cens, limit = _censoring(data, is_obs, dv, ctx)
    fail(is_obs & np.isnan(dv), "DV", "received a missing DV on an observation record (EVID=0, MDV=0)",
         "a DV value on every observation", "Set MDV=1 if the sample is missing (the row then only carries "
         "covariates), or mark a censored sample with CENS=1 (DV = LLOQ) or BLQ=1 with an LLOQ column.")

    cov = _fill_covariates(cov_labels, cov_raw, subject, starts, ids, ctx)
    return Checked(
        frame=frame, source=source, ids=ids, subject=subject, starts=starts, time=time, dv=dv, amt=amt,
        evid=evid.astype(np.int64), is_obs=is_obs, state=state, rate=rate, addl=addl.astype(np.int64), ii=ii,
        ss=ss.astype(np.int64), output=output, cens=cens, limit=limit,
        covariate_names=tuple(str(c) for c in cov_labels), cov=cov,
    )


def _covariate_labels(frame, roles, covariates) -> list:
    if isinstance(covariates, str):
        covariates = (covariates,)
    labels = []
    by_upper = {str(c).strip().upper(): c for c in frame.columns}
    for name in covariates:
        if name in frame.columns:
            label = name
        elif str(name).strip().upper() in by_upper:
            label = by_upper[str(name).strip().upper()]
        else:
            raise DataError(f"Covariate column {name!r} not found; received columns "
                            f"{[str(c) for c in frame.columns]}. Pass covariates=(...) naming columns of the table.")
        if label == roles["ID"]:
            raise DataError(f"Covariate {name!r} is the ID column; expected a numeric covariate column.")
        if label in labels:
            raise ValueError(f"covariates lists {name!r} twice; expected each column once.")
        labels.append(label)
    return labels


def _outputs(data, is_obs, model, dvid_outputs, ctx) -> np.ndarray:
    """Model output index of each row (0 where not an observation)."""
    n = len(is_obs)
    dvid = data.get("DVID")
    if dvid_outputs is not None:
        mapping = {}
        for key, name in dict(dvid_outputs).items():
            if not float(key).is_integer():
                raise ValueError(f"dvid_outputs key {key!r} is not a whole number; expected DVID values such as 1, 2.")
            if name not in model.outputs:
                raise ValueError(f"dvid_outputs maps DVID {key!r} to {name!r}, which is not an output of "
                                 f"{type(model).__name__}; expected one of {model.outputs}.")
            mapping[float(key)] = model.outputs.index(name)
        if dvid is None:
            raise DataError(f"dvid_outputs={dict(dvid_outputs)!r} was given but the table has no DVID column; "
                            f"expected a DVID column on the observation records. Add it, or drop dvid_outputs "
                            f"(every observation then goes to output {model.outputs[0]!r}).")
    if dvid is None:
        return np.zeros(n, dtype=np.int64)
    ctx.fail(is_obs & np.isnan(dvid), "DVID", "received a missing DVID on an observation record",
             "a DVID on every observation when the table has a DVID column",
             "Fill in DVID, or drop the DVID column if there is a single observation type.")
    ctx.fail(is_obs & _integer(dvid), "DVID", lambda r: f"received DVID={_fmt(dvid[r])}", "a whole number",
             "Correct DVID.")
    values = np.unique(dvid[is_obs])
    if dvid_outputs is None:
        if len(values) > 1:
            first = int(np.flatnonzero(is_obs & (dvid == values[1]))[0])
            raise DataError(
                f"{ctx.where(first)}, column DVID: observation records have DVID values "
                f"[{', '.join(_fmt(v) for v in values)}]; expected a single observation type unless dvid_outputs says "
                f"which model output each DVID is. Pass e.g. dvid_outputs={{{_fmt(values[0])}: "
                f"{model.outputs[0]!r}, ...}} (outputs of {type(model).__name__}: {model.outputs}), or keep "
                f"only the rows you model, e.g. df[df.DVID != {_fmt(values[1])}]."
            )
        return np.zeros(n, dtype=np.int64)
    unmapped = is_obs & ~np.isin(dvid, list(mapping))
    ctx.fail(unmapped, "DVID", lambda r: f"received DVID={_fmt(dvid[r])} on an observation record",
             f"a DVID listed in dvid_outputs={dict(dvid_outputs)!r}",
             lambda r: f"Add it to dvid_outputs (outputs of {type(model).__name__}: {model.outputs}), or drop "
                       f"these rows, e.g. df[df.DVID != {_fmt(dvid[r])}].")
    out = np.zeros(n, dtype=np.int64)
    for key, index in mapping.items():
        out[is_obs & (dvid == key)] = index
    return out


def _censoring(data, is_obs, dv, ctx):
    """(cens, limit) per row from CENS/LIMIT or BLQ/LLOQ; writes the LLOQ into ``dv`` for BLQ=1."""
    n = len(is_obs)
    cens = np.zeros(n, dtype=np.int64)
    limit = np.full(n, np.nan)
    if "CENS" in data and "BLQ" in data:
        raise DataError("The table has both a CENS and a BLQ column; expected one way of flagging "
                        "censored samples. Drop one (CENS=1 with DV=LLOQ is equivalent to BLQ=1 with LLOQ).")
    if "CENS" in data:
        c = np.where(np.isnan(data["CENS"]), 0.0, data["CENS"])
        ctx.fail(is_obs & _integer(c, [-1, 0, 1]), "CENS", lambda r: f"received CENS={_fmt(c[r])}",
                 "CENS in {0 quantified, 1 below LLOQ (DV holds the LLOQ), -1 above ULOQ (DV holds the ULOQ)}",
                 "Correct CENS.")
        cens = np.where(is_obs, c, 0).astype(np.int64)
    elif "BLQ" in data:
        b = np.where(np.isnan(data["BLQ"]), 0.0, data["BLQ"])
        ctx.fail(is_obs & _integer(b, [0, 1]), "BLQ", lambda r: f"received BLQ={_fmt(b[r])}",
                 "BLQ 0 (quantified) or 1 (below the LLOQ)", "Correct BLQ.")
        blq = is_obs & (b == 1)
        if blq.any() and "LLOQ" not in data:
            ctx.fail(blq, "BLQ", "received BLQ=1 but the table has no LLOQ column",
                     "an LLOQ column giving the limit of each BLQ=1 sample",
                     "Add an LLOQ column, or use CENS=1 with DV = LLOQ.")
        if blq.any():
            lloq = data["LLOQ"]
            ctx.fail(blq & (np.isnan(lloq) | (lloq < 0)), "LLOQ",
                     lambda r: f"received LLOQ={_fmt(lloq[r])} on a BLQ=1 record",
                     "the (non-negative) LLOQ of each BLQ=1 sample", "Fill in LLOQ.")
            dv[blq] = lloq[blq]
        cens = blq.astype(np.int64)
    if "LIMIT" in data:
        lim = data["LIMIT"]
        censored = cens != 0
        ctx.fail(censored & (cens == 1) & ~(lim < dv) & ~np.isnan(lim), "LIMIT",
                 lambda r: f"received LIMIT={_fmt(lim[r])} with the LLOQ {_fmt(dv[r])} (left-censored)",
                 "LIMIT < LLOQ: the lower bound of the interval the value lies in (e.g. 0)", "Correct LIMIT.")
        ctx.fail(censored & (cens == -1) & ~(lim > dv) & ~np.isnan(lim), "LIMIT",
                 lambda r: f"received LIMIT={_fmt(lim[r])} with the ULOQ {_fmt(dv[r])} (right-censored)",
                 "LIMIT > ULOQ: the upper bound of the interval the value lies in", "Correct LIMIT.")
        limit = np.where(censored, lim, np.nan)
    return cens, limit


def _fill_covariates(labels, raw, subject, starts, ids, ctx) -> np.ndarray:
    """[N, K] covariate values; gaps filled within subject (LOCF, then first value backward)."""
    n = len(subject)
    out = np.zeros((n, len(labels)))
    for k, (label, values) in enumerate(zip(labels, raw)):
        missing = np.isnan(values)
        if not missing.any():
            out[:, k] = values
            continue
        n_present = np.bincount(subject, weights=~missing, minlength=len(ids))
        empty = np.flatnonzero(n_present == 0)
        if empty.size:
            s = int(empty[0])
            raise DataError(
                f"{ctx.where(int(starts[s]))}, column {label}: received no value of covariate {label!r} for "
                f"ID {_fmt(ids[s])} (all {int(starts[s + 1] - starts[s])} records missing); expected at least "
                f"one value per subject. Fill it in (e.g. an imputed value, stated in your analysis plan) "
                f"or remove the subject."
            )
        series = pd.Series(values)
        filled = series.groupby(subject).ffill().groupby(subject).bfill()
        out[:, k] = filled.to_numpy()
        gap_subjects = np.unique(subject[missing])
        warnings.warn(
            f"Covariate {label!r} has missing values for ID(s) "
            f"{', '.join(_fmt(ids[s]) for s in gap_subjects)} (first at {ctx.where(int(np.flatnonzero(missing)[0]))}); "
            f"filled within each subject by carrying the last value forward (leading gaps: the first value "
            f"backward). Fill them in the data to choose otherwise.",
            UserWarning,
            stacklevel=4,
        )
    return out
