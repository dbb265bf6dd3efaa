"""The BCMA x CD3 T-cell-engager model family L0-L5 (science.md §2) as one structural model.

``BCMAModel(layers=...)`` stacks the layers into one vector field; see its docstring for the
equations, states, parameters (with units) and outputs. Closed forms live in ``sink.py`` (L1),
``trimer.py`` (L2) and ``crs.py`` (L5 read-out); unit helpers in ``units.py``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .base import AbstractStructuralModel
from .sink import free_amounts, free_sbcma, marrow_excess_binding, occupancy
from .trimer import mass_action_rates, trimers_per_pair
from .units import AVOGADRO

N_TRANSIT = 5
"""Number of IL-6 transit compartments between bone marrow and serum (POELS25)."""

_CLEARANCES = ("constant", "exponential", "sigmoid")
_BINDINGS = ("qe", "mass_action")
_SINK_VOLUMES = ("shared", "separate")


def hill(x, x50, h):
    """Hill function ``x^h / (x50^h + x^h)``; 0 for ``x <= 0`` (gradients stay finite there)."""
    positive = x > 0
    safe = jnp.where(positive, x, x50)
    return jnp.where(positive, jax.nn.sigmoid(h * (jnp.log(safe) - jnp.log(x50))), 0.0)


def kill_rate(kmax, psi, effectors, tumour_cells, s_et):
    """Per-tumour-cell kill rate (1/day), saturating in E:T (science.md L3)::

        k_kill = kmax psi (E_k/N) / (s_ET + E_k/N) = kmax psi E_k / (s_ET N + E_k)

    ``psi``: fraction of tumour cells in a productive synapse; ``effectors``: killing-competent T
    cells E_k; ``tumour_cells``: N (same unit as E_k). Serial-killing capacity: kmax/s_ET kills per
    effector per day while E_k/N << s_ET; the rate saturates at kmax psi when E_k/N >> s_ET.
    """
    return kmax * psi * effectors / (s_et * tumour_cells + effectors)


def _as_layers(layers):
    if isinstance(layers, bool):
        return layers  # rejected in __check_init__
    if isinstance(layers, int):
        return tuple(range(layers + 1)) if 0 <= layers <= 5 else (layers,)
    try:
        items = tuple(layers)
    except TypeError:
        return layers
    if all(isinstance(k, int) and not isinstance(k, bool) for k in items):
        return tuple(sorted(set(items)))
    return items


class BCMAModel(AbstractStructuralModel):
    r"""BCMA x CD3 bispecific T-cell engager: PK, sBCMA sink, trimers, tumour / T cells, GSI, IL-6.

    Time in days; drug and sBCMA amounts in nmol, concentrations in nM (convert mg doses with
    ``mg_to_nmol``). ``t`` is the data's TIME, with treatment start at 0 (time-varying clearance).

    Configuration (static):

    * ``layers``: an int k (layers L0..Lk) or a collection of layer numbers, e.g. ``(0, 1, 2, 5)``.
      L0 is always needed; L3 and L5 need L2; L4 needs L1 or L2.
    * ``valency``: BCMA arms per drug molecule, n_B = 1 (teclistamab, elranatamab, linvoseltamab)
      or 2 (alnuctamab).
    * ``clearance``: "constant" (``cl``), "exponential" (``cl + cl2 exp(-kdes t)``, MIAO23) or
      "sigmoid" (``cl exp(imax_cl t^h / (t50_cl^h + t^h))``, h = ``hill_cl``).
    * ``binding``: L2 option "qe" (closed form with cross-linking factor chi, the default) or
      "mass_action" (explicit binding states; stiff: ``simulate(..., solver="kvaerno5")``;
      monovalent drugs only).
    * ``absorption``: True adds the SC depot (``ka``, ``f_bio``) as state 1 (NONMEM CMT 1, central
      CMT 2); False for IV-only drugs (central is CMT 1).
    * ``sink_volumes``: "shared" (free drug, free sBCMA and complex share ``vc``) or "separate"
      (own volumes ``v_s``, ``v_x`` as in HIBMA26; monovalent drugs only).

    **L0, PK** (states ``depot``, ``central``, ``peripheral``, nmol). ``central`` is the *total* drug
    (free + sBCMA-bound, L1); only drug free of sBCMA (``D0``) is cleared by CL(t) and distributes::

        d depot/dt      = -ka depot                          (SC dose: depot += f_bio dose)
        d central/dt    = ka depot - CL(t) D0 - (q D0 - q/vp peripheral) - k_x A_complexed
        d peripheral/dt = q D0 - q/vp peripheral

    **L1, sBCMA sink** (state ``sbcma``, nmol, total sBCMA in ``v_s``). Free and bound species come
    from the QE closed forms of ``sink.py`` (never a fast reaction in the ODE)::

        d sbcma/dt = k_s s0 v_s g - k_s A_sbcma,free - k_x A_sbcma,bound
        g = (N/N0) (R_B/R_B0) (1 - I_GSI)        (1 without L3 / L4: constant synthesis)

    The drug-free steady state has sbcma = s0 v_s. A drug carrying sBCMA (the complex) is cleared
    at ``k_x`` together with its sBCMA. For n_B = 2 (theta = s/(kd_s + s)): drug free of sBCMA
    D_tot (1-theta)^2, with one arm bound 2 D_tot theta (1-theta), neutralised D_tot theta^2.

    **L2, trimers at the site of action** (bone marrow, volume ``v_bm``). Drug in the marrow is
    ``p_bm`` times its plasma species (instant partition; sBCMA binding as in plasma), and with L1
    it then binds the marrow's local excess of free sBCMA: shedding happens in the marrow
    (science.md §1.5, L1 note; PONT19), so marrow sBCMA exceeds serum sBCMA by
    ``x_sbm s0 g`` (nM; g the relative shedding of L1, so the excess follows tumour, membrane BCMA
    and GSI). The excess binds the free BCMA arms of the marrow drug at QE (``sink.marrow_excess_binding``;
    the serum-derived sBCMA is not re-equilibrated). Marrow drug with a free BCMA arm is the output
    ``conc_functional_bm``. Receptors:
    B = R_B N / (N_A v_bm) 1e9 nM, T = R_CD3 E_all / (N_A v_bm) 1e9 nM, with N = n0 (N/N0) tumour
    cells and E_all = e0 (E + A + X)/E0 T cells (n0, e0 without L3). Option "qe" (``trimer.py``)::

        Tri = root of Tri^2 - (B + T + K) Tri + B T = 0,  K = (1 + a)(1 + u) kd_3 / (chi a)
        a = BCMA-arm binding weight of functional drug, u = CD3-arm weight of all drug
        few trimers: Tri = chi B T C / ((kd_b + C)(kd_3 + C))  (monovalent, no sBCMA: science.md)
        bivalent: drug with both arms free binds with kd_b / avidity, with one arm free with kd_b

    The exact root (receptor conservation) is a deviation from science.md's formula, which is its
    few-trimer limit: it keeps trimers per cell below R_B and R_CD3 when chi is large.

    Option "mass_action" adds the marrow free drug ``drug_bm`` (nM), linked to plasma at rate
    ``k_bm`` and consumed by binding, and four receptor fractions (``bcma_dimer``, ``trimer``: of
    membrane BCMA; ``cd3_dimer``, ``useless_trimer``: of CD3, the latter drug-sBCMA-CD3)::

        d drug_bm/dt = k_bm (C_bm - drug_bm) - (binding of drug_bm to BCMA and CD3)
        C_bm = p_bm D0 after the marrow sBCMA excess (conc_functional_bm)
        receptor fractions: the reactions R1-R5 of trimer.py (kon = koff / kd)

    Trimers per tumour cell tau_N = Tri N_A v_bm 1e-9 / N, per T cell tau_E = ... / E_all.
    Simplifications: receptors do not deplete plasma drug (B, T << drug at therapeutic doses);
    receptor internalisation and the dilution of bound fractions by cell turnover are not modelled.

    **L3, tumour, T cells, paraproteins** (states relative to baseline: ``tumour`` = N/N0,
    ``t_resting`` = E/E0, ``t_active`` = A/E0, ``t_exhausted`` = X/E0; ``m_protein`` g/L, ``flc`` mg/L)::

        phi = hill(tau_E, tau50_e, hill_e)        psi = hill(tau_N, tau50_n, hill_n)
        k_kill = kill_rate(kmax, psi, E_k, N, s_et),   E_k = (A + eps_kill E)
        d tumour/dt      = kg tumour (1 - tumour/nmax_rel) - k_kill tumour
        omega = fraction of marrow CD3 bound by drug (CD3 dimers, useless and productive trimers)
        d t_resting/dt   = k_out (1 - t_resting) - k_act phi t_resting + k_rec (1 - omega) t_exhausted
        d t_active/dt    = k_act phi t_resting + k_exp phi t_active (1 - t_all/tcap_rel)
                           - k_con t_active - k_exh omega t_active
        d t_exhausted/dt = k_exh omega t_active - k_rec (1 - omega) t_exhausted - k_dx t_exhausted
        d m_protein/dt   = k_m (m0 tumour - m_protein),   d flc/dt = k_l (l0 tumour - flc)

    Activation and expansion follow the productive trimers (phi); exhaustion and recovery follow
    CD3 occupancy omega (QE: omega = (u + Tri/T)/(1 + u), u = marrow drug / kd_3), which rises
    monotonically with drug exposure. This is a deviation from science.md L3 (phi in both places)
    [E]: PHIL22 saw exhaustion under continuous exposure and recovery in treatment-free intervals,
    i.e. when drug is withdrawn; with phi, exposure above the trimer bell's peak would make less
    drug give more exhaustion.

    The homeostatic source is k_in E0 = k_out E0 (E0 is the drug-free level). All loss terms are
    first order in their own state, so the states stay positive without transforms. Not included:
    Simeoni transit of damaged cells, resistance, normal-plasma-cell sBCMA. Untreated tumour grows
    (kg > 0): the drug-free steady state holds for everything else, and for the tumour (and the
    paraproteins and sBCMA that follow it) only when kg = 0 or nmax_rel = 1.

    **L4, gamma-secretase inhibitor** (``gsi``: GSI exposure, in the unit of the GSI doses, e.g.
    mg in the body, dosed as boluses into this state; ``bcma_fold`` = R_B/R_B0)::

        d gsi/dt = -k_gsi gsi,    I_GSI = imax_gsi hill(gsi, ic50_gsi, hill_gsi)
        d bcma_fold/dt = (k_int_b + k_shed) - (k_int_b + k_shed (1 - I_GSI)) bcma_fold

    Fold increase of membrane BCMA at full inhibition: 1 + k_shed/k_int_b. (A schedule with
    first-order onset/offset is the special case of frequent small GSI doses.)

    **L5, IL-6** (pg/mL: ``il6_bm``, ``il6_transit1..5``, serum ``il6``; ``cauc`` pg/mL day)::

        release = emax_il6 hill(Tri [pM], ec50_il6, hill_il6) (1 - IH),
        IH = imax_ih hill(cauc, ic50_ih, hill_ih),   d cauc/dt = il6_bm  (basal il6_bm is 0)
        d il6_bm/dt = release - (ktr_il6 + kdeg_il6) il6_bm;  transits likewise, fed by the previous
        d il6/dt = kdeg_il6 il6_0 + ktr_il6 il6_transit5 v_bm/vc - kdeg_il6 il6
    (POELS25 / Chen 2019; their rescaling of cauc at each dose is not included).
    CRS probability per interval: ``crs_probability`` (crs.py).

    Parameters (read from ``p``; the list for a configuration is ``model.parameters``):

    ===========  ======================================================  ============
    name         meaning                                                 unit
    ===========  ======================================================  ============
    cl           clearance of free drug (time-independent part)          L/day
    cl2, kdes    exponential: extra CL at t=0, its decay rate            L/day, 1/day
    imax_cl,     sigmoid: max log-change of CL, time of half effect,     -, day, -
    t50_cl,      Hill coefficient
    hill_cl
    vc, vp       central (free drug) and peripheral volumes              L
    q            inter-compartmental clearance                           L/day
    ka, f_bio    SC absorption rate and bioavailability (absorption)     1/day, -
    kd_s         drug:sBCMA dissociation constant (per arm)              nM
    k_s          free sBCMA elimination rate (t1/2 ~ 1-1.5 day)          1/day
    k_x          drug-sBCMA complex elimination rate                     1/day
    s0           baseline (drug-free) sBCMA                              nM
    v_s, v_x     sBCMA and complex volumes (sink_volumes="separate")     L
    p_bm         marrow/plasma ratio of free drug                        -
    x_sbm        (marrow - serum) sBCMA / s0 at baseline shedding         -
    v_bm         bone-marrow volume                                      L
    kd_b, kd_3   drug:membrane BCMA and drug:CD3 dissociation constants  nM
    r_b0         membrane BCMA per tumour cell at baseline               1/cell
    r_cd3        CD3 per T cell                                          1/cell
    n0, e0       tumour cells and T cells in the marrow at baseline      cells
    chi          cross-linking enhancement of trimer formation           -
    avidity      avidity factor for bivalent BCMA binding (valency 2)    -
    koff_b,      dissociation rates, BCMA and CD3 arms (mass_action)     1/day
    koff_3
    k_bm         marrow free-drug equilibration rate (mass_action)       1/day
    kg           net tumour growth rate                                  1/day
    nmax_rel     carrying capacity / N0                                  -
    kmax         maximal per-cell kill rate                              1/day
    s_et         E:T ratio of half-maximal killing                       -
    tau50_n,     trimers per tumour cell for half-maximal psi, Hill      1/cell, -
    hill_n
    tau50_e,     trimers per T cell for half-maximal phi, Hill           1/cell, -
    hill_e
    eps_kill     killing competence of resting relative to active cells  -
    k_out        homeostatic turnover of resting T cells                 1/day
    k_act        activation rate                                         1/day
    k_exp        expansion rate of activated cells                       1/day
    tcap_rel     T-cell capacity / E0                                    -
    k_con        contraction rate of activated cells                     1/day
    k_exh        exhaustion rate while engaged                           1/day
    k_rec        recovery rate while disengaged                          1/day
    k_dx         loss rate of exhausted cells                            1/day
    k_m, m0      M-protein elimination rate, baseline M-protein          1/day, g/L
    k_l, l0      involved sFLC elimination rate, baseline sFLC           1/day, mg/L
    k_gsi        GSI exposure decay rate                                 1/day
    imax_gsi,    max shedding inhibition, exposure at half effect, Hill  -, dose unit, -
    ic50_gsi,
    hill_gsi
    k_int_b      membrane BCMA internalisation rate                      1/day
    k_shed       membrane BCMA shedding rate (gamma-secretase)           1/day
    emax_il6     maximal IL-6 release rate in the marrow                 pg/mL/day
    ec50_il6,    trimer concentration of half-maximal release, Hill      pM, -
    hill_il6
    imax_ih,     max desensitisation, cumulative exposure of half        -, pg/mL day, -
    ic50_ih,     effect, Hill
    hill_ih
    ktr_il6      IL-6 transit rate                                       1/day
    kdeg_il6     IL-6 degradation rate                                   1/day
    il6_0        basal serum IL-6                                        pg/mL
    ===========  ======================================================  ============

    Outputs (by layer): L0 ``conc`` (total drug, nM); L1 ``conc_free`` (drug with no sBCMA bound),
    ``conc_functional`` (drug with at least one BCMA arm free), ``sbcma_free``, ``sbcma_total``
    (nM; ``nm_to_ng_per_ml(x, SBCMA_MW_KDA)`` for ng/mL); L2 ``trimers_per_tumour_cell``,
    ``trimers_per_t_cell``; L3 ``tumour`` (N/N0), ``m_protein`` (g/L), ``flc`` (mg/L), ``t_cells``
    ((E+A+X)/E0); L4 ``bcma_fold`` (R_B/R_B0), ``gsi_inhibition``; L5 ``il6`` (serum, pg/mL); last,
    with L1 and L2, ``conc_functional_bm`` (marrow drug with at least one BCMA arm free of sBCMA, nM);
    after it, with L3, ``t_exhausted_fraction`` (X/(E+A+X), the exhausted share of the marrow T cells:
    what an on-treatment flow panel of exhaustion markers such as PD-1+TIM-3+ would measure; 0 at
    the drug-free baseline, where the model has no exhausted cells).
    """

    layers: tuple = eqx.field(static=True, converter=_as_layers)
    valency: int = eqx.field(static=True, default=1)
    clearance: str = eqx.field(static=True, default="constant")
    binding: str = eqx.field(static=True, default="qe")
    absorption: bool = eqx.field(static=True, default=True)
    sink_volumes: str = eqx.field(static=True, default="shared")

    linear = False

    def __check_init__(self):
        name = "BCMAModel"
        layers = self.layers
        if not (isinstance(layers, tuple) and layers and all(isinstance(k, int) and 0 <= k <= 5 for k in layers)):
            raise ValueError(
                f"{name}(layers={layers!r}): expected an int 0-5 (layers L0 up to it) or a collection of "
                "layer numbers 0-5, e.g. layers=3 or layers=(0, 1, 2, 5)."
            )
        if 0 not in layers:
            raise ValueError(f"{name}(layers={layers}): every model needs L0 (the drug PK); add 0, e.g. "
                             f"layers={tuple(sorted({0, *layers}))}.")
        for needs in (3, 5):
            if needs in layers and 2 not in layers:
                what = "L3 (tumour and T cells)" if needs == 3 else "L5 (IL-6)"
                raise ValueError(f"{name}(layers={layers}): {what} is driven by the trimers of L2, which is "
                                 f"missing; add 2, e.g. layers={tuple(sorted({2, *layers}))}.")
        if 4 in layers and 1 not in layers and 2 not in layers:
            raise ValueError(f"{name}(layers={layers}): L4 (GSI) acts through sBCMA shedding (L1) and membrane "
                             f"BCMA (L2), neither of which is present; add 1 and/or 2, e.g. layers=(0, 1, 2, 4).")
        if self.valency not in (1, 2) or isinstance(self.valency, bool):
            raise ValueError(f"{name}(valency={self.valency!r}): expected 1 (one BCMA arm: teclistamab, "
                             "elranatamab, linvoseltamab) or 2 (bivalent BCMA: alnuctamab).")
        if self.clearance not in _CLEARANCES:
            raise ValueError(f"{name}(clearance={self.clearance!r}): expected one of {_CLEARANCES}.")
        if self.binding not in _BINDINGS:
            raise ValueError(f"{name}(binding={self.binding!r}): expected 'qe' (closed form, default) or "
                             "'mass_action' (explicit binding states).")
        if self.binding == "mass_action" and 2 not in layers:
            raise ValueError(f"{name}(binding='mass_action', layers={layers}): binding selects the L2 trimer "
                             "option but L2 is not in layers; add 2, or drop binding=.")
        if self.binding == "mass_action" and self.valency != 1:
            raise ValueError(f"{name}(binding='mass_action', valency=2): the mass-action option is for "
                             "monovalent drugs only; use binding='qe' (with avidity) for a bivalent drug.")
        if self.sink_volumes not in _SINK_VOLUMES:
            raise ValueError(f"{name}(sink_volumes={self.sink_volumes!r}): expected 'shared' (one volume vc) "
                             "or 'separate' (own volumes v_s and v_x, HIBMA26).")
        if self.sink_volumes == "separate" and 1 not in layers:
            raise ValueError(f"{name}(sink_volumes='separate', layers={layers}): the sink volumes belong to L1, "
                             "which is not in layers; add 1, or drop sink_volumes=.")
        if self.sink_volumes == "separate" and self.valency != 1:
            raise ValueError(f"{name}(sink_volumes='separate', valency=2): separate sink volumes are defined "
                             "for monovalent binding only (HIBMA26); use sink_volumes='shared'.")
        if not isinstance(self.absorption, bool):
            raise ValueError(f"{name}(absorption={self.absorption!r}): expected True (SC depot) or False.")

    # ------------------------------------------------------------------ names
    @property
    def states(self):
        names = ["depot"] if self.absorption else []
        names += ["central", "peripheral"]
        if 1 in self.layers:
            names += ["sbcma"]
        if 2 in self.layers and self.binding == "mass_action":
            names += ["drug_bm", "bcma_dimer", "cd3_dimer", "trimer", "useless_trimer"]
        if 3 in self.layers:
            names += ["tumour", "t_resting", "t_active", "t_exhausted", "m_protein", "flc"]
        if 4 in self.layers:
            names += ["gsi", "bcma_fold"]
        if 5 in self.layers:
            names += ["il6_bm"] + [f"il6_transit{i + 1}" for i in range(N_TRANSIT)] + ["il6", "cauc"]
        return tuple(names)

    @property
    def parameters(self):
        names = ["cl"]
        names += {"constant": [], "exponential": ["cl2", "kdes"], "sigmoid": ["imax_cl", "t50_cl", "hill_cl"]}[
            self.clearance
        ]
        names += ["vc", "q", "vp"]
        if self.absorption:
            names += ["ka", "f_bio"]
        if 1 in self.layers:
            names += ["kd_s", "k_s", "k_x", "s0"]
            if self.sink_volumes == "separate":
                names += ["v_s", "v_x"]
        if 2 in self.layers:
            names += ["p_bm", "v_bm", "kd_b", "kd_3", "r_b0", "r_cd3", "n0", "e0", "chi"]
            if 1 in self.layers:
                names += ["x_sbm"]
            if self.valency == 2:
                names += ["avidity"]
            if self.binding == "mass_action":
                names += ["koff_b", "koff_3", "k_bm"]
        if 3 in self.layers:
            names += ["kg", "nmax_rel", "kmax", "s_et", "tau50_n", "hill_n", "tau50_e", "hill_e", "eps_kill",
                      "k_out", "k_act", "k_exp", "tcap_rel", "k_con", "k_exh", "k_rec", "k_dx",
                      "k_m", "m0", "k_l", "l0"]
        if 4 in self.layers:
            names += ["k_gsi", "imax_gsi", "ic50_gsi", "hill_gsi", "k_int_b", "k_shed"]
        if 5 in self.layers:
            names += ["emax_il6", "ec50_il6", "hill_il6", "imax_ih", "ic50_ih", "hill_ih", "ktr_il6",
                      "kdeg_il6", "il6_0"]
        return tuple(names)

    @property
    def outputs(self):
        names = ["conc"]
        if 1 in self.layers:
            names += ["conc_free", "conc_functional", "sbcma_free", "sbcma_total"]
        if 2 in self.layers:
            names += ["trimers_per_tumour_cell", "trimers_per_t_cell"]
        if 3 in self.layers:
            names += ["tumour", "m_protein", "flc", "t_cells"]
        if 4 in self.layers:
            names += ["bcma_fold", "gsi_inhibition"]
        if 5 in self.layers:
            names += ["il6"]
        if 1 in self.layers and 2 in self.layers:
            names += ["conc_functional_bm"]  # last, so that the other outputs keep their positions
        if 3 in self.layers:
            names += ["t_exhausted_fraction"]  # after it, for the same reason
        return tuple(names)

    # ------------------------------------------------------------------ pieces
    def clearance_at(self, t, p):
        """CL(t) of free drug (L/day)."""
        if self.clearance == "exponential":
            return p["cl"] + p["cl2"] * jnp.exp(-p["kdes"] * t)
        if self.clearance == "sigmoid":
            return p["cl"] * jnp.exp(p["imax_cl"] * hill(t, p["t50_cl"], p["hill_cl"]))
        return p["cl"]

    def _sink_volumes(self, p):
        if self.sink_volumes == "separate":
            return p["v_s"], p["v_x"]
        return p["vc"], p["vc"]

    def _sbcma_baseline_amount(self, p):
        return p["s0"] * self._sink_volumes(p)[0]

    def _quantities(self, t, s, p):
        """Algebraic quantities (free species, receptors, trimers, rates) from the named states."""
        layers, vc = self.layers, p["vc"]
        drug = s["central"]
        q = {}
        # -- L1: split of total drug and total sBCMA (QE closed forms)
        if 1 not in layers:
            free = drug / vc
            q.update(conc=free, conc_free=free, drug_complexed=0.0,
                     c_full=free, c_part=0.0, c_cd3=free, c_useless=0.0)
        elif self.valency == 1:
            v_s, v_x = self._sink_volumes(p)
            f, g, x = free_amounts(drug, s["sbcma"], p["kd_s"], vc, v_s, v_x)
            free, cplx = f / vc, x / v_x
            q.update(conc=free + cplx, conc_free=free, conc_functional=free, sbcma_free=g / v_s,
                     sbcma_total=g / v_s + cplx, drug_complexed=x, sbcma_free_amount=g, sbcma_bound_amount=x,
                     c_full=free, c_part=0.0, c_cd3=free + cplx, c_useless=cplx)
        else:
            n, kd = self.valency, p["kd_s"]
            d_tot, s_tot = drug / vc, s["sbcma"] / vc
            s_free = free_sbcma(d_tot, s_tot, kd, n)
            theta = occupancy(s_free, kd)
            free = d_tot * (1.0 - theta) ** n  # no arm bound
            neutralised = d_tot * theta**n  # all arms bound
            complexed = -d_tot * jnp.expm1(n * jnp.log1p(-theta)) * vc  # >= 1 arm bound, nmol
            bound = n * d_tot * theta * vc  # sBCMA bound to drug, nmol
            sbcma_free_amount = jnp.where(bound < 0.5 * s["sbcma"], s["sbcma"] - bound, s_free * vc)
            q.update(conc=d_tot, conc_free=free, conc_functional=d_tot - neutralised,
                     sbcma_free=sbcma_free_amount / vc, sbcma_total=s_tot, drug_complexed=complexed,
                     sbcma_free_amount=sbcma_free_amount, sbcma_bound_amount=bound,
                     c_full=free, c_part=d_tot - free - neutralised, c_cd3=d_tot, c_useless=neutralised)
        # -- L4: GSI
        if 4 in layers:
            q["gsi_inhibition"] = p["imax_gsi"] * hill(s["gsi"], p["ic50_gsi"], p["hill_gsi"])
        # -- L1 synthesis, linked to tumour (L3) and shedding (L4)
        if 1 in layers:
            g_syn = 1.0
            if 3 in layers:
                g_syn = g_syn * s["tumour"]
            if 4 in layers:
                g_syn = g_syn * s["bcma_fold"] * (1.0 - q["gsi_inhibition"])
            q["sbcma_shedding"] = g_syn  # shedding relative to the drug-free baseline
            q["sbcma_synthesis"] = p["k_s"] * self._sbcma_baseline_amount(p) * g_syn
        # -- L2: receptors and trimers in the marrow
        if 2 in layers:
            tumour_cells = p["n0"] * (s["tumour"] if 3 in layers else 1.0)
            t_all = s["t_resting"] + s["t_active"] + s["t_exhausted"] if 3 in layers else 1.0  # / E0
            t_cells = p["e0"] * t_all
            r_b = p["r_b0"] * (s["bcma_fold"] if 4 in layers else 1.0)
            per_cell_to_nm = 1e9 / (AVOGADRO * p["v_bm"])
            bcma = r_b * tumour_cells * per_cell_to_nm
            cd3 = p["r_cd3"] * t_cells * per_cell_to_nm
            # marrow drug species: p_bm times plasma, then bound by the marrow's local sBCMA excess
            c_full, c_part, c_useless = (p["p_bm"] * q[k] for k in ("c_full", "c_part", "c_useless"))
            if 1 in layers:
                excess = p["x_sbm"] * p["s0"] * q["sbcma_shedding"]
                c_full, c_part, c_useless = marrow_excess_binding(c_full, c_part, c_useless, excess, p["kd_s"],
                                                                  self.valency)
            c_cd3 = p["p_bm"] * q["c_cd3"]
            if self.binding == "qe":
                kd_full = p["kd_b"] / p["avidity"] if self.valency == 2 else p["kd_b"]
                pair = trimers_per_pair(c_full, c_part, c_cd3, kd_full, p["kd_b"], p["kd_3"], p["chi"],
                                        bcma, cd3)  # Tri / (B T)
                tau_n = pair * r_b * cd3
                tau_e = pair * bcma * p["r_cd3"]
                trimer = pair * bcma * cd3
                # fraction of CD3 bound by drug (dimers, useless and productive trimers): T = T_free (1 + u) + Tri
                u = c_cd3 / p["kd_3"]
                cd3_bound = (u + pair * bcma) / (1.0 + u)
            else:
                binding, *d_fractions = mass_action_rates(
                    s["drug_bm"], c_useless, s["bcma_dimer"], s["trimer"], s["cd3_dimer"],
                    s["useless_trimer"], bcma, cd3, p["kd_b"], p["kd_3"], p["koff_b"], p["koff_3"], p["chi"])
                q.update(drug_bm_binding=binding, d_fractions=d_fractions)
                tau_n = s["trimer"] * r_b
                tau_e = s["trimer"] * bcma / cd3 * p["r_cd3"]
                trimer = s["trimer"] * bcma
                cd3_bound = s["cd3_dimer"] + s["useless_trimer"] + s["trimer"] * bcma / cd3
            q.update(tau_n=tau_n, tau_e=tau_e, trimer_nm=trimer, tumour_cells=tumour_cells, t_all=t_all,
                     c_full_bm=c_full, c_part_bm=c_part, cd3_bound=cd3_bound)
        # -- L3: engagement and killing
        if 3 in layers:
            q["phi"] = hill(q["tau_e"], p["tau50_e"], p["hill_e"])
            psi = hill(q["tau_n"], p["tau50_n"], p["hill_n"])
            effectors = (s["t_active"] + p["eps_kill"] * s["t_resting"]) * p["e0"]
            q["k_kill"] = kill_rate(p["kmax"], psi, effectors, q["tumour_cells"], p["s_et"])
        return q

    def _named(self, y):
        return {name: y[i] for i, name in enumerate(self.states)}

    # ------------------------------------------------------------------ model
    def vector_field(self, t, y, p):
        s = self._named(y)
        q = self._quantities(t, s, p)
        layers = self.layers
        d = {}
        # L0: PK of total drug; free drug D0 is cleared and distributes
        absorbed = p["ka"] * s["depot"] if self.absorption else 0.0
        if self.absorption:
            d["depot"] = -absorbed
        distribution = p["q"] * q["conc_free"] - p["q"] / p["vp"] * s["peripheral"]
        d["central"] = absorbed - self.clearance_at(t, p) * q["conc_free"] - distribution
        d["peripheral"] = distribution
        # L1: sBCMA turnover; drug carrying sBCMA is cleared at k_x with its sBCMA
        if 1 in layers:
            d["central"] = d["central"] - p["k_x"] * q["drug_complexed"]
            d["sbcma"] = q["sbcma_synthesis"] - p["k_s"] * q["sbcma_free_amount"] - p["k_x"] * q["sbcma_bound_amount"]
        # L2 option B: marrow free drug and receptor fractions
        if 2 in layers and self.binding == "mass_action":
            d["drug_bm"] = p["k_bm"] * (q["c_full_bm"] - s["drug_bm"]) - q["drug_bm_binding"]
            d["bcma_dimer"], d["trimer"], d["cd3_dimer"], d["useless_trimer"] = q["d_fractions"]
        # L3: tumour, T cells, paraproteins
        if 3 in layers:
            phi = q["phi"]
            d["tumour"] = p["kg"] * s["tumour"] * (1.0 - s["tumour"] / p["nmax_rel"]) - q["k_kill"] * s["tumour"]
            omega = q["cd3_bound"]
            d["t_resting"] = (p["k_out"] * (1.0 - s["t_resting"]) - p["k_act"] * phi * s["t_resting"]
                              + p["k_rec"] * (1.0 - omega) * s["t_exhausted"])
            d["t_active"] = (p["k_act"] * phi * s["t_resting"]
                             + p["k_exp"] * phi * s["t_active"] * (1.0 - q["t_all"] / p["tcap_rel"])
                             - p["k_con"] * s["t_active"] - p["k_exh"] * omega * s["t_active"])
            d["t_exhausted"] = (p["k_exh"] * omega * s["t_active"] - p["k_rec"] * (1.0 - omega) * s["t_exhausted"]
                                - p["k_dx"] * s["t_exhausted"])
            d["m_protein"] = p["k_m"] * (p["m0"] * s["tumour"] - s["m_protein"])
            d["flc"] = p["k_l"] * (p["l0"] * s["tumour"] - s["flc"])
        # L4: GSI exposure and membrane BCMA density
        if 4 in layers:
            d["gsi"] = -p["k_gsi"] * s["gsi"]
            d["bcma_fold"] = (p["k_int_b"] + p["k_shed"]) - (
                p["k_int_b"] + p["k_shed"] * (1.0 - q["gsi_inhibition"])) * s["bcma_fold"]
        # L5: IL-6 release in the marrow, transit, serum, cumulative exposure
        if 5 in layers:
            k_out_il6 = p["ktr_il6"] + p["kdeg_il6"]
            desensitised = p["imax_ih"] * hill(s["cauc"], p["ic50_ih"], p["hill_ih"])
            release = p["emax_il6"] * hill(1e3 * q["trimer_nm"], p["ec50_il6"], p["hill_il6"]) * (1.0 - desensitised)
            d["il6_bm"] = release - k_out_il6 * s["il6_bm"]
            previous = s["il6_bm"]
            for i in range(N_TRANSIT):
                name = f"il6_transit{i + 1}"
                d[name] = p["ktr_il6"] * previous - k_out_il6 * s[name]
                previous = s[name]
            d["il6"] = (p["kdeg_il6"] * p["il6_0"] + p["ktr_il6"] * previous * p["v_bm"] / p["vc"]
                        - p["kdeg_il6"] * s["il6"])
            d["cauc"] = s["il6_bm"]
        return jnp.stack([jnp.asarray(d[name], dtype=y.dtype) for name in self.states])

    def output(self, t, y, p):
        s = self._named(y)
        q = self._quantities(t, s, p)
        out = {"conc": q["conc"]}
        if 1 in self.layers:
            out.update({k: q[k] for k in ("conc_free", "conc_functional", "sbcma_free", "sbcma_total")})
        if 2 in self.layers:
            out.update(trimers_per_tumour_cell=q["tau_n"], trimers_per_t_cell=q["tau_e"])
        if 3 in self.layers:
            out.update(tumour=s["tumour"], m_protein=s["m_protein"], flc=s["flc"], t_cells=q["t_all"])
        if 4 in self.layers:
            out.update(bcma_fold=s["bcma_fold"], gsi_inhibition=q["gsi_inhibition"])
        if 5 in self.layers:
            out.update(il6=s["il6"])
        if 1 in self.layers and 2 in self.layers:
            out.update(conc_functional_bm=q["c_full_bm"] + q["c_part_bm"])
        if 3 in self.layers:
            out.update(t_exhausted_fraction=s["t_exhausted"] / (s["t_resting"] + s["t_active"] + s["t_exhausted"]))
        return jnp.stack([jnp.asarray(out[name], dtype=y.dtype) for name in self.outputs])

    def initial_state(self, p):
        """The drug-free baseline: no drug, sBCMA at s0, tumour and T cells at N0 and E0, M-protein
        and sFLC at m0 and l0, membrane BCMA at R_B0, serum IL-6 at il6_0; the rest zero."""
        baseline = {
            "sbcma": self._sbcma_baseline_amount(p) if 1 in self.layers else 0.0,
            "tumour": 1.0, "t_resting": 1.0,
            "m_protein": p.get("m0", 0.0), "flc": p.get("l0", 0.0),
            "bcma_fold": 1.0,
            "il6": p.get("il6_0", 0.0),
        }
        return jnp.stack([jnp.asarray(baseline.get(name, 0.0), dtype=float) for name in self.states])

    def bioavailability(self, p):
        f = jnp.ones(len(self.states))
        if self.absorption:
            f = f.at[self.state_index("depot")].set(p["f_bio"])
        return f
