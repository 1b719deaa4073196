"""The interactive loop's core: preview what is on screen, find where the model is unsure.

Nothing here imports napari or Qt: the widget (``_widget.py``) turns the viewer's state into a
:class:`View` and shows what comes back.

* :func:`preview` segments one view (a plane, or the part of it on screen) with the whole
  image's intensity statistics, so that the preview equals that region of a full run
  (windows reaching past the view see padding instead of the neighbouring pixels, the only
  difference near the view's edges). A view larger than :data:`PREVIEW_EDGE` pixels is
  strided down, or read from a pyramid level, so that a zoomed-out preview stays interactive.
  A model that takes 3D windows (a backend with ``spatial_dims = 3`` such as a MONAI bundle,
  or a callable given a ``roi_size`` of 3 entries) is not fed one plane: it segments a slab
  of planes centred on the view's, one window deep (:func:`view_slab`), with the image's
  physical metadata (voxel size, units, affine) adjusted to the slab, and the plane is cut
  out of the result.
* :func:`most_uncertain` finds the plane and region whose probabilities are closest to 0.5
  (highest binary entropy), where a correction teaches the model the most.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .engine.normalize import IntensityStats, compute_stats
from .io.source import ImageSource

#: Longest edge (pixels) a preview segments; larger views are strided down to it.
PREVIEW_EDGE = 1024
#: The same for a 3D model's slab. A 3D network costs (depth x edge^2) on every preview, on
#: the CPU at that, so 256 keeps it to seconds; and it loses little: radiology bundles run at
#: ~1.5 mm voxels, which a 512 x 512 CT plane (~0.7-1 mm pixels) strided by 2 still matches.
PREVIEW_EDGE_3D = 256


@dataclass(frozen=True)
class View:
    """What is on screen, in the pixel coordinates of the full-resolution image.

    Attributes
    ----------
    plane : int or None
        The Z index shown, for a volume; None for a 2D image.
    rows, cols : (int, int)
        ``[start, stop)`` of the visible rows and columns.
    """

    plane: int | None
    rows: tuple[int, int]
    cols: tuple[int, int]

    def clipped(self, height: int, width: int) -> View:
        """The view inside an image of ``height`` x ``width`` (at least one pixel)."""
        r0, r1 = (max(0, min(v, height)) for v in self.rows)
        c0, c1 = (max(0, min(v, width)) for v in self.cols)
        r0, c0 = min(r0, height - 1), min(c0, width - 1)
        return View(self.plane, (r0, max(r1, r0 + 1)), (c0, max(c1, c0 + 1)))


@dataclass
class Preview:
    """A segmented view: labels and probabilities of ``view``, at ``stride`` pixels per
    preview pixel (place them with ``translate = (rows[0], cols[0])``, ``scale = stride``)."""

    view: View
    stride: int
    labels: np.ndarray  # (h, w)
    probabilities: np.ndarray  # (P, h, w) float32

    @property
    def translate(self) -> tuple[float, float]:
        # pixel centres: a strided pixel stands for `stride` pixels from its first one
        half = (self.stride - 1) / 2
        return (self.view.rows[0] + half, self.view.cols[0] + half)


def image_stats(
    image: Any, channel_axis: int | None = None, *, moments: bool = False
) -> IntensityStats:
    """The whole image's intensity statistics (from a sample for large images): what every
    preview of it normalises with; ``moments=True`` for a model that normalises by the
    image's own mean or extremes (a model's ``needs_moments``)."""
    source = image if isinstance(image, ImageSource) else ImageSource(image, channel_axis)
    return compute_stats(source, moments=moments)


def _strided(shape: tuple[int, ...], view: View, max_edge: int) -> tuple[View, int, slice, slice]:
    """The view clipped to the image, the stride that brings its longer edge to ``max_edge``
    at most, and the strided row and column slices."""
    v = view.clipped(*shape[-2:])
    extent = max(v.rows[1] - v.rows[0], v.cols[1] - v.cols[0])
    stride = max(1, math.ceil(extent / max_edge))
    return v, stride, slice(v.rows[0], v.rows[1], stride), slice(v.cols[0], v.cols[1], stride)


def _check_plane(shape: tuple[int, ...], plane: int | None) -> int:
    if plane is None or not 0 <= plane < shape[0]:
        raise ValueError(f"a volume of shape {shape} needs a plane in [0, {shape[0]}), "
                         f"got {plane!r}")  # fmt: skip
    return plane


def view_region(
    source: ImageSource, view: View, *, max_edge: int = PREVIEW_EDGE
) -> tuple[np.ndarray, int]:
    """Read the view's pixels, channels last, strided so that no edge exceeds ``max_edge``
    -> (region (h, w, C), stride)."""
    shape = source.spatial_shape
    v, stride, rows, cols = _strided(shape, view, max_edge)
    if len(shape) == 3:
        plane = _check_plane(shape, v.plane)
        region = source.read((slice(plane, plane + 1), rows, cols))[0]
    else:
        region = source.read((rows, cols))
    return np.ascontiguousarray(region), stride


def view_slab(
    source: ImageSource, view: View, depth: int, *, max_edge: int = PREVIEW_EDGE_3D
) -> tuple[np.ndarray, int, int]:
    """Read ``depth`` planes of a volume around the view's plane, rows and columns as
    :func:`view_region` reads them -> (slab (d, h, w, C), stride, first plane).

    The slab is centred on the view's plane and shifted, not cut, at the volume's ends, so
    that a 3D model always sees ``depth`` planes (fewer only when the volume has fewer).

    Raises
    ------
    ValueError
        For an image that is not a volume, a plane outside it, or ``depth`` < 1.
    """
    shape = source.spatial_shape
    if len(shape) != 3:
        raise ValueError(f"a slab is read from a volume (3 spatial axes), got shape {shape}")
    if depth < 1:
        raise ValueError(f"a slab needs a depth of at least 1 plane, got {depth}")
    v, stride, rows, cols = _strided(shape, view, max_edge)
    plane = _check_plane(shape, v.plane)
    depth = min(int(depth), shape[0])
    first = min(max(0, plane - depth // 2), shape[0] - depth)
    slab = source.read((slice(first, first + depth), rows, cols))
    return np.ascontiguousarray(slab), stride, first


def window_depth(
    model: Any, shape: tuple[int, ...], roi_size: Any = None, metadata: dict | None = None
) -> int | None:
    """How many planes deep the windows of a full run of ``model`` on a volume of spatial
    ``shape`` are, or None when the model takes 2D windows (or the image is 2D).

    A backend takes 3D windows when its ``spatial_dims`` is 3 (a MONAI bundle), a callable
    when ``roi_size`` has 3 entries. The depth is the run's: ``roi_size``'s first entry (None
    or <= 0: the whole volume, as in MONAI), else the backend's default window for this input
    (``model.for_input(metadata).default_roi``: a bundle's window in the input's voxels).
    """
    from .api import window_shape
    from .backends.base import PromptSegmenter

    roi = tuple(roi_size) if isinstance(roi_size, list) else roi_size
    backend = model if isinstance(model, PromptSegmenter) else None
    dims = int(backend.spatial_dims) if backend is not None else 2
    if backend is None and isinstance(roi, tuple):
        dims = len(roi)
    if len(shape) != 3 or dims != 3:
        return None
    if backend is not None and hasattr(backend, "for_input"):
        with warnings.catch_warnings():  # the run that follows warns about the same input
            warnings.simplefilter("ignore")
            backend = backend.for_input(metadata or {})
    return int(window_shape(roi, tuple(shape), backend)[0])


def slab_metadata(
    metadata: dict | None, stride: int, origin: tuple[int, int, int], *, z_stride: int = 1
) -> dict:
    """A volume's physical metadata for a slab of it that starts at voxel ``origin``
    (Z, Y, X) and is strided by ``stride`` along Y and X (and ``z_stride`` along Z).

    ``scale`` (Z, Y, X) gets Y and X multiplied by ``stride``, Z by ``z_stride``; the 4 x 4
    ``affine`` (NIfTI convention: columns i, j, k = X, Y, Z) gets its columns multiplied alike
    and its origin moved to the slab's first voxel. ``units``, ``axes`` and ``modality`` are
    kept; other keys (which describe the whole volume: its spacing, translate, shape) are left
    out.
    """
    if not metadata:
        return {}
    out = {k: metadata[k] for k in ("units", "axes", "modality") if k in metadata}
    scale = metadata.get("scale")
    if scale is not None:
        if len(scale) != 3:
            raise ValueError(f"metadata scale must have 3 entries (Z, Y, X), got {scale!r}")
        z, y, x = (float(s) for s in scale)
        out["scale"] = [z * z_stride, y * stride, x * stride]
    affine = metadata.get("affine")
    if affine is not None:
        a = np.asarray(affine, dtype=np.float64)
        if a.shape != (4, 4):
            raise ValueError(f"metadata affine must be 4 x 4, got shape {a.shape}")
        z0, y0, x0 = origin
        to_volume = np.array([[stride, 0, 0, x0], [0, stride, 0, y0], [0, 0, z_stride, z0],
                              [0, 0, 0, 1]], dtype=np.float64)  # fmt: skip
        out["affine"] = (a @ to_volume).tolist()
    return out


def preview(
    source: ImageSource,
    prompts: Sequence[str],
    view: View,
    *,
    model: Any,
    stats: IntensityStats,
    cancel: Any = None,
    max_edge: int | None = None,
    metadata: dict | None = None,
    **options: Any,
) -> Preview | None:
    """Segment the part of ``source`` on screen; None if ``cancel`` was set during it.

    Parameters
    ----------
    source : ImageSource
        The full image (read lazily: only the view is read).
    prompts : sequence of str
    view : View
    model : backend, callable, model name or folder
        Loaded once by the caller and reused for every preview (a name or folder is loaded
        here, every time).
    stats : IntensityStats
        The whole image's (:func:`image_stats`).
    max_edge : int, optional
        Longest edge segmented; larger views are strided. :data:`PREVIEW_EDGE` for a plane,
        :data:`PREVIEW_EDGE_3D` for a 3D model's slab.
    metadata : dict, optional
        The image's physical metadata: ``scale`` (Z, Y, X), ``units``, ``affine`` (4 x 4,
        NIfTI convention), as :attr:`ImageSource.metadata` holds them. Only a 3D model's slab
        is segmented with it (adjusted by :func:`slab_metadata`): a MONAI bundle resamples
        and reorients its windows with it. A plane is segmented as pixels, as before.
    **options
        Window options of :func:`napari_llmseg.segment` (``roi_size``, ``overlap``,
        ``threshold``, ``batch_size``...).

    Returns
    -------
    Preview or None
        Labels and probabilities of the view's plane, whichever way it was segmented.
    """
    if isinstance(model, (str, os.PathLike)):
        from .api import resolve_model

        model = resolve_model(model, str(options.get("device") or "auto"))[0]
    shape = source.spatial_shape
    v = view.clipped(*shape[-2:])
    depth = window_depth(model, shape, options.get("roi_size"), metadata)
    if depth is None:
        region, stride = view_region(source, view, max_edge=max_edge or PREVIEW_EDGE)
        result = _segment_pixels(region, prompts, model, stats, cancel=cancel, **options)
        if not result.complete:
            return None
        labels, probabilities = np.asarray(result.labels), np.asarray(result.probabilities)
    else:
        edge = max_edge or PREVIEW_EDGE_3D
        slab, stride, first = view_slab(source, view, depth, max_edge=edge)
        meta = slab_metadata(metadata, stride, (first, v.rows[0], v.cols[0]))
        result = _segment_pixels(slab, prompts, model, stats, cancel=cancel, metadata=meta,
                                 **options)  # fmt: skip
        if not result.complete:
            return None
        k = int(v.plane) - first  # type: ignore[arg-type]  # a volume's view has a plane
        labels = np.asarray(result.labels[k])
        probabilities = np.asarray(result.probabilities[:, k])
    return Preview(v, stride, labels, probabilities)


def _segment_pixels(
    pixels: np.ndarray,
    prompts: Sequence[str],
    model: Any,
    stats: IntensityStats,
    *,
    metadata: dict | None = None,
    **options: Any,
) -> Any:
    """Segment pixels read from an image (channels last, as :meth:`ImageSource.read` gives
    them) with the whole image's ``stats``, in memory and without a report; with
    ``metadata`` (physical metadata of these pixels), as an :class:`ImageSource` carrying it."""
    from .api import segment

    channels = pixels.shape[-1] > 1
    data = pixels if channels else pixels[..., 0]
    channel_axis = -1 if channels else None
    image: Any = data
    if metadata is not None:
        image = ImageSource(data, channel_axis, name="preview", metadata=metadata)
    return segment(image, list(prompts), model=model, stats=stats, channel_axis=channel_axis,
                   report=False, **options)  # fmt: skip


def entropy(probabilities: np.ndarray) -> np.ndarray:
    """Binary entropy (bits, 0..1) of the least certain prompt at every pixel."""
    p = np.clip(np.asarray(probabilities, dtype=np.float32), 1e-6, 1 - 1e-6)
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return h.max(axis=0)


@dataclass(frozen=True)
class Uncertain:
    """Where the model is least sure: a plane (volumes) and a square region in it, with the
    region's mean entropy."""

    plane: int | None
    rows: tuple[int, int]
    cols: tuple[int, int]
    entropy: float


def most_uncertain(probabilities: Any, *, tile: int = 256, stride: int = 1) -> Uncertain:
    """The plane and ``tile`` x ``tile`` region with the highest mean entropy.

    Parameters
    ----------
    probabilities : (P, [Z,] Y, X) array-like
        Probabilities in [0, 1] (a coarse pyramid level is enough: pass its ``stride``).
    tile : int
        Region edge, in full-resolution pixels.
    stride : int
        Full-resolution pixels per pixel of ``probabilities`` (along Y and X).
    """
    shape = tuple(int(s) for s in probabilities.shape)
    volume = len(shape) == 4
    planes = range(shape[1]) if volume else [None]
    step = max(1, tile // stride)
    best = Uncertain(None, (0, 0), (0, 0), -1.0)
    for z in planes:
        p = np.asarray(probabilities[:, z] if volume else probabilities[...])
        h = entropy(p)
        rows, cols = math.ceil(h.shape[0] / step), math.ceil(h.shape[1] / step)
        padded = np.full((rows * step, cols * step), np.nan, np.float32)
        padded[: h.shape[0], : h.shape[1]] = h
        means = np.nanmean(padded.reshape(rows, step, cols, step), axis=(1, 3))
        i, j = np.unravel_index(int(np.nanargmax(means)), means.shape)
        if means[i, j] > best.entropy:
            r0, c0 = int(i) * step * stride, int(j) * step * stride
            best = Uncertain(
                z, (r0, r0 + step * stride), (c0, c0 + step * stride), float(means[i, j])
            )
    return best


def scan_uncertainty(
    source: ImageSource,
    prompts: Sequence[str],
    *,
    model: Any,
    stats: IntensityStats,
    max_edge: int = 256,
    max_planes: int = 64,
    metadata: dict | None = None,
    **options: Any,
) -> Uncertain:
    """Where the model is least sure over the whole image, found quickly: every plane (up to
    ``max_planes``, evenly spread) strided down to ``max_edge`` pixels and segmented in one
    run, then :func:`most_uncertain`. Coordinates are full-resolution pixels.

    A model with 3D windows (:func:`window_depth`) needs planes that are neighbours at a known
    spacing: it gets every k-th plane (k the smallest that keeps ``max_planes`` at most) as
    one volume, with ``metadata`` (the image's voxel size, units, affine) strided alike, so
    that a MONAI bundle resamples that coarse volume to its own spacing."""

    shape = source.spatial_shape
    height, width = shape[-2:]
    stride = max(1, math.ceil(max(height, width) / max_edge))
    rows, cols = slice(0, height, stride), slice(0, width, stride)
    meta = None
    if len(shape) == 3 and window_depth(model, shape, options.get("roi_size"), metadata):
        step = max(1, math.ceil(shape[0] / max_planes))
        planes = list(range(0, shape[0], step))
        stack = source.read((slice(0, shape[0], step), rows, cols))
        meta = slab_metadata(metadata, stride, (0, 0, 0), z_stride=step)
    elif len(shape) == 3:
        planes = sorted({int(z) for z in np.linspace(0, shape[0] - 1, min(shape[0], max_planes))})
        stack = np.stack([source.read((slice(z, z + 1), rows, cols))[0] for z in planes])
    else:
        planes = [0]
        stack = source.read((rows, cols))
    result = _segment_pixels(stack, prompts, model, stats, metadata=meta, **options)
    probabilities = np.asarray(result.probabilities)
    found = most_uncertain(probabilities, stride=stride)
    if len(shape) == 3:
        return Uncertain(planes[found.plane or 0], found.rows, found.cols, found.entropy)
    return found
