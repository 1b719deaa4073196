"""Open any supported input lazily as an :class:`~.source.ImageSource`.

Nothing here reads the whole image: numpy files are memory-mapped, TIFF and Zarr are read chunk
by chunk, GeoTIFF, VRT and JPEG 2000 window by window through rasterio (:mod:`.geotiff`), NIfTI
and DICOM slice by slice (:mod:`.medical`). Which opener handles a path is decided in one
place, ``_SUFFIX_KINDS`` and ``_OPENERS``; a list of raster files is one image with a band per
file (:func:`.geotiff.open_band_stack`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .source import ImageSource

#: File types :func:`open_image` understands, by suffix (plus folders of DICOM files).
SUPPORTED_SUFFIXES = (".zarr", ".tif", ".tiff", ".vrt", ".jp2", ".npy", ".nii", ".nii.gz")
#: Kinds of file that can be stacked as bands (read through rasterio).
RASTER_KINDS = ("tiff", "raster")


def open_image(
    image: Any,
    *,
    channel_axis: int | None = None,
    bands: Sequence[int | str] | str | None = None,
) -> ImageSource:
    """Open an array or a file path as an :class:`ImageSource`, without reading it.

    Parameters
    ----------
    image : array-like, str, PathLike or list of them
        A numpy, dask or zarr array (anything with ``shape``, ``dtype`` and slicing), or a
        path to a ``.zarr`` store, a ``.tif``/``.tiff`` file (GeoTIFFs through rasterio), a
        ``.vrt`` (GDAL virtual raster) or ``.jp2`` file (through rasterio), a ``.npy`` file,
        a ``.nii``/``.nii.gz`` file or a folder holding one DICOM series. A list of raster
        files on one grid (same size, CRS and transform) is one image whose channels are
        their bands, in order: ``["B4.TIF", "B3.TIF", "B2.TIF"]`` (Landsat 8/9 true colour).
    channel_axis : int, optional
        Axis holding channels. Without it every axis is spatial; TIFF files whose metadata
        names a channel (``C``) or sample (``S``) axis get it from there.
    bands : sequence of int or str, or str, optional
        Bands of a (Geo)TIFF, VRT or JPEG 2000 file (or of a list of them, numbered across the
        files) to use, in order, by 1-based index as in GDAL and rasterio or by band
        description: ``[3, 2, 1]``, ``"3,2,1"`` or ``["red", "green", "blue"]``. Reads the
        file through rasterio (the ``geo`` extra).

    Returns
    -------
    ImageSource
    """
    return check_image_axes(_open(image, channel_axis, bands))


def check_image_axes(source: ImageSource) -> ImageSource:
    """``source`` if it is a 2D or 3D image (plus channels); the engine itself takes any
    number of axes, but the rest of the pipeline (writers, measurements, napari) needs 2 or 3.

    Raises
    ------
    ValueError
        Naming the number of spatial axes and the shape.
    """
    n_spatial = len(source.spatial_shape)
    if n_spatial not in (2, 3):
        shape = tuple(int(s) for s in source.array.shape)
        extra = " plus a channel axis" if source.channel_axis is not None else ""
        hint = "" if source.channel_axis is not None else "; pass channel_axis= for channels"
        raise ValueError(
            f"expected a 2D (Y, X) or 3D (Z, Y, X) image{extra}, got {n_spatial} spatial "
            f"axes with shape {shape}{hint}"
        )
    return source


def _open(image: Any, channel_axis: int | None, bands: Any) -> ImageSource:
    if isinstance(image, ImageSource):
        if bands is not None:
            raise ValueError("bands= applies when opening a file; got an ImageSource")
        return image
    if isinstance(image, (str, os.PathLike)):
        return _open_path(Path(image), channel_axis, bands)
    if isinstance(image, (list, tuple)) and all(isinstance(p, (str, os.PathLike)) for p in image):
        if not image:
            raise ValueError("image is an empty list; give a path, an array, or band files")
        if len(image) == 1:
            return _open_path(Path(image[0]), channel_axis, bands)
        return _open_stack([Path(p) for p in image], channel_axis, bands)
    if bands is not None:
        raise ValueError(
            f"bands= selects bands of a TIFF/GeoTIFF file; for a {type(image).__name__}, "
            "select the channels before calling"
        )
    if not (hasattr(image, "shape") and hasattr(image, "dtype") and hasattr(image, "__getitem__")):
        raise TypeError(
            "image must be an array (numpy, dask, zarr), a path to a .zarr, .tif/.tiff, .vrt, "
            ".jp2, .npy or .nii/.nii.gz file or a DICOM folder, or a list of band files, got "
            f"{type(image).__name__}"
        )
    _check_dtype(image.dtype, type(image).__name__)
    _note_channel_guess(tuple(image.shape), channel_axis, f"the {type(image).__name__}")
    return ImageSource(image, channel_axis, name=type(image).__name__)


def _note_channel_guess(shape: tuple[int, ...], channel_axis: int | None, what: str) -> None:
    """Say what was assumed when a 3D array looks like an RGB(A) image: every axis is spatial
    unless channel_axis= says otherwise."""
    if channel_axis is not None or len(shape) != 3:
        return
    for axis, rest in ((-1, shape[:2]), (0, shape[1:])):
        n = shape[axis]
        if n in (3, 4) and min(rest) >= 32:
            kind = "RGB" if n == 3 else "RGBA"
            warnings.warn(
                f"{what} has shape {shape}: it is read as a 3D volume of {shape[0]} planes; if "
                f"its {'last' if axis == -1 else 'first'} axis holds {kind} channels, pass "
                f"channel_axis={axis} (--channel-axis {axis})",
                UserWarning,
                stacklevel=4,
            )
            return


def _check_dtype(dtype: Any, what: str) -> None:
    kind = np.dtype(dtype).kind
    if kind not in "biuf":
        raise TypeError(f"{what} has dtype {np.dtype(dtype)}; expected an integer or float image")


def path_kind(path: Path) -> str:
    """``"zarr"``, ``"tiff"``, ``"raster"`` (VRT, JPEG 2000), ``"npy"``, ``"nifti"`` or
    ``"dicom"`` for an existing path.

    A path inside a ``.zarr`` store (``store.zarr/name``) is zarr; any other folder is a DICOM
    series.

    Raises
    ------
    ValueError
        For a file of another type; the message lists the supported ones.
    """
    name = path.name.lower()
    if any(part.lower().endswith(".zarr") for part in path.parts):
        return "zarr"
    if path.is_dir():
        return "dicom"
    kind = _SUFFIX_KINDS.get(".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"unsupported file type '{path.suffix or path.name}' for '{path}'; "
            f"expected one of {', '.join(SUPPORTED_SUFFIXES)} or a folder of DICOM files"
        )
    return kind


def _open_path(path: Path, channel_axis: int | None, bands: Any = None) -> ImageSource:
    if not path.exists():
        raise FileNotFoundError(f"input path does not exist: '{path}'")
    kind = path_kind(path)
    if bands is not None and kind not in RASTER_KINDS:
        raise ValueError(
            f"bands= selects bands of a TIFF/GeoTIFF file, '{path}' is not one; select "
            "channels with channel_axis= and an array instead"
        )
    return _OPENERS[kind](path, channel_axis, bands)


def _open_stack(paths: list[Path], channel_axis: int | None, bands: Any) -> ImageSource:
    """Raster files on one grid as the bands of one image (through rasterio)."""
    from ._optional import require

    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"input path does not exist: '{p}'")
        if p.is_dir() or path_kind(p) not in RASTER_KINDS:
            raise ValueError(
                f"only raster files (.tif/.tiff, .vrt, .jp2) can be stacked as bands, got '{p}'"
            )
    if channel_axis is not None:
        raise ValueError(
            f"channel_axis= does not apply to a stack of band files, got {channel_axis}"
        )
    require("rasterio", "geo", f"stacking {len(paths)} band files")
    from .geotiff import open_band_stack

    return open_band_stack(paths, bands=bands)


def _no_channel_axis(path: Path, channel_axis: int | None, what: str) -> None:
    if channel_axis is not None:
        raise ValueError(f"channel_axis= does not apply to {what} ('{path}'), got {channel_axis}")


def _open_medical(path: Path, channel_axis: int | None, bands: Any) -> ImageSource:
    _no_channel_axis(path, channel_axis, "NIfTI or DICOM input")
    from .medical import open_dicom_series, open_nifti

    return open_nifti(path) if path.is_file() else open_dicom_series(path)


def _open_tiff_path(path: Path, channel_axis: int | None, bands: Any) -> ImageSource:
    from .geotiff import use_rasterio

    if use_rasterio(path, bands):
        _no_channel_axis(path, channel_axis, "a GeoTIFF, whose bands are the channels")
        from .geotiff import open_geotiff

        return open_geotiff(path, bands=bands)
    array, axes, metadata = _open_tiff(path)
    if channel_axis is None:
        channel_axis = next((axes.index(a) for a in "SC" if a in axes), None)
    return _array_source(path, array, channel_axis, metadata)


def _open_raster_path(path: Path, channel_axis: int | None, bands: Any) -> ImageSource:
    _no_channel_axis(path, channel_axis, "a raster read through rasterio, whose bands are the "
                     "channels")  # fmt: skip
    from ._optional import require

    require("rasterio", "geo", f"reading '{path}'")
    from .geotiff import open_geotiff

    return open_geotiff(path, bands=bands)


def _open_npy_path(path: Path, channel_axis: int | None, bands: Any) -> ImageSource:
    array = _open_npy(path)
    _note_channel_guess(tuple(array.shape), channel_axis, f"'{path}'")
    return _array_source(path, array, channel_axis, {})


def _open_zarr_path(path: Path, channel_axis: int | None, bands: Any) -> ImageSource:
    array, metadata = _open_zarr(path)
    axes = "".join(str(a)[0].upper() for a in metadata.get("axes", []))
    if channel_axis is None and "C" in axes:
        channel_axis = axes.index("C")
    return _array_source(path, array, channel_axis, metadata)


def _array_source(path: Path, array: Any, channel_axis: int | None, metadata: dict) -> ImageSource:
    metadata = {"source": str(path), **metadata}
    array, channel_axis = _drop_time_axis(array, metadata.get("axes", ""), channel_axis, path)
    _check_dtype(array.dtype, f"'{path}'")
    return ImageSource(array, channel_axis, name=str(path), path=path, metadata=metadata)


#: Suffix -> kind of file; folders are zarr stores (``.zarr``) or DICOM series.
_SUFFIX_KINDS = {
    ".zarr": "zarr",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".vrt": "raster",
    ".jp2": "raster",
    ".npy": "npy",
    ".nii": "nifti",
    ".nii.gz": "nifti",
}

#: Kind of file -> its opener ``(path, channel_axis, bands) -> ImageSource``. A new input
#: format is one opener here (see docs/architecture.md).
_OPENERS = {
    "zarr": _open_zarr_path,
    "tiff": _open_tiff_path,
    "raster": _open_raster_path,
    "npy": _open_npy_path,
    "nifti": _open_medical,
    "dicom": _open_medical,
}


def _open_npy(path: Path) -> np.ndarray:
    """Memory-map a .npy file; files holding Python objects are refused, never unpickled."""
    with open(path, "rb") as f:
        try:
            major, _ = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if major == 1
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(f)
        except ValueError as err:
            raise ValueError(f"'{path}' is not a valid .npy file: {err}") from err
    if any(int(n) == 0 for n in shape):
        raise ValueError(
            f"'{path}' holds an array of shape {tuple(shape)}, with an empty spatial axis; "
            "every axis needs at least one pixel"
        )
    if dtype.hasobject:
        raise ValueError(
            f"'{path}' holds Python objects (dtype {dtype}); only numeric .npy files are read, "
            "pickled data is never loaded"
        )
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _open_tiff(path: Path) -> tuple[Any, str, dict]:
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ValueError("it holds no image series")
            series = tif.series[0]
            axes = series.axes
            meta: dict = {"axes": axes}
            if len(tif.series) > 1:
                meta["note"] = f"read series 0 of {len(tif.series)}"
        store = tifffile.imread(path, aszarr=True, series=0, level=0)
        return zarr.open_array(store, mode="r"), axes, meta
    except Exception as err:  # tifffile raises TiffFileError, IndexError, struct.error...
        raise ValueError(
            f"'{path}' is not a readable TIFF: {type(err).__name__}: {' '.join(str(err).split())}"
        ) from err


def _drop_time_axis(
    array: Any, axes: Any, channel_axis: int | None, path: Path
) -> tuple[Any, int | None]:
    """Index away a length-1 time axis named in the file's metadata; refuse a longer one."""
    axes = "".join(str(a)[0].upper() for a in axes) if axes else ""
    if "T" not in axes or len(axes) != len(array.shape):
        return array, channel_axis
    t = axes.index("T")
    if array.shape[t] > 1:
        raise ValueError(
            f"'{path}' has a time axis of length {array.shape[t]} (axes {axes}, shape "
            f"{tuple(array.shape)}); segment one time point at a time"
        )
    import dask.array as da

    index = tuple(0 if i == t else slice(None) for i in range(len(axes)))
    lazy = da.from_array(array, chunks=array.chunks)[index]
    if channel_axis is not None and channel_axis > t:
        channel_axis -= 1
    return lazy, channel_axis


def _open_zarr(path: Path) -> tuple[Any, dict]:
    """A zarr array, the full-resolution level of an OME-Zarr image, or a group's only array."""
    import zarr

    from .ome import is_multiscale, read_multiscale

    try:
        node = zarr.open(path, mode="r")
    except Exception as err:  # zarr raises several error types for non-stores
        raise ValueError(f"'{path}' is not a readable zarr store: {err}") from err
    if isinstance(node, zarr.Array):
        return node, {}
    ome = dict(node.attrs).get("ome")
    if ome is not None and not isinstance(ome, dict):
        raise ValueError(
            f"'{path}' has an 'ome' attribute that is not OME-Zarr metadata (got {ome!r}); pass "
            "the path of an array inside the store instead"
        )
    if is_multiscale(node):
        image = read_multiscale(node, path)
        meta: dict = {"axes": list(image.axes)}
        if image.scale is not None:
            meta["scale"] = tuple(image.scale)
        if image.translate is not None and any(image.translate):
            meta["translate"] = tuple(image.translate)
        if image.units is not None:
            meta["units"] = tuple(image.units)
        return image.levels[0], meta
    arrays = [name for name, item in node.arrays()]
    if len(arrays) == 1:
        return node[arrays[0]], {"array": arrays[0]}
    raise ValueError(
        f"'{path}' is a zarr group with arrays {sorted(arrays)} and no OME-Zarr multiscales; "
        "pass the path of one array inside it (e.g. 'store.zarr/name')"
    )
