"""The one event representation every layer consumes.

A NONMEM-style dataset (``read_nonmem``) and a dosing ``Regimen`` both compile to an ``Events``:
padded device arrays with a leading subject axis ``S`` and masks. Everything downstream (the ODE
core, the closed forms, the likelihood) is shape-static in these arrays, so it jits once per shape.

Conventions (units are those of the data: TIME in the data's time unit, AMT in its amount unit):

dose records (EVID 1, 3 and 4, with ADDL/II already expanded into separate records), ``[S, D]``:
    dose_time   nominal time of the record (a lag time, if the model has one, is added later)
    dose_amt    AMT (0 for a pure reset, EVID 3)
    dose_cmt    0-based index of the receiving state (NONMEM CMT - 1)
    dose_rate   RATE: 0 bolus; > 0 zero-order input at this rate (duration AMT*F/RATE);
                -1 rate modelled by the structural model; -2 duration modelled
    dose_ss     1 for a steady-state dose (SS=1: state replaced by the steady state), else 0
    dose_ii     II of a steady-state dose (0 otherwise)
    dose_reset  True where the state is reset to its initial value before the dose (EVID 3, 4)
    dose_row    0-based row of the source table (for ordering ties and for messages); -1 for padding
    dose_mask   True for a real record; padded entries are False and their values are ignored

observation records (EVID 0 with MDV 0), ``[S, O]``:
    obs_time    TIME
    obs_dv      DV (for a censored record: the limit, i.e. LLOQ when left-censored)
    obs_output  index into the structural model's ``outputs`` (from DVID, else the default output)
    obs_cens    0 quantified, 1 left-censored (below LLOQ), -1 right-censored (above ULOQ)
    obs_limit   the other bound of a censored record (NONMEM ``LIMIT``), NaN when absent
    obs_row     0-based source row; -1 for padding
    obs_mask    True for a real observation

covariates, ``cov_time [S, C]`` and ``cov_value [S, C, K]``:
    the covariate values carried by every record of the subject (K covariates, named on the
    ``Dataset``), at the record times. NONMEM's convention: the value on a record covers the
    interval that *ends* at that record, (t_{i-1}, t_i]; after the last record the last value holds.
    ``cov_mask`` marks real rows. A baseline covariate is simply constant along C.

Ordering: within a subject, dose and observation records keep their file order; a record's row
number breaks ties at equal times (an observation listed before a dose at the same time is a
pre-dose sample, as in NONMEM).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int


def host_readable(x) -> bool:
    """``x`` has values the host can read now: not traced, and not spread over other processes'
    devices (a subject-sharded array of a multi-host fit). Host-side checks of event arrays run
    only then."""
    return not isinstance(x, jax.core.Tracer) and getattr(x, "is_fully_addressable", True)


class Events(eqx.Module):
    """Padded dose, observation and covariate arrays for ``S`` subjects. See the module docstring."""

    dose_time: Float[Array, "S D"]
    dose_amt: Float[Array, "S D"]
    dose_cmt: Int[Array, "S D"]
    dose_rate: Float[Array, "S D"]
    dose_ss: Int[Array, "S D"]
    dose_ii: Float[Array, "S D"]
    dose_reset: Bool[Array, "S D"]
    dose_row: Int[Array, "S D"]
    dose_mask: Bool[Array, "S D"]
    obs_time: Float[Array, "S O"]
    obs_dv: Float[Array, "S O"]
    obs_output: Int[Array, "S O"]
    obs_cens: Int[Array, "S O"]
    obs_limit: Float[Array, "S O"]
    obs_row: Int[Array, "S O"]
    obs_mask: Bool[Array, "S O"]
    cov_time: Float[Array, "S C"]
    cov_value: Float[Array, "S C K"]
    cov_mask: Bool[Array, "S C"]

    @property
    def n_subjects(self) -> int:
        return self.dose_time.shape[0]

    def subset(self, index) -> "Events":
        """Events of some subjects (``index``: int array or slice over the subject axis)."""
        import jax

        return jax.tree_util.tree_map(lambda x: x[index], self)

    def end_time(self) -> Float[Array, " S"]:
        """Last dose or observation time of each subject."""
        t_obs = jnp.where(self.obs_mask, self.obs_time, -jnp.inf).max(axis=1)
        t_dose = jnp.where(self.dose_mask, self.dose_time, -jnp.inf).max(axis=1)
        return jnp.maximum(t_obs, t_dose)


def pad_events(
    doses: list[dict[str, np.ndarray]],
    observations: list[dict[str, np.ndarray]],
    covariates: list[tuple[np.ndarray, np.ndarray]],
    n_covariates: int,
    min_doses: int = 1,
    min_observations: int = 1,
) -> Events:
    """Pad per-subject host arrays into one ``Events`` (host side, numpy in, jax arrays out).

    ``doses[i]`` has keys time, amt, cmt, rate, ss, ii, reset, row (1-D arrays, file order);
    ``observations[i]`` has keys time, dv, output, cens, limit, row; ``covariates[i]`` is
    ``(times [C_i], values [C_i, K])``. Used by both the data reader and ``Regimen``.
    """
    n = len(doses)
    if not (len(observations) == len(covariates) == n):
        raise ValueError("pad_events: doses, observations and covariates must list the same subjects")
    d_max = max([min_doses] + [len(d["time"]) for d in doses])
    o_max = max([min_observations] + [len(o["time"]) for o in observations])
    c_max = max([1] + [len(c[0]) for c in covariates])

    def fill(shape, value, dtype):
        return np.full(shape, value, dtype=dtype)

    out = {
        "dose_time": fill((n, d_max), 0.0, np.float64),
        "dose_amt": fill((n, d_max), 0.0, np.float64),
        "dose_cmt": fill((n, d_max), 0, np.int32),
        "dose_rate": fill((n, d_max), 0.0, np.float64),
        "dose_ss": fill((n, d_max), 0, np.int32),
        "dose_ii": fill((n, d_max), 0.0, np.float64),
        "dose_reset": fill((n, d_max), False, bool),
        "dose_row": fill((n, d_max), -1, np.int32),
        "dose_mask": fill((n, d_max), False, bool),
        "obs_time": fill((n, o_max), 0.0, np.float64),
        "obs_dv": fill((n, o_max), 0.0, np.float64),
        "obs_output": fill((n, o_max), 0, np.int32),
        "obs_cens": fill((n, o_max), 0, np.int32),
        "obs_limit": fill((n, o_max), np.nan, np.float64),
        "obs_row": fill((n, o_max), -1, np.int32),
        "obs_mask": fill((n, o_max), False, bool),
        "cov_time": fill((n, c_max), 0.0, np.float64),
        "cov_value": fill((n, c_max, n_covariates), 0.0, np.float64),
        "cov_mask": fill((n, c_max), False, bool),
    }
    for i in range(n):
        d, o, (ct, cv) = doses[i], observations[i], covariates[i]
        k = len(d["time"])
        for key in ("time", "amt", "cmt", "rate", "ss", "ii", "reset", "row"):
            out[f"dose_{key}"][i, :k] = d[key]
        out["dose_mask"][i, :k] = True
        k = len(o["time"])
        for key in ("time", "dv", "output", "cens", "limit", "row"):
            out[f"obs_{key}"][i, :k] = o[key]
        out["obs_mask"][i, :k] = True
        k = len(ct)
        out["cov_time"][i, :k] = ct
        if k:
            out["cov_value"][i, :k] = np.asarray(cv).reshape(k, n_covariates)
            # padding repeats the last value so that a lookup past the end is the last value
            out["cov_time"][i, k:] = ct[-1]
            out["cov_value"][i, k:] = out["cov_value"][i, k - 1]
        out["cov_mask"][i, :k] = True
    return Events(**{key: jnp.asarray(v) for key, v in out.items()})
