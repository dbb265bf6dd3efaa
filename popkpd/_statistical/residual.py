"""Residual error models (one per output) and the observation likelihood, with BLQ (M3/M4).

Each observation ``y`` of an output with individual prediction ``f`` (same unit as DV) follows
a normal distribution on a *transformed* scale ``g(y) ~ Normal(loc, scale)``:

==================  ==========  =========  ==================================  ====================
class               ``g``       ``loc``    ``scale``                           NumPyro sites
==================  ==========  =========  ==================================  ====================
``Additive``        identity    ``f``      ``a``                               ``sigma_<output>_add``
``Proportional``    identity    ``f``      ``b * |f|``                         ``sigma_<output>_prop``
``Combined``        identity    ``f``      ``sqrt(a**2 + (b * f)**2)``         both of the above
``LogNormalError``  ``log``     ``log f``  ``s``                               ``sigma_<output>``
==================  ==========  =========  ==================================  ====================

``a`` is in the DV unit; ``b`` and ``s`` are unitless (``b`` is a coefficient of variation).
``Combined`` uses the variance-sum convention (NONMEM's "combined error" with two EPS sharing
one standard deviation, Monolix's ``combined2``); the sd-sum variant ``a + b*f`` is not offered.

``LogNormalError`` is the density of ``y`` itself (``LogNormal(log f, s)``, i.e. ``log y ~
Normal(log f, s)`` including the Jacobian ``-log y``), so that log-likelihoods, and LOO, are
comparable across error models on the DV scale. Quantified DV must be > 0 with it.

Censored records (``Events.obs_cens``; DV holds the limit of quantification):

* ``cens == 1`` (below LLOQ), M3: ``log P(y < LLOQ) = log Phi(z)`` with
  ``z = (g(LLOQ) - loc) / scale``; with a finite ``LIMIT`` below it (M4-style interval):
  ``log P(LIMIT < y < LLOQ)``.
* ``cens == -1`` (above ULOQ): ``log P(y > ULOQ) = log Phi(-z)``; with a finite ``LIMIT`` above
  it: ``log P(ULOQ < y < LIMIT)``.

Draws from the distribution (posterior predictive) are of the uncensored ``y``: apply the limit
afterwards where a censored view is wanted (e.g. in a VPC).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.stats as jstats
import numpyro.distributions as dist
from numpyro.distributions import constraints

from .priors import AbstractPrior, HalfNormal, as_prior

_TINY = float(jnp.finfo(jnp.float64).tiny)


def _to_prior(value):
    return as_prior(value, "residual error prior")


def _check_sd_prior(cls, name, prior):
    if not prior.positive:
        raise ValueError(
            f"{cls}({name}={prior.describe()}): a standard deviation needs a prior on (0, inf); "
            "expected e.g. HalfNormal(scale), LogNormal(median, sd) or Fixed(value > 0)."
        )


class AbstractResidualError(eqx.Module):
    """Base class. ``priors(output)`` maps site names to priors; ``loc_scale(f, sigma)`` gives
    the normal parameters on the transformed scale."""

    log_scale = False

    def priors(self, output: str) -> dict[str, AbstractPrior]:
        raise NotImplementedError

    def loc_scale(self, f, sigma: dict, output: str):
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError


class Additive(AbstractResidualError):
    """``y ~ Normal(f, a)``; ``sigma`` is the prior of ``a`` (DV unit)."""

    sigma: AbstractPrior = eqx.field(converter=_to_prior)

    def __check_init__(self):
        _check_sd_prior("Additive", "sigma", self.sigma)

    def priors(self, output):
        return {f"sigma_{output}_add": self.sigma}

    def loc_scale(self, f, sigma, output):
        return f, sigma[f"sigma_{output}_add"] * jnp.ones_like(f)

    def describe(self):
        return {"error": "Additive", "sigma": self.sigma.describe()}


class Proportional(AbstractResidualError):
    """``y ~ Normal(f, b |f|)``; ``sigma`` is the prior of ``b`` (unitless, a CV)."""

    sigma: AbstractPrior = eqx.field(converter=_to_prior, default=HalfNormal(0.5))

    def __check_init__(self):
        _check_sd_prior("Proportional", "sigma", self.sigma)

    def priors(self, output):
        return {f"sigma_{output}_prop": self.sigma}

    def loc_scale(self, f, sigma, output):
        return f, sigma[f"sigma_{output}_prop"] * jnp.abs(f)

    def describe(self):
        return {"error": "Proportional", "sigma": self.sigma.describe()}


class Combined(AbstractResidualError):
    """``y ~ Normal(f, sqrt(a**2 + (b f)**2))``; priors of ``a`` (DV unit) and ``b`` (unitless)."""

    additive: AbstractPrior = eqx.field(converter=_to_prior)
    proportional: AbstractPrior = eqx.field(converter=_to_prior, default=HalfNormal(0.5))

    def __check_init__(self):
        _check_sd_prior("Combined", "additive", self.additive)
        _check_sd_prior("Combined", "proportional", self.proportional)

    def priors(self, output):
        return {f"sigma_{output}_add": self.additive, f"sigma_{output}_prop": self.proportional}

    def loc_scale(self, f, sigma, output):
        a, b = sigma[f"sigma_{output}_add"], sigma[f"sigma_{output}_prop"]
        return f, jnp.sqrt(a**2 + (b * f) ** 2)

    def describe(self):
        return {"error": "Combined", "additive": self.additive.describe(), "proportional": self.proportional.describe()}


class LogNormalError(AbstractResidualError):
    """``log y ~ Normal(log f, s)``; ``sigma`` is the prior of ``s`` (unitless, sd of log y)."""

    sigma: AbstractPrior = eqx.field(converter=_to_prior, default=HalfNormal(0.5))
    log_scale = True

    def __check_init__(self):
        _check_sd_prior("LogNormalError", "sigma", self.sigma)

    def priors(self, output):
        return {f"sigma_{output}": self.sigma}

    def loc_scale(self, f, sigma, output):
        # predictions can be exactly zero (before absorption) or round to tiny negatives in an
        # ODE solve: floor at the smallest normal float so that log f stays finite
        return jnp.log(jnp.maximum(f, _TINY)), sigma[f"sigma_{output}"] * jnp.ones_like(f)

    def describe(self):
        return {"error": "LogNormalError", "sigma": self.sigma.describe()}


def _log_diff_exp(a, b):
    """log(exp(a) - exp(b)) for a > b."""
    return a + jnp.log1p(-jnp.exp(b - a))


def _interval_arguments(lo, hi):
    """``(a, b)`` with ``Phi(hi) - Phi(lo) = Phi(a) - Phi(b)``, both in the lower tail when
    ``lo > 0`` (``a = -lo``, ``b = -hi``), which keeps the difference accurate."""
    flip = lo > 0
    return jnp.where(flip, -lo, hi), jnp.where(flip, -hi, lo)


class ObservationDistribution(dist.Distribution):
    """Likelihood of one (possibly censored) observation per element; see the module docstring.

    ``loc``/``scale``: normal parameters on the transformed scale; ``cens``: 0, 1 (below LLOQ) or
    -1 (above ULOQ); ``limit``: the other bound of a censored record or NaN; ``log_scale``
    (bool, elementwise): whether ``g = log`` for that element. ``log_prob(dv)`` is a density for
    quantified records and a log probability for censored ones. ``censored=False`` (static)
    declares that no element is censored and skips the censored terms (a smaller program).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    pytree_data_fields = ("loc", "scale", "cens", "limit", "log_scale")
    pytree_aux_fields = ("censored",)

    def __init__(self, loc, scale, cens=0, limit=jnp.nan, log_scale=False, *, censored=True, validate_args=None):
        shapes = [jnp.shape(a) for a in (loc, scale, cens, limit, log_scale)]
        batch_shape = jax.lax.broadcast_shapes(*shapes)
        self.loc = jnp.broadcast_to(loc, batch_shape)
        self.scale = jnp.broadcast_to(jnp.maximum(scale, _TINY), batch_shape)
        self.cens = jnp.broadcast_to(cens, batch_shape)
        self.limit = jnp.broadcast_to(jnp.asarray(limit, dtype=float), batch_shape)
        self.log_scale = jnp.broadcast_to(jnp.asarray(log_scale, dtype=bool), batch_shape)
        self.censored = bool(censored)
        super().__init__(batch_shape=batch_shape, validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        eps = jax.random.normal(key, tuple(sample_shape) + self.batch_shape)
        g = self.loc + self.scale * eps
        return jnp.where(self.log_scale, jnp.exp(jnp.where(self.log_scale, g, 0.0)), g)

    def _g(self, y):
        """The transform ``g`` elementwise; ``y`` must be > 0 where ``log_scale``."""
        return jnp.where(self.log_scale, jnp.log(jnp.where(self.log_scale, y, 1.0)), y)

    def log_prob(self, value):
        loc, scale = self.loc, self.scale
        g = self._g(value)
        z = (g - loc) / scale
        quantified = jstats.norm.logpdf(z) - jnp.log(scale) - jnp.where(self.log_scale, g, 0.0)
        if not self.censored:
            return quantified
        # the other bound, where one is given. Rows that do not use an interval get constant
        # stand-ins, so that its terms stay finite with zero gradient there (jnp.where passes NaN
        # gradients of an unused branch on)
        has_limit = jnp.isfinite(self.limit) & (~self.log_scale | (self.limit > 0))
        z_limit = (self._g(jnp.where(has_limit, self.limit, value)) - loc) / scale
        lower = has_limit & (self.cens == 1)  # P(LIMIT < y < LLOQ): interval (z_limit, z)
        upper = has_limit & (self.cens == -1)  # P(ULOQ < y < LIMIT): interval (z, z_limit)
        below_a, below_b = _interval_arguments(jnp.where(lower, z_limit, -1.0), jnp.where(lower, z, 0.0))
        above_a, above_b = _interval_arguments(jnp.where(upper, z, 0.0), jnp.where(upper, z_limit, 1.0))
        # one call on the stacked arguments: log Phi is a large expression to compile
        lc = jstats.norm.logcdf(jnp.stack([z, -z, below_a, below_b, above_a, above_b]))
        below = jnp.where(lower, _log_diff_exp(lc[2], lc[3]), lc[0])
        above = jnp.where(upper, _log_diff_exp(lc[4], lc[5]), lc[1])
        return jnp.where(self.cens == 1, below, jnp.where(self.cens == -1, above, quantified))
