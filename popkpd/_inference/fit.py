"""``fit``: MAP + Laplace approximation, and NUTS initialised from it.

Steps of ``fit(population, data, ...)``:

1. Check the data against the population model (host side; errors name ID/row/column).
2. MAP: minimise the potential (negative log joint density of the *unconstrained* parameters,
   log-Jacobians included) with L-BFGS (``scipy.optimize``, float64, on the host) from the prior
   medians with zero random effects, calling a once-compiled JAX value-and-gradient. The
   Hessian there (``jax.hessian``) gives the Laplace approximation ``N(mode, H^-1)`` in the
   unconstrained space. The mode is that of the unconstrained density, which is the centre of
   the Laplace approximation; it is well defined for the default non-centred random effects.
3. ``method="laplace"``: return ``draws`` independent draws of the Laplace approximation.
   ``method="nuts"`` (default): run NUTS, each chain starting from its own draw of the Laplace
   approximation (``init="laplace"``), from the mode (``init="map"``), from draws of the best
   normal approximation along the L-BFGS path (``init="pathfinder"``, no Hessian;
   ``popkpd._inference.pathfinder``) or from the prior medians (``init="prior_median"``, no
   optimisation).

Chains (``chain_method``): NumPyro's ``"parallel"`` runs one chain per JAX device; it fails
when the model contains a diffrax solve (equinox closure conversion under pmap/shard_map,
checked with jax 0.12.0.1 / equinox 0.13.8 / diffrax 0.7.2, see DESIGN.md "Known traps").
``"sequential"`` recompiles for every chain. The default (``chain_method=None``) is therefore
``"parallel"`` for the closed-form path when JAX sees at least ``chains`` devices, and
``"vectorized"`` (chains in lock-step in one program) otherwise, which works everywhere and suits
a GPU. On a CPU, JAX sees one device unless told otherwise *before it initialises*: a script
that wants parallel CPU chains calls ``numpyro.set_host_device_count(chains)`` (or sets
``XLA_FLAGS=--xla_force_host_platform_device_count=N``) before its first JAX computation; a
library cannot do it after import, so popkpd does not try.

Subjects over devices (``devices=[...]``): the log density's subjects are split over the given
devices (a ``jax.sharding`` mesh, ``popkpd._ode.sharding``) inside every jitted evaluation, and
the chains run vectorised on them; this works for the ODE path too (no pmap), on several GPUs of
one host, and on several hosts after ``jax.distributed.initialize`` (docs/scaling.md).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import scipy.optimize
import scipy.stats
import tqdm
import xarray as xr
from jax.experimental import multihost_utils
from jax.flatten_util import ravel_pytree
from numpyro.distributions.transforms import biject_to
from numpyro.handlers import seed, substitute, trace
from numpyro.infer import MCMC, NUTS
from numpyro.infer.util import constrain_fn, potential_energy

from .._events import Events
from .._ode.sharding import check_divisible, constrain_subjects, subject_mesh
from .._statistical.population import PopulationModel
from .io import DRAW_GROUPS, Fit, build_tree, collect_metadata, concatenate_groups
from .pathfinder import pathfinder

_EXTRA_FIELDS = ("diverging", "energy", "num_steps", "accept_prob", "potential_energy", "adapt_state.step_size")


# ------------------------------------------------------------------------------------------------
# data


class _Data:
    """What ``fit`` needs from a ``Dataset`` (or from bare ``Events``)."""

    def __init__(self, data, covariate_names):
        if isinstance(data, Events):
            self.events = data
            self.covariate_names = tuple(covariate_names or ())
            self.ids = np.arange(1, data.n_subjects + 1)
            self.hash = events_hash(data)
        elif hasattr(data, "events"):
            self.events = data.events
            names = getattr(data, "covariate_names", ())
            if covariate_names is not None and tuple(covariate_names) != tuple(names):
                raise ValueError(
                    f"fit(covariate_names={tuple(covariate_names)}): the dataset already names its "
                    f"covariates {tuple(names)}; expected covariate_names only with bare Events. Drop it."
                )
            self.covariate_names = tuple(names)
            self.ids = np.asarray(getattr(data, "ids", np.arange(1, data.events.n_subjects + 1)))
            self.hash = getattr(data, "hash", None) or events_hash(data.events)
        else:
            raise TypeError(
                f"fit(data=...): received {type(data).__name__}; expected a Dataset from "
                "read_nonmem(...)/load_dataset(...) or an Events."
            )
        if len(self.ids) != self.events.n_subjects:
            raise ValueError(
                f"fit: the dataset lists {len(self.ids)} IDs for {self.events.n_subjects} subjects in its "
                "events; expected one ID per subject."
            )


def events_hash(events: Events) -> str:
    """SHA-256 of the event arrays (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, value in sorted(vars(events).items()):
        a = np.ascontiguousarray(np.asarray(value))
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return "sha256:" + h.hexdigest()


# ------------------------------------------------------------------------------------------------
# the posterior as functions of one flat unconstrained vector


class FlatPosterior:
    """The population model on ``events`` as jit-able functions of a flat unconstrained vector.

    ``x0``: the starting point (prior medians, zero random effects); ``potential(x)``: negative
    log joint density of the unconstrained parameters (log-Jacobians included);
    ``constrain(x)``: dict of constrained site values and deterministics; ``observe(values,
    key)``: pointwise log-likelihood ``[S, O]`` of the data and one replicate ``[S, O]``.

    Built without ``numpyro.infer.util.initialize_model``, which evaluates the model op by op
    (one small XLA compilation per operation, tens of seconds on a loaded CPU).
    """

    def __init__(self, population: PopulationModel, events: Events, covariate_names=(), mesh=None):
        self.population = population
        self.events = events
        self.mesh = mesh  # a subject mesh: the potential's subjects are split over its devices
        self.args = (events,)
        self.kwargs = {"covariate_names": tuple(covariate_names)}
        init = population.init_values(events.n_subjects)
        supports = {}

        def record_sites():
            tr = trace(seed(substitute(population.model, data=init), 0)).get_trace(*self.args, **self.kwargs)
            for name, site in tr.items():
                if site["type"] == "sample" and not site["is_observed"]:
                    supports[name] = site["fn"].support
            return 0.0

        jax.make_jaxpr(record_sites)()  # abstract evaluation: site names and supports, no compilation
        z0 = jax.jit(lambda: {n: biject_to(supports[n]).inv(jnp.asarray(init[n])) for n in supports})()
        self.x0, self.unravel = ravel_pytree(z0)
        self.supports = supports  # {site: support}: the sampled sites, constrained
        self.init_values = init
        self.compiled = {}  # jitted functions of the posterior kept for reuse (``_draws`` per batch size)

    def potential(self, x):
        values = self.unravel(x)
        if self.mesh is not None and isinstance(x, jax.core.Tracer):
            # under jit: the random effects [S] split over the mesh, and with them XLA partitions
            # every subject's prediction and likelihood (the events stay host constants, so the
            # host-side decisions on them, e.g. which code paths a batch needs, are kept)
            values = constrain_subjects(values, self.mesh, self.events.n_subjects)
        return potential_energy(self.population.model, self.args, self.kwargs, values)

    def constrain(self, x):
        return constrain_fn(self.population.model, self.args, self.kwargs, self.unravel(x), return_deterministic=True)

    def site_log_probs(self, values: Mapping) -> dict:
        """Log density of every sample site at constrained ``values`` (``obs``: [S, O], masked)."""
        tr = trace(seed(substitute(self.population.model, data=dict(values)), 0)).get_trace(*self.args, **self.kwargs)
        return {n: site["fn"].log_prob(site["value"]) for n, site in tr.items() if site["type"] == "sample"}

    def observe(self, values: Mapping, key):
        """Pointwise log-likelihood of the data and one posterior-predictive replicate, [S, O] each."""
        tr = trace(seed(substitute(self.population.model, data=dict(values)), key)).get_trace(
            *self.args, observed=False, **self.kwargs
        )
        site = tr["obs"]
        dv = jnp.where(self.events.obs_mask, self.events.obs_dv, 1.0)
        return site["fn"].log_prob(dv), site["value"]

    def explain_nonfinite(self, values: Mapping, ids, what: str) -> str:
        """Name the site (and ID/row for observations) whose log density is not finite."""
        lps = jax.jit(self.site_log_probs)(dict(values))
        ev = self.events
        for name, lp in lps.items():
            lp = np.asarray(lp)
            bad = ~np.isfinite(lp)
            if not bad.any():
                continue
            if name == "obs":
                s, o = np.argwhere(bad)[0]
                return (
                    f"the likelihood of the observation at row {int(ev.obs_row[s, o])} (ID {ids[s]}, TIME "
                    f"{float(ev.obs_time[s, o])}, DV {float(ev.obs_dv[s, o])}) is {lp[s, o]} at {what}; check "
                    "the prediction there (NaN, or impossible under the residual error, e.g. a zero "
                    "prediction with a proportional error)"
                )
            return f"the prior density of {name!r} is {lp.ravel()[np.argmax(bad.ravel())]} at {what}"
        return f"the log density is not finite at {what}, but no single site explains it"


# ------------------------------------------------------------------------------------------------
# MAP and Laplace


class Laplace:
    """Mode and Gaussian approximation ``N(mode, covariance)`` of the unconstrained posterior.

    ``mode``: flat unconstrained vector (see ``FlatPosterior``); ``potential``: negative log
    density at the mode; ``warnings``: plain-language notes (optimiser did not converge, Hessian
    not positive definite).
    """

    def __init__(self, posterior, mode, covariance, potential, converged, message, n_iterations, notes, value_and_grad=None):
        self.posterior = posterior
        self.value_and_grad = value_and_grad  # compiled (potential, gradient) of one flat vector
        self.mode = mode
        self.covariance = covariance
        self.potential = potential
        self.converged = converged
        self.message = message
        self.n_iterations = n_iterations
        self.warnings = list(notes)

    def draw(self, key, n: int) -> np.ndarray:
        """``n`` draws of the approximation, flat unconstrained, ``[n, dim]``."""
        chol = np.linalg.cholesky(self.covariance)
        z = np.asarray(jax.random.normal(key, (n, len(self.mode))))
        return self.mode[None, :] + z @ chol.T

    def constrained_mode(self) -> dict:
        """The mode as constrained site values (and deterministic individual parameters)."""
        return {k: np.asarray(v) for k, v in jax.jit(self.posterior.constrain)(jnp.asarray(self.mode)).items()}


def minimise(posterior: FlatPosterior, *, ids=None, max_iterations=5000, path=None):
    """L-BFGS on the unconstrained potential from ``posterior.x0`` (the prior medians with zero
    random effects), after checking that the start is finite. ``path``: a list to which each
    accepted iterate ``(x, potential, gradient)`` is appended, the start first (for Pathfinder).
    Returns ``(scipy result, compiled value_and_grad, objective, compile_s)``."""
    ids = np.arange(1, posterior.events.n_subjects + 1) if ids is None else np.asarray(ids)
    t0 = time.perf_counter()
    x0 = jnp.asarray(posterior.x0)
    value_and_grad = jax.jit(jax.value_and_grad(posterior.potential)).lower(x0).compile()
    compile_s = time.perf_counter() - t0

    v0, g0 = value_and_grad(x0)
    if not np.isfinite(float(v0)):
        reason = posterior.explain_nonfinite(posterior.init_values, ids, "the prior medians")
        raise ValueError(
            f"fit: cannot start: {reason}. Expected a finite log density at the prior medians with zero "
            "random effects; adjust the priors' medians or check the data."
        )
    if not np.all(np.isfinite(np.asarray(g0))):
        bad = [k for k, v in posterior.unravel(g0).items() if not np.all(np.isfinite(np.asarray(v)))]
        raise ValueError(
            f"fit: cannot start: the log density is finite at the prior medians but its gradient with "
            f"respect to {bad} is not. Expected finite derivatives: look for a prediction function that is "
            "not differentiable there, or a jnp.where whose unused branch is NaN."
        )

    if path is not None:
        path.append((np.asarray(x0, dtype=np.float64), float(v0), np.asarray(g0, dtype=np.float64)))
    last = {}

    def objective(x):
        v, g = value_and_grad(jnp.asarray(x))
        v, g = float(v), np.asarray(g, dtype=np.float64)
        if not np.isfinite(v) or not np.all(np.isfinite(g)):
            return np.inf, np.zeros_like(g)
        last.update(x=np.array(x), v=v, g=g)
        return v, g

    def accepted(intermediate_result):  # scipy calls this with each accepted iterate
        if path is not None:
            x = np.asarray(intermediate_result.x)
            g = last["g"] if np.array_equal(last.get("x"), x) else objective(x)[1]
            path.append((x.copy(), float(intermediate_result.fun), g))

    result = scipy.optimize.minimize(
        objective,
        np.asarray(x0, dtype=np.float64),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iterations, "maxfun": 4 * max_iterations, "gtol": 1e-8, "ftol": 1e-14},
        callback=accepted,
    )
    return result, value_and_grad, objective, compile_s


def find_map(posterior: FlatPosterior, *, ids=None, max_iterations=5000):
    """MAP (L-BFGS on the unconstrained potential) and its Laplace approximation.

    Returns ``(Laplace, timing)``; ``timing["compile_s"]`` is the time to compile the log-density
    gradient, ``timing["map_s"]`` the optimisation plus the Hessian.
    """
    t0 = time.perf_counter()
    result, value_and_grad, objective, compile_s = minimise(posterior, ids=ids, max_iterations=max_iterations)
    notes = []
    mode = np.asarray(result.x, dtype=np.float64)
    grad_max = float(np.max(np.abs(objective(mode)[1])))
    converged = bool(result.success) or grad_max < 1e-4
    if not converged:
        notes.append(
            f"The MAP optimisation stopped before converging ({result.message}; largest gradient "
            f"component {grad_max:.3g}). The mode and the Laplace approximation are approximate; "
            "NUTS, which starts from them, is not affected beyond a longer warmup."
        )
    hessian, hessian_method = _hessian(posterior.potential, value_and_grad, mode)
    if not np.all(np.isfinite(hessian)):
        notes.append("The Hessian at the MAP is not finite; the Laplace approximation uses unit variances.")
        covariance = np.eye(len(mode))
    else:
        eigval, eigvec = np.linalg.eigh(hessian)
        floor = 1e-10 * max(float(np.max(np.abs(eigval))), 1.0)
        if eigval.min() <= floor:
            notes.append(
                f"The Hessian at the MAP is not positive definite (smallest eigenvalue {eigval.min():.3g}): "
                "the posterior is flat or not peaked there along some directions, so the Laplace "
                "approximation is unreliable; those directions get unit variance (unconstrained scale)."
            )
            eigval = np.where(eigval > floor, eigval, 1.0)
        covariance = (eigvec / eigval) @ eigvec.T
        covariance = 0.5 * (covariance + covariance.T)
    map_s = time.perf_counter() - t0 - compile_s  # the optimisation and the Hessian
    laplace = Laplace(
        posterior, mode, covariance, float(result.fun), converged, str(result.message), int(result.nit), notes, value_and_grad
    )
    laplace.hessian_method = hessian_method
    return laplace, {"compile_s": compile_s, "map_s": map_s}


def _hessian(potential, value_and_grad, x):
    """Hessian of ``potential`` at ``x``: exact (forward-over-reverse) where the model allows it,
    else central differences of the compiled gradient (ODE solves through diffrax's checkpointed
    adjoint and the matrix exponential of ``solver="expm"`` are reverse-mode only).
    Returns ``(H, "exact" | "finite differences")``."""
    try:
        hessian = np.asarray(jax.jit(jax.hessian(potential))(jnp.asarray(x)))
        method = "exact"
    except (TypeError, NotImplementedError, ValueError):
        n = len(x)
        step = np.cbrt(np.finfo(float).eps) * np.maximum(1.0, np.abs(x))
        hessian = np.empty((n, n))
        for i in range(n):
            e = np.zeros(n)
            e[i] = step[i]
            g_plus = np.asarray(value_and_grad(jnp.asarray(x + e))[1])
            g_minus = np.asarray(value_and_grad(jnp.asarray(x - e))[1])
            hessian[:, i] = (g_plus - g_minus) / (2 * step[i])
        method = "finite differences"
    return 0.5 * (hessian + hessian.T), method


# ------------------------------------------------------------------------------------------------
# chains


def default_chain_method(population: PopulationModel, chains: int) -> str:
    """``"parallel"`` for closed forms with enough devices, else ``"vectorized"`` (see module doc)."""
    if chains == 1:
        return "sequential"
    if population.method == "closed_form" and jax.local_device_count() >= chains:
        return "parallel"
    return "vectorized"


def _check_chain_method(population, chain_method, chains, devices=None):
    if devices is not None:  # the devices hold the subjects; the chains run vectorised on them
        if chain_method == "parallel":
            raise ValueError(
                "fit(chain_method='parallel', devices=[...]): the devices already hold the subjects (split "
                "over them); expected chain_method='vectorized' (or None) with devices."
            )
        if chain_method is None:
            return "vectorized" if chains > 1 else "sequential"
    if chain_method is None:
        return default_chain_method(population, chains)
    if chain_method not in ("parallel", "vectorized", "sequential"):
        raise ValueError(
            f"fit(chain_method={chain_method!r}): expected 'parallel', 'vectorized', 'sequential' or None "
            "(automatic)."
        )
    if chain_method == "parallel" and chains > 1:
        if population.method == "ode":
            raise ValueError(
                "fit(chain_method='parallel') with method='ode': NumPyro's parallel chains fail on a "
                "diffrax solve (equinox closure conversion under pmap; diffrax issue 765). Expected "
                "chain_method='vectorized' (or None for automatic)."
            )
        n = jax.local_device_count()
        if n < chains:
            raise ValueError(
                f"fit(chain_method='parallel', chains={chains}): JAX sees {n} device(s); expected at least "
                f"{chains}. On a CPU call numpyro.set_host_device_count({chains}) before the first JAX "
                f"computation (top of the script, before importing popkpd), or use "
                "chain_method='vectorized'."
            )
    return chain_method


# ------------------------------------------------------------------------------------------------
# fit


def _check_integer(where, name, value, low, why=""):
    if not (isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= low):
        raise ValueError(f"{where}({name}={value!r}): expected an integer >= {low}{why}.")


def _check_arguments(method, chains, warmup, draws, target_accept, init, max_tree_depth, seed):
    if method not in ("nuts", "laplace"):
        raise ValueError(f"fit(method={method!r}): expected 'nuts' (default) or 'laplace'.")
    _check_integer("fit", "chains", chains, 1)
    _check_integer("fit", "warmup", warmup, 0)
    _check_integer("fit", "draws", draws, 1)
    _check_integer("fit", "max_tree_depth", max_tree_depth, 1)
    _check_integer("fit", "seed", seed, 0)
    if not (isinstance(target_accept, float | int) and 0.0 < target_accept < 1.0):
        raise ValueError(
            f"fit(target_accept={target_accept!r}): expected a probability strictly between 0 and 1 "
            "(0.8 by default; 0.9-0.99 when there are divergences)."
        )
    if init not in ("laplace", "map", "pathfinder", "prior_median"):
        raise ValueError(f"fit(init={init!r}): expected 'laplace' (default), 'map', 'pathfinder' or 'prior_median'.")


def fit(
    population: PopulationModel,
    data,
    *,
    method: str = "nuts",
    chains: int = 4,
    warmup: int = 1000,
    draws: int = 1000,
    seed: int = 0,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    dense_mass: bool = False,
    chain_method: str | None = None,
    init: str = "laplace",
    progress_bar: bool = True,
    posterior_predictive: bool = True,
    covariate_names=None,
    devices=None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[Fit], None] | None = None,
) -> Fit:
    """Fit a population model to data; returns a ``Fit`` (ArviZ DataTree + metadata).

    Parameters
    ----------
    population
        The ``PopulationModel``.
    data
        A ``Dataset`` (``read_nonmem`` / ``load_dataset``) or bare ``Events`` (then
        ``covariate_names`` names the covariate axis and IDs are 1..S).
    method
        ``"nuts"`` (default) or ``"laplace"`` (MAP + Gaussian approximation, ``draws`` draws).
    chains, warmup, draws
        NUTS chains, warmup (adaptation) iterations and retained draws per chain.
    seed
        Integer seed of every random choice of the fit (stored with it).
    target_accept, max_tree_depth, dense_mass
        NUTS settings: target acceptance probability, maximum tree depth, dense mass matrix.
    chain_method
        ``"parallel"``, ``"vectorized"``, ``"sequential"`` or ``None`` (automatic; see module doc).
    init
        ``"laplace"`` (each chain from a draw of the Laplace approximation), ``"map"``,
        ``"pathfinder"`` (each chain from a draw of Pathfinder's approximation, for hierarchical
        models whose mode sits in a funnel's neck; no Hessian, so cheaper for ODE models) or
        ``"prior_median"``.
    progress_bar
        NumPyro's progress bar.
    posterior_predictive
        Draw the ``posterior_predictive`` group (one replicate of every observation per draw).
    covariate_names
        Only with bare ``Events``: the names of the covariates in ``events.cov_value``.
    devices
        ``None`` (default): one device. A list of JAX devices (e.g. ``jax.devices()``, which
        after ``jax.distributed.initialize`` spans every host): the subjects are split over them
        (``popkpd._ode.sharding``), each device computing its subjects' predictions and
        likelihood, XLA summing across devices; the number of subjects must be a multiple of
        the number of devices. Same numbers as one device up to the order of the sums
        (tests/test_sharding.py); every process of a multi-host run calls ``fit`` with the same
        arguments.
    checkpoint_every, on_checkpoint
        NUTS: with ``checkpoint_every`` > 0, the draws are made in pieces of that many, and after
        each piece ``on_checkpoint`` gets the fit so far (e.g. ``lambda f: f.save("fit.nc")``): a
        long run then loses at most one piece, and ``continue_fit`` runs a saved one on. The
        pieces give exactly the draws of one run. The first piece is NumPyro's run (after the
        warmup); the later ones run the kernel's transitions in a scan compiled once per piece
        length (NumPyro 0.22's ``MCMC.run`` would compile its loop again for every piece without
        a progress bar or with vectorised chains: 30 s per piece for a 3-patient BCMA L3 model
        on 2 CPU cores against 1 s here). With ``progress_bar``, a bar counts the later pieces.

    Returns
    -------
    Fit
        ``Fit.tree`` (ArviZ DataTree; groups and variable names in ``popkpd._inference.io``),
        ``Fit.metadata`` (model description, data hash, versions, seed, sampler settings,
        timings ``timing_s``: ``compile_s`` log-density gradient compilation, ``map_s`` MAP and
        Hessian (or ``pathfinder_s``: the L-BFGS path and Pathfinder), ``mcmc_s`` NUTS warmup
        and draws including its compilation, ``predictive_s`` log-likelihood and replicates,
        ``total_s``), ``Fit.population``.
    """
    _check_arguments(method, chains, warmup, draws, target_accept, init, max_tree_depth, seed)
    _check_checkpoint("fit", checkpoint_every, on_checkpoint)
    if not isinstance(population, PopulationModel):
        raise TypeError(f"fit(population=...): received {type(population).__name__}; expected a PopulationModel.")
    t_start = time.perf_counter()
    d = _Data(data, covariate_names)
    events, names = d.events, d.covariate_names
    population.check(events, names, d.ids)
    if method == "nuts":
        chain_method = _check_chain_method(population, chain_method, chains, devices)
    mesh = _mesh("fit", devices, events.n_subjects)
    posterior = FlatPosterior(population, events, names, mesh)
    timing = {}
    key_init, key_mcmc, key_pp = jax.random.split(jax.random.PRNGKey(seed), 3)

    laplace = start = None
    notes = []
    if method == "laplace" or init in ("laplace", "map"):
        laplace, t = find_map(posterior, ids=d.ids)
        timing.update(t)
        notes += laplace.warnings
    elif method == "nuts" and init == "pathfinder":
        start, info, t = _pathfinder_points(posterior, key_init, chains, d.ids)
        timing.update(t)

    sampler = {"method": method, "seed": int(seed), "draws": int(draws)}
    if devices is not None:
        sampler["devices"] = [str(x) for x in devices]  # subjects split over these
    if method == "laplace":
        flat = laplace.draw(key_init, draws)[None]  # [chain=1, draw, dim]
        sample_stats = {}  # filled below: densities of target and approximation at the draws
        sampler["chains"] = 1
    else:
        sampler.update(
            chains=int(chains),
            warmup=int(warmup),
            target_accept=float(target_accept),
            max_tree_depth=int(max_tree_depth),
            dense_mass=bool(dense_mass),
            chain_method=chain_method,
            init=init,
        )
        if start is not None:
            sampler["pathfinder"] = {"iterate": info["iterate"], "iterates": info["iterates"],
                                     "elbo": info["elbo"][info["iterate"]]}
        init_flat = start if start is not None else _initial_points(posterior, laplace, key_init, chains, init, d.ids)
        kernel = _nuts_kernel(posterior, sampler)
        pieces = _pieces(draws, checkpoint_every)
        mcmc = MCMC(
            kernel,
            num_warmup=warmup,
            num_samples=pieces[0],
            num_chains=chains,
            chain_method=chain_method,
            progress_bar=progress_bar,
        )
        init_params = init_flat if chains > 1 else init_flat[0]
        # one run() call: warmup and the first draws share one compiled loop (warmup() + run() compile twice)
        start = lambda: mcmc.run(key_mcmc, init_params=init_params, extra_fields=_EXTRA_FIELDS)  # noqa: E731
        return _sample(mcmc, start, pieces, posterior, population, d, key_pp, sampler, timing, notes, laplace,
                       posterior_predictive, t_start, on_checkpoint)

    return _result(posterior, population, d, flat, sample_stats, None, key_pp, sampler, timing, notes, laplace,
                   posterior_predictive, t_start)


def _check_checkpoint(where, checkpoint_every, on_checkpoint):
    _check_integer(where, "checkpoint_every", checkpoint_every, 0, " (draws per piece; 0: one piece)")
    if checkpoint_every and not callable(on_checkpoint):
        raise ValueError(f"{where}: checkpoint_every={checkpoint_every} without a callable on_checkpoint (received "
                         f"{on_checkpoint!r}); expected e.g. on_checkpoint=lambda f: f.save('fit.nc').")


def _mesh(where, devices, n_subjects):
    """The subject mesh of ``devices`` (``None``: one device), checked against the subject count."""
    if devices is None:
        return None
    if not isinstance(devices, list | tuple):
        raise TypeError(
            f"{where}(devices=...): received {type(devices).__name__}; expected a list of JAX devices, e.g. "
            "jax.devices() (all) or jax.devices()[:2]."
        )
    mesh = subject_mesh(devices)
    check_divisible(n_subjects, mesh)
    return mesh


def _nuts_kernel(posterior, sampler: dict) -> NUTS:
    """NUTS on ``posterior`` with the settings recorded in ``sampler`` (a fit's ``metadata["sampler"]``)."""
    return NUTS(
        potential_fn=posterior.potential,
        target_accept_prob=sampler["target_accept"],
        max_tree_depth=sampler["max_tree_depth"],
        dense_mass=sampler["dense_mass"],
    )


def _pieces(draws: int, every: int) -> list[int]:
    """``draws`` split into pieces of ``every`` (0: one piece), the last one shorter."""
    every = every or draws
    return [every] * (draws // every) + ([draws % every] if draws % every else [])


def _sample(mcmc, start, pieces, posterior, population, d, key_pp, sampler, timing, notes, laplace,
            posterior_predictive, t_start, on_checkpoint) -> Fit:
    """NUTS draws in ``pieces``: ``start()`` runs the first (NumPyro's ``MCMC.run``: the warmup, or
    from a restored state), each later piece runs on from the last state in one compiled loop
    (``_transitions``). After each piece, the last one too, the fit so far goes to
    ``on_checkpoint``. ``timing["mcmc_s"]``: all pieces, including the sampler's compilation."""
    chains, depth = sampler["chains"], sampler["max_tree_depth"]
    so_far, mcmc_s, run, bar = None, 0.0, None, None
    for k, n in enumerate(pieces):
        t0 = time.perf_counter()
        if k == 0:
            start()
            flat, sample_stats, state = _collect(mcmc, chains, depth)
        else:
            if run is None:
                run = _transitions(mcmc.sampler, chains, mcmc.chain_method)
                bar = tqdm.tqdm(total=sum(pieces[1:]), desc="sample (pieces)") if mcmc.progress_bar else None
            state, (z, *fields) = run(state, n)
            flat = np.asarray(z)
            sample_stats = _sample_stats(dict(zip(_EXTRA_FIELDS, fields)), depth)
        mcmc_s += time.perf_counter() - t0
        key = key_pp if k == 0 else jax.random.fold_in(key_pp, k)  # the replicates' key of each piece
        piece = _result(posterior, population, d, flat, sample_stats, state, key, dict(sampler, draws=n),
                        dict(timing, mcmc_s=mcmc_s), notes, laplace, posterior_predictive, t_start)
        so_far = piece if so_far is None else _concatenate_draws(so_far, piece)
        if bar is not None:
            bar.update(n)
        if on_checkpoint is not None:
            on_checkpoint(so_far)
    if bar is not None:
        bar.close()
    return so_far


def _collect(mcmc, chains, max_tree_depth):
    """``(flat draws [chain, draw, dim], sample_stats, final state)`` of a finished NumPyro run."""
    flat = np.asarray(mcmc.get_samples(group_by_chain=True))
    if chains == 1 and flat.ndim == 2:
        flat = flat[None]
    sample_stats = _sample_stats(mcmc.get_extra_fields(group_by_chain=True), max_tree_depth)
    return flat, sample_stats, mcmc.last_state


def _transitions(kernel, chains: int, chain_method: str):
    """``run(state, n) -> (state, (z, *extra fields))``: ``n`` NUTS transitions of each chain
    from ``state`` (NumPyro's ``MCMC.last_state``), values ``[chain, draw, ...]``. The kernel's own
    transition in one compiled scan per length, so the draws are those of one ``MCMC.run``, which
    without a progress bar, or with vectorised or parallel chains, compiles its loop anew on every
    call (``fit``'s ``checkpoint_every``)."""
    paths = [f.split(".") for f in _EXTRA_FIELDS]

    def field(s, path):
        for attr in path:
            s = getattr(s, attr)
        return s

    def step(s, _):
        s = kernel.sample(s, (), {})
        return s, (s.z, *(field(s, path) for path in paths))

    def scan(state, n):  # [draw, ...]; one chain, or vectorised chains (the kernel batches them)
        return jax.lax.scan(step, state, None, length=n)

    if chain_method == "vectorized" and chains > 1:
        def vectorised(state, n):
            state, values = scan(state, n)
            return state, jax.tree.map(lambda v: jnp.swapaxes(v, 0, 1), values)

        return jax.jit(vectorised, static_argnums=1)
    if chains == 1:
        def single(state, n):
            state, values = scan(state, n)
            return state, jax.tree.map(lambda v: v[None], values)

        return jax.jit(single, static_argnums=1)
    if chain_method == "parallel":  # a device per chain, as NumPyro's run; the jit inside gives its bits
        return jax.pmap(jax.jit(scan, static_argnums=1), static_broadcasted_argnums=1)
    return jax.jit(lambda state, n: jax.lax.map(lambda c: scan(c, n), state), static_argnums=1)  # sequential


def _result(posterior, population, d, flat, sample_stats, state, key_pp, sampler, timing, notes, laplace,
            posterior_predictive, t_start) -> Fit:
    """The ``Fit`` of the flat draws: constrained draws, log-likelihood and replicates, tree, metadata."""
    t0 = time.perf_counter()
    samples, log_lik, pred, potential = _draws(posterior, flat, key_pp)
    if sampler["method"] == "laplace":
        # log densities (unconstrained space) of the target and of the Gaussian at the draws, for
        # PSIS-LOO of an approximate posterior (arviz_stats.loo_approximate_posterior)
        log_q = scipy.stats.multivariate_normal(laplace.mode, laplace.covariance, allow_singular=True).logpdf(flat[0])
        sample_stats = {"lp": -potential, "log_q": np.reshape(log_q, (1, -1))}
    if not posterior_predictive:
        pred = None
    timing["predictive_s"] = time.perf_counter() - t0
    timing["total_s"] = time.perf_counter() - t_start

    map_values = laplace.constrained_mode() if laplace is not None else None
    metadata = collect_metadata(population, d.hash, d.events, sampler, timing, notes, d.covariate_names,
                                laplace=laplace)
    tree = build_tree(
        population,
        samples,
        sample_stats=sample_stats,
        log_likelihood=log_lik,
        posterior_predictive=pred,
        events=d.events,
        ids=d.ids,
        covariate_names=d.covariate_names,
        map_values=map_values,
        metadata=metadata,
    )
    if state is not None:
        tree["sampler_state"] = _state_group(state, sampler["chains"])
    return Fit(tree, metadata, population=population)


# ------------------------------------------------------------------------------------------------
# continuing NUTS chains


def _state_group(state, chains: int) -> xr.DataTree:
    """NumPyro's final NUTS state (position, gradient, adapted step size and mass matrix, random
    key, ...) as the tree group ``sampler_state``: one variable ``leaf_<i>`` [chain, ...] per leaf
    of the state, in float64 (exact for the float64 positions, the int32 counters and the uint32
    keys, and storable in classic NetCDF too); the leaves' dtypes and paths in its attributes."""
    paths_leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    variables, dtypes = {}, []
    for i, (_, leaf) in enumerate(paths_leaves):
        a = np.asarray(leaf)
        a = a[None] if chains == 1 else a
        dtypes.append(a.dtype.str)
        variables[f"leaf_{i}"] = (["chain"] + [f"leaf_{i}_dim_{j}" for j in range(a.ndim - 1)], a.astype(np.float64))
    ds = xr.Dataset(variables)
    ds.attrs = {"dtypes": json.dumps(dtypes),
                "paths": json.dumps([jax.tree_util.keystr(p) for p, _ in paths_leaves]),
                "numpyro": numpyro.__version__}
    return xr.DataTree(dataset=ds)


def _restore_state(group: xr.DataTree, template, chains: int, batched: bool):
    """The NumPyro state stored by ``_state_group``, in the structure of ``template`` (a fresh
    state of the same kernel: of all chains when ``batched``, else of one)."""
    template_leaves, treedef = jax.tree.flatten(template)
    dtypes = json.loads(group.attrs["dtypes"])
    if len(dtypes) != len(template_leaves):
        raise ValueError(
            f"continue_fit: the stored sampler state has {len(dtypes)} parts, this NumPyro's NUTS state "
            f"{len(template_leaves)}; expected the NumPyro version the fit was made with "
            f"({group.attrs.get('numpyro')}; installed {numpyro.__version__})."
        )
    leaves = []
    for i, (dtype, t) in enumerate(zip(dtypes, template_leaves)):
        a = np.asarray(group[f"leaf_{i}"].values).astype(np.dtype(dtype))
        a = a[0] if chains == 1 else a
        shape = a.shape if batched or chains == 1 else a.shape[1:]
        if shape != np.shape(t):
            raise ValueError(
                f"continue_fit: the stored sampler state's part {json.loads(group.attrs['paths'])[i]} has shape "
                f"{shape}, the model's {np.shape(t)}; expected the model and sampler settings of the fit."
            )
        leaves.append(jnp.asarray(a))
    return jax.tree.unflatten(treedef, leaves)


def continue_fit(
    previous: Fit,
    population: PopulationModel,
    data,
    *,
    draws: int,
    progress_bar: bool = True,
    posterior_predictive: bool = True,
    covariate_names=None,
    devices=None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[Fit], None] | None = None,
) -> Fit:
    """Continue the NUTS chains of ``previous`` for ``draws`` more draws each; returns one fit
    holding the earlier draws and the new ones.

    Each chain restarts from its stored final state (``sampler_state`` group: position, adapted
    step size and mass matrix, random key), with no new warmup, so ``fit(draws=n)`` followed by
    ``continue_fit(draws=m)`` gives exactly the draws of ``fit(draws=n + m)`` (the replicates of
    ``posterior_predictive`` apart, drawn with a key of their own). For long runs: save after
    each piece and a crash loses one piece, not the run; and chains that have not converged
    can be run on. ``population`` and ``data`` must be those of ``previous`` (its model
    description and data hash are checked). Settings (tree depth, target acceptance, mass
    matrix, chains, chain method: "parallel" when JAX sees a device per chain, else vectorised)
    are the previous fit's. ``devices``, ``checkpoint_every``, ``on_checkpoint``: as in ``fit``
    (the subjects may be split over other devices than before; each checkpoint gets the earlier
    draws and the new ones so far). ``metadata["continued"]`` lists each continuation (draws,
    time, package versions); ``metadata["sampler"]["draws"]`` is the total.
    """
    if not isinstance(previous, Fit):
        raise TypeError(f"continue_fit(previous=...): received {type(previous).__name__}; expected a Fit.")
    _check_integer("continue_fit", "draws", draws, 1, " (the draws to add per chain)")
    if not isinstance(population, PopulationModel):
        raise TypeError(f"continue_fit(population=...): received {type(population).__name__}; expected a "
                        "PopulationModel.")
    _check_checkpoint("continue_fit", checkpoint_every, on_checkpoint)
    sampler = previous.metadata["sampler"]
    if sampler.get("method") != "nuts" or "sampler_state" not in previous.tree.children:
        raise ValueError(
            f"continue_fit: the previous fit (method={sampler.get('method')!r}) has no stored NUTS state; expected "
            "a NUTS fit made by popkpd.fit since 24 Nov 2026 (earlier fits did not store it: refit)."
        )
    t_start = time.perf_counter()
    d = _Data(data, covariate_names)
    population.check(d.events, d.covariate_names, d.ids)
    if d.hash != previous.metadata["data_hash"]:
        raise ValueError(
            f"continue_fit: the data's hash {d.hash[:12]}... differs from the previous fit's "
            f"{previous.metadata['data_hash'][:12]}...; expected the data the fit was made with."
        )
    if json.loads(json.dumps(population.describe())) != previous.metadata["model"]:
        raise ValueError(
            "continue_fit: the population model differs from the previous fit's (metadata['model']); expected "
            "the model the fit was made with."
        )
    chains = int(sampler["chains"])
    mesh = _mesh("continue_fit", devices, d.events.n_subjects)
    posterior = FlatPosterior(population, d.events, d.covariate_names, mesh)
    kernel = _nuts_kernel(posterior, sampler)
    # the fit's own way of running chains where it still can (the same compiled program, so the
    # same draws to the last bit); "parallel" needs as many devices as chains, else vectorised
    chain_method = sampler.get("chain_method", "vectorized")
    if chains > 1 and chain_method == "parallel" and (jax.local_device_count() < chains or mesh is not None):
        chain_method = "vectorized"
    group = previous.tree["sampler_state"]
    # a fresh state of the same kernel (no warmup: num_warmup=0) gives the stored state's structure;
    # vectorised chains: built from batched keys, which makes NumPyro's kernel step all chains at once
    batched = chains > 1 and chain_method == "vectorized"
    z = jnp.asarray(group[_position_leaf(group)].values)
    keys = jax.random.split(jax.random.PRNGKey(0), chains) if batched else jax.random.PRNGKey(0)
    template = kernel.init(keys, 0, init_params=z if batched else z[0], model_args=(), model_kwargs={})
    state = _restore_state(group, template, chains, batched)
    pieces = _pieces(draws, checkpoint_every)
    mcmc = MCMC(kernel, num_warmup=0, num_samples=pieces[0], num_chains=chains, chain_method=chain_method,
                progress_bar=progress_bar)
    mcmc.post_warmup_state = state
    start = lambda: mcmc.run(state.rng_key, init_params=state.z, extra_fields=_EXTRA_FIELDS)  # noqa: E731
    key_pp = jax.random.fold_in(jax.random.PRNGKey(0), len(previous.metadata.get("continued", [])) + 1)

    def whole(added: Fit) -> Fit:  # previous's draws and those added so far, the continuation recorded
        out = _concatenate_draws(previous, added, timing=False)
        out.metadata["continued"] = out.metadata.get("continued", []) + [{
            "draws": int(added.metadata["sampler"]["draws"]),
            "created": added.metadata["created"],
            "timing_s": added.metadata["timing_s"],
            "packages": added.metadata["packages"],
        }]
        out.tree.attrs["popkpd"] = json.dumps(out.metadata)
        return out

    last = []  # the draws added at the last checkpoint and the whole fit handed over

    def checkpoint(added: Fit):
        last[:] = [added, whole(added)]
        on_checkpoint(last[1])

    added = _sample(mcmc, start, pieces, posterior, population, d, key_pp, sampler, {}, [], None,
                    posterior_predictive, t_start, None if on_checkpoint is None else checkpoint)
    return last[1] if last and last[0] is added else whole(added)  # the last checkpoint's, not built again


def _position_leaf(group) -> str:
    """The variable of the stored state holding the position ``z`` (path ``.z``)."""
    return f"leaf_{json.loads(group.attrs['paths']).index('.z')}"


def _concatenate_draws(previous: Fit, new: Fit, timing: bool = True) -> Fit:
    """``previous`` with ``new``'s draws after its own (same chains); the sampler state is
    ``new``'s. ``timing``: ``new``'s timings are those of both (pieces of one run), else
    ``previous``'s are kept."""
    # a group one of them lacks (e.g. posterior_predictive=False now) is dropped: it must cover every draw
    tree = concatenate_groups([previous, new], "draw", DRAW_GROUPS)
    tree["sampler_state"] = new.tree["sampler_state"]
    metadata = json.loads(json.dumps(previous.metadata))
    metadata["sampler"]["draws"] = int(tree["posterior"].sizes["draw"])
    if timing:
        metadata["timing_s"] = dict(new.metadata["timing_s"],
                                    predictive_s=previous.metadata["timing_s"]["predictive_s"]
                                    + new.metadata["timing_s"]["predictive_s"])
    tree.attrs["popkpd"] = json.dumps(metadata)
    return Fit(tree, metadata, population=new.population)


def _pathfinder_points(posterior, key, chains, ids):
    """Pathfinder on the MAP's L-BFGS path (``popkpd._inference.pathfinder``): ``(points [chains,
    dim], info, timing)``."""
    path = []
    t0 = time.perf_counter()
    _, _, objective, compile_s = minimise(posterior, ids=ids, path=path)
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    points, info = pathfinder(path, lambda x: objective(x)[0], seed, chains)
    return points, info, {"compile_s": compile_s, "pathfinder_s": time.perf_counter() - t0 - compile_s}


def _initial_points(posterior, laplace, key, chains, init, ids) -> np.ndarray:
    """Flat unconstrained starting points ``[chains, dim]``."""
    if init == "prior_median":
        x0 = np.asarray(posterior.x0)
        if not np.isfinite(float(jax.jit(posterior.potential)(jnp.asarray(x0)))):
            reason = posterior.explain_nonfinite(posterior.init_values, ids, "the prior medians")
            raise ValueError(f"fit(init='prior_median'): cannot start: {reason}.")
        return np.repeat(x0[None, :], chains, axis=0)
    if init == "map":
        return np.repeat(laplace.mode[None, :], chains, axis=0)
    flat = laplace.draw(key, chains)
    potential = np.array([float(laplace.value_and_grad(jnp.asarray(x))[0]) for x in flat])
    flat[~np.isfinite(potential)] = laplace.mode  # a draw in an impossible region starts at the mode
    return flat


def _sample_stats(extra: Mapping, max_tree_depth: int) -> dict:
    """NumPyro extra fields -> ArviZ sample_stats names."""
    out = {
        "diverging": np.asarray(extra["diverging"]),
        "energy": np.asarray(extra["energy"]),
        "lp": -np.asarray(extra["potential_energy"]),
        "n_steps": np.asarray(extra["num_steps"]),
        "acceptance_rate": np.asarray(extra["accept_prob"]),
        "step_size": np.asarray(extra["adapt_state.step_size"]),
    }
    if out["diverging"].ndim == 1:  # one chain
        out = {k: v[None] for k, v in out.items()}
    out["tree_depth"] = np.floor(np.log2(out["n_steps"])).astype(int) + 1
    out["reached_max_tree_depth"] = out["tree_depth"] > max_tree_depth
    return out


def _draws(posterior: FlatPosterior, flat: np.ndarray, key):
    """Constrained samples, pointwise log-likelihood, one replicate and the potential per draw.

    ``flat``: ``[chain, draw, dim]``. Returns ``(samples {site: [chain, draw, ...]},
    log_lik [chain, draw, S, O], replicate [chain, draw, S, O], potential [chain, draw])``.
    """
    n_chain, n_draw, dim = flat.shape
    n = n_chain * n_draw
    batch = min(n, 16 if posterior.population.method == "ode" else 256)
    n_padded = -(-n // batch) * batch  # a multiple of the batch: lax.map then compiles one body
    xs = np.concatenate([flat.reshape(n, dim), np.repeat(flat.reshape(n, dim)[-1:], n_padded - n, axis=0)])
    keys = jax.random.split(key, n_padded)

    def one(args):
        x, k = args
        values = posterior.constrain(x)
        log_lik, replicate = posterior.observe(values, k)
        return values, log_lik, replicate, posterior.potential(x)

    if ("draws", batch) not in posterior.compiled:  # the pieces of a run (fit's checkpoint_every) compile it once
        posterior.compiled["draws", batch] = jax.jit(lambda xs, ks: jax.lax.map(one, (xs, ks), batch_size=batch))
    out = posterior.compiled["draws", batch](jnp.asarray(xs), keys)

    def shape(a):
        if not a.is_fully_addressable:  # spread over several processes' devices (multi-host fit)
            a = multihost_utils.process_allgather(a, tiled=True)
        a = np.asarray(a)[:n]
        return a.reshape((n_chain, n_draw) + a.shape[1:])

    values, log_lik, replicate, potential = out
    return {k: shape(v) for k, v in values.items()}, shape(log_lik), shape(replicate), shape(potential)
