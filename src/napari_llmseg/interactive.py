"""The interactive loop's core: preview what is on screen, find where the model is unsure.

Nothing here imports napari or Qt: the widget (``_widget.py``) turns the viewer's state into a
:class:`View` and shows what comes back.

* :func:`preview` segments one view (a plane, or the part of it on screen) with the whole
  image's intensity statistics, so that the preview equals that region of a full run
  (windows reaching past the view see padding instead of the neighbouring pixels, the only
  difference near the view's edges). A view larger than :data:`PREVIEW_EDGE` pixels is
  strided down, or read from a pyramid level, so that a zoomed-out preview stays interactive.
* :func:`most_uncertain` finds the plane and region whose probabilities are closest to 0.5
  (highest binary entropy), where a correction teaches the model the most.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .engine.normalize import IntensityStats, compute_stats
from .io.source import ImageSource

#: Longest edge (pixels) a preview segments; larger views are strided down to it.
PREVIEW_EDGE = 1024


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


def image_stats(image: Any, channel_axis: int | None = None) -> IntensityStats:
    """The whole image's intensity statistics (from a sample for large images): what every
    preview of it normalises with."""
    source = image if isinstance(image, ImageSource) else ImageSource(image, channel_axis)
    return compute_stats(source)


def view_region(
    source: ImageSource, view: View, *, max_edge: int = PREVIEW_EDGE
) -> tuple[np.ndarray, int]:
    """Read the view's pixels, channels last, strided so that no edge exceeds ``max_edge``
    -> (region (h, w, C), stride)."""
    shape = source.spatial_shape
    height, width = shape[-2:]
    v = view.clipped(height, width)
    extent = max(v.rows[1] - v.rows[0], v.cols[1] - v.cols[0])
    stride = max(1, math.ceil(extent / max_edge))
    rows, cols = slice(v.rows[0], v.rows[1], stride), slice(v.cols[0], v.cols[1], stride)
    if len(shape) == 3:
        if v.plane is None or not 0 <= v.plane < shape[0]:
            raise ValueError(f"a volume of shape {shape} needs a plane in [0, {shape[0]}), "
                             f"got {v.plane!r}")  # fmt: skip
        region = source.read((slice(v.plane, v.plane + 1), rows, cols))[0]
    else:
        region = source.read((rows, cols))
    return np.ascontiguousarray(region), stride


def preview(
    source: ImageSource,
    prompts: Sequence[str],
    view: View,
    *,
    model: Any,
    stats: IntensityStats,
    cancel: Any = None,
    max_edge: int = PREVIEW_EDGE,
    **options: Any,
) -> Preview | None:
    """Segment the part of ``source`` on screen; None if ``cancel`` was set during it.

    Parameters
    ----------
    source : ImageSource
        The full image (read lazily: only the view is read).
    prompts : sequence of str
    view : View
    model : backend or callable
        Loaded once by the caller and reused for every preview.
    stats : IntensityStats
        The whole image's (:func:`image_stats`).
    **options
        Window options of :func:`napari_llmseg.segment` (``roi_size``, ``overlap``,
        ``threshold``, ``batch_size``...).
    """

    region, stride = view_region(source, view, max_edge=max_edge)
    result = _segment_pixels(region, prompts, model, stats, cancel=cancel, **options)
    if not result.complete:
        return None
    v = view.clipped(*source.spatial_shape[-2:])
    return Preview(v, stride, np.asarray(result.labels), np.asarray(result.probabilities))


def _segment_pixels(
    pixels: np.ndarray, prompts: Sequence[str], model: Any, stats: IntensityStats, **options: Any
) -> Any:
    """Segment pixels read from an image (channels last, as :meth:`ImageSource.read` gives
    them) with the whole image's ``stats``, in memory and without a report."""
    from .api import segment

    channels = pixels.shape[-1] > 1
    data = pixels if channels else pixels[..., 0]
    return segment(data, list(prompts), model=model, stats=stats,
                   channel_axis=-1 if channels else None, report=False, **options)  # fmt: skip


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
    **options: Any,
) -> Uncertain:
    """Where the model is least sure over the whole image, found quickly: every plane (up to
    ``max_planes``, evenly spread) strided down to ``max_edge`` pixels and segmented in one
    run, then :func:`most_uncertain`. Coordinates are full-resolution pixels."""

    shape = source.spatial_shape
    height, width = shape[-2:]
    stride = max(1, math.ceil(max(height, width) / max_edge))
    rows, cols = slice(0, height, stride), slice(0, width, stride)
    if len(shape) == 3:
        planes = sorted({int(z) for z in np.linspace(0, shape[0] - 1, min(shape[0], max_planes))})
        stack = np.stack([source.read((slice(z, z + 1), rows, cols))[0] for z in planes])
    else:
        planes = [0]
        stack = source.read((rows, cols))
    result = _segment_pixels(stack, prompts, model, stats, **options)
    probabilities = np.asarray(result.probabilities)
    found = most_uncertain(probabilities, stride=stride)
    if len(shape) == 3:
        return Uncertain(planes[found.plane or 0], found.rows, found.cols, found.entropy)
    return found
