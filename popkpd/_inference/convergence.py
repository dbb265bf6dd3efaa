"""Convergence checks of a fit, reported in plain language.

Thresholds (Vehtari et al. 2021, Bayesian Analysis 16(2); Betancourt 2017, arXiv:1701.02434):
rank-normalised split R-hat <= 1.01; bulk and tail ESS >= 100 per chain; no divergent
transitions; E-BFMI >= 0.3 per chain; PSIS-LOO Pareto k below the sample-size dependent
threshold of ArviZ (``good_k``, at most 0.7).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd


@dataclasses.dataclass
class Convergence:
    """Diagnostics of one fit. ``table``: per variable worst R-hat and smallest bulk/tail ESS
    (over its elements); ``warnings``: plain-language problems (empty when none were found)."""

    table: pd.DataFrame
    n_draws: int
    n_chains: int
    n_divergent: int | None
    n_max_tree_depth: int | None
    ebfmi: np.ndarray | None
    loo: object | None
    warnings: list[str]

    @property
    def ok(self) -> bool:
        return not self.warnings

    def __str__(self):
        lines = [f"Convergence: {self.n_chains} chain(s) x {self.n_draws // max(self.n_chains, 1)} draws"]
        if not self.table.empty:
            lines.append(self.table.to_string(float_format=lambda x: f"{x:.3g}"))
        if self.n_divergent is not None:
            lines.append(f"divergent transitions: {self.n_divergent}")
        if self.ebfmi is not None:
            lines.append("E-BFMI per chain: " + ", ".join(f"{v:.2f}" for v in self.ebfmi))
        if self.loo is not None:
            lines.append(f"PSIS-LOO: elpd_loo {float(self.loo.elpd):.2f} (SE {float(self.loo.se):.2f}), p_loo {float(self.loo.p):.2f}")
        lines += ["", "Warnings:"] + [f"- {w}" for w in self.warnings] if self.warnings else ["No problems detected."]
        return "\n".join(lines)


def _names(values: dict, limit=6) -> str:
    items = [f"{k} ({v:.3g})" for k, v in values.items()]
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _reduce(dataset, how) -> dict:
    out = {}
    for name, da in dataset.data_vars.items():
        values = np.asarray(da, dtype=float)
        if np.all(np.isnan(values)):
            continue  # constant quantities (e.g. the unit diagonal of corr_iiv)
        out[name] = float(how(values))
    return out


MIN_LOO_DRAWS = 50  # PSIS tail of min(S / 5, 3 sqrt(S / r_eff)) draws: at least 5 from about S = 25 on


def check_convergence(tree, var_names=None, *, rhat_max=1.01, ess_per_chain=100, ebfmi_min=0.3, loo=True) -> Convergence:
    """Diagnose ``tree`` (an ArviZ DataTree with ``posterior`` and optionally ``sample_stats``
    and ``log_likelihood``). ``var_names``: posterior variables to check (default: all)."""
    import arviz_stats

    posterior = tree["posterior"]
    n_chains, n_draws = posterior.sizes["chain"], posterior.sizes["draw"]
    notes = []
    table = pd.DataFrame()
    stats = tree["sample_stats"] if "sample_stats" in tree.children else None
    is_mcmc = stats is not None and "diverging" in stats
    n_div = n_depth = ebfmi = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if is_mcmc:
            rhat = _reduce(arviz_stats.rhat(tree, var_names=var_names).dataset, np.nanmax)
            ess_bulk = _reduce(arviz_stats.ess(tree, var_names=var_names, method="bulk").dataset, np.nanmin)
            ess_tail = _reduce(arviz_stats.ess(tree, var_names=var_names, method="tail").dataset, np.nanmin)
            table = pd.DataFrame({"r_hat": rhat, "ess_bulk": ess_bulk, "ess_tail": ess_tail})
            if n_chains > 1:
                bad = {k: v for k, v in rhat.items() if not v <= rhat_max}
                if bad:
                    notes.append(
                        f"R-hat above {rhat_max} for {_names(bad)}: the chains disagree, so they have not "
                        "converged to the same distribution. Do not use these draws yet: run a longer "
                        "warmup and more draws, or simplify or reparameterise the model."
                    )
            ess_min = ess_per_chain * n_chains
            low = {k: min(ess_bulk[k], ess_tail.get(k, np.inf)) for k in ess_bulk}
            low = {k: v for k, v in low.items() if not v >= ess_min}
            if low:
                notes.append(
                    f"Effective sample size below {ess_min} ({ess_per_chain} per chain) for {_names(low)} "
                    "(smaller of bulk and tail ESS): means and intervals of these quantities are imprecise. "
                    "Draw more, or improve mixing (reparameterise, tighter priors)."
                )
            if "diverging" in stats:
                n_div = int(np.asarray(stats["diverging"]).sum())
                if n_div:
                    notes.append(
                        f"{n_div} of {n_chains * n_draws} draws ended in a divergent transition: the sampler "
                        "met strong curvature it could not follow, and the posterior may be biased there. "
                        "Raise target_accept (e.g. 0.95) or reparameterise (tighter priors, non-centred "
                        "random effects)."
                    )
            if "reached_max_tree_depth" in stats:
                n_depth = int(np.asarray(stats["reached_max_tree_depth"]).sum())
                if n_depth:
                    notes.append(
                        f"{n_depth} of {n_chains * n_draws} draws hit the maximum tree depth: sampling is "
                        "inefficient (strong correlations or very different scales). Raise max_tree_depth, "
                        "use dense_mass=True, or reparameterise."
                    )
            if "energy" in stats:
                ebfmi = np.atleast_1d(np.asarray(arviz_stats.bfmi(tree)["energy"], dtype=float))
                bad_chains = [i for i, v in enumerate(ebfmi) if v < ebfmi_min]
                if bad_chains:
                    notes.append(
                        f"E-BFMI below {ebfmi_min} in chain(s) {bad_chains} "
                        f"({', '.join(f'{ebfmi[i]:.2f}' for i in bad_chains)}): the sampler explores the "
                        "energy distribution poorly, typically because of heavy tails or a funnel. "
                        "Reparameterise or tighten the priors."
                    )
        else:
            notes.append(
                "These draws are not from MCMC (e.g. a Laplace approximation): R-hat, ESS, "
                "divergences and E-BFMI do not apply, and the draws are only as good as the Gaussian "
                "approximation. Use method='nuts' for inference you rely on."
            )
        elpd = None
        if loo and "log_likelihood" in tree.children and n_chains * n_draws < MIN_LOO_DRAWS:
            notes.append(
                f"PSIS-LOO not computed: {n_chains * n_draws} draws in all, and its Pareto tail fit needs at "
                f"least {MIN_LOO_DRAWS} (below about 25 it has fewer than 5 tail draws; 50 leaves a margin). Draw more to get it."
            )
        elif loo and "log_likelihood" in tree.children:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if stats is not None and "log_q" in stats:  # draws of an approximation (Laplace)
                    elpd = arviz_stats.loo_approximate_posterior(
                        tree, stats["lp"].values.ravel(), stats["log_q"].values.ravel(), var_name="obs", pointwise=True
                    )
                else:
                    elpd = arviz_stats.loo(tree, var_name="obs", pointwise=True)
            k = np.asarray(elpd.pareto_k)
            n_bad = int((k > elpd.good_k).sum())
            if n_bad:
                why = (
                    "the Gaussian approximation is far from the posterior, or the observations are highly "
                    "influential"
                    if stats is not None and "log_q" in stats
                    else "highly influential observations, or a misspecified model"
                )
                notes.append(
                    f"{n_bad} of {k.size} observations have a Pareto k above {elpd.good_k:.2f}: the PSIS-LOO "
                    f"estimate is unreliable for them ({why}). Inspect them (Fit.tree.log_likelihood) "
                    "before comparing models by LOO."
                )
    return Convergence(
        table=table,
        n_draws=int(n_chains * n_draws),
        n_chains=int(n_chains),
        n_divergent=n_div,
        n_max_tree_depth=n_depth,
        ebfmi=ebfmi,
        loo=elpd,
        warnings=notes,
    )
