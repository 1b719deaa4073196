"""GeoTIFF, COG, VRT and other GDAL rasters: lazy windowed reads, Cloud-Optimised writes.

Reading never loads a whole scene: :class:`RasterioArray` turns every slice into windowed
``DatasetReader.read`` calls on the selected bands, of one raster or of several rasters on
one grid (:func:`open_band_stack`: Landsat and Sentinel-2 ship one file per band). Bands are
chosen as in GDAL and rasterio, by 1-based index, or by band description. Pixels holding a
band's nodata value (or outside the dataset's mask) are reported to the engine, which never
labels them.

Georeferencing travels as JSON in ``ImageSource.metadata``:

``crs_wkt``
    The CRS as WKT, or None when the file has none (a warning says so).
``transform``
    The six affine coefficients ``(a, b, c, d, e, f)`` of rasterio's ``Affine``: a pixel
    corner ``(col, row)`` lies at ``x = a col + b row + c``, ``y = d col + e row + f``.
``nodata``
    Per selected band, its nodata value or None.
``band_indexes``, ``band_descriptions``
    The 1-based indexes of the bands read, in order, and their descriptions.
``band_colours``, ``band_evidence``, ``sensor``
    What each band shows ("red", "near-infrared"... or None) and why we think so
    (:mod:`.bands`), for the warning about bands that are not true colour.
``sources``, ``band_files``
    For a stack of files: the files, and the file of every band read.
``scale``, ``units``, ``translate``
    Pixel size along (Y, X) in CRS units, the units, and (when the raster is axis-aligned)
    the napari translate of pixel (0, 0). napari's Y axis points down, so for a north-up
    raster the world Y shown in napari is minus the northing.

Writing (:func:`write_geotiff`) produces a Cloud-Optimised GeoTIFF with the same CRS,
transform and size: ``data`` (a zarr array, never loaded whole) is copied window by window
into a temporary tiled GeoTIFF, which GDAL's COG driver rewrites with internal overviews
under a temporary name, renamed when complete. A categorical raster also gets an ``.aux.xml``
sidecar with GDAL category names and a raster attribute table (GeoTIFF has no place for them
that GDAL < 3.12 reads).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._files import atomic_path, check_file_target
from ._optional import MissingExtraError, require
from .bands import BandInfo, band_colours, rgb_positions
from .source import ImageSource, LazyArray

#: TIFF tags that make a TIFF a GeoTIFF: ModelPixelScale, ModelTiepoint, ModelTransformation,
#: GeoKeyDirectory.
GEOTIFF_TAGS = (33550, 33922, 34264, 34735)

#: Edge of the tiles written (GDAL's COG default), and of the windows copied at a time.
TILE = 512
COPY_WINDOW = 2 * TILE
#: Rows read at a time (at least) from rasters stored in strips.
READ_ROWS = 256

_UNIT_NAMES = {"metre": "m", "meter": "m", "foot": "ft", "us survey foot": "ftUS", "degree": "deg"}


def _rasterio(what: str) -> Any:
    return require("rasterio", "geo", what)


def is_georeferenced(path: str | Path) -> bool:
    """Whether a TIFF carries georeferencing (GeoTIFF tags, or a world file / .aux.xml)."""
    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages[0].tags  # type: ignore[union-attr]
            if any(code in tags for code in GEOTIFF_TAGS):
                return True
    except Exception:  # not a TIFF tifffile understands: let the reader report it
        return False
    sidecars = (
        path.with_suffix(".tfw"),
        path.with_suffix(".tifw"),
        path.with_suffix(".wld"),
        pam_path(path),
    )
    return any(p.is_file() for p in sidecars)


def use_rasterio(path: Path, bands: Any) -> bool:
    """Whether :func:`open_image` should read ``path`` through rasterio.

    Yes when bands are selected (that needs rasterio) or the TIFF is georeferenced. A
    georeferenced TIFF without rasterio installed is read as a plain TIFF, with a warning
    that its georeferencing is lost and which extra keeps it.
    """
    if bands is not None:
        _rasterio(f"selecting bands of '{path}'")
        return True
    if not is_georeferenced(path):
        return False
    try:
        _rasterio("reading GeoTIFF")
    except MissingExtraError as err:
        warnings.warn(
            f"'{path}' is a GeoTIFF, but it is read as a plain TIFF and its georeferencing "
            f"(CRS, transform, nodata) is not kept: {err}",
            UserWarning,
            stacklevel=4,
        )
        return False
    return True


# --- bands -------------------------------------------------------------------------------
def parse_bands(bands: Sequence[int | str] | str | int) -> list[int | str]:
    """``"3,2,1"``, ``[3, 2, 1]`` or ``["red", "nir"]`` -> list of 1-based indexes / names."""
    if isinstance(bands, (int, np.integer)) and not isinstance(bands, bool):
        items: list[Any] = [int(bands)]
    elif isinstance(bands, str):
        items = [b.strip() for b in bands.split(",")]
        items = [int(b) if b.lstrip("+-").isdigit() else b for b in items]
    else:
        items = list(bands)  # type: ignore[arg-type]
    if not items or any(isinstance(b, str) and not b for b in items):
        raise ValueError(
            f"bands must list band numbers (1-based) or descriptions, e.g. '3,2,1', got {bands!r}"
        )
    for b in items:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer, str)):
            raise TypeError(
                f"every band must be a 1-based band number or a band description, got {b!r}"
            )
    return [b if isinstance(b, str) else int(b) for b in items]


def resolve_bands(
    bands: Sequence[int | str] | str | int | None,
    descriptions: Sequence[str | None],
    path: str | Path,
) -> list[int]:
    """1-based band indexes for ``bands`` in a raster whose bands have ``descriptions``."""
    count = len(descriptions)
    if bands is None:
        return list(range(1, count + 1))
    listing = ", ".join(
        f"{i} {d!r}" if d else f"{i} (no description)" for i, d in enumerate(descriptions, 1)
    )
    out = []
    for b in parse_bands(bands):
        if isinstance(b, int):
            if not 1 <= b <= count:
                raise ValueError(
                    f"band {b} is out of range for '{path}', which has {count} band"
                    f"{'s' if count != 1 else ''}; bands are numbered 1..{count} as in GDAL"
                )
            out.append(b)
            continue
        hits = [i for i, d in enumerate(descriptions, 1) if d and d.lower() == b.lower()]
        if not hits:
            raise ValueError(f"no band of '{path}' is described {b!r}; its bands are: {listing}")
        if len(hits) > 1:
            raise ValueError(
                f"{len(hits)} bands of '{path}' are described {b!r} (bands {hits}); select "
                "one by number"
            )
        out.append(hits[0])
    return out


# --- lazy reading ------------------------------------------------------------------------
def _axis_index(key: Any, n: int) -> tuple[int, int, Any]:
    """One axis of a key -> (start, stop) of the window to read and the index within it."""
    if isinstance(key, (int, np.integer)):
        k = int(key)
        if not -n <= k < n:
            raise IndexError(f"index {k} is out of bounds for an axis of length {n}")
        k %= n
        return k, k + 1, 0
    if isinstance(key, slice):
        r = range(*key.indices(n))
        if len(r) == 0:
            return 0, 0, slice(0, 0)
        lo, hi = min(r), max(r) + 1
        if r.step == 1:
            return lo, hi, slice(None)
        return lo, hi, np.asarray(r) - lo
    raise TypeError(f"only integers and slices index a raster, got {key!r}")


def _pick(block: np.ndarray, iy: Any, ix: Any) -> np.ndarray:
    """Apply the within-window indexes of Y then X (one at a time: no fancy broadcasting)."""
    block = block[iy]
    return block[ix] if isinstance(iy, int) else block[:, ix]


def _open_quiet(path: str) -> Any:
    rasterio = _rasterio("reading GeoTIFF")
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


class RasterioArray(LazyArray):
    """Lazy ``(Y, X, C)`` view of bands of one raster, or of several rasters on one grid;
    each slice is a windowed read of the bands it needs, file by file.

    Parameters
    ----------
    path : str or Path, or sequence of them
        The raster (anything GDAL opens), or one raster per channel.
    indexes : sequence of int
        1-based band index of every channel, in its raster.
    shape : (int, int)
        Height and width.
    dtype : numpy dtype
    block : (int, int)
        Storage block (tile or strip) height and width.
    """

    def __init__(
        self,
        path: str | Path | Sequence[str | Path],
        indexes: Sequence[int],
        shape: tuple[int, int],
        dtype: Any,
        block: tuple[int, int],
    ) -> None:
        self.indexes = tuple(int(i) for i in indexes)
        if isinstance(path, (str, Path)):
            self.paths = (str(path),) * len(self.indexes)
        else:
            self.paths = tuple(str(p) for p in path)
        if len(self.paths) != len(self.indexes):
            raise ValueError(
                f"one raster per band: got {len(self.paths)} paths for {len(self.indexes)} bands"
            )
        self.path = self.paths[0] if len(set(self.paths)) == 1 else None
        self.shape = (int(shape[0]), int(shape[1]), len(self.indexes))
        self.dtype = np.dtype(dtype)
        # Strips are a few rows high; read at least ~256 rows at a time.
        bh = int(block[0]) * max(1, math.ceil(READ_ROWS / max(1, int(block[0]))))
        self.chunks = (min(bh, self.shape[0]), min(int(block[1]), self.shape[1]), self.shape[2])

    def __repr__(self) -> str:
        where = f"'{self.path}'" if self.path is not None else f"{len(set(self.paths))} files"
        return f"RasterioArray({where}, bands={list(self.indexes)}, shape={self.shape})"

    def _window(self, key: tuple[Any, ...]) -> tuple[Any, list[int], tuple[Any, Any, Any]]:
        from rasterio.windows import Window

        ky, kx, kc = key
        y0, y1, iy = _axis_index(ky, self.shape[0])
        x0, x1, ix = _axis_index(kx, self.shape[1])
        channels = np.arange(self.shape[2])[kc]
        picked = [int(c) for c in np.atleast_1d(channels)]
        within = (iy, ix, 0 if channels.ndim == 0 else None)
        return Window(x0, y0, x1 - x0, y1 - y0), picked, within

    def _by_file(self, channels: list[int]) -> list[tuple[str, list[int], list[int]]]:
        """``channels`` grouped by raster: (path, positions in the output, band indexes)."""
        groups: dict[str, tuple[list[int], list[int]]] = {}
        for k, c in enumerate(channels):
            positions, indexes = groups.setdefault(self.paths[c], ([], []))
            positions.append(k)
            indexes.append(self.indexes[c])
        return [(p, pos, idx) for p, (pos, idx) in groups.items()]

    def read(self, key: tuple[Any, ...]) -> np.ndarray:
        window, channels, (iy, ix, ic) = self._window(key)
        out = np.zeros((len(channels), int(window.height), int(window.width)), self.dtype)
        if window.height and window.width:
            for path, positions, indexes in self._by_file(channels):
                with _open_quiet(path) as ds:
                    out[positions] = ds.read(indexes, window=window, out_dtype=self.dtype)
        out = _pick(np.moveaxis(out, 0, -1), iy, ix)
        return out[..., 0] if ic == 0 else out  # a channel indexed by an int is dropped


class RasterioValidMask(LazyArray):
    """Lazy ``(Y, X)`` bool array: True where every selected band's GDAL mask is valid."""

    def __init__(self, source: RasterioArray) -> None:
        self.source = source
        self.shape = source.shape[:2]
        self.dtype = np.dtype(bool)
        self.chunks = source.chunks[:2]

    def read(self, key: tuple[Any, ...]) -> np.ndarray:
        ky, kx = key
        window, channels, (iy, ix, _) = self.source._window((ky, kx, slice(None)))
        valid = np.ones((int(window.height), int(window.width)), bool)
        if window.height and window.width:
            for path, _, indexes in self.source._by_file(channels):
                with _open_quiet(path) as ds:
                    valid &= (ds.read_masks(indexes, window=window) != 0).all(axis=0)
        return _pick(valid, iy, ix)


def _units(crs: Any) -> str | None:
    if crs is None:
        return None
    try:
        name = str(crs.units_factor[0])
    except Exception:  # CRS without parsable units
        return None
    return _UNIT_NAMES.get(name.lower(), name)


def geo_metadata(crs: Any, transform: Any) -> dict:
    """JSON metadata of a CRS and affine transform: WKT, coefficients, scale, units, translate."""
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    meta: dict[str, Any] = {
        "crs_wkt": crs.to_wkt() if crs is not None else None,
        "transform": [a, b, c, d, e, f],
        "scale": [math.hypot(b, e), math.hypot(a, d)],
    }
    units = _units(crs)
    if units is not None:
        meta["units"] = [units, units]
    if b == 0 and d == 0:
        # napari puts pixel centres at translate + index * scale, with positive scale.
        sy, sx = (-1.0 if e < 0 else 1.0), (-1.0 if a < 0 else 1.0)
        meta["translate"] = [sy * (f + e / 2), sx * (c + a / 2)]
    return meta


@dataclass(frozen=True)
class _Raster:
    """What one raster file holds, as the openers need it (read once, file closed)."""

    path: Path
    width: int
    height: int
    crs: Any
    transform: Any
    block: tuple[int, int]
    driver: str
    tags: dict
    gcps: bool
    bands: list[dict]  # per band: description, dtype, nodata, mask flags, colour information


def _inspect(path: Path) -> _Raster:
    from rasterio.enums import MaskFlags

    try:
        ds = _open_quiet(str(path))
    except MissingExtraError:
        raise
    except Exception as err:  # rasterio.errors.RasterioIOError and GDAL errors
        raise ValueError(f"'{path}' is not a raster rasterio can read: {err}") from err
    with ds:
        bands = []
        for i in range(1, ds.count + 1):
            flags = set(ds.mask_flag_enums[i - 1])
            try:
                interp = ds.colorinterp[i - 1].name
            except (ValueError, IndexError):  # a colour interpretation rasterio does not name
                interp = None
            bands.append({
                "description": ds.descriptions[i - 1],
                "dtype": ds.dtypes[i - 1],
                "nodata": ds.nodatavals[i - 1],
                "needs_mask": (MaskFlags.per_dataset in flags or MaskFlags.alpha in flags)
                and MaskFlags.nodata not in flags,
                "info": BandInfo(
                    description=ds.descriptions[i - 1],
                    colorinterp=interp,
                    tags=ds.tags(i),
                    imagery=ds.tags(i, ns="IMAGERY"),
                    position=i,
                    file=str(path),
                    file_count=ds.count,
                ),
            })  # fmt: skip
        return _Raster(
            path=path,
            width=ds.width,
            height=ds.height,
            crs=ds.crs,
            transform=ds.transform,
            block=tuple(ds.block_shapes[0]),  # type: ignore[arg-type]
            driver=ds.driver,
            tags=ds.tags(),
            gcps=bool(ds.gcps[0]),
            bands=bands,
        )


def _crs_name(crs: Any) -> str:
    return "no CRS" if crs is None else (crs.to_string() or crs.to_wkt())


def _check_same_grid(first: _Raster, other: _Raster) -> None:
    """Files stacked as bands must share size, CRS and transform; the message names the
    first difference."""
    hint = (
        "; files stacked as bands must share size, CRS and transform (put them on one grid "
        "first, e.g. gdalbuildvrt -separate -resolution highest stack.vrt FILES..., and "
        "segment stack.vrt)"
    )
    where = f"cannot stack '{other.path}' with '{first.path}' as bands: "
    if (other.width, other.height) != (first.width, first.height):
        raise ValueError(
            f"{where}its size is {other.width} x {other.height} pixels (width x height), "
            f"expected {first.width} x {first.height}{hint}"
        )
    if (other.crs is None) != (first.crs is None) or (
        other.crs is not None and other.crs != first.crs
    ):
        raise ValueError(
            f"{where}its CRS is {_crs_name(other.crs)}, expected {_crs_name(first.crs)}{hint}"
        )
    if not other.transform.almost_equals(first.transform):
        raise ValueError(
            f"{where}its transform is {tuple(other.transform)[:6]}, expected "
            f"{tuple(first.transform)[:6]} (a, b, c, d, e, f: pixel size and origin){hint}"
        )


def open_geotiff(path: str | Path, *, bands: Any = None) -> ImageSource:
    """Open a (Geo)TIFF, COG, VRT or any raster GDAL reads, lazily through rasterio.

    Parameters
    ----------
    path : str or Path
        The raster.
    bands : sequence of int or str, or str, optional
        Bands to read, by 1-based index or description (default: all, in file order).

    Returns
    -------
    ImageSource
        Channels-last (Y, X, C) lazy source whose metadata holds the georeferencing (see the
        module docstring) and whose ``nodata``/``mask`` mark pixels without data.

    Warns
    -----
    UserWarning
        When the raster has a transform but no CRS: outputs are then written without a CRS.
    """
    return open_band_stack([path], bands=bands)


def open_band_stack(paths: Sequence[str | Path], *, bands: Any = None) -> ImageSource:
    """Open rasters on one grid as the bands of one image (Landsat and Sentinel-2 ship one
    file per band), lazily through rasterio.

    Parameters
    ----------
    paths : sequence of str or Path
        The rasters, in channel order: ``["B4.TIF", "B3.TIF", "B2.TIF"]`` is a true-colour
        Landsat 8/9 image. Every band of every file is a channel, in order.
    bands : sequence of int or str, or str, optional
        Channels of the stack to keep, by 1-based position across the files or by band
        description (default: all).

    Returns
    -------
    ImageSource
        As :func:`open_geotiff`; ``metadata["sources"]`` lists the files and
        ``metadata["band_files"]`` the file of every channel.

    Raises
    ------
    ValueError
        When the files differ in size, CRS or transform (the message names the file and the
        difference), or one is not a raster.
    """
    files = [Path(p) for p in paths]
    if not files:
        raise ValueError("a band stack needs at least one file, got none")
    rasters = [_inspect(p) for p in files]
    first = rasters[0]
    for other in rasters[1:]:
        _check_same_grid(first, other)
    stacked = [(r, band) for r in rasters for band in r.bands]
    descriptions = [band["description"] for _, band in stacked]
    name = str(files[0]) if len(files) == 1 else ", ".join(str(p) for p in files)
    indexes = resolve_bands(bands, descriptions, name)
    chosen = [stacked[i - 1] for i in indexes]
    dtypes = {band["dtype"] for _, band in chosen}
    dtype = np.result_type(*sorted(dtypes))
    if dtype.kind not in "biuf":
        raise TypeError(
            f"'{name}' has bands of type {sorted(dtypes)}; expected integer or float bands"
        )
    array = RasterioArray(
        [r.path for r, _ in chosen], [band["info"].position for _, band in chosen],
        (first.height, first.width), dtype, first.block,
    )  # fmt: skip
    nodata = [band["nodata"] for _, band in chosen]
    georeferenced = first.crs is not None or not first.transform.is_identity
    meta: dict[str, Any] = {
        "source": name,
        "format": "geotiff",
        "driver": first.driver,
        "band_indexes": indexes,
        "band_descriptions": [band["description"] for _, band in chosen],
        "nodata": [None if v is None else float(v) for v in nodata],
        "size": [first.height, first.width],
    }
    if len(files) > 1:
        meta["sources"] = [str(p) for p in files]
        meta["band_files"] = [str(r.path) for r, _ in chosen]
    meta.update(_band_identities(rasters, stacked, indexes, files))
    if georeferenced:
        meta.update(geo_metadata(first.crs, first.transform))
    if first.gcps and first.transform.is_identity:
        warnings.warn(
            f"'{name}' is georeferenced by ground control points, not by an affine "
            "transform; outputs carry no georeferencing (warp it with gdalwarp first)",
            UserWarning,
            stacklevel=3,
        )
    elif georeferenced and first.crs is None:
        warnings.warn(
            f"'{name}' has no CRS (coordinate reference system); outputs are written with "
            "its transform but without a CRS",
            UserWarning,
            stacklevel=3,
        )
    has_nodata = any(v is not None for v in nodata)
    needs_mask = any(band["needs_mask"] for _, band in chosen)
    return ImageSource(
        array,
        channel_axis=2,
        name=name,
        path=files[0] if len(files) == 1 else None,
        metadata={k: _json_float(v) for k, v in meta.items()},
        nodata=tuple(nodata) if has_nodata else None,
        mask=RasterioValidMask(array) if needs_mask else None,
        paths=tuple(files),
    )


def _band_identities(
    rasters: list[_Raster], stacked: list[tuple[_Raster, dict]], indexes: list[int],
    paths: list[Path],
) -> dict[str, Any]:  # fmt: skip
    """What the chosen bands show (:mod:`.bands`), for the true-colour check."""
    tags = {k: v for r in rasters for k, v in r.tags.items()}
    colours, evidence, sensor = band_colours([b["info"] for _, b in stacked], dataset_tags=tags)
    out: dict[str, Any] = {
        "band_colours": [colours[i - 1] for i in indexes],
        "band_evidence": [evidence[i - 1] for i in indexes],
    }
    if sensor is not None:
        out["sensor"] = sensor
    if len(paths) == 1:
        out["band_selection"] = f"bands {','.join(map(str, indexes))} of '{paths[0].name}'"
    else:
        files = ", ".join(
            r.path.name + (f" band {b['info'].position}" if len(r.bands) > 1 else "")
            for r, b in (stacked[i - 1] for i in indexes)
        )
        out["band_selection"] = f"the bands {files}"
    rgb = rgb_positions(colours)
    if rgb is not None:
        if len(paths) == 1:
            out["rgb_hint"] = f"--bands {','.join(map(str, rgb))} (bands={rgb})"
        elif all(len(r.bands) == 1 for r in rasters):
            out["rgb_hint"] = "the files in the order " + ", ".join(
                stacked[i - 1][0].path.name for i in rgb
            )
        else:
            out["rgb_hint"] = f"--bands {','.join(map(str, rgb))} (bands={rgb})"
    return out


def _json_float(value: Any) -> Any:
    """NaN nodata is kept as the string "nan" so that metadata stays strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, list):
        return [_json_float(v) for v in value]
    return value


# --- writing -----------------------------------------------------------------------------
#: Creation options of GDAL's COG driver: DEFLATE (the codec every GIS reads) with its
#: predictor (horizontal differencing for integers, floating point for floats), BigTIFF only
#: when the file could pass 4 GiB, compression on every core.
COG_OPTIONS = {
    "BLOCKSIZE": TILE,
    "COMPRESS": "DEFLATE",
    "PREDICTOR": "YES",
    "BIGTIFF": "IF_SAFER",
    "NUM_THREADS": "ALL_CPUS",
}
#: GDAL's block cache while the COG is built, in MB: it bounds the memory the translation
#: and the overviews take, whatever the size of the raster (docs/formats.md).
COG_CACHE_MB = 128
#: Overview resampling methods: "mode" and "nearest" keep exact label values at every level,
#: "average" suits probabilities.
OVERVIEW_RESAMPLING = ("mode", "nearest", "average")
#: GDAL raster attribute table field types and usages (gdal.h: GDALRATFieldType/Usage).
_GFT_INTEGER, _GFT_STRING = 0, 2
_GFU_NAME, _GFU_MINMAX, _GFU_RED, _GFU_GREEN, _GFU_BLUE, _GFU_ALPHA = 2, 5, 6, 7, 8, 9
#: Category names are written for label values up to this (GDAL lists one per value from 0).
MAX_CATEGORIES = 1024


def pam_path(path: str | Path) -> Path:
    """GDAL's sidecar of ``path`` (``water.tif.aux.xml``): metadata the TIFF cannot hold."""
    path = Path(path)
    return path.with_name(path.name + ".aux.xml")


def write_geotiff(
    path: str | Path,
    data: Any,
    *,
    crs_wkt: str | None,
    transform: Sequence[float] | None,
    descriptions: Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
    classes: Mapping[int, tuple[str, tuple[int, int, int, int]]] | None = None,
    nodata: float | None = None,
    invalid: Any = None,
    overview_resampling: str = "nearest",
    overwrite: bool = False,
) -> Path:
    """Write ``data`` as a Cloud-Optimised GeoTIFF, in bounded memory.

    ``data`` is copied window by window into a temporary tiled GeoTIFF beside ``path``, which
    GDAL's COG driver (through ``rasterio.shutil.copy``) then rewrites with internal overviews
    in COG order: 512 x 512 DEFLATE tiles, overviews halving the size until it fits one tile,
    IFDs first, then tile data from the smallest overview to full resolution.

    Parameters
    ----------
    path : str or Path
        Output file; written under a temporary name and renamed when complete.
    data : (Y, X) or (B, Y, X) array-like
        Labels or probabilities (numpy, dask or zarr); read in windows of 1024 x 1024.
    crs_wkt : str or None
        CRS as WKT; None writes no CRS.
    transform : sequence of 6 float or None
        Affine coefficients ``(a, b, c, d, e, f)``; None writes no georeferencing.
    descriptions : sequence of str, optional
        One per band.
    tags : mapping, optional
        Dataset metadata items (kept in the TIFF's GDAL_METADATA tag).
    classes : mapping of int to (str, RGBA), optional
        For a categorical band 1: the name and colour (0-255) of each value. Written as a TIFF
        palette (uint8 bands), and, in the ``.aux.xml`` sidecar GDAL reads with the file
        (:func:`pam_path`), as GDAL category names and a raster attribute table with the
        colours and their opacity.
    nodata : float, optional
        The bands' nodata value (NaN allowed).
    invalid : (Y, X) bool array-like, optional
        True where the input had no data: those pixels are written as ``nodata``. Read window
        by window, like ``data``.
    overview_resampling : {"nearest", "mode", "average"}
        How overviews are computed; "mode" or "nearest" for labels.
    overwrite : bool
        Replace an existing file (and its sidecar).

    Returns
    -------
    Path
    """
    rasterio = _rasterio("writing GeoTIFF")
    from affine import Affine
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.shutil import copy as gdal_copy

    path = Path(path)
    shape = tuple(int(s) for s in data.shape)
    if len(shape) not in (2, 3):
        raise ValueError(
            f"a GeoTIFF holds (Y, X) or (bands, Y, X) data, got shape {shape}; write 3D "
            "results as .zarr or .nii.gz"
        )
    if overview_resampling not in OVERVIEW_RESAMPLING:
        raise ValueError(
            f"overview_resampling must be one of {', '.join(OVERVIEW_RESAMPLING)}, got "
            f"{overview_resampling!r}"
        )
    count = 1 if len(shape) == 2 else shape[0]
    height, width = shape[-2:]
    if invalid is not None:
        if nodata is None:
            raise ValueError("invalid= marks pixels to write as nodata; give nodata= too")
        if tuple(int(s) for s in invalid.shape) != (height, width):
            raise ValueError(
                f"invalid has shape {tuple(invalid.shape)}, expected the raster's "
                f"{(height, width)}"
            )
    dtype = np.dtype(data.dtype)
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": dtype.name,
        "tiled": True,
        "blockxsize": TILE,
        "blockysize": TILE,
        "compress": "deflate",
        "zlevel": 1,  # a temporary file: fast beats small
        "BIGTIFF": "IF_SAFER",
        "interleave": "band" if count > 1 else "pixel",
    }
    if nodata is not None:
        profile["nodata"] = nodata
    if transform is not None:
        profile["transform"] = Affine(*[float(v) for v in transform[:6]])
    if crs_wkt:
        profile["crs"] = rasterio.crs.CRS.from_wkt(crs_wkt)
    sidecar = pam_path(path)
    check_file_target(sidecar, overwrite=overwrite)
    with atomic_path(path, overwrite=overwrite) as tmp:
        staging = tmp.with_name(f"{tmp.stem}.staging{tmp.suffix}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(staging, "w", **profile) as ds:
                    _copy_windows(ds, data, invalid, nodata)
                    for i, text in enumerate(descriptions or (), 1):
                        ds.set_band_description(i, str(text))
                    if tags:
                        ds.update_tags(**{str(k): str(v) for k, v in tags.items()})
                    if classes and dtype == np.uint8:
                        ds.write_colormap(1, {int(k): tuple(c) for k, (_, c) in classes.items()})
                with rasterio.Env(GDAL_CACHEMAX=COG_CACHE_MB):
                    gdal_copy(
                        staging, tmp, driver="COG",
                        OVERVIEW_RESAMPLING=overview_resampling.upper(), **COG_OPTIONS,
                    )  # fmt: skip
        finally:
            for leftover in (staging, pam_path(staging), pam_path(tmp)):
                if leftover.exists():
                    leftover.unlink()
        if classes:
            with atomic_path(sidecar, overwrite=overwrite) as pam:
                pam.write_text(label_pam(classes, nodata=nodata), encoding="utf-8")
        elif sidecar.exists():
            os.remove(sidecar)  # it described the file being replaced
    return path


def _copy_windows(ds: Any, data: Any, invalid: Any, nodata: float | None) -> None:
    """Copy ``data`` into the open dataset ``ds`` in windows of COPY_WINDOW, writing
    ``nodata`` where ``invalid`` is True."""
    from rasterio.windows import Window

    lead = (slice(None),) * (len(data.shape) - 2)
    for y0 in range(0, ds.height, COPY_WINDOW):
        for x0 in range(0, ds.width, COPY_WINDOW):
            y1, x1 = min(y0 + COPY_WINDOW, ds.height), min(x0 + COPY_WINDOW, ds.width)
            block = np.asarray(data[(*lead, slice(y0, y1), slice(x0, x1))])
            if invalid is not None:
                bad = np.asarray(invalid[y0:y1, x0:x1], dtype=bool)
                if bad.any():
                    block = np.where(bad, np.asarray(nodata, block.dtype), block)
            window = Window(x0, y0, x1 - x0, y1 - y0)
            if block.ndim == 2:
                ds.write(block, 1, window=window)
            else:
                ds.write(block, window=window)


def label_pam(
    classes: Mapping[int, tuple[str, tuple[int, int, int, int]]], *, nodata: float | None = None
) -> str:
    """GDAL PAM XML (``.aux.xml``) for band 1 of a categorical raster: category names (what
    ``gdalinfo`` lists, values 0..N without the nodata value) and a thematic raster attribute
    table with value, class name and RGBA colour per class (what QGIS >= 3.30 styles the
    layer with)."""
    import xml.etree.ElementTree as ET

    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    values = sorted(int(v) for v in classes)
    named = [v for v in values if nodata is None or v != nodata]
    if named and named[0] >= 0 and named[-1] <= MAX_CATEGORIES:
        categories = ET.SubElement(band, "CategoryNames")
        for v in range(named[-1] + 1):
            ET.SubElement(categories, "Category").text = classes[v][0] if v in classes else ""
    rat = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    fields = [("value", _GFT_INTEGER, _GFU_MINMAX), ("class", _GFT_STRING, _GFU_NAME),
              ("red", _GFT_INTEGER, _GFU_RED), ("green", _GFT_INTEGER, _GFU_GREEN),
              ("blue", _GFT_INTEGER, _GFU_BLUE), ("alpha", _GFT_INTEGER, _GFU_ALPHA)]  # fmt: skip
    for i, (name, kind, usage) in enumerate(fields):
        field = ET.SubElement(rat, "FieldDefn", index=str(i))
        ET.SubElement(field, "Name").text = name
        ET.SubElement(field, "Type").text = str(kind)
        ET.SubElement(field, "Usage").text = str(usage)
    for row, v in enumerate(values):
        text, rgba = classes[v]
        item = ET.SubElement(rat, "Row", index=str(row))
        for cell in (v, text, *rgba):
            ET.SubElement(item, "F").text = str(cell)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def label_tags(label_names: Mapping[int, str], extra: Mapping[str, Any] | None = None) -> dict:
    """GeoTIFF metadata items naming the labels: ``LABEL_1=water`` and a JSON summary."""
    tags = {f"LABEL_{int(i)}": str(n) for i, n in label_names.items()}
    tags["napari_llmseg"] = json.dumps(
        {"label_names": {str(k): v for k, v in label_names.items()}, **(extra or {})}
    )
    return tags


def label_names_in(path: str | Path) -> dict[int, str] | None:
    """The label names napari-llmseg wrote into a labels GeoTIFF's tags, or None when the
    file is not one of its label rasters."""
    with _open_quiet(str(path)) as ds:
        tags = ds.tags()
    if "napari_llmseg" not in tags:
        return None
    try:
        names = json.loads(tags["napari_llmseg"]).get("label_names", {})
        return {int(k): str(v) for k, v in names.items()}
    except (ValueError, AttributeError, TypeError):
        return None
