"""Mechanisms of docs/mechanisms.md (models/mechanisms.py).

These are model-property tests at typical parameter values (each drug's TYPICAL, with the changes
named in the test): they check the direction a mechanism predicts, not agreement with data. Where the
model does not show a stated mechanism as stated, the test asserts what the model does and says so
(see docs/mechanisms.md).
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


def test_4_matched_inhibition_gives_the_per_cell_shedding_of_the_rise():
    """Closed form (L4): with the rise, R_B/R_B0 = K / (k_int_b + k_shed (1 - I)) at steady state and per-cell
    shedding is (R_B/R_B0)(1 - I); the matched arm (k_shed ~ 0, R_B = R_B0) sheds 1 - I'(c) with its own
    imax', ic50'. They must agree at every GSI exposure c."""
    t = teclistamab.TYPICAL
    m = mechanisms.matched_inhibition(t)
    c = np.geomspace(1e-3, 1e5, 200)
    inhibition = t["imax_gsi"] * c / (t["ic50_gsi"] + c)
    fold = (t["k_int_b"] + t["k_shed"]) / (t["k_int_b"] + t["k_shed"] * (1 - inhibition))
    matched = m["imax_gsi"] * c / (m["ic50_gsi"] + c)
    np.testing.assert_allclose(1 - matched, fold * (1 - inhibition), rtol=1e-12)
    assert m["k_shed"] < 1e-5 * t["k_int_b"]  # R_B/R_B0 = 1 + k_shed I / k_int_b stays 1 within 1e-6
    with pytest.raises(ValueError, match=r"received hill_gsi = 2.0; expected 1 .* Use hill_gsi = 1"):
        mechanisms.matched_inhibition({**t, "hill_gsi": 2.0})


def test_4_matched_arm_has_the_sbcma_of_the_gsi_arm(results):
    """Fairness of the counterfactual in the simulations: the matched arm's inhibition is the closed form
    of the GSI arm's at every time of the scan; membrane BCMA stays at R_B0 while the GSI arm's rises; with
    kill switched off (kmax = 0, both tumours grow alike) total sBCMA agrees within 1 % at every time over
    six months (the residue is the 1-2 h lag of R_B behind the GSI boluses)."""
    r = results["gsi"]
    assert r["inhibition_error"] < 1e-8
    assert np.allclose(r["bcma_fold_gsi_no_rise"], 1.0, atol=1e-5) and np.all(r["bcma_fold_gsi"] > 1.5)
    assert r["sbcma_error"] < 0.01
    assert r["shedding_no_rise"] == pytest.approx(r["shedding_gsi"], rel=0.01)


def test_4_membrane_bcma_rise_helps_only_in_some_combinations(results):
    """Effect of the membrane-BCMA rise at matched shedding over r_b0 x burden x E:T (``GSI_R_B0``,
    ``BURDENS``, ``GSI_SCAN_ET``), at tau50_n typical and calibrated (docs/mechanisms.md, item 4):
    it never costs (more BCMA, same sBCMA: more trimers), but it is nil where the marrow sink wins in
    both arms, and decides the six-month outcome only in a few combinations near the switch. Where psi
    is close to saturation (typical tau50_n) the effect falls with E:T; where psi << 1 (calibrated) it
    rises with E:T. Against the earlier counterfactual (k_shed = 0, less shedding) the rise costs in all
    nine combinations: the extra sBCMA it sheds outweighs the extra trimers."""
    from popkpd import RESPONSE_CATEGORIES

    rank = np.vectorize(RESPONSE_CATEGORIES.index)
    r = results["gsi"]
    rb, et = list(r["scan_r_b0"]), list(r["scan_et"])
    flips_expected = {"typical": {(5000, 3.0, 0.1), (12590, 3.0, 0.03)}, "calibrated": set()}  # (r_b0, burden, E:T)
    for name, s in r["scan"].items():
        b = s["benefit"]
        assert np.all(b > 0), name
        assert np.all(rank(s["best_gsi"]) >= rank(s["best_gsi_no_rise"])), name
        changed = rank(s["best_gsi"]) > rank(s["best_gsi_no_rise"])
        assert 1 <= changed.sum() <= b.size // 4, name  # some, not most
        control, control_no = s["tumour_end_gsi"] < 1, s["tumour_end_gsi_no_rise"] < 1
        assert not np.any(control_no & ~control), name  # the rise never turns control into growth
        flips = {(round(rb[i]), r["burden"][j], et[k]) for i, j, k in zip(*np.nonzero(control & ~control_no))}
        assert flips == flips_expected[name], name
        fail, both = ~control & ~control_no, control & control_no
        assert b[fail].max() < b[both].min(), name  # nil where the sink wins, larger wherever drug kills
        d_et = np.diff(b, axis=2)[both[..., 1:] & both[..., :-1]]
        assert d_et.size >= 3
        assert np.all(d_et < 0) if name == "typical" else np.all(d_et > 0), name
    assert r["scan"]["calibrated"]["psi_gsi"].max() < 0.5
    assert np.all(r["bcma_benefit"] > 0) and np.all(r["bcma_benefit_k_shed0"] < 0)


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
