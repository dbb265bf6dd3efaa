"""Cost of a checkpoint: seconds per piece of NUTS draws after the first, with the chains
vectorised in one process and no progress bar (the GPU path of fits/majestec_virtual).

Two ways of running a piece on from the last state, on the same posterior (the fitted BCMA model
of fits/majestec_virtual on a simulated MajesTEC-1-like trial of ``--patients`` patients) and the
same NUTS settings:

- ``popkpd``: ``fit(checkpoint_every=...)``, whose later pieces are one scan of the kernel's
  transitions compiled once per piece length (``popkpd._inference.fit._transitions``);
- ``MCMC.run``: NumPyro's ``MCMC.run`` from ``post_warmup_state`` for every piece (what
  ``fit`` did until 24 Nov 2026), which compiles its loop again on every call.

The first later piece includes the compilation; popkpd's times include what a checkpoint adds
(the piece's log-likelihood and replicates, the fit so far handed over). Run from the repository root:

    .venv/bin/python -m benchmarks.bench_checkpoints [--patients 3] [--every 10] [--pieces 4]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import popkpd  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402
from popkpd._inference.fit import FlatPosterior  # noqa: E402
from popkpd._trial import simulate_trial  # noqa: E402

from benchmarks._common import header, table  # noqa: E402

SETTINGS = dict(max_tree_depth=3, target_accept=0.9, dense_mass=True)  # short trees: the loop's cost shows


def _majestec(patients: int):
    """The fitted population and data of fits/majestec_virtual's config until run 34 (the trial with all
    its IIV, no exhaustion panel; the figures in RESULTS.md were taken on it), ``patients`` patients."""
    spec = importlib.util.spec_from_file_location("majestec_fit", ROOT / "fits" / "majestec_virtual" / "fit.py")
    mv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mv)
    config = mv.load_config(None)
    config["trial"].update(without_iiv=[], panel=[])
    config["data"]["dvid"], config["fit"]["without_iiv"] = [1, 2, 3, 4], []
    trial = simulate_trial(mv.trial_design(config["trial"]), n=patients, seed=int(config["trial"]["seed"]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trial.csv"
        trial.dataset.to_csv(path, index=False)
        pop, dataset, _ = mv.fitted_data(config, path)
    return pop, dataset


def popkpd_pieces(pop, dataset, every: int, pieces: int, warmup: int) -> list[float]:
    """Seconds of each piece after the first, by ``fit(checkpoint_every=every)``."""
    stamps = []
    popkpd.fit(pop, dataset, chains=2, warmup=warmup, draws=every * pieces, checkpoint_every=every,
               on_checkpoint=lambda f: stamps.append(time.perf_counter()), init="prior_median", seed=0,
               progress_bar=False, **SETTINGS)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def numpyro_pieces(pop, dataset, every: int, pieces: int, warmup: int) -> list[float]:
    """Seconds of each piece after the first, by NumPyro's ``MCMC.run`` from the last state."""
    posterior = FlatPosterior(pop, dataset.events, dataset.covariate_names)
    kernel = NUTS(potential_fn=posterior.potential, target_accept_prob=SETTINGS["target_accept"],
                  max_tree_depth=SETTINGS["max_tree_depth"], dense_mass=SETTINGS["dense_mass"])
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=every, num_chains=2, chain_method="vectorized",
                progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), init_params=jnp.stack([jnp.asarray(posterior.x0)] * 2))
    times = []
    for _ in range(pieces - 1):
        t = time.perf_counter()
        mcmc.post_warmup_state = mcmc.last_state
        mcmc.run(mcmc.last_state.rng_key)
        jax.block_until_ready(mcmc.get_samples())
        times.append(time.perf_counter() - t)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=3)
    parser.add_argument("--every", type=int, default=10, help="draws per piece")
    parser.add_argument("--pieces", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args(argv)
    pop, dataset = _majestec(args.patients)
    rows = []
    for name, run in (("popkpd (one compiled scan)", popkpd_pieces), ("MCMC.run per piece", numpyro_pieces)):
        times = run(pop, dataset, args.every, args.pieces, args.warmup)
        rows.append({"way": name, "first": times[0], "later": sum(times[1:]) / len(times[1:])})
    print(header())
    print(f"{args.patients} patients, 2 vectorised chains, pieces of {args.every} draws, max tree depth "
          f"{SETTINGS['max_tree_depth']}; seconds per piece after the first (its compilation in 'first')")
    print(table(rows, [("way", "way", "s"), ("first", "first later piece (s)", ".1f"),
                       ("later", "each piece after (s)", ".1f")]))


if __name__ == "__main__":
    main()
