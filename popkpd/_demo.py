"""``popkpd demo``: the main job on bundled data.

1. Simulate the approved teclistamab regimen (SC step-up 0.06 -> 0.3 -> 1.5 mg/kg weekly, science.md
   §1.1) for 200 virtual patients with the MIAO23 population PK (two compartments, first-order SC
   absorption, log-normal IIV on CL, V1 and ka, body-weight effects), through the ODE core, and
   plot the median and 90 % band of serum concentration over 6 months.
2. Fit the bundled theophylline data (fits/theophylline/config.toml) with NUTS, 4 chains, save the
   fit atomically and write the diagnostics report (GOF, VPC, individual fits, shrinkage).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

TECLISTAMAB_MW_KDA = 146.0


def simulate_teclistamab(n_patients: int = 200, seed: int = 0, days: float = 182.0):
    """Concentrations (µg/mL) of ``n_patients`` virtual patients on the approved regimen.

    Typical values MIAO23 (science.md §1.1; CL1 0.449 L/d, V1 4.13 L, V2 1.34 L, Q 0.039 L/d,
    ka 0.133 /d, F 0.718; the time-dependent CL2 term is left out of this linear demo), IIV CL 53.6 %,
    V1 48.8 %, ka 45.2 % CV; weight ~ N(74, 15) kg truncated to 40-140 kg, CL (WT/74)^0.704,
    V1 (WT/74)^0.358, V2 (WT/74)^1.40. Returns (times, conc [n_patients, T]).
    """
    import jax.numpy as jnp

    import popkpd

    rng = np.random.default_rng(seed)
    weight = np.clip(rng.normal(74.0, 15.0, n_patients), 40.0, 140.0)
    cv = lambda c: np.sqrt(np.log(1 + c**2))  # noqa: E731
    eta = rng.standard_normal((3, n_patients))
    params = {
        "cl": jnp.asarray(0.449 * (weight / 74) ** 0.704 * np.exp(cv(0.536) * eta[0])),
        "vc": jnp.asarray(4.13 * (weight / 74) ** 0.358 * np.exp(cv(0.488) * eta[1])),
        "ka": jnp.asarray(0.133 * np.exp(cv(0.452) * eta[2])),
        "vp": jnp.asarray(1.34 * (weight / 74) ** 1.40),
        "q": 0.039,
        "f_bio": 0.718,
    }
    model = popkpd.TwoCompartment(bioavailable_fraction=True)
    kg = lambda x: popkpd.SC(x, per_kg=True)  # noqa: E731
    regimen = popkpd.Regimen.step_up([(0, kg(0.06)), (3, kg(0.3))]).then_every(7, kg(1.5), start=6)
    times = np.linspace(0.0, days, 365)
    events = regimen.to_events(model, times, weights=weight, until=days)
    sol = popkpd.simulate(model, params, events)
    return times, np.asarray(sol.pred), regimen, weight


def plot_regimen(times, conc, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q5, q50, q95 = np.percentile(conc, [5, 50, 95], axis=0)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.fill_between(times, q5, q95, alpha=0.3, label="90 % of virtual patients")
    ax.plot(times, q50, lw=2, label="median")
    ax.set_yscale("log")
    ax.set_ylim(1e-3, None)
    ax.set_xlabel("time since first dose (days)")
    ax.set_ylabel("teclistamab serum concentration (mg/L = µg/mL)")
    ax.set_title("Teclistamab 0.06 / 0.3 / 1.5 mg/kg SC step-up, then 1.5 mg/kg weekly (MIAO23 PK)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(out: Path, quick: bool = False) -> None:
    from .cli import _fit_from_config

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print("[1/2] simulating the teclistamab regimen for 200 virtual patients (ODE core) ...", flush=True)
    times, conc, regimen, _ = simulate_teclistamab()
    plot_regimen(times, conc, out / "teclistamab_regimen.png")
    trough = conc[:, np.searchsorted(times, 27.5)]
    print(f"      median concentration just before the day-27 dose: {np.median(trough):.1f} µg/mL "
          f"(90 % {np.percentile(trough, 5):.1f}-{np.percentile(trough, 95):.1f}); "
          f"wrote {out / 'teclistamab_regimen.png'}", flush=True)
    config = Path(__file__).resolve().parent.parent / "fits" / "theophylline" / "config.toml"
    print("[2/2] fitting the bundled theophylline data with NUTS (4 chains) ...", flush=True)
    overrides = dict(warmup=150, draws=150) if quick else {}
    result, cfg, _ = _fit_from_config(config, overrides, out / "theophylline")
    from ._diagnostics import parameter_table

    table = parameter_table(result, cfg.population)[["parameter", "median", "q05", "q95", "cv_percent"]]
    print("posterior medians and 90 % intervals (CL in L/h, V in L, ka in 1/h, sigma in mg/L):")
    print(table.to_string(index=False), flush=True)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; outputs in {out}/", flush=True)
