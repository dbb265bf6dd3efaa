"""Inference: MAP/Laplace and NUTS (``fit``), the ``Fit`` result, save/load, convergence checks, the sampler's
geometry (``sampler_geometry``)."""

from .convergence import Convergence as Convergence, check_convergence as check_convergence
from .fit import (
    Laplace as Laplace,
    continue_fit as continue_fit,
    default_chain_method as default_chain_method,
    find_map as find_map,
    fit as fit,
)
from .geometry import sampler_geometry as sampler_geometry
from .io import Fit as Fit, load_fit as load_fit, merge_chains as merge_chains
