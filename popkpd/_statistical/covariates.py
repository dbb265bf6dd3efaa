"""Covariate effects on typical values.

A covariate effect multiplies the typical value of one structural parameter by a factor that
depends on a covariate ``x`` (a column of the dataset, in its unit) and an effect parameter
``beta`` (NumPyro site ``beta_<parameter>_<covariate>``, or ``beta_<parameter>_<label>``):

=================  ==================================  ==========================================
class              factor                              typical use
=================  ==================================  ==========================================
``Power``          ``(x / reference) ** beta``         allometry, ``(WT/70)**0.75``
``Linear``         ``1 + beta * (x - reference)``      age or creatinine clearance, linear
``Exponential``    ``exp(beta * (x - reference))``     a log-linear effect
``Categorical``    ``beta`` where the condition holds  SEX == 1, a score below a cut-off
                   on ``x``, else 1
=================  ==================================  ==========================================

A typical value proportional to a covariate (``theta * WT``, ``theta`` then per unit of WT) is
``Power("WT", reference=1.0, prior=Fixed(1.0))``.

By default the covariate is the subject's baseline (its first record). With
``time_varying=True`` the factor follows the covariate on the ``Events.cov_time`` grid, and the
parameter it acts on becomes an ``[S, C]`` array (supported by ``simulate``; NONMEM's convention:
a record's value covers the interval that ends at that record).

How the factor enters depends on the parameter's link (see ``population.py``): it multiplies the
typical value (``log``/``identity`` link) or the odds (``logit`` link, e.g. ``f_bio``).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .priors import AbstractPrior, _is_number, as_prior


def _to_prior(value):
    return as_prior(value, "covariate effect prior")


class AbstractCovariateEffect(eqx.Module):
    """Base class: ``covariate`` (column name), ``prior`` of ``beta``, ``factor(x, beta)``."""

    covariate: str
    time_varying: bool = eqx.field(default=False, kw_only=True, static=True)
    label: str | None = eqx.field(default=None, kw_only=True, static=True)

    def factor(self, x, beta):
        """Multiplicative factor on the typical value (unitless), elementwise in ``x``."""
        raise NotImplementedError

    def site_name(self, parameter: str) -> str:
        return f"beta_{parameter}_{self.label or self.covariate}"

    def check_values(self, x: np.ndarray, ids, parameter: str) -> None:
        """Host-side check of the covariate values used by this effect (``x``: [S] or [S, C])."""
        bad = ~np.isfinite(x)
        if bad.any():
            subject = int(np.argwhere(bad)[0][0])
            raise ValueError(
                f"Covariate {self.covariate!r} (used on {parameter!r}) is missing or not finite "
                f"for ID {ids[subject]} (value {x[bad][0].item()!r}); expected a finite number for every "
                "subject. Impute it in the data or remove the covariate effect."
            )

    def describe(self) -> dict:
        out = {"effect": type(self).__name__, "covariate": self.covariate}
        for name in ("reference", "equals", "below", "above"):
            value = getattr(self, name, None)
            if value is not None:
                out[name] = float(value)
        out["prior"] = self.prior.describe()
        if self.time_varying:
            out["time_varying"] = True
        if self.label is not None:
            out["label"] = self.label
        return out


def _check_reference(cls, reference):
    if not (_is_number(reference) and math.isfinite(reference)):
        raise ValueError(f"{cls}(reference={reference!r}): expected a finite number in the covariate's unit.")


class Power(AbstractCovariateEffect):
    """``(x / reference) ** beta``; ``reference`` > 0 in the covariate's unit (e.g. 70 kg)."""

    reference: float
    prior: AbstractPrior = eqx.field(converter=_to_prior)

    def __check_init__(self):
        _check_reference("Power", self.reference)
        if self.reference <= 0:
            raise ValueError(
                f"Power(reference={self.reference!r}): expected a reference > 0 (the factor is "
                "(x / reference) ** beta). Use Exponential for covariates that can be <= 0."
            )

    def factor(self, x, beta):
        return (x / self.reference) ** beta

    def check_values(self, x, ids, parameter):
        super().check_values(x, ids, parameter)
        bad = x <= 0
        if bad.any():
            subject = int(np.argwhere(bad)[0][0])
            raise ValueError(
                f"Power effect of {self.covariate!r} on {parameter!r}: ID {ids[subject]} has "
                f"{self.covariate}={x[bad][0].item()!r}; expected values > 0 for (x / reference) ** beta. "
                "Use Linear or Exponential for covariates that can be zero or negative."
            )


class Linear(AbstractCovariateEffect):
    """``1 + beta * (x - reference)``; ``beta`` per unit of the covariate.

    The factor is not forced positive: keep ``beta`` and the covariate range such that it is.
    """

    reference: float
    prior: AbstractPrior = eqx.field(converter=_to_prior)

    def __check_init__(self):
        _check_reference("Linear", self.reference)

    def factor(self, x, beta):
        return 1.0 + beta * (x - self.reference)


class Exponential(AbstractCovariateEffect):
    """``exp(beta * (x - reference))``; ``beta`` per unit of the covariate."""

    reference: float
    prior: AbstractPrior = eqx.field(converter=_to_prior)

    def __check_init__(self):
        _check_reference("Exponential", self.reference)

    def factor(self, x, beta):
        return jnp.exp(beta * (x - self.reference))


class Categorical(AbstractCovariateEffect):
    """Factor ``beta`` (> 0) for subjects meeting a condition on the covariate, 1 otherwise.

    Give exactly one condition: ``equals`` (``x == equals``, e.g. SEX == 1), ``below``
    (``x < below``) or ``above`` (``x > above``). ``prior`` is on the factor itself, e.g.
    ``LogNormal(median=1.0, sd=0.5)``.
    """

    prior: AbstractPrior = eqx.field(converter=_to_prior)
    equals: float | None = eqx.field(default=None, kw_only=True)
    below: float | None = eqx.field(default=None, kw_only=True)
    above: float | None = eqx.field(default=None, kw_only=True)

    def __check_init__(self):
        given = {k: v for k, v in (("equals", self.equals), ("below", self.below), ("above", self.above)) if v is not None}
        if len(given) != 1:
            raise ValueError(
                f"Categorical({self.covariate!r}): received conditions {given or 'none'}; expected "
                "exactly one of equals=, below= or above=, e.g. Categorical('SEX', prior, equals=1)."
            )
        if not self.prior.positive:
            raise ValueError(
                f"Categorical({self.covariate!r}): the prior {self.prior.describe()} allows factors "
                "<= 0; expected a prior on a positive factor, e.g. LogNormal(median=1.0, sd=0.5) "
                "or Fixed(value > 0)."
            )

    def condition(self, x):
        if self.equals is not None:
            return x == self.equals
        if self.below is not None:
            return x < self.below
        return x > self.above

    def factor(self, x, beta):
        return jnp.where(self.condition(x), beta, 1.0)

