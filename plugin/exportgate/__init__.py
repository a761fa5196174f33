"""exportgate: apply US sanctions and export rules to every download from a mirror.

This module is the stable facade: what integrations may import. Everything else is internal.
"""

from __future__ import annotations

from .classification import UNCLASSIFIED, Classification
from .errors import (
    AddressError,
    ConfigError,
    ExportGateError,
    GeoDatabaseError,
    NoPackInForce,
    RecordStoreError,
)
from .location import Location

__version__ = "0.1.0"

__all__ = [
    "AddressError",
    "Classification",
    "ConfigError",
    "ExportGateError",
    "GeoDatabaseError",
    "Location",
    "NoPackInForce",
    "RecordStoreError",
    "UNCLASSIFIED",
    "__version__",
]
