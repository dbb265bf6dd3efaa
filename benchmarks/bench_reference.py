"""Reference problem (shared/bench/README.md): 2-compartment SC, 40 subjects, NUTS 4 x (500 + 500).

    python -m benchmarks.bench_reference                 # gradient table, popkpd NUTS rows, Stan rows
    python -m benchmarks.bench_reference --no-stan       # popkpd only
    python -m benchmarks.bench_reference --paths closed_form expm --warmup 500 --draws 500
    python -m benchmarks.bench_reference --gradient-only # per-gradient cost of the log density only
    python -m benchmarks.bench_reference ... --record    # also write its ratios to benchmarks/recorded.json

Every ratio is printed beside the one recorded in ``benchmarks/recorded.json`` (the figures of
RESULTS.md) with the change, and a last line says whether any moved by more than 25 %.

Parts (each NUTS row runs in a fresh process, so compile time and peak memory are its own):

1. Per-gradient cost of the log density (value and gradient of the NUTS potential) for each
   popkpd path, timed interleaved in one process (best of 5 rounds), and its difference from the
   closed form's value (exactness check).
2. NUTS through ``popkpd.fit`` (init from the Laplace approximation, as ``fit`` does by
   default; ``--init pathfinder`` for Pathfinder's) for each path: compile (MAP + compile) and
   sampling wall time, minimum bulk ESS over the population parameters, ESS per second of
   sampling, divergences, max R-hat, peak RSS.
   ``fit`` runs warmup and draws as one NumPyro call, so popkpd's "sampling" time includes
   compiling the sampler loop (its ESS/s is conservative); Stan's excludes its C++ compilation.
3. Stan (pystan, optional: ``pip install -e .[bench]``), closed form and ``ode_rk45_tol`` (rtol
   1e-6, atol 1e-8): the same model, priors, data and sampler settings (benchmarks/stan/).

popkpd paths: ``closed_form`` (superposition), ``expm`` (``simulate(solver="expm")``: the exact
linear propagator, not a numerical integrator), ``tsit5`` (diffrax Tsit5, rtol 1e-6, atol 1e-9,
reverse mode through the checkpointed adjoint) and ``tsit5_fwd`` (the same solve, gradients by
per-subject forward-mode sensitivities, ``sensitivity="forward"``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "bench" / "pk_sc_2cpt_N40.csv"
PATHS = ("closed_form", "expm", "tsit5", "tsit5_fwd")
POPULATION = ("cl_pop", "vc_pop", "q_pop", "vp_pop", "ka_pop", "omega_cl", "omega_vc", "omega_ka", "sigma_conc_prop")
ODE_TOL = dict(rtol=1e-6, atol=1e-9)


def data_path() -> Path:
    """The reference data set, ``../shared/bench/pk_sc_2cpt_N40.csv`` relative to the repository root."""
    if not DATA.is_file():
        raise FileNotFoundError(
            f"Reference data not found: expected {DATA} (the shared bench folder next to the repository, "
            "see shared/bench/README.md). Check out the shared folder beside the repository, or pass "
            "--data PATH."
        )
    return DATA


def population(path: str):
    """The reference model (bench/README.md priors) with the prediction path ``path``."""
    import popkpd
    from popkpd._statistical import HalfNormal, LogNormal, Parameter, PopulationModel, Proportional

    model = popkpd.TwoCompartment()
    if path == "closed_form":
        method, options = "closed_form", {}
    elif path == "expm":
        method, options = "ode", dict(solver="expm")
    elif path == "tsit5":
        method, options = "ode", dict(ODE_TOL)
    elif path == "tsit5_fwd":
        method, options = "ode", dict(ODE_TOL, sensitivity="forward")
    else:
        raise ValueError(f"unknown path {path!r}; expected one of {PATHS}")
    parameters = dict(
        cl=Parameter(LogNormal(1.0, 1.0), iiv=HalfNormal(0.5)),
        vc=Parameter(LogNormal(5.0, 1.0), iiv=HalfNormal(0.5)),
        q=LogNormal(1.0, 1.0),
        vp=LogNormal(5.0, 1.0),
        ka=Parameter(LogNormal(0.5, 1.0), iiv=HalfNormal(0.5)),
    )
    return model, PopulationModel(model, parameters, Proportional(HalfNormal(0.5)), method=method, ode_options=options)


def gradient_table(paths=PATHS, rounds: int = 5, data=None) -> list[dict]:
    """Per-gradient cost of the NUTS potential for each path, timed interleaved in this process."""
    import jax
    import jax.numpy as jnp

    import popkpd
    from popkpd._inference.fit import FlatPosterior

    rows, fns = [], {}
    for path in paths:
        model, pop = population(path)
        dataset = popkpd.read_nonmem(data or data_path(), model)
        post = FlatPosterior(pop, dataset.events)
        x = jnp.asarray(post.x0) + 0.01
        t0 = time.perf_counter()
        f = jax.jit(jax.value_and_grad(post.potential)).lower(x).compile()
        value, grad = jax.block_until_ready(f(x))
        fns[path] = (f, x)
        rows.append(dict(path=path, compile_s=time.perf_counter() - t0, value=float(value), grad=np.asarray(grad), times=[]))
    for _ in range(rounds):  # interleaved: machine load affects every path alike
        for row in rows:
            f, x = fns[row["path"]]
            n = 1
            t0 = time.perf_counter()
            jax.block_until_ready(f(x))
            once = time.perf_counter() - t0
            n = max(1, int(0.2 / max(once, 1e-6)))
            t0 = time.perf_counter()
            for _ in range(n):
                jax.block_until_ready(f(x))
            row["times"].append((time.perf_counter() - t0) / n)
    ref = next((r for r in rows if r["path"] == "closed_form"), rows[0])
    ref_ms = 1e3 * min(ref["times"])
    for row in rows:
        row["grad_ms"] = 1e3 * min(row["times"])
        row["vs_closed_form"] = row["grad_ms"] / ref_ms
        row["value_diff"] = abs(row["value"] - ref["value"])
        row["grad_rel_diff"] = float(np.max(np.abs(row["grad"] - ref["grad"])) / np.max(np.abs(ref["grad"])))
    for row in rows:
        del row["grad"], row["times"]
    return rows


def nuts_row(path: str, chains: int, warmup: int, draws: int, seed: int, chain_method: str | None, data=None,
             dense_mass: bool = False, init: str = "laplace") -> dict:
    """One NUTS run through ``popkpd.fit`` (call in a fresh process: see ``main``)."""
    import jax

    import popkpd
    from popkpd._inference.fit import fit

    model, pop = population(path)
    dataset = popkpd.read_nonmem(data or data_path(), model)
    t0 = time.perf_counter()
    result = fit(pop, dataset, chains=chains, warmup=warmup, draws=draws, seed=seed, progress_bar=False,
                 posterior_predictive=False, chain_method=chain_method, dense_mass=dense_mass, init=init)
    total = time.perf_counter() - t0
    from arviz_stats import ess, rhat

    post = result.tree["posterior"]
    values = {n: np.asarray(post[n].values) for n in POPULATION}
    ess_bulk = {n: float(ess(v, method="bulk")) for n, v in values.items()}
    r_hat = {n: float(rhat(v)) for n, v in values.items()}
    timing = result.metadata["timing_s"]
    # fit() times warmup + draws as one NumPyro run, which includes compiling the sampler
    sampling = timing["mcmc_s"] if "mcmc_s" in timing else timing["warmup_s"] + timing["sampling_s"]
    stats = result.tree["sample_stats"]
    leapfrogs = int(np.asarray(stats["n_steps"].values).sum())  # draws only (NumPyro keeps no warmup stats)
    label = path + (" dense" if dense_mass else "") + ("" if init == "laplace" else f" init={init}")
    return dict(tool="popkpd", path=label, chain_method=result.metadata["sampler"].get("chain_method", chain_method),
                compile_s=total - sampling, sampling_s=sampling, min_ess_bulk=min(ess_bulk.values()),
                ess_per_s=min(ess_bulk.values()) / sampling, divergences=int(np.asarray(stats["diverging"].values).sum()),
                max_rhat=max(r_hat.values()), ess_bulk=ess_bulk, devices=len(jax.devices()),
                leapfrogs_draws=leapfrogs, ess_per_leapfrog=min(ess_bulk.values()) / leapfrogs,
                means={n: float(v.mean()) for n, v in values.items()}, timing=timing)


def _stan_available() -> bool:
    try:
        import stan  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None) -> str:
    from ._common import against_recorded, header, recorded_columns, recorded_summary, run_child, table

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_reference")
    parser.add_argument("--paths", nargs="*", default=["closed_form", "expm", "tsit5_fwd"], choices=PATHS)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-stan", action="store_true")
    parser.add_argument("--stan", nargs="*", default=["closed", "ode"], choices=("closed", "ode"))
    parser.add_argument("--gradient-only", action="store_true")
    parser.add_argument("--data", default=None)
    parser.add_argument("--init", default="laplace", help="starting points of popkpd's NUTS rows (popkpd.fit's init)")
    parser.add_argument("--record", action="store_true",
                        help="write this run's ratios to benchmarks/recorded.json (then put the run in RESULTS.md)")
    args = parser.parse_args(argv)
    data = args.data or str(data_path())

    grads = gradient_table(PATHS, data=data)
    against_recorded("reference gradient", grads, "vs_closed_form", lambda r: r["path"], args.record)
    text = ["## Reference problem (2-cmt SC, N=40): per-gradient cost of the log density", "", header(), "",
            table(grads, [("path", "path", "s"), ("grad_ms", "value+gradient (ms)", ".3f"),
                          ("vs_closed_form", "/ closed form", ".2f"), *recorded_columns("vs_closed_form"),
                          ("compile_s", "compile (s)", ".1f"),
                          ("value_diff", "|log p - closed form|", ".1e"), ("grad_rel_diff", "max grad diff (rel.)", ".1e")]),
            "", recorded_summary("reference gradient", grads, ["vs_closed_form"], lambda r: r["path"])]
    if not args.gradient_only:
        rows = []
        common = ["--chains", str(args.chains), "--warmup", str(args.warmup), "--draws", str(args.draws),
                  "--seed", str(args.seed), "--data", data]
        def done(row):  # print each row as it finishes: a long run interrupted keeps what it measured
            rows.append(row)
            print("row:", json.dumps(row), flush=True)

        for path in args.paths:
            done(run_child("benchmarks.bench_reference", ["--row", path, *common, "--init", args.init]))
        if not args.no_stan:
            if _stan_available():
                for kind in args.stan:
                    row = run_child("benchmarks.stan.run_stan", [kind, *common])
                    row["path"] = f"stan {kind}"
                    done(row)
            else:
                text += ["", "Stan rows skipped: pystan is not installed (pip install -e '.[bench]')."]
        # ESS/s of the first row of each reference (the closed form's label may carry " dense" or an init)
        refs = {key: next((r["ess_per_s"] for r in rows if r["path"].startswith(prefix)), None)
                for key, prefix in (("vs_stan_ode", "stan ode"), ("vs_stan_closed", "stan closed"),
                                    ("vs_closed_form", "closed_form"))}
        for r in rows:
            for key, ref in refs.items():
                r[key] = r["ess_per_s"] / ref if ref else float("nan")
            r.setdefault("chain_method", "4 processes")
        keys = list(refs)
        for key in keys:
            against_recorded("reference NUTS ESS/s", rows, key, lambda r: r["path"], args.record)
        text += ["", f"### NUTS {args.chains} chains x ({args.warmup} warmup + {args.draws} draws), target accept 0.8", "",
                 table(rows, [("path", "path", "s"), ("chain_method", "chains", "s"), ("compile_s", "compile (s)", ".1f"),
                              ("sampling_s", "sampling (s)", ".1f"), ("min_ess_bulk", "min bulk ESS", ".0f"),
                              ("ess_per_s", "ESS/s", ".2f"), ("divergences", "divergences", "d"), ("max_rhat", "max R-hat", ".3f"),
                              ("vs_stan_ode", "ESS/s / Stan ODE", ".1f"), *recorded_columns("vs_stan_ode"),
                              ("vs_stan_closed", "ESS/s / Stan closed", ".1f"), *recorded_columns("vs_stan_closed"),
                              ("vs_closed_form", "ESS/s / closed form", ".2f"), *recorded_columns("vs_closed_form"),
                              ("peak_mib", "peak RSS (MiB)", ".0f")]),
                 "", recorded_summary("reference NUTS ESS/s", rows, keys, lambda r: r["path"])]
    out = "\n".join(text)
    print(out)
    return out


def _row_main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", default=None)
    parser.add_argument("--chain-method", default=None)
    parser.add_argument("--dense-mass", action="store_true")
    parser.add_argument("--init", default="laplace", help="popkpd.fit's init: laplace, pathfinder, map, prior_median")
    args = parser.parse_args(argv)
    row = nuts_row(args.path, args.chains, args.warmup, args.draws, args.seed, args.chain_method, args.data,
                   args.dense_mass, args.init)
    print(json.dumps(row))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--row":
        _row_main(sys.argv[2:])
    else:
        main()
