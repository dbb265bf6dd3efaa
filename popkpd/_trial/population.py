"""Virtual populations: correlated patient covariates and inter-patient variability (IIV).

A ``VirtualPopulation`` describes patients, not a drug: the marginal distribution of each baseline
covariate, their correlations, and the IIV of mechanistic parameters. ``sample_population`` draws
patients with a Gaussian copula (latent standard normals with the given correlation matrix, mapped
to each marginal), so rank correlations such as "sBCMA rises with tumour burden" hold exactly in
distribution. How covariates act on a structural model's parameters is the ``link`` of a
``TrialDesign`` (``popkpd/_trial/design.py``), because that is drug specific.

Marginals:

* ``LogNormalCovariate(median, log_sd, low, high)``: ``median * exp(log_sd * z)``, clipped to
  ``[low, high]`` (a physiological range; clipping moves at most the tails).
* ``StageCovariate(probabilities)``: an ordered category 1..K (e.g. ISS stage I-III) with
  ``P(stage = k) = probabilities[k-1]``, cut from the latent normal at its quantiles, so a positive
  correlation with burden makes high stages go with high burden.

IIV: parameter name -> standard deviation of ``eta ~ N(0, sd^2)`` (log scale: the parameter is
``theta * exp(eta)``); drawn independently of the covariates, with its own random stream.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats


class LogNormalCovariate(NamedTuple):
    """Log-normal marginal: ``median * exp(log_sd z)`` clipped to ``[low, high]`` (covariate unit)."""

    median: float
    log_sd: float
    low: float = 0.0
    high: float = math.inf

    def from_normal(self, z):
        return np.clip(self.median * np.exp(self.log_sd * z), self.low, self.high)


class StageCovariate(NamedTuple):
    """Ordered category 1..K with probabilities ``probabilities`` (summing to 1)."""

    probabilities: tuple

    def from_normal(self, z):
        cuts = stats.norm.ppf(np.cumsum(self.probabilities)[:-1])
        return 1 + np.searchsorted(cuts, z, side="right")


@dataclasses.dataclass(frozen=True)
class VirtualPopulation:
    """Covariate marginals, their latent correlations and parameter IIV. See the module docstring.

    Attributes:
        covariates: name -> ``LogNormalCovariate`` or ``StageCovariate``.
        correlation: ``{(name_a, name_b): rho}`` correlations of the latent normals (pairs not
            listed are 0); the resulting matrix must be positive definite.
        iiv: parameter name -> sd of its log-normal IIV (eta).
    """

    covariates: dict
    correlation: dict = dataclasses.field(default_factory=dict)
    iiv: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        names = list(self.covariates)
        if not names:
            raise ValueError("VirtualPopulation: received no covariates; expected at least one, e.g. "
                             "covariates={'weight': LogNormalCovariate(74.0, 0.2, 40.0, 140.0)}.")
        for name, marginal in self.covariates.items():
            if not isinstance(marginal, (LogNormalCovariate, StageCovariate)):
                raise ValueError(f"VirtualPopulation covariate {name!r}: received {marginal!r}; expected "
                                 "LogNormalCovariate(median, log_sd, low, high) or StageCovariate(probabilities).")
            if isinstance(marginal, LogNormalCovariate) and not (marginal.median > 0 and marginal.log_sd >= 0):
                raise ValueError(f"VirtualPopulation covariate {name!r}: received median={marginal.median}, "
                                 f"log_sd={marginal.log_sd}; expected median > 0 and log_sd >= 0.")
            if isinstance(marginal, StageCovariate):
                p = np.asarray(marginal.probabilities, dtype=float)
                if p.ndim != 1 or p.size < 2 or np.any(p <= 0) or not math.isclose(p.sum(), 1.0, abs_tol=1e-9):
                    raise ValueError(f"VirtualPopulation covariate {name!r}: received probabilities "
                                     f"{marginal.probabilities}; expected two or more positive values summing to 1.")
        for pair, rho in self.correlation.items():
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(p in self.covariates for p in pair)
                    and pair[0] != pair[1]):
                raise ValueError(f"VirtualPopulation correlation: received the key {pair!r}; expected a pair of "
                                 f"two different covariate names from {names}, e.g. ('sbcma', 'burden').")
            if not -1.0 < rho < 1.0:
                raise ValueError(f"VirtualPopulation correlation {pair}: received {rho}; expected -1 < rho < 1.")
        if np.linalg.eigvalsh(self.correlation_matrix()).min() <= 1e-10:
            raise ValueError("VirtualPopulation correlation: the latent correlation matrix of "
                             f"{self.correlation} is not positive definite; expected a valid correlation "
                             "matrix. Weaken the correlations.")
        for name, sd in self.iiv.items():
            if not (isinstance(sd, (int, float)) and sd >= 0 and math.isfinite(sd)):
                raise ValueError(f"VirtualPopulation iiv[{name!r}]: received {sd!r}; expected a finite sd >= 0 "
                                 "(log scale).")

    def correlation_matrix(self) -> np.ndarray:
        names = list(self.covariates)
        r = np.eye(len(names))
        for (a, b), rho in self.correlation.items():
            i, j = names.index(a), names.index(b)
            r[i, j] = r[j, i] = rho
        return r

    def replace(self, **changes) -> "VirtualPopulation":
        return dataclasses.replace(self, **changes)


def sample_population(population: VirtualPopulation, n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Draw ``n`` patients.

    Returns:
        ``(covariates, eta)``: one row per patient (``ID`` 1..n); ``covariates`` has a column per
        covariate (its unit), ``eta`` a column per IIV parameter (log-scale deviations).
        Covariates come from one stream of ``seed`` and each parameter's eta from its own stream
        (seeded by ``seed`` and the parameter name), so adding, removing or rescaling an IIV
        leaves the covariates and the other etas of a seed unchanged (common random numbers for
        calibration).
    """
    if not (isinstance(n, (int, np.integer)) and n >= 1):
        raise ValueError(f"sample_population: received n={n!r}; expected a whole number of patients >= 1.")
    cov_rng = np.random.default_rng([int(seed), 0])
    names = list(population.covariates)
    chol = np.linalg.cholesky(population.correlation_matrix())
    z = cov_rng.standard_normal((n, len(names))) @ chol.T
    ids = np.arange(1, n + 1)
    cov = pd.DataFrame({"ID": ids})
    for k, name in enumerate(names):
        cov[name] = population.covariates[name].from_normal(z[:, k])
    eta = pd.DataFrame({"ID": ids})
    for name in sorted(population.iiv):
        stream = np.random.default_rng([int(seed), 1, zlib.crc32(name.encode())])
        eta[name] = population.iiv[name] * stream.standard_normal(n)
    return cov, eta
