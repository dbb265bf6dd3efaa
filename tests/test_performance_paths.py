"""The fast paths of ``simulate`` give the same numbers as the references.

* ``solver="expm"`` (exact linear propagator) against the closed forms (themselves checked
  against scipy in test_analytic.py) over every dose type, and against an event-driven scipy
  solve for a time-varying parameter; its gradients against the closed form's; the matrix
  exponential's reverse-mode derivative (custom VJP of its squaring loop) against scipy's
  Frechet derivative.
* ``sensitivity="forward"`` (per-subject forward-mode Jacobian behind a custom VJP): the same
  values as the default, gradients equal to the reverse-mode ones and to finite differences (a
  linear model; a nonlinear one in a slow test), and to a hand-derived gradient for a
  time-varying parameter.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import popkpd
from popkpd import closed_form, simulate
from popkpd._ode.simulate import _expm

from .helpers import finite_difference_grad, make_events
from .test_analytic import EXTRA, make_model, make_params, reference_states, regimen

# every dose type of the closed-form tests, 2-compartment, with and without depot (lag, F)
# (ss_depot covers SS boluses and SS zero-order inputs into the depot, with lag and F)
EXPM_CASES = [(2, False, name) for name in ("infusion", "ss_infusion", "reset")] + [
    (2, True, name) for name in ("oral", "ss_depot")] + [(3, True, "infusion"), (1, True, "oral")]


@pytest.mark.parametrize("n, depot, name", EXPM_CASES)
def test_expm_matches_closed_form_and_scipy(n, depot, name):
    doses, obs = regimen(name, depot, n)
    if name.startswith("ss_") and name != "ss_bolus":
        # drop the steady-state infusion that lasts longer than II: simulate's SS state assumes
        # duration <= II for both propagators (diffrax and expm); the closed form covers it
        doses = [d for d in doses if not (d.get("ss") and d.get("rate", 0) > 0 and d["time"] >= 30.0)]
    p = make_params(n, depot, **EXTRA)
    ev = make_events([(doses, obs)])
    model = make_model(n, depot)
    sol = simulate(model, p, ev, solver="expm")
    exact = closed_form(model, p, ev)
    scale = float(np.abs(np.asarray(exact.states)).max())
    np.testing.assert_allclose(sol.states, exact.states, rtol=1e-9, atol=1e-11 * scale)
    np.testing.assert_allclose(sol.pred, exact.pred, rtol=1e-9, atol=1e-11 * scale)
    ref = reference_states(n, depot, p, doses, obs)
    np.testing.assert_allclose(sol.states[0], ref, rtol=1e-8, atol=1e-10 * scale)
    assert int(sol.result[0]) == 0 and int(sol.num_steps[0]) == 0


def test_expm_reference_regimen_many_subjects_matches_closed_form():
    model = popkpd.TwoCompartment()
    regimen_ = popkpd.Regimen.every(7, popkpd.SC(100.0), start=0, count=6)
    obs = np.array([0.5, 1.0, 6.99, 7.0, 7.01, 20.0, 35.5, 56.0])
    ev = regimen_.to_events(model, obs, n_subjects=5, until=56.0)
    rng = np.random.default_rng(1)
    p = dict(cl=0.5 * np.exp(0.3 * rng.standard_normal(5)), vc=4.0 * np.exp(0.3 * rng.standard_normal(5)),
             ka=0.3 * np.exp(0.3 * rng.standard_normal(5)), q=0.5, vp=3.0)
    p["ka"][0] = p["cl"][0] / p["vc"][0]  # an eigenvalue meets -ka: no special case needed
    np.testing.assert_allclose(simulate(model, p, ev, solver="expm").pred, closed_form(model, p, ev).pred, rtol=1e-10)


def test_expm_time_varying_parameter_matches_scipy():
    # CL changes on the covariate grid (value of record i covers (t_{i-1}, t_i]), with an infusion
    # that starts and stops between grid points and an SC dose
    m = popkpd.TwoCompartment()
    doses = [dict(time=0.0, amt=100.0, cmt=0), dict(time=4.0, amt=50.0, cmt=1, rate=20.0)]
    obs_t = [1.0, 4.5, 6.0, 9.0, 12.0, 20.0]
    ev = make_events([(doses, [dict(time=t) for t in obs_t])], n_covariates=1)
    cov_time = jnp.array([[0.0, 3.0, 5.0, 10.0]])
    ev = eqx.tree_at(lambda e: (e.cov_time, e.cov_value, e.cov_mask), ev,
                     (cov_time, jnp.zeros((1, 4, 1)), jnp.ones((1, 4), bool)))
    cl = np.array([[0.5, 0.5, 1.5, 0.8]])
    p = dict(cl=cl, vc=4.0, q=0.5, vp=3.0, ka=0.3)
    sol = simulate(m, p, ev, solver="expm")

    # reference: scipy between all break points, CL and the input taken at each interval's midpoint
    def cl_at(t):  # (0, 3] -> 0.5, (3, 5] -> 1.5, (5, 10] and after -> 0.8
        return 0.5 if t <= 3.0 else (1.5 if t <= 5.0 else 0.8)

    breaks = sorted({0.0, 3.0, 4.0, 5.0, 6.5, 10.0, *obs_t})
    y, ref = np.array([100.0, 0.0, 0.0]), {}
    for lo, hi in zip(breaks[:-1], breaks[1:]):
        mid = 0.5 * (lo + hi)
        k, u = cl_at(mid), (20.0 if 4.0 <= mid < 6.5 else 0.0)
        a = np.array([[-0.3, 0.0, 0.0], [0.3, -(k + 0.5) / 4.0, 0.5 / 3.0], [0.0, 0.5 / 4.0, -0.5 / 3.0]])
        y = solve_ivp(lambda t, x: a @ x + np.array([0.0, u, 0.0]), (lo, hi), y, method="DOP853",
                      rtol=1e-12, atol=1e-14).y[:, -1]
        ref[hi] = y
    ref = np.array([ref[t] for t in obs_t])
    np.testing.assert_allclose(sol.states[0], ref, rtol=1e-9, atol=1e-10)


def test_expm_observation_at_dose_time_respects_file_order():
    doses = [dict(time=0.0, amt=100.0, cmt=0, row=0), dict(time=7.0, amt=100.0, cmt=0, row=2)]
    obs = [dict(time=7.0, row=1), dict(time=7.0, row=3)]
    ev = make_events([(doses, obs)])
    sol = simulate(popkpd.OneCompartment(absorption=False), dict(cl=1.0, vc=10.0), ev, solver="expm")
    pre = 100 / 10 * np.exp(-0.1 * 7)
    np.testing.assert_allclose(sol.pred[0], [pre, pre + 10.0], rtol=1e-12)


def test_expm_gradient_equals_closed_form_gradient():
    model = make_model(2, True)
    doses, obs = regimen("ss_depot", True)
    # (without the observation at 12.4 = 12 + tlag, where the prediction has a kink in tlag)
    obs = [o for o in obs if o["time"] != 12.4]
    ev = make_events([(doses[:3] + [dict(time=40.0, amt=50.0, cmt=1, rate=-1.0)], obs)])  # SS, bolus, SS input, IV
    base = make_params(2, True, **EXTRA)
    names = ["cl", "vc", "q", "vp", "ka", "tlag", "f_bio", "dur_depot", "rate_central"]

    def loss(x, solve):
        p = dict(base, **dict(zip(names, x)))
        return jnp.sum(jnp.log(solve(model, p, ev, throw=False).pred[0, 2:]))  # from t = 1 (after the lag)

    x = jnp.asarray([base[k] for k in names])
    g_expm = jax.grad(loss)(x, lambda *a, **k: simulate(*a, solver="expm", **k))
    g_cf = jax.grad(loss)(x, closed_form)
    np.testing.assert_allclose(g_expm, g_cf, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("scale", [1e-6, 0.3, 5.0, 80.0, 3e3, 2e4])
def test_matrix_exponential_matches_scipy(scale):
    import scipy.linalg

    rng = np.random.default_rng(int(scale * 1e6) % 2**32)
    for n in (1, 3, 5):
        # compartment-like (negative diagonal, non-negative off-diagonal), and a rotation part
        x = rng.uniform(0.0, 1.0, (n, n)) - np.diag(rng.uniform(1.0, 2.0, n) * n)
        x = scale * (x + (np.triu(x, 1) - np.triu(x, 1).T) * 0.5)
        got = np.asarray(jax.jit(_expm)(jnp.asarray(x)))
        ref = scipy.linalg.expm(x)
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12 * max(1.0, np.abs(ref).max()))
    assert np.isnan(np.asarray(_expm(jnp.eye(2) * -3e6))).all()  # beyond 20 squarings: NaN, not garbage


def test_matrix_exponential_gradient_matches_scipy_frechet_derivative():
    """Reverse mode through the squaring loop (custom VJP, one trip count per batch): under nested
    vmap, with scales that need 0 to about 15 squarings side by side, the gradient of sum(W * expm(A))
    equals the Frechet derivative L(A^T, W) from scipy for every matrix."""
    import scipy.linalg

    rng = np.random.default_rng(7)
    scales = np.array([[1e-3, 0.5, 40.0], [3e3, 2.0, 1e-8]])
    a = np.empty(scales.shape + (3, 3))
    for idx in np.ndindex(scales.shape):
        x = rng.uniform(0.0, 1.0, (3, 3)) - np.diag(rng.uniform(1.0, 2.0, 3) * 3)
        a[idx] = scales[idx] * x
    w = rng.standard_normal(a.shape)

    def loss(a, w):
        return jnp.sum(w * _expm(a))

    grad = jax.jit(jax.vmap(jax.vmap(jax.grad(loss))))(jnp.asarray(a), jnp.asarray(w))
    for idx in np.ndindex(scales.shape):
        _, ref = scipy.linalg.expm_frechet(a[idx].T, w[idx])
        np.testing.assert_allclose(grad[idx], ref, rtol=1e-9, atol=1e-12 * max(1.0, np.abs(ref).max()))
    # the same matrices one at a time (no batching rule involved)
    one = np.asarray(jax.grad(loss)(jnp.asarray(a[1, 0]), jnp.asarray(w[1, 0])))
    np.testing.assert_allclose(one, grad[1, 0], rtol=1e-12)


def test_matrix_exponential_forward_mode_is_a_clear_error():
    """Second derivatives need forward over reverse mode, which the squaring loop has not: a
    TypeError that says so (find_map catches it and differentiates the gradient instead)."""
    a = jnp.asarray([[-1.0, 0.2], [0.3, -2.0]])
    with pytest.raises(TypeError, match="reverse-mode derivative only.*finite differences of the gradient"):
        jax.hessian(lambda a: jnp.sum(_expm(a)))(a)


def test_expm_needs_a_linear_model():
    ev = make_events([([dict(time=0.0, amt=100.0, cmt=0)], [dict(time=1.0)])])
    with pytest.raises(ValueError, match="solver='expm' needs a linear model.*MichaelisMenten.*tsit5"):
        simulate(popkpd.MichaelisMentenOneCompartment(), dict(vmax=1.0, km=1.0, vc=1.0, ka=1.0), ev, solver="expm")


# --- forward-mode sensitivities --------------------------------------------------------------------


def _weekly_events(n_subjects, n_doses=3, obs_t=(1.0, 8.0, 15.5, 30.0)):
    subject = ([dict(time=7.0 * k, amt=100.0, cmt=0) for k in range(n_doses)], [dict(time=t) for t in obs_t])
    return make_events([subject] * n_subjects)


@pytest.mark.parametrize("model, p", [
    (popkpd.TwoCompartment(), dict(cl=[0.5, 0.7], vc=[4.0, 3.0], q=0.5, vp=3.0, ka=[0.3, 0.9])),
    pytest.param(popkpd.MichaelisMentenOneCompartment(), dict(vmax=[20.0, 12.0], km=2.0, vc=[10.0, 8.0], ka=1.2),
                 marks=pytest.mark.slow),
], ids=["2cmt", "michaelis-menten"])
def test_forward_sensitivity_gradient_equals_reverse_and_finite_differences(model, p):
    ev = _weekly_events(2)
    names = list(p)

    def loss(x, sensitivity):
        q = {k: x[i] for i, k in enumerate(names)}
        sol = simulate(model, q, ev, rtol=1e-10, atol=1e-12, sensitivity=sensitivity, throw=False)
        return jnp.sum(jnp.log(sol.pred) ** 2) + jnp.sum(sol.states[..., 0])

    x = [jnp.broadcast_to(jnp.asarray(v, float), (2,)) for v in p.values()]
    g_fwd = jax.grad(loss)(x, "forward")
    g_rev = jax.grad(loss)(x, "reverse")
    np.testing.assert_allclose(float(loss(x, "forward")), float(loss(x, "reverse")), rtol=1e-13)
    for a, b in zip(g_fwd, g_rev):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-10)
    flat = np.concatenate([np.asarray(v) for v in x])
    unflat = lambda v: [jnp.asarray(v[2 * i:2 * i + 2]) for i in range(len(names))]  # noqa: E731
    fd = finite_difference_grad(lambda v: float(loss(unflat(v), "reverse")), flat, eps=1e-5)
    np.testing.assert_allclose(np.concatenate([np.asarray(a) for a in g_fwd]), fd, rtol=1e-4, atol=1e-7)


def test_forward_sensitivity_time_varying_parameter():
    m = popkpd.OneCompartment(absorption=False)
    ev = make_events([([dict(time=0.0, amt=100.0, cmt=0)], [dict(time=t) for t in (5.0, 10.0, 15.0, 25.0)])], n_covariates=1)
    ev = eqx.tree_at(lambda e: (e.cov_time, e.cov_value, e.cov_mask), ev,
                     (jnp.array([[0.0, 10.0, 20.0]]), jnp.zeros((1, 3, 1)), jnp.ones((1, 3), bool)))

    def loss(cl, sensitivity):
        return jnp.sum(simulate(m, dict(cl=cl, vc=10.0), ev, sensitivity=sensitivity, throw=False).pred)

    cl = jnp.array([[1.0, 1.0, 3.0]])
    g_fwd = jax.grad(loss)(cl, "forward")
    # by hand: C(t) = 10 exp(-int_0^t k), k = cl / 10 on (0, 10], cl_2 on (10, 20], ...
    c = np.array([10 * np.exp(-0.5), 10 * np.exp(-1.0), 10 * np.exp(-1.0 - 0.3 * 5), 10 * np.exp(-1.0 - 0.3 * 15)])
    # (cl_0 only acts at t = 0 itself, where the solver's first stage reads it: compare cl_0 + cl_1)
    d_first = -(c[0] * 5 + c[1] * 10 + c[2] * 10 + c[3] * 10) / 10
    d_second = -(c[2] * 5 + c[3] * 15) / 10
    np.testing.assert_allclose([g_fwd[0, 0] + g_fwd[0, 1], g_fwd[0, 2]], [d_first, d_second], rtol=1e-6)


def test_unknown_sensitivity_is_explained():
    with pytest.raises(ValueError, match=r"sensitivity='adjoint'.*expected 'reverse'.*'forward'"):
        simulate(popkpd.TwoCompartment(), dict(cl=0.5, vc=4.0, q=0.5, vp=3.0, ka=0.3), _weekly_events(1),
                 sensitivity="adjoint")


@pytest.mark.parametrize("solver", ["expm", "tsit5"])
def test_overlapping_steady_state_infusion_is_refused_with_a_clear_error(solver):
    # SS=1 infusion of 100 over 30 h (rate 100/30) every 24 h: the virtual train overlaps, which
    # simulate's steady state does not cover (closed_form does): an error naming the subject
    from popkpd import SolverError

    doses = [dict(time=0.0, amt=100.0, cmt=0, rate=100.0 / 30.0, ss=1, ii=24.0)]
    obs = [dict(time=t) for t in (1.0, 12.0, 30.0)]
    ev = make_events([(doses, obs), ([dict(time=0.0, amt=100.0, cmt=0, rate=100.0 / 20.0, ss=1, ii=24.0)], obs)])
    model = make_model(2, False)
    p = make_params(2, False)
    with pytest.raises(SolverError, match=r"1 of 2 subjects:\n  subject 0: a steady-state infusion .* lasts longer"):
        simulate(model, p, ev, solver=solver)
    sol = simulate(model, p, ev, solver=solver, throw=False)
    assert np.isnan(np.asarray(sol.pred[0])).all() and np.isfinite(np.asarray(sol.pred[1])).all()
    np.testing.assert_allclose(sol.pred[1], closed_form(model, p, ev).pred[1], rtol=1e-6)
