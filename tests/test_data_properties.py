"""Property test: any table, valid or mutated, gives a consistent ``Dataset`` or a ``DataError``.

Valid tables are generated record by record (doses with ADDL/II, infusions, modelled rates,
observations with DVID and CENS, covariate-only records, resets, steady-state doses); then zero to
two random mutations are applied (a dropped column, text in a cell, negative/decreasing/missing
times, bad EVID/AMT/CMT/MDV/SS values, split ID blocks, a covariate missing for a subject, ...).
On success the ``Events`` are checked against an independent per-row reading of the table.
"""

import re
import warnings

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import popkpd
from popkpd._data import Dataset, DataError, read_nonmem

COLUMNS = ["ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "RATE", "ADDL", "II", "SS", "DVID", "CENS", "WT"]
MODELS = [popkpd.OneCompartment(), popkpd.OneCompartment(absorption=False), popkpd.MichaelisMentenOneCompartment()]
NAN = float("nan")
KINDS = st.sampled_from(["obs", "obs", "obs", "dose", "dose", "other", "reset", "reset_dose", "sample_missing", "ss"])
OBS = st.tuples(st.sampled_from([0.0, 0.3, 2.5, 10.0]), st.sampled_from([0, 1]), st.sampled_from([1, 1, 2]),
                st.sampled_from([0, 0, 1]))
DOSE = st.tuples(st.sampled_from([1.0, 50.0, 320.0]), st.sampled_from([0, 1]), st.sampled_from([0.0, 0.0, 5.0, -1.0, -2.0]),
                 st.sampled_from([0, 0, 1, 3]), st.sampled_from([0.5, 12.0, 24.0]))
STEP = st.sampled_from([0.0, 0.25, 1.0, 6.0])
WEIGHT = st.sampled_from([60.0, 72.5, NAN])
SS_ADDL = st.sampled_from([0, 2])
OPTIONAL_GROUPS = ("RATE", "ADDL II", "SS", "CENS", "CMT", "EVID MDV", "MDV", "DVID")


def record(kind, t, draw):
    """One row (dict) of the given kind at time t."""
    row = dict(TIME=t, DV=NAN, AMT=0.0, EVID=0, MDV=1, CMT=0, RATE=0.0, ADDL=0, II=0.0, SS=0, DVID=0, CENS=0)
    if kind == "obs":
        dv, cmt, dvid, cens = draw(OBS)
        row.update(DV=dv, MDV=0, CMT=cmt, DVID=dvid, CENS=cens)
    elif kind in ("dose", "reset_dose"):
        amt, cmt, rate, addl, ii = draw(DOSE)
        row.update(AMT=amt, EVID=1 if kind == "dose" else 4, CMT=cmt, RATE=rate, ADDL=addl, II=ii if addl else 0.0)
    elif kind == "ss":
        row.update(AMT=10.0, EVID=1, SS=1, II=12.0, ADDL=draw(SS_ADDL))
    elif kind == "other":
        row.update(EVID=2)
    elif kind == "reset":
        row.update(EVID=3)
    # "sample_missing": EVID 0 with MDV 1 (covariate-only)
    return row


@st.composite
def valid_tables(draw):
    rows = []
    for sid in draw(st.lists(st.integers(1, 99), min_size=1, max_size=4, unique=True)):
        t = draw(STEP)
        kinds = draw(st.lists(KINDS, min_size=1, max_size=6))
        weights = [draw(WEIGHT) for _ in kinds]
        weights[draw(st.integers(0, len(kinds) - 1))] = 70.0  # at least one value per subject
        for kind, weight in zip(kinds, weights):
            t += draw(STEP)
            rows.append(record(kind, t, draw) | {"ID": sid, "WT": weight})
    df = pd.DataFrame(rows, columns=COLUMNS)
    if draw(st.integers(0, 3)):  # most tables have one observation type
        df["DVID"] = df["DVID"].clip(upper=1)
    dropped = draw(st.sets(st.sampled_from(OPTIONAL_GROUPS), max_size=2))  # sometimes leave columns out
    return df.drop(columns=[c for group in dropped for c in group.split()])


def set_cell(df, row, column, value):
    df = df.copy()
    if isinstance(value, str) or not pd.api.types.is_float_dtype(df[column].dtype):
        df[column] = df[column].astype(object)
    df.iloc[row, df.columns.get_loc(column)] = value
    return df


MUTATIONS = st.sampled_from(["drop", "text", "value", "time_back", "split", "cov_gone", "dot"])
TEXT = st.sampled_from(["abc", "1,5", "--", "1e", " "])
VALUES = st.sampled_from([NAN, 0.0, -1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.5, 100.0, -2.0, 1e9, float("inf"), 101])
BACK = st.sampled_from([0.5, 5.0, 50.0])


@st.composite
def mutate(draw, df):
    kind = draw(MUTATIONS)
    row = draw(st.integers(0, len(df) - 1))
    column = draw(st.sampled_from(list(df.columns)))
    if kind == "drop":
        return df.drop(columns=column)
    if kind == "text":
        return set_cell(df, row, column, draw(TEXT))
    if kind == "dot":
        return set_cell(df, row, column, ".")
    if kind == "value":
        return set_cell(df, row, column, draw(VALUES))
    if kind == "time_back" and "TIME" in df.columns:
        time = pd.to_numeric(df["TIME"].iloc[row], errors="coerce")
        return set_cell(df, row, "TIME", time - draw(BACK))
    if kind == "split":
        order = list(range(len(df)))
        order.append(order.pop(row))
        return df.iloc[order]
    if kind != "cov_gone" or "ID" not in df.columns or "WT" not in df.columns:
        return df
    # a covariate entirely missing for the subject of ``row``
    df = df.copy()
    df.loc[df["ID"] == df["ID"].iloc[row], "WT"] = NAN
    return df


N_MUTATIONS = st.sampled_from([0, 0, 0, 1, 1, 2])
MODEL = st.sampled_from(MODELS + MODELS[:1])
DVID_OUTPUTS = st.sampled_from([None, None, {1: "conc", 2: "conc"}, {1: "conc"}])
COVARIATES = st.sampled_from([(), ("WT",)])


@st.composite
def tables(draw):
    df = draw(valid_tables())
    for _ in range(draw(N_MUTATIONS)):
        df = draw(mutate(df))
    return df, draw(MODEL), draw(DVID_OUTPUTS), draw(COVARIATES)


def reference(df):
    """Independent per-row reading: (observation rows, number of dose records after ADDL)."""
    def get(row, name, default):
        value = row.get(name, default)
        value = pd.to_numeric(value, errors="coerce") if isinstance(value, str) else value
        return default if value is None or value != value else float(value)

    records = []
    for row in df.to_dict("records"):
        amt, ss = get(row, "AMT", 0.0), get(row, "SS", 0.0)
        mdv_given = get(row, "MDV", None)
        evid = get(row, "EVID", None)
        if evid is None:
            evid = 1 if (amt != 0 or ss != 0) else (2 if mdv_given == 1 else 0)
        mdv = mdv_given if mdv_given is not None else (0 if evid == 0 else 1)
        records.append((row["ID"], get(row, "TIME", 0.0), evid, mdv, ss, int(get(row, "ADDL", 0)), get(row, "II", 0.0)))
    obs, n_doses = [], 0
    for i, (sid, time, evid, mdv, ss, addl, ii) in enumerate(records):
        if evid == 0 and mdv == 0:
            obs.append(i)
        elif evid in (1, 3, 4):
            # NONMEM: a later reset or SS=1 dose of the subject cancels the pending additional doses
            later = [r for r in records[i + 1:] if r[0] == sid and (r[2] in (3, 4) or (r[2] == 1 and r[4] == 1))]
            stop = later[0][1] if later else np.inf
            n_doses += 1 + (0 if evid == 3 else sum(time + j * ii < stop for j in range(1, addl + 1)))
    return obs, n_doses


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tables())
def test_tables_give_dataset_or_data_error(case):
    df, model, dvid_outputs, covariates = case
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = read_nonmem(df, model, covariates=covariates, dvid_outputs=dvid_outputs)
        except DataError as err:
            assert str(err)  # a message, never another exception type
            found = re.search(r", column (\w+):", str(err))
            event(f"DataError, column {found.group(1)}" if found else "DataError, whole table")
            return
    event("Dataset")
    assert all(issubclass(w.category, UserWarning) and "Covariate" in str(w.message) for w in caught), caught
    assert isinstance(ds, Dataset)
    ev = ds.events
    frame = df.reset_index(drop=True)
    obs_rows, n_doses = reference(frame)
    obs_mask, obs_row = np.asarray(ev.obs_mask), np.asarray(ev.obs_row)
    # every source observation row appears exactly once, in file order within its subject
    assert sorted(obs_row[obs_mask].tolist()) == obs_rows
    assert obs_mask.sum() == ds.n_observations == len(obs_rows)
    assert np.all(obs_row[~obs_mask] == -1)
    assert np.asarray(ev.dose_mask).sum() == n_doses
    assert np.asarray(ev.cov_mask).sum() == len(frame)
    times = pd.to_numeric(frame["TIME"]).to_numpy(dtype=float)
    np.testing.assert_array_equal(np.asarray(ev.obs_time)[obs_mask], times[obs_row[obs_mask]])
    ids = frame["ID"].tolist()
    assert ds.n_subjects == len(set(ids)) and list(ds.ids) == list(dict.fromkeys(ids))
    for s in range(ds.n_subjects):
        rows = obs_row[s][obs_mask[s]]
        assert np.all(np.diff(rows) > 0) and all(ids[r] == ds.ids[s] for r in rows)
        d_mask = np.asarray(ev.dose_mask)[s]
        assert np.all(np.diff(np.asarray(ev.dose_time)[s][d_mask]) >= 0)
        assert all(ids[r] == ds.ids[s] for r in np.asarray(ev.dose_row)[s][d_mask])
