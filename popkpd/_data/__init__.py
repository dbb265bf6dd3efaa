"""Data layer: NONMEM-style tables -> validated ``Dataset`` with padded ``Events`` (host side)."""

from .dataset import Dataset as Dataset, read_nonmem as read_nonmem
from .validate import DataError as DataError
