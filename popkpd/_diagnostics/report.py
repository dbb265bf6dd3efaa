"""``write_report``: every diagnostic of a fit as PNG and CSV files plus a ``summary.md``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .common import check_int, prepare
from .plots import plot_eta_covariates, plot_gof, plot_individual_fits, plot_npde, plot_trace, plot_vpc
from .predictions import predictions
from .shrinkage import shrinkage
from .vpc import coverage, vpc


def _cv_percent(sd):
    """Approximate CV (%) of a log-normal quantity whose log has sd ``sd``: 100 sqrt(e^sd^2 - 1)."""
    return 100.0 * np.sqrt(np.expm1(np.asarray(sd, dtype=float) ** 2))


def parameter_table(fit, population) -> pd.DataFrame:
    """Posterior median and 90 % equal-tailed interval (5th-95th percentile) of every population
    quantity, with its kind, its unit and, for omegas and residual errors, an approximate %CV.

    Units: typical values in the parameter's unit (that of the data: e.g. volume/time for
    ``cl`` when AMT, TIME and DV are in the data's units); omegas are sds on the link scale;
    additive residual sds in DV units; proportional and log-normal residual sds unitless.
    """
    posterior = fit.tree["posterior"]
    rows = []

    def add(site, kind, unit, prior, cv=None):
        if site in posterior.data_vars:
            x = np.asarray(posterior[site].values, dtype=float).ravel()
            med, lo, hi = np.median(x), np.quantile(x, 0.05), np.quantile(x, 0.95)
            fixed = False
        else:
            med = lo = hi = float(prior.value)
            fixed = True
        row = {"parameter": site, "kind": kind, "median": med, "q05": lo, "q95": hi, "fixed": fixed, "unit": unit}
        row["cv_percent"] = cv(med) if cv is not None else np.nan
        rows.append(row)

    for name, par in population.parameters.items():
        add(f"{name}_pop", "typical value", f"unit of {name}", par.typical)
        for effect in par.covariates:
            add(effect.site_name(name), f"covariate effect ({type(effect).__name__}, {effect.covariate})", "see effect", effect.prior)
        if par.iiv is not None:
            link = par.link
            add(
                f"omega_{name}",
                "IIV (sd of the random effect)",
                f"{link} scale",
                par.iiv,
                cv=_cv_percent if link == "log" else None,
            )
    for out, err in population.error.items():
        for site, prior in err.priors(out).items():
            if site.endswith("_add"):
                add(site, f"residual sd, additive ({out})", "DV units", prior)
            elif site.endswith("_prop"):
                add(site, f"residual sd, proportional ({out})", "fraction of prediction", prior, cv=lambda s: 100.0 * s)
            else:
                add(site, f"residual sd of log DV ({out})", "log scale", prior, cv=_cv_percent)
    if "corr_iiv" in posterior.data_vars:
        corr = np.asarray(posterior["corr_iiv"].values, dtype=float)
        corr = corr.reshape((-1,) + corr.shape[2:])
        names = population.iiv_names
        for i in range(len(names)):
            for j in range(i):
                x = corr[:, i, j]
                rows.append(
                    {
                        "parameter": f"corr({names[i]}, {names[j]})",
                        "kind": "IIV correlation",
                        "median": np.median(x),
                        "q05": np.quantile(x, 0.05),
                        "q95": np.quantile(x, 0.95),
                        "fixed": False,
                        "unit": "",
                        "cv_percent": np.nan,
                    }
                )
    return pd.DataFrame(rows)


def _markdown(table: pd.DataFrame, digits=4) -> str:
    def cell(v):
        if isinstance(v, float | np.floating):
            return "" if np.isnan(v) else f"{v:.{digits}g}"
        return str(v)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def _convergence_text(fit) -> str:
    try:
        return str(fit.convergence())
    except ValueError as error:  # e.g. PSIS-LOO on degenerate log-likelihood draws
        text = str(fit.convergence(loo=False))
        return text + f"\n\nPSIS-LOO could not be computed ({error}); it is left out."


def write_report(
    fit,
    population=None,
    dataset=None,
    outdir="report",
    *,
    n_sim: int = 200,
    bins=8,
    max_draws: int = 200,
    seed: int = 0,
) -> list[Path]:
    """Write the diagnostics of ``fit`` into ``outdir``; returns the paths written.

    Files: ``predictions.csv`` (``predictions``), ``vpc.csv`` and ``pcvpc.csv`` (``vpc``; the
    pcVPC only when every PRED is > 0), ``shrinkage.csv``, ``parameters.csv``
    (``parameter_table``); PNGs: ``individual_fits_NN.png``, ``gof.png``, ``gof_log.png``,
    ``npde.png``, ``vpc.png`` (``pcvpc.png``), ``eta_covariates.png`` (with IIV and covariates),
    ``trace.png``; and ``summary.md`` (convergence with plain-language warnings, parameters with
    90 % intervals and %CV, shrinkage, NPDE and VPC summaries, the list of files).

    ``n_sim``, ``bins``: VPC settings; ``max_draws``: posterior draws used for IPRED and the
    simulations; ``seed``: seed of every simulation.
    """
    fn = "write_report"
    ctx = prepare(fit, population, dataset, fn)
    check_int(fn, "n_sim", n_sim, 1)
    fit, population = ctx.fit, ctx.population
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    def csv(table, name):
        path = out / name
        table.to_csv(path, index=False)
        paths.append(path)

    table = predictions(ctx, max_draws=max_draws, seed=seed)
    csv(table, "predictions.csv")
    vpc_table = vpc(ctx, n_sim=n_sim, bins=bins, seed=seed, max_draws=max_draws)
    csv(vpc_table, "vpc.csv")
    pc_table = None
    if np.all(table["PRED"].to_numpy() > 0):
        pc_table = vpc(ctx, n_sim=n_sim, bins=bins, prediction_corrected=True, seed=seed, max_draws=max_draws)
        csv(pc_table, "pcvpc.csv")
    shrink = shrinkage(fit)
    csv(shrink, "shrinkage.csv")
    params = parameter_table(fit, population)
    csv(params, "parameters.csv")

    paths += plot_individual_fits(table, out)
    paths.append(plot_gof(table, out / "gof.png"))
    paths.append(plot_gof(table, out / "gof_log.png", log=True))
    paths.append(plot_npde(table, out / "npde.png"))
    paths.append(plot_vpc(vpc_table, out / "vpc.png"))
    if pc_table is not None:
        paths.append(plot_vpc(pc_table, out / "pcvpc.png"))
    eta_plot = plot_eta_covariates(fit, out / "eta_covariates.png")
    if eta_plot is not None:
        paths.append(eta_plot)
    paths.append(plot_trace(fit, out / "trace.png"))

    summary = out / "summary.md"
    paths.append(summary)
    summary.write_text(_summary(fit, table, vpc_table, pc_table, shrink, params, paths, summary))
    return paths


def _summary(fit, table, vpc_table, pc_table, shrink, params, paths, summary) -> str:
    meta = fit.metadata
    sampler = meta.get("sampler", {})
    quant = table["CENS"] == 0
    npde = table["NPDE"].to_numpy()
    lines = [
        f"# Fit report: {meta['model']['structural']['class']}",
        "",
        f"{meta.get('n_subjects')} subjects, {meta.get('n_observations')} observations "
        f"({int((~quant).sum())} censored). Sampler: "
        + ", ".join(f"{k}={v}" for k, v in sampler.items())
        + f". Created {meta.get('created', '?')}; data hash {str(meta.get('data_hash', '?'))[:16]}...",
        "",
        "## Convergence",
        "",
        "```",
        _convergence_text(fit),
        "```",
    ]
    if meta.get("warnings"):
        lines += ["", "Warnings of the fit:", ""] + [f"- {w}" for w in meta["warnings"]]
    shown = params.copy()
    shown["fixed"] = shown["fixed"].map({True: "fixed", False: ""})
    lines += [
        "",
        "## Parameters",
        "",
        "Posterior median and 90 % equal-tailed interval (q05-q95). Omegas are sds of the random "
        "effects on the link scale; for log-normal IIV and residual errors `cv_percent` is the "
        "approximate CV at the median, 100 sqrt(exp(sd^2) - 1) (proportional error: 100 x sd). "
        "Additive residual sds are in DV units.",
        "",
        _markdown(shown),
        "",
        "## Shrinkage",
        "",
        "SD-based eta shrinkage, 1 - sd over subjects of the posterior-mean standardised random "
        "effect (omega = 1 on that scale). Above about 0.3, plots of ETA against covariates and "
        "IPRED-based diagnostics lose power. `ebe_mcse`: the Monte Carlo error of the posterior means "
        "(rms over subjects); where it is not small beside `ebe_sd`, unmixed chains make the shrinkage "
        "look lower than it is.",
        "",
        _markdown(shrink) if len(shrink) else "No parameter has IIV.",
        "",
        "## Residuals and predictive checks",
        "",
        f"- NPDE (population predictive, per observation, not decorrelated): mean {npde.mean():.3f}, "
        f"sd {npde.std(ddof=1) if len(npde) > 1 else float('nan'):.3f} over {len(npde)} observations; "
        "expected about 0 and 1 for a model that describes the data (observations of one subject "
        "are correlated, so allow for that in judging the deviation).",
        f"- IWRES: mean {table['IWRES'][quant].mean():.3f}, sd {table['IWRES'][quant].std(ddof=1):.3f} "
        "(quantified records).",
        f"- VPC: {coverage(vpc_table):.0%} of the observed 5th/50th/95th percentiles lie in the simulated "
        f"90 % intervals ({len(vpc_table)} bins x 3, {vpc_table.attrs.get('n_sim')} replicates); about 90 % "
        "or more is expected.",
    ]
    if table.attrs.get("failed_draws"):
        lines.append(f"- {table.attrs['failed_draws']} posterior draws failed to solve and were left out of IPRED "
                     "(parameters where the ODE cannot be solved): check the fit and the solver settings.")
    failed = vpc_table.attrs.get("failed_replicates", 0)
    if failed:
        lines.append(f"- {failed} simulated replicates (of {failed + vpc_table.attrs.get('n_sim')}) failed to solve "
                     "(new subjects' random effects where the ODE cannot be solved) and were left out of the "
                     "VPC and NPDE: check the omegas and the solver settings.")
    if pc_table is not None:
        lines.append(f"- pcVPC: {coverage(pc_table):.0%} inside.")
    else:
        lines.append("- pcVPC not drawn: some PRED are not > 0 (e.g. pre-dose samples).")
    lines += ["", "## Files", ""] + [f"- `{p.relative_to(summary.parent)}`" for p in paths]
    return "\n".join(lines) + "\n"
