"""Optional dependencies, imported on first use with a message naming the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional package that a format needs is not installed."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra that provides it.

    Parameters
    ----------
    module : str
        Module to import, e.g. ``"rasterio"`` or ``"rasterio.features"``.
    extra : str
        The napari-llmseg extra that installs it (``"geo"``, ``"medical"``).
    what : str
        What needs it, for the message (``"reading GeoTIFF"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        raise MissingExtraError(
            f"{what} needs the optional package '{top}', which is not installed; install it "
            f"with: pip install 'napari-llmseg[{extra}]'"
        ) from err
