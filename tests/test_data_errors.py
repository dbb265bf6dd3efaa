"""Every error message of the data layer, on a small valid table with one defect each."""

import re

import numpy as np
import pandas as pd
import pytest

import popkpd
from popkpd._data import DataError, read_nonmem

ONE = popkpd.OneCompartment()  # CMT 1 depot, CMT 2 central; linear


def base(**extra):
    """Two subjects: a depot dose and two (ID 1) or one (ID 2) central concentrations."""
    df = pd.DataFrame({
        "ID": [1, 1, 1, 2, 2],
        "TIME": [0.0, 1.0, 2.0, 0.0, 1.0],
        "DV": [np.nan, 5.0, 4.0, np.nan, 6.0],
        "AMT": [100.0, 0, 0, 100.0, 0],
        "EVID": [1, 0, 0, 1, 0],
        "MDV": [1, 0, 0, 1, 0],
        "CMT": [1, 2, 2, 1, 2],
    })
    for key, values in extra.items():
        df[key] = values
    return df


def with_values(df, row, **values):
    df = df.copy()
    for column, value in values.items():
        if isinstance(value, str):
            df[column] = df[column].astype(object)
        elif not isinstance(value, int) and pd.api.types.is_integer_dtype(df[column].dtype):
            df[column] = df[column].astype(float)
        df.loc[row, column] = value
    return df


def test_base_table_is_valid():
    ds = read_nonmem(base(), ONE)
    assert ds.n_subjects == 2 and ds.n_observations == 3


# (name, table, read_nonmem keyword arguments, pattern); the patterns name row, ID and column.
CASES = [
    ("missing required column", base().drop(columns="DV"), {},
     r"Required column\(s\) \['DV'\] not found; received columns \['ID', 'TIME', 'AMT', 'EVID', 'MDV', 'CMT'\]"),
    ("text in TIME", with_values(base(), 2, TIME="2h"), {},
     r"^row 2 \(ID 1\), column TIME: received the text '2h'; expected a number \('\.' or an empty cell"),
    ("text in a covariate", with_values(base(WT=[70.0] * 5), 4, WT="heavy"), {"covariates": ("WT",)},
     r"^row 4 \(ID 2\), column WT: received the text 'heavy'"),
    ("infinite value", with_values(base(), 1, DV=np.inf), {},
     r"^row 1 \(ID 1\), column DV: received inf; expected a finite number"),
    ("missing TIME", with_values(base(), 1, TIME=np.nan), {},
     r"^row 1 \(ID 1\), column TIME: received a missing TIME; expected a time on every record"),
    ("negative TIME", with_values(base(), 0, TIME=-1.0), {},
     r"^row 0 \(ID 1\), column TIME: received TIME=-1; expected TIME >= 0\. Shift the times"),
    ("decreasing TIME", with_values(base(), 2, TIME=0.5), {},
     r"^row 2 \(ID 1\), column TIME: received TIME=0\.5 after TIME=1 on row 1; expected TIME non-decreasing "
     r"within a subject.*df\.sort_values\(\['ID', 'TIME'\]"),
    ("reset restarting time", with_values(base(), 2, TIME=0.0, EVID=3, MDV=1, DV=np.nan), {},
     r"^row 2 \(ID 1\), column TIME: received TIME=0 on a reset record \(EVID=3\) after TIME=1; .*"
     r"popkpd does not support a reset \(EVID 3/4\) that restarts time\. Keep time running"),
    ("dose with AMT=0", with_values(base(), 3, AMT=0.0), {},
     r"^row 3 \(ID 2\), column AMT: received AMT=0 on a dose record \(EVID=1\); expected AMT > 0 on dose records "
     r"\(AMT=0 only on a steady-state constant infusion: SS=1, II=0, RATE > 0 or -1\)\. Set AMT to the dose, "
     r"or EVID=0 \(observation\)"),
    ("dose with negative AMT", with_values(base(), 3, AMT=-5.0), {},
     r"^row 3 \(ID 2\), column AMT: received AMT=-5 on a dose record; expected AMT > 0"),
    ("AMT on an observation", with_values(base(), 1, AMT=5.0), {},
     r"^row 1 \(ID 1\), column AMT: received AMT=5 on an observation \(EVID=0\) record; expected AMT=0 .*"
     r"set EVID=1 and MDV=1"),
    ("AMT on a pure reset", with_values(base(), 2, EVID=3, MDV=1, DV=np.nan, AMT=3.0), {},
     r"^row 2 \(ID 1\), column AMT: received AMT=3 on a reset \(EVID=3\) record.*Use EVID=4"),
    ("ADDL without II", base(ADDL=[2, 0, 0, 0, 0], II=[0.0] * 5), {},
     r"^row 0 \(ID 1\), column II: received ADDL=2 with II=0; expected II > 0 when ADDL > 0"),
    ("CMT the model lacks", with_values(base(), 2, CMT=3), {},
     r"^row 2 \(ID 1\), column CMT: received CMT=3 on an EVID=0 record; expected CMT 0 \(default\) or one of "
     r"OneCompartment's compartments \(CMT 1 = depot, CMT 2 = central\)"),
    ("CMT of a one-state model", base(), {"model": popkpd.OneCompartment(absorption=False)},
     r"^row 1 \(ID 1\), column CMT: received CMT=2 .*\(CMT 1 = central\).*\(3 rows have this problem"),
    ("negative CMT", with_values(base(), 1, CMT=-2), {},
     r"^row 1 \(ID 1\), column CMT: received CMT=-2 .*negative CMT \(compartment off\) is not supported"),
    ("fractional CMT", with_values(base(), 1, CMT=1.5), {},
     r"^row 1 \(ID 1\), column CMT: received CMT=1\.5; expected a whole compartment number"),
    ("observation without DV", with_values(base(), 4, DV=np.nan), {},
     r"^row 4 \(ID 2\), column DV: received a missing DV on an observation record \(EVID=0, MDV=0\).*Set MDV=1"),
    ("IDs in separate blocks", base().iloc[[0, 1, 3, 4, 2]], {},
     r"^row 4 \(ID 1\), column ID: ID 1 appears in separate blocks \(rows 0-1, then again from row 4\); "
     r"expected each subject's records to be contiguous"),
    ("missing ID", with_values(base(), 2, ID=np.nan), {},
     r"^row 2 \(ID missing\), column ID: received a missing ID"),
    ("'.' as ID", with_values(base(), 4, ID="."), {}, r"^row 4 \(ID \.\), column ID: received a missing ID"),
    ("covariate missing for a subject", base(WT=[70.0, 70.0, np.nan, np.nan, np.nan]), {"covariates": ("WT",)},
     r"^row 3 \(ID 2\), column WT: received no value of covariate 'WT' for ID 2 \(all 2 records missing\)"),
    ("covariate column absent", base(), {"covariates": ("HT",)},
     r"Covariate column 'HT' not found; received columns \['ID', 'TIME'"),
    ("ID as covariate", base(), {"covariates": ("id",)}, r"Covariate 'id' is the ID column"),
    ("unknown EVID", with_values(base(), 1, EVID=7), {},
     r"^row 1 \(ID 1\), column EVID: received EVID=7; expected EVID in \{0 observation, 1 dose, 2 other, "
     r"3 reset, 4 reset and dose\}"),
    ("RATE on an observation", base(RATE=[0, 2.0, 0, 0, 0]), {},
     r"^row 1 \(ID 1\), column RATE: received RATE=2 on an observation \(EVID=0\) record; expected RATE=0"),
    ("II on an observation", base(II=[0, 0, 0, 0, 12.0]), {},
     r"^row 4 \(ID 2\), column II: received II=12 on an observation \(EVID=0\) record"),
    ("ADDL on a covariate record", with_values(base(ADDL=[0] * 5), 2, EVID=2, MDV=1, CMT=0, ADDL=1), {},
     r"^row 2 \(ID 1\), column ADDL: received ADDL=1 on an other-type \(EVID=2\) record"),
    ("SS on a reset", with_values(base(SS=[0] * 5), 2, EVID=3, MDV=1, DV=np.nan, SS=1), {},
     r"^row 2 \(ID 1\), column SS: received SS=1 on a reset \(EVID=3\) record"),
    ("two DVIDs without mapping", base(DVID=[0, 1, 2, 0, 1]), {},
     r"^row 2 \(ID 1\), column DVID: observation records have DVID values \[1, 2\]; .*"
     r"dvid_outputs=\{1: 'conc', \.\.\.\}.*df\[df\.DVID != 2\]"),
    ("DVID without mapping", base(DVID=[0, 1, 3, 0, 1]), {"dvid_outputs": {1: "conc"}},
     r"^row 2 \(ID 1\), column DVID: received DVID=3 on an observation record; expected a DVID listed in "
     r"dvid_outputs=\{1: 'conc'\}.*df\[df\.DVID != 3\]"),
    ("dvid_outputs without DVID column", base(), {"dvid_outputs": {1: "conc"}},
     r"dvid_outputs=\{1: 'conc'\} was given but the table has no DVID column"),
    ("missing DVID", base(DVID=[0, 1, np.nan, 0, 1]), {},
     r"^row 2 \(ID 1\), column DVID: received a missing DVID on an observation record"),
    ("fractional DVID", base(DVID=[0, 1, 1.5, 0, 1]), {"dvid_outputs": {1: "conc"}},
     r"^row 2 \(ID 1\), column DVID: received DVID=1\.5; expected a whole number"),
    ("SS on a nonlinear model", base(SS=[1, 0, 0, 0, 0], II=[24.0, 0, 0, 0, 0]),
     {"model": popkpd.MichaelisMentenOneCompartment()},
     r"^row 0 \(ID 1\), column SS: received SS=1; expected no steady-state doses: SS=1 is not supported for "
     r"nonlinear models \(MichaelisMentenOneCompartment has linear=False\)"),
    ("SS=2", base(SS=[2, 0, 0, 0, 0], II=[24.0, 0, 0, 0, 0]), {},
     r"^row 0 \(ID 1\), column SS: received SS=2; expected SS 0 or 1: SS=2 \(superposition\) and SS=3 are not supported"),
    ("SS=3", base(SS=[0, 0, 0, 3, 0], II=[0, 0, 0, 24.0, 0]), {}, r"^row 3 \(ID 2\), column SS: received SS=3"),
    ("SS=5", base(SS=[5, 0, 0, 0, 0]), {}, r"^row 0 \(ID 1\), column SS: received SS=5; expected SS in \{0, 1\}"),
    ("SS dose without II", base(SS=[1, 0, 0, 0, 0]), {},
     r"^row 0 \(ID 1\), column II: received II=0 on an SS=1 dose; expected II > 0 on a steady-state dose"),
    ("SS infusion with ADDL", with_values(base(SS=[1, 0, 0, 0, 0], RATE=[5.0, 0, 0, 0, 0], ADDL=[1, 0, 0, 0, 0]),
                                          0, AMT=0.0), {},
     r"^row 0 \(ID 1\), column ADDL: received ADDL=1 on a steady-state infusion; expected ADDL=0"),
    ("negative ADDL", base(ADDL=[-3, 0, 0, 0, 0]), {},
     r"^row 0 \(ID 1\), column ADDL: received ADDL=-3; expected ADDL >= 0: the negative ADDL of NONMEM 7\.5's "
     r"empirical steady state is not supported"),
    ("fractional ADDL", base(ADDL=[1.5, 0, 0, 0, 0], II=[12.0, 0, 0, 0, 0]), {},
     r"^row 0 \(ID 1\), column ADDL: received ADDL=1\.5; expected a whole number"),
    ("huge ADDL", base(ADDL=[10**7, 0, 0, 0, 0], II=[1.0, 0, 0, 0, 0]), {},
     r"^row 0 \(ID 1\), column ADDL: received ADDL=10000000; expected at most 100000 additional doses"),
    ("negative II", base(II=[-1.0, 0, 0, 0, 0]), {},
     r"^row 0 \(ID 1\), column II: received II=-1; expected II >= 0"),
    ("II without ADDL", base(II=[12.0, 0, 0, 0, 0]), {},
     r"^row 0 \(ID 1\), column II: received II=12 with ADDL=0; .*ADDL > 0 if and only if II > 0"),
    ("invalid RATE", base(RATE=[-3.0, 0, 0, 0, 0]), {},
     r"^row 0 \(ID 1\), column RATE: received RATE=-3; expected RATE 0 \(bolus\), > 0 \(infusion rate\), "
     r"-1 \(modelled rate\) or -2 \(modelled duration\)"),
    ("MDV=100", with_values(base(), 1, MDV=100), {},
     r"^row 1 \(ID 1\), column MDV: received MDV=100; expected MDV 0 or 1.*100/101 .* not supported"),
    ("MDV=2", with_values(base(), 1, MDV=2), {}, r"^row 1 \(ID 1\), column MDV: received MDV=2; expected MDV 0 or 1"),
    ("MDV=0 on a dose", with_values(base(), 3, MDV=0), {},
     r"^row 3 \(ID 2\), column MDV: received MDV=0 on an EVID=1 record; expected MDV=1 on every EVID 1-4 record"),
    ("EVID 2 with CMT", with_values(base(), 2, EVID=2, MDV=1, CMT=2), {},
     r"^row 2 \(ID 1\), column CMT: received CMT=2 on an EVID=2 record; expected CMT=0 on EVID=2 records: "
     r"turning compartments on/off is not supported"),
    ("CENS and BLQ", base(CENS=[0] * 5, BLQ=[0] * 5), {}, r"both a CENS and a BLQ column"),
    ("CENS=2", base(CENS=[0, 2, 0, 0, 0]), {},
     r"^row 1 \(ID 1\), column CENS: received CENS=2; expected CENS in \{0 quantified, 1 below LLOQ"),
    ("BLQ=2", base(BLQ=[0, 0, 0, 0, 2]), {}, r"^row 4 \(ID 2\), column BLQ: received BLQ=2; expected BLQ 0"),
    ("BLQ without LLOQ column", base(BLQ=[0, 1, 0, 0, 0]), {},
     r"^row 1 \(ID 1\), column BLQ: received BLQ=1 but the table has no LLOQ column"),
    ("BLQ without LLOQ value", base(BLQ=[0, 1, 0, 0, 0], LLOQ=[np.nan] * 5), {},
     r"^row 1 \(ID 1\), column LLOQ: received LLOQ=missing on a BLQ=1 record"),
    ("LIMIT above LLOQ", base(CENS=[0, 1, 0, 0, 0], LIMIT=[np.nan, 9.0, np.nan, np.nan, np.nan]), {},
     r"^row 1 \(ID 1\), column LIMIT: received LIMIT=9 with the LLOQ 5 \(left-censored\); expected LIMIT < LLOQ"),
    ("LIMIT below ULOQ", base(CENS=[0, 0, 0, 0, -1], LIMIT=[np.nan, np.nan, np.nan, np.nan, 1.0]), {},
     r"^row 4 \(ID 2\), column LIMIT: received LIMIT=1 with the ULOQ 6 \(right-censored\); expected LIMIT > ULOQ"),
    ("case-duplicate columns", base(dv=[1.0] * 5), {},
     r"Columns 'DV' and 'dv' both name the DV column \(names are case-insensitive\)"),
    ("duplicated column names", pd.concat([base(), base()[["AMT"]]], axis=1), {},
     r"The table has duplicated column names \['AMT'\]"),
    ("empty table", base().iloc[:0], {}, r"has no rows"),
]


@pytest.mark.parametrize("name, df, kwargs, pattern", CASES, ids=[c[0] for c in CASES])
def test_error_message(name, df, kwargs, pattern):
    kwargs = dict(kwargs)
    model = kwargs.pop("model", ONE)
    with pytest.raises(DataError, match=pattern):
        read_nonmem(df, model, **kwargs)


def test_error_counts_rows_and_names_first():
    df = base()
    df.loc[[1, 2, 4], "AMT"] = 1.0
    with pytest.raises(DataError, match=r"^row 1 \(ID 1\).*\(3 rows have this problem; the first is shown\)"):
        read_nonmem(df, ONE)


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


def test_unparseable_csv(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('ID,TIME,DV,AMT\n1,0,"unterminated,1\n')
    with pytest.raises(DataError, match=r"Could not parse .*bad\.csv as a CSV table"):
        read_nonmem(path, ONE)


def test_text_cells_in_csv_name_the_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("ID,TIME,DV,AMT\n1,0,.,100\n1,1,<LLOQ,.\n")
    with pytest.raises(DataError, match=r"^row 1 \(ID 1\), column DV: received the text '<LLOQ'"):
        read_nonmem(path, ONE)


def test_bad_arguments():
    with pytest.raises(TypeError, match=r"source must be a CSV path or a pandas DataFrame, received list"):
        read_nonmem([1, 2], ONE)
    with pytest.raises(TypeError, match=r"model must be a structural model .* received str"):
        read_nonmem(base(), "OneCompartment")
    with pytest.raises(ValueError, match=re.escape("maps DVID 1 to 'amount', which is not an output of OneCompartment")):
        read_nonmem(base(DVID=[0, 1, 1, 0, 1]), ONE, dvid_outputs={1: "amount"})
    with pytest.raises(ValueError, match=r"dvid_outputs key 1\.5 is not a whole number"):
        read_nonmem(base(DVID=[0, 1, 1, 0, 1]), ONE, dvid_outputs={1.5: "conc"})
    with pytest.raises(ValueError, match=r"covariates lists 'WT' twice"):
        read_nonmem(base(WT=[70.0] * 5), ONE, covariates=("WT", "WT"))
