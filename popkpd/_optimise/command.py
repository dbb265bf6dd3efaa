"""``popkpd dose``: a dosing query from flags or a small TOML file (see ``docs/dosing.md``).

The lead wires ``add_dose_parser(subparsers)`` and ``cmd_dose(args)`` into ``popkpd/cli.py``.
A query names a drug module (``models.<drug>``, or any importable module with ``MODEL``,
``TYPICAL``, ``PRIORS``, ``REGIMEN`` and ``MW_KDA``; a module with ``WEIGHT_KG`` is dosed per kg),
a patient, the draws, the grid, the objective and the constraints. Flags override the file.

Draws: from the drug's priors (``[draws] source = "prior"``, with ``iiv = {...}``; default
``DEFAULT_IIV``), or from a fit (``source = "fit"``, ``fit = "<fit.nc>"``, ``config = "<fit
config.toml>"`` for its population model).

CRS: the intercept is calibrated (``EvaluationSettings.crs_reference``) on a helper candidate: the drug's
approved ``REGIMEN`` given to the *typical* patient (all parameters at ``TYPICAL``), P(CRS after
step-up dose 1) = 0.43, as in ``models/mechanisms.py`` [E]; the slopes are science.md's prior
means. The helper is simulated in the same batch (no extra compilation) and left out of the
ranking; the approved regimen for the queried patient is ranked as candidate "approved".
"""

from __future__ import annotations

import importlib
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

from .._dosing import SC, Infusion
from .._structural.units import mg_to_nmol
from .draws import Patient, fit_draws, prior_draws
from .evaluate import LOG10_REDUCTION_CAP, Candidate, EvaluationSettings, evaluate
from .search import RegimenGrid, rank

DEFAULT_IIV = {"cl": 0.5, "vc": 0.4, "ka": 0.4, "s0": 1.0, "n0": 1.0, "e0": 0.7, "kmax": 0.5, "m0": 0.5}
"""IIV (sd of log) of the prior source when the query states none [E]: PK from MIAO23's CVs
(science.md §1.1), system parameters wide."""

_GRID_KEYS = ("step_up", "step_spacing", "maintenance", "interval", "step_down", "pause", "gsi", "debulk")
_SETTINGS_KEYS = ("horizon", "response_week", "target", "target_output", "fine_step", "fine_until", "coarse_step",
                  "draws_per_batch", "min_doses", "crs_window", "solver", "rtol", "atol")
_PATIENT_KEYS = ("weight", "sbcma_ng_ml", "tumour_burden", "t_cells", "m_protein", "high_burden")


class QueryError(ValueError):
    """A dosing query (TOML or flags) that cannot be run."""


def _floats(text):
    return [float(x) for x in str(text).split(",") if x.strip()]


def add_dose_parser(subparsers):
    """Add the ``dose`` sub-command to an argparse sub-parser set."""
    p = subparsers.add_parser(
        "dose",
        help="posterior-predictive dosing query: rank candidate regimens for a population or a patient",
        description="Rank candidate regimens by a posterior-predictive objective under constraints; print the "
        "table and write PNGs. Query from a TOML file (QUERY) and/or flags (flags win). See docs/dosing.md.",
    )
    p.add_argument("query", nargs="?", help="TOML query file (e.g. fits/dosing/high_sbcma.toml)")
    p.add_argument("--drug", help="drug module: models.<drug> (teclistamab, elranatamab, ...) or a module path")
    p.add_argument("--objective", help="endpoint to maximise (p_vgpr, p_pr, log10_reduction, days_above_target)")
    p.add_argument("--minimise", action="store_true", help="minimise the objective instead")
    p.add_argument("--constraint", action="append", help="e.g. 'p_crs <= 0.3' (repeatable)")
    p.add_argument("--weight", type=float, help="patient body weight (kg)")
    p.add_argument("--sbcma", type=float, help="patient baseline sBCMA (ng/mL)")
    p.add_argument("--tumour-burden", type=float, help="marrow tumour cells relative to typical")
    p.add_argument("--t-cells", type=float, help="marrow T cells relative to typical")
    p.add_argument("--maintenance", type=_floats, help="maintenance doses, comma-separated (drug dose unit)")
    p.add_argument("--interval", type=_floats, help="dose intervals (days), comma-separated")
    p.add_argument("--draws", type=int, help="parameter draws")
    p.add_argument("--patients", type=int, help="simulated patients per draw")
    p.add_argument("--horizon", type=float, help="days simulated")
    p.add_argument("--week", type=int, help="response week W")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--top", type=int, default=10, help="rows printed and regimens plotted (default 10 / 4)")
    p.add_argument("--out", default="dose_outputs", help="folder for PNGs and the CSV table")
    p.set_defaults(func=cmd_dose)
    return p


def load_query(path=None, args=None) -> dict:
    """The query as a dict (TOML file, then flags on top)."""
    q = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise QueryError(f"popkpd dose: received query file {str(path)!r}, which does not exist; expected a TOML "
                             "file such as fits/dosing/high_sbcma.toml. Check the path.")
        try:
            q = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise QueryError(f"popkpd dose: {path}: not valid TOML ({e}); expected a query as in docs/dosing.md.") from e
    for section in ("patient", "draws", "grid", "settings"):
        q.setdefault(section, {})
    if args is not None:
        top = {"drug": args.drug, "objective": args.objective, "seed": args.seed}
        q.update({k: v for k, v in top.items() if v is not None})
        if args.minimise:
            q["maximise"] = False
        if args.constraint:
            q["constraints"] = list(args.constraint)
        patient = {"weight": args.weight, "sbcma_ng_ml": args.sbcma, "tumour_burden": args.tumour_burden,
                   "t_cells": args.t_cells}
        q["patient"].update({k: v for k, v in patient.items() if v is not None})
        grid = {"maintenance": args.maintenance, "interval": args.interval}
        q["grid"].update({k: v for k, v in grid.items() if v is not None})
        draws = {"n_draws": args.draws, "n_patients": args.patients}
        q["draws"].update({k: v for k, v in draws.items() if v is not None})
        settings = {"horizon": args.horizon, "response_week": args.week}
        q["settings"].update({k: v for k, v in settings.items() if v is not None})
    known = {"drug", "objective", "maximise", "constraints", "seed", "patient", "draws", "grid", "settings"}
    unknown = sorted(set(q) - known)
    if unknown:
        raise QueryError(f"popkpd dose: unknown query key(s) {unknown}; expected keys from {sorted(known)}.")
    for section, keys in (("patient", _PATIENT_KEYS), ("grid", _GRID_KEYS), ("settings", _SETTINGS_KEYS),
                          ("draws", ("source", "n_draws", "n_patients", "iiv", "fit", "config"))):
        bad = sorted(set(q[section]) - set(keys))
        if bad:
            raise QueryError(f"popkpd dose: [{section}] has unknown key(s) {bad}; expected keys from {list(keys)}.")
    if "drug" not in q:
        raise QueryError("popkpd dose: no drug given; expected drug = \"teclistamab\" in the query or --drug NAME.")
    return q


def load_drug(name: str):
    """The drug module: ``models.<name>`` if it exists, else ``<name>`` itself."""
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # the repository root holds models/
    try:
        module = importlib.import_module(f"models.{name}")
    except ModuleNotFoundError:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            raise QueryError(f"popkpd dose: drug {name!r}: no module models.{name} or {name}; expected e.g. "
                             "teclistamab, elranatamab (run from the repository root).") from e
    missing = [a for a in ("MODEL", "TYPICAL", "PRIORS", "REGIMEN", "MW_KDA") if not hasattr(module, a)]
    if missing:
        raise QueryError(f"popkpd dose: drug module {module.__name__} lacks {missing}; expected a module like "
                         "models/teclistamab.py.")
    return module


def _none(x):
    return None if x in ("none", None, []) else x


def _grid(spec: dict) -> RegimenGrid:
    values = {k: v for k, v in spec.items()}
    for key in ("step_down", "pause", "gsi"):
        if key in values:
            values[key] = [_none(v) for v in values[key]]
    try:
        return RegimenGrid(**values)
    except ValueError as e:
        raise QueryError(f"popkpd dose: [grid]: {e}") from e


def dose_maker(drug):
    """amount (mg/kg with ``WEIGHT_KG`` in the module, else mg) -> the drug's dose (nmol)."""
    per_kg = hasattr(drug, "WEIGHT_KG")
    if "depot" in drug.MODEL.states:
        return lambda x: SC(float(mg_to_nmol(x, drug.MW_KDA)), per_kg=per_kg)
    return lambda x: Infusion(float(mg_to_nmol(x, drug.MW_KDA)), per_kg=per_kg, duration=1.0 / 24.0)


def _approved_priming(regimen, horizon):
    amounts = [d.dose.amount for d in regimen.doses(until=horizon) if d.dose.state != "gsi"]
    return int(np.argmax(np.asarray(amounts) >= max(amounts))) + 1 if amounts else 1


def run_query(q: dict, out: Path | None = None, top: int = 10, log=print, draws=None):
    """Run a query dict; returns (SearchResult, Evaluation). Writes PNGs and CSV into ``out``.

    ``draws``: a ``ParameterDraws`` made by the caller (e.g. ``fit_and_prior_draws``, as in
    ``popkpd demo``), used instead of the query's ``[draws]`` section."""
    t0 = time.perf_counter()
    drug = load_drug(q["drug"])
    model = drug.MODEL
    seed = int(q.get("seed", 0))
    try:
        patient = Patient(**q["patient"])
        settings = EvaluationSettings(**q["settings"], crs_reference="calibration: approved, typical patient",
                            high_burden=patient.high_burden)
    except (TypeError, ValueError) as e:
        raise QueryError(f"popkpd dose: {e}") from e
    d = q["draws"]
    source = d.get("source", "prior")
    n_draws, n_patients = int(d.get("n_draws", 8)), int(d.get("n_patients", 2))
    if draws is not None:
        n_draws, n_patients = draws.n_draws, draws.n_patients
    elif source == "prior":
        draws = prior_draws(model, drug.TYPICAL, drug.PRIORS, iiv={k: v for k, v in d.get("iiv", DEFAULT_IIV).items()
                                                                     if k in model.parameters},
                            n_draws=n_draws, n_patients=n_patients, patient=patient, seed=seed)
    elif source == "fit":
        from .._configfile import load_config
        from .._inference import load_fit

        if "fit" not in d or "config" not in d:
            raise QueryError("popkpd dose: [draws] source = \"fit\" needs fit = \"<fit.nc>\" and config = \"<config.toml>\".")
        population = load_config(d["config"]).population
        draws = fit_draws(load_fit(d["fit"]), population=population, n_draws=n_draws, n_patients=n_patients,
                          patient=patient, seed=seed)
    else:
        raise QueryError(f"popkpd dose: [draws] source = {source!r}; expected \"prior\" or \"fit\".")
    dose = dose_maker(drug)
    grid = _grid(q["grid"])
    candidates = grid.candidates(dose, horizon=settings.horizon)
    priming = _approved_priming(drug.REGIMEN, settings.horizon)
    candidates.append(Candidate("approved", drug.REGIMEN, settings={"step_up": "approved"}, priming_doses=priming))
    candidates.append(Candidate(settings.crs_reference, drug.REGIMEN, priming_doses=priming,
                                fixed=dict(drug.TYPICAL), role="calibration"))
    log(f"popkpd dose: {q['drug']}, patient: {patient.describe()}; {len(candidates) - 1} regimens x {n_draws} draws x "
        f"{n_patients} patients = {(len(candidates)) * n_draws * n_patients} simulations over "
        f"{settings.horizon:g} days (the first call compiles the model: about a minute for layers=5) ...")
    evaluation = evaluate(model, draws, candidates, settings)
    result = rank(evaluation, q.get("objective", "p_vgpr"), q.get("constraints", []),
                  maximise=bool(q.get("maximise", True)))
    log(f"  evaluated in {time.perf_counter() - t0:.0f} s; CRS coefficients (a0, a1, a2) = "
        f"({', '.join(f'{c:.3g}' for c in evaluation.crs_coefs or ())})")
    log(format_table(result, top))
    log(result.message)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        result.table.to_csv(out / "ranked.csv", index=False)
        paths = plot_trajectories(result, out / "trajectories.png", top=min(top, 4))
        paths += plot_pareto(result, out / "pareto.png")
        log(f"  wrote {out / 'ranked.csv'}, " + ", ".join(str(p) for p in paths))
    return result, evaluation


def format_table(result, top: int = 10) -> str:
    """The ranked table as text: objective and main endpoints with 90 % intervals."""
    t = result.table.head(top)
    cols = [result.objective] + [c for c in ("p_pr", "p_vgpr", "p_crs", "log10_reduction", "days_above_target", "cmax")
                                 if c in t and c != result.objective]
    lines = []
    for _, row in t.iterrows():
        parts = [f"{int(row['rank']):>3} {'ok ' if row['feasible'] else 'NO '}{'*' if row['pareto'] else ' '}"
                 f" {row['candidate'][:60]:<60}"]
        for c in cols:
            parts.append(f"{c} {row[c]:.3g} [{row[c + '_q05']:.3g}, {row[c + '_q95']:.3g}]")
        parts.append(f"visits/wk {int(row['visits_per_week'])}")
        if row["violates"]:
            parts.append(f"violates: {row['violates']}")
        lines.append("  ".join(parts))
    head = (f"rank, feasible (ok/NO), Pareto front (*), candidate; posterior-predictive mean [90% interval over "
            f"draws] of: {', '.join(cols)}")
    return "\n".join([head] + lines)


def plot_trajectories(result, path: Path, top: int = 4) -> list:
    """Median and 90 % band over simulated patients of functional drug and tumour for the top
    regimens (feasible first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = result.evaluation
    names = list(result.table["candidate"].head(top))
    outputs = [k for k in ("conc_functional", "conc", "tumour", "il6") if k in ev.trajectories]
    outputs = [k for k in outputs if not (k == "conc" and "conc_functional" in outputs)]
    fig, axes = plt.subplots(1, len(outputs), figsize=(5 * len(outputs), 4), squeeze=False)
    for ax, k in zip(axes[0], outputs):
        for name in names:
            y = ev.trajectories[k][ev.names.index(name)]
            if k == "tumour":  # below 1e-9 of baseline the solver's absolute tolerance dominates
                y = np.maximum(y, 10.0 ** -LOG10_REDUCTION_CAP)
            q5, q50, q95 = np.percentile(y, [5, 50, 95], axis=0)
            (line,) = ax.plot(ev.times, q50, lw=1.5, label=name[:45])
            ax.fill_between(ev.times, q5, q95, color=line.get_color(), alpha=0.15)
        ax.set_yscale("log")
        ax.set_xlabel("day")
        ax.set_ylabel({"conc_functional": "functional drug (nM)", "conc": "drug (nM)",
                       "tumour": "tumour N/N0 (floor 1e-9)",
                       "il6": "serum IL-6 (pg/mL)"}[k])
    axes[0][0].legend(fontsize=6)
    fig.suptitle("top regimens: median and 90 % band over simulated patients")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def plot_pareto(result, path: Path) -> list:
    """Objective against P(CRS) (or Cmax) for every candidate; the Pareto front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = result.table
    risk = "p_crs" if "p_crs" in t else "cmax"
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for ok, marker, label in ((True, "o", "meets constraints"), (False, "x", "violates a constraint")):
        s = t[t["feasible"] == ok]
        ax.errorbar(s[risk], s[result.objective], yerr=[s[result.objective] - s[result.objective + "_q05"],
                                                        s[result.objective + "_q95"] - s[result.objective]],
                    fmt=marker, alpha=0.7, label=label, capsize=2)
    front = t[t["pareto"]].sort_values(risk)
    ax.plot(front[risk], front[result.objective], "k-", lw=1, label="Pareto front")
    for c in result.constraints:
        if c.endpoint == risk:
            ax.axvline(c.value, color="r", ls="--", lw=1, label=c.describe())
    ax.set_xlabel(risk)
    ax.set_ylabel(result.objective)
    ax.legend(fontsize=7)
    ax.set_title("efficacy vs safety (posterior-predictive means, 90 % intervals)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def cmd_dose(args) -> int:
    """Entry point of ``popkpd dose``; returns the exit status (0 feasible, 2 infeasible, 1 error)."""
    try:
        q = load_query(args.query, args)
        result, _ = run_query(q, Path(args.out), top=args.top)
    except QueryError as e:
        print(str(e), file=sys.stderr)
        return 1
    return 0 if result.feasible else 2

