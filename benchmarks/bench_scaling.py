"""Scaling: gradient of a log density of the BCMA mechanistic model over one year of dosing.

    python -m benchmarks.bench_scaling                          # 100, 1000, 10000 subjects, reverse mode
    python -m benchmarks.bench_scaling --sizes 100 1000 --sensitivity reverse forward
    python -m benchmarks.bench_scaling --row N SENSITIVITY      # one row in this process
    python -m benchmarks.bench_scaling --record                 # also write its ratios to recorded.json

Model: ``BCMAModel(layers=3)`` (PK with SC depot, sBCMA sink (QE), trimers (QE), tumour, T cells,
paraproteins: 10 states), teclistamab-like step-up 0.06 / 0.3 mg/kg on days 0 / 3, then 1.5
mg/kg weekly from day 6 to day 363 (54 doses, 70 kg, converted to nmol with MW 146 kDa).
Observations every 28 days (13 times) of total drug concentration, total sBCMA and tumour burden.
Five parameters vary between virtual subjects (log-normal, sd 0.3): cl, vc, ka, kg, kmax. The
objective is a sum of squared residuals (log scale for the concentrations, additive for the
tumour burden, which falls to ~0) against fixed targets; its gradient with respect to every
subject's five parameters is what NUTS needs per leapfrog step.

Each row runs in a fresh process: compile time and peak resident memory (ru_maxrss) are its
own; a row whose resident memory passes 12 GiB is stopped and reported as not measured (the
machine is shared). Above 1,000 subjects the gradient is computed in batches of 1,000 subjects
(one compiled per-batch gradient, called for each batch): reverse mode through diffrax keeps the solver checkpoints
of every subject in the batch (about 5 MiB per subject here), so memory is bounded by the batch
while time stays linear in subjects; on several devices the batches would be sharded instead. Diffrax Tsit5, rtol 1e-6, atol 1e-9; "reverse" is the checkpointed adjoint, "forward" the
per-subject forward-mode Jacobian behind a custom VJP (``simulate(..., sensitivity="forward")``).
Times: best of 3 after compilation (one timed call from 5,000 subjects on).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

TYPICAL = dict(
    cl=0.449, vc=4.13, q=0.039, vp=1.34, ka=0.133, f_bio=0.72,
    kd_s=0.5, k_s=0.55, k_x=0.043, s0=8.0,
    p_bm=0.5, v_bm=1.75, kd_b=0.18, kd_3=28.0, r_b0=5000.0, r_cd3=6e4, n0=6.55e9, e0=1.8e9, chi=100.0, x_sbm=9.0,
    kg=0.008, nmax_rel=10.0, kmax=0.5, s_et=0.25, tau50_n=1000.0, hill_n=1.0, tau50_e=300.0, hill_e=1.0,
    eps_kill=0.1, k_out=0.05, k_act=2.0, k_exp=1.0, tcap_rel=10.0, k_con=0.1, k_exh=0.1, k_rec=0.3, k_dx=0.05,
    k_m=0.05, m0=20.0, k_l=4.0, l0=400.0,
)
VARYING = ("cl", "vc", "ka", "kg", "kmax")
MW_KDA = 146.0
WEIGHT_KG = 70.0


def problem(n_subjects: int, seed: int = 0):
    import jax.numpy as jnp

    import popkpd
    from popkpd._structural.bcma import BCMAModel
    from popkpd._structural.units import mg_to_nmol

    model = BCMAModel(layers=3)
    nmol = lambda mg_per_kg: float(mg_to_nmol(mg_per_kg * WEIGHT_KG, MW_KDA))  # noqa: E731
    regimen = popkpd.Regimen.step_up([(0, popkpd.SC(nmol(0.06))), (3, popkpd.SC(nmol(0.3)))]).then_every(
        7, popkpd.SC(nmol(1.5)), start=6)
    obs = np.arange(28.0, 365.0, 28.0)
    events = regimen.to_events(model, obs, n_subjects=n_subjects, until=364.0)
    rng = np.random.default_rng(seed)
    params = {k: jnp.asarray(v, float) for k, v in TYPICAL.items()}
    for k in VARYING:
        params[k] = jnp.asarray(TYPICAL[k] * np.exp(0.3 * rng.standard_normal(n_subjects)))
    return model, params, events


BATCH = 1000
"""Subjects per batch: above this, the gradient is computed batch by batch (one compiled
per-batch gradient), which bounds memory: reverse mode keeps every solver checkpoint of a batch."""


def _row(n_subjects: int, sensitivity: str) -> dict:
    import jax
    import jax.numpy as jnp

    import popkpd

    model, params, events = problem(n_subjects)
    i_conc, i_sbcma, i_tumour = (model.output_index(k) for k in ("conc", "sbcma_total", "tumour"))
    options = dict(rtol=1e-6, atol=1e-9, sensitivity=sensitivity, throw=False)

    def loss(varying, ev):
        sol = popkpd.simulate(model, dict(params, **varying), ev, **options)
        out = sol.outputs
        r = (jnp.log(out[..., i_conc] / 50.0) ** 2 + jnp.log(out[..., i_sbcma] / 10.0) ** 2
             + (out[..., i_tumour] - 0.5) ** 2)
        return jnp.sum(jnp.where(ev.obs_mask, r, 0.0)), sol.num_steps

    varying = {k: params[k] for k in VARYING}
    batch = min(BATCH, n_subjects)
    if n_subjects % batch:
        raise ValueError(f"n_subjects={n_subjects}: expected a multiple of {batch}")

    # The loss is a sum over subjects and each subject has its own parameters, so the gradient of
    # the whole is the per-batch gradients side by side, computed batch after batch. Not jitted as
    # a whole: simulate must see each batch's events as concrete arrays (it decides its code paths
    # from them on the host; traced events take every path, far dearer in memory); its own jitted
    # core compiles once for all batches of equal shape.
    grad_batch = jax.grad(loss, has_aux=True)
    starts = range(0, n_subjects, batch)

    def grad(varying, ev):
        parts = [grad_batch({k: v[i:i + batch] for k, v in varying.items()}, ev.subset(slice(i, i + batch)))
                 for i in starts]
        g = {k: jnp.concatenate([p[0][k] for p in parts]) for k in varying}
        return g, jnp.concatenate([p[1] for p in parts])

    t0 = time.perf_counter()
    g, steps = jax.block_until_ready(grad(varying, events))
    first = time.perf_counter() - t0
    times = []
    for _ in range(3 if n_subjects < 5000 else 1):  # large rows: one timed call after the first
        t0 = time.perf_counter()
        jax.block_until_ready(grad(varying, events))
        times.append(time.perf_counter() - t0)
    best = min(times)
    finite = all(bool(jnp.all(jnp.isfinite(v))) for v in g.values())
    return dict(n=n_subjects, sensitivity=sensitivity, batch=batch, grad_s=best, per_subject_ms=1e3 * best / n_subjects,
                compile_s=first - best, mean_steps=float(np.mean(np.asarray(steps))),
                max_steps=int(np.max(np.asarray(steps))), finite=finite, devices=str(jax.devices()))


def _run_capped(n: int, sensitivity: str, cap_mib: float) -> dict:
    """One row in a fresh process, killed if its resident memory passes ``cap_mib`` (the machine
    is shared: a row that would need more is reported as such, not allowed to swap others out)."""
    import subprocess

    from ._common import run_child

    if cap_mib <= 0:
        return run_child("benchmarks.bench_scaling", ["--row", str(n), sensitivity])
    cmd = [sys.executable, "-c",
           "import resource, runpy, sys; sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], run_name='__main__')\n"
           "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)",
           "benchmarks.bench_scaling", "--row", str(n), sensitivity]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
        except (OSError, StopIteration):
            rss = 0.0
        peak = max(peak, rss)
        if rss > cap_mib:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"stopped at {rss:.0f} MiB resident (cap {cap_mib:.0f} MiB)")
        time.sleep(0.5)
    out, err = proc.communicate()
    if proc.returncode != 0:
        lines = [line for line in err.strip().splitlines() if "Error" in line or "error" in line]
        raise RuntimeError((lines[-1] if lines else err.strip()[-300:]) or f"exit {proc.returncode}")
    lines = out.strip().splitlines()
    row = json.loads([line for line in lines if line.startswith("{")][-1])
    row["peak_mib"] = int([line for line in lines if line.startswith("PEAK")][-1].split()[1]) / 1024
    return row


def main(sizes=(100, 1000, 10000), sensitivities=("reverse",), cap_mib: float = 12_000, record: bool = False) -> str:
    from ._common import against_recorded, header, recorded_columns, recorded_summary, table

    rows = []
    for n in sizes:
        for s in sensitivities:
            try:
                rows.append(_run_capped(n, s, cap_mib))
            except RuntimeError as err:  # out of memory (or over the cap): report the row as not run
                rows.append(dict(n=n, sensitivity=s, batch=min(BATCH, n), grad_s=float("nan"), per_subject_ms=float("nan"),
                                 compile_s=float("nan"), mean_steps=float("nan"), max_steps=-1, finite=False,
                                 peak_mib=float("nan"), note=str(err)[:120]))
    base = {r["sensitivity"]: r for r in rows if r["n"] == min(sizes)}
    for r in rows:
        r["vs_smallest"] = r["grad_s"] / base[r["sensitivity"]]["grad_s"] / (r["n"] / min(sizes))

    def name(r):
        return f"{r['n']} vs {min(sizes)} subjects, {r['sensitivity']}"

    against_recorded("scaling", rows, "vs_smallest", name, record)
    text = ("## Scaling: BCMA model (layers 0-3, 10 states), one year of dosing, gradient of a log density\n\n"
            + header() + "\n\n" + table(rows, [
                ("n", "subjects", "d"), ("sensitivity", "derivatives", "s"), ("batch", "batch", "d"),
                ("grad_s", "gradient (s)", ".3f"),
                ("per_subject_ms", "per subject (ms)", ".2f"), ("vs_smallest", "per-subject cost / smallest N", ".2f"),
                *recorded_columns("vs_smallest"),
                ("mean_steps", "solver steps / subject", ".0f"), ("compile_s", "compile (s)", ".1f"),
                ("peak_mib", "peak RSS (MiB)", ".0f")]))
    notes = [f"- N={r['n']} ({r['sensitivity']}): not measured: {r['note']}" for r in rows if "note" in r]
    if notes:
        text += "\n\n" + "\n".join(notes)
    text += "\n\n" + recorded_summary("scaling", rows, ["vs_smallest"], name)
    print(text)
    return text


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--row":
        print(json.dumps(_row(int(sys.argv[2]), sys.argv[3])))
    else:
        args = sys.argv[1:]
        sizes = [int(a) for a in args[args.index("--sizes") + 1:] if a.isdigit()] if "--sizes" in args else (100, 1000, 10000)
        sens = [a for a in args[args.index("--sensitivity") + 1:] if a in ("reverse", "forward")] if "--sensitivity" in args else ("reverse",)
        main(sizes, sens, record="--record" in args)
