"""GeoTIFF and Cloud-Optimised GeoTIFF: lazy windowed reads and georeferenced writes (rasterio).

Reading never loads a whole scene: :class:`RasterioArray` turns every slice into a windowed
``DatasetReader.read`` of the selected bands. Bands are chosen as in GDAL and rasterio, by
1-based index, or by band description. Pixels holding a band's nodata value (or outside the
dataset's mask) are reported to the engine, which never labels them.

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
``scale``, ``units``, ``translate``
    Pixel size along (Y, X) in CRS units, the units, and (when the raster is axis-aligned)
    the napari translate of pixel (0, 0). napari's Y axis points down, so for a north-up
    raster the world Y shown in napari is minus the northing.

Writing (:func:`write_geotiff`) produces a tiled (256 x 256), DEFLATE-compressed GeoTIFF with
the same CRS, transform and size, window by window from a (zarr) array, to a temporary name
that is renamed when complete.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._files import atomic_path
from ._optional import MissingExtraError, require
from .source import ImageSource, LazyArray

#: TIFF tags that make a TIFF a GeoTIFF: ModelPixelScale, ModelTiepoint, ModelTransformation,
#: GeoKeyDirectory.
GEOTIFF_TAGS = (33550, 33922, 34264, 34735)

#: Edge of the tiles written, and of the windows copied at a time (a multiple of it).
TILE = 256
COPY_WINDOW = 4 * TILE

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
        path.with_name(path.name + ".aux.xml"),
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
    """Lazy ``(Y, X, C)`` view of selected bands of a raster; each slice is a windowed read.

    Parameters
    ----------
    path : str or Path
        Raster file (anything GDAL opens).
    indexes : sequence of int
        1-based band indexes, in the order of the channels.
    shape : (int, int)
        Height and width.
    dtype : numpy dtype
    block : (int, int)
        Storage block (tile or strip) height and width.
    """

    def __init__(
        self,
        path: str | Path,
        indexes: Sequence[int],
        shape: tuple[int, int],
        dtype: Any,
        block: tuple[int, int],
    ) -> None:
        self.path = str(path)
        self.indexes = tuple(int(i) for i in indexes)
        self.shape = (int(shape[0]), int(shape[1]), len(self.indexes))
        self.dtype = np.dtype(dtype)
        # Strips are a few rows high; read at least ~256 rows at a time.
        bh = int(block[0]) * max(1, math.ceil(TILE / max(1, int(block[0]))))
        self.chunks = (min(bh, self.shape[0]), min(int(block[1]), self.shape[1]), self.shape[2])

    def __repr__(self) -> str:
        return f"RasterioArray('{self.path}', bands={list(self.indexes)}, shape={self.shape})"

    def _window(self, key: tuple[Any, ...]) -> tuple[Any, list[int], tuple[Any, Any, Any]]:
        from rasterio.windows import Window

        ky, kx, kc = key
        y0, y1, iy = _axis_index(ky, self.shape[0])
        x0, x1, ix = _axis_index(kx, self.shape[1])
        channels = np.arange(self.shape[2])[kc]
        idx = [self.indexes[int(c)] for c in np.atleast_1d(channels)]
        return Window(x0, y0, x1 - x0, y1 - y0), idx, (iy, ix, 0 if channels.ndim == 0 else None)

    def read(self, key: tuple[Any, ...]) -> np.ndarray:
        window, idx, (iy, ix, ic) = self._window(key)
        if window.height == 0 or window.width == 0 or not idx:
            out = np.zeros((len(idx), int(window.height), int(window.width)), self.dtype)
        else:
            with _open_quiet(self.path) as ds:
                out = ds.read(idx, window=window, out_dtype=self.dtype)
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
        window, idx, (iy, ix, _) = self.source._window((ky, kx, slice(None)))
        with _open_quiet(self.source.path) as ds:
            masks = ds.read_masks(idx, window=window)
        return _pick((masks != 0).all(axis=0), iy, ix)


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


def open_geotiff(path: str | Path, *, bands: Any = None) -> ImageSource:
    """Open a (Geo)TIFF or COG lazily through rasterio.

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
    from rasterio.enums import MaskFlags

    path = Path(path)
    try:
        ds = _open_quiet(str(path))
    except MissingExtraError:
        raise
    except Exception as err:  # rasterio.errors.RasterioIOError and GDAL errors
        raise ValueError(f"'{path}' is not a raster rasterio can read: {err}") from err
    with ds:
        descriptions = list(ds.descriptions)
        indexes = resolve_bands(bands, descriptions, path)
        dtypes = {ds.dtypes[i - 1] for i in indexes}
        dtype = np.result_type(*sorted(dtypes))
        if dtype.kind not in "biuf":
            raise TypeError(
                f"'{path}' has bands of type {sorted(dtypes)}; expected integer or float bands"
            )
        array = RasterioArray(path, indexes, (ds.height, ds.width), dtype, ds.block_shapes[0])
        nodata = [ds.nodatavals[i - 1] for i in indexes]
        flags = [set(ds.mask_flag_enums[i - 1]) for i in indexes]
        needs_mask = any(
            (MaskFlags.per_dataset in fl or MaskFlags.alpha in fl) and MaskFlags.nodata not in fl
            for fl in flags
        )
        georeferenced = ds.crs is not None or not ds.transform.is_identity
        meta: dict[str, Any] = {
            "source": str(path),
            "format": "geotiff",
            "driver": ds.driver,
            "band_indexes": indexes,
            "band_descriptions": [descriptions[i - 1] for i in indexes],
            "nodata": [None if v is None else float(v) for v in nodata],
            "size": [ds.height, ds.width],
        }
        if georeferenced:
            meta.update(geo_metadata(ds.crs, ds.transform))
        if ds.gcps[0] and ds.transform.is_identity:
            warnings.warn(
                f"'{path}' is georeferenced by ground control points, not by an affine "
                "transform; outputs carry no georeferencing (warp it with gdalwarp first)",
                UserWarning,
                stacklevel=2,
            )
        elif georeferenced and ds.crs is None:
            warnings.warn(
                f"'{path}' has no CRS (coordinate reference system); outputs are written with "
                "its transform but without a CRS",
                UserWarning,
                stacklevel=2,
            )
    has_nodata = any(v is not None for v in nodata)
    return ImageSource(
        array,
        channel_axis=2,
        name=str(path),
        path=path,
        metadata={k: _json_float(v) for k, v in meta.items()},
        nodata=tuple(nodata) if has_nodata else None,
        mask=RasterioValidMask(array) if needs_mask else None,
    )


def _json_float(value: Any) -> Any:
    """NaN nodata is kept as the string "nan" so that metadata stays strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, list):
        return [_json_float(v) for v in value]
    return value


# --- writing -----------------------------------------------------------------------------
def write_geotiff(
    path: str | Path,
    data: Any,
    *,
    crs_wkt: str | None,
    transform: Sequence[float] | None,
    descriptions: Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
    colormap: Mapping[int, tuple[int, int, int, int]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``data`` as a tiled, compressed GeoTIFF, window by window.

    Parameters
    ----------
    path : str or Path
        Output file; written under a temporary name and renamed when complete.
    data : (Y, X) or (B, Y, X) array-like
        Labels or probabilities (numpy or zarr); read in windows of 1024 x 1024.
    crs_wkt : str or None
        CRS as WKT; None writes no CRS.
    transform : sequence of 6 float or None
        Affine coefficients ``(a, b, c, d, e, f)``; None writes no georeferencing.
    descriptions : sequence of str, optional
        One per band.
    tags : mapping, optional
        Dataset metadata items.
    colormap : mapping of int to RGBA, optional
        Palette for band 1 (uint8 only).
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path
    """
    rasterio = _rasterio("writing GeoTIFF")
    from affine import Affine
    from rasterio.windows import Window

    path = Path(path)
    shape = tuple(int(s) for s in data.shape)
    if len(shape) not in (2, 3):
        raise ValueError(
            f"a GeoTIFF holds (Y, X) or (bands, Y, X) data, got shape {shape}; write 3D "
            "results as .zarr or .nii.gz"
        )
    count = 1 if len(shape) == 2 else shape[0]
    height, width = shape[-2:]
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
        "predictor": 3 if dtype.kind == "f" else 2,
        "BIGTIFF": "IF_SAFER",
        "interleave": "band" if count > 1 else "pixel",
    }
    if transform is not None:
        profile["transform"] = Affine(*[float(v) for v in transform[:6]])
    if crs_wkt:
        profile["crs"] = rasterio.crs.CRS.from_wkt(crs_wkt)
    with atomic_path(path, overwrite=overwrite) as tmp:
        from rasterio.errors import NotGeoreferencedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **profile) as ds:
                for y0 in range(0, height, COPY_WINDOW):
                    for x0 in range(0, width, COPY_WINDOW):
                        y1, x1 = min(y0 + COPY_WINDOW, height), min(x0 + COPY_WINDOW, width)
                        window = Window(x0, y0, x1 - x0, y1 - y0)
                        if len(shape) == 2:
                            ds.write(np.asarray(data[y0:y1, x0:x1]), 1, window=window)
                        else:
                            ds.write(np.asarray(data[:, y0:y1, x0:x1]), window=window)
                for i, text in enumerate(descriptions or (), 1):
                    ds.set_band_description(i, str(text))
                if tags:
                    ds.update_tags(**{str(k): str(v) for k, v in tags.items()})
                if colormap and dtype == np.uint8:
                    ds.write_colormap(1, {int(k): tuple(v) for k, v in colormap.items()})
    return path


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
