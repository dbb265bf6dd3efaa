"""Regimen evaluations per second of the dosing optimiser (``popkpd._optimise.evaluate``).

One "evaluation" is one simulated patient on one regimen over the horizon; the table also
reports patient-days per second (evaluations x simulated days). Times exclude the first call
(compilation), which is reported separately. Run from the repository root:

    .venv/bin/python -m benchmarks.bench_dosing [--bcma] [--draws 8] [--patients 4]

Without ``--bcma`` the toy one-compartment model (exact propagator and Tsit5) is used; with it,
teclistamab's BCMA model (layers L0-L5, Tsit5, rtol 1e-6) and a 2 x 2 x 2 regimen grid.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import popkpd  # noqa: E402
from popkpd._optimise import RegimenGrid, EvaluationSettings, evaluate, prior_draws  # noqa: E402


def _run(model, draws, candidates, settings, repeats=2):
    t = time.perf_counter()
    evaluate(model, draws, candidates, settings)
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        evaluate(model, draws, candidates, settings)
        times.append(time.perf_counter() - t)
    n = len(candidates) * draws.size
    best = min(times)
    return first, best, n / best, n * settings.horizon / best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bcma", action="store_true")
    p.add_argument("--draws", type=int, default=8)
    p.add_argument("--patients", type=int, default=4)
    a = p.parse_args(argv)
    rows = []
    if a.bcma:
        from models import teclistamab as tec

        mgkg = lambda x: popkpd.SC(popkpd.mg_to_nmol(x, tec.MW_KDA), per_kg=True)  # noqa: E731
        grid = RegimenGrid(step_up=[[0.06, 0.3], []], maintenance=[0.72, 1.5], interval=[7.0, 14.0])
        draws = prior_draws(tec.MODEL, tec.TYPICAL, None, iiv={"cl": 0.5, "s0": 1.0, "n0": 1.0},
                            n_draws=a.draws, n_patients=a.patients, seed=0)
        settings = EvaluationSettings(horizon=84.0, response_week=12, crs_coefs=(-5.0, 1.3, 1.1))
        rows.append(("teclistamab BCMA L0-L5, tsit5", *_run(tec.MODEL, draws, grid.candidates(mgkg), settings)))
    else:
        model = popkpd.OneCompartment(absorption=False)
        grid = RegimenGrid(maintenance=[10.0, 20.0, 40.0, 80.0], interval=[1.0, 2.0, 3.0, 7.0])
        draws = prior_draws(model, dict(cl=1.0, vc=10.0), None, iiv={"cl": 0.3, "vc": 0.3},
                            n_draws=a.draws, n_patients=a.patients, seed=0)
        for solver in ("expm", "tsit5"):
            settings = EvaluationSettings(horizon=56.0, response_week=8, target_output="conc", solver=solver)
            rows.append((f"one-compartment IV, {solver}", *_run(model, draws, grid.candidates(popkpd.Bolus), settings)))
    print(f"device: {jax.devices()[0].platform}; {a.draws} draws x {a.patients} patients")
    print(f"{'case':<36} {'first call s':>12} {'warm s':>8} {'evals/s':>10} {'patient-days/s':>15}")
    for name, first, best, eps, pds in rows:
        print(f"{name:<36} {first:>12.1f} {best:>8.3f} {eps:>10.1f} {pds:>15.0f}")


if __name__ == "__main__":
    main()
