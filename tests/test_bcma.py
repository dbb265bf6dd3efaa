"""The BCMA x CD3 model family (popkpd/_structural/bcma.py, sink.py, trimer.py, crs.py, units.py).

References used: scipy brentq roots of the binding equilibria; scipy LSODA solves of explicit
mass-action binding; the published HIBMA26 free fractions; closed-form logistic growth; budget
identities (amount in = eliminated + remaining) with eliminations computed from the outputs;
central finite differences for gradients.

Cost: each distinct model configuration compiles once (simulate, or a plain diffrax solve for the
gradient tests, which isolate the model from the dosing machinery); the heaviest checks (Kvaerno5
forward-mode gradients of the mass-action option) are marked slow.
"""

import functools
import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.optimize import brentq

from popkpd._ode.simulate import simulate
from popkpd._structural.base import AbstractStructuralModel
from popkpd._structural.bcma import BCMAModel, hill, kill_rate
from popkpd._structural.crs import (
    HIBMA26_CRS_COEFS,
    crs_probability,
    crs_probability_elranatamab,
    peak_per_interval,
)
from popkpd._structural.linear import TwoCompartment
from popkpd._structural.sink import (
    complex_amount,
    free_amounts,
    free_sbcma,
    functional_fraction,
    marrow_excess_binding,
    occupancy,
)
from popkpd._structural.trimer import trimer_qe
from popkpd._structural.units import (
    AVOGADRO,
    SBCMA_MW_KDA,
    mg_to_nmol,
    ng_per_ml_to_nm,
    nm_to_ng_per_ml,
    nmol_to_mg,
    receptors_to_nm,
)

from .helpers import make_events

# Typical values (science.md §1-2; teclistamab-like PK, HIBMA26-like sink, POELS25 IL-6 in days).
P = dict(
    cl=0.449, cl2=0.547, kdes=0.0292, imax_cl=-0.4, t50_cl=5.0, hill_cl=2.0,
    vc=4.13, q=0.039, vp=1.34, ka=0.133, f_bio=0.72,
    kd_s=0.5, k_s=0.55, k_x=0.043, s0=8.0, v_s=15.4, v_x=3.8,
    p_bm=0.5, x_sbm=3.0, v_bm=1.75, kd_b=0.18, kd_3=28.0, r_b0=5000.0, r_cd3=6e4, n0=6.55e9, e0=1.8e9, chi=100.0,
    avidity=10.0, koff_b=20.0, koff_3=285.0, k_bm=5.0,
    kg=0.008, nmax_rel=10.0, kmax=0.5, s_et=0.25, tau50_n=1000.0, hill_n=1.0, tau50_e=300.0, hill_e=1.0,
    eps_kill=0.1, k_out=0.05, k_act=2.0, k_exp=1.0, tcap_rel=10.0, k_con=0.1, k_exh=0.1, k_rec=0.3, k_dx=0.05,
    k_m=0.05, m0=20.0, k_l=4.0, l0=400.0,
    k_gsi=1.0, imax_gsi=0.9, ic50_gsi=50.0, hill_gsi=1.0, k_int_b=8.0, k_shed=18.0,
    emax_il6=1.934e6, ec50_il6=0.5, hill_il6=1.0, imax_ih=0.9, ic50_ih=416.7, hill_ih=2.5,
    ktr_il6=15.0, kdeg_il6=12.0, il6_0=2.0,
)

# HIBMA26 elranatamab (science.md §1.2): rates from CL/V
HIBMA26 = dict(cl=0.324, vc=4.777, vp=2.83, q=0.225, ka=0.287, f_bio=0.562, kd_s=3.138,
               k_s=0.273 / 15.418, v_s=15.418, k_x=0.164 / 3.802, v_x=3.802, s0=6.914)
ELRA_MW = 148.0

CONFIGS = [
    dict(layers=0),
    dict(layers=0, absorption=False, clearance="exponential"),
    dict(layers=1),
    dict(layers=1, sink_volumes="separate", clearance="sigmoid"),
    dict(layers=1, valency=2),
    dict(layers=(0, 2)),
    dict(layers=2, valency=2),
    dict(layers=2, binding="mass_action"),
    dict(layers=3),
    dict(layers=(0, 1, 4)),
    dict(layers=(0, 2, 5)),
    dict(layers=5, clearance="exponential", sink_volumes="separate"),
    dict(layers=5, valency=2, clearance="sigmoid"),
    dict(layers=5, binding="mass_action"),
]


def params_for(model, **changes):
    p = {k: jnp.asarray(v, float) for k, v in {**P, **changes}.items() if k in model.parameters}
    missing = set(model.parameters) - set(p)
    assert not missing, missing
    return p


def random_state(model, seed, drug=30.0):
    """A positive state away from baseline (for vector-field identities)."""
    rng = np.random.default_rng(seed)
    y = np.asarray(model.initial_state(params_for(model))) * rng.uniform(0.5, 1.5, len(model.states))
    for name in ("depot", "central", "peripheral"):
        if name in model.states:
            y[model.state_index(name)] = drug * rng.uniform(0.5, 2.0)
    for name in ("bcma_dimer", "cd3_dimer", "trimer", "useless_trimer"):
        if name in model.states:
            y[model.state_index(name)] = rng.uniform(0.01, 0.2)
    for name in ("drug_bm", "t_active", "t_exhausted", "gsi", "il6_bm", "cauc"):
        if name in model.states:
            y[model.state_index(name)] = rng.uniform(0.1, 2.0)
    return jnp.asarray(y)


# ---------------------------------------------------------------- L1 closed forms against brentq
GRID = [(d, s, kd) for d in (1e-6, 0.01, 1.0, 8.0, 100.0, 1e4) for s in (1e-3, 7.0, 74.0, 1e3)
        for kd in (0.03, 3.1, 100.0)]


@pytest.mark.parametrize("v_s, v_x", [(4.0, 4.0), (15.4, 3.8)])
def test_complex_and_free_amounts_match_brentq(v_s, v_x):
    vc = 4.0
    for drug, sbcma, kd in GRID:
        a1, a4 = drug * vc, sbcma * v_s  # amounts

        def equilibrium(x):  # Kd [X] - [D][s], decreasing in x
            return kd * x / v_x - (a1 - x) * (a4 - x) / (vc * v_s)

        def free_drug_eq(f):  # in the free drug amount f, increasing
            return f * (a4 - a1 + f) / (vc * v_s) - kd * (a1 - f) / v_x

        def free_sbcma_eq(g):
            return g * (a1 - a4 + g) / (vc * v_s) - kd * (a4 - g) / v_x

        x_ref = brentq(equilibrium, 0.0, min(a1, a4), xtol=1e-300, rtol=1e-15, maxiter=500)
        f_ref = brentq(free_drug_eq, 0.0, a1, xtol=1e-300, rtol=1e-15, maxiter=500)
        g_ref = brentq(free_sbcma_eq, 0.0, a4, xtol=1e-300, rtol=1e-15, maxiter=500)
        f, g, x = (float(v) for v in free_amounts(a1, a4, kd, vc, v_s, v_x))
        assert x == pytest.approx(float(complex_amount(a1, a4, kd, vc, v_s, v_x)), rel=1e-15)
        assert x == pytest.approx(x_ref, rel=1e-10), (drug, sbcma, kd)
        assert f == pytest.approx(f_ref, rel=1e-10), (drug, sbcma, kd)
        assert g == pytest.approx(g_ref, rel=1e-10), (drug, sbcma, kd)
        assert f + x == pytest.approx(a1, rel=1e-13) and g + x == pytest.approx(a4, rel=1e-13)


@pytest.mark.parametrize("valency", [1, 2])
def test_free_sbcma_matches_brentq(valency):
    for drug, sbcma, kd in GRID:
        def balance(s):  # S_tot = s + n D s/(Kd + s)
            return s + valency * drug * s / (kd + s) - sbcma

        s_ref = brentq(balance, 0.0, sbcma, xtol=1e-300, rtol=1e-15, maxiter=500)
        assert float(free_sbcma(drug, sbcma, kd, valency)) == pytest.approx(s_ref, rel=1e-10), (drug, sbcma, kd)


def test_monovalent_forms_agree_and_no_sbcma_means_no_binding():
    for drug, sbcma, kd in GRID:
        f, g, x = free_amounts(drug * 4.0, sbcma * 4.0, kd, 4.0, 4.0, 4.0)
        np.testing.assert_allclose(float(free_sbcma(drug, sbcma, kd, 1)), float(g) / 4.0, rtol=1e-12)
    f, g, x = free_amounts(12.0, 0.0, 3.1, 4.0, 15.0, 3.0)
    assert (float(f), float(g), float(x)) == (12.0, 0.0, 0.0)
    assert float(free_sbcma(3.0, 0.0, 3.1, 2)) == 0.0


@pytest.mark.parametrize("valency", [1, 2])
def test_marrow_excess_binding_matches_brentq(valency):
    """The marrow's local sBCMA excess binds the free BCMA arms at QE: brentq on the excess balance
    E = s' + (free arms) s'/(Kd + s'), then independent arms (binomial split of bivalent drug)."""
    for (full, part, bound) in [(20.0, 0.0, 1.0), (0.05, 0.3, 2.0), (500.0, 40.0, 0.0), (1e-4, 1e-3, 5.0)]:
        part = part if valency == 2 else 0.0
        for excess, kd in [(0.0, 0.5), (1e-3, 0.5), (74.0, 0.5), (700.0, 3.1), (5.0, 100.0)]:
            out = [float(v) for v in marrow_excess_binding(full, part, bound, excess, kd, valency)]
            if excess == 0.0:
                assert out == [full, part, bound]
                continue
            arms = valency * full + part
            s_ref = brentq(lambda s: s + arms * s / (kd + s) - excess, 0.0, excess, xtol=1e-300, rtol=1e-15)
            th = s_ref / (kd + s_ref)
            if valency == 1:
                ref = [full * (1 - th), 0.0, bound + full * th]
            else:
                ref = [full * (1 - th) ** 2, part * (1 - th) + 2 * full * th * (1 - th),
                       bound + part * th + full * th**2]
            np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-300)
            assert sum(out) == pytest.approx(full + part + bound, rel=1e-12)
            # sBCMA bound from the excess = BCMA arms newly occupied
            assert excess - s_ref == pytest.approx(arms - (valency * out[0] + out[1]), rel=1e-8)


def test_marrow_sbcma_excess_follows_shedding_and_lowers_functional_marrow_drug():
    """conc_functional_bm: with x_sbm = 0 it is p_bm x plasma functional drug; with an excess it is the
    brentq equilibrium of the marrow drug with x_sbm s0 (N/N0) of extra free sBCMA; it falls as x_sbm
    rises and rises as the tumour (which sheds the excess) shrinks."""
    m = BCMAModel(layers=3)
    y = m.initial_state(params_for(m)).at[m.state_index("central")].set(20.0 * P["vc"])
    k = m.output_index("conc_functional_bm")

    def functional(x_sbm, tumour=1.0):
        yy = y.at[m.state_index("tumour")].set(tumour)
        out = np.asarray(m.output(0.0, yy, params_for(m, x_sbm=x_sbm)))
        return out, float(out[k])

    out0, c0 = functional(0.0)
    assert c0 == pytest.approx(P["p_bm"] * out0[m.output_index("conc_functional")], rel=1e-14)
    values = []
    for x, tumour in [(3.0, 1.0), (9.0, 1.0), (30.0, 1.0), (9.0, 0.5), (9.0, 0.1)]:
        excess = x * P["s0"] * tumour
        s_ref = brentq(lambda s: s + c0 * s / (P["kd_s"] + s) - excess, 0.0, excess, xtol=1e-300, rtol=1e-15)
        values.append(functional(x, tumour)[1])
        assert values[-1] == pytest.approx(c0 * P["kd_s"] / (P["kd_s"] + s_ref), rel=1e-10)
    assert values[0] > values[1] > values[2] and values[1] < values[3] < values[4] < c0


def test_bivalent_drug_loses_less_to_the_sink():
    # same drug, sBCMA and per-arm Kd: the bivalent drug binds more sBCMA in total (two arms), yet
    # a smaller fraction of it is fully neutralised, so its functional fraction is larger
    for drug, sbcma, kd in GRID:
        th1 = occupancy(free_sbcma(drug, sbcma, kd, 1), kd)
        th2 = occupancy(free_sbcma(drug, sbcma, kd, 2), kd)
        assert th2 <= th1
        assert functional_fraction(th2, 2) >= functional_fraction(th1, 1)
        bound1, bound2 = drug * th1, 2 * drug * th2
        assert bound2 >= bound1 * (1 - 1e-12)
    # at s = Kd a monovalent drug is half neutralised, a bivalent one a quarter (science.md)
    assert float(functional_fraction(0.5, 1)) == 0.5 and float(functional_fraction(0.5, 2)) == 0.75


def test_sbcma_closed_forms_have_finite_gradients_at_the_edges():
    for args in [(0.0, 8.0, 3.1), (5.0, 0.0, 3.1), (1e-8, 1e3, 0.03), (1e4, 1e-3, 100.0)]:
        g = jax.grad(lambda a: free_sbcma(a[0], a[1], a[2], 2))(jnp.array(args))
        assert np.all(np.isfinite(g))
        g = jax.jacfwd(lambda a: jnp.stack(free_amounts(a[0], a[1], a[2], 4.0, 15.0, 3.8)))(jnp.array(args))
        assert np.all(np.isfinite(g))


# ---------------------------------------------------------------- units and CRS
def test_unit_conversions():
    assert ng_per_ml_to_nm(1.0, SBCMA_MW_KDA) == pytest.approx(0.185, abs=5e-4)
    assert ng_per_ml_to_nm(400.0, SBCMA_MW_KDA) == pytest.approx(74.07, abs=0.01)
    assert ng_per_ml_to_nm(100.0, 6.0) == pytest.approx(16.67, abs=0.01)
    assert nm_to_ng_per_ml(ng_per_ml_to_nm(304.0, 5.4), 5.4) == pytest.approx(304.0)
    assert mg_to_nmol(1.0, 146.0) == pytest.approx(6.849, abs=1e-3)
    assert nmol_to_mg(mg_to_nmol(76.0, 148.0), 148.0) == pytest.approx(76.0)
    # 1 ug/mL of a 146 kDa antibody is 6.85 nM
    assert ng_per_ml_to_nm(1000.0, 146.0) == pytest.approx(6.849, abs=1e-3)
    # 6.55e9 cells x 2000 BCMA in 0.37 L: 1.31e13 / (6.022e23 * 0.37) mol/L
    assert receptors_to_nm(6.55e9, 2000, 0.37) == pytest.approx(6.55e9 * 2000 / (AVOGADRO * 0.37) * 1e9)


@pytest.mark.parametrize("bad", [0.0, -146.0, float("nan")])
def test_unit_conversions_reject_bad_molecular_weight(bad):
    with pytest.raises(ValueError, match="mw_kda: received .*expected a finite number > 0.*kDa"):
        mg_to_nmol(1.0, bad)
    with pytest.raises(ValueError, match="mw_kda: received"):
        ng_per_ml_to_nm(1.0, bad)
    with pytest.raises(ValueError, match="volume_l: received"):
        receptors_to_nm(1.0, 1.0, bad)


def test_crs_probability_hibma26_exposure_form():
    for c, hb in [(100.0, 0), (212.0, 1), (1.0, 0), (5000.0, 1)]:
        logit = -7.65 + 1.35 * math.log(c) + 1.14 * hb
        assert float(crs_probability_elranatamab(c, hb)) == pytest.approx(1 / (1 + math.exp(-logit)), rel=1e-12)
    # odds ratios: exp(1.35) = 3.86 per log unit (science.md), exp(1.14) = 3.13 for high burden (quoted as 3.11)
    p1 = float(crs_probability(100.0, 0, HIBMA26_CRS_COEFS))
    p2 = float(crs_probability(100.0 * math.e, 0, HIBMA26_CRS_COEFS))
    assert (p2 / (1 - p2)) / (p1 / (1 - p1)) == pytest.approx(3.86, abs=0.01)
    p3 = float(crs_probability(100.0, 1, HIBMA26_CRS_COEFS))
    assert (p3 / (1 - p3)) / (p1 / (1 - p1)) == pytest.approx(3.13, abs=0.01)


def test_crs_probability_broadcasts_draws_and_jits():
    coefs = jnp.array([[-4.0, 1.3, 1.1], [-3.0, 1.0, 0.5]])
    p = crs_probability(jnp.array([10.0, 20.0]), 1.0, coefs)
    expected = [1 / (1 + math.exp(-(-4.0 + 1.3 * math.log(10) + 1.1))),
                1 / (1 + math.exp(-(-3.0 + math.log(20) + 0.5)))]
    np.testing.assert_allclose(p, expected, rtol=1e-12)
    jitted = jax.jit(lambda x: crs_probability(x, 0.0, (-4.0, 1.3, 1.1)))
    assert float(jitted(10.0)) == pytest.approx(float(crs_probability(10.0, 0.0, (-4.0, 1.3, 1.1))))


def test_crs_probability_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"coefs: received shape \(2,\); expected 3 coefficients"):
        crs_probability(10.0, 0, (1.0, 2.0))
    with pytest.raises(ValueError, match="il6_peak: received 0.0; expected finite values > 0"):
        crs_probability(0.0, 0, (1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="high_burden: received 2; expected 0 .* or 1"):
        crs_probability(10.0, 2, (1.0, 2.0, 3.0))


def test_peak_per_interval():
    t = jnp.array([0.0, 1.0, 2.0, 3.0, 4.0, 8.0])
    v = jnp.array([[1.0, 5.0, 2.0, 7.0, 3.0, 1.0]])
    peaks = peak_per_interval(t, v, jnp.array([0.0, 3.0, 9.0]))
    np.testing.assert_array_equal(peaks[0, :2], [5.0, 7.0])
    assert np.isnan(peaks[0, 2])


# ---------------------------------------------------------------- configuration and names
@pytest.mark.parametrize("kwargs, message", [
    (dict(layers=7), r"layers=\(7,\)\): expected an int 0-5"),
    (dict(layers="L3"), r"layers=.*expected an int 0-5 .* or a collection"),
    (dict(layers=(1, 2)), r"every model needs L0 .* layers=\(0, 1, 2\)"),
    (dict(layers=(0, 1, 3)), r"L3 \(tumour and T cells\) is driven by the trimers of L2.* layers=\(0, 1, 2, 3\)"),
    (dict(layers=(0, 1, 5)), r"L5 \(IL-6\) is driven by the trimers of L2"),
    (dict(layers=(0, 4)), r"L4 \(GSI\) acts through sBCMA shedding \(L1\) and membrane BCMA \(L2\)"),
    (dict(layers=1, valency=3), r"valency=3\): expected 1 .* or 2"),
    (dict(layers=1, clearance="linear"), r"clearance='linear'\): expected one of"),
    (dict(layers=2, binding="qss"), r"binding='qss'\): expected 'qe'"),
    (dict(layers=1, binding="mass_action"), r"L2 is not in layers; add 2"),
    (dict(layers=2, valency=2, binding="mass_action"), r"mass-action option is for monovalent drugs only"),
    (dict(layers=1, sink_volumes="own"), r"sink_volumes='own'\): expected 'shared'"),
    (dict(layers=0, sink_volumes="separate"), r"the sink volumes belong to L1"),
    (dict(layers=1, valency=2, sink_volumes="separate"), r"separate sink volumes are defined for monovalent"),
    (dict(layers=1, absorption="sc"), r"absorption='sc'\): expected True"),
])
def test_bad_configuration_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BCMAModel(**kwargs)


def test_names_per_layer():
    m0 = BCMAModel(layers=0)
    assert m0.states == ("depot", "central", "peripheral")
    assert m0.parameters == ("cl", "vc", "q", "vp", "ka", "f_bio")
    assert m0.outputs == ("conc",)
    assert BCMAModel(layers=0, absorption=False).states == ("central", "peripheral")  # IV: central is CMT 1
    m5 = BCMAModel(layers=5)
    assert m5.states[:4] == ("depot", "central", "peripheral", "sbcma")
    assert m5.outputs[-3:] == ("il6", "conc_functional_bm", "t_exhausted_fraction")
    assert "trimers_per_tumour_cell" in m5.outputs
    assert "t_exhausted_fraction" not in BCMAModel(layers=2).outputs
    assert "x_sbm" in m5.parameters and "x_sbm" not in BCMAModel(layers=(0, 2)).parameters
    assert "conc_functional_bm" not in BCMAModel(layers=1).outputs + BCMAModel(layers=(0, 2)).outputs
    assert BCMAModel(layers=range(4)) == BCMAModel(layers=3)
    assert "avidity" in BCMAModel(layers=2, valency=2).parameters
    assert "avidity" not in BCMAModel(layers=2).parameters
    assert {"koff_b", "koff_3", "k_bm"} <= set(BCMAModel(layers=2, binding="mass_action").parameters)
    for kw in CONFIGS:
        m = BCMAModel(**kw)
        assert len(set(m.states)) == len(m.states) and len(set(m.parameters)) == len(m.parameters)
        p = params_for(m)
        y = random_state(m, 0)
        assert m.vector_field(0.5, y, p).shape == (len(m.states),)
        assert m.output(0.5, y, p).shape == (len(m.outputs),)
        f = m.bioavailability(p)
        if m.absorption:
            assert float(f[0]) == P["f_bio"] and np.all(np.asarray(f[1:]) == 1.0)


# ---------------------------------------------------------------- vector-field identities
@pytest.mark.parametrize("kwargs", CONFIGS, ids=[str(c) for c in CONFIGS])
def test_drug_free_steady_state(kwargs):
    m = BCMAModel(**kwargs)
    p = params_for(m, kg=0.0)
    y0 = m.initial_state(p)
    np.testing.assert_array_equal(m.vector_field(3.0, y0, p), 0.0)
    if 3 in m.layers:  # an untreated tumour grows: only the tumour moves at baseline
        p = params_for(m)
        dy = np.asarray(m.vector_field(3.0, y0, p))
        k = m.state_index("tumour")
        assert dy[k] == pytest.approx(P["kg"] * (1 - 1 / P["nmax_rel"]))
        assert np.all(np.delete(dy, k) == 0.0)
    out = dict(zip(m.outputs, np.asarray(m.output(0.0, y0, p))))
    assert out["conc"] == 0.0
    if 1 in m.layers:
        assert out["sbcma_free"] == pytest.approx(P["s0"]) and out["sbcma_total"] == pytest.approx(P["s0"])
    if 2 in m.layers:
        assert out["trimers_per_tumour_cell"] == 0.0 and out["trimers_per_t_cell"] == 0.0
    if 3 in m.layers:
        assert out["t_exhausted_fraction"] == 0.0  # no exhausted cells without drug
    if 5 in m.layers:
        assert out["il6"] == P["il6_0"]


def test_exhausted_fraction_is_the_exhausted_share_of_the_t_cells():
    m = BCMAModel(layers=3)
    p = params_for(m)
    for seed in range(3):
        y = np.array(random_state(m, seed))
        y[m.state_index("t_active")], y[m.state_index("t_exhausted")] = 0.2 + 0.3 * seed, 0.1 + 0.2 * seed
        e, a, x = (y[m.state_index(s)] for s in ("t_resting", "t_active", "t_exhausted"))
        out = dict(zip(m.outputs, np.asarray(m.output(1.0, jnp.asarray(y), p))))
        assert out["t_exhausted_fraction"] == pytest.approx(x / (e + a + x), rel=1e-14)
        assert out["t_cells"] == pytest.approx(e + a + x, rel=1e-14)


def test_l0_is_the_linear_two_compartment_model():
    m, lin = BCMAModel(layers=0), TwoCompartment()
    p = params_for(m)
    for seed in range(3):
        y = random_state(m, seed)
        np.testing.assert_allclose(m.vector_field(1.0, y, p), lin.vector_field(1.0, y, p), rtol=1e-14)
    me = BCMAModel(layers=0, clearance="exponential")
    ms = BCMAModel(layers=0, clearance="sigmoid")
    t = 30.0
    assert float(me.clearance_at(t, params_for(me))) == pytest.approx(0.449 + 0.547 * math.exp(-0.0292 * t))
    assert float(ms.clearance_at(t, params_for(ms))) == pytest.approx(
        0.449 * math.exp(-0.4 * t**2 / (5.0**2 + t**2)))


@pytest.mark.parametrize("kwargs", [dict(sink_volumes="separate", clearance="exponential"), dict(valency=2), {}])
def test_without_sbcma_l1_reduces_to_l0_exactly(kwargs):
    m1 = BCMAModel(layers=1, **kwargs)
    m0 = BCMAModel(layers=0, clearance=m1.clearance)
    p = params_for(m1, s0=0.0)
    for seed in range(3):
        y = random_state(m1, seed).at[m1.state_index("sbcma")].set(0.0)
        dy1, dy0 = m1.vector_field(2.0, y, p), m0.vector_field(2.0, y[:3], p)
        np.testing.assert_array_equal(dy1[:3], dy0)  # bit for bit
        assert float(dy1[3]) == 0.0
        out = dict(zip(m1.outputs, np.asarray(m1.output(2.0, y, p))))
        assert out["conc"] == out["conc_free"] == out["conc_functional"] == float(m0.output(2.0, y[:3], p)[0])


def test_gsi_without_effect_changes_nothing():
    m3, m4 = BCMAModel(layers=3), BCMAModel(layers=4)
    p = params_for(m4, imax_gsi=0.0)
    shared = [m4.state_index(s) for s in m3.states]
    for seed in range(3):
        y = random_state(m4, seed).at[m4.state_index("bcma_fold")].set(1.0)
        dy4, dy3 = m4.vector_field(1.0, y, p), m3.vector_field(1.0, y[np.array(shared)], p)
        np.testing.assert_allclose(dy4[np.array(shared)], dy3, rtol=1e-14, atol=1e-300)
        assert float(dy4[m4.state_index("bcma_fold")]) == 0.0
        same = np.array([m4.output_index(k) for k in m3.outputs])
        np.testing.assert_allclose(m4.output(1.0, y, p)[same], m3.output(1.0, y[np.array(shared)], p), rtol=1e-14)


def test_gsi_raises_membrane_bcma_to_the_documented_fold():
    m = BCMAModel(layers=(0, 1, 2, 4))
    p = params_for(m, imax_gsi=1.0)
    y = m.initial_state(p).at[m.state_index("gsi")].set(1e20)  # full inhibition
    # steady state of d R/dt = (k_int + k_shed) - k_int R: R = 1 + k_shed/k_int
    y = y.at[m.state_index("bcma_fold")].set(1 + P["k_shed"] / P["k_int_b"])
    assert float(m.vector_field(0.0, y, p)[m.state_index("bcma_fold")]) == pytest.approx(0.0, abs=1e-12)
    # and sBCMA synthesis stops
    assert float(m.vector_field(0.0, y, p)[m.state_index("sbcma")]) == pytest.approx(
        -P["k_s"] * P["s0"] * P["vc"], rel=1e-12)


def exact_qe_trimers(c_full, c_part, c_cd3, kd_full, kd_b, kd_3, chi, bcma, cd3):
    """Equilibrium of the species B_free, T_free, drug-BCMA dimers (full and part-bound drug),
    drug-CD3 dimers and trimers with both receptors conserved, solved for T_free by brentq (nM)."""
    def free_bcma(t_free):
        return bcma / (1 + c_full / kd_full + c_part / kd_b + chi * t_free * (c_full / kd_full + c_part / kd_b) / kd_3)

    def trimers(t_free):
        return chi * free_bcma(t_free) * t_free * (c_full / kd_full + c_part / kd_b) / kd_3

    def cd3_balance(t_free):
        return t_free + t_free * c_cd3 / kd_3 + trimers(t_free) - cd3

    return trimers(brentq(cd3_balance, 0.0, cd3, xtol=1e-300, rtol=1e-15, maxiter=500))


def test_trimer_qe_matches_the_exact_equilibrium():
    for c in (1e-3, 0.1, 2.0, 50.0, 1e3):
        for chi in (1.0, 100.0, 1e4):
            for bcma, cd3 in ((0.03, 0.1), (2.0, 0.01), (1e-4, 5.0)):
                for c_part, c_cd3, kd_full in ((0.0, c, 0.18), (0.3 * c, 1.5 * c, 0.018)):
                    args = (c, c_part, c_cd3, kd_full, 0.18, 28.0, chi, bcma, cd3)
                    tri = float(trimer_qe(*args))
                    assert tri == pytest.approx(exact_qe_trimers(*args), rel=1e-10), args
                    assert tri < min(bcma, cd3)


def test_trimer_qe_is_bell_shaped_with_peak_at_sqrt_kb_k3():
    # few receptors (science.md's regime): chi B T C / ((K_B + C)(K_3 + C)), peak at sqrt(K_B K_3)
    c = np.logspace(-3, 3, 20001)
    tri = np.asarray(trimer_qe(c, 0.0, c, 0.18, 0.18, 28.0, 1.0, 3e-7, 1e-6))
    np.testing.assert_allclose(tri, 3e-7 * 1e-6 * c / ((0.18 + c) * (28.0 + c)), rtol=1e-7)
    assert c[np.argmax(tri)] == pytest.approx(math.sqrt(0.18 * 28.0), rel=1e-3)
    # with many receptors and strong cross-linking the trimers saturate at the scarcer receptor
    assert float(trimer_qe(2.2, 0.0, 2.2, 0.18, 0.18, 28.0, 1e4, 0.03, 0.1)) == pytest.approx(0.03, rel=0.05)


def test_bivalent_avidity_raises_trimers_at_low_drug():
    m2, m1 = BCMAModel(layers=2, valency=2), BCMAModel(layers=2)
    p2, p1 = params_for(m2, avidity=10.0), params_for(m1)
    y = m2.initial_state(p2).at[1].set(0.05 * P["vc"])  # 0.05 nM, far below kd_b / p_bm
    tau2 = float(m2.output(0.0, y, p2)[m2.output_index("trimers_per_tumour_cell")])
    tau1 = float(m1.output(0.0, y, p1)[m1.output_index("trimers_per_tumour_cell")])
    assert tau2 > 2.0 * tau1
    p2_no_avidity = params_for(m2, avidity=1.0, s0=0.0)
    y0 = y.at[m2.state_index("sbcma")].set(0.0)
    tau2 = float(m2.output(0.0, y0, p2_no_avidity)[m2.output_index("trimers_per_tumour_cell")])
    tau1 = float(m1.output(0.0, y0, params_for(m1, s0=0.0))[m1.output_index("trimers_per_tumour_cell")])
    assert tau2 == pytest.approx(tau1, rel=1e-14)  # without sBCMA and avidity valency does not matter


def test_killing_saturates_in_e_to_t_and_needs_trimers():
    kmax, s_et, n = 0.5, 0.25, 1e9
    assert float(kill_rate(kmax, 1.0, 1e15, n, s_et)) == pytest.approx(kmax, rel=1e-6)  # E >> s_ET N
    e = 1.0  # E << s_ET N: serial killing kmax/s_ET per effector per day
    assert float(kill_rate(kmax, 1.0, e, n, s_et)) * n / e == pytest.approx(kmax / s_et, rel=1e-6)
    assert float(kill_rate(kmax, hill(0.0, 10.0, 1.0), 1e9, n, s_et)) == 0.0
    g = jax.grad(lambda a: hill(a[0], a[1], a[2]))(jnp.array([0.0, 10.0, 0.8]))
    assert np.all(np.isfinite(g))


# ---------------------------------------------------------------- L1 simulations (simulate)
class WithBudget(AbstractStructuralModel):
    """An L1 model plus two accumulators: drug and sBCMA eliminated (nmol), with the elimination
    fluxes computed from the model's *outputs* and the parameters (not from its vector field)."""

    inner: BCMAModel

    @property
    def states(self):
        return self.inner.states + ("drug_eliminated", "sbcma_eliminated")

    @property
    def parameters(self):
        return self.inner.parameters

    @property
    def outputs(self):
        return self.inner.outputs

    def fluxes(self, t, y, p):
        o = dict(zip(self.outputs, self.inner.output(t, y[:-2], p)))
        v_s, v_x = (p["v_s"], p["v_x"]) if self.inner.sink_volumes == "separate" else (p["vc"], p["vc"])
        cl = p["cl"]
        if self.inner.clearance == "exponential":
            cl = cl + p["cl2"] * jnp.exp(-p["kdes"] * t)
        if self.inner.clearance == "sigmoid":
            cl = cl * jnp.exp(p["imax_cl"] * t ** p["hill_cl"] / (p["t50_cl"] ** p["hill_cl"] + t ** p["hill_cl"]))
        drug = cl * o["conc_free"] + p["k_x"] * (o["conc"] - o["conc_free"]) * v_x
        sbcma = p["k_s"] * o["sbcma_free"] * v_s + p["k_x"] * (o["sbcma_total"] - o["sbcma_free"]) * v_x
        return jnp.stack([drug, sbcma])

    def vector_field(self, t, y, p):
        return jnp.concatenate([self.inner.vector_field(t, y[:-2], p), self.fluxes(t, y, p)])

    def output(self, t, y, p):
        return self.inner.output(t, y[:-2], p)

    def initial_state(self, p):
        return jnp.concatenate([self.inner.initial_state(p), jnp.zeros(2)])

    def bioavailability(self, p):
        return jnp.concatenate([self.inner.bioavailability(p), jnp.ones(2)])


ELRA_DOSES = [(0.0, 12.0), (3.0, 32.0)] + [(7.0 + 7 * k, 76.0) for k in range(24)]  # mg, SC, MagnetisMM-3
ELRA_OBS = [0.5, 1.0, 3.0, 3.5, 6.9, 10.0, 20.0, 50.0, 100.0, 167.9, 170.0]
TINY_OBS = [0.5, 1.0, 3.0, 7.0]


@functools.cache
def elranatamab_solution():
    """HIBMA26 elranatamab: subject 0 the approved SC step-up and 76 mg QW to week 24 (nmol into the
    depot), subject 1 a tiny IV bolus (0.1 ug/kg x 70 kg)."""
    m = WithBudget(BCMAModel(layers=1, sink_volumes="separate"))
    doses0 = [dict(time=t, amt=mg_to_nmol(mg, ELRA_MW), cmt=0) for t, mg in ELRA_DOSES]
    doses1 = [dict(time=0.0, amt=mg_to_nmol(0.1e-3 * 70, ELRA_MW), cmt=1)]
    ev = make_events([(doses0, [dict(time=t) for t in ELRA_OBS]), (doses1, [dict(time=t) for t in TINY_OBS])])
    sol = simulate(m, HIBMA26, ev, rtol=1e-10, atol=1e-12)
    return m, sol


def test_l1_budgets_close_for_drug_and_sbcma():
    m, sol = elranatamab_solution()
    sc = [(t, mg_to_nmol(mg, ELRA_MW) * HIBMA26["f_bio"]) for t, mg in ELRA_DOSES]
    iv = [(0.0, mg_to_nmol(0.1e-3 * 70, ELRA_MW))]
    for i, (times, doses) in enumerate([(ELRA_OBS, sc), (TINY_OBS, iv)]):
        st = dict(zip(m.states, np.asarray(sol.states[i, : len(times)]).T))
        given = np.array([sum(amount for td, amount in doses if td <= t) for t in times])
        in_body = st["depot"] + st["central"] + st["peripheral"]
        np.testing.assert_allclose(in_body + st["drug_eliminated"], given, rtol=1e-8)
        synthesised = HIBMA26["s0"] * HIBMA26["v_s"] * (1 + HIBMA26["k_s"] * np.asarray(times))
        np.testing.assert_allclose(st["sbcma"] + st["sbcma_eliminated"], synthesised, rtol=1e-8)
        # a large share of the drug has been eliminated by the end: the budget has teeth
        assert st["drug_eliminated"][-1] > 0.2 * given[-1]


def test_l1_free_fractions_match_hibma26():
    m, sol = elranatamab_solution()
    tiny = dict(zip(m.outputs, np.asarray(sol.outputs[1, : len(TINY_OBS)]).T))
    out = dict(zip(m.outputs, np.asarray(sol.outputs[0, : len(ELRA_OBS)]).T))
    # tiny doses: Kd / (Kd + baseline sBCMA) = 3.138 / (3.138 + 6.914) = 0.31 (HIBMA26)
    np.testing.assert_allclose(tiny["conc_free"] / tiny["conc"], 3.138 / (3.138 + 6.914), rtol=2e-3)
    free_fraction = out["conc_free"] / out["conc"]
    # 76 mg QW near steady state (week 24 trough, day 167.9): > 0.85, typically 0.91 (HIBMA26)
    k = ELRA_OBS.index(167.9)
    assert 0.85 < free_fraction[k] < 0.95
    # during priming the sink dominates: after 12 mg, less than half of the drug is free
    assert free_fraction[0] < 0.5
    # total trough at steady state, 76 mg QW: ~18 ug/mL here, the order of POELS25's 12-13 ug/mL
    # (simulated with its own, different popPK); a sanity range, not a reference value
    assert 8.0 < out["conc"][k] * ELRA_MW / 1000 < 30.0


def test_l1_qe_matches_fast_mass_action_binding():
    """The QE closed form against explicit binding (kon = koff/Kd, koff = 1e5 /day) solved by
    scipy LSODA: the QE error is of order (rate of change) / koff ~ 1e-5."""
    m, sol = elranatamab_solution()
    h = HIBMA26
    koff = 1e5
    kon = koff / h["kd_s"]

    def rhs(t, y, u):
        depot, free, periph, sfree, cplx = y
        binding = kon * (free / h["vc"]) * (sfree / h["v_s"]) * h["v_x"] - koff * cplx
        return np.array([
            -h["ka"] * depot,
            h["ka"] * depot - h["cl"] * free / h["vc"] - h["q"] * free / h["vc"] + h["q"] * periph / h["vp"] - binding,
            h["q"] * free / h["vc"] - h["q"] * periph / h["vp"],
            h["k_s"] * h["s0"] * h["v_s"] - h["k_s"] * sfree - binding,
            binding - h["k_x"] * cplx,
        ])

    doses = {t: mg_to_nmol(mg, ELRA_MW) * h["f_bio"] for t, mg in ELRA_DOSES if t <= 20.0}
    y = np.array([0.0, 0.0, 0.0, h["s0"] * h["v_s"], 0.0])
    obs = [t for t in ELRA_OBS if t <= 20.0]
    ref, t = [], 0.0
    for t_next in sorted(set(doses) | set(obs)):
        if t_next > t:
            y = solve_ivp(lambda tt, yy: rhs(tt, yy, None), (t, t_next), y, method="LSODA", rtol=1e-10,
                          atol=1e-12).y[:, -1]
            t = t_next
        y[0] += doses.get(t, 0.0)
        doses.pop(t, None)
        if t in obs:
            ref.append(y.copy())
    ref = np.array(ref)
    free = ref[:, 1] / h["vc"]
    total = free + ref[:, 4] / h["v_x"]
    sfree = ref[:, 3] / h["v_s"]
    out = dict(zip(m.outputs, np.asarray(sol.outputs[0, :len(obs)]).T))
    np.testing.assert_allclose(out["conc_free"], free, rtol=2e-4)
    np.testing.assert_allclose(out["conc"], total, rtol=2e-4)
    np.testing.assert_allclose(out["sbcma_free"], sfree, rtol=2e-4)
    np.testing.assert_allclose(out["sbcma_total"], sfree + ref[:, 4] / h["v_x"], rtol=2e-4)


@pytest.mark.parametrize("kwargs", [dict(layers=1, sink_volumes="separate", clearance="exponential"),
                                    dict(layers=1, valency=2, clearance="sigmoid"),
                                    dict(layers=4, valency=2), dict(layers=4, binding="mass_action")])
def test_budget_identities_hold_at_any_state(kwargs):
    """d(depot + central + peripheral)/dt = -(drug eliminated per day) and d sbcma/dt = synthesis -
    (sBCMA eliminated per day), with eliminations from the outputs (the integrated form of this
    identity is the simulated budget above). Synthesis follows tumour, BCMA density and GSI."""
    inner = BCMAModel(**kwargs)
    m = WithBudget(inner)
    p = params_for(inner)
    for seed in range(4):
        y = random_state(inner, seed)
        dy = np.asarray(inner.vector_field(7.0, y, p))
        eliminated = np.asarray(m.fluxes(7.0, jnp.concatenate([y, jnp.zeros(2)]), p))
        drug_states = [inner.state_index(s) for s in ("depot", "central", "peripheral")]
        assert dy[drug_states].sum() == pytest.approx(-eliminated[0], rel=1e-12)
        st = dict(zip(inner.states, np.asarray(y)))
        synthesis = P["k_s"] * P["s0"] * (P["v_s"] if inner.sink_volumes == "separate" else P["vc"])
        if 3 in inner.layers:
            synthesis *= st["tumour"]
        if 4 in inner.layers:
            inhibition = P["imax_gsi"] * st["gsi"] / (P["ic50_gsi"] + st["gsi"])  # hill_gsi = 1
            synthesis *= st["bcma_fold"] * (1 - inhibition)
        assert dy[inner.state_index("sbcma")] == pytest.approx(synthesis - eliminated[1], rel=1e-10)


# ---------------------------------------------------------------- L2 option B (simulate, Kvaerno5)
def test_option_a_equilibrium_is_the_fixed_point_of_option_b():
    """Receptor fractions at the brentq equilibrium (marrow drug: the model's functional marrow drug,
    i.e. p_bm times plasma free drug after the marrow sBCMA excess) make every binding derivative of
    option B vanish, and option A reports the same trimers."""
    mb = BCMAModel(layers=(0, 1, 2), binding="mass_action")
    ma = BCMAModel(layers=(0, 1, 2))
    p = params_for(mb)
    to_nm = 1e9 / (AVOGADRO * P["v_bm"])
    bcma, cd3 = P["r_b0"] * P["n0"] * to_nm, P["r_cd3"] * P["e0"] * to_nm
    for drug in (0.05, 2.0, 40.0, 400.0):  # nM, total in plasma
        y = ma.initial_state(p).at[ma.state_index("central")].set(drug * P["vc"])
        out_a = dict(zip(ma.outputs, np.asarray(ma.output(0.0, y, p))))
        c = out_a["conc_functional_bm"]
        cx = P["p_bm"] * out_a["conc"] - c
        tri = exact_qe_trimers(c, 0.0, c + cx, P["kd_b"], P["kd_b"], P["kd_3"], P["chi"], bcma, cd3)
        b_free = (bcma - tri) / (1 + c / P["kd_b"])
        t_free = (cd3 - tri) / (1 + (c + cx) / P["kd_3"])
        fractions = dict(drug_bm=c, bcma_dimer=b_free * c / P["kd_b"] / bcma, trimer=tri / bcma,
                         cd3_dimer=t_free * c / P["kd_3"] / cd3, useless_trimer=t_free * cx / P["kd_3"] / cd3)
        yb = jnp.concatenate([y, jnp.array([fractions[s] for s in mb.states[len(ma.states):]])])
        dy = np.asarray(mb.vector_field(0.0, yb, p))
        for name in fractions:
            assert abs(dy[mb.state_index(name)]) < 1e-9 * (1 + P["koff_3"] * fractions[name]), (drug, name)
        out_b = dict(zip(mb.outputs, np.asarray(mb.output(0.0, yb, p))))
        assert out_b["trimers_per_tumour_cell"] == pytest.approx(out_a["trimers_per_tumour_cell"], rel=1e-10)
        assert out_b["trimers_per_t_cell"] == pytest.approx(out_a["trimers_per_t_cell"], rel=1e-10)


@pytest.mark.parametrize("drug", [0.05, 2.0, 40.0, 400.0])
def test_exhaustion_and_recovery_follow_cd3_occupancy(drug):
    """Exhaustion k_exh omega A and recovery k_rec (1 - omega) X use omega, the fraction of marrow CD3
    bound by drug (dimers, useless and productive trimers) at the brentq equilibrium; omega rises
    monotonically with drug, unlike the trimers (bell)."""
    m = BCMAModel(layers=3)
    p = params_for(m)
    y = m.initial_state(p).at[m.state_index("central")].set(drug * P["vc"])
    y = y.at[m.state_index("t_active")].set(2.0).at[m.state_index("t_exhausted")].set(1.0)
    out = dict(zip(m.outputs, np.asarray(m.output(0.0, y, p))))
    to_nm = 1e9 / (AVOGADRO * P["v_bm"])
    bcma, cd3 = P["r_b0"] * P["n0"] * to_nm, P["r_cd3"] * P["e0"] * 4.0 * to_nm  # E + A + X = 4 E0
    c, c_cd3 = out["conc_functional_bm"], P["p_bm"] * out["conc"]
    tri = exact_qe_trimers(c, 0.0, c_cd3, P["kd_b"], P["kd_b"], P["kd_3"], P["chi"], bcma, cd3)
    omega = 1.0 - (cd3 - tri) / (1.0 + c_cd3 / P["kd_3"]) / cd3
    dy = np.asarray(m.vector_field(0.0, y, p))
    expected = P["k_exh"] * omega * 2.0 - P["k_rec"] * (1.0 - omega) * 1.0 - P["k_dx"] * 1.0
    assert dy[m.state_index("t_exhausted")] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert 0.0 < omega < 1.0
    if drug > 2.0:  # beyond the trimer bell's peak CD3 occupancy still rises with drug
        lower = y.at[m.state_index("central")].set(0.25 * drug * P["vc"])
        d_low = np.asarray(m.vector_field(0.0, lower, p))[m.state_index("t_exhausted")]
        assert d_low < dy[m.state_index("t_exhausted")]


def test_mass_action_trimers_converge_to_qe_when_binding_is_fast():
    """Option B with binding 10x and 100x faster than typical (koff_b, koff_3 and the marrow drug
    link k_bm scaled together), solved by simulate with Kvaerno5 (two subjects, one solve), against
    option A (its exact equilibrium) evaluated on the same PK states, and against the brentq
    equilibrium. The QE error is the kinetic lag, (rate of change of drug, <= ~2 /day after a dose)
    / (slowest relaxation rate, ~koff_b = 2e3 /day at 100x), ~1e-3: first order in 1/koff, so 10x
    faster binding must shrink it ~10x."""
    mb = BCMAModel(layers=(0, 1, 2), binding="mass_action")
    ma = BCMAModel(layers=(0, 1, 2))
    speed = np.array([10.0, 100.0])
    p = {k: np.full(2, P[k]) for k in mb.parameters}
    p.update(koff_b=speed * P["koff_b"], koff_3=speed * P["koff_3"], k_bm=speed * 100.0)
    doses = [dict(time=0.0, amt=30.0, cmt=0), dict(time=3.0, amt=150.0, cmt=0), dict(time=6.0, amt=760.0, cmt=0)]
    obs = [0.5, 1.0, 2.0, 4.0, 6.5, 8.0, 10.0]
    subject = (doses, [dict(time=t) for t in obs])
    sol = simulate(mb, p, make_events([subject, subject]), solver="kvaerno5", rtol=1e-6, atol=1e-8)
    assert np.all(np.asarray(sol.result) == 0)
    to_nm = 1e9 / (AVOGADRO * P["v_bm"])
    bcma, cd3 = P["r_b0"] * P["n0"] * to_nm, P["r_cd3"] * P["e0"] * to_nm
    pa = {k: jnp.asarray(P[k]) for k in ma.parameters}
    pk_states = np.array([mb.state_index(s) for s in ma.states])  # shared: L2 does not feed back on PK
    errors = np.zeros((2, len(obs), 2))
    for i in range(2):
        for k, t in enumerate(obs):
            out_b = dict(zip(mb.outputs, np.asarray(sol.outputs[i, k])))
            out_a = dict(zip(ma.outputs, np.asarray(ma.output(t, sol.states[i, k, pk_states], pa))))
            for j, name in enumerate(("trimers_per_tumour_cell", "trimers_per_t_cell")):
                errors[i, k, j] = abs(out_b[name] / out_a[name] - 1)
            if i == 1:
                c = out_a["conc_functional_bm"]
                tri = exact_qe_trimers(c, 0.0, P["p_bm"] * out_a["conc"], P["kd_b"], P["kd_b"], P["kd_3"], P["chi"],
                                       bcma, cd3)
                assert out_b["trimers_per_tumour_cell"] == pytest.approx(tri / bcma * P["r_b0"], rel=2.5e-3), t
    assert errors[1].max() < 2.5e-3
    assert 5.0 < errors[0].max() / errors[1].max() < 20.0
    assert out_b["trimers_per_tumour_cell"] > 0.1 * P["r_b0"]  # far from trivial, and saturating (chi = 100)


# ---------------------------------------------------------------- full model: plain diffrax solves
OBS_T = (0.5, 1.0, 2.0, 4.0, 7.0, 10.0)


@functools.cache
def full_model_functions(config):
    """(model, names, forward, jacobian) for a configuration; forward(theta, drug_sc, drug_iv, gsi,
    ts) gives all outputs at ts; parameter k is signs[k] exp(theta[k]) (imax_cl < 0). One compile
    per configuration."""
    kwargs = dict(config)
    model = BCMAModel(**kwargs)
    names = tuple(model.parameters)
    stiff = model.binding == "mass_action"
    solver = diffrax.Kvaerno5() if stiff else diffrax.Tsit5()
    rtol = 1e-10 if stiff else 1e-12  # Kvaerno5's Newton iterations stall at 1e-12

    def forward(theta, signs, drug_sc, drug_iv, gsi, ts):
        p = dict(zip(names, signs * jnp.exp(theta)))
        y0 = model.initial_state(p)
        y0 = y0.at[model.state_index("depot")].add(p["f_bio"] * drug_sc)
        y0 = y0.at[model.state_index("central")].add(drug_iv)
        if "gsi" in model.states:
            y0 = y0.at[model.state_index("gsi")].add(gsi)
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, args: model.vector_field(t, y, p)), solver, 0.0, ts[-1], None, y0,
            saveat=diffrax.SaveAt(ts=ts), stepsize_controller=diffrax.PIDController(rtol=rtol, atol=1e-2 * rtol),
            max_steps=200_000, adjoint=diffrax.ForwardMode())
        return jax.vmap(lambda t, y: model.output(t, y, p))(ts, sol.ys)

    jacobian = jax.jit(jax.jacfwd(forward), static_argnums=())
    return model, names, jax.jit(forward), jacobian


def log_parameters(values, names):
    v = np.array([values[k] for k in names], float)
    with np.errstate(divide="ignore"):
        return jnp.asarray(np.log(np.abs(v))), jnp.asarray(np.where(v < 0, -1.0, 1.0))


FULL_V1 = (("layers", 5), ("clearance", "exponential"), ("sink_volumes", "separate"))
FULL_V2 = (("layers", (0, 1, 2)), ("valency", 2), ("clearance", "sigmoid"))


def check_gradients(config, h=1e-4, abs_tol=1e-7, ts=OBS_T, only=None):
    """jacfwd (forward-mode through the solver) against central differences of step h in log
    parameters: |error| <= 1e-4 |fd| + abs_tol |output|. Truncation ~h^2, solver noise ~rtol/h.
    ``only``: restrict the finite differences to these parameters (all are checked finite)."""
    model, names, forward, jacobian = full_model_functions(config)
    theta, signs = log_parameters(P, names)
    args = (signs, 300.0, 100.0, 100.0, jnp.array(ts))
    f0 = np.asarray(forward(theta, *args))
    jac = np.asarray(jacobian(theta, *args))  # [T, outputs, parameters]
    assert np.all(np.isfinite(jac))
    scale = np.abs(f0) + 1e-6 * np.abs(f0).max(axis=0)  # per output
    for i, name in enumerate(names):
        if only is not None and name not in only:
            continue
        step = jnp.zeros_like(theta).at[i].set(h)
        fd = (np.asarray(forward(theta + step, *args)) - np.asarray(forward(theta - step, *args))) / (2 * h)
        err = np.abs(jac[..., i] - fd)
        ok = err <= 1e-4 * np.abs(fd) + abs_tol * scale
        assert ok.all(), (name, float(np.max(err - 1e-4 * np.abs(fd) - abs_tol * scale)), model.outputs)
    # every parameter moves some output: the comparison is not vacuous
    assert np.all(np.max(np.abs(jac) / scale[..., None], axis=(0, 1)) > 1e-6), [
        n for n, v in zip(names, np.max(np.abs(jac) / scale[..., None], axis=(0, 1))) if v <= 1e-6]


def test_gradients_match_finite_differences_full_model_monovalent():
    check_gradients(FULL_V1)


def test_gradients_match_finite_differences_bivalent_sink_and_trimers():
    check_gradients(FULL_V2)  # L0-L2: the layers where valency and the sigmoid clearance matter


@pytest.mark.slow
def test_gradients_match_finite_differences_mass_action():
    # finite differences for the parameters whose code path differs from option A (the others are
    # checked through option A above): L0-L1 feed the marrow drug, L2 the binding kinetics
    only = {"vc", "ka", "f_bio", "kd_s", "s0", "p_bm", "kd_b", "kd_3", "r_b0", "r_cd3", "n0", "e0", "chi",
            "koff_b", "koff_3", "k_bm", "tau50_n", "ec50_il6"}
    check_gradients((("layers", 5), ("binding", "mass_action")), h=1e-3, abs_tol=1e-6,
                    ts=(0.25, 0.5, 1.0, 2.0, 3.0, 4.0), only=only)


def test_no_drug_means_no_killing():
    """No drug but a GSI course: the tumour follows the untreated logistic curve exactly, trimers
    stay 0, T cells and IL-6 stay at baseline; GSI alone raises membrane BCMA and lowers sBCMA."""
    model, names, forward, _ = full_model_functions(FULL_V1)
    theta, signs = log_parameters(P, names)
    ts = np.array([5.0, 10.0, 20.0, 40.0, 70.0, 100.0])
    out = dict(zip(model.outputs, np.asarray(forward(theta, signs, 0.0, 0.0, 1e5, jnp.array(ts))).T))
    logistic = P["nmax_rel"] / (1 + (P["nmax_rel"] - 1) * np.exp(-P["kg"] * ts))
    np.testing.assert_allclose(out["tumour"], logistic, rtol=1e-9)
    assert np.all(out["trimers_per_tumour_cell"] == 0.0) and np.all(out["trimers_per_t_cell"] == 0.0)
    np.testing.assert_array_equal(out["t_cells"], 1.0)
    np.testing.assert_allclose(out["il6"], P["il6_0"], rtol=1e-12)
    assert out["bcma_fold"][0] > 1.5 and out["sbcma_free"][0] < 0.6 * P["s0"]
    # with the drug, the tumour is killed
    treated = dict(zip(model.outputs, np.asarray(forward(theta, signs, 300.0, 100.0, 0.0, jnp.array(ts))).T))
    assert treated["tumour"][2] < 0.5 * logistic[2]
    assert np.max(treated["il6"]) > 2 * P["il6_0"]


def test_gsi_without_effect_changes_nothing_in_a_simulation():
    model, names, forward, _ = full_model_functions(FULL_V1)
    values = {**P, "imax_gsi": 0.0}
    theta, signs = log_parameters(values, names)
    ts = jnp.array(OBS_T)
    with_gsi = np.asarray(forward(theta, signs, 300.0, 100.0, 500.0, ts))
    without = np.asarray(forward(theta, signs, 300.0, 100.0, 0.0, ts))
    np.testing.assert_allclose(with_gsi, without, rtol=1e-9, atol=1e-12)
