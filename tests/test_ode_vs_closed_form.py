"""The ODE path against the closed forms over a 6-month weekly SC regimen with step-up doses."""

import jax.numpy as jnp
import numpy as np
import pytest

import popkpd
from popkpd import SC, Infusion, Regimen, closed_form, simulate

SIX_MONTHS = 182.0


def stepup_weekly():
    kg = lambda x: SC(x, per_kg=True)  # noqa: E731
    return Regimen.step_up([(0, kg(0.06)), (3, kg(0.3))]).then_every(7, kg(1.5), start=6)


@pytest.mark.parametrize(
    "model, params",
    [
        (popkpd.OneCompartment(bioavailable_fraction=True), dict(cl=[0.45, 0.9], vc=[4.1, 6.0], ka=[0.13, 0.3], f_bio=0.72)),
        (popkpd.TwoCompartment(), dict(cl=[0.45, 0.9], vc=[4.1, 6.0], q=0.04, vp=1.34, ka=[0.13, 0.3])),
        (popkpd.ThreeCompartment(lag_time=True), dict(cl=[0.45, 0.9], vc=[4.1, 6.0], q=0.2, vp=1.3, q2=0.05, vp2=3.0, ka=0.2, tlag=0.25)),
    ],
    ids=["1cmt-F", "2cmt", "3cmt-lag"],
)
def test_ode_matches_closed_form_six_month_stepup(model, params):
    obs = np.concatenate([np.linspace(0.1, SIX_MONTHS, 60), [3.0, 6.0, 13.0]])
    obs.sort()
    ev = stepup_weekly().to_events(model, obs, weights=[74.0, 55.0], until=SIX_MONTHS)
    p = {k: jnp.asarray(v, float) for k, v in params.items()}
    exact = closed_form(model, p, ev)
    ode = simulate(model, p, ev)
    np.testing.assert_allclose(ode.states, exact.states, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ode.pred, exact.pred, rtol=1e-6, atol=1e-9)


def test_ode_matches_closed_form_iv_infusions():
    model = popkpd.TwoCompartment(absorption=False)
    regimen = Regimen.step_up([(0, Infusion(5, duration=4 / 24)), (7, Infusion(25, duration=4 / 24))]).then_every(
        7, Infusion(200, duration=1 / 24), start=14
    )
    obs = np.linspace(0.05, 90.0, 40)
    ev = regimen.to_events(model, obs, n_subjects=1, until=90.0)
    p = dict(cl=0.3, vc=3.5, q=0.3, vp=3.0)
    np.testing.assert_allclose(simulate(model, p, ev).pred, closed_form(model, p, ev).pred, rtol=1e-6, atol=1e-9)
