"""The ODE core against scipy (independent piecewise solve_ivp at rtol 1e-11)."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import popkpd
from popkpd._ode import simulate as sim_mod
from popkpd._ode.simulate import SolverError, simulate

from .helpers import finite_difference_grad, make_events, scipy_solve

P2 = dict(cl=0.5, vc=4.0, q=0.5, vp=3.0, ka=0.3)


def rhs_2cmt_depot(p):
    def f(t, y, u):
        a, c, pp = y
        return np.array([
            -p["ka"] * a,
            p["ka"] * a - p["cl"] / p["vc"] * c - p["q"] / p["vc"] * c + p["q"] / p["vp"] * pp,
            p["q"] / p["vc"] * c - p["q"] / p["vp"] * pp,
        ]) + u
    return f


def weekly_sc(n=6, amt=100.0):
    return [dict(time=7.0 * k, amt=amt, cmt=0) for k in range(n)]


def test_sc_multiple_doses_match_scipy():
    obs_t = [0.5, 1.0, 6.99, 7.0, 7.01, 20.0, 35.5, 56.0]
    ev = make_events([(weekly_sc(), [dict(time=t) for t in obs_t])])
    sol = simulate(popkpd.TwoCompartment(), P2, ev)
    ref = scipy_solve(rhs_2cmt_depot(P2), np.zeros(3), [dict(time=d["time"], cmt=0, amount=d["amt"]) for d in weekly_sc()], obs_t)
    np.testing.assert_allclose(sol.states[0], ref, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(sol.pred[0], ref[:, 1] / P2["vc"], rtol=1e-6)
    assert int(sol.result[0]) == 0


def test_observation_at_dose_time_respects_file_order():
    # same time 7.0: the first observation row comes before the dose row (pre-dose), the second after
    doses = [dict(time=0.0, amt=100.0, cmt=0, row=0), dict(time=7.0, amt=100.0, cmt=0, row=2)]
    obs = [dict(time=7.0, row=1), dict(time=7.0, row=3)]
    ev = make_events([(doses, obs)])
    m = popkpd.OneCompartment(absorption=False)
    sol = simulate(m, dict(cl=1.0, vc=10.0), ev)
    pre = 100 / 10 * np.exp(-0.1 * 7)
    np.testing.assert_allclose(sol.pred[0], [pre, pre + 10.0], rtol=1e-7)


@pytest.mark.parametrize("rate_code", [5.0, -1.0, -2.0])
def test_infusions_match_scipy(rate_code):
    m = popkpd.TwoCompartment(absorption=False)
    p = dict(cl=0.5, vc=4.0, q=0.5, vp=3.0, rate_central=20.0, dur_central=2.5)
    doses = [dict(time=0.0, amt=50.0, cmt=0, rate=rate_code), dict(time=3.0, amt=50.0, cmt=0, rate=rate_code)]
    obs_t = [0.5, 2.5, 3.0, 4.0, 10.0, 12.0, 30.0]
    ev = make_events([(doses, [dict(time=t) for t in obs_t])])
    sol = simulate(m, p, ev)
    rate = {5.0: 5.0, -1.0: 20.0, -2.0: 50.0 / 2.5}[rate_code]

    def f(t, y, u):
        c, pp = y
        return np.array([-p["cl"] / p["vc"] * c - p["q"] / p["vc"] * c + p["q"] / p["vp"] * pp,
                         p["q"] / p["vc"] * c - p["q"] / p["vp"] * pp]) + u

    ref = scipy_solve(f, np.zeros(2), [dict(time=d["time"], cmt=0, amount=50.0, rate=rate) for d in doses], obs_t)
    np.testing.assert_allclose(sol.states[0], ref, rtol=1e-6, atol=1e-9)


def test_lag_and_bioavailability_match_scipy():
    m = popkpd.OneCompartment(lag_time=True, bioavailable_fraction=True)
    p = dict(cl=2.0, vc=20.0, ka=1.5, tlag=0.75, f_bio=0.6)
    doses = [dict(time=0.0, amt=100.0, cmt=0), dict(time=12.0, amt=100.0, cmt=0)]
    obs_t = [0.5, 0.75, 1.0, 5.0, 12.5, 12.75, 13.0, 24.0]
    ev = make_events([(doses, [dict(time=t) for t in obs_t])])
    sol = simulate(m, p, ev)

    def f(t, y, u):
        return np.array([-p["ka"] * y[0], p["ka"] * y[0] - p["cl"] / p["vc"] * y[1]]) + u

    ref = scipy_solve(f, np.zeros(2), [dict(time=d["time"] + 0.75, cmt=0, amount=60.0) for d in doses], obs_t)
    np.testing.assert_allclose(sol.states[0], ref, rtol=1e-6, atol=1e-9)


def test_steady_state_bolus_equals_many_doses():
    m = popkpd.TwoCompartment()
    many = make_events([(weekly_sc(n=80), [dict(time=79 * 7.0 + t) for t in (0.5, 3.0, 6.9)])])
    ss = make_events([([dict(time=79 * 7.0, amt=100.0, cmt=0, ss=1, ii=7.0)], [dict(time=79 * 7.0 + t) for t in (0.5, 3.0, 6.9)])])
    np.testing.assert_allclose(simulate(m, P2, ss).pred, simulate(m, P2, many).pred, rtol=1e-6)


def test_steady_state_infusion_equals_many_infusions():
    m = popkpd.TwoCompartment(absorption=False)
    p = dict(cl=0.5, vc=4.0, q=0.5, vp=3.0)
    obs = [dict(time=100 * 7.0 + t) for t in (0.5, 1.0, 3.0, 6.9)]
    many = make_events([([dict(time=7.0 * k, amt=70.0, cmt=0, rate=35.0) for k in range(101)], obs)])
    ss = make_events([([dict(time=700.0, amt=70.0, cmt=0, rate=35.0, ss=1, ii=7.0)], obs)])
    np.testing.assert_allclose(simulate(m, p, ss).pred, simulate(m, p, many).pred, rtol=1e-6)


def test_steady_state_rejected_for_nonlinear_model():
    ev = make_events([([dict(time=0.0, amt=100.0, cmt=0, ss=1, ii=12.0)], [dict(time=1.0)])])
    with pytest.raises(ValueError, match="SS=1.*linear"):
        simulate(popkpd.MichaelisMentenOneCompartment(), dict(vmax=1.0, km=1.0, vc=1.0, ka=1.0), ev)


def test_reset_restarts_from_initial_state():
    m = popkpd.OneCompartment(absorption=False)
    doses = [dict(time=0.0, amt=100.0, cmt=0), dict(time=10.0, amt=0.0, cmt=0, reset=True),
             dict(time=20.0, amt=50.0, cmt=0, reset=True), dict(time=20.0 + 1e-9, amt=0.0, cmt=0)]
    obs_t = [5.0, 15.0, 25.0]
    ev = make_events([(doses, [dict(time=t) for t in obs_t])])
    sol = simulate(m, dict(cl=1.0, vc=10.0), ev)
    np.testing.assert_allclose(sol.pred[0], [10 * np.exp(-0.5), 0.0, 5 * np.exp(-0.5)], rtol=1e-7, atol=1e-12)


def test_michaelis_menten_matches_scipy():
    m = popkpd.MichaelisMentenOneCompartment()
    p = dict(vmax=20.0, km=2.0, vc=10.0, ka=1.2)
    doses = [dict(time=0.0, amt=200.0, cmt=0), dict(time=24.0, amt=200.0, cmt=0)]
    obs_t = [0.5, 2.0, 8.0, 24.0, 30.0, 48.0]
    ev = make_events([(doses, [dict(time=t) for t in obs_t])])
    sol = simulate(m, p, ev)

    def f(t, y, u):
        c = y[1] / p["vc"]
        return np.array([-p["ka"] * y[0], p["ka"] * y[0] - p["vmax"] * c / (p["km"] + c)]) + u

    ref = scipy_solve(f, np.zeros(2), [dict(time=d["time"], cmt=0, amount=200.0) for d in doses], obs_t)
    np.testing.assert_allclose(sol.states[0], ref, rtol=1e-6, atol=1e-9)
    sol_k = simulate(m, p, ev, solver="kvaerno5")
    np.testing.assert_allclose(sol_k.states[0], ref, rtol=1e-6, atol=1e-9)


def test_time_varying_parameter_uses_nonmem_interval_convention():
    # CL is 1 on records up to t=10 and 3 from the record at t=20: value of record i covers (t_{i-1}, t_i]
    m = popkpd.OneCompartment(absorption=False)
    ev = make_events([([dict(time=0.0, amt=100.0, cmt=0)], [dict(time=t) for t in (5.0, 10.0, 15.0, 20.0, 25.0)])], n_covariates=1)
    cov_time = jnp.array([[0.0, 5.0, 10.0, 15.0, 20.0, 25.0]])
    ev = eqx.tree_at(lambda e: (e.cov_time, e.cov_value, e.cov_mask), ev,
                     (cov_time, jnp.zeros((1, 6, 1)), jnp.ones((1, 6), bool)))
    cl = jnp.array([[1.0, 1.0, 1.0, 3.0, 3.0, 3.0]])  # (10, 15] has CL=3
    sol = simulate(m, dict(cl=cl, vc=10.0), ev)
    c10 = 10 * np.exp(-0.1 * 10)
    expected = [10 * np.exp(-0.5), c10, c10 * np.exp(-0.3 * 5), c10 * np.exp(-0.3 * 10), c10 * np.exp(-0.3 * 15)]
    np.testing.assert_allclose(sol.pred[0], expected, rtol=1e-7)


def test_vmap_over_subjects_equals_one_by_one():
    subjects = [(weekly_sc(n=k + 2), [dict(time=t) for t in (1.0, 9.0, 30.0)][: k + 1]) for k in range(3)]
    ev = make_events(subjects)
    p = dict(cl=jnp.array([0.4, 0.5, 0.7]), vc=jnp.array([3.0, 4.0, 5.0]), q=0.5, vp=3.0, ka=0.3)
    together = simulate(popkpd.TwoCompartment(), p, ev)
    for i, s in enumerate(subjects):
        alone = simulate(popkpd.TwoCompartment(), {k: jnp.broadcast_to(v, (3,))[i:i + 1] for k, v in p.items()}, make_events([s]))
        n_obs = len(s[1])
        np.testing.assert_allclose(together.pred[i, :n_obs], alone.pred[0, :n_obs], rtol=1e-12)


def test_jit_once_per_shape():
    m = popkpd.TwoCompartment()
    ev = make_events([(weekly_sc(), [dict(time=t) for t in (1.0, 2.0, 3.0)])] * 2)
    before = eqx.debug.get_num_traces(sim_mod._simulate_jit)
    for cl in (0.3, 0.5, 0.7):
        simulate(m, dict(P2, cl=cl), ev)
    assert eqx.debug.get_num_traces(sim_mod._simulate_jit) - before == 1


def _loss(params_vec, ev, adjoint):
    p = dict(zip(("cl", "vc", "q", "vp", "ka"), params_vec))
    return simulate(popkpd.TwoCompartment(), p, ev, adjoint=adjoint).pred.sum()


@pytest.mark.parametrize("adjoint", [diffrax.RecursiveCheckpointAdjoint(), diffrax.ForwardMode()])
def test_gradients_match_finite_differences(adjoint):
    ev = make_events([(weekly_sc(n=3), [dict(time=t) for t in (1.0, 8.0, 15.5, 30.0)])])
    x = np.array([0.5, 4.0, 0.5, 3.0, 0.3])
    if isinstance(adjoint, diffrax.ForwardMode):
        g = jax.jacfwd(_loss)(jnp.asarray(x), ev, adjoint)
    else:
        g = jax.grad(_loss)(jnp.asarray(x), ev, adjoint)
    fd = finite_difference_grad(lambda v: float(_loss(jnp.asarray(v), ev, adjoint)), x, eps=1e-5)
    np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-4, atol=1e-7)


def test_solver_failure_names_subject_and_parameters():
    ev = make_events([(weekly_sc(), [dict(time=50.0)])] * 2)
    with pytest.raises(SolverError, match=r"subject 7:.*'cl'"):
        simulate(popkpd.TwoCompartment(), P2, ev, max_steps=3, subject_ids=[3, 7])


def test_missing_parameter_and_bad_shape_are_explained():
    ev = make_events([(weekly_sc(), [dict(time=1.0)])])
    with pytest.raises(ValueError, match=r"missing \['ka'\]"):
        simulate(popkpd.TwoCompartment(), dict(cl=1.0, vc=1.0, q=1.0, vp=1.0), ev)
    with pytest.raises(ValueError, match="shape"):
        simulate(popkpd.TwoCompartment(), dict(P2, cl=jnp.ones(3)), ev)
