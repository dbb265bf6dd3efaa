"""Describe a population fit in a plain TOML file, so that ``popkpd fit CONFIG`` needs no code.

A complete example (``fits/theophylline/config.toml``)::

    name = "theophylline"                  # the fit's name; outputs go to <config dir>/outputs/

    [data]
    source = "theophylline"                # a bundled dataset name, or a CSV path relative to this file
    covariates = ["WT"]                    # columns carried into the model (optional)
    query = "DVID != 2"                    # optional pandas query selecting the rows to fit; the
                                           # number of rows it removes is printed and stored
    dvid_outputs = { 1 = "conc" }          # optional DVID -> model output

    [structural]
    model = "OneCompartment"               # a popkpd structural model class
    options = { lag_time = false }         # its keyword options

    [parameters]                           # one entry per structural parameter
    ka = { median = 1.5, sd = 1.0, iiv = 0.5 }                  # LogNormal(median, sd) typical value,
                                                                # HalfNormal(0.5) prior on omega
    cl = { median = 0.04, sd = 1.0, iiv = 0.5,
           covariates = [{ effect = "power", covariate = "WT", reference = 70,
                           prior = { normal = [0.75, 0.25] } }] }
    vc = { median = 0.5, sd = 1.0, iiv = 0.5 }
    f_bio = { fixed = 1.0 }                # or { prior = "logitnormal", median = 0.7, sd = 0.5 }

    [error]                                # one entry per observed output
    conc = { type = "additive", sigma = 1.0 }        # numbers are HalfNormal scales
    # types: additive (sigma), proportional (sigma), combined (additive, proportional), lognormal (sigma)

    [fit]
    method = "nuts"                        # or "laplace"
    prediction = "closed_form"             # or "ode" (diffrax)
    chains = 4
    warmup = 500
    draws = 500
    seed = 1
    target_accept = 0.8
    centered = false                       # random-effect parameterisation (true: centred, diagonal
                                           # IIV only; better when every subject has rich data); or
                                           # the names to centre, ["cl"], or centring weights from 0
                                           # to 1, { cl = 0.6 } (PopulationModel's centered)
    iiv_shares = { pk = ["cl", "vc"] }     # optional: these omegas sampled as their total and its
                                           # shares, same HalfNormal priors (PopulationModel's iiv_shares)
    devices = "all"                        # optional: split the subjects over all JAX devices (or
                                           # the first N: devices = 2); chains then run vectorised
                                           # on them (popkpd.fit(devices=...), docs/scaling.md)
    checkpoint_every = 100                 # optional: save the fit so far every 100 draws per chain;
                                           # `popkpd fit CONFIG --continue` runs a stopped fit (or a
                                           # finished one, with more draws) on to the draws asked for

Priors written as tables: ``{ median = m, sd = s }`` (log-normal, the default),
``{ prior = "logitnormal", median = m, sd = s }``, ``{ normal = [mean, sd] }``,
``{ halfnormal = scale }``, ``{ fixed = value }``, or a bare number (fixed).
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pandas as pd

from ._data import Dataset, read_nonmem
from ._statistical import covariates as _cov
from ._statistical import priors as _priors
from ._statistical import residual as _res
from ._statistical.population import Parameter, PopulationModel
from ._structural import linear as _linear
from .datasets import AVAILABLE as _BUNDLED, load_dataset

_STRUCTURAL = {
    "OneCompartment": _linear.OneCompartment,
    "TwoCompartment": _linear.TwoCompartment,
    "ThreeCompartment": _linear.ThreeCompartment,
    "MichaelisMentenOneCompartment": _linear.MichaelisMentenOneCompartment,
}
_EFFECTS = {"power": _cov.Power, "linear": _cov.Linear, "exponential": _cov.Exponential, "categorical": _cov.Categorical}
_ERRORS = {
    "additive": (_res.Additive, ("sigma",)),
    "proportional": (_res.Proportional, ("sigma",)),
    "combined": (_res.Combined, ("additive", "proportional")),
    "lognormal": (_res.LogNormalError, ("sigma",)),
}
_FIT_KEYS = {"method", "prediction", "chains", "warmup", "draws", "seed", "target_accept", "max_tree_depth",
             "dense_mass", "chain_method", "init", "rtol", "atol", "solver", "centered", "iiv_shares", "devices",
             "checkpoint_every"}


class ConfigError(ValueError):
    """A fit configuration file that cannot be understood."""


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """What a TOML fit configuration describes (``load_config``)."""

    name: str
    path: Path
    population: PopulationModel
    dataset: Dataset
    fit_options: dict
    rows_removed: int
    text: str

    @property
    def output_dir(self) -> Path:
        return self.path.parent / "outputs"


def _fail(path, where, received, expected):
    raise ConfigError(f"{path}: [{where}] received {received!r}; expected {expected}.")


def _prior(spec, path, where):
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return _priors.Fixed(float(spec))
    if not isinstance(spec, dict):
        _fail(path, where, spec, "a number (fixed) or a table such as { median = 1.0, sd = 0.5 }")
    spec = dict(spec)
    try:
        if "fixed" in spec:
            return _priors.Fixed(float(spec["fixed"]))
        if "normal" in spec:
            mean, sd = spec["normal"]
            return _priors.Normal(float(mean), float(sd))
        if "halfnormal" in spec:
            return _priors.HalfNormal(float(spec["halfnormal"]))
        kind = spec.get("prior", "lognormal").lower()
        if kind == "lognormal":
            return _priors.LogNormal(float(spec["median"]), float(spec["sd"]))
        if kind == "logitnormal":
            return _priors.LogitNormal(float(spec["median"]), float(spec["sd"]))
    except KeyError as e:
        _fail(path, where, spec, f"the key {e.args[0]!r} as well")
    _fail(path, where, spec, "one of: { median, sd } (log-normal), { prior = 'logitnormal', median, sd }, "
          "{ normal = [mean, sd] }, { halfnormal = scale }, { fixed = value }")


def _scale_prior(spec, path, where):
    """A number here means a HalfNormal scale (standard deviations)."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return _priors.HalfNormal(float(spec))
    return _prior(spec, path, where)


def _parameter(name, spec, path):
    where = f"parameters.{name}"
    if not isinstance(spec, dict):
        return Parameter(_prior(spec, path, where))
    spec = dict(spec)
    iiv = spec.pop("iiv", None)
    effects = []
    for k, eff in enumerate(spec.pop("covariates", [])):
        eff = dict(eff)
        kind = eff.pop("effect", None)
        if kind not in _EFFECTS:
            _fail(path, f"{where}.covariates[{k}]", kind, f"effect = one of {sorted(_EFFECTS)}")
        if "prior" in eff:
            eff["prior"] = _prior(eff["prior"], path, f"{where}.covariates[{k}].prior")
        try:
            effects.append(_EFFECTS[kind](**eff))
        except TypeError as e:
            _fail(path, f"{where}.covariates[{k}]", eff, f"the arguments of {_EFFECTS[kind].__name__} ({e})")
    link = spec.pop("link", None)
    typical = _prior(spec, path, where)
    return Parameter(typical, iiv=None if iiv is None else _scale_prior(iiv, path, f"{where}.iiv"),
                     covariates=tuple(effects), link=link)


def _error(output, spec, path):
    where = f"error.{output}"
    if not isinstance(spec, dict) or spec.get("type") not in _ERRORS:
        _fail(path, where, spec, f"a table with type = one of {sorted(_ERRORS)}")
    cls, keys = _ERRORS[spec["type"]]
    extra = set(spec) - set(keys) - {"type"}
    if extra:
        _fail(path, where, sorted(extra), f"only the keys {list(keys)} for type {spec['type']!r}")
    return cls(**{k: _scale_prior(spec[k], path, f"{where}.{k}") for k in keys if k in spec})


def _read_data(section, path) -> pd.DataFrame:
    source = section.get("source")
    if source is None:
        _fail(path, "data", section, "a 'source' key: a bundled dataset name or a CSV path")
    if source in _BUNDLED:
        return load_dataset(source)
    csv = (path.parent / source).resolve()
    if not csv.exists():
        _fail(path, "data.source", source, f"a bundled dataset ({', '.join(_BUNDLED)}) or an existing "
              f"CSV file (looked for {csv})")
    return pd.read_csv(csv)


def load_config(path) -> FitConfig:
    """Read a TOML fit configuration (see the module docstring) into a ``FitConfig``."""
    path = Path(path).resolve()
    if path.is_dir():
        path = path / "config.toml"
    if not path.exists():
        raise ConfigError(f"No fit configuration at {path}; expected a TOML file such as fits/theophylline/config.toml.")
    text = path.read_text()
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e}).") from None
    for section in ("data", "structural", "parameters", "error"):
        if section not in cfg:
            raise ConfigError(f"{path}: missing section [{section}]; see `popkpd fit --help` for a complete example.")
    s = cfg["structural"]
    cls = _STRUCTURAL.get(s.get("model"))
    if cls is None:
        _fail(path, "structural.model", s.get("model"), f"one of {sorted(_STRUCTURAL)}")
    try:
        structural = cls(**s.get("options", {}))
    except TypeError as e:
        _fail(path, "structural.options", s.get("options"), f"options of {cls.__name__} ({e})")
    parameters = {name: _parameter(name, spec, path) for name, spec in cfg["parameters"].items()}
    error = {out: _error(out, spec, path) for out, spec in cfg["error"].items()}
    fit_options = dict(cfg.get("fit", {}))
    unknown = set(fit_options) - _FIT_KEYS
    if unknown:
        _fail(path, "fit", sorted(unknown), f"keys among {sorted(_FIT_KEYS)}")
    if "devices" in fit_options:
        fit_options["devices"] = devices(fit_options["devices"], f"{path}: [fit]")
    prediction = fit_options.pop("prediction", "closed_form")
    ode_options = {k: fit_options.pop(k) for k in ("rtol", "atol", "solver") if k in fit_options}
    centered = fit_options.pop("centered", False)
    shares = fit_options.pop("iiv_shares", {})
    try:
        population = PopulationModel(structural, parameters, error, method=prediction, ode_options=ode_options,
                                     centered=centered, iiv_shares=shares)
    except (TypeError, ValueError) as e:
        if "iiv_shares" in str(e):
            _fail(path, "fit.iiv_shares", shares, f"a table of groups of parameters with iiv = {{ halfnormal = ... }}, "
                  f'e.g. {{ pk = ["cl", "vc"] }} ({e})')
        if "centered" not in str(e):
            raise
        _fail(path, "fit.centered", centered, f"true, false, a list of parameters with iiv or a table of "
              f"centring weights from 0 to 1 ({e})")

    d = cfg["data"]
    frame = _read_data(d, path)
    rows_removed = 0
    if "query" in d:
        kept = frame.query(d["query"])
        rows_removed = len(frame) - len(kept)
        frame = kept.reset_index(drop=True)
    dvid = d.get("dvid_outputs")
    if dvid is not None:
        dvid = {int(k): v for k, v in dvid.items()}
    dataset = read_nonmem(frame, structural, covariates=tuple(d.get("covariates", ())), dvid_outputs=dvid)
    return FitConfig(name=cfg.get("name", path.parent.name), path=path, population=population, dataset=dataset,
                     fit_options=fit_options, rows_removed=rows_removed, text=text)


def devices(spec, where: str) -> list:
    """The JAX devices a ``devices`` setting names: ``"all"`` (``jax.devices()``) or a count ``N``
    (the first ``N``). ``where`` names the setting in the error messages."""
    import jax

    available = jax.devices()
    if spec == "all":
        return available
    if isinstance(spec, bool) or not isinstance(spec, int) or spec < 1:
        raise ConfigError(f"{where}: devices = {spec!r}; expected \"all\" or a whole number of devices >= 1 "
                          f"(this machine has {len(available)}: {available}).")
    if spec > len(available):
        raise ConfigError(f"{where}: devices = {spec}, but JAX sees {len(available)} device(s): {available}. "
                          f"Use devices = {len(available)} or \"all\" here, or run where {spec} are available.")
    return available[:spec]


def structural_models() -> dict:
    """The structural model classes a configuration file can name."""
    return dict(_STRUCTURAL)


