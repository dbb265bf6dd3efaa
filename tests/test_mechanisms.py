"""Mechanisms of docs/mechanisms.md (models/mechanisms.py).

These are model-property tests at typical parameter values (each drug's TYPICAL, with the changes
named in the test): they check the direction a mechanism predicts, not agreement with data. Where the
model at typical values does NOT show the stated mechanism (4: "the membrane-BCMA rise helps only in
some combinations"), the test asserts what the model does and says so (see docs/mechanisms.md).
All simulations run once per module (shared fixture).
"""

import numpy as np
import pytest

from models import mechanisms, teclistamab


@pytest.fixture(scope="module")
def results():
    return mechanisms.all_mechanisms()


def strictly_decreasing(x):
    return bool(np.all(np.diff(x) < 0))


def test_1_rising_sbcma_lowers_functional_drug_trimers_and_kill_monotonically(results):
    r = results["sbcma_and_et"]
    for j in range(len(r["et"])):
        assert strictly_decreasing(r["functional"][j])
        assert strictly_decreasing(r["functional_bm"][j])
        assert strictly_decreasing(r["trimers"][j])
        assert strictly_decreasing(r["reduction"][j])
        assert strictly_decreasing(r["reduction_84"][j])
        assert np.all(np.diff(r["tumour_end"][j]) >= 0)


def test_1_sbcma_800_abrogates_kill_while_the_typical_patient_responds(results):
    """Typical patient (E:T 0.27): at 800 ng/mL the marrow sink takes almost all functional drug,
    trimers per tumour cell fall below tau50_n, the tumour is not reduced (grows by day 182) and the
    IMWG best response is below PR; the typical patient (45 ng/mL) and 50 ng/mL respond (>= VGPR)."""
    r = results["sbcma_and_et"]
    typical = list(r["et"]).index(0.27)
    top, low = -1, list(r["sbcma_ng_ml"]).index(50.0)
    tau50_n = teclistamab.TYPICAL["tau50_n"]
    assert r["trimers"][typical, top] < 0.1 * tau50_n < 10 * tau50_n < r["trimers"][typical, low]
    assert r["functional_bm"][typical, top] < 1e-2 * r["functional_bm"][typical, 0]
    assert r["reduction"][typical, top] < 0.1 and r["reduction_84"][typical, top] < 0.1
    assert r["tumour_end"][typical, top] > 1.0
    assert r["best"][typical, top] in ("PD", "SD", "MR")
    assert r["best"][typical, low] in ("VGPR", "CR") and r["typical_best"] in ("VGPR", "CR")
    assert r["typical_reduction"] > 3.0


def test_2_bivalent_binder_loses_less_to_the_sink(results):
    r = results["valency"]
    assert r["bivalent"][0] == pytest.approx(1.0) and r["monovalent"][0] == pytest.approx(1.0)
    assert np.all(r["bivalent"][1:] > r["monovalent"][1:])
    assert strictly_decreasing(r["monovalent"]) and strictly_decreasing(r["bivalent"])


def test_3_higher_et_gives_more_reduction_at_every_sbcma_level(results):
    r = results["sbcma_and_et"]
    assert np.all(np.diff(r["reduction"], axis=0) > 0)


def test_4_gsi_lowers_sbcma_and_increases_kill(results):
    r = results["gsi"]
    assert np.all(r["sbcma_gsi"] < r["sbcma_none"])
    assert np.all(r["reduction_gsi"] > r["reduction_none"])
    assert np.all(r["bcma_fold_gsi"] > 1.5) and np.allclose(r["bcma_fold_none"], 1.0)


def test_4_membrane_bcma_rise_costs_more_than_it_helps_unevenly(results):
    """Net effect of the membrane-BCMA rise (GSI vs GSI with R_B held at R_B0): the rise also raises
    shedding (synthesis ~ R_B (1 - I), science.md L3), and with the marrow sink the extra sBCMA
    outweighs the extra trimers (psi is saturated where drug is available): the effect is negative
    in all nine combinations, not 'helps in some'. It is uneven: >= 10x larger at the highest burden
    than at the lowest, and it grows with burden at each E:T (more burden, more shed sBCMA)."""
    b = results["gsi"]["bcma_benefit"]
    assert np.all(b < 0)
    assert np.abs(b).max() > 10 * np.abs(b).min()
    assert np.all(np.diff(b, axis=0) < 0)  # more negative as burden rises


def test_5_continuous_exposure_accumulates_exhaustion(results):
    r = results["exhaustion"]["persistent"]
    continuous = list(results["exhaustion"]["schedules"]).index("QW continuous")
    assert r["exhausted_day34"][continuous] > 0.5  # X/E0 builds up from 0 during continuous dosing


def test_5_treatment_free_intervals_and_step_down_reduce_exhaustion(results):
    """Mean exhausted T cells over days 34-182: QW with treatment-free intervals, Q2W and Q4W all
    below continuous QW, and Q4W below Q2W, in the slow-kill patient and in the typical patient.
    Exhaustion follows CD3 occupancy, which falls with exposure (the trimers per T cell do not)."""
    e = results["exhaustion"]
    names = list(e["schedules"])
    qw, q2w, q4w = (names.index(k) for k in ("QW continuous", "Q2W from week 5", "Q4W from week 5"))
    for patient in ("persistent", "typical"):
        x = e[patient]["exhausted"]
        assert np.all(np.delete(x, qw) < x[qw]), patient
        assert x[q4w] < x[q2w], patient
    x = e["persistent"]["exhausted"]
    assert x[q4w] < 0.8 * x[qw]  # a material reduction, not a rounding difference


def test_6_debulking_lowers_sbcma_raises_et_and_improves_response(results):
    r = results["debulking"]
    assert strictly_decreasing(r["sbcma_ng_ml"]) and np.all(np.diff(r["et"]) > 0)
    assert np.all(np.diff(r["reduction"]) > 0) and np.all(np.diff(r["functional"]) > 0)


def test_7_step_up_lowers_first_dose_il6_peak_and_crs(results):
    r = results["step_up"]
    step, full = r["step-up"], r["full first dose"]
    assert step["first_peak"] < full["first_peak"] and step["week_peak"] < full["week_peak"]
    assert step["p_first"] == pytest.approx(mechanisms.CRS_AFTER_SUD1)
    assert step["p_first"] < full["p_first"] and step["p_any"] < full["p_any"]


def test_run_rejects_too_many_scenarios():
    from models import teclistamab

    scen = [(teclistamab.REGIMEN, {})] * (mechanisms.N_SUBJECTS + 1)
    with pytest.raises(ValueError, match=r"received 33 scenarios; expected at most 32"):
        mechanisms.run(teclistamab.MODEL, teclistamab.TYPICAL, scen)


def test_report_prints_the_documented_tables_from_the_results(results):
    """docs/mechanisms.md's tables are this output (python -m models.mechanisms); the typical-patient
    row of mechanism 1 and the exhaustion means appear as computed."""
    text = mechanisms.report(results)
    m = results["sbcma_and_et"]
    typ = list(m["et"]).index(0.27)
    assert "| IMWG best response (6 months) | " + " | ".join(m["best"][typ]) + " |" in text
    e = results["exhaustion"]["persistent"]["exhausted"]
    assert "| persistent: mean X/E0 days 34-182 | " + " | ".join(f"{x:.3g}" for x in e) + " |" in text
    assert text.count("### ") == 10
