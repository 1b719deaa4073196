"""napari reader for .zarr stores (glue only; the work is in io.ome.read_store)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def get_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    """Return a reader for a .zarr store, or None so that napari asks other plugins."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if not (p.suffix.lower() == ".zarr" and p.is_dir()):
        return None
    return read_zarr


def read_zarr(path: str | list[str]) -> list[tuple]:
    from .io.ome import read_store

    if isinstance(path, list):
        path = path[0]
    return read_store(path)
