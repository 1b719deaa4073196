"""Open any supported input lazily as an :class:`ImageSource`.

An ImageSource reads regions of the spatial axes and always returns them channels-last, so the
engine never needs to know where the channel axis of the file was. Nothing here reads the whole
image: numpy files are memory-mapped, TIFF and Zarr are read chunk by chunk, GeoTIFF window by
window through rasterio (:mod:`.geotiff`), NIfTI and DICOM slice by slice (:mod:`.medical`).

Pixels that carry no data (a GeoTIFF's nodata value, pixels outside a mask) are reported by
:meth:`ImageSource.invalid`; the engine treats them like non-finite pixels: they are replaced
before the model sees them, left out of the intensity statistics and labelled background.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: File types :func:`open_image` understands, by suffix (plus folders of DICOM files).
SUPPORTED_SUFFIXES = (".zarr", ".tif", ".tiff", ".npy", ".nii", ".nii.gz")


@dataclass
class ImageSource:
    """A lazily read image with spatial axes first and an optional channel axis.

    Attributes
    ----------
    array : array-like
        The underlying array (numpy, memmap, dask, zarr), in its own axis order.
    channel_axis : int or None
        Axis of ``array`` holding channels, or None for a single channel.
    name : str
        Short description for messages and metadata (a path or the array type).
    path : Path or None
        File the image was read from, if any.
    metadata : dict
        Physical metadata found with the image (``scale``, ``units``, ``axes``...); for a
        GeoTIFF also ``crs_wkt``, ``transform``, ``nodata``, ``band_indexes``, for NIfTI and
        DICOM ``affine``, ``spacing``, ``modality`` (see ``docs/formats.md``). JSON-serialisable.
    nodata : tuple of (float or None), optional
        Per channel, the value that marks a pixel without data (NaN allowed), or None.
    mask : array-like, optional
        Lazy boolean array of the spatial shape, True where a pixel carries data.
    """

    array: Any
    channel_axis: int | None = None
    name: str = "array"
    path: Path | None = None
    metadata: dict = field(default_factory=dict)
    nodata: tuple[float | None, ...] | None = None
    mask: Any = None

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.array.shape)
        ndim = len(shape)
        if self.channel_axis is not None:
            if not -ndim <= self.channel_axis < ndim:
                raise ValueError(
                    f"channel_axis={self.channel_axis} is out of range for an image with "
                    f"{ndim} axes (shape {shape})"
                )
            self.channel_axis %= ndim
        n_spatial = ndim - (self.channel_axis is not None)
        if n_spatial not in (2, 3):
            extra = " plus a channel axis" if self.channel_axis is not None else ""
            hint = "" if self.channel_axis is not None else "; pass channel_axis= for channels"
            raise ValueError(
                f"expected a 2D (Y, X) or 3D (Z, Y, X) image{extra}, got {n_spatial} spatial "
                f"axes with shape {shape}{hint}"
            )
        if self.nodata is not None:
            self.nodata = tuple(None if v is None else float(v) for v in self.nodata)
            if len(self.nodata) != self.n_channels:
                raise ValueError(
                    f"nodata has {len(self.nodata)} values for an image with "
                    f"{self.n_channels} channels; give one value (or None) per channel"
                )
        if self.mask is not None and tuple(self.mask.shape) != self.spatial_shape:
            raise ValueError(
                f"mask has shape {tuple(self.mask.shape)}, expected the spatial shape "
                f"{self.spatial_shape}"
            )

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        shape = tuple(int(s) for s in self.array.shape)
        if self.channel_axis is None:
            return shape
        return shape[: self.channel_axis] + shape[self.channel_axis + 1 :]

    @property
    def n_channels(self) -> int:
        return 1 if self.channel_axis is None else int(self.array.shape[self.channel_axis])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def chunks(self) -> tuple[int, ...] | None:
        """Storage chunk shape along the spatial axes, or None for in-memory arrays."""
        chunks = getattr(self.array, "chunks", None)
        if chunks is None or isinstance(self.array, np.ndarray):
            return None
        # dask gives per-axis tuples of block sizes; take the first block along each axis.
        chunks = tuple(int(c[0]) if isinstance(c, tuple) else int(c) for c in chunks)
        if self.channel_axis is not None:
            chunks = chunks[: self.channel_axis] + chunks[self.channel_axis + 1 :]
        return chunks

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        """Read ``region`` of the spatial axes as a numpy array of shape (*region, C)."""
        if self.channel_axis is None:
            out = self.array[region]
        else:
            index = list(region)
            index.insert(self.channel_axis, slice(None))
            out = self.array[tuple(index)]
        if hasattr(out, "compute"):  # dask
            out = out.compute()
        out = np.asarray(out)
        if self.channel_axis is None:
            return out[..., None]
        return np.moveaxis(out, self.channel_axis, -1)

    @property
    def may_be_invalid(self) -> bool:
        """Whether some pixels may carry no data (float input, a nodata value or a mask)."""
        has_nodata = self.nodata is not None and any(v is not None for v in self.nodata)
        return self.dtype.kind == "f" or has_nodata or self.mask is not None

    def invalid(self, region: tuple[slice, ...], data: np.ndarray) -> np.ndarray | None:
        """Pixels of ``region`` that carry no data, or None when every pixel does.

        Parameters
        ----------
        region : tuple of slice
            The spatial region ``data`` was read from.
        data : (*region, C) ndarray
            What :meth:`read` returned for ``region``.

        Returns
        -------
        (*region) bool ndarray or None
            True where any channel holds its nodata value or the mask is False. Non-finite
            values are not included: the engine handles them channel by channel.
        """
        bad: np.ndarray | None = None
        for c, value in enumerate(self.nodata or ()):
            if value is None:
                continue
            v = data[..., c]
            hit = np.isnan(v) if math.isnan(value) else v == value
            bad = hit if bad is None else bad | hit
        if self.mask is not None:
            outside = ~np.asarray(self.mask[region], dtype=bool)
            bad = outside if bad is None else bad | outside
        if bad is not None and not bad.any():
            return None
        return bad


def open_image(
    image: Any,
    *,
    channel_axis: int | None = None,
    bands: Sequence[int | str] | str | None = None,
) -> ImageSource:
    """Open an array or a file path as an :class:`ImageSource`, without reading it.

    Parameters
    ----------
    image : array-like, str or PathLike
        A numpy, dask or zarr array (anything with ``shape``, ``dtype`` and slicing), or a
        path to a ``.zarr`` store, a ``.tif``/``.tiff`` file (GeoTIFFs through rasterio), a
        ``.npy`` file, a ``.nii``/``.nii.gz`` file or a folder holding one DICOM series.
    channel_axis : int, optional
        Axis holding channels. Without it every axis is spatial; TIFF files whose metadata
        names a channel (``C``) or sample (``S``) axis get it from there.
    bands : sequence of int or str, or str, optional
        Bands of a (Geo)TIFF to use, in order, by 1-based index as in GDAL and rasterio or by
        band description: ``[3, 2, 1]``, ``"3,2,1"`` or ``["red", "green", "blue"]``. Reads
        the file through rasterio (the ``geo`` extra).

    Returns
    -------
    ImageSource
    """
    if isinstance(image, ImageSource):
        if bands is not None:
            raise ValueError("bands= applies when opening a file; got an ImageSource")
        return image
    if isinstance(image, (str, os.PathLike)):
        return _open_path(Path(image), channel_axis, bands)
    if bands is not None:
        raise ValueError(
            f"bands= selects bands of a TIFF/GeoTIFF file; for a {type(image).__name__}, "
            "select the channels before calling"
        )
    if not (hasattr(image, "shape") and hasattr(image, "dtype") and hasattr(image, "__getitem__")):
        raise TypeError(
            "image must be an array (numpy, dask, zarr) or a path to a .zarr, .tif/.tiff, .npy "
            f"or .nii/.nii.gz file or a DICOM folder, got {type(image).__name__}"
        )
    _check_dtype(image.dtype, type(image).__name__)
    return ImageSource(image, channel_axis, name=type(image).__name__)


def _check_dtype(dtype: Any, what: str) -> None:
    kind = np.dtype(dtype).kind
    if kind not in "biuf":
        raise TypeError(f"{what} has dtype {np.dtype(dtype)}; expected an integer or float image")


def _open_path(path: Path, channel_axis: int | None, bands: Any = None) -> ImageSource:
    if not path.exists():
        raise FileNotFoundError(f"input path does not exist: '{path}'")
    suffix = path.suffix.lower()
    if path.name.lower().endswith(".nii.gz"):
        suffix = ".nii.gz"
    is_zarr = any(part.lower().endswith(".zarr") for part in path.parts)
    if is_zarr:
        suffix = ".zarr"  # a store, or an array or group inside one
    if bands is not None and suffix not in (".tif", ".tiff"):
        raise ValueError(
            f"bands= selects bands of a TIFF/GeoTIFF file, '{path}' is not one; select "
            "channels with channel_axis= and an array instead"
        )
    if suffix in (".nii", ".nii.gz") or (path.is_dir() and not is_zarr):
        if channel_axis is not None:
            raise ValueError(
                f"channel_axis= does not apply to NIfTI or DICOM input ('{path}'), got "
                f"{channel_axis}"
            )
        from .medical import open_dicom_series, open_nifti

        return open_nifti(path) if path.is_file() else open_dicom_series(path)
    if suffix in (".tif", ".tiff"):
        from .geotiff import use_rasterio

        if use_rasterio(path, bands):
            if channel_axis is not None:
                raise ValueError(
                    f"channel_axis= does not apply to a GeoTIFF ('{path}'): its bands are the "
                    f"channels; got {channel_axis}"
                )
            from .geotiff import open_geotiff

            return open_geotiff(path, bands=bands)
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(
            f"unsupported file type '{path.suffix or path.name}' for '{path}'; "
            f"expected one of {', '.join(SUPPORTED_SUFFIXES)} or a folder of DICOM files"
        )
    metadata: dict = {"source": str(path)}
    if suffix == ".npy":
        array = _open_npy(path)
    elif suffix in (".tif", ".tiff"):
        array, axes, tif_meta = _open_tiff(path)
        metadata.update(tif_meta)
        if channel_axis is None:
            channel_axis = next((axes.index(a) for a in "SC" if a in axes), None)
    else:
        array, zarr_meta = _open_zarr(path)
        metadata.update(zarr_meta)
        axes = "".join(str(a)[0].upper() for a in zarr_meta.get("axes", []))
        if channel_axis is None and "C" in axes:
            channel_axis = axes.index("C")
    array, channel_axis = _drop_time_axis(array, metadata.get("axes", ""), channel_axis, path)
    _check_dtype(array.dtype, f"'{path}'")
    return ImageSource(array, channel_axis, name=str(path), path=path, metadata=metadata)


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
            _, _, dtype = read_header(f)
        except ValueError as err:
            raise ValueError(f"'{path}' is not a valid .npy file: {err}") from err
    if dtype.hasobject:
        raise ValueError(
            f"'{path}' holds Python objects (dtype {dtype}); only numeric .npy files are read, "
            "pickled data is never loaded"
        )
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _open_tiff(path: Path) -> tuple[Any, str, dict]:
    import tifffile
    import zarr

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes
        meta: dict = {"axes": axes}
        if len(tif.series) > 1:
            meta["note"] = f"read series 0 of {len(tif.series)}"
    store = tifffile.imread(path, aszarr=True, series=0, level=0)
    return zarr.open_array(store, mode="r"), axes, meta


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
    import zarr

    try:
        node = zarr.open(path, mode="r")
    except Exception as err:  # zarr raises several error types for non-stores
        raise ValueError(f"'{path}' is not a readable zarr store: {err}") from err
    if isinstance(node, zarr.Array):
        return node, {}
    attrs: dict[str, Any] = dict(node.attrs)
    ome: dict[str, Any] = attrs.get("ome", attrs)
    multiscales = ome.get("multiscales")
    if multiscales:
        ms = multiscales[0]
        ds = ms["datasets"][0]
        meta: dict = {
            "axes": [a["name"] if isinstance(a, dict) else a for a in ms.get("axes", [])]
        }
        for t in ds.get("coordinateTransformations", []):
            if t.get("type") == "scale":
                meta["scale"] = tuple(t["scale"])
        axes = [a for a in ms.get("axes", []) if isinstance(a, dict)]
        if axes and all(a.get("unit") for a in axes if a.get("type") == "space"):
            meta["units"] = tuple(a.get("unit", "") for a in axes)
        return node[ds["path"]], meta
    arrays = [name for name, item in node.arrays()]
    if len(arrays) == 1:
        return node[arrays[0]], {"array": arrays[0]}
    raise ValueError(
        f"'{path}' is a zarr group with arrays {sorted(arrays)} and no OME-Zarr multiscales; "
        "pass the path of one array inside it (e.g. 'store.zarr/name')"
    )
