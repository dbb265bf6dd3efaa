"""``popkpd simulate``: write a virtual trial as a NONMEM-style dataset (wired into popkpd/cli.py).

The trial designs live outside the library, in the repository's ``models/virtual_populations.py``
(``DESIGNS``: name -> ``TrialDesign``); ``--designs module`` names another module with a
``DESIGNS`` mapping.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def add_simulate_parser(subparsers):
    """Add the ``simulate`` command to an argparse ``subparsers``."""
    p = subparsers.add_parser(
        "simulate", help="simulate a virtual trial (e.g. majestec1, magnetismm3) and write it as a NONMEM-style CSV")
    p.add_argument("trial", help="a trial design name of DESIGNS in the --designs module (e.g. majestec1)")
    p.add_argument("--out", default=None, help="CSV path of the dataset (default <trial>_seed<seed>.csv); the "
                   "patients' true covariates and parameters go to <out stem>_patients.csv")
    p.add_argument("--n", type=int, default=None, help="number of patients (default: the design's trial size)")
    p.add_argument("--seed", type=int, default=0, help="random seed (patients, noise, CRS draws)")
    p.add_argument("--horizon", type=float, default=None, help="follow-up in days (default: the design's)")
    p.add_argument("--designs", default="models.virtual_populations",
                   help="module holding DESIGNS (default models.virtual_populations; run from the repository root)")
    p.set_defaults(func=cmd_simulate, chains=1)
    return p


def load_design(trial: str, module: str = "models.virtual_populations"):
    """The ``TrialDesign`` named ``trial`` in ``module.DESIGNS``."""
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        designs = importlib.import_module(module).DESIGNS
    except ModuleNotFoundError as err:
        raise SystemExit(f"popkpd simulate: could not import {module!r} ({err}); expected a module with a "
                         "DESIGNS mapping. Run from the repository root (where models/ is), or pass "
                         "--designs your.module.") from err
    except AttributeError as err:
        raise SystemExit(f"popkpd simulate: module {module!r} has no DESIGNS mapping; expected "
                         "DESIGNS = {name: TrialDesign}.") from err
    if trial not in designs:
        raise SystemExit(f"popkpd simulate: received trial {trial!r}; expected one of {sorted(designs)} "
                         f"(DESIGNS of {module}).")
    return designs[trial]


def cmd_simulate(args) -> int:
    """Simulate the trial and write the dataset and the patients' true values; print a summary."""
    from .design import DVID_OUTPUTS, simulate_trial
    from .summary import summarise_trial

    design = load_design(args.trial, args.designs)
    if args.horizon is not None:
        design = design.replace(horizon=args.horizon)
    if args.n is not None and args.n < 1:
        raise SystemExit(f"popkpd simulate: received --n {args.n}; expected a number of patients >= 1.")
    trial = simulate_trial(design, n=args.n, seed=args.seed)
    out = Path(args.out) if args.out else Path(f"{args.trial}_seed{args.seed}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    trial.dataset.to_csv(out, index=False)
    patients = trial.covariates.merge(trial.params, on="ID")
    patients_path = out.with_name(out.stem + "_patients.csv")
    patients.to_csv(patients_path, index=False)
    s = summarise_trial(trial)
    print(f"{design.name}: {trial.n} patients, {int((trial.dataset.EVID == 0).sum())} observations "
          f"({int(trial.dataset.CENS.sum())} BLQ), {design.horizon:g} days -> {out}")
    print(f"  DVID: {DVID_OUTPUTS}; read with popkpd.read_nonmem(path, model, dvid_outputs=DVID_OUTPUTS)")
    print(f"  ORR {s['orr']:.2f}, >=VGPR {s['vgpr']:.2f}, >=CR {s['cr']:.2f}; CRS after SUD1/SUD2/full "
          f"{s['crs_sud1']:.2f}/{s['crs_sud2']:.2f}/{s['crs_full1']:.2f}; true values -> {patients_path}")
    return 0
