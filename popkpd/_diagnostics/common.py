"""Plumbing shared by the diagnostics: input checks, posterior draws, batched simulation.

``prepare(fit, population, dataset)`` checks that the three belong together and returns a
``Context``; every diagnostic works from it. The simulation (individual parameters ->
predictions -> observation distribution -> one draw of every observation) is compiled once per
``Context`` for a fixed batch of draws, with the events closed over (so the closed forms see
concrete events and trace only the dose kinds present), and reused for IPRED, PRED, the
posterior-predictive fallback, NPDE and the VPC.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._data.dataset import Dataset
from .._events import Events
from .._statistical.population import PopulationModel

BATCH = 100  # draws per compiled call (the last batch is padded)


def _who(fn: str) -> str:
    return f"{fn}(fit, population, dataset)"


def check_fit(fit, fn: str):
    tree = getattr(fit, "tree", None)
    if tree is None or not hasattr(fit, "metadata") or "posterior" not in tree.children:
        raise TypeError(
            f"{fn}: received {type(fit).__name__} as the fit; expected a Fit returned by popkpd fit(...) "
            "or load_fit(path)."
        )


def _plain(description) -> dict:
    """The statistical part of a model description as stored in fit metadata (JSON round trip:
    tuples -> lists). ``method`` and ``ode_options`` say how predictions are computed, not what
    the model is, and are left out."""
    out = json.loads(json.dumps(description))
    return {k: v for k, v in out.items() if k not in ("method", "ode_options")}


def _first_difference(a, b, path="model"):
    """``(path, a value, b value)`` of the first difference between two nested descriptions."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}")
    return path, a, b


def resolve_population(fit, population, fn: str) -> PopulationModel:
    if population is None:
        population = getattr(fit, "population", None)
        if population is None:
            raise ValueError(
                f"{fn}: population is None and the fit carries no PopulationModel (a fit read with "
                "load_fit keeps only its description). Expected the PopulationModel the fit was made "
                f"with; pass it: {_who(fn)}."
            )
    if not isinstance(population, PopulationModel):
        raise TypeError(
            f"{fn}: received {type(population).__name__} as the population; expected the PopulationModel "
            "the fit was made with."
        )
    stored = fit.metadata.get("model")
    ours = _plain(population.describe())
    if stored is not None and ours != _plain(stored):
        path, received, expected = _first_difference(ours, _plain(stored))
        raise ValueError(
            f"{fn}: the PopulationModel differs from the one the fit was made with: {path} is {received!r}, "
            f"the fit has {expected!r}. Expected the same model; pass the PopulationModel given to fit(...)."
        )
    return population


class Context:
    """A fit, its population model and its data, checked to belong together.

    Attributes: ``fit``, ``population``, ``events``, ``ids`` (subject IDs in events order),
    ``covariate_names``, ``output_names``, ``observations`` (one row per observation: subject,
    ID, TIME, DV, output, CENS, row), ``s_idx``/``o_idx`` (where each observation sits in the
    padded ``[S, O]`` arrays), ``sites`` (sampled sites the simulation needs).
    """

    def __init__(self, fit, population, dataset, fn):
        check_fit(fit, fn)
        self.fit = fit
        self.population = resolve_population(fit, population, fn)
        if isinstance(dataset, Dataset):
            events, ids, names = dataset.events, np.asarray(dataset.ids), tuple(dataset.covariate_names)
        elif isinstance(dataset, Events):
            events = dataset
            ids = np.arange(1, dataset.n_subjects + 1)
            names = tuple(fit.metadata.get("covariate_names", ()))
        else:
            raise TypeError(
                f"{fn}: received {type(dataset).__name__} as the dataset; expected the Dataset (from "
                "read_nonmem) or the Events the fit was made on."
            )
        self.events, self.ids, self.covariate_names = events, ids, names
        self.output_names = tuple(self.population.structural.outputs)
        mask = np.asarray(events.obs_mask)
        self.s_idx, self.o_idx = np.nonzero(mask)
        self.observations = pd.DataFrame(
            {
                "subject": self.s_idx,
                "ID": ids[self.s_idx],
                "TIME": np.asarray(events.obs_time)[mask],
                "output": np.asarray(self.output_names)[np.asarray(events.obs_output)[mask]],
                "DV": np.asarray(events.obs_dv)[mask],
                "CENS": np.asarray(events.obs_cens)[mask].astype(int),
                "row": np.asarray(events.obs_row)[mask].astype(int),
            }
        )
        self._check_match(dataset, fn)
        self.sites = self._sites(fn)
        self._run = None
        self._flat = None
        self._pred = None

    # --- checks ----------------------------------------------------------------------------

    def _check_match(self, dataset, fn):
        meta, tree = self.fit.metadata, self.fit.tree
        n_sub, n_obs = self.events.n_subjects, len(self.observations)
        fit_sub, fit_obs = meta.get("n_subjects"), meta.get("n_observations")
        if (fit_sub, fit_obs) != (n_sub, n_obs):
            raise ValueError(
                f"{fn}: the fit was made on {fit_obs} observations of {fit_sub} subjects, but the dataset "
                f"has {n_obs} observations of {n_sub} subjects. Expected the dataset the fit was made on; "
                f"pass that one: {_who(fn)}."
            )
        if "observed_data" not in tree.children or "constant_data" not in tree.children:
            return
        const = tree["constant_data"]
        fit_ids = np.asarray(const["obs_id"]) if "obs_id" in const else None
        checks = [
            ("ID", fit_ids, self.observations["ID"].to_numpy()),
            ("TIME", np.asarray(const["obs_time"]) if "obs_time" in const else None, self.observations["TIME"].to_numpy()),
            ("DV", np.asarray(tree["observed_data"]["obs"]), self.observations["DV"].to_numpy()),
        ]
        for column, theirs, ours in checks:
            if theirs is None:
                continue
            same = (theirs == ours) | (pd.isna(theirs) & pd.isna(ours)) if column != "ID" else theirs.astype(str) == ours.astype(str)
            if not np.all(same):
                k = int(np.argmin(same))
                o = self.observations.iloc[k]
                raise ValueError(
                    f"{fn}: observation {k} (row {o['row']}, ID {o['ID']}, TIME {o['TIME']:g}) has {column} "
                    f"{ours[k]!r} in the dataset but {theirs[k]!r} in the fit. Expected the dataset the fit "
                    f"was made on; pass that one: {_who(fn)}."
                )
        stored = meta.get("data_hash")
        if stored and isinstance(dataset, Dataset) and not str(stored).startswith("sha256:") and stored != dataset.hash:
            raise ValueError(
                f"{fn}: the dataset's hash {dataset.hash[:12]}... differs from the hash {str(stored)[:12]}... "
                "of the data the fit was made on (observations agree, so doses, covariates or other "
                f"columns differ). Expected the dataset the fit was made on; pass that one: {_who(fn)}."
            )

    def _sites(self, fn) -> list[str]:
        population = self.population
        sites = [s for s in population.population_sites()] + [f"eta_{n}" for n in population.iiv_names]
        posterior = self.fit.tree["posterior"]
        missing = [s for s in sites if s not in posterior.data_vars]
        if missing:
            raise ValueError(
                f"{fn}: the fit's posterior has no draws of {missing}; expected every sampled site of the "
                "population model. The fit and the population model do not belong together."
            )
        return sites

    # --- draws -------------------------------------------------------------------------------

    def draws(self, max_draws: int | None = None) -> dict:
        """Posterior draws of the sampled sites, ``{site: [N, ...]}`` (chains pooled), thinned to at
        most ``max_draws`` evenly spaced draws."""
        if self._flat is None:
            posterior = self.fit.tree["posterior"]
            flat = {}
            for s in self.sites:
                a = np.asarray(posterior[s].values, dtype=float)
                flat[s] = a.reshape((-1,) + a.shape[2:])
            self._flat = flat
        n = len(next(iter(self._flat.values())))
        if max_draws is None or n <= max_draws:
            return dict(self._flat)
        keep = np.unique(np.round(np.linspace(0, n - 1, max_draws)).astype(int))
        return {k: v[keep] for k, v in self._flat.items()}

    def typical_values(self) -> dict:
        """Posterior medians of the population sites, zero random effects, no correlation: one
        draw ``{site: [1, ...]}`` whose individual parameters are the covariate-adjusted typical
        values (PRED)."""
        flat = self.draws()
        out = {}
        for s in self.sites:
            if s.startswith("eta_"):
                out[s] = np.zeros((1,) + flat[s].shape[1:])
            elif s == "corr_iiv":
                out[s] = np.eye(flat[s].shape[-1])[None]
            else:
                out[s] = np.median(flat[s], axis=0)[None]
        return out

    def pred(self) -> np.ndarray:
        """PRED per observation: the model at ``typical_values()`` (deterministic)."""
        if self._pred is None:
            self._pred = self.simulate(self.typical_values(), np.random.default_rng(0))[0][0]
        return self._pred

    def new_subjects(self, values: dict, rng: np.random.Generator) -> dict:
        """``values`` with the random effects replaced by draws for new subjects (same design)."""
        out = dict(values)
        n = len(next(iter(values.values())))
        for name in self.population.iiv_names:
            z = rng.standard_normal((n, self.events.n_subjects))
            if self.population.is_centered(name):
                omega = values.get(f"omega_{name}")
                if omega is None:
                    omega = np.full(n, self.population.parameters[name].iiv.value)
                z = z * np.asarray(omega)[:, None]
            out[f"eta_{name}"] = z
        return out

    # --- simulation ----------------------------------------------------------------------------

    def _compiled(self):
        if self._run is None:
            self._run = _compile(self.population, self.events, self.covariate_names)
        return self._run

    def residual_scale(self, f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(loc, scale, log_scale)`` of the observation distribution at predictions ``f`` (one per
        observation) and the posterior-median residual parameters, per observation."""
        full = np.ones(np.shape(self.events.obs_mask))
        full[self.s_idx, self.o_idx] = f
        medians = {k: jnp.asarray(v[0]) for k, v in self.typical_values().items()}
        loc, scale, log_scale = self._compiled()[1](jnp.asarray(full), medians)
        return tuple(np.asarray(a)[self.s_idx, self.o_idx] for a in (loc, scale, log_scale))

    def simulate(self, values: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        """Predictions and one draw of every observation for each draw of ``values``.

        ``values``: ``{site: [N, ...]}``. Returns ``(pred, y, failed)``: ``pred`` and ``y``
        ``[N - failed, n_observations]``, the model prediction and an uncensored observation from
        the residual error model, ``y = g^-1(loc + scale * eps)`` as in
        ``ObservationDistribution.sample``, with the standard normal ``eps`` drawn by ``rng`` on the
        host (cheaper to compile than JAX's PRNG). A draw whose solve fails (parameters where the
        ODE cannot be solved: non-finite values) is left out and counted in ``failed``; a
        ``ValueError`` when every draw fails.
        """
        pred, y = self._solve(values, rng)
        ok = np.all(np.isfinite(pred), axis=1) & np.all(np.isfinite(y), axis=1)
        if not ok.any():
            raise ValueError(f"All {len(ok)} simulated draws failed (non-finite predictions): the posterior draws put "
                             "subjects where the model cannot be solved. Check the fit (convergence, omegas) or the "
                             "solver settings (PopulationModel ode_options).")
        return pred[ok], y[ok], int((~ok).sum())

    def _solve(self, values: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``simulate`` without leaving out failed draws (their values are non-finite)."""
        run = self._compiled()[0]
        n = len(next(iter(values.values())))
        preds, ys = [], []
        for start in range(0, n, BATCH):
            chunk = {k: np.asarray(v[start : start + BATCH], dtype=float) for k, v in values.items()}
            m = len(next(iter(chunk.values())))
            if m < BATCH:  # pad with copies of the first draw: one compiled shape
                chunk = {k: np.concatenate([v, np.repeat(v[:1], BATCH - m, axis=0)]) for k, v in chunk.items()}
            pred, loc, scale, log_scale = (
                np.asarray(a)[:m, self.s_idx, self.o_idx] for a in run({k: jnp.asarray(v) for k, v in chunk.items()})
            )
            with np.errstate(invalid="ignore"):  # a failed solve has non-finite loc: kept as NaN
                g = loc + scale * rng.standard_normal(loc.shape)
            with np.errstate(over="ignore", invalid="ignore"):
                ys.append(np.where(log_scale, np.exp(np.where(log_scale, g, 0.0)), g))
            preds.append(pred)
        return np.concatenate(preds), np.concatenate(ys)

    def replicates(self, n: int, seed: int, max_draws: int) -> np.ndarray:
        """``n`` replicate data sets of the same design with new subjects, ``[n, n_observations]``
        (uncensored): replicate ``r`` takes population parameters from thinned posterior draw
        ``r mod N``, random effects from their distribution, and residual error.

        A replicate with a failed solve (a new subject's random effects in a region where the
        ODE solver fails, non-finite values) is left out: ``n - len(result)`` of them (callers
        record that count; the report states it)."""
        draws = self.draws(max_draws)
        m = len(next(iter(draws.values())))
        pick = np.arange(n) % m
        values = {k: v[pick] for k, v in draws.items()}
        values = self.new_subjects(values, np.random.default_rng([seed, 2]))
        return self.simulate(values, np.random.default_rng([seed, 1]))[1]

    def limits(self) -> tuple[np.ndarray, np.ndarray]:
        """Per observation, the LLOQ and ULOQ that censor simulated values like the data.

        A censored record uses its own limit (its DV). Other records use the largest LLOQ
        (smallest ULOQ) among the censored records of the same output; ``-inf`` (``+inf``) when
        that output has none.
        """
        obs = self.observations
        dv, cens, out = obs["DV"].to_numpy(), obs["CENS"].to_numpy(), obs["output"].to_numpy()
        lloq = np.full(len(obs), -np.inf)
        uloq = np.full(len(obs), np.inf)
        for name in np.unique(out):
            sel = out == name
            low, high = sel & (cens == 1), sel & (cens == -1)
            if low.any():
                lloq[sel] = dv[low].max()
            if high.any():
                uloq[sel] = dv[high].min()
        lloq = np.where(cens == 1, dv, lloq)
        uloq = np.where(cens == -1, dv, uloq)
        return lloq, uloq


_CACHE: list = []  # (population, events, covariate_names, compiled): reused across calls


def _compile(population, events, names):
    """Compiled ``(simulate, residual)`` for one population model and one set of events."""
    for p, e, n, compiled in _CACHE:
        if p is population and e is events and n == names:
            return compiled

    def one(values):
        params = population.individual_parameters(values, events, names)
        pred = population.predict(params, events)
        d = population.observation_distribution(pred, values, events)
        return pred, d.loc, d.scale, d.log_scale

    def residual(f, values):
        d = population.observation_distribution(f, values, events)
        return d.loc, d.scale, d.log_scale

    compiled = (jax.jit(jax.vmap(one)), jax.jit(residual))
    _CACHE.insert(0, (population, events, names, compiled))
    del _CACHE[4:]
    return compiled


def prepare(fit, population, dataset, fn: str) -> Context:
    """Check that ``fit``, ``population`` (None: ``fit.population``) and ``dataset`` belong together."""
    if isinstance(fit, Context):
        return fit
    return Context(fit, population, dataset, fn)


def check_int(fn, name, value, low):
    if not (isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= low):
        raise ValueError(f"{fn}({name}={value!r}): expected an integer >= {low}.")
