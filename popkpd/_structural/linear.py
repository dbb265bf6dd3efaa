"""Linear mammillary compartment models (ADVAN1-4, 11, 12 of NONMEM).

States follow NONMEM's numbering: with first-order absorption the depot is CMT 1 and the central
compartment CMT 2 (ADVAN2/4/12); without absorption the central compartment is CMT 1
(ADVAN1/3/11). Output ``conc`` = central amount / ``vc``.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from .base import AbstractStructuralModel


class _Mammillary(AbstractStructuralModel):
    """Shared code: ``n_peripheral`` peripheral compartments, optional depot, lag and F."""

    absorption: bool = eqx.field(static=True, default=True)
    lag_time: bool = eqx.field(static=True, default=False)
    bioavailable_fraction: bool = eqx.field(static=True, default=False)

    linear = True
    outputs = ("conc",)
    _n_peripheral = 0
    _peripheral_names = ()

    @property
    def states(self):
        base = ("central",) + tuple(f"peripheral{i + 1}" if self._n_peripheral > 1 else "peripheral" for i in range(self._n_peripheral))
        return (("depot",) + base) if self.absorption else base

    @property
    def parameters(self):
        names = ("cl", "vc") + self._peripheral_names
        if self.absorption:
            names = names + ("ka",)
            if self.lag_time:
                names = names + ("tlag",)
            if self.bioavailable_fraction:
                names = names + ("f_bio",)
        return names

    def vector_field(self, t, y, p):
        off = 1 if self.absorption else 0
        central = y[off]
        d_central = -p["cl"] / p["vc"] * central
        dy = []
        if self.absorption:
            dy.append(-p["ka"] * y[0])
            d_central = d_central + p["ka"] * y[0]
        d_periph = []
        for i in range(self._n_peripheral):
            q, vp = self._peripheral_pair(p, i)
            flow = q / p["vc"] * central - q / vp * y[off + 1 + i]
            d_central = d_central - flow
            d_periph.append(flow)
        return jnp.stack(dy + [d_central] + d_periph)

    def _peripheral_pair(self, p, i):
        q_name, v_name = self._peripheral_names[2 * i], self._peripheral_names[2 * i + 1]
        return p[q_name], p[v_name]

    def output(self, t, y, p):
        return jnp.stack([y[1 if self.absorption else 0] / p["vc"]])

    def bioavailability(self, p):
        f = jnp.ones(len(self.states))
        if self.absorption and self.bioavailable_fraction:
            f = f.at[0].set(p["f_bio"])
        return f

    def lag(self, p):
        lag = jnp.zeros(len(self.states))
        if self.absorption and self.lag_time:
            lag = lag.at[0].set(p["tlag"])
        return lag


class OneCompartment(_Mammillary):
    """One compartment, first-order elimination ``cl``/``vc``; optional first-order absorption
    ``ka`` from a depot, absorption lag ``tlag`` and bioavailability ``f_bio``."""

    _n_peripheral = 0
    _peripheral_names = ()


class TwoCompartment(_Mammillary):
    """Two compartments: central (``cl``, ``vc``) and peripheral (``q``, ``vp``); optional depot."""

    _n_peripheral = 1
    _peripheral_names = ("q", "vp")


class ThreeCompartment(_Mammillary):
    """Three compartments: central (``cl``, ``vc``), peripheral 1 (``q``, ``vp``) and
    peripheral 2 (``q2``, ``vp2``); optional depot."""

    _n_peripheral = 2
    _peripheral_names = ("q", "vp", "q2", "vp2")


class MichaelisMentenOneCompartment(AbstractStructuralModel):
    """One compartment with saturable elimination ``vmax * C / (km + C)`` (amount/time) and
    first-order absorption ``ka``. Nonlinear: no SS doses, no closed form."""

    linear = False
    states = ("depot", "central")
    parameters = ("vmax", "km", "vc", "ka")
    outputs = ("conc",)

    def vector_field(self, t, y, p):
        conc = y[1] / p["vc"]
        absorbed = p["ka"] * y[0]
        return jnp.stack([-absorbed, absorbed - p["vmax"] * conc / (p["km"] + conc)])

    def output(self, t, y, p):
        return jnp.stack([y[1] / p["vc"]])
