"""napari readers: zarr/OME-Zarr stores, GeoTIFF, NIfTI (glue only: io/ reads, _layers builds)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def _single(path: str | list[str]) -> Path | None:
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    return Path(path)


def get_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    """Return a reader for a .zarr store, or None so that napari asks other plugins."""
    p = _single(path)
    if p is None or not (p.suffix.lower() == ".zarr" and p.is_dir()):
        return None
    return read_zarr


def read_zarr(path: str | list[str]) -> list[tuple]:
    from ._layers import zarr_layers

    if isinstance(path, list):
        path = path[0]
    return zarr_layers(path)


def get_geotiff_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    """A reader for a georeferenced TIFF, a GDAL virtual raster (.vrt) or a JPEG 2000 file
    (rasterio installed); plain TIFFs are left to others."""
    import importlib.util

    p = _single(path)
    suffix = p.suffix.lower() if p is not None else ""
    if p is None or suffix not in (".tif", ".tiff", ".vrt", ".jp2") or not p.is_file():
        return None
    if importlib.util.find_spec("rasterio") is None:
        return None
    if suffix in (".vrt", ".jp2"):
        return read_geotiff
    from .io.geotiff import is_georeferenced

    return read_geotiff if is_georeferenced(p) else None


def read_geotiff(path: str | list[str]) -> list[tuple]:
    from ._layers import geotiff_layers

    if isinstance(path, list):
        path = path[0]
    return geotiff_layers(path)


def get_nifti_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    """A reader for .nii/.nii.gz files (nibabel installed)."""
    import importlib.util

    p = _single(path)
    if p is None or not p.name.lower().endswith((".nii", ".nii.gz")) or not p.is_file():
        return None
    if importlib.util.find_spec("nibabel") is None:
        return None
    return read_nifti


def read_nifti(path: str | list[str]) -> list[tuple]:
    from ._layers import nifti_layers

    if isinstance(path, list):
        path = path[0]
    return nifti_layers(path)
