"""Stan (pystan 3) on the reference problem: the same model, priors, data and sampler settings as
``benchmarks/bench_reference.py``. Optional: needs ``pip install popkpd[bench]`` (pystan, which
compiles the Stan programs with the local C++ compiler on first use and caches them).

    python -m benchmarks.stan.run_stan closed [--chains 4 --warmup 500 --draws 500 --seed 1]
    python -m benchmarks.stan.run_stan ode    [...]   # ode_rk45_tol, rtol 1e-6, atol 1e-8

Prints one JSON line: compile and sampling wall time, minimum bulk ESS over the population
parameters (ArviZ's estimator, the same as for popkpd), ESS/s, divergences, max R-hat.
Initial values are Stan's default (uniform(-2, 2) on the unconstrained scale). Also reported:
the number of leapfrog steps (gradient evaluations, warmup included) and the wall time per step,
from which a short run gives the cost per gradient of a program too slow to run in full:

    python -m benchmarks.stan.run_stan ode --cost --warmup 0 --draws 10 --stepsize 0.02 --max-depth 5

times 10 iterations of 31 leapfrogs each from the true values, without adaptation (a fixed small
step, so the trajectories stay in the typical set where the ODE is not stiff; Stan's adaptive
early warmup on the ODE program can wander where rk45 takes millions of steps). Timing Stan's
``grad_log_prob`` instead measures mostly pystan's HTTP round trip (about 60 ms a call here).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
POPULATION = ("cl", "vc", "q", "vp", "ka", "omega_cl", "omega_vc", "omega_ka", "sigma")


def stan_data(frame, rtol: float = 1e-6, atol: float = 1e-8) -> dict:
    """Data for both Stan programs from the NONMEM-style table (ID, TIME, DV, AMT, EVID)."""
    frame = frame.sort_values(["ID", "TIME"], kind="stable")
    ids = list(dict.fromkeys(frame["ID"]))
    index = {v: i + 1 for i, v in enumerate(ids)}
    obs = frame[(frame["EVID"] == 0) & (frame["MDV"] == 0)]
    doses = frame[frame["EVID"] == 1]
    d = dict(N=len(ids), n_obs=len(obs), obs_id=[index[v] for v in obs["ID"]],
             obs_time=obs["TIME"].to_numpy(float), dv=obs["DV"].to_numpy(float),
             n_dose=len(doses), dose_id=[index[v] for v in doses["ID"]],
             dose_time=doses["TIME"].to_numpy(float), dose_amt=doses["AMT"].to_numpy(float))
    first, last = [], []
    dose_id = np.asarray(d["dose_id"])
    for i in range(1, len(ids) + 1):
        where = np.flatnonzero(dose_id == i)
        first.append(int(where[0]) + 1)
        last.append(int(where[-1]) + 1)
    d.update(dose_first=first, dose_last=last)
    # dose intervals for the ODE program
    obs_id, obs_time = np.asarray(d["obs_id"]), d["obs_time"]
    seg = dict(seg_id=[], seg_new=[], seg_t0=[], seg_amt=[], seg_first=[], seg_len=[])
    ts, ts_obs = [], []
    for i in range(1, len(ids) + 1):
        t_d = d["dose_time"][dose_id == i]
        a_d = d["dose_amt"][dose_id == i]
        o_idx = np.flatnonzero(obs_id == i)
        if np.any(obs_time[o_idx] <= t_d[0]):
            raise ValueError(f"subject {ids[i - 1]}: observations before the first dose are not supported here")
        t_end = obs_time[o_idx].max()
        new = 1
        for k, (t0, amt) in enumerate(zip(t_d, a_d)):
            t1 = t_d[k + 1] if k + 1 < len(t_d) else t_end
            if t1 <= t0:
                continue
            inside = [j for j in o_idx if t0 < obs_time[j] <= t1]
            times = [obs_time[j] for j in inside]
            marks = [j + 1 for j in inside]
            if not times or times[-1] < t1:
                times.append(t1)
                marks.append(0)
            seg["seg_id"].append(i)
            seg["seg_new"].append(new)
            seg["seg_t0"].append(float(t0))
            seg["seg_amt"].append(float(amt))
            seg["seg_first"].append(len(ts) + 1)
            seg["seg_len"].append(len(times))
            ts += [float(t) for t in times]
            ts_obs += marks
            new = 0
    d.update(seg, n_seg=len(seg["seg_id"]), n_ts=len(ts), ts=ts, ts_obs=ts_obs, rtol=rtol, atol=atol,
             max_num_steps=100_000)
    return d


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("closed", "ode"))
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", default=None)
    parser.add_argument("--cost", action="store_true",
                        help="cost per gradient only: one chain started at the true values (truth.json), "
                             "--warmup/--draws iterations, reports ms per leapfrog step")
    parser.add_argument("--stepsize", type=float, default=None, help="Stan's (initial) step size")
    parser.add_argument("--max-depth", type=int, default=None, help="Stan's maximum tree depth (10)")
    args = parser.parse_args(argv)
    if args.cost:
        args.chains = 1

    import aiohttp.client
    import pandas as pd
    import stan

    # pystan talks to its in-process httpstan server through aiohttp, whose default 5-minute
    # request timeout is shorter than a Stan compilation on a loaded 2-core machine.
    aiohttp.client.DEFAULT_TIMEOUT = aiohttp.client.ClientTimeout(total=None)

    from benchmarks.bench_reference import data_path

    frame = pd.read_csv(args.data or data_path())
    data = stan_data(frame)
    program = (HERE / f"pk_2cpt_{'closed' if args.kind == 'closed' else 'ode'}.stan").read_text()
    t0 = time.perf_counter()
    posterior = stan.build(program, data=data, random_seed=args.seed)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    init = {}
    if args.cost:  # start at the truth: the per-gradient cost where the posterior mass is
        truth = json.loads((Path(args.data or data_path()).parent / "truth.json").read_text())
        pop = truth["pop"]
        init = dict(cl=pop["CL"], vc=pop["Vc"], q=pop["Q"], vp=pop["Vp"], ka=pop["ka"], omega_cl=pop["omega_CL"],
                    omega_vc=pop["omega_Vc"], omega_ka=pop["omega_ka"], sigma=pop["sigma"],
                    **{f"eta_{k}": [row[f"eta_{K}"] for row in truth["individual"]]
                       for k, K in (("cl", "CL"), ("vc", "Vc"), ("ka", "ka"))})
    options = dict(init=[init]) if init else {}
    options.update({k: v for k, v in (("stepsize", args.stepsize), ("max_depth", args.max_depth)) if v is not None})
    fit = posterior.sample(num_chains=args.chains, num_warmup=args.warmup, num_samples=args.draws, delta=0.8,
                           save_warmup=True, **options)
    sampling_s = time.perf_counter() - t0

    from arviz_stats import ess, rhat  # the same estimators as for popkpd's draws

    def by_chain(name, warmup=False):  # [chain, draw]; fit[...] interleaves chains
        x = np.asarray(fit[name]).reshape(args.warmup + args.draws, args.chains).T
        return x if warmup else x[:, args.warmup:]

    ess_bulk = {n: float(ess(by_chain(n), method="bulk")) for n in POPULATION}
    r_hat = {n: float(rhat(by_chain(n))) for n in POPULATION}
    divergent = int(np.sum(by_chain("divergent__")))
    leapfrogs = int(np.sum(by_chain("n_leapfrog__", warmup=True)))  # gradient evaluations, warmup included
    result = dict(tool="stan", kind=args.kind, compile_s=compile_s, sampling_s=sampling_s,
                  min_ess_bulk=min(ess_bulk.values()), ess_bulk=ess_bulk, max_rhat=max(r_hat.values()),
                  divergences=divergent, chains=args.chains, warmup=args.warmup, draws=args.draws,
                  stan_version=getattr(stan, "__version__", "?"),
                  means={n: float(np.mean(by_chain(n))) for n in POPULATION})
    result["ess_per_s"] = result["min_ess_bulk"] / sampling_s
    result["leapfrogs"] = leapfrogs
    # wall time per gradient evaluation (all chains, as run: pystan runs one process per core)
    result["ms_per_leapfrog"] = 1e3 * sampling_s / leapfrogs
    result["ess_per_leapfrog"] = result["min_ess_bulk"] / leapfrogs
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
