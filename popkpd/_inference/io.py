"""``Fit``: the draws as an ArviZ ``xarray.DataTree`` plus metadata; atomic save and load.

Groups of ``Fit.tree``:

* ``posterior``: every sampled site (names from ``PopulationModel``, e.g. ``cl_pop``,
  ``omega_cl``, ``eta_cl`` [subject]) and the individual parameters ``<param>`` [subject];
* ``sample_stats``: NUTS: ``diverging``, ``energy``, ``lp``, ``n_steps``, ``tree_depth``,
  ``reached_max_tree_depth``, ``acceptance_rate``, ``step_size``; Laplace: ``lp`` and ``log_q``,
  the log densities of the posterior and of the Gaussian at each draw (unconstrained space, for
  ``arviz_stats.loo_approximate_posterior``);
* ``log_likelihood``, ``posterior_predictive``, ``observed_data``: ``obs`` over the dimension
  ``observation`` (the real observation records in subject then time order; padding is dropped);
* ``constant_data``: per observation ``obs_id``, ``obs_time``, ``obs_output``, ``obs_cens``,
  ``obs_limit``, ``obs_row``; per subject the doses (``dose_*`` [subject, dose], NaN-padded) and
  the baseline covariates ``covariate`` [subject, covariate_name];
* ``map``: the MAP (constrained site values), when one was computed;
* ``sampler_state``: NUTS: each chain's final state (``leaf_<i>`` [chain, ...]: position,
  adapted step size and mass matrix, random key...), from which ``continue_fit`` runs the
  chains on.

The root attribute ``popkpd`` holds the metadata as JSON: model description, data hash, package
versions, seed, sampler settings, timings (seconds), warnings of the fit.

Files (``Fit.save`` / ``load_fit``) are written atomically (temporary file in the same folder,
fsync, ``os.replace``). Two NetCDF layouts: NetCDF4/HDF5 with one group per ArviZ group (the
standard ArviZ file; needs h5py, which h5netcdf uses to write), and, where h5py is missing, a
classic NetCDF file written by scipy holding all groups in one dataset (variables
``<group>__<name>``, the group layout as JSON in an attribute). ``load_fit`` recognises both;
loading reproduces the tree exactly (values, dtypes, coordinates, attributes).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import arviz_base
import numpy as np
import xarray as xr

_PACKAGES = (
    "popkpd",
    "jax",
    "jaxlib",
    "numpyro",
    "diffrax",
    "equinox",
    "arviz",
    "arviz-base",
    "arviz-stats",
    "xarray",
    "numpy",
    "scipy",
    "h5netcdf",
)


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def collect_metadata(population, data_hash, events, sampler, timing, notes, covariate_names, laplace=None) -> dict:
    """The JSON-able record stored with a fit."""
    import jax

    meta = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": population.describe(),
        "population_sites": population.population_sites(),
        "data_hash": data_hash,
        "n_subjects": int(events.n_subjects),
        "n_observations": int(np.asarray(events.obs_mask).sum()),
        "covariate_names": list(covariate_names),
        "sampler": sampler,
        "timing_s": {k: round(float(v), 4) for k, v in timing.items()},
        "packages": package_versions(),
        "device": f"{jax.default_backend()}: {', '.join(str(d) for d in jax.devices())}",
        "warnings": list(notes),
    }
    if laplace is not None:
        meta["map"] = {
            "log_density": -float(laplace.potential),
            "converged": bool(laplace.converged),
            "iterations": int(laplace.n_iterations),
            "message": laplace.message,
            "hessian": getattr(laplace, "hessian_method", "exact"),
        }
    return meta


def _param_dims(population, name, value_shape):
    """ArviZ dims of a posterior variable from its per-draw shape."""
    if name == "corr_iiv":
        return ["iiv_row", "iiv_col"]
    if name.startswith(("eta_", "z_")) or name in population.varying_names:
        return ["subject"] + (["cov_index"] if len(value_shape) == 2 else [])
    return None


def build_tree(
    population,
    samples,
    *,
    sample_stats,
    log_likelihood,
    posterior_predictive,
    events,
    ids,
    covariate_names,
    map_values,
    metadata,
):
    """Assemble the DataTree (see module docstring); ``samples`` are ``[chain, draw, ...]``."""
    mask = np.asarray(events.obs_mask)
    s_idx, o_idx = np.nonzero(mask)
    ids = np.asarray(ids)
    outputs = np.asarray(population.structural.outputs)

    coords = {
        "subject": ids,
        "observation": np.arange(len(s_idx)),
        "iiv_row": list(population.iiv_names),
        "iiv_col": list(population.iiv_names),
        "covariate_name": list(covariate_names),
    }
    dims = {"obs": ["observation"]}
    for name, value in samples.items():
        d = _param_dims(population, name, np.shape(value)[2:])
        if d is not None:
            dims[name] = d

    dose_mask = np.asarray(events.dose_mask)

    def dose(a):
        return np.where(dose_mask, np.asarray(a, dtype=float), np.nan)

    constant = {
        "obs_id": ids[s_idx],
        "obs_time": np.asarray(events.obs_time)[s_idx, o_idx],
        "obs_output": outputs[np.asarray(events.obs_output)[s_idx, o_idx]].astype(str),
        "obs_cens": np.asarray(events.obs_cens)[s_idx, o_idx],
        "obs_limit": np.asarray(events.obs_limit)[s_idx, o_idx],
        "obs_row": np.asarray(events.obs_row)[s_idx, o_idx],
        "dose_time": dose(events.dose_time),
        "dose_amt": dose(events.dose_amt),
        "dose_cmt": dose(events.dose_cmt),
        "dose_rate": dose(events.dose_rate),
    }
    for name in ("obs_id", "obs_time", "obs_output", "obs_cens", "obs_limit", "obs_row"):
        dims[name] = ["observation"]
    for name in ("dose_time", "dose_amt", "dose_cmt", "dose_rate"):
        dims[name] = ["subject", "dose"]
    if covariate_names:
        constant["covariate"] = np.asarray(events.cov_value)[:, 0, :]
        dims["covariate"] = ["subject", "covariate_name"]

    groups = {
        "posterior": {k: np.asarray(v) for k, v in samples.items()},
        "log_likelihood": {"obs": np.asarray(log_likelihood)[:, :, s_idx, o_idx]},
        "observed_data": {"obs": np.asarray(events.obs_dv)[s_idx, o_idx]},
        "constant_data": constant,
    }
    if sample_stats is not None:
        groups["sample_stats"] = sample_stats
    if posterior_predictive is not None:
        groups["posterior_predictive"] = {"obs": np.asarray(posterior_predictive)[:, :, s_idx, o_idx]}
    tree = arviz_base.from_dict(groups, coords=coords, dims=dims)
    if map_values is not None:
        variables = {}
        for name, value in map_values.items():
            d = _param_dims(population, name, np.shape(value))
            variables[name] = (d or [f"{name}_dim_{i}" for i in range(np.ndim(value))], np.asarray(value))
        ds = xr.Dataset(variables)
        ds = ds.assign_coords({k: coords[k] for k in ("subject", "iiv_row", "iiv_col") if k in ds.dims})
        tree["map"] = xr.DataTree(dataset=ds)
    tree.attrs["popkpd"] = json.dumps(metadata)
    return tree


class Fit:
    """Result of ``fit``: ``tree`` (ArviZ ``xarray.DataTree``), ``metadata`` (dict), ``population``.

    ``population`` (the ``PopulationModel``) is kept in memory only; a loaded fit has ``None``
    and its description in ``metadata["model"]``.
    """

    def __init__(self, tree: xr.DataTree, metadata: dict, population=None):
        self.tree = tree
        self.metadata = metadata
        self.population = population

    @property
    def posterior(self) -> xr.DataTree:
        return self.tree["posterior"]

    def summary(self, var_names=None, **kwargs):
        """``arviz_stats.summary`` of the population-level sites (default), unrounded.

        Columns: mean, sd, the 89 % equal-tailed interval (ArviZ 1.x default), ess_bulk,
        ess_tail, r_hat, mcse_mean, mcse_sd. Keyword arguments go to ``arviz_stats.summary``.
        """
        import arviz_stats

        if var_names is None:
            var_names = [v for v in self.metadata["population_sites"] if v in self.tree["posterior"].data_vars]
        kwargs.setdefault("round_to", "none")
        with _quiet():
            return arviz_stats.summary(self.tree, var_names=var_names, **kwargs)

    def convergence(self, var_names=None, **kwargs):
        """R-hat, ESS, divergences, E-BFMI and PSIS-LOO with plain-language warnings."""
        from .convergence import check_convergence

        if var_names is None:
            var_names = [v for v in self.metadata["population_sites"] if v in self.tree["posterior"].data_vars]
        return check_convergence(self.tree, var_names, **kwargs)

    def save(self, path, format: str = "auto") -> Path:
        """Write the fit to ``path`` (``.nc``) atomically; returns the path. See ``save_tree``."""
        return save_tree(self.tree, path, format)

    def __repr__(self):
        s = self.metadata.get("sampler", {})
        return (
            f"Fit({self.metadata['model']['structural']['class']}, {self.metadata['n_subjects']} subjects, "
            f"{self.metadata['n_observations']} observations, method={s.get('method')}, "
            f"chains={s.get('chains')}, draws={s.get('draws')})"
        )


class _quiet:
    """Silence ArviZ's numerical RuntimeWarnings (constant draws give NaN R-hat)."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


FORMATS = ("auto", "netcdf4", "netcdf3-flat")


def _has_h5py() -> bool:
    return importlib.util.find_spec("h5py") is not None


def _flatten(tree: xr.DataTree) -> xr.Dataset:
    """One Dataset holding every group: variable ``<group>__<name>`` on dims ``<group>__<dim>``,
    the layout (coords, dtypes, attrs per group) as JSON in the attribute ``popkpd_layout``."""
    variables, layout = {}, {}
    for node in tree.subtree:
        group = node.path.strip("/").replace("/", "__") or "_root"
        ds = node.to_dataset(inherit=False)
        prefix = f"{group}__"
        layout[group] = {
            "path": node.path,
            "attrs": json.dumps(dict(ds.attrs), default=str),
            "coords": list(map(str, ds.coords)),
            "dtypes": {str(k): v.dtype.str for k, v in ds.variables.items()},
        }
        for name, var in ds.variables.items():
            values = var.values
            if values.dtype.kind == "U":
                values = values.astype(object)
            variables[prefix + str(name)] = xr.Variable([prefix + str(d) for d in var.dims], values)
    flat = xr.Dataset(variables)
    flat.attrs = {"popkpd_format": "netcdf3-flat-v1", "popkpd_layout": json.dumps(layout)}
    return flat


def _unflatten(flat: xr.Dataset) -> xr.DataTree:
    layout = json.loads(flat.attrs["popkpd_layout"])
    nodes = {}
    for group, info in layout.items():
        prefix = f"{group}__"
        variables = {}
        for name, var in flat.variables.items():
            if not name.startswith(prefix) or name[len(prefix) :] not in info["dtypes"]:
                continue
            short = name[len(prefix) :]
            values = np.asarray(var.values).astype(np.dtype(info["dtypes"][short]))
            variables[short] = xr.Variable([d[len(prefix) :] for d in var.dims], values)
        coords = {k: variables.pop(k) for k in info["coords"] if k in variables}
        ds = xr.Dataset(variables, coords=coords)
        ds.attrs = json.loads(info["attrs"])
        nodes[info["path"]] = ds
    return xr.DataTree.from_dict(nodes)


def _write(tree: xr.DataTree, target: str, fmt: str) -> None:
    """Write ``tree`` to the file ``target`` (not atomic; see ``save_tree``)."""
    if fmt == "netcdf4":
        tree.to_netcdf(target, engine="h5netcdf")
    else:
        _flatten(tree).to_netcdf(target, engine="scipy")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_tree(tree: xr.DataTree, path, format: str = "auto") -> Path:
    """Write ``tree`` to ``path`` atomically: temporary file in the same folder, fsync, rename.

    An interrupted write leaves any previous file at ``path`` untouched and no partial file.

    ``format``: ``"netcdf4"`` (NetCDF4/HDF5 with one group per ArviZ group, readable by
    ``xarray.open_datatree``; needs h5py under h5netcdf), ``"netcdf3-flat"`` (classic NetCDF
    written by scipy: all groups in one dataset, variables ``<group>__<name>``; needs nothing
    beyond scipy), or ``"auto"`` (netcdf4 when h5py is installed, else netcdf3-flat).
    ``load_fit`` reads both.
    """
    path = Path(path)
    if format not in FORMATS:
        raise ValueError(f"Fit.save(format={format!r}): expected one of {FORMATS}.")
    if format == "auto":
        format = "netcdf4" if _has_h5py() else "netcdf3-flat"
    if format == "netcdf4" and not _has_h5py():
        raise ValueError(
            "Fit.save(format='netcdf4'): h5netcdf needs h5py, which is not installed; expected "
            "`pip install h5py`, or format='netcdf3-flat' (or 'auto')."
        )
    if path.suffix != ".nc":
        raise ValueError(f"Fit.save({str(path)!r}): expected a NetCDF file name ending in .nc, e.g. 'fit.nc'.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        _write(tree, tmp, format)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is private (0600); a saved fit is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # pragma: no cover - platforms without directory fsync
        pass
    return path


def load_fit(path) -> Fit:
    """Read a fit written by ``Fit.save`` (fully into memory; the file is closed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_fit({str(path)!r}): no such file; expected a .nc file written by Fit.save.")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:3] == b"CDF":
        with xr.open_dataset(path, engine="scipy") as flat:
            flat = flat.load()
        if flat.attrs.get("popkpd_format") != "netcdf3-flat-v1":
            raise ValueError(
                f"load_fit({str(path)!r}): a classic NetCDF file without popkpd's layout; expected a file "
                "written by Fit.save."
            )
        tree = _unflatten(flat)
    elif magic == b"\x89HDF":
        if not _has_h5py():
            raise ValueError(
                f"load_fit({str(path)!r}): a NetCDF4/HDF5 file, which needs h5py (not installed); expected "
                "`pip install h5py`, or a file saved with format='netcdf3-flat'."
            )
        with xr.open_datatree(path, engine="h5netcdf") as tree:
            tree = tree.load()
    else:
        raise ValueError(f"load_fit({str(path)!r}): not a NetCDF file (starts with {magic!r}); expected a .nc file written by Fit.save.")
    if "popkpd" not in tree.attrs:
        raise ValueError(
            f"load_fit({str(path)!r}): the file has no popkpd metadata; expected a file written by Fit.save."
        )
    return Fit(tree, json.loads(tree.attrs["popkpd"]))


DRAW_GROUPS = ("posterior", "sample_stats", "log_likelihood", "posterior_predictive")
"""The groups with a value per chain and draw."""


def concatenate_groups(fits, dim: str, groups) -> xr.DataTree:
    """The first fit's tree with each of ``groups`` concatenated over the fits along ``dim``
    (``"chain"`` or ``"draw"``, renumbered from 0); a group that any fit lacks is dropped."""
    tree = fits[0].tree.copy()
    for group in groups:
        if group not in tree.children:
            continue
        if not all(group in f.tree.children for f in fits):
            del tree[group]
            continue
        merged = xr.concat([f.tree[group].to_dataset() for f in fits], dim=dim)
        tree[group] = xr.DataTree(dataset=merged.assign_coords({dim: np.arange(merged.sizes[dim])}))
    return tree


def merge_chains(fits) -> Fit:
    """One ``Fit`` holding the chains of several NUTS fits of the same model to the same data.

    For chains run in separate processes (one per CPU core: NumPyro's ``"parallel"`` chains fail
    on a diffrax solve, see ``fit``), each with its own ``seed``. The groups with a ``chain``
    dimension (``posterior``, ``sample_stats``, ``log_likelihood``, ``posterior_predictive``,
    ``sampler_state``) are concatenated along it (chains renumbered 0..K-1); the others are taken from the first fit.
    ``metadata["sampler"]``: ``chains`` the total, ``seed`` the list of seeds (and
    ``pathfinder`` the list of each fit's, with ``init="pathfinder"``); ``timing_s``
    the per-fit timings as lists (the chains ran at the same time, so wall time is their max).
    Raises ``ValueError`` naming the first fit that differs in data, model, sampler settings or
    posterior variables.
    """
    fits = list(fits)
    if not fits or not all(isinstance(f, Fit) for f in fits):
        raise ValueError(f"merge_chains: received {[type(f).__name__ for f in fits]}; expected a non-empty list of Fit.")
    first = fits[0].metadata
    same = ("data_hash", "model", "n_subjects", "n_observations")
    settings = ("method", "warmup", "draws", "target_accept", "max_tree_depth", "dense_mass", "init")
    for k, f in enumerate(fits):
        m = f.metadata
        if m.get("sampler", {}).get("method") != "nuts":
            raise ValueError(f"merge_chains: fit {k} was made with method={m.get('sampler', {}).get('method')!r}; "
                             "expected NUTS fits (Laplace draws are not chains).")
        for key in same:
            if m.get(key) != first.get(key):
                raise ValueError(f"merge_chains: fit {k} differs from fit 0 in {key!r}; expected fits of the same "
                                 "population model to the same data.")
        for key in settings:
            if m["sampler"].get(key) != first["sampler"].get(key):
                raise ValueError(f"merge_chains: fit {k} has {key}={m['sampler'].get(key)!r}, fit 0 "
                                 f"{first['sampler'].get(key)!r}; expected the same sampler settings.")
    names = set(fits[0].tree["posterior"].data_vars)
    for k, f in enumerate(fits):
        differ = sorted(names ^ set(f.tree["posterior"].data_vars))
        if differ:
            raise ValueError(f"merge_chains: fit {k} and fit 0 differ in the posterior variables {differ}; expected "
                             "fits of one parameterisation (a fit with centred random effects made before 23 Nov "
                             "2026 sampled eta_<param>, one made since z_<param>: refit to pool them).")
    seeds = [f.metadata["sampler"]["seed"] for f in fits]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"merge_chains: received seeds {seeds}; expected a different seed per fit (identical "
                         "seeds give identical chains).")
    # a group one fit lacks is dropped, e.g. sampler_state of a fit made before it was stored
    tree = concatenate_groups(fits, "chain", DRAW_GROUPS + ("sampler_state",))
    metadata = json.loads(json.dumps(first))
    metadata["sampler"]["chains"] = int(sum(f.metadata["sampler"]["chains"] for f in fits))
    metadata["sampler"]["seed"] = seeds
    if "pathfinder" in first["sampler"]:  # each chain's own starting approximation
        metadata["sampler"]["pathfinder"] = [f.metadata["sampler"].get("pathfinder") for f in fits]
    metadata["timing_s"] = {k: [f.metadata.get("timing_s", {}).get(k) for f in fits] for k in first.get("timing_s", {})}
    metadata["merged_from"] = len(fits)
    tree.attrs["popkpd"] = json.dumps(metadata)
    return Fit(tree, metadata, population=fits[0].population)
