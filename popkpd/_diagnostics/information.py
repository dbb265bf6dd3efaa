"""Expected eta shrinkage of a design, before any fit: what the sampling schedule can tell.

For each subject, the Bayesian individual information matrix of its random effects (Combes,
Retout, Frey & Mentré 2013, "Prediction of shrinkage of individual parameters using the Bayesian
information matrix in non-linear mixed effect models with evaluation in pharmacokinetics",
Pharm Res 30:2355), on the standardised scale ``z = d / omega`` of ``shrinkage`` (prior
``Normal(0, R)``, ``R`` the IIV correlation, the identity without one):

    M = sum over the subject's observations of (dmu/dz dmu/dz' + 2 ds/dz ds/dz') / s**2  +  R^-1

with ``mu`` and ``s`` the location and scale of the observation's normal likelihood (on the log
scale for log-normal errors: ``PopulationModel.observation_distribution``), the Fisher
information of a normal observation whose mean and sd depend on ``z``. Linearised, ``V = M^-1``
is the posterior covariance of the subject's ``z``, and the posterior mean of ``z_k`` varies over
subjects with variance ``1 - V_kk``; so the expected value of ``shrinkage``'s SD-based shrinkage
is

    shrinkage = 1 - sqrt(mean over subjects of (1 - V_kk))

(Combes et al. report the variance-based ``mean V_kk``.) Beside it, ``shrinkage_others_known``:
the same with the other random effects known (``V_kk = 1 / M_kk``); the gap between the two is
the shrinkage the random effects' confounding adds (two effects the data move in the same way).

Computed at given population values and, per subject, given deviations (default 0: typical
subjects, as Combes et al.; in a simulation study, the subjects' true deviations). Censored
observations are left out (they carry less information than a measured value: the result is then
an upper bound on shrinkage for them); only observations the dataset holds count, at their times.
"""

from __future__ import annotations

from collections.abc import Mapping

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._statistical.priors import Fixed


def expected_shrinkage(pop, dataset, values: Mapping, deviations: Mapping | None = None) -> pd.DataFrame:
    """Expected eta shrinkage of each random effect of ``pop`` for the observations of ``dataset``
    (module docstring), before any fit.

    Parameters
    ----------
    pop
        The ``PopulationModel``.
    dataset
        A ``Dataset`` (``read_nonmem``): its subjects, doses, covariates and observation times; its
        DVs are not used, its censoring flags are.
    values
        Population values: every sampled population site of ``pop`` (``<param>_pop``,
        ``omega_<param>``, covariate effects, residual sds, ``corr_iiv`` with a correlation).
    deviations
        ``{param: [S]}``: each subject's random effect on the link scale (``log(theta_i /
        typical_i)`` for a log-normal parameter), in the dataset's subject order; missing: 0.

    Returns
    -------
    DataFrame, one row per parameter with IIV: ``parameter``, ``omega``, ``information`` (mean over
    subjects of the data's information on ``z_k``, the data's part of ``M_kk``), ``posterior_sd``
    (mean over subjects of ``sqrt(V_kk)``: comparable with ``shrinkage``'s column of that name),
    ``shrinkage`` and ``shrinkage_others_known`` (module docstring).
    """
    names = pop.iiv_names
    if not names:
        raise ValueError("expected_shrinkage: the model has no random effects; expected a PopulationModel with IIV.")
    required = [s for s, prior in pop._population_priors().items() if not isinstance(prior, Fixed)]
    if pop.correlation is not None:
        required.append("corr_iiv")
    missing = [s for s in required if s not in values]
    if missing:
        raise ValueError(f"expected_shrinkage: values has no {missing}; expected a value for every population "
                         f"site of the model, {required}.")
    events = dataset.events
    n = events.n_subjects
    values = {k: jnp.asarray(v, dtype=float) for k, v in values.items()}
    omega = jnp.stack([pop._omega(m, values) for m in names])  # given, or Fixed
    d0 = {}
    for m, d in (deviations or {}).items():
        if m not in names:
            raise ValueError(f"expected_shrinkage: deviations has {m!r}, which has no random effect; expected names "
                             f"from {list(names)}.")
        d = jnp.asarray(d, dtype=float)
        if d.shape != (n,):
            raise ValueError(f"expected_shrinkage: deviations[{m!r}] has shape {d.shape}; expected ({n},), one value "
                             "per subject of the dataset, in its order.")
        d0[m] = d
    adjoint = {"adjoint": diffrax.ForwardMode()} if pop.method == "ode" else {}

    def location_scale(u):  # u [P]: a shift of every subject's z (subjects are independent)
        dev = {m: d0.get(m, jnp.zeros(n)) + omega[k] * u[k] for k, m in enumerate(names)}
        params = pop._with_deviations(values, dev, events, dataset.covariate_names)
        dist = pop.observation_distribution(pop.predict(params, events, **adjoint), values, events)
        return (dist.loc, dist.scale), dist.scale  # the scale again as the primal (one solve)

    (j_loc, j_scale), scale = jax.jacfwd(location_scale, has_aux=True)(jnp.zeros(len(names)))  # [S, O, P], [S, O]
    weight = jnp.where(events.obs_mask & (events.obs_cens == 0), 1.0 / scale**2, 0.0)
    fisher = (jnp.einsum("so,sop,soq->spq", weight, j_loc, j_loc)
              + 2.0 * jnp.einsum("so,sop,soq->spq", weight, j_scale, j_scale))
    prior = jnp.linalg.inv(values["corr_iiv"]) if pop.correlation is not None else jnp.eye(len(names))
    fisher, prior = np.asarray(fisher), np.asarray(prior)
    bad = ~np.all(np.isfinite(fisher), axis=(1, 2))
    if bad.any():
        ids = [dataset.ids[i] for i in np.flatnonzero(bad)]
        which = [m for k, m in enumerate(names) if not np.all(np.isfinite(fisher[:, k, :]))]
        raise FloatingPointError(f"expected_shrinkage: the information on {which} of subjects {ids} is not finite "
                                 "(the model's sensitivities at these values and deviations); check them and the ODE "
                                 "tolerances.")
    v = np.linalg.inv(fisher + prior)  # [S, P, P]
    v_kk = np.diagonal(v, axis1=1, axis2=2)
    alone = 1.0 / (np.diagonal(fisher, axis1=1, axis2=2) + np.diag(prior))
    return pd.DataFrame({
        "parameter": list(names),
        "omega": np.asarray(omega),
        "information": np.diagonal(fisher, axis1=1, axis2=2).mean(axis=0),
        "posterior_sd": np.sqrt(v_kk).mean(axis=0),
        "shrinkage": 1.0 - np.sqrt(np.clip(1.0 - v_kk, 0.0, None).mean(axis=0)),
        "shrinkage_others_known": 1.0 - np.sqrt((1.0 - alone).mean(axis=0)),
    })
