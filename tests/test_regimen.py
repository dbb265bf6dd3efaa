"""Dosing regimens: schedules, compilation to Events / NONMEM tables, and input errors.

References are independent of the implementation: expected dose days are written out from the
approved labels (science.md §1.1-1.3) with plain loops, the NONMEM round trip goes through the data
reader, and the simulated concentrations are compared with closed-form superposition.
"""

import math
import re

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import popkpd
from popkpd._dosing import Bolus, Infusion, Regimen, SC, stack_events
from popkpd._dosing import regimen as regimen_module
from popkpd._events import Events, pad_events
from popkpd._structural.base import AbstractStructuralModel


def mgkg(x, **kw):
    return SC(x, per_kg=True, **kw)


def iv(mg, hours):
    return Infusion(mg, duration=hours / 24)


# The approved schedules (times in days, Day 1 = 0), as a user would write them.
TECLISTAMAB = Regimen.step_up([(0, mgkg(0.06)), (3, mgkg(0.3))]).then_every(7, mgkg(1.5), start=6)
ELRANATAMAB = (
    Regimen.step_up([(0, SC(12)), (3, SC(32))])
    .then_every(7, SC(76), start=7)
    .switch_interval(14, at=168)
    .switch_interval(28, at=336)
)
# 5 mg D1, 25 mg D8 (4 h infusions), 200 mg D15 and weekly to week 13 (10 doses), every 2 weeks
# from week 14; after the 17th 200 mg dose (day 161) every 4 weeks. Durations of the 200 mg
# infusions are illustrative (1 h).
LINVOSELTAMAB = (
    Regimen.step_up([(0, iv(5, 4)), (7, iv(25, 4))])
    .then_every(7, iv(200, 1), start=14, count=11)
    .then_every(14, iv(200, 1), start=91, count=6)
    .then_every(28, iv(200, 1), start=189)
)


class TwoDrugs(AbstractStructuralModel):
    """A bispecific (SC depot -> central) and an oral co-medication (gsi_depot -> gsi_central)."""

    states = ("depot", "central", "gsi_depot", "gsi_central")
    parameters = ("ka", "cl", "vc", "ka_gsi", "k_gsi", "v_gsi")
    outputs = ("conc", "gsi_conc")
    linear = True

    def vector_field(self, t, y, p):
        return jnp.stack([
            -p["ka"] * y[0],
            p["ka"] * y[0] - p["cl"] / p["vc"] * y[1],
            -p["ka_gsi"] * y[2],
            p["ka_gsi"] * y[2] - p["k_gsi"] * y[3],
        ])

    def output(self, t, y, p):
        return jnp.stack([y[1] / p["vc"], y[3] / p["v_gsi"]])


def assert_events_equal(a: Events, b: Events):
    for name in Events.__dataclass_fields__:
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        assert x.shape == y.shape, (name, x.shape, y.shape)
        assert x.dtype == y.dtype, (name, x.dtype, y.dtype)
        np.testing.assert_array_equal(x, y, err_msg=name)


# ---- schedules ---------------------------------------------------------------------------------


def test_teclistamab_six_months_for_74_kg():
    table = TECLISTAMAB.dose_table(weight=74, until=183)
    expected_days = [0, 3] + list(range(6, 183, 7))  # weekly from Day 7
    assert table["time"].tolist() == expected_days
    assert expected_days[:6] == [0, 3, 6, 13, 20, 27]
    expected_amounts = [0.06 * 74, 0.3 * 74] + [1.5 * 74] * (len(expected_days) - 2)
    np.testing.assert_allclose(table["amount"], expected_amounts, rtol=1e-15)
    assert (table["state"] == "depot").all() and (table["kind"] == "SC").all() and table["per_kg"].all()
    assert (table["rate"] == 0).all()
    # without a weight the amounts stay per kg
    np.testing.assert_allclose(TECLISTAMAB.dose_table(until=183)["amount"][:3], [0.06, 0.3, 1.5])


def test_elranatamab_weekly_then_every_two_then_four_weeks():
    table = ELRANATAMAB.dose_table(until=400)
    weekly = [7 * k for k in range(1, 24)]  # Day 8 ... week 24 (day 161)
    q2w = list(range(168, 336, 14))  # from week 25
    q4w = list(range(336, 400, 28))  # from week 49
    assert table["time"].tolist() == [0, 3] + weekly + q2w + q4w
    assert weekly[-1] == 161 and q2w[0] == 168
    assert table["amount"].tolist() == [12, 32] + [76] * (len(weekly) + len(q2w) + len(q4w))
    assert not table["per_kg"].any()


def test_linvoseltamab_iv_schedule_and_rates():
    table = LINVOSELTAMAB.dose_table(until=260)
    days = [0, 7] + list(range(14, 85, 7)) + list(range(91, 162, 14)) + list(range(189, 260, 28))
    assert table["time"].tolist() == days
    assert (table["amount"] == 200).sum() == 11 + 6 + 3
    assert table["amount"][:19].tolist() == [5, 25] + [200] * 17 and table["time"][18] == 161
    assert (table["kind"] == "Infusion").all() and (table["state"] == "central").all()
    np.testing.assert_allclose(table["rate"][:3], [5 / (4 / 24), 25 / (4 / 24), 200 / (1 / 24)], rtol=1e-14)
    np.testing.assert_allclose(table["duration"][:2], [4 / 24, 4 / 24])


def test_docstring_examples_build_the_same_regimens():
    doc = regimen_module.__doc__
    blocks = re.findall(r"::\n\n((?:    .*\n|\n)+)", doc)
    assert len(blocks) >= 4
    namespace = dict(Regimen=Regimen, SC=SC, Bolus=Bolus, Infusion=Infusion)
    for block in blocks:
        code = "\n".join(line[4:] for line in block.splitlines())
        exec(compile(code, "<regimen docstring>", "exec"), namespace)
    for name, ours in [("teclistamab", TECLISTAMAB), ("elranatamab", ELRANATAMAB)]:
        pd.testing.assert_frame_equal(namespace[name].dose_table(until=500), ours.dose_table(until=500))
    linvo = namespace["linvoseltamab"].dose_table(until=161.5)
    pd.testing.assert_frame_equal(linvo, LINVOSELTAMAB.dose_table(until=161.5))


@settings(max_examples=60, deadline=None)
@given(
    interval=st.sampled_from([1.0, 2.5, 7.0, 14.0]),
    start=st.floats(0, 20),
    a=st.floats(0, 120),
    width=st.floats(0.1, 60),
)
def test_pause_removes_exactly_the_doses_inside(interval, start, a, width):
    b = a + width
    base = Regimen.step_up([(0, SC(1)), (start / 2 + 0.01, SC(2))]) if start > 0.02 else Regimen()
    regimen = base + Regimen.every(interval, SC(5, state="other"), start=start)
    full = [(d.time, d.dose) for d in regimen.doses(until=200)]
    paused = [(d.time, d.dose) for d in regimen.pause(a, b).doses(until=200)]
    assert paused == [(t, d) for t, d in full if not (a <= t < b)]


def test_pause_then_resume_on_grid_and_restart_at_end():
    weekly = Regimen.every(7, SC(76), start=7)
    paused = weekly.pause(30, 60)
    assert [d.time for d in paused.doses(until=80)] == [7, 14, 21, 28, 63, 70, 77]
    restarted = weekly.stop(at=30).then_every(7, SC(76), start=60)
    assert [d.time for d in restarted.doses(until=80)] == [7, 14, 21, 28, 60, 67, 74]


def test_switch_interval_continues_from_the_next_scheduled_dose():
    # teclistamab's grid is 6 + 7k: "Q2W from week 25" starts at its first dose in week 25 (day 174)
    q2w = TECLISTAMAB.switch_interval(14, at=168)
    times = [d.time for d in q2w.doses(until=230)]
    assert times == [0, 3] + list(range(6, 174, 7)) + [174, 188, 202, 216]
    # switching at a scheduled dose keeps that dose
    assert [d.time for d in Regimen.every(7, SC(1), start=0).switch_interval(14, at=14).doses(until=60)] == [
        0, 7, 14, 28, 42, 56
    ]


def test_stop_after_a_duration_and_count():
    r = Regimen.every(7, SC(76), start=7).stop(at=7 + 7 * 4)
    assert r.is_finite and [d.time for d in r.doses()] == [7, 14, 21, 28]
    assert [d.time for d in Regimen.every(2.5, Bolus(1), start=1, count=3).doses()] == [1, 3.5, 6]
    assert [d.time for d in Regimen.every(2.5, Bolus(1), start=1, end=6).doses()] == [1, 3.5]
    assert Regimen.at([0, 3, 6], SC(1)).stop(at=3).doses()[-1].time == 0
    assert TECLISTAMAB.stop(at=20).last_dose_time() == 13 and Regimen().last_dose_time() is None


def test_explicit_days_and_per_kg_cap():
    r = Regimen.at([0, 2, 9.5], mgkg(2.0, max_amount=150))
    t = r.dose_table(weight=60)
    assert t["time"].tolist() == [0, 2, 9.5] and t["amount"].tolist() == [120, 120, 120]
    assert r.dose_table(weight=90)["amount"].tolist() == [150, 150, 150]  # 180 capped at 150
    ev = r.to_events(popkpd.OneCompartment(), [1, 10], weights=[60, 75, 90])
    np.testing.assert_allclose(np.asarray(ev.dose_amt), [[120] * 3, [150] * 3, [150] * 3])


def test_combined_co_treatment_order_and_states():
    gsi = Regimen.every(1, Bolus(100, state="gsi_depot"), start=0, count=3)
    both = TECLISTAMAB + gsi
    assert both == Regimen.combine(TECLISTAMAB, gsi)
    table = both.dose_table(until=4)
    assert list(zip(table["time"], table["state"])) == [
        (0, "depot"), (0, "gsi_depot"), (1, "gsi_depot"), (2, "gsi_depot"), (3, "depot")
    ]
    ev = both.to_events(TwoDrugs(), [0.5, 3], weights=70, outputs=("conc", "gsi_conc"), until=4)
    assert np.asarray(ev.dose_cmt)[0].tolist() == [0, 2, 2, 2, 0]
    assert np.asarray(ev.obs_time)[0].tolist() == [0.5, 0.5, 3, 3]
    assert np.asarray(ev.obs_output)[0].tolist() == [0, 1, 0, 1]
    # observation rows come before a dose at the same time (pre-dose samples)
    rows_d, rows_o = np.asarray(ev.dose_row)[0], np.asarray(ev.obs_row)[0]
    assert rows_o[2] < rows_d[4] and rows_o[3] < rows_d[4]


def test_regimens_are_immutable_and_hashable():
    with pytest.raises(AttributeError):
        TECLISTAMAB.phases = ()
    with pytest.raises(AttributeError):
        SC(1).amount = 2
    again = Regimen.step_up([(0, mgkg(0.06)), (3, mgkg(0.3))]).then_every(7, mgkg(1.5), start=6)
    assert again == TECLISTAMAB and hash(again) == hash(TECLISTAMAB)


# ---- compilation -------------------------------------------------------------------------------


def test_to_events_per_kg_scaling_and_infusion_rates():
    m = popkpd.OneCompartment(absorption=False)
    r = Regimen.at(0, Infusion(2.0, duration=0.5, per_kg=True)) + Regimen.at(3, Bolus(10))
    ev = r.to_events(m, [1, 2, 4], weights=[50, 80])
    np.testing.assert_allclose(np.asarray(ev.dose_amt), [[100, 10], [160, 10]])
    np.testing.assert_allclose(np.asarray(ev.dose_rate), [[200, 0], [320, 0]])
    assert np.asarray(ev.dose_cmt).tolist() == [[0, 0], [0, 0]]
    assert np.asarray(ev.dose_mask).all() and np.asarray(ev.obs_mask).all()
    np.testing.assert_array_equal(np.asarray(ev.obs_time), [[1, 2, 4]] * 2)
    assert np.isnan(np.asarray(ev.obs_limit)).all() and (np.asarray(ev.obs_dv) == 0).all()
    assert ev.cov_value.shape == (2, 5, 0)
    # n_subjects with a single weight, and flat regimens without weights
    assert Regimen.at(0, Bolus(1)).to_events(m, [1], n_subjects=3).n_subjects == 3
    assert r.to_events(m, [1], weights=70, n_subjects=4).n_subjects == 4


def test_open_ended_regimen_is_cut_at_the_last_observation():
    ev = TECLISTAMAB.to_events(popkpd.OneCompartment(), [1, 13, 20], weights=70)
    assert np.asarray(ev.dose_time)[0].tolist() == [0, 3, 6, 13]  # dose at 20 cannot affect a sample
    ev = TECLISTAMAB.to_events(popkpd.OneCompartment(), [1, 13, 20], weights=70, until=30)
    assert np.asarray(ev.dose_time)[0].tolist() == [0, 3, 6, 13, 20, 27]


def test_to_nonmem_table():
    m = popkpd.OneCompartment()
    table = TECLISTAMAB.to_nonmem(m, [1, 6], weights=[70, 80], ids=["a", "b"])
    assert list(table.columns) == ["ID", "TIME", "DV", "AMT", "EVID", "CMT", "MDV", "RATE", "WT"]
    a = table[table.ID == "a"]
    assert a["TIME"].tolist() == [0, 1, 3, 6]  # the dose at 6 is past the horizon (last sample 6)
    assert a["EVID"].tolist() == [1, 0, 1, 0] and a["MDV"].tolist() == [1, 0, 1, 0]
    assert a["CMT"].tolist() == [1, 0, 1, 0]  # depot is CMT 1; observations: default compartment
    np.testing.assert_allclose(a["AMT"], [0.06 * 70, 0, 0.3 * 70, 0])
    assert table[table.ID == "b"]["WT"].tolist() == [80] * 4
    flat = ELRANATAMAB.to_nonmem(m, [1], outputs="conc")
    assert "WT" not in flat and flat["DVID"].tolist() == [0, 1] and flat["ID"].tolist() == [1, 1]


def round_trip_cases():
    one = popkpd.OneCompartment()
    iv_model = popkpd.TwoCompartment(absorption=False)
    per_kg_iv = Infusion(3.0, duration=0.5, per_kg=True)
    weekly_iv = Regimen.step_up([(0, iv(5, 4)), (7, iv(25, 4))]).then_every(7, per_kg_iv, start=14)
    return [
        ("teclistamab", TECLISTAMAB, one, [0.5, 3, 6, 7, 13, 20.5, 27, 40], dict(weights=[74, 55, 102]), {}),
        ("elranatamab", ELRANATAMAB, one, np.linspace(0, 400, 41), dict(n_subjects=2), {}),
        ("iv per kg", weekly_iv, iv_model, [0, 1 / 24, 7, 14.01, 30], dict(weights=[70, 90]), {}),
        (
            "co-treatment, two outputs, covariates",
            TECLISTAMAB.pause(20, 34) + Regimen.every(1, Bolus(100, state="gsi_depot"), start=0, count=28),
            TwoDrugs(),
            [0, 2, 13, 27, 41],
            dict(weights=[60, 80], outputs=("conc", "gsi_conc"), covariates={"AGE": [50, 61]}),
            dict(dvid_outputs={1: "conc", 2: "gsi_conc"}, covariates=("AGE",)),
        ),
    ]


@pytest.mark.parametrize("case", round_trip_cases(), ids=lambda c: c[0])
def test_to_events_equals_read_nonmem_of_to_nonmem(case):
    data = pytest.importorskip("popkpd._data")
    if not hasattr(data, "read_nonmem"):
        pytest.skip("popkpd._data.read_nonmem is not available yet")
    _, regimen, model, times, kw, read_kw = case
    table = regimen.to_nonmem(model, times, **kw)
    assert_events_equal(data.read_nonmem(table, model, **read_kw).events, regimen.to_events(model, times, **kw))


def test_stack_events_matches_padding_of_all_subjects():
    m = popkpd.OneCompartment()
    e1 = TECLISTAMAB.to_events(m, [1, 5, 30], weights=[70, 80], covariates={"AGE": [40, 50]})
    e2 = Regimen.at(0, SC(10)).to_events(m, [2], covariates={"AGE": 60})
    stacked = stack_events([e1, e2], min_doses=8)
    # reference: pad_events over the real entries of every subject
    doses, obs, covs = [], [], []
    for e in (e1, e2):
        for i in range(e.n_subjects):
            dm, om, cm = (np.asarray(x[i]) for x in (e.dose_mask, e.obs_mask, e.cov_mask))
            dose_keys = ("time", "amt", "cmt", "rate", "ss", "ii", "reset", "row")
            doses.append({k: np.asarray(getattr(e, f"dose_{k}"))[i][dm] for k in dose_keys})
            obs_keys = ("time", "dv", "output", "cens", "limit", "row")
            obs.append({k: np.asarray(getattr(e, f"obs_{k}"))[i][om] for k in obs_keys})
            covs.append((np.asarray(e.cov_time)[i][cm], np.asarray(e.cov_value)[i][cm]))
    assert_events_equal(stacked, pad_events(doses, obs, covs, 1, min_doses=8))
    assert stacked.n_subjects == 3 and stacked.dose_time.shape[1] == 8


def test_simulated_concentrations_match_closed_form_superposition():
    # SC doses into the depot, an IV infusion and an IV bolus (at a sampling time: the sample is
    # pre-dose) into the central compartment, and an oral co-medication into its own depot: each
    # drug's closed form, summed over its doses.
    simulate = pytest.importorskip("popkpd._ode.simulate").simulate
    p = dict(cl=0.449, vc=4.13, ka=0.133, ka_gsi=2.0, k_gsi=0.7, v_gsi=50.0)
    k = p["cl"] / p["vc"]
    weights = np.array([55.0, 95.0])
    loading = Regimen.at(1, Infusion(0.5, duration=0.25, per_kg=True))
    gsi = Regimen.every(1, Bolus(100, state="gsi_depot"), start=2, count=10)
    regimen = TECLISTAMAB.pause(13, 20) + loading + gsi + Regimen.at(9.25, Bolus(5.0))
    times = np.array([0.5, 1.1, 3.0, 6.0, 9.25, 13.0, 20.0, 24.0])
    ev = regimen.to_events(TwoDrugs(), times, weights=weights, outputs=("conc", "gsi_conc"))
    sol = simulate(TwoDrugs(), p, ev)

    def oral(t, doses, ka, k, v):  # first-order absorption into one compartment
        c = np.zeros_like(t)
        for td, amount in doses:
            dt = np.maximum(t - td, 0)  # a dose at an observation time comes after the sample
            c += amount * ka / (v * (ka - k)) * (np.exp(-k * dt) - np.exp(-ka * dt))
        return c

    tec_days = [(0, 0.06), (3, 0.3), (6, 1.5), (20, 1.5)]  # 13 is inside the pause
    gsi_days = [(2.0 + j, 100.0) for j in range(10)]
    for i, w in enumerate(weights):
        rate = 0.5 * w / 0.25
        during, after = np.clip(times - 1, 0, 0.25), np.maximum(times - 1.25, 0)
        conc = oral(times, [(d, x * w) for d, x in tec_days], p["ka"], k, p["vc"])
        conc += rate / p["cl"] * (1 - np.exp(-k * during)) * np.exp(-k * after)
        conc += np.where(times > 9.25, 5.0 / p["vc"] * np.exp(-k * (times - 9.25)), 0.0)
        gsi_conc = oral(times, gsi_days, p["ka_gsi"], p["k_gsi"], p["v_gsi"])
        expected = np.stack([conc, gsi_conc], axis=1).ravel()
        np.testing.assert_allclose(np.asarray(sol.pred[i]), expected, rtol=1e-6, atol=1e-9)


# ---- input errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SC(0), r"SC amount: received 0; expected a finite number > 0"),
        (lambda: Bolus(-2.5), r"Bolus amount: received -2.5; expected a finite number > 0"),
        (lambda: SC(math.nan), r"SC amount: received nan"),
        (lambda: SC("5"), r"SC amount: received '5'"),
        (lambda: SC(1, per_kg="yes"), r"per_kg=...\): received 'yes'; expected True"),
        (lambda: Infusion(5, duration=0), r"Infusion duration: received 0; expected a finite number > 0.*Bolus"),
        (lambda: Infusion(5, duration=-1), r"Infusion duration: received -1"),
        (lambda: SC(76, max_amount=100), r"received a cap on a flat dose.*per_kg=True"),
        (lambda: SC(1, per_kg=True, max_amount=0), r"SC max_amount: received 0"),
        (lambda: SC(1, state=""), r"state=...\): received ''; expected the name of a state"),
        (lambda: Regimen.at(-1, SC(1)), r"received -1; expected a finite number >= 0.*negative times"),
        (lambda: Regimen.step_up([(0, SC(1)), (-3, SC(2))]), r"received -3; expected a finite number >= 0"),
        (lambda: Regimen.every(7, SC(1), start=-7), r"received -7.*negative times are not allowed"),
        (lambda: Regimen.every(0, SC(1)), r"Regimen.every interval: received 0; expected a finite number > 0"),
        (lambda: Regimen.every(-7, SC(1)), r"Regimen.every interval: received -7"),
        (lambda: TECLISTAMAB.switch_interval(0, at=168), r"switch_interval interval: received 0"),
        (lambda: Regimen.every(7, SC(1), end=10, count=2), r"received end=10 and count=2; expected one of them"),
        (lambda: Regimen.every(7, SC(1), count=0), r"count: received 0; expected a whole number of doses >= 1"),
        (lambda: Regimen.every(7, SC(1), count=2.5), r"count: received 2.5"),
        (lambda: Regimen.every(7, SC(1), start=10, end=5), r"received start=10 and end=5; expected end > start"),
        (lambda: Regimen.at([0, 3], [SC(1)] * 3), r"received 2 times and 3 doses"),
        (lambda: Regimen.at([], SC(1)), r"received no times"),
        (lambda: Regimen.at(0, 5.0), r"received 5.0 \(float\); expected a dose such as SC"),
        (lambda: Regimen.step_up([(3, SC(1)), (0, SC(2))]), r"received times \[3.0, 0.0\]; expected strictly"),
        (lambda: Regimen.step_up([0, 3]), r"expected a non-empty list of \(time, dose\) pairs"),
        (lambda: Regimen.every(7, SC(1)).pause(10, 5), r"pause: received start=10, end=5; expected end > start"),
        (lambda: Regimen.every(7, SC(1)).stop(at=-1), r"stop at: received -1"),
        (lambda: Regimen.combine(TECLISTAMAB, SC(1)), r"Regimen.combine: received SC; expected Regimen"),
    ],
)
def test_bad_values_are_rejected(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_contradicting_phases_are_rejected():
    step = Regimen.step_up([(0, mgkg(0.06)), (3, mgkg(0.3)), (6, mgkg(1.5))])
    with pytest.raises(ValueError, match=r"received start=6, but the regimen's last dose is at 6; expected start > 6"):
        step.then_every(7, mgkg(1.5), start=6)
    with pytest.raises(ValueError, match=r"two instantaneous doses into state 'depot' at time 6.*summed amount"):
        step + Regimen.every(7, mgkg(1.5), start=6)
    with pytest.raises(ValueError, match=r"already has an open-ended phase \(SC 1.5/kg into 'depot' every 7 from 6\)"):
        TECLISTAMAB.then_every(14, mgkg(1.5), start=200)
    # two open-ended grids that first collide beyond the construction check: caught when compiled
    clash = Regimen.every(7, SC(1), start=0) + Regimen.every(10, SC(1), start=1000)
    with pytest.raises(ValueError, match=r"two instantaneous doses into state 'depot' at time 1050"):
        clash.dose_table(until=2000)
    with pytest.raises(ValueError, match=r"two infusions into state 'central' at time 0"):
        Regimen.at(0, iv(5, 4)) + Regimen.at(0, iv(1, 1))
    Regimen.at(0, iv(5, 4)) + Regimen.at(0, Bolus(1))  # a loading bolus with an infusion is fine


def test_switch_interval_needs_exactly_one_running_phase():
    with pytest.raises(ValueError, match=r"received a regimen with 0 periodic phases scheduled at or after 168"):
        Regimen.step_up([(0, SC(1)), (3, SC(2))]).switch_interval(14, at=168)
    both = TECLISTAMAB + Regimen.every(1, Bolus(100, state="gsi_depot"))
    with pytest.raises(ValueError, match=r"received a regimen with 2 periodic phases.*before combining"):
        both.switch_interval(14, at=168)


def test_open_ended_regimen_needs_a_horizon():
    with pytest.raises(ValueError, match=r"open-ended \(SC 1.5/kg into 'depot' every 7 from 6\).*until="):
        TECLISTAMAB.dose_table()
    with pytest.raises(ValueError, match=r"open-ended"):
        TECLISTAMAB.to_events(popkpd.OneCompartment(), [], weights=70)


def test_compile_errors_name_the_dose():
    no_depot = popkpd.OneCompartment(absorption=False)
    with pytest.raises(ValueError, match=r"SC 12 into 'depot' \(first at time 0\) targets state 'depot', but "
                                         r"OneCompartment has states \('central',\)"):
        ELRANATAMAB.to_events(no_depot, [1])
    with pytest.raises(ValueError, match=r"SC 0.06/kg into 'depot' \(first at time 0\) is dosed per kg, but no "
                                         r"weights were given.*weights="):
        TECLISTAMAB.to_events(popkpd.OneCompartment(), [1])
    with pytest.raises(ValueError, match=r"per kg, but no weights"):
        TECLISTAMAB.to_nonmem(popkpd.OneCompartment(), [1])
    m = popkpd.OneCompartment()
    cases = [
        (dict(weights=[70, -1]), r"weights: received -1 for subject 1; expected body weights in kg"),
        (dict(weights=[70, 80], n_subjects=3), r"received 2 weights for n_subjects=3"),
        (dict(weights=70, n_subjects=0), r"n_subjects: received 0"),
        (dict(weights=70, outputs="auc"), r"outputs: received 'auc'; expected outputs of OneCompartment: \('conc',"),
        (dict(weights=70, covariates={"AGE": [1, 2]}), r"covariates\['AGE'\]: received \[1, 2\]; expected one finite"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            TECLISTAMAB.to_events(m, [1, 2], **kw)
    with pytest.raises(ValueError, match=r"observation_times: received 2 then 1 \(positions 0, 1\); expected strictly"):
        TECLISTAMAB.to_events(m, [2, 1], weights=70)
    with pytest.raises(ValueError, match=r"observation_times: received -1 at position 0"):
        TECLISTAMAB.to_events(m, [-1, 1], weights=70)
    with pytest.raises(TypeError, match=r"expected a structural model"):
        TECLISTAMAB.to_events("OneCompartment", [1], weights=70)
    with pytest.raises(ValueError, match=r"ids: received 1 ids \(1 distinct\) for 2 subjects"):
        TECLISTAMAB.to_nonmem(m, [1], weights=[70, 80], ids=[1])
    with pytest.raises(ValueError, match=r"covariates: received the name 'WT'.*weights="):
        TECLISTAMAB.to_nonmem(m, [1], weights=70, covariates={"WT": 70})


def test_stack_events_errors():
    m = popkpd.OneCompartment()
    with pytest.raises(TypeError, match=r"expected a non-empty sequence of Events"):
        stack_events([])
    a = Regimen.at(0, SC(1)).to_events(m, [1])
    b = Regimen.at(0, SC(1)).to_events(m, [1], covariates={"AGE": 50})
    with pytest.raises(ValueError, match=r"received Events with \[0, 1\] covariates"):
        stack_events([a, b])
