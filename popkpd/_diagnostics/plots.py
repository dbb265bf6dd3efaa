"""Diagnostic plots as PNG files (matplotlib, object-oriented API with the Agg canvas: no display
and no change to pyplot's global backend).

Each function takes the tables of ``predictions`` / ``vpc`` (or the fit itself for eta and
trace plots), writes one or more PNG files and returns their paths. Axes are in the data's
units (TIME, DV).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import ndtri

from .shrinkage import random_effects

_DPI = 100


def _figure(nrows, ncols, width=3.6, height=2.8):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported here: popkpd imports fast
    from matplotlib.figure import Figure

    # fixed margins (in inches) rather than constrained layout, which is slow with many panels
    w, h = width * ncols, height * nrows
    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.75 / w, right=1 - 0.15 / w, bottom=0.5 / h, top=1 - 0.35 / h,
                        wspace=0.9 / width, hspace=0.85 / height)
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    return fig, axes


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    return path


def _check_table(table, columns, fn):
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{fn}: received {type(table).__name__}; expected the DataFrame returned by predictions(...) or vpc(...).")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"{fn}: the table has no columns {missing}; expected the DataFrame returned by "
            f"{'vpc' if 'obs_p50' in columns else 'predictions'}(fit, population, dataset)."
        )


def plot_individual_fits(table: pd.DataFrame, outdir, *, per_page: int = 12, log: bool = False, prefix: str = "individual_fits") -> list[Path]:
    """Observed DV (points; censored records as open triangles at their limit), IPRED (posterior
    median, line, with its 5-95 % band) and PRED (dashed) against TIME, one panel per subject and
    output, ``per_page`` panels per PNG (``<prefix>_01.png``, ...)."""
    _check_table(table, ["ID", "TIME", "output", "DV", "CENS", "PRED", "IPRED", "IPRED_5", "IPRED_95"], "plot_individual_fits")
    panels = list(table.groupby(["ID", "output"], sort=False))
    paths = []
    ncols = min(4, per_page)
    for page, start in enumerate(range(0, len(panels), per_page)):
        chunk = panels[start : start + per_page]
        nrows = -(-len(chunk) // ncols)
        fig, axes = _figure(nrows, ncols, 3.2, 2.5)
        for ax in axes.ravel()[len(chunk) :]:
            ax.set_visible(False)
        for ax, ((sid, out), d) in zip(axes.ravel(), chunk):
            d = d.sort_values("TIME", kind="stable")
            t = d["TIME"].to_numpy()
            ax.fill_between(t, d["IPRED_5"], d["IPRED_95"], color="tab:blue", alpha=0.25, linewidth=0)
            ax.plot(t, d["IPRED"], color="tab:blue", label="IPRED")
            ax.plot(t, d["PRED"], color="black", linestyle="--", linewidth=1, label="PRED")
            quant = d["CENS"].to_numpy() == 0
            ax.plot(t[quant], d["DV"].to_numpy()[quant], "o", color="tab:red", markersize=3.5, label="DV")
            if (~quant).any():
                ax.plot(t[~quant], d["DV"].to_numpy()[~quant], "v", markerfacecolor="none", color="tab:red", markersize=5, label="censored (limit)")
            if log:
                _log_axis(ax, "y", np.concatenate([d[c].to_numpy() for c in ("DV", "IPRED_5", "IPRED_95", "PRED")]))
            ax.set_title(f"ID {sid}" + (f" ({out})" if table["output"].nunique() > 1 else ""), fontsize=9)
            ax.set_xlabel("TIME", fontsize=8)
            ax.set_ylabel("DV", fontsize=8)
            ax.tick_params(labelsize=7)
        axes.ravel()[0].legend(fontsize=6)
        paths.append(_save(fig, Path(outdir) / f"{prefix}_{page + 1:02d}.png"))
    return paths


def _log_axis(ax, which, values):
    """Log scale when some values are positive (non-positive ones are not drawn)."""
    if np.any(np.asarray(values) > 0):
        (ax.set_yscale if which == "y" else ax.set_xscale)("log")


def plot_gof(table: pd.DataFrame, path, *, log: bool = False) -> Path:
    """DV against PRED and against IPRED with the identity line, one row per output; quantified
    records only. ``log=True``: log-log axes (positive values only)."""
    _check_table(table, ["output", "DV", "CENS", "PRED", "IPRED"], "plot_gof")
    outputs = list(dict.fromkeys(table["output"]))
    fig, axes = _figure(len(outputs), 2, 4.0, 3.6)
    for row, out in zip(axes, outputs):
        d = table[(table["output"] == out) & (table["CENS"] == 0)]
        for ax, col in zip(row, ("PRED", "IPRED")):
            x, y = d[col].to_numpy(), d["DV"].to_numpy()
            if log:
                keep = (x > 0) & (y > 0)
                x, y = x[keep], y[keep]
            ax.plot(x, y, "o", color="tab:blue", alpha=0.6, markersize=3.5)
            if len(x):
                lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
                ax.plot([lo, hi], [lo, hi], color="black", linewidth=1)
            if log and len(x):
                ax.set_xscale("log")
                ax.set_yscale("log")
            ax.set_xlabel(col)
            ax.set_ylabel("DV")
            ax.set_title(f"DV vs {col}" + (f" ({out})" if len(outputs) > 1 else ""), fontsize=10)
    return _save(fig, path)


def plot_npde(table: pd.DataFrame, path) -> Path:
    """NPDE against TIME and against PRED (reference lines at 0 and +-1.96) and a normal QQ plot;
    censored records (imputed discrepancies) as open triangles."""
    _check_table(table, ["TIME", "PRED", "NPDE", "CENS"], "plot_npde")
    fig, axes = _figure(1, 3, 4.0, 3.4)
    quant = table["CENS"].to_numpy() == 0
    npde = table["NPDE"].to_numpy()
    for ax, col in zip(axes[0, :2], ("TIME", "PRED")):
        x = table[col].to_numpy()
        ax.plot(x[quant], npde[quant], "o", color="tab:blue", alpha=0.6, markersize=3.5)
        if (~quant).any():
            ax.plot(x[~quant], npde[~quant], "v", markerfacecolor="none", color="tab:red", markersize=5)
        for level, style in ((0.0, "-"), (1.96, "--"), (-1.96, "--")):
            ax.axhline(level, color="black", linestyle=style, linewidth=1)
        ax.set_xlabel(col)
        ax.set_ylabel("NPDE")
        ax.set_title(f"NPDE vs {col}", fontsize=10)
    ax = axes[0, 2]
    s = np.sort(npde)
    theory = ndtri((np.arange(1, len(s) + 1) - 0.5) / len(s))
    ax.plot(theory, s, "o", color="tab:blue", markersize=3.5)
    ax.plot(theory, theory, color="black", linewidth=1)
    ax.set_xlabel("N(0, 1) quantile")
    ax.set_ylabel("NPDE quantile")
    ax.set_title(f"QQ plot (mean {npde.mean():.2f}, sd {npde.std(ddof=1) if len(npde) > 1 else np.nan:.2f})", fontsize=10)
    return _save(fig, path)


def plot_vpc(table: pd.DataFrame, path, *, log: bool = False) -> Path:
    """VPC: simulated 90 % intervals of the 5th/50th/95th percentiles (bands) and the observed
    percentiles (lines with points) against the bins' median TIME, one panel per output; a
    percentile below the LLOQ is not drawn."""
    columns = ["output", "time"] + [f"{a}_p{p:02d}{b}" for p in (5, 50, 95) for a, b in (("obs", ""), ("sim", "_lo"), ("sim", "_hi"))]
    _check_table(table, columns, "plot_vpc")
    outputs = list(dict.fromkeys(table["output"]))
    fig, axes = _figure(1, len(outputs), 5.0, 3.8)
    corrected = bool(table.attrs.get("prediction_corrected", False))
    for ax, out in zip(axes[0], outputs):
        d = table[table["output"] == out].sort_values("time")
        t = d["time"].to_numpy()
        for p, color in ((5, "tab:blue"), (50, "tab:red"), (95, "tab:blue")):
            ax.fill_between(t, d[f"sim_p{p:02d}_lo"], d[f"sim_p{p:02d}_hi"], color=color, alpha=0.2, linewidth=0)
            ax.plot(t, d[f"obs_p{p:02d}"], "o-" if p == 50 else "o--", color=color, markersize=3.5, label=f"observed P{p}")
        if log:
            _log_axis(ax, "y", d[[c for c in columns if c.startswith(("obs_", "sim_"))]].to_numpy(dtype=float).ravel())
        ax.set_xlabel("TIME")
        ax.set_ylabel("prediction-corrected DV" if corrected else "DV")
        ax.set_title(("pcVPC" if corrected else "VPC") + (f" ({out})" if len(outputs) > 1 else ""), fontsize=10)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_eta_covariates(fit, path) -> Path | None:
    """Posterior mean of each subject's random effect (deviation on the link scale, NONMEM's ETA)
    against each baseline covariate; ``None`` (nothing written) without IIV or covariates."""
    effects = random_effects(fit)
    tree = fit.tree
    if not effects or "constant_data" not in tree.children or "covariate" not in tree["constant_data"].data_vars:
        return None
    cov = tree["constant_data"]["covariate"]
    names = [str(n) for n in cov["covariate_name"].values]
    values = np.asarray(cov.values, dtype=float)
    fig, axes = _figure(len(effects), len(names), 3.2, 2.6)
    for row, (param, (_, d)) in zip(axes, effects.items()):
        eta = d.mean(axis=0)
        for ax, k in zip(row, range(len(names))):
            ax.plot(values[:, k], eta, "o", color="tab:blue", markersize=3.5)
            ax.axhline(0.0, color="black", linewidth=1)
            ax.set_xlabel(names[k], fontsize=8)
            ax.set_ylabel(f"ETA {param}", fontsize=8)
            ax.tick_params(labelsize=7)
    return _save(fig, path)


def plot_trace(fit, path, var_names=None) -> Path:
    """Trace (per chain) and rank histogram (per chain; flat for well-mixed chains, Vehtari et al.
    2021) of each scalar population site (default: the fit's population sites). With a single
    chain (e.g. a Laplace fit) the right column shows a histogram of the draws instead."""
    posterior = fit.tree["posterior"]
    if var_names is None:
        var_names = [v for v in fit.metadata.get("population_sites", []) if v in posterior.data_vars]
    var_names = [v for v in var_names if posterior[v].ndim == 2]  # (chain, draw): scalars only
    if not var_names:
        raise ValueError("plot_trace: no scalar population sites to plot; expected a fit with sampled population parameters.")
    fig, axes = _figure(len(var_names), 2, 4.4, 1.8)
    for (ax_t, ax_r), name in zip(axes, var_names):
        x = np.asarray(posterior[name].values, dtype=float)  # [chain, draw]
        ranks = np.argsort(np.argsort(x.ravel(), kind="stable"), kind="stable").reshape(x.shape)
        bins = np.linspace(0, x.size, min(20, max(x.shape[1] // 5, 2)) + 1)
        for c in range(x.shape[0]):
            ax_t.plot(x[c], linewidth=0.6)
            if x.shape[0] > 1:
                ax_r.hist(ranks[c], bins=bins, histtype="step")
        if x.shape[0] == 1:
            ax_r.hist(x[0], bins=30, color="tab:blue", alpha=0.7)
        ax_t.set_ylabel(name, fontsize=8)
        ax_t.tick_params(labelsize=7)
        ax_r.tick_params(labelsize=7)
        ax_r.set_yticks([])
    axes[0, 0].set_title("trace", fontsize=9)
    several = posterior.sizes["chain"] > 1
    axes[0, 1].set_title("rank histogram per chain" if several else "histogram of the draws (one chain)", fontsize=9)
    axes[-1, 0].set_xlabel("draw", fontsize=8)
    axes[-1, 1].set_xlabel("rank (all chains)" if several else "value", fontsize=8)
    return _save(fig, path)
