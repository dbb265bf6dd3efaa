"""Drug models of the BCMA x CD3 family (and a GPRC5D x CD3 comparator) built on popkpd's public API.

Each drug module has ``MODEL`` (a configured ``popkpd.BCMAModel``), ``TYPICAL`` (typical parameter
values in days, nmol, nM, L), ``PRIORS`` (name -> popkpd prior, median = typical), ``REGIMEN``
(approved or studied schedule, doses in nmol) and ``MW_KDA``. ``mechanisms`` simulates the
mechanisms of docs/mechanisms.md.
"""

from . import alnuctamab, elranatamab, linvoseltamab, talquetamab, teclistamab

DRUGS = {m.__name__.split(".")[-1]: m for m in (teclistamab, elranatamab, alnuctamab, linvoseltamab, talquetamab)}
