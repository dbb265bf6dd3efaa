"""Example datasets shipped with popkpd, as NONMEM-style tables.

``theophylline``: oral theophylline, 12 subjects (Boeckmann, Sheiner & Beal, NONMEM Users Guide;
R ``datasets::Theoph``). One dose per subject into the depot (CMT 1, AMT in mg), 11 concentrations
each in the central compartment (CMT 2, DV in mg/L), TIME in hours; covariates WT (kg) and
DOSE_MGKG (mg/kg). Read it with ``popkpd.OneCompartment()``.

``warfarin``: oral warfarin, 32 subjects (O'Reilly et al.; the nlmixr2/Monolix example).
DVID 1 = plasma concentration (CMT 2, mg/L), DVID 2 = prothrombin complex activity (PCA, CMT 3,
% of normal), DVID 0 on the dose rows (CMT 1, AMT in mg), TIME in hours; covariates WT (kg),
SEX, AGE (years). For the PK-only fit keep the concentration rows,
``df = df[df.DVID != 2]``, and read with ``popkpd.OneCompartment(lag_time=True)``.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

AVAILABLE = ("theophylline", "warfarin")


def load_dataset(name: str) -> pd.DataFrame:
    """The example table ``name`` (one of ``AVAILABLE``) as a pandas DataFrame."""
    if name not in AVAILABLE:
        raise ValueError(f"Unknown dataset {name!r}; available: {list(AVAILABLE)}. "
                         f"Use e.g. popkpd.load_dataset('theophylline').")
    with resources.files(__name__).joinpath(f"{name}.csv").open("r") as handle:
        return pd.read_csv(handle, na_values=["."])
