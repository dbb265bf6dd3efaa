"""Valid behaviour of the data layer: read_nonmem, Dataset, load_dataset."""

import csv
import warnings
from importlib import resources

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import popkpd
from popkpd._data import Dataset, read_nonmem
from popkpd._structural.base import AbstractStructuralModel
from popkpd.datasets import load_dataset


class TwoOutputs(AbstractStructuralModel):
    """Depot -> central with outputs conc (central / vc) and amount (central)."""

    states = ("depot", "central")
    parameters = ("ka", "cl", "vc")
    outputs = ("conc", "amount")
    linear = True

    def vector_field(self, t, y, p):
        return jnp.stack([-p["ka"] * y[0], p["ka"] * y[0] - p["cl"] / p["vc"] * y[1]])

    def output(self, t, y, p):
        return jnp.stack([y[1] / p["vc"], y[1]])


def table(rows, columns=("ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT")):
    return pd.DataFrame(rows, columns=list(columns))


def arr(x):
    return np.asarray(x)


def real_doses(ds, subject=0):
    ev = ds.events
    m = arr(ev.dose_mask)[subject]
    return {k: arr(getattr(ev, f"dose_{k}"))[subject][m] for k in ("time", "amt", "cmt", "rate", "ss", "ii", "reset", "row")}


def real_obs(ds, subject=0):
    ev = ds.events
    m = arr(ev.obs_mask)[subject]
    return {k: arr(getattr(ev, f"obs_{k}"))[subject][m] for k in ("time", "dv", "output", "cens", "limit", "row")}


# --- shipped datasets, checked against the raw CSV read with the csv module ---------------------


def raw_rows(name):
    with resources.files("popkpd.datasets").joinpath(f"{name}.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_theophylline_counts_and_values():
    rows = raw_rows("theophylline")
    ids = list(dict.fromkeys(r["ID"] for r in rows))
    obs = [r for r in rows if r["EVID"] == "0" and r["MDV"] == "0"]
    assert len(ids) == 12 and len(obs) == 132  # the file itself

    ds = read_nonmem(load_dataset("theophylline"), popkpd.OneCompartment(), covariates=("WT",))
    assert isinstance(ds, Dataset)
    assert ds.n_subjects == 12 and ds.n_observations == 132
    assert ds.ids == tuple(int(i) for i in ids)
    assert ds.output_names == ("conc",) and ds.covariate_names == ("WT",)
    ev = ds.events
    assert arr(ev.dose_mask).sum() == 12 and arr(ev.dose_cmt)[arr(ev.dose_mask)].tolist() == [0] * 12  # depot
    doses = [float(r["AMT"]) for r in rows if r["EVID"] == "1"]
    np.testing.assert_array_equal(arr(ev.dose_amt)[:, 0], doses)
    # observations in file order, each with its source row
    frame_obs = ds.observation_frame()
    np.testing.assert_array_equal(frame_obs["DV"], [float(r["DV"]) for r in obs])
    np.testing.assert_array_equal(frame_obs["TIME"], [float(r["TIME"]) for r in obs])
    assert frame_obs["row"].tolist() == [i for i, r in enumerate(rows) if r["EVID"] == "0"]
    assert ds.source_row(1, 0) == 13 and float(rows[13]["DV"]) == 0.0  # ID 2's pre-dose sample
    wt = {r["ID"]: float(r["WT"]) for r in rows}
    base = ds.baseline_covariates()
    assert tuple(base["ID"]) == ds.ids and base["WT"].tolist() == [wt[i] for i in ids]


def test_theophylline_from_csv_path_matches_dataframe():
    path = resources.files("popkpd.datasets").joinpath("theophylline.csv")
    with resources.as_file(path) as p:
        a = read_nonmem(p, popkpd.OneCompartment())
    b = read_nonmem(load_dataset("theophylline"), popkpd.OneCompartment())
    assert a.hash == b.hash and a.source.endswith("theophylline.csv") and b.source == "DataFrame"
    for key in ("obs_dv", "obs_time", "dose_amt", "cov_time"):
        np.testing.assert_array_equal(arr(getattr(a.events, key)), arr(getattr(b.events, key)))


def test_warfarin_pk_rows():
    df = load_dataset("warfarin")
    rows = raw_rows("warfarin")
    pk = [r for r in rows if r["DVID"] == "1"]
    model = popkpd.OneCompartment(lag_time=True)
    ds = read_nonmem(df[df.DVID != 2], model, covariates=("WT", "SEX", "AGE"), dvid_outputs={1: "conc"})
    assert ds.n_subjects == 32 and ds.n_observations == len(pk) == 247
    np.testing.assert_array_equal(ds.observation_frame()["DV"], [float(r["DV"]) for r in pk])
    assert set(arr(ds.events.obs_output)[arr(ds.events.obs_mask)]) == {0}
    # the same without the mapping (a single DVID among observations)
    same = read_nonmem(df[df.DVID != 2], model)
    np.testing.assert_array_equal(arr(same.events.obs_dv), arr(ds.events.obs_dv))
    # rows refer to the filtered table (positions), and the frame is that table
    r = ds.source_row(0, 0)
    assert ds.frame["DV"].iloc[r] == float(pk[0]["DV"])


def test_load_dataset_unknown_name():
    with pytest.raises(ValueError, match=r"Unknown dataset 'theo'; available: \['theophylline', 'warfarin'\]"):
        load_dataset("theo")


# --- ADDL/II, EVID defaults, CMT defaults -------------------------------------------------------


def test_addl_expansion_equals_explicit_rows():
    cols = ("ID", "TIME", "DV", "AMT", "ADDL", "II", "RATE")
    compact = table([(1, 10, ".", 15, 2, 12, 0), (1, 15, 25.7, ".", ".", ".", 0), (1, 20, ".", 10, 0, 0, 5),
                     (1, 36, 30.2, ".", ".", ".", 0), (2, 0, ".", 7, 3, 24, 14), (2, 30, 1.0, 0, 0, 0, 0)], cols)
    explicit = table([(1, 10, ".", 15, 0, 0, 0), (1, 15, 25.7, ".", ".", ".", 0), (1, 20, ".", 10, 0, 0, 5),
                      (1, 22, ".", 15, 0, 0, 0), (1, 34, ".", 15, 0, 0, 0), (1, 36, 30.2, ".", ".", ".", 0),
                      (2, 0, ".", 7, 0, 0, 14), (2, 24, ".", 7, 0, 0, 14), (2, 30, 1.0, 0, 0, 0, 0),
                      (2, 48, ".", 7, 0, 0, 14), (2, 72, ".", 7, 0, 0, 14)], cols)
    model = popkpd.OneCompartment()
    a, b = read_nonmem(compact, model), read_nonmem(explicit, model)
    for s in range(2):
        da, db = real_doses(a, s), real_doses(b, s)
        for key in ("time", "amt", "cmt", "rate", "ss", "ii", "reset"):
            np.testing.assert_array_equal(da[key], db[key], err_msg=key)
        oa, ob = real_obs(a, s), real_obs(b, s)
        np.testing.assert_array_equal(oa["time"], ob["time"])
        np.testing.assert_array_equal(oa["dv"], ob["dv"])
    assert real_doses(a, 0)["time"].tolist() == [10, 20, 22, 34]
    assert real_doses(a, 0)["row"].tolist() == [0, 2, 0, 0]  # additional doses keep their record's row
    assert real_doses(a, 1)["row"].tolist() == [4, 4, 4, 4]


def test_pending_additional_doses_cancelled_by_reset_or_steady_state():
    cols = ("ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "ADDL", "II", "SS")
    df = table([(1, 0, ".", 5, 1, 1, 1, 5, 12, 0), (1, 30, ".", 0, 3, 1, 0, 0, 0, 0), (1, 31, 1.0, 0, 0, 0, 2, 0, 0, 0),
                (2, 0, ".", 5, 1, 1, 1, 5, 12, 0), (2, 24, ".", 9, 1, 1, 1, 1, 24, 1), (2, 60, 1.0, 0, 0, 0, 2, 0, 0, 0),
                (3, 0, ".", 5, 1, 1, 1, 2, 12, 0), (3, 30, ".", 0, 2, 1, 0, 0, 0, 0)], cols)
    ds = read_nonmem(df, popkpd.OneCompartment())
    assert real_doses(ds, 0)["time"].tolist() == [0, 12, 24, 30]  # 36, 48, 60 cancelled by the reset
    d = real_doses(ds, 1)  # the additional dose at 24 is replaced by the SS dose; the SS dose's own one stays
    assert d["time"].tolist() == [0, 12, 24, 48] and d["amt"].tolist() == [5, 5, 9, 9] and d["ss"].tolist() == [0, 0, 1, 0]
    assert real_doses(ds, 2)["time"].tolist() == [0, 12, 24]  # an EVID 2 record cancels nothing


def test_nmtran_defaults_equal_explicit_columns():
    model = popkpd.OneCompartment()
    implicit = pd.DataFrame({"ID": [1, 1, 1, 1], "TIME": [0, 1, 2, 3], "DV": [".", 4.0, ".", 3.0],
                             "AMT": [100, 0, 50, 0]})
    explicit = implicit.assign(EVID=[1, 0, 1, 0], MDV=[1, 0, 1, 0], CMT=[1, 2, 1, 2])
    a, b = read_nonmem(implicit, model), read_nonmem(explicit, model)
    for key in ("dose_time", "dose_amt", "dose_cmt", "obs_time", "obs_dv", "obs_row", "obs_output"):
        np.testing.assert_array_equal(arr(getattr(a.events, key)), arr(getattr(b.events, key)), err_msg=key)
    assert real_doses(a)["cmt"].tolist() == [0, 0]  # CMT absent -> first state (depot)


def test_evid_inferred_from_mdv_and_cmt_zero_default():
    # no EVID: MDV=1 without a dose is an other-type (covariate) record
    df = pd.DataFrame({"ID": [1, 1, 1], "TIME": [0, 1, 2], "DV": [".", ".", 5.0], "AMT": [10, 0, 0],
                       "MDV": [1, 1, 0], "CMT": [0, 0, 0], "WT": [70, 72, 74]})
    ds = read_nonmem(df, popkpd.OneCompartment(absorption=False), covariates=("WT",))
    assert real_doses(ds)["cmt"].tolist() == [0] and real_obs(ds)["row"].tolist() == [2]
    np.testing.assert_array_equal(arr(ds.events.cov_value)[0, :, 0], [70, 72, 74])
    # CMT 2 of a depot model is state 1
    df2 = df.assign(CMT=[2, 0, 2])
    assert real_doses(read_nonmem(df2, popkpd.OneCompartment()))["cmt"].tolist() == [1]


def test_case_insensitive_columns_and_dot_missing(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("id,time,dv,amt,evid,mdv,cmt\n1,0,.,100,1,1,1\n1,1,5.5,.,0,0,2\n1,2,.,.,2,1,.\n")
    ds = read_nonmem(path, popkpd.OneCompartment())
    assert ds.n_observations == 1 and real_obs(ds)["dv"].tolist() == [5.5]
    assert np.isnan(ds.frame["dv"].iloc[0]) and ds.frame["amt"].iloc[1] != ds.frame["amt"].iloc[1]


def test_string_ids_kept_in_file_order():
    df = table([("b", 0, ".", 1, 1, 1, 1), ("b", 1, 2.0, 0, 0, 0, 2), ("a", 0, ".", 1, 1, 1, 1),
                ("a", 2, 3.0, 0, 0, 0, 2)])
    ds = read_nonmem(df, popkpd.OneCompartment())
    assert ds.ids == ("b", "a") and ds.observation_frame()["ID"].tolist() == ["b", "a"]


# --- covariates -----------------------------------------------------------------------------------


def test_covariates_locf_and_backfill_warn():
    df = table([(1, 0, ".", 5, 1, 1, 1, ".", 1), (1, 1, 1.0, 0, 0, 0, 2, 60, 1), (1, 2, 1.0, 0, 0, 0, 2, ".", 2),
                (1, 3, 1.0, 0, 0, 0, 2, 64, "."), (2, 0, ".", 5, 1, 1, 1, 80, 3), (2, 4, 1.0, 0, 0, 0, 2, 81, 3)],
               ("ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "WT", "CRCL"))
    with pytest.warns(UserWarning) as record:
        ds = read_nonmem(df, popkpd.OneCompartment(), covariates=("WT", "CRCL"))
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert "'WT'" in messages[0] and "ID(s) 1 " in messages[0] and "row 0 (ID 1)" in messages[0]
    assert "'CRCL'" in messages[1] and "ID(s) 1 " in messages[1] and "row 3 (ID 1)" in messages[1]
    cv, ct, cm = arr(ds.events.cov_value), arr(ds.events.cov_time), arr(ds.events.cov_mask)
    np.testing.assert_array_equal(cv[0, :, 0], [60, 60, 60, 64])  # leading gap: first value backward
    np.testing.assert_array_equal(cv[0, :, 1], [1, 1, 2, 2])  # LOCF
    np.testing.assert_array_equal(ct[0], [0, 1, 2, 3])
    np.testing.assert_array_equal(cm[1], [True, True, False, False])
    np.testing.assert_array_equal(cv[1, :, 0], [80, 81, 81, 81])  # padding repeats the last value
    base = ds.baseline_covariates()
    assert base.to_dict("list") == {"ID": [1, 2], "WT": [60.0, 80.0], "CRCL": [1.0, 3.0]}
    # the frame keeps the gaps: nothing rewritten in the user's table
    assert np.isnan(ds.frame["WT"].iloc[0])


def test_covariate_record_only_rows_are_kept_for_covariates():
    df = table([(1, 0, ".", 5, 1, 1, 1, 70), (1, 1, ".", 0, 2, 1, 0, 75), (1, 2, 9.0, 0, 0, 1, 2, 76),
                (1, 3, 1.0, 0, 0, 0, 2, 77)], ("ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "WT"))
    ds = read_nonmem(df, popkpd.OneCompartment(), covariates=("WT",))
    assert real_obs(ds)["row"].tolist() == [3]  # EVID 2 and MDV=1 rows are not observations
    np.testing.assert_array_equal(arr(ds.events.cov_value)[0, :, 0], [70, 75, 76, 77])


# --- DVID, BLQ, resets, SS ------------------------------------------------------------------------


def test_dvid_mapping_to_outputs():
    df = table([(1, 0, ".", 5, 1, 1, 1, 0), (1, 1, 2.0, 0, 0, 0, 2, 2), (1, 1, 3.0, 0, 0, 0, 2, 1),
                (1, 2, 4.0, 0, 0, 0, 2, 2)], ("ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "DVID"))
    ds = read_nonmem(df, TwoOutputs(), dvid_outputs={1: "conc", 2: "amount"})
    assert real_obs(ds)["output"].tolist() == [1, 0, 1] and ds.output_names == ("conc", "amount")
    assert ds.observation_frame()["output"].tolist() == ["amount", "conc", "amount"]
    without = read_nonmem(df.drop(columns="DVID"), TwoOutputs())
    assert real_obs(without)["output"].tolist() == [0, 0, 0]


def test_cens_limit_columns():
    df = table([(1, 0, ".", 5, 1, 1, 1, 0, "."), (1, 1, 0.1, 0, 0, 0, 2, 1, 0), (1, 2, 3.0, 0, 0, 0, 2, 0, "."),
                (1, 3, 50, 0, 0, 0, 2, -1, "."), (1, 4, 0.1, 0, 0, 0, 2, 1, ".")],
               ("ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "CENS", "LIMIT"))
    o = real_obs(read_nonmem(df, popkpd.OneCompartment()))
    assert o["cens"].tolist() == [1, 0, -1, 1] and o["dv"].tolist() == [0.1, 3.0, 50, 0.1]
    np.testing.assert_array_equal(o["limit"], [0, np.nan, np.nan, np.nan])


def test_blq_lloq_columns():
    df = table([(1, 0, ".", 5, 1, 1, 1, ".", "."), (1, 1, ".", 0, 0, 0, 2, 1, 0.05), (1, 2, 3.0, 0, 0, 0, 2, 0, 0.05)],
               ("ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "BLQ", "LLOQ"))
    o = real_obs(read_nonmem(df, popkpd.OneCompartment()))
    assert o["cens"].tolist() == [1, 0] and o["dv"].tolist() == [0.05, 3.0]


def test_reset_flags_evid_3_and_4():
    df = table([(1, 0, ".", 5, 1, 1, 1, 0, 0), (1, 1, 2.0, 0, 0, 0, 2, 0, 0), (1, 10, ".", 0, 3, 1, 0, 0, 0),
                (1, 20, ".", 7, 4, 1, 1, 1, 6), (1, 21, 1.0, 0, 0, 0, 2, 0, 0)],
               ("ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "ADDL", "II"))
    d = real_doses(read_nonmem(df, popkpd.OneCompartment()))
    assert d["time"].tolist() == [0, 10, 20, 26] and d["amt"].tolist() == [5, 0, 7, 7]
    assert d["reset"].tolist() == [False, True, True, False]  # the additional dose is not a reset


def test_steady_state_doses_on_linear_model():
    cols = ("ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "SS", "II", "ADDL", "RATE")
    df = table([(1, 0, ".", 100, 1, 1, 1, 1, 24, 2, 0), (1, 12, 1.0, 0, 0, 0, 2, 0, 0, 0, 0),
                (2, 0, ".", 0, 1, 1, 2, 1, 0, 0, 10), (2, 5, 1.0, 0, 0, 0, 2, 0, 0, 0, 0)], cols)
    ds = read_nonmem(df, popkpd.OneCompartment())
    d = real_doses(ds, 0)
    assert d["time"].tolist() == [0, 24, 48] and d["ss"].tolist() == [1, 0, 0] and d["ii"].tolist() == [24, 0, 0]
    d = real_doses(ds, 1)  # steady-state constant infusion into the central compartment
    assert d["amt"].tolist() == [0] and d["rate"].tolist() == [10] and d["ss"].tolist() == [1] and d["cmt"].tolist() == [1]


def test_modelled_rate_and_duration_kept():
    df = table([(1, 0, ".", 5, 1, 1, 2, -1), (1, 1, ".", 5, 1, 1, 2, -2), (1, 2, 1.0, 0, 0, 0, 2, ".")],
               ("ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "RATE"))
    assert real_doses(read_nonmem(df, popkpd.OneCompartment()))["rate"].tolist() == [-1, -2]


def test_observation_before_dose_at_same_time_keeps_file_order():
    df = table([(1, 0, 0.0, 0, 0, 0, 2), (1, 0, ".", 5, 1, 1, 1), (1, 0, 1.0, 0, 0, 0, 2)])
    ds = read_nonmem(df, popkpd.OneCompartment())
    assert real_obs(ds)["row"].tolist() == [0, 2] and real_doses(ds)["row"].tolist() == [1]


def test_hash_is_canonical_and_sensitive(tmp_path):
    df = table([(1, 0, ".", 5, 1, 1, 1), (1, 1.5, 2.0, 0, 0, 0, 2)])
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    model = popkpd.OneCompartment()
    h = read_nonmem(df, model).hash
    assert len(h) == 64 and h == read_nonmem(path, model).hash
    assert h == read_nonmem(df.set_index(pd.Index([7, 9])), model).hash  # index is not data
    changed = df.copy()
    changed.loc[1, "DV"] = 2.0000001
    assert read_nonmem(changed, model).hash != h


def test_no_warning_for_complete_data():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_nonmem(load_dataset("theophylline"), popkpd.OneCompartment(), covariates=("WT", "DOSE_MGKG"))


def test_source_row_of_padding_is_an_error():
    df = table([(1, 0, ".", 5, 1, 1, 1), (1, 1, 2.0, 0, 0, 0, 2), (1, 2, 2.0, 0, 0, 0, 2), (2, 0, ".", 5, 1, 1, 1),
                (2, 1, 2.0, 0, 0, 0, 2)])
    ds = read_nonmem(df, popkpd.OneCompartment())
    assert ds.source_row(0, 1) == 2 and ds.source_row(1, 0) == 4
    with pytest.raises(IndexError, match=r"Subject index 1 \(ID 2\) has no observation 1: it has 1"):
        ds.source_row(1, 1)
