"""Simulation and gradient cost: ODE path vs closed form, 2-compartment SC, weekly for 6 months.

    python -m benchmarks.bench_core            # table for 10, 100, 1000 subjects
    python -m benchmarks.bench_core --row N M  # one row in this process (used internally)

Each row runs in a fresh process (so compile time and peak memory are its own). The regimen is
100 mg SC weekly for 26 weeks; 12 observations per subject; 2-compartment model with per-subject
CL, Vc, ka. "simulate" is one batched prediction; "gradient" is the gradient of a sum of squared
log-residuals with respect to every subject's parameters (reverse mode). Times are the best of 5
after compilation; compile time is the first call minus the best.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def _row(n_subjects: int, method: str) -> dict:
    import jax
    import jax.numpy as jnp

    import popkpd

    model = popkpd.TwoCompartment()
    regimen = popkpd.Regimen.every(7, popkpd.SC(100.0), start=0, count=26)
    obs = np.array([1, 3, 7, 14, 28, 42, 56, 84, 112, 140, 168, 182], float)
    events = regimen.to_events(model, obs, n_subjects=n_subjects, until=182.0)
    rng = np.random.default_rng(0)
    params = {
        "cl": jnp.asarray(0.5 * np.exp(0.3 * rng.standard_normal(n_subjects))),
        "vc": jnp.asarray(4.0 * np.exp(0.3 * rng.standard_normal(n_subjects))),
        "ka": jnp.asarray(0.3 * np.exp(0.3 * rng.standard_normal(n_subjects))),
        "q": 0.5,
        "vp": 3.0,
    }
    solve = popkpd.closed_form if method == "closed_form" else popkpd.simulate
    target = solve(model, params, events).pred * 1.1

    def loss(p):
        pred = solve(model, p, events, throw=False).pred
        return jnp.sum(jnp.where(events.obs_mask, jnp.log(pred / target) ** 2, 0.0))

    sim = lambda: solve(model, params, events, throw=False).pred.block_until_ready()  # noqa: E731
    grad = jax.jit(jax.grad(loss))
    g = lambda: jax.block_until_ready(grad(params))  # noqa: E731

    from ._common import best_of

    t = time.perf_counter(); sim(); first_sim = time.perf_counter() - t  # noqa: E702
    best_sim = best_of(sim)
    t = time.perf_counter(); g(); first_grad = time.perf_counter() - t  # noqa: E702
    best_grad = best_of(g)
    ref = popkpd.closed_form(model, params, events).pred
    err = float(jnp.max(jnp.abs(solve(model, params, events).pred / ref - 1.0)))
    return dict(n=n_subjects, method=method, sim_ms=best_sim * 1e3, grad_ms=best_grad * 1e3,
                compile_s=(first_sim - best_sim) + (first_grad - best_grad), max_rel_err=err)


def main(sizes=(10, 100, 1000)) -> str:
    from ._common import header, run_child, table

    rows = []
    for n in sizes:
        for method in ("closed_form", "ode"):
            rows.append(run_child("benchmarks.bench_core", ["--row", str(n), method]))
    for r in rows:
        r["per_subject_grad_us"] = r["grad_ms"] * 1e3 / r["n"]
    by = {(r["n"], r["method"]): r for r in rows}
    for r in rows:
        r["ode_over_cf"] = r["grad_ms"] / by[(r["n"], "closed_form")]["grad_ms"]
    text = "## Core: simulate and gradient, 2-cmt SC weekly x 26, 12 obs/subject\n\n" + header() + "\n\n" + table(
        rows,
        [("n", "subjects", "d"), ("method", "path", "s"), ("sim_ms", "simulate (ms)", ".2f"), ("grad_ms", "gradient (ms)", ".2f"),
         ("per_subject_grad_us", "gradient per subject (us)", ".1f"), ("ode_over_cf", "gradient / closed form", ".1f"),
         ("compile_s", "compile (s)", ".1f"), ("max_rel_err", "max rel. error vs closed form", ".1e"), ("peak_mib", "peak RSS (MiB)", ".0f")],
    )
    print(text)
    return text


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--row":
        print(json.dumps(_row(int(sys.argv[2]), sys.argv[3])))
    else:
        main()
