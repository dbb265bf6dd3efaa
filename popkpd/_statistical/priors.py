"""Prior distributions of the statistical layer, described by their natural-scale quantities.

Each prior is a small immutable description (``eqx.Module``) that builds a NumPyro distribution
(``distribution()``), reports a starting value for optimisation and sampling (``init_value()``,
the prior median), and describes itself as a plain dict (``describe()``, TOML/JSON-able, stored
with every fit).

* ``LogNormal(median, sd)``: ``log(x) ~ Normal(log(median), sd)``; for positive quantities
  (clearances, volumes, rate constants). ``median`` is on the natural scale, in the
  parameter's unit; ``sd`` is the standard deviation of ``log(x)`` (unitless).
* ``LogitNormal(median, sd)``: ``logit(x) ~ Normal(logit(median), sd)``; for fractions in
  (0, 1) such as ``f_bio``.
* ``Normal(mean, sd)``: unbounded quantities (covariate exponents and slopes).
* ``HalfNormal(scale)``: standard deviations (``omega``, ``sigma``); ``scale`` in the unit of
  the standard deviation (log scale for ``omega``, the DV unit for an additive ``sigma``).
* ``Fixed(value)``: not estimated; no NumPyro site is created.
* ``LKJ(concentration)``: correlation matrices of the inter-individual variability.

The ``link`` of a prior says on which scale a typical value combines with random effects and
covariate effects (``log`` for positive priors, ``logit`` for fractions, ``identity`` otherwise),
see ``popkpd._statistical.population``.
"""

from __future__ import annotations

import math
import numbers

import equinox as eqx
import jax.numpy as jnp
import numpyro.distributions as dist


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _positive(cls, name, value, hint=""):
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"{cls}({name}={value!r}): expected a finite number > 0.{hint}")


class AbstractPrior(eqx.Module):
    """A prior distribution. Subclasses implement ``distribution``, ``init_value`` and ``describe``."""

    link = "identity"
    positive = False  # support is (0, inf): allowed for standard deviations

    def distribution(self) -> dist.Distribution:
        raise NotImplementedError

    def init_value(self) -> float:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError


class LogNormal(AbstractPrior):
    """``log(x) ~ Normal(log(median), sd)``. ``median`` in the parameter's unit (> 0), ``sd`` of log(x)."""

    median: float
    sd: float
    link = "log"
    positive = True

    def __check_init__(self):
        _positive(
            "LogNormal",
            "median",
            self.median,
            " LogNormal takes the median on the natural scale, not its log: e.g. "
            "LogNormal(median=2.0, sd=0.5) for a clearance around 2 L/h.",
        )
        _positive("LogNormal", "sd", self.sd)

    def distribution(self):
        return dist.LogNormal(math.log(self.median), self.sd)

    def init_value(self):
        return float(self.median)

    def describe(self):
        return {"distribution": "LogNormal", "median": float(self.median), "sd": float(self.sd)}


class LogitNormal(AbstractPrior):
    """``logit(x) ~ Normal(logit(median), sd)`` for a fraction ``x`` in (0, 1)."""

    median: float
    sd: float
    link = "logit"

    def __check_init__(self):
        m = self.median
        if not (_is_number(m) and 0.0 < m < 1.0):
            raise ValueError(
                f"LogitNormal(median={m!r}): expected a fraction strictly between 0 and 1 "
                "(the median on the natural scale, e.g. LogitNormal(median=0.7, sd=1.0) for f_bio)."
            )
        _positive("LogitNormal", "sd", self.sd)

    def distribution(self):
        loc = math.log(self.median / (1.0 - self.median))
        return dist.TransformedDistribution(dist.Normal(loc, self.sd), dist.transforms.SigmoidTransform())

    def init_value(self):
        return float(self.median)

    def describe(self):
        return {"distribution": "LogitNormal", "median": float(self.median), "sd": float(self.sd)}


class Normal(AbstractPrior):
    """``x ~ Normal(mean, sd)``, for unbounded quantities (covariate exponents, slopes)."""

    mean: float
    sd: float

    def __check_init__(self):
        if not (_is_number(self.mean) and math.isfinite(self.mean)):
            raise ValueError(f"Normal(mean={self.mean!r}): expected a finite number.")
        _positive("Normal", "sd", self.sd)

    def distribution(self):
        return dist.Normal(self.mean, self.sd)

    def init_value(self):
        return float(self.mean)

    def describe(self):
        return {"distribution": "Normal", "mean": float(self.mean), "sd": float(self.sd)}


class HalfNormal(AbstractPrior):
    """``x ~ |Normal(0, scale)|``, for standard deviations (``omega``, ``sigma``)."""

    scale: float
    link = "log"
    positive = True

    def __check_init__(self):
        _positive("HalfNormal", "scale", self.scale)

    def distribution(self):
        return dist.HalfNormal(self.scale)

    def init_value(self):
        # median of the half-normal: scale * Phi^-1(0.75)
        return 0.6744897501960817 * float(self.scale)

    def describe(self):
        return {"distribution": "HalfNormal", "scale": float(self.scale)}


class Fixed(AbstractPrior):
    """A value that is not estimated (no NumPyro site). Unit: that of the quantity it fixes."""

    value: float

    def __check_init__(self):
        if not (_is_number(self.value) and math.isfinite(self.value)):
            raise ValueError(f"Fixed(value={self.value!r}): expected a finite number.")

    @property
    def link(self):
        return "log" if self.value > 0 else "identity"

    @property
    def positive(self):
        return self.value > 0

    def distribution(self):
        raise TypeError("Fixed values have no distribution; they are not sampled.")

    def init_value(self):
        return float(self.value)

    def describe(self):
        return {"distribution": "Fixed", "value": float(self.value)}


class LKJ(eqx.Module):
    """LKJ prior on a correlation matrix: density proportional to ``det(R) ** (concentration - 1)``.

    ``concentration = 1`` is uniform over correlation matrices; larger values favour weaker
    correlations (2 is a common weakly-informative choice).
    """

    concentration: float = 2.0

    def __check_init__(self):
        _positive("LKJ", "concentration", self.concentration)

    def distribution(self, dimension: int):
        return dist.LKJ(dimension, self.concentration)

    def init_value(self, dimension: int):
        return jnp.eye(dimension)

    def describe(self):
        return {"distribution": "LKJ", "concentration": float(self.concentration)}


def as_prior(value, what: str) -> AbstractPrior:
    """A prior from a prior or a plain number (a number means ``Fixed(number)``)."""
    if isinstance(value, AbstractPrior):
        return value
    if _is_number(value):
        return Fixed(float(value))
    raise TypeError(
        f"{what}: received {value!r} of type {type(value).__name__}; expected a prior "
        "(LogNormal, LogitNormal, Normal, HalfNormal, Fixed) or a number (meaning Fixed(number))."
    )
