"""Structural models: vector fields with named states, parameters and outputs.

Vocabulary (one name per concept, used everywhere in popkpd):

* ``states``: names of the ODE states, in order. NONMEM ``CMT = k`` addresses ``states[k-1]``.
  Amounts are in the data's amount unit (e.g. mg or nmol); time in the data's time unit.
* ``parameters``: names of the structural parameters the model reads from ``p``. Pharmacometric
  abbreviations are lower case: ``cl`` clearance (volume/time), ``vc`` central volume, ``q``
  inter-compartmental clearance, ``vp`` peripheral volume, ``ka`` first-order absorption rate
  (1/time), ``tlag`` absorption lag (time), ``f_bio`` bioavailability (fraction).
* ``outputs``: names of observable quantities; an observation record's DVID selects one of them
  (``conc`` = central amount / ``vc`` for the linear models).
* ``p``: a dict mapping parameter names to scalars (one subject, possibly at one time when a
  parameter is time-varying). Doses, infusions, lags and bioavailability are applied by
  ``simulate``; a vector field only describes the system between dose events.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


class AbstractStructuralModel(eqx.Module):
    """Base class. Subclasses set ``states``, ``parameters``, ``outputs`` and implement
    ``vector_field`` and ``output``; optionally ``initial_state``, ``bioavailability``, ``lag``,
    ``modelled_rate`` and ``modelled_duration``.

    ``linear = True`` declares that ``vector_field(t, y, p) == A(p) @ y`` with ``A`` constant in
    time. That licenses steady-state doses (SS=1) and the closed-form / matrix-exponential paths.
    """

    # Subclasses define these as class attributes or properties (not dataclass fields):
    # states: tuple[str, ...]; parameters: tuple[str, ...]; outputs: tuple[str, ...]; linear: bool
    linear = False

    @abc.abstractmethod
    def vector_field(self, t, y: Float[Array, " n"], p: dict) -> Float[Array, " n"]:
        """dy/dt between dose events (infusion inputs are added by ``simulate``)."""

    @abc.abstractmethod
    def output(self, t, y: Float[Array, " n"], p: dict) -> Float[Array, " m"]:
        """Observable outputs, in the order of ``outputs``."""

    def initial_state(self, p: dict) -> Float[Array, " n"]:
        """State before any dose (and after a reset, EVID 3/4). Zeros by default."""
        return jnp.zeros(len(self.states))

    def bioavailability(self, p: dict) -> Float[Array, " n"]:
        """Fraction of a dose into each state that enters it (NONMEM Fn). Ones by default."""
        return jnp.ones(len(self.states))

    def lag(self, p: dict) -> Float[Array, " n"]:
        """Lag time of doses into each state (NONMEM ALAGn). Zeros by default."""
        return jnp.zeros(len(self.states))

    def modelled_rate(self, p: dict) -> Float[Array, " n"]:
        """Infusion rate for RATE=-1 records: parameter ``rate_<state>``."""
        return self._per_state(p, "rate")

    def modelled_duration(self, p: dict) -> Float[Array, " n"]:
        """Infusion duration for RATE=-2 records: parameter ``dur_<state>``."""
        return self._per_state(p, "dur")

    def _per_state(self, p, prefix):
        missing = [f"{prefix}_{s}" for s in self.states if f"{prefix}_{s}" not in p]
        if len(missing) == len(self.states):
            kind = "RATE=-1 (modelled rate)" if prefix == "rate" else "RATE=-2 (modelled duration)"
            raise ValueError(
                f"The data have {kind} records but {type(self).__name__} has no parameter "
                f"'{prefix}_<state>' (expected one of {[f'{prefix}_{s}' for s in self.states]}). "
                f"Add it to the parameters you pass, or give RATE > 0 in the data."
            )
        return jnp.stack([jnp.asarray(p.get(f"{prefix}_{s}", jnp.nan), float) for s in self.states])

    def matrix(self, p: dict) -> Float[Array, "n n"]:
        """``A(p)`` for a linear model (the Jacobian of the vector field, constant)."""
        if not self.linear:
            raise ValueError(f"{type(self).__name__} is not linear; it has no constant matrix A.")
        y0 = jnp.zeros(len(self.states))
        return jax.jacfwd(lambda y: self.vector_field(0.0, y, p))(y0)

    def state_index(self, name: str) -> int:
        if name not in self.states:
            raise ValueError(f"{type(self).__name__} has no state {name!r}; states: {self.states}")
        return self.states.index(name)

    def output_index(self, name: str) -> int:
        if name not in self.outputs:
            raise ValueError(f"{type(self).__name__} has no output {name!r}; outputs: {self.outputs}")
        return self.outputs.index(name)
