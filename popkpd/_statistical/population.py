"""The population (statistical) model: typical values, IIV, covariates, residual error.

``PopulationModel`` combines a structural model with, for each structural parameter, a
``Parameter`` (prior of the typical value, optional inter-individual variability, covariate
effects) and, for each observed output, a residual error model; ``model(events, ...)`` is the
NumPyro model function.

Individual parameters of subject ``i`` (``d_i`` its random effect on the link scale, ``F_i`` the
product of its covariate factors):

* ``log`` link (positive parameters, the default): ``theta_i = theta_pop * F_i * exp(d_i)``;
* ``logit`` link (fractions such as ``f_bio``): ``logit(theta_i) = logit(theta_pop) + log F_i + d_i``
  (covariate factors multiply the odds);
* ``identity`` link: ``theta_i = theta_pop * F_i + d_i``.

Random effects are non-centred by default: ``eta_<param> ~ Normal(0, 1)`` and
``d_i = omega * eta_i``; with an LKJ ``correlation`` the standardised vector is correlated
through the Cholesky factor ``L`` of ``corr_iiv``: ``d_i = omega * (L @ eta_i)``. With
``centered=True`` (diagonal only) the sampled site is the subject's value on the link scale
before covariate factors, ``z_<param> ~ Normal(g(theta_pop), omega)`` (``g`` the link), and
``eta_<param> = d_i = z_i - g(theta_pop)`` is recorded beside it (deterministic). Centred in
location as well as scale: when the data pin each subject's value, ``theta_pop`` moves without
moving the ``S`` sampled values (sampling ``d_i ~ Normal(0, omega)`` instead, as popkpd did until
23 Nov 2026, ties ``theta_pop`` to all ``S`` deviations: a ridge of dimension ``S + 1`` that NUTS
crossed slowly in the virtual-trial fit: fits/majestec_virtual/README.md, runs 12 + 14 pooled, run 16).
``centered=("s0", "m0")`` centres only those parameters' random effects. Partly centred
(Papaspiliopoulos, Roberts and Skold 2007, Statistical Science 22:59), ``centered={"kg": 0.6}``:
the sampled site is ``z_i ~ Normal(w g(theta_pop), omega**w)`` and ``d_i = omega**(1 - w) (z_i -
w g(theta_pop))`` (still ``Normal(0, omega)``; the form of NumPyro's ``LocScaleReparam``), ``w = 0``
non-centred, ``w = 1`` centred. For a normal random effect whose data give it conditional variance
``v``, ``w = 1 - v / omega**2`` (1 minus the squared posterior sd of the standardised effect) makes
``z`` independent of the typical value a posteriori (the paper's section 2). Any weight above 0
makes the density unbounded as omega goes to 0, as centring does (below): in the virtual-trial
fit (fits/majestec_virtual/README.md, run 20) weights 0.3-0.7 on weakly informed effects sent the
MAP's L-BFGS path to that limit, Pathfinder started the chains there and five omegas stayed near
0. Centre the random
effects the data determine well for each subject (e.g. a baseline measured directly): non-centred
they make the typical value and the standardised effects strongly correlated a posteriori, which
NUTS mixes poorly; keep weakly informed ones non-centred (the funnel). A centred model's density
is unbounded as an omega goes to 0, so its MAP (``fit``'s default Laplace initialisation) can
collapse an omega and start the chains in the funnel's neck: check the MAP's omegas, or start
from ``init="prior_median"``.

NumPyro site names (public API; they become ArviZ variable names):

==========================  ==========  =====================================================
site                        shape       meaning
==========================  ==========  =====================================================
``<param>_pop``             ()          typical value (parameter unit); absent when Fixed
``omega_<param>``           ()          sd of the random effect on the link scale
                                        (deterministic for a parameter in ``iiv_shares``)
``iiv_total_<group>``       ()          ``iiv_shares`` only: sum of the group's squared
                                        omega / HalfNormal scale, ~ Chi2(k)
``iiv_share_<group>``       [k]         ``iiv_shares`` only: each omega's share of that
                                        total, ~ Dirichlet(1/2, ..., 1/2)
``eta_<param>``             [S]         random effect (standardised unless ``centered``;
                                        centred: deterministic, the deviation ``d``)
``z_<param>``               [S]         centred only: the sampled value (fully centred: on the
                                        link scale)
``corr_iiv``                [P, P]      correlation of the random effects (with ``LKJ``), in
                                        the order of ``PopulationModel.iiv_names``
``beta_<param>_<cov>``      ()          covariate effect (``<cov>`` is the label if given)
``sigma_<output>_add``      ()          additive residual sd (DV unit)
``sigma_<output>_prop``     ()          proportional residual sd (unitless)
``sigma_<output>``          ()          log-normal residual sd (sd of log DV)
``<param>``                 [S]/[S, C]  deterministic: individual values, for parameters with
                                        IIV or covariate effects
``obs``                     [S, O]      observations (masked where ``Events.obs_mask`` is False)
==========================  ==========  =====================================================
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable, Collection, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

import numpyro.distributions.distribution  # noqa: F401  (see _link_numpyro_submodules)

from .._events import Events, host_readable
from .._structural.base import AbstractStructuralModel
from .covariates import AbstractCovariateEffect
from .priors import LKJ, AbstractPrior, Fixed, HalfNormal, LogitNormal, as_prior
from .residual import AbstractResidualError, ObservationDistribution



def _link_numpyro_submodules() -> None:
    """Work around an import-order trap: ``import arviz_base`` before numpyro loads numpyro through
    ``lazy_loader``, after which loaded submodules can be missing as attributes of their parent
    package (``numpyro.distributions.distribution``, read by ``numpyro.factor`` for every
    log-Jacobian, raises AttributeError). Re-attach every loaded numpyro submodule to its parent."""
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("numpyro."):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = sys.modules.get(parent_name)
        if parent is not None and child not in vars(parent):
            setattr(parent, child, module)


_link_numpyro_submodules()

_LINKS = ("log", "logit", "identity")
_METHODS = ("closed_form", "ode")


class Parameter(eqx.Module):
    """Statistical description of one structural parameter.

    ``typical``: prior of the typical value (a number means ``Fixed(number)``); ``iiv``: prior of
    ``omega``, the sd of the random effect on the link scale (``None``: no IIV); ``covariates``:
    covariate effects; ``link``: ``"log"``, ``"logit"`` or ``"identity"`` (default: from the
    prior: log for positive priors, logit for ``LogitNormal``, identity otherwise).
    """

    typical: AbstractPrior
    iiv: AbstractPrior | None
    covariates: tuple[AbstractCovariateEffect, ...]
    link: str = eqx.field(static=True)

    def __init__(self, typical, iiv=None, covariates=(), link=None):
        self.typical = as_prior(typical, "Parameter typical value")
        self.iiv = None if iiv is None else as_prior(iiv, "Parameter iiv (omega)")
        if isinstance(covariates, AbstractCovariateEffect):
            covariates = (covariates,)
        self.covariates = tuple(covariates)
        self.link = self.typical.link if link is None else link

    def __check_init__(self):
        if self.link not in _LINKS:
            raise ValueError(f"Parameter(link={self.link!r}): expected one of {_LINKS}.")
        t = self.typical
        if self.link == "log" and not t.positive:
            raise ValueError(
                f"Parameter(typical={t.describe()}, link='log'): a log link needs a positive typical "
                "value; use LogNormal(median, sd) or Fixed(value > 0), or link='identity'."
            )
        if self.link == "logit" and not (
            isinstance(t, LogitNormal) or (isinstance(t, Fixed) and 0.0 < t.value < 1.0)
        ):
            raise ValueError(
                f"Parameter(typical={t.describe()}, link='logit'): a logit link needs a typical value "
                "in (0, 1); use LogitNormal(median, sd) or Fixed(0 < value < 1)."
            )
        if self.iiv is not None and not self.iiv.positive:
            raise ValueError(
                f"Parameter(iiv={self.iiv.describe()}): omega is a standard deviation; expected a "
                "prior on (0, inf) such as HalfNormal(0.5), or Fixed(value > 0)."
            )
        for effect in self.covariates:
            if not isinstance(effect, AbstractCovariateEffect):
                raise TypeError(
                    f"Parameter(covariates=...): received {effect!r}; expected covariate effects "
                    "(Power, Linear, Exponential, Categorical)."
                )

    def describe(self) -> dict:
        out = {"typical": self.typical.describe(), "link": self.link}
        if self.iiv is not None:
            out["iiv"] = self.iiv.describe()
        if self.covariates:
            out["covariates"] = [c.describe() for c in self.covariates]
        return out


def _check_iiv_shares(groups, parameters: dict) -> tuple:
    """``PopulationModel(iiv_shares=...)`` as ``((group, (name, ...)), ...)``, or a ValueError."""
    if not groups:
        return ()
    if not isinstance(groups, Mapping):
        raise TypeError(f"PopulationModel(iiv_shares={groups!r}): expected a mapping {{group: (name, name, ...)}}, "
                        "e.g. iiv_shares={'kill': ('kmax', 'k_exh')}.")
    out, seen = [], {}
    for group, names in groups.items():
        if not (isinstance(group, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", group)):
            raise ValueError(f"PopulationModel(iiv_shares=...): group name {group!r}; expected an identifier "
                             "(letters, digits, _), e.g. 'kill'.")
        names = (names,) if isinstance(names, str) else tuple(names)
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"PopulationModel(iiv_shares={{{group!r}: {list(names)}}}): expected two or more "
                             "distinct parameters whose omegas share one total.")
        for name in names:
            par = parameters.get(name)
            if par is None or not isinstance(par.iiv, HalfNormal):
                got = "is not a parameter" if par is None else (
                    "has no IIV" if par.iiv is None else f"has iiv={par.iiv.describe()}")
                raise ValueError(f"PopulationModel(iiv_shares={{{group!r}: {list(names)}}}): {name!r} {got}; "
                                 "expected parameters with iiv=HalfNormal(scale) (the split keeps that prior).")
            if name in seen:
                raise ValueError(f"PopulationModel(iiv_shares=...): {name!r} is in groups {seen[name]!r} and "
                                 f"{group!r}; expected each parameter in one group at most.")
            seen[name] = group
        out.append((group, names))
    return tuple(out)


def _site(name: str, prior: AbstractPrior):
    """Sample ``name`` from ``prior``, or return the fixed value (no site)."""
    if isinstance(prior, Fixed):
        return jnp.asarray(prior.value, dtype=float)
    return numpyro.sample(name, prior.distribution())


class PopulationModel(eqx.Module):
    """A structural model with priors, IIV, covariate effects and residual errors.

    Parameters
    ----------
    structural
        The structural model (e.g. ``OneCompartment()``).
    parameters
        ``{name: Parameter | prior | number}`` for every name in ``structural.parameters`` (a
        prior means ``Parameter(prior)``, a number ``Parameter(Fixed(number))``). Names
        ``rate_<state>`` / ``dur_<state>`` (modelled infusion rate/duration) may be added.
    error
        ``{output: residual error}`` for every output that has observations; a single residual
        error is accepted for a model with a single output.
    correlation
        ``LKJ(concentration)`` for correlated IIV among all parameters with IIV, or ``None``.
    method
        ``"closed_form"`` (linear models), ``"ode"`` (``simulate``, options in
        ``ode_options``), or a function ``predict(structural, params, events) -> [S, O]``.
    centered
        ``True``: centred random effects for every parameter with IIV; a collection of parameter
        names: centred for those only; a mapping ``{name: w}``, ``0 <= w <= 1``: partly centred
        with weight ``w`` (above; 1 centred, 0 non-centred); ``False`` (default): non-centred.
        Diagonal IIV only.
    iiv_shares
        ``{group: (name, name, ...)}``: the omegas of these parameters (each with a
        ``HalfNormal(s_i)`` prior) are sampled as their total and its shares instead of one by
        one, with the same prior: ``u_i = omega_i / s_i`` are independent HalfNormal(1), so
        ``iiv_total_<group> = sum(u_i**2) ~ Chi2(k)`` and ``iiv_share_<group> = u**2 / total ~
        Dirichlet(1/2, ..., 1/2)``, independent of it; ``omega_i = s_i sqrt(total * share_i)``
        is recorded as a deterministic site. For effects the data tell apart only in sum (two
        parameters that both speed up the tumour's decline), the posterior of the omegas is
        an arc ``sum(u_i**2) ~ const``, which NUTS, even with a dense mass matrix, crosses
        slowly; in these coordinates the arc is a line along the shares. They do not speed up
        a move along it that every patient's random effect must follow (non-centred effects
        scale with their omega): fits/majestec_virtual/README.md, run 24.
    """

    structural: AbstractStructuralModel
    parameters: dict
    error: dict
    correlation: LKJ | None
    method: str | Callable = eqx.field(static=True)
    centered: tuple = eqx.field(static=True)  # ((name, weight), ...) for the weights > 0, IIV order
    ode_options: dict = eqx.field(static=True)
    iiv_shares: tuple = eqx.field(static=True)  # ((group, (name, ...)), ...)

    def __init__(
        self,
        structural: AbstractStructuralModel,
        parameters: Mapping,
        error,
        *,
        correlation: LKJ | None = None,
        method: str | Callable = "closed_form",
        centered: bool | Collection[str] | Mapping[str, float] = False,
        ode_options: Mapping | None = None,
        iiv_shares: Mapping[str, Collection[str]] | None = None,
    ):
        if not isinstance(structural, AbstractStructuralModel):
            raise TypeError(
                f"PopulationModel(structural=...): received {type(structural).__name__}; expected a "
                "structural model instance such as OneCompartment()."
            )
        self.structural = structural
        self.parameters = {
            name: p if isinstance(p, Parameter) else Parameter(p) for name, p in dict(parameters).items()
        }
        if isinstance(error, AbstractResidualError):
            if len(structural.outputs) != 1:
                raise ValueError(
                    f"PopulationModel(error=...): received one residual error but "
                    f"{type(structural).__name__} has outputs {structural.outputs}; expected a dict "
                    "{output: error} naming the outputs that are observed."
                )
            error = {structural.outputs[0]: error}
        self.error = dict(error)
        self.correlation = correlation
        self.method = method
        iiv = tuple(n for n, p in self.parameters.items() if p.iiv is not None)
        if isinstance(centered, bool):
            weights = dict.fromkeys(iiv if centered else (), 1.0)
        elif isinstance(centered, str) or not isinstance(centered, Collection):
            raise TypeError(f"PopulationModel(centered={centered!r}): expected True, False, a collection of "
                            "parameter names, e.g. centered=('s0', 'm0'), or weights, e.g. {'kg': 0.6}.")
        else:
            weights = dict(centered) if isinstance(centered, Mapping) else dict.fromkeys(centered, 1.0)
            unknown = [n for n in weights if n not in iiv]
            if unknown:
                raise ValueError(f"PopulationModel(centered=...): {unknown} have no IIV; expected names from "
                                 f"the parameters with iiv=... {list(iiv)}.")
            bad = {n: w for n, w in weights.items()
                   if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w <= 1}
            if bad:
                raise ValueError(f"PopulationModel(centered={bad!r}): expected centring weights from 0 "
                                 "(non-centred) to 1 (centred).")
        self.centered = tuple((n, float(weights[n])) for n in iiv if weights.get(n, 0) > 0)
        self.ode_options = dict(ode_options or {})
        self.iiv_shares = _check_iiv_shares(iiv_shares, self.parameters)

    def __check_init__(self):
        name_s = type(self.structural).__name__
        expected = tuple(self.structural.parameters)
        missing = [n for n in expected if n not in self.parameters]
        if missing:
            raise ValueError(
                f"PopulationModel: no entry for parameters {missing} of {name_s}; expected one entry "
                f"for each of {expected}. Add e.g. parameters={{{missing[0]!r}: LogNormal(median=..., "
                "sd=...)}} or a Fixed value."
            )
        extra_ok = re.compile(r"^(rate|dur)_(" + "|".join(map(re.escape, self.structural.states)) + r")$")
        unknown = [n for n in self.parameters if n not in expected and not extra_ok.match(n)]
        if unknown:
            raise ValueError(
                f"PopulationModel: parameters {unknown} are not parameters of {name_s}; expected names "
                f"from {expected} (or rate_<state>/dur_<state> for modelled infusions). Check the spelling."
            )
        for out, err in self.error.items():
            if out not in self.structural.outputs:
                raise ValueError(
                    f"PopulationModel(error=...): output {out!r} is not an output of {name_s}; expected "
                    f"one of {tuple(self.structural.outputs)}."
                )
            if not isinstance(err, AbstractResidualError):
                raise TypeError(
                    f"PopulationModel(error={{{out!r}: {err!r}}}): expected a residual error model "
                    "(Additive, Proportional, Combined, LogNormalError)."
                )
        if not self.error:
            raise ValueError("PopulationModel(error={}): expected a residual error for at least one output.")
        if not (callable(self.method) or self.method in _METHODS):
            raise ValueError(
                f"PopulationModel(method={self.method!r}): expected 'closed_form', 'ode' or a function "
                "predict(structural, params, events) -> [S, O] predictions."
            )
        if self.correlation is not None:
            if not isinstance(self.correlation, LKJ):
                raise TypeError(f"PopulationModel(correlation={self.correlation!r}): expected LKJ(concentration) or None.")
            if len(self.iiv_names) < 2:
                raise ValueError(
                    f"PopulationModel(correlation=LKJ(...)): received IIV on {list(self.iiv_names)}; a "
                    "correlation needs at least two parameters with iiv=... . Remove correlation= or add IIV."
                )
            if self.centered:
                raise ValueError(
                    "PopulationModel(centered=..., correlation=LKJ(...)): correlated random effects are "
                    "only available non-centred; use centered=False."
                )
        seen = {}
        for name, par in self.parameters.items():
            for effect in par.covariates:
                site = effect.site_name(name)
                if site in seen:
                    raise ValueError(
                        f"PopulationModel: two covariate effects on {name!r} share the site {site!r}; "
                        "give one of them a distinct label=..., e.g. Categorical(..., label='sex_male')."
                    )
                seen[site] = effect

    # ----------------------------------------------------------------------------------------
    # names

    @property
    def iiv_names(self) -> tuple[str, ...]:
        """Parameters with IIV, in order (the order of ``corr_iiv``)."""
        return tuple(n for n, p in self.parameters.items() if p.iiv is not None)

    @property
    def varying_names(self) -> tuple[str, ...]:
        """Parameters whose individual values differ between subjects (IIV or covariates)."""
        return tuple(n for n, p in self.parameters.items() if p.iiv is not None or p.covariates)

    def population_sites(self) -> list[str]:
        """Names of the population-level sites (the usual summary), in model order: the sampled
        ones, and the omegas of ``iiv_shares`` groups (deterministic) with their groups' sites."""
        groups = [f"iiv_{part}_{group}" for group, _ in self.iiv_shares for part in ("total", "share")]
        return [name for name, prior in self._population_priors().items() if not isinstance(prior, Fixed)] + (
            ["corr_iiv"] if self.correlation is not None else []
        ) + groups

    def _shared_omega(self, site: str) -> bool:
        """Whether ``site`` is the omega of a parameter in an ``iiv_shares`` group."""
        return any(site == f"omega_{n}" for _, names in self.iiv_shares for n in names)

    def _iiv_share_sites(self, values: dict) -> None:
        """Sample each ``iiv_shares`` group's total and shares; put its omegas into ``values``."""
        for group, names in self.iiv_shares:
            k = len(names)
            total = numpyro.sample(f"iiv_total_{group}", dist.Chi2(float(k)))
            share = numpyro.sample(f"iiv_share_{group}", dist.Dirichlet(jnp.full(k, 0.5)))
            for j, name in enumerate(names):
                omega = self.parameters[name].iiv.scale * jnp.sqrt(total * share[j])
                values[f"omega_{name}"] = numpyro.deterministic(f"omega_{name}", omega)

    def _population_priors(self) -> dict[str, AbstractPrior]:
        priors = {}
        for name, par in self.parameters.items():
            priors[f"{name}_pop"] = par.typical
            for effect in par.covariates:
                priors[effect.site_name(name)] = effect.prior
            if par.iiv is not None:
                priors[f"omega_{name}"] = par.iiv
        for out, err in self.error.items():
            priors.update(err.priors(out))
        return priors

    def init_values(self, n_subjects: int) -> dict:
        """Starting values of the sampled sites: prior medians, zero random effects, no correlation."""
        values = {
            name: jnp.asarray(prior.init_value(), dtype=float)
            for name, prior in self._population_priors().items()
            if not isinstance(prior, Fixed) and not self._shared_omega(name)
        }
        for group, names in self.iiv_shares:  # every omega at its prior median
            k = len(names)
            values[f"iiv_total_{group}"] = jnp.asarray(k * HalfNormal(1.0).init_value() ** 2)
            values[f"iiv_share_{group}"] = jnp.full(k, 1.0 / k)
        if self.correlation is not None:
            values["corr_iiv"] = self.correlation.init_value(len(self.iiv_names))
        for name in self.iiv_names:
            if self.is_centered(name):  # zero deviation
                loc = self.centring(name) * self._link(name, self._typical(name, values))
                values[f"z_{name}"] = jnp.full(n_subjects, loc, dtype=float)
            else:
                values[f"eta_{name}"] = jnp.zeros(n_subjects)
        return values

    def _typical(self, name: str, values: dict):
        """``name``'s typical value: its site's value in ``values``, else its Fixed value."""
        if f"{name}_pop" in values:
            return values[f"{name}_pop"]
        return jnp.asarray(self.parameters[name].typical.value, dtype=float)

    def _link(self, name: str, value):
        """``g(value)``: ``name``'s typical value on its link scale."""
        link = self.parameters[name].link
        if link == "log":
            return jnp.log(value)
        return jnp.log(value) - jnp.log1p(-value) if link == "logit" else jnp.asarray(value, dtype=float)

    # ----------------------------------------------------------------------------------------
    # checks on the data (host side)

    def check(self, events: Events, covariate_names=(), ids=None) -> None:
        """Check that ``events`` fit this model; raise a ``ValueError`` naming ID/row otherwise."""
        covariate_names = tuple(covariate_names)
        n = events.n_subjects
        ids = np.arange(1, n + 1) if ids is None else np.asarray(ids)
        for name, par in self.parameters.items():
            for effect in par.covariates:
                k = self._covariate_index(effect, name, covariate_names)
                values = np.asarray(events.cov_value)[:, :, k]
                x = values if effect.time_varying else values[:, 0]
                effect.check_values(x, ids, name)
        mask = np.asarray(events.obs_mask)
        if not mask.any():
            raise ValueError(
                "The data have no observation records (EVID=0, MDV=0); expected at least one to fit."
            )
        output = np.asarray(events.obs_output)
        dv = np.asarray(events.obs_dv)
        cens = np.asarray(events.obs_cens)
        limit = np.asarray(events.obs_limit)
        row = np.asarray(events.obs_row)
        outputs = tuple(self.structural.outputs)

        def where_(bad):
            s, o = np.argwhere(bad)[0]
            return f"row {int(row[s, o])} (ID {ids[s]})"

        for k in np.unique(output[mask]):
            if not 0 <= k < len(outputs):
                raise ValueError(
                    f"{where_(mask & (output == k))}: observation of output index {int(k)}, but "
                    f"{type(self.structural).__name__} has outputs {outputs}. Check DVID/CMT."
                )
            if outputs[k] not in self.error:
                raise ValueError(
                    f"{where_(mask & (output == k))}: observation of output {outputs[k]!r}, which has no "
                    f"residual error model; expected error={{{outputs[k]!r}: ...}} in PopulationModel "
                    "(or drop these records)."
                )
        bad = mask & ~np.isfinite(dv)
        if bad.any():
            raise ValueError(f"{where_(bad)}: DV is {dv[bad][0].item()!r}; expected a finite number on an observation record.")
        for k, out in enumerate(outputs):
            err = self.error.get(out)
            if err is None or not err.log_scale:
                continue
            bad = mask & (output == k) & (dv <= 0)
            if bad.any():
                what = "the LLOQ/ULOQ (DV) of a censored record" if cens[bad][0] != 0 else "DV"
                raise ValueError(
                    f"{where_(bad)}: {what} is {dv[bad][0].item()!r} for output {out!r} with LogNormalError; "
                    "expected > 0 (log DV). Flag values below the LLOQ as censored (CENS=1, DV=LLOQ) or "
                    "use a Combined error."
                )
        has_limit = mask & np.isfinite(limit)
        bad = has_limit & (((cens == 1) & (limit >= dv)) | ((cens == -1) & (limit <= dv)))
        if bad.any():
            raise ValueError(
                f"{where_(bad)}: LIMIT={limit[bad][0].item()!r} with DV={dv[bad][0].item()!r} and CENS={cens[bad][0].item()}; "
                "expected LIMIT < DV for CENS=1 (the value lies in (LIMIT, DV)) and LIMIT > DV for CENS=-1."
            )

    def _covariate_index(self, effect, parameter, covariate_names) -> int:
        if effect.covariate not in covariate_names:
            raise ValueError(
                f"Covariate {effect.covariate!r} (effect on {parameter!r}) is not in the data; the "
                f"dataset has covariates {list(covariate_names)}. Read it with "
                f"read_nonmem(..., covariates=[..., {effect.covariate!r}]) or fix the spelling."
            )
        return covariate_names.index(effect.covariate)

    # ----------------------------------------------------------------------------------------
    # the model

    def _omega(self, name: str, values: Mapping):
        """``name``'s IIV sd: its site's value in ``values``, else its Fixed value."""
        prior = self.parameters[name].iiv
        if f"omega_{name}" in values:
            return values[f"omega_{name}"]
        if isinstance(prior, Fixed):
            return jnp.asarray(prior.value, dtype=float)
        raise ValueError(
            f"individual_parameters: values has random effects but no 'omega_{name}'; expected the "
            "omega of every parameter with IIV (or no eta_* at all for population predictions)."
        )

    def _deviations(self, values: dict) -> dict:
        """Random effects on the link scale, ``{param: [S]}``."""
        names = self.iiv_names
        if not names:
            return {}
        omega = {n: self._omega(n, values) for n in names if not self.is_centered(n)}
        if self.correlation is not None and "corr_iiv" not in values:
            raise ValueError(
                "individual_parameters: values has random effects but no 'corr_iiv'; expected the "
                "correlation matrix (or no eta_* at all for population predictions)."
            )
        if self.correlation is None:
            return {n: values[f"eta_{n}"] if self.is_centered(n) else omega[n] * values[f"eta_{n}"] for n in names}
        eta = jnp.stack([values[f"eta_{n}"] for n in names], axis=-1)  # [S, P]
        chol = jnp.linalg.cholesky(values["corr_iiv"])
        dev = (eta @ chol.T) * jnp.stack([omega[n] for n in names])
        return {n: dev[..., i] for i, n in enumerate(names)}

    def individual_parameters(self, values: Mapping, events: Events, covariate_names=()) -> dict:
        """Individual parameters ``{name: [S] or [S, C]}`` from site values (constrained).

        ``values`` maps site names to values (``<param>_pop``, ``omega_<param>``, ``eta_<param>``,
        ``beta_...``, ``corr_iiv``); Fixed quantities need not be given. Missing ``eta_<param>``
        means zero random effects (population predictions).
        """
        n = events.n_subjects
        values = dict(values)
        dev = {}
        if any(f"eta_{name}" in values for name in self.iiv_names):
            for name in self.iiv_names:
                values.setdefault(f"eta_{name}", jnp.zeros(n))
            dev = self._deviations(values)
        return self._with_deviations(values, dev, events, covariate_names)

    def _with_deviations(self, values: Mapping, dev: Mapping, events: Events, covariate_names=()) -> dict:
        """``individual_parameters`` with the random effects given as deviations on the link
        scale, ``{param: [S]}`` (missing: 0)."""
        covariate_names = tuple(covariate_names)
        n = events.n_subjects
        out = {}
        for name, par in self.parameters.items():
            pop = self._typical(name, values)
            time_varying = any(e.time_varying for e in par.covariates)
            factors = []
            for effect in par.covariates:
                k = self._covariate_index(effect, name, covariate_names)
                site = effect.site_name(name)
                beta = values[site] if site in values else jnp.asarray(effect.prior.value, dtype=float)
                x = events.cov_value[:, :, k] if effect.time_varying else events.cov_value[:, 0, k]
                f = effect.factor(x, beta)
                factors.append(f if (effect.time_varying or not time_varying) else f[:, None])
            d = dev.get(name, jnp.zeros(n))
            if time_varying:
                d = d[:, None]
            if par.link == "logit":
                z = self._link(name, pop) + d
                for f in factors:
                    z = z + jnp.log(f)
                theta = jax.nn.sigmoid(z)
            else:
                theta = pop
                for f in factors:
                    theta = theta * f
                theta = theta * jnp.exp(d) if par.link == "log" else theta + d
            out[name] = theta  # [S], or [S, C] with a time-varying covariate
        return out

    def predict(self, params: Mapping, events: Events, **ode_options):
        """Individual predictions ``[S, O]`` (output ``obs_output`` at each observation time);
        ``ode_options`` override the model's (e.g. ``adjoint=diffrax.ForwardMode()`` for ``jax.jacfwd``)."""
        if callable(self.method):
            result = self.method(self.structural, params, events)
        elif self.method == "closed_form":
            from .._ode.analytic import closed_form

            result = closed_form(self.structural, params, events)
        else:
            from .._ode.simulate import simulate

            result = simulate(self.structural, params, events, **(self.ode_options | ode_options))
        return getattr(result, "pred", result)

    def observation_distribution(self, pred, values: Mapping, events: Events) -> ObservationDistribution:
        """Likelihood of every ``[S, O]`` entry (padded entries get harmless stand-ins: mask them)."""
        mask = events.obs_mask
        f = jnp.where(mask, pred, 1.0)
        loc = jnp.zeros_like(f)
        scale = jnp.ones_like(f)
        log_scale = jnp.zeros(f.shape, dtype=bool)
        for k, out in enumerate(self.structural.outputs):
            err = self.error.get(out)
            if err is None:
                continue
            sigma = {}
            for site, prior in err.priors(out).items():
                sigma[site] = values[site] if site in values else jnp.asarray(prior.value, dtype=float)
            l, s = err.loc_scale(f, sigma, out)
            sel = mask & (events.obs_output == k)
            loc = jnp.where(sel, l, loc)
            scale = jnp.where(sel, s, scale)
            log_scale = log_scale | (sel & err.log_scale)
        cens = jnp.where(mask, events.obs_cens, 0)
        limit = jnp.where(mask, events.obs_limit, jnp.nan)
        censored = True
        if host_readable(events.obs_cens) and host_readable(mask):
            censored = bool(np.any(np.asarray(events.obs_cens)[np.asarray(mask)] != 0))
        return ObservationDistribution(loc, scale, cens, limit, log_scale, censored=censored)

    def model(self, events: Events, *, covariate_names=(), observed: bool = True) -> None:
        """The NumPyro model. ``observed=False`` samples ``obs`` (prior/posterior predictive)."""
        covariate_names = tuple(covariate_names)
        if all(host_readable(x) for x in (events.obs_mask, events.obs_output, events.cov_value)):
            self.check(events, covariate_names)
        values = {}
        for name, prior in self._population_priors().items():
            if self._shared_omega(name):
                continue
            value = _site(name, prior)
            if not isinstance(prior, Fixed):
                values[name] = value
        self._iiv_share_sites(values)
        if self.correlation is not None:
            values["corr_iiv"] = numpyro.sample("corr_iiv", self.correlation.distribution(len(self.iiv_names)))
        if self.iiv_names:
            with numpyro.plate("subject", events.n_subjects):
                for name in self.iiv_names:
                    w = self.centring(name)
                    if w > 0.0:
                        omega = values.get(f"omega_{name}", self.parameters[name].iiv.init_value())
                        loc = self._link(name, self._typical(name, values))
                        if w == 1.0:
                            z = numpyro.sample(f"z_{name}", dist.Normal(loc, omega))
                            d = z - loc
                        else:  # partly centred: d = omega^(1 - w) (z - w loc) ~ Normal(0, omega)
                            z = numpyro.sample(f"z_{name}", dist.Normal(w * loc, omega**w))
                            d = omega ** (1.0 - w) * (z - w * loc)
                        values[f"eta_{name}"] = numpyro.deterministic(f"eta_{name}", d)
                    else:
                        values[f"eta_{name}"] = numpyro.sample(f"eta_{name}", dist.Normal(0.0, 1.0))
        params = self.individual_parameters(values, events, covariate_names)
        for name in self.varying_names:
            numpyro.deterministic(name, params[name])
        pred = self.predict(params, events)
        obs_dist = self.observation_distribution(pred, values, events)
        dv = jnp.where(events.obs_mask, events.obs_dv, 1.0)
        with numpyro.handlers.mask(mask=events.obs_mask):
            numpyro.sample("obs", obs_dist, obs=dv if observed else None)

    # ----------------------------------------------------------------------------------------

    def centring(self, name: str) -> float:
        """``name``'s centring weight: 0 non-centred, 1 centred, between: partly centred."""
        return dict(self.centered).get(name, 0.0)

    def is_centered(self, name: str) -> bool:
        """Whether ``eta_<name>`` is the deviation itself (centred, fully or partly) rather than standardised."""
        return self.centring(name) > 0.0

    def _centered_description(self):
        weights = dict(self.centered)
        if not weights:
            return False
        if any(w != 1.0 for w in weights.values()):
            return weights
        return True if tuple(weights) == self.iiv_names else list(weights)

    def describe(self) -> dict:
        """A plain (TOML/JSON-able) description of the model, stored with every fit."""
        structural = {"class": type(self.structural).__name__}
        for field in dataclasses.fields(self.structural):
            value = getattr(self.structural, field.name)
            if isinstance(value, bool | int | float | str):
                structural[field.name] = value
        out = {
            "structural": structural,
            "parameters": {name: p.describe() for name, p in self.parameters.items()},
            "error": {out: e.describe() for out, e in self.error.items()},
            "method": self.method if isinstance(self.method, str) else getattr(self.method, "__name__", repr(self.method)),
            "centered": self._centered_description(),
        }
        if self.iiv_shares:
            out["iiv_shares"] = {group: list(names) for group, names in self.iiv_shares}
        if self.correlation is not None:
            out["correlation"] = self.correlation.describe()
        if self.ode_options:
            out["ode_options"] = {k: v if isinstance(v, bool | int | float | str) else repr(v) for k, v in self.ode_options.items()}
        return out
