"""Polygons of a label raster, tile by tile, merged across tile borders; GeoPackage / GeoJSON.

A scene too large for memory is polygonised one tile at a time (``rasterio.features.shapes``,
4-connectivity, holes kept). Tiling happens in pixel coordinates, where tile borders are
exact integers: a polygon that touches an inner tile border is set aside, and at the end the
pieces of each label are merged with ``shapely.unary_union``, so nothing is cut at a seam.
Only then are the polygons mapped to the CRS with the input's affine transform, optionally
simplified (Douglas-Peucker with ``preserve_topology``, tolerance in CRS units), and written
with pyogrio (one feature per polygon, fields ``label`` (the prompt), ``value`` (the label
value) and ``area`` (in CRS units squared)).

Memory: one tile of labels, plus the polygons themselves (the output) and the pieces
touching seams until they are merged.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._files import atomic_path, check_file_target
from ._optional import require

#: Vector outputs by suffix -> OGR driver.
VECTOR_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}

#: Default tile edge for polygonising, in pixels.
DEFAULT_TILE = 2048


def vector_driver(path: str | Path) -> str:
    """The OGR driver for a vector output path, by suffix (``.gpkg``, ``.geojson``)."""
    path = Path(path)
    driver = VECTOR_DRIVERS.get(path.suffix.lower())
    if driver is None:
        raise ValueError(
            f"unsupported vector output '{path}': expected a .gpkg (GeoPackage) or .geojson file"
        )
    return driver


def check_vector_target(path: str | Path, *, overwrite: bool) -> None:
    """Fail early (before a run) on a vector path that cannot be written."""
    vector_driver(path)
    for module in ("rasterio.features", "shapely", "pyogrio"):
        require(module, "geo", "writing polygons")
    check_file_target(Path(path), overwrite=overwrite)


def polygonize(
    labels: Any,
    *,
    transform: Sequence[float] | None = None,
    tile: int = DEFAULT_TILE,
    simplify: float | None = None,
) -> list[tuple[int, Any]]:
    """Polygons of every nonzero label value, merged across tile borders.

    Parameters
    ----------
    labels : (Y, X) integer array-like
        numpy or zarr; read one ``tile`` x ``tile`` block at a time.
    transform : sequence of 6 float, optional
        Affine ``(a, b, c, d, e, f)`` from pixel corners ``(col, row)`` to CRS coordinates;
        without it polygons are in pixel coordinates.
    tile : int
        Block edge in pixels.
    simplify : float, optional
        Douglas-Peucker tolerance in CRS units (topology preserving, per polygon).

    Returns
    -------
    list of (int, shapely.Polygon)
        ``(label value, polygon)`` sorted by value, then from top-left; exteriors
        counter-clockwise.
    """
    features = require("rasterio.features", "geo", "polygonising labels")
    shapely = require("shapely", "geo", "polygonising labels")
    from affine import Affine
    from shapely.affinity import affine_transform
    from shapely.geometry import shape as to_shape
    from shapely.geometry.polygon import orient

    shp = tuple(int(s) for s in labels.shape)
    if len(shp) != 2:
        raise ValueError(
            f"polygons are made from 2D (Y, X) labels, got shape {shp}; vector output is for "
            "2D (e.g. GeoTIFF) inputs"
        )
    if not isinstance(tile, (int, np.integer)) or tile < 2:
        raise ValueError(f"tile must be an integer >= 2, got {tile!r}")
    if simplify is not None and not (float(simplify) >= 0):
        raise ValueError(f"simplify must be a tolerance >= 0 in CRS units, got {simplify!r}")
    height, width = shp
    done: dict[int, list[Any]] = {}
    seam: dict[int, list[Any]] = {}
    for y0 in range(0, height, tile):
        y1 = min(y0 + tile, height)
        for x0 in range(0, width, tile):
            x1 = min(x0 + tile, width)
            block = np.asarray(labels[y0:y1, x0:x1])
            if not block.any():
                continue
            if block.dtype not in (np.uint8, np.uint16, np.int16, np.int32):
                block = block.astype(np.int32)
            for geom, value in features.shapes(
                block, mask=block > 0, connectivity=4, transform=Affine.translation(x0, y0)
            ):
                poly = to_shape(geom)
                minx, miny, maxx, maxy = poly.bounds
                touches = (
                    (minx == x0 and x0 > 0)
                    or (maxx == x1 and x1 < width)
                    or (miny == y0 and y0 > 0)
                    or (maxy == y1 and y1 < height)
                )
                (seam if touches else done).setdefault(int(value), []).append(poly)
    for value, pieces in seam.items():
        merged = shapely.unary_union(pieces)
        parts = list(merged.geoms) if hasattr(merged, "geoms") else [merged]
        done.setdefault(value, []).extend(p for p in parts if not p.is_empty)
    out = []
    for value in sorted(done):
        polys = sorted(done[value], key=lambda p: (p.bounds[1], p.bounds[0]))
        for poly in polys:
            if transform is not None:
                a, b, c, d, e, f = (float(v) for v in transform[:6])
                poly = affine_transform(poly, [a, b, d, e, c, f])
            if simplify:
                poly = poly.simplify(float(simplify), preserve_topology=True)
                if poly.is_empty:
                    continue
            out.append((value, orient(poly, 1.0)))
    return out


def write_vector(
    path: str | Path,
    labels: Any,
    label_names: Mapping[int, str],
    *,
    transform: Sequence[float] | None = None,
    crs_wkt: str | None = None,
    simplify: float | None = None,
    tile: int = DEFAULT_TILE,
    layer: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the polygons of ``labels`` to a GeoPackage or GeoJSON file.

    Parameters
    ----------
    path : str or Path
        ``.gpkg`` or ``.geojson``; written under a temporary name and renamed when complete.
    labels : (Y, X) integer array-like
        0 is background; ``i`` is ``label_names[i]``.
    label_names : mapping of int to str
        Prompt of every label value, stored in the ``label`` field.
    transform : sequence of 6 float, optional
        Affine ``(a, b, c, d, e, f)`` of the raster (``metadata["transform"]`` of a GeoTIFF
        source); without it coordinates are pixels and a warning says so.
    crs_wkt : str, optional
        CRS of the polygons (the raster's).
    simplify : float, optional
        Douglas-Peucker tolerance in CRS units.
    tile : int
        Polygonising block edge, in pixels.
    layer : str, optional
        Layer name (default: the file's stem).
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path
    """
    pyogrio_raw = require("pyogrio.raw", "geo", "writing polygons")
    shapely = require("shapely", "geo", "writing polygons")
    path = Path(path)
    driver = vector_driver(path)
    check_file_target(path, overwrite=overwrite)
    if transform is None:
        warnings.warn(
            f"the labels have no georeferencing; '{path}' is written in pixel coordinates "
            "(x = column, y = row) without a CRS",
            UserWarning,
            stacklevel=2,
        )
    elif not crs_wkt:
        warnings.warn(
            f"the labels have a transform but no CRS; '{path}' is written without a CRS",
            UserWarning,
            stacklevel=2,
        )
    polygons = polygonize(labels, transform=transform, tile=tile, simplify=simplify)
    unknown = sorted({v for v, _ in polygons} - {int(k) for k in label_names})
    if unknown:
        raise ValueError(
            f"labels hold values {unknown} that have no name in label_names {dict(label_names)}"
        )
    names = {int(k): str(v) for k, v in label_names.items()}
    geometry = np.array([shapely.to_wkb(p) for _, p in polygons], dtype=object)
    fields = ["label", "value", "area"]
    field_data = [
        np.array([names[v] for v, _ in polygons], dtype=object),
        np.array([v for v, _ in polygons], dtype=np.int32),
        np.array([p.area for _, p in polygons], dtype=np.float64),
    ]
    with atomic_path(path, overwrite=overwrite) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'crs' was not provided")  # warned above
        pyogrio_raw.write(
            str(tmp),
            geometry,
            field_data,
            fields,
            layer=layer or path.stem,
            driver=driver,
            geometry_type="Polygon",
            crs=crs_wkt or None,
            promote_to_multi=False,
        )
    return path
