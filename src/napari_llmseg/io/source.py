"""What every reader produces: :class:`ImageSource`, a lazily read image with its geometry.

An ImageSource reads regions of the spatial axes and always returns them channels-last, so the
engine never needs to know where the channel axis of the file was. Formats that numpy, dask
and zarr cannot slice themselves (GeoTIFF through rasterio, NIfTI, DICOM) are wrapped in a
:class:`LazyArray`, which turns ``array[key]`` into a read of just that region.

Pixels that carry no data (a GeoTIFF's nodata value, pixels outside a mask) are reported by
:meth:`ImageSource.invalid`; the engine treats them like non-finite pixels: they are replaced
before the model sees them, left out of the intensity statistics and labelled background.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def expand_key(key: Any, ndim: int) -> tuple[Any, ...]:
    """A numpy basic index -> one entry (int or slice) per axis; Ellipsis is expanded.

    Raises
    ------
    IndexError
        For more indices than axes.
    TypeError
        For anything but integers, slices and one Ellipsis (no fancy indexing).
    """
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1 :]
    if len(key) > ndim:
        raise IndexError(f"too many indices ({len(key)}) for an array with {ndim} axes")
    for k in key:
        if not isinstance(k, (slice, int, np.integer)):
            raise TypeError(f"only integers and slices index a lazy image, got {k!r}")
    return key + (slice(None),) * (ndim - len(key))


class LazyArray(ABC):
    """Read-on-index array: ``shape``, ``dtype``, ``chunks`` and basic slicing, nothing loaded.

    Subclasses set ``shape``, ``dtype`` and ``chunks`` (the natural read unit: a tile, a
    slice) and implement :meth:`read`, which receives one int or slice per axis.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @abstractmethod
    def read(self, key: tuple[Any, ...]) -> np.ndarray:
        """The values at ``key`` (one int or slice per axis), as numpy indexing would give."""

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.read(expand_key(key, self.ndim))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype})"


@dataclass
class ImageSource:
    """A lazily read image with spatial axes first and an optional channel axis.

    Any number of spatial axes (the engine is N-D); :func:`napari_llmseg.io.open.open_image`,
    the way images enter a run, admits 2D and 3D images only.

    Attributes
    ----------
    array : array-like
        The underlying array (numpy, memmap, dask, zarr), in its own axis order.
    channel_axis : int or None
        Axis of ``array`` holding channels, or None for a single channel.
    name : str
        Short description for messages and metadata (a path or the array type).
    path : Path or None
        File the image was read from, if any (None for a stack of several files).
    metadata : dict
        Physical metadata found with the image (``scale``, ``units``, ``axes``...); for a
        GeoTIFF also ``crs_wkt``, ``transform``, ``nodata``, ``band_indexes``, for NIfTI and
        DICOM ``affine``, ``spacing``, ``modality`` (see ``docs/formats.md``). JSON-serialisable.
    nodata : tuple of (float or None), optional
        Per channel, the value that marks a pixel without data (NaN allowed), or None.
    mask : array-like, optional
        Lazy boolean array of the spatial shape, True where a pixel carries data.
    paths : tuple of Path
        Every file the image is read from (``(path,)`` for one file, several for a stack of
        band files); outputs must not overlap any of them.
    """

    array: Any
    channel_axis: int | None = None
    name: str = "array"
    path: Path | None = None
    metadata: dict = field(default_factory=dict)
    nodata: tuple[float | None, ...] | None = None
    mask: Any = None
    paths: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        self.paths = tuple(Path(p) for p in self.paths)
        if not self.paths and self.path is not None:
            self.paths = (Path(self.path),)
        shape = tuple(int(s) for s in self.array.shape)
        ndim = len(shape)
        if self.channel_axis is not None:
            if not -ndim <= self.channel_axis < ndim:
                raise ValueError(
                    f"channel_axis={self.channel_axis} is out of range for an image with "
                    f"{ndim} axes (shape {shape})"
                )
            self.channel_axis %= ndim
        if ndim - (self.channel_axis is not None) < 1:
            raise ValueError(f"an image needs at least one spatial axis, got shape {shape}")
        if any(s < 1 for s in self.spatial_shape):
            raise ValueError(
                f"the image has an empty spatial axis: shape {shape} "
                f"(spatial {self.spatial_shape}); every axis needs at least one pixel"
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
        """Read ``region`` of the spatial axes as a numpy array of shape (*region, C).

        Raises
        ------
        ValueError
            When the data cannot be read or decoded (a damaged file), naming the source and
            the region.
        """
        index = list(region)
        if self.channel_axis is not None:
            index.insert(self.channel_axis, slice(None))
        try:
            out = self.array[tuple(index)]
            if hasattr(out, "compute"):  # dask
                out = out.compute()
            out = np.asarray(out)
        except (ValueError, MemoryError, OSError):
            raise  # already clear: a bad value, or the file system (disk gone, permissions)
        except Exception as err:  # decoders raise IndexError, RuntimeError, zlib.error...
            where = ", ".join(f"{s.start}:{s.stop}" for s in region)
            raise ValueError(
                f"cannot read [{where}] of '{self.name}': {type(err).__name__}: {err}; the "
                "file may be damaged or truncated"
            ) from err
        if self.channel_axis is None:
            return out[..., None]
        return np.moveaxis(out, self.channel_axis, -1)

    def backing_paths(self) -> list[Path]:
        """Files or stores the image is read from: its path, the store behind a zarr array,
        the file behind a memory-mapped array. Outputs must stay clear of all of them."""
        paths = list(self.paths) or ([self.path] if self.path is not None else [])
        array = self.array
        store = getattr(array, "store", None)
        root = getattr(store, "root", None)
        if root is not None:  # a zarr array in a local store
            paths.append(Path(str(root)) / str(getattr(array, "path", "") or ""))
        filename = getattr(array, "filename", None)
        if isinstance(array, np.memmap) and filename:
            paths.append(Path(filename))
        return paths

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

    def no_data(self, region: tuple[slice, ...]) -> np.ndarray | None:
        """Pixels of ``region`` that the engine labels background because they carry no data:
        :meth:`invalid` ones, and (for float images) those with a non-finite value in any
        channel, as the engine sees them in float32. None when every pixel carries data.

        Reads the region again (only the mask, when that is all that can mark a pixel).
        """
        if not self.may_be_invalid:
            return None
        has_nodata = self.nodata is not None and any(v is not None for v in self.nodata)
        if self.dtype.kind != "f" and not has_nodata:
            outside = ~np.asarray(self.mask[region], dtype=bool)
            return outside if outside.any() else None
        data = self.read(region)
        bad = self.invalid(region, data)
        if self.dtype.kind == "f":
            nonfinite = np.asarray(~np.isfinite(data.astype(np.float32, copy=False)).all(axis=-1))
            bad = nonfinite if bad is None else bad | nonfinite
        if bad is not None and not bad.any():
            return None
        return bad


class NoDataMask(LazyArray):
    """Lazy ``(*spatial)`` bool array of an :class:`ImageSource`: True where the engine
    found no data (:meth:`ImageSource.no_data`); what writers mark as nodata."""

    def __init__(self, source: ImageSource) -> None:
        self.source = source
        self.shape = source.spatial_shape
        self.dtype = np.dtype(bool)
        self.chunks = source.chunks or self.shape

    def read(self, key: tuple[Any, ...]) -> np.ndarray:
        region = tuple(
            slice(int(k) % n, int(k) % n + 1) if isinstance(k, (int, np.integer)) else k
            for k, n in zip(key, self.shape, strict=True)
        )
        spans = [range(*k.indices(n)) for k, n in zip(region, self.shape, strict=True)]
        if any(r.step != 1 for r in spans):
            raise IndexError(f"NoDataMask reads contiguous regions, got {key!r}")
        bad = self.source.no_data(tuple(slice(r.start, r.stop) for r in spans))
        out = np.zeros(tuple(len(r) for r in spans), bool) if bad is None else bad
        drop = tuple(0 if isinstance(k, (int, np.integer)) else slice(None) for k in key)
        return out[drop]
