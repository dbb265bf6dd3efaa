"""Eta shrinkage, from the fit alone (the model description stored with it).

Random effects of ``PopulationModel`` (see its docstring): with the default non-centred
parameterisation the site ``eta_<param>`` is the *standardised* effect, ``eta ~ Normal(0, 1)``,
and the deviation on the link scale is ``d = omega * eta``; with an LKJ correlation
``d = omega * (L @ eta)``; for centred parameters (``centered=True`` or their names) the site is the deviation itself,
``eta = d ~ Normal(0, omega)``.

Formula used, per parameter with IIV: the standardised effect of each draw,
``z = d / omega`` (``eta`` itself when non-centred and uncorrelated, ``L @ eta`` when correlated,
``eta / omega`` when centred), has prior sd 1, so on that scale ``omega`` is 1 and

    shrinkage = 1 - sd_i( E[z_i | data] )

with ``E[z_i | data]`` the posterior mean of subject ``i`` (its EBE on the standardised scale) and
``sd_i`` the sample sd (ddof=1) over subjects. This is NONMEM's SD-based eta shrinkage
``1 - sd(EBE) / omega`` (Savic & Karlsson 2009, AAPS J 11:558), with each draw divided by its own
``omega``. Near 0: the data inform each subject's effect; near 1: the EBEs collapse to the
typical value and EBE-based diagnostics (eta vs covariate plots) lose their power. It can be
slightly negative by chance with few subjects.

Beside it, how much each subject's data determine its effect: ``posterior_sd``, the mean over
subjects of the posterior sd of ``z_i`` (within each chain, so that chains that disagree do not
inflate it; 0: pinned by the data, 1: the prior's). It says which effects to sample centred
(near 0) and which non-centred (near 1); ``1 - posterior_sd**2`` is the partial-centring weight
of ``PopulationModel``'s docstring.

And how much of ``ebe_sd`` is the sampler's noise: ``ebe_mcse``, the root mean square over
subjects of the Monte Carlo standard error of ``E[z_i | data]`` (``arviz_stats``' MCSE of the
mean, from the bulk ESS of the subject's ``z_i``: chains that disagree make it large). The
spread of the estimated EBEs is about ``sqrt(sd(true EBEs)**2 + ebe_mcse**2)``, so where
``ebe_mcse`` is not small beside ``ebe_sd`` the shrinkage is biased low: unmixed chains scatter
each subject's posterior mean and look like information. Run the chains longer before reading it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .common import check_fit


def random_effects(fit) -> dict:
    """Per parameter with IIV: ``(z, d)``, each ``[N draws, S subjects]`` (chains pooled):
    the standardised effect and the deviation on the link scale (see the module docstring)."""
    model = fit.metadata["model"]
    posterior = fit.tree["posterior"]
    names = [n for n, p in model["parameters"].items() if "iiv" in p]

    def flat(name):
        a = np.asarray(posterior[name].values, dtype=float)
        return a.reshape((-1,) + a.shape[2:])

    def omega(name):
        iiv = model["parameters"][name]["iiv"]
        if iiv.get("distribution") == "Fixed":
            return np.asarray(iiv["value"], dtype=float)
        return flat(f"omega_{name}")

    missing = [f"eta_{n}" for n in names if f"eta_{n}" not in posterior.data_vars]
    if missing:
        raise ValueError(f"The fit's posterior has no draws of {missing}; expected one per parameter with IIV.")
    eta = {n: flat(f"eta_{n}") for n in names}
    out = {}
    centered = model.get("centered") or []
    centered = names if centered is True else list(centered)  # True, False or the centred names
    if "correlation" in model:
        e = np.stack([eta[n] for n in names], axis=-1)  # [N, S, P]
        chol = np.linalg.cholesky(flat("corr_iiv"))  # [N, P, P]
        z = np.einsum("nsq,npq->nsp", e, chol)
        for i, n in enumerate(names):
            out[n] = (z[..., i], z[..., i] * np.reshape(omega(n), (-1, 1)))
    else:
        for n in names:
            w = np.reshape(omega(n), (-1, 1))
            out[n] = (eta[n] / w, eta[n]) if n in centered else (eta[n], eta[n] * w)
    return out


def shrinkage(fit, *, subjects=None) -> pd.DataFrame:
    """Eta shrinkage per parameter with IIV (formula in the module docstring).

    Parameters
    ----------
    fit
        A ``Fit`` (from ``fit`` or ``load_fit``).
    subjects
        Subject IDs to compute it over (e.g. one study or dose group); default all.

    Returns
    -------
    DataFrame, one row per parameter with IIV: ``parameter``, ``omega`` (posterior median, sd
    of the random effect on the link scale), ``n_subjects``, ``ebe_mean`` and ``ebe_sd`` (mean
    and sd over subjects of the posterior-mean standardised effects), ``shrinkage``
    (``1 - ebe_sd``, unitless), ``posterior_sd`` and ``ebe_mcse`` (module docstring).
    """
    from arviz_stats.base import array_stats  # imported late: the arviz/numpyro import order (population.py)

    check_fit(fit, "shrinkage")
    effects = random_effects(fit)
    columns = ["parameter", "omega", "n_subjects", "ebe_mean", "ebe_sd", "shrinkage", "posterior_sd", "ebe_mcse"]
    if not effects:
        return pd.DataFrame(columns=columns)
    ids = np.asarray(fit.tree["posterior"][f"eta_{next(iter(effects))}"]["subject"].values)
    keep = np.ones(len(ids), dtype=bool)
    if subjects is not None:
        wanted = list(np.atleast_1d(np.asarray(subjects, dtype=object)))
        known = {str(i) for i in ids}
        unknown = [s for s in wanted if str(s) not in known]
        if unknown:
            raise ValueError(
                f"shrinkage(subjects=...): IDs {unknown} are not subjects of the fit; expected IDs from "
                f"{list(ids)[:10]}{' ...' if len(ids) > 10 else ''}."
            )
        keep = np.isin(ids.astype(str), [str(s) for s in wanted])
    if keep.sum() < 2:
        raise ValueError(
            f"shrinkage: received {int(keep.sum())} subject(s); the sd over subjects needs at least 2. "
            "Pass more subjects."
        )
    rows = []
    model = fit.metadata["model"]
    posterior = fit.tree["posterior"]
    chains = posterior.sizes["chain"]
    for name, (z, _) in effects.items():
        by_chain = z[:, keep].reshape(chains, -1, int(keep.sum()))  # [chains, draws, subjects]
        ebe = by_chain.mean(axis=(0, 1))
        sd = float(np.std(ebe, ddof=1))
        posterior_sd = float(by_chain.std(axis=1).mean())
        mcse = array_stats.mcse(np.moveaxis(by_chain, -1, 0), method="mean", chain_axis=-2, draw_axis=-1)
        if f"omega_{name}" in posterior.data_vars:
            omega = float(np.median(np.asarray(posterior[f"omega_{name}"].values)))
        else:
            omega = float(model["parameters"][name]["iiv"]["value"])
        rows.append(
            {
                "parameter": name,
                "omega": omega,
                "n_subjects": int(keep.sum()),
                "ebe_mean": float(ebe.mean()),
                "ebe_sd": sd,
                "shrinkage": 1.0 - sd,
                "posterior_sd": posterior_sd,
                "ebe_mcse": float(np.sqrt(np.mean(np.square(mcse)))),
            }
        )
    return pd.DataFrame(rows, columns=columns)
