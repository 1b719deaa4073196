"""The HTML report beside every output: what was found, in the units people read, and how.

:func:`write_report` writes one self-contained HTML file (inline CSS, PNG images as ``data:``
URIs, charts as inline SVG; nothing is fetched from the network) holding

- the input, the output files and the date;
- per prompt: pixels (voxels), % of the image, the area or volume in the units people read
  (:func:`~napari_llmseg.measure.format_size`: mL for CT/MRI, ha and km^2 for GIS, um^3 for
  microscopy; never scientific notation), the number of objects and their median size;
- a histogram of object sizes per prompt, when objects were counted (the instances of an
  ``instances=True`` run, else connected components of labels up to
  :data:`~napari_llmseg.measure.MAX_LABEL_VOXELS`);
- for volumes, the labelled area of every plane along the first axis;
- a thumbnail of one plane at most :data:`THUMBNAIL_SIZE` px wide: the input with the labels
  over it in their label colours (:func:`~napari_llmseg.io.labels.label_color`). For a volume
  it is the plane with the largest labelled area (the middle plane when nothing is labelled):
  a plane shows the labels exactly as they are, where a maximum projection would merge
  objects lying above one another, and reading it costs one plane, not the whole volume;
- the warnings, and the provenance: model, prompts, window and post-processing parameters,
  intensity statistics, version, and the whole run record.

Everything is read in bounded memory: the labels in blocks of at most :data:`BLOCK_VOXELS`
(sizes, the area per plane), the thumbnail plane in bands of rows reduced as they are read
(so a 50 GB zarr-backed result is never loaded).

Where it goes: :func:`report_path` -- ``{stem}_report.html`` beside the output, named like
``{stem}_probabilities.tif``: ``nuclei.zarr`` -> ``nuclei_report.html``, ``water.tif`` ->
``water_report.html``, ``brain.nii.gz`` -> ``brain_report.html``. It is written when a run
with ``out=`` completes (``report=False`` / ``--no-report`` turns it off); an existing file of
that name is replaced only if it is a report written by napari-llmseg, and only with
``overwrite=True`` or ``resume=True``.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import re
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__
from .io._files import atomic_path
from .io.labels import label_color
from .io.source import ImageSource
from .io.write import output_stem
from .measure import (
    MAX_LABEL_VOXELS,
    ClassMeasurement,
    display_unit,
    format_number,
    format_size,
    measure,
    object_sizes,
    physical_size,
    short_unit,
)

if TYPE_CHECKING:
    from .results import SegmentationResult

#: Longest side of the thumbnail, in pixels (the image is reduced by a whole factor).
THUMBNAIL_SIZE = 512
#: Largest block of labels read at once for the area per plane.
BLOCK_VOXELS = 4 * 1024**2
#: Largest band of the thumbnail plane read at once (as float32 values).
BAND_BYTES = 32 * 1024**2
#: What marks a report written by napari-llmseg (the only files a report may replace).
GENERATOR = "napari-llmseg"

_GENERATOR_RE = re.compile(rb'<meta name="generator" content="napari-llmseg[ "]')


# --- where ----------------------------------------------------------------------------------
def report_path(out: str | Path) -> Path:
    """The report of output ``out``: ``{stem}_report.html`` in the same folder.

    ``nuclei.zarr`` -> ``nuclei_report.html``, ``water.tif`` -> ``water_report.html``,
    ``brain.nii.gz`` -> ``brain_report.html``.
    """
    out = Path(out)
    return out.with_name(f"{output_stem(out)}_report.html")


def is_report(path: str | Path) -> bool:
    """Whether ``path`` is a file holding a report written by napari-llmseg."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return _GENERATOR_RE.search(f.read(4096)) is not None


def check_report_target(path: Path, *, overwrite: bool, input_path: Path | None = None) -> None:
    """Refuse a report target that is a folder, overlaps the input, or exists and may not be
    replaced: only a report of ours may be, and only with ``overwrite``.

    Raises
    ------
    ValueError
        If ``path`` does not end in ``.html`` or overlaps ``input_path``.
    FileExistsError
        If ``path`` is a folder, a file that is not one of our reports, or a report while
        ``overwrite`` is False.
    """
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(
            f"a report is an HTML file: expected a name ending in .html, got '{path}'"
        )
    if input_path is not None:
        a, b = path.resolve(), input_path.resolve()
        if a == b or b in a.parents:
            raise ValueError(
                f"report '{path}' overlaps the input '{input_path}'; the input is never "
                "written to, choose another output path"
            )
    if path.is_dir():
        raise FileExistsError(f"report '{path}' is a folder; expected a file name")
    if not path.exists():
        return
    if not is_report(path):
        raise FileExistsError(
            f"refusing to overwrite '{path}': it is not a report written by napari-llmseg; "
            "choose another output name, or pass report=False (--no-report)"
        )
    if not overwrite:
        raise FileExistsError(
            f"report '{path}' already exists; pass overwrite=True (--overwrite) to replace it, "
            "or report=False (--no-report)"
        )


def write_report(
    result: SegmentationResult,
    path: str | PathLike,
    *,
    image: Any = None,
    overwrite: bool = False,
) -> Path:
    """Write the HTML report of ``result`` to ``path`` (atomically); returns the path.

    Parameters
    ----------
    result : SegmentationResult
        A complete result (numpy- or zarr-backed, 2D or 3D, with or without instances).
    path : str or Path
        An ``.html`` file.
    image : ImageSource, array-like, str or PathLike, optional
        The segmented image, for the thumbnail: an ImageSource, an array of the result's
        spatial shape (with an optional trailing channel axis), or the path it was read from.
        Without it the thumbnail shows the labels alone.
    overwrite : bool
        Replace an existing report written by napari-llmseg (never any other file).

    Raises
    ------
    ValueError
        For a cancelled run (its labels are partial), a path not ending in ``.html``, or an
        image of another shape.
    FileExistsError
        See :func:`check_report_target`.
    """
    path = Path(path)
    if not result.complete:
        where = f" (complete it with resume=True into '{result.out}')" if result.out else ""
        raise ValueError(f"the run was cancelled: its labels are partial, no report{where}")
    check_report_target(path, overwrite=overwrite)
    text = render(collect(result, image=image))
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


# --- what -----------------------------------------------------------------------------------
@dataclass
class ReportData:
    """Everything a report shows, computed from a result (:func:`collect`)."""

    title: str
    shape: tuple[int, ...]
    measurements: list[ClassMeasurement]
    #: Object sizes per label, in the measurements' unit; None when not counted.
    sizes: dict[int, np.ndarray] | None
    #: How objects were found: "instances", "connected components" or "" (not counted).
    objects_from: str
    #: (Z, P + 1) labelled pixels per plane and label value (volumes), else None.
    plane_pixels: np.ndarray | None
    #: Physical area of one pixel of a plane, and its unit ("px" without units).
    pixel_area: float
    area_unit: str
    thumbnail: np.ndarray  # (h, w, 3) uint8
    thumbnail_plane: int | None
    thumbnail_step: int
    thumbnail_has_image: bool
    #: Displayed height / width of one thumbnail pixel (anisotropic pixels).
    aspect: float
    metadata: dict
    files: list[Path] = field(default_factory=list)
    store: Path | None = None
    warnings: list[str] = field(default_factory=list)
    created: str = ""


def collect(result: SegmentationResult, *, image: Any = None) -> ReportData:
    """Measure ``result`` for its report: sizes, objects, area per plane, thumbnail."""
    labels = result.labels
    shape = tuple(int(s) for s in labels.shape)
    names = {int(k): str(v) for k, v in result.label_names.items()}
    geometry = result.metadata.get("source_metadata") or {}
    scale, units = geometry.get("scale"), geometry.get("units")
    objects = result.object_measurements() if result.instances is not None else None
    sizes = object_sizes(labels, names, scale=scale, units=units, objects=objects)
    planes = area_per_plane(labels, max(names)) if len(shape) == 3 and shape[0] > 1 else None
    counts = {i: int(planes[:, i].sum()) for i in names} if planes is not None else None
    measured = measure(labels, names, scale=scale, units=units, sizes=sizes, counts=counts)
    if objects is not None:
        objects_from = "instances"
    elif sizes is not None:
        objects_from = "connected components"
    else:
        objects_from = ""
    plane = _thumbnail_plane(shape, planes)
    source = _image_source(image, shape, result.metadata)
    use = rgb_channels(source.n_channels, geometry.get("band_descriptions")) if source else None
    thumb, step = thumbnail(labels, source, plane=plane, stats=result.stats, channels=use)
    area = physical_size(1, scale, units, 2)
    pixel_area, area_unit = (area[0], area[1]) if area is not None else (1.0, "px")
    aspect = 1.0
    if scale is not None and len(scale) >= 2 and float(scale[-1]) > 0:
        aspect = float(scale[-2]) / float(scale[-1])
    out = (result.metadata.get("output") or {}).get("path")
    title = output_stem(out) if out else str(result.metadata.get("input", "segmentation"))
    return ReportData(
        title=title,
        shape=shape,
        measurements=measured,
        sizes=sizes,
        objects_from=objects_from,
        plane_pixels=planes,
        pixel_area=pixel_area,
        area_unit=area_unit,
        thumbnail=thumb,
        thumbnail_plane=plane,
        thumbnail_step=step,
        thumbnail_has_image=source is not None,
        aspect=aspect,
        metadata=dict(result.metadata),
        files=list(result.files),
        store=result.out,
        warnings=list(result.warnings),
        created=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip(),
    )


def _image_source(image: Any, shape: tuple[int, ...], metadata: Mapping) -> ImageSource | None:
    """``image`` as an ImageSource of spatial shape ``shape``, or None."""
    if image is None:
        return None
    if isinstance(image, (str, Path)):
        from .io.open import open_image

        image = open_image(
            image, channel_axis=metadata.get("channel_axis"), bands=metadata.get("bands")
        )
    if not isinstance(image, ImageSource):
        ndim = len(getattr(image, "shape", ()))
        image = ImageSource(image, channel_axis=-1 if ndim == len(shape) + 1 else None)
    if image.spatial_shape != shape:
        raise ValueError(
            f"image has spatial shape {image.spatial_shape}; the result has {shape} (an image "
            "of the result's shape, with an optional trailing channel axis, is expected)"
        )
    return image


def _thumbnail_plane(shape: tuple[int, ...], planes: np.ndarray | None) -> int | None:
    """The plane with the largest labelled area (the middle one when none is labelled)."""
    if len(shape) == 2:
        return None
    if planes is None or not planes[:, 1:].any():
        return shape[0] // 2
    return int(np.argmax(planes[:, 1:].sum(axis=1)))


def _blocks(shape: tuple[int, ...], limit: int) -> Iterator[tuple[slice, ...]]:
    """Keys of (Z, Y, X) blocks of at most ``limit`` voxels (at least one row): whole planes
    when they are small, bands of rows of one plane when they are not."""
    plane = math.prod(shape[1:])
    if plane <= limit:
        step = max(1, limit // max(plane, 1))
        for z in range(0, shape[0], step):
            yield (slice(z, min(z + step, shape[0])),)
        return
    rows = max(1, limit // max(1, math.prod(shape[2:])))
    for z in range(shape[0]):
        for y in range(0, shape[1], rows):
            yield (slice(z, z + 1), slice(y, min(y + rows, shape[1])))


def area_per_plane(labels: Any, max_label: int, *, limit: int = BLOCK_VOXELS) -> np.ndarray:
    """Labelled pixels of every label value in every plane of a (Z, Y, X) label array.

    Parameters
    ----------
    labels : (Z, Y, X) integer array-like
        numpy, dask or zarr; read in blocks of at most ``limit`` voxels.
    max_label : int
        Largest label value counted.

    Returns
    -------
    (Z, max_label + 1) int64 ndarray
        ``out[z, i]``: pixels of plane ``z`` labelled ``i``; column 0 holds the other pixels
        (background).
    """
    shape = tuple(int(s) for s in labels.shape)
    if len(shape) != 3:
        raise ValueError(f"area_per_plane needs (Z, Y, X) labels, got shape {shape}")
    top = max_label + 1
    out = np.zeros((shape[0], top), np.int64)
    for key in _blocks(shape, limit):
        block = np.asarray(labels[key])
        flat = block.reshape(block.shape[0], -1)
        if top <= 16:  # a comparison per label is 3x faster than bincount's int64 copy
            counts = np.stack([np.count_nonzero(flat == i, axis=1) for i in range(1, top)], 1)
        else:
            nz = flat.shape[0]
            values = np.minimum(flat, top).astype(np.int64) + (np.arange(nz) * (top + 1))[:, None]
            counts = np.bincount(values.ravel(), minlength=nz * (top + 1)).reshape(nz, -1)
            counts = counts[:, 1:top]
        out[key[0], 1:] += counts
        out[key[0], 0] += flat.shape[1] - counts.sum(axis=1)
    return out


# --- thumbnail --------------------------------------------------------------------------------
def _reduce(a: np.ndarray, step: int, ufunc: np.ufunc) -> np.ndarray:
    """Reduce ``step`` x ``step`` cells of the first two axes with ``ufunc`` (ragged edges
    kept)."""
    if step == 1:
        return a
    a = ufunc.reduceat(a, np.arange(0, a.shape[0], step), axis=0)
    return ufunc.reduceat(a, np.arange(0, a.shape[1], step), axis=1)


def _cell_counts(n: int, step: int) -> np.ndarray:
    edges = np.arange(0, n, step)
    return np.diff(np.append(edges, n))


def thumbnail(
    labels: Any,
    image: ImageSource | None = None,
    *,
    plane: int | None = None,
    stats: Any = None,
    channels: list[int] | None = None,
    size: int = THUMBNAIL_SIZE,
) -> tuple[np.ndarray, int]:
    """An RGB picture of one plane: the image with the labels over it, at most ``size`` px.

    The plane is reduced by a whole factor ``step`` (the smallest that brings its longer side
    to at most ``size``), reading bands of rows of at most :data:`BAND_BYTES`: the image by
    averaging, the labels by keeping the largest label of each cell (small objects stay
    visible).

    Parameters
    ----------
    labels : (Y, X) or (Z, Y, X) integer array-like
    image : ImageSource, optional
        The segmented image; without it the labels are drawn on a dark background.
    plane : int, optional
        The plane of a volume to draw (required for 3D labels).
    stats : IntensityStats, optional
        The run's intensity range, used for display when it has one value per channel
        (otherwise the 1st and 99.8th percentiles of the thumbnail are).
    channels : list of int, optional
        The image channels to show as red, green and blue, or one channel as grey (default:
        :func:`rgb_channels`).
    size : int

    Returns
    -------
    rgb : (h, w, 3) uint8 ndarray
    step : int
        The reduction factor.
    """
    shape = tuple(int(s) for s in labels.shape)
    if len(shape) == 3 and plane is None:
        raise ValueError(f"a thumbnail of a volume needs plane=, labels have shape {shape}")
    height, width = shape[-2:]
    step = max(1, math.ceil(max(height, width) / size))
    n_channels = image.n_channels if image is not None else 0
    row_bytes = width * max(4 * n_channels, 8)
    rows = step * max(1, BAND_BYTES // (step * row_bytes))
    cols = _cell_counts(width, step)
    lab_parts, img_parts = [], []
    for y0 in range(0, height, rows):
        ys = slice(y0, min(height, y0 + rows))
        key: tuple[Any, ...] = (ys, slice(None)) if plane is None else (plane, ys, slice(None))
        lab = np.asarray(labels[key])
        lab_parts.append(_reduce(lab, step, np.maximum))
        if image is not None:
            region = (
                (ys, slice(None)) if plane is None else (slice(plane, plane + 1), ys, slice(None))
            )
            px = image.read(region).astype(np.float32)
            px = px[0] if plane is not None else px
            px[~np.isfinite(px)] = 0
            n = np.outer(_cell_counts(px.shape[0], step), cols)[..., None]
            img_parts.append(_reduce(px, step, np.add) / n)
    lab_small = np.concatenate(lab_parts, axis=0)
    if image is None:
        return _overlay(lab_small, None), step
    use = channels if channels is not None else rgb_channels(n_channels)
    base = _display(np.concatenate(img_parts, axis=0), stats, use)
    return _overlay(lab_small, base), step


def rgb_channels(n_channels: int, descriptions: Sequence[str] | None = None) -> list[int]:
    """The channels to show as red, green, blue: the bands described "red", "green" and
    "blue" when there are such (a Landsat scene), else channels 0-2, else channel 0 as grey."""
    names = [str(d).strip().lower() for d in descriptions or []]
    if len(names) == n_channels and all(c in names for c in ("red", "green", "blue")):
        return [names.index(c) for c in ("red", "green", "blue")]
    return [0, 1, 2] if n_channels >= 3 else [0]


def _display(img: np.ndarray, stats: Any, use: list[int]) -> np.ndarray:
    """(h, w, C) intensities -> (h, w, 3) in 0..1, channels ``use`` as RGB (or one as grey)."""
    channels = img.shape[-1]
    x = img[..., use]
    if stats is not None and len(stats.low) == channels:
        low = np.asarray(stats.low, np.float32)[use]
        high = np.asarray(stats.high, np.float32)[use]
    else:
        low = np.percentile(x, 1, axis=(0, 1)).astype(np.float32)
        high = np.percentile(x, 99.8, axis=(0, 1)).astype(np.float32)
    x = np.clip((x - low) / np.where(high > low, high - low, 1), 0, 1)
    return np.repeat(x, 3, axis=-1) if len(use) == 1 else x


def _overlay(labels: np.ndarray, base: np.ndarray | None) -> np.ndarray:
    """Labels in their colours over ``base`` (half transparent inside, opaque outlines), or on
    a dark background."""
    lab = labels.astype(np.int64)
    top = int(lab.max()) if lab.size else 0
    colors = (
        np.array([(0, 0, 0)] + [label_color(i)[:3] for i in range(1, top + 1)], np.float32) / 255
    )
    inside = lab > 0
    if base is None:
        base = np.full((*lab.shape, 3), 0.12, np.float32)
        alpha = inside.astype(np.float32)
    else:
        pad = np.pad(lab, 1, mode="edge")
        edge = (
            (pad[:-2, 1:-1] != lab)
            | (pad[2:, 1:-1] != lab)
            | (pad[1:-1, :-2] != lab)
            | (pad[1:-1, 2:] != lab)
        ) & inside
        alpha = np.where(edge, 0.9, np.where(inside, 0.45, 0.0)).astype(np.float32)
    rgb = base * (1 - alpha[..., None]) + colors[lab] * alpha[..., None]
    return np.round(rgb * 255).astype(np.uint8)


def encode_png(rgb: np.ndarray) -> bytes:
    """A (h, w, 3) uint8 image as PNG bytes (8-bit RGB, zlib; no other dependency)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"encode_png takes an (h, w, 3) uint8 image, got shape {rgb.shape}")
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
        )

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 9))
        + chunk(b"IEND", b"")
    )


# --- charts (inline SVG) ----------------------------------------------------------------------
_W, _H = 460, 210
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 14, 10, 42


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) from ``lo`` to ``hi``."""
    if not hi > lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 12) for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def _cover_ticks(top: float, n: int = 5) -> list[float]:
    """Round ticks from 0 to the first one at or above ``top`` (an axis that holds it)."""
    ticks = _ticks(0, top, n)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    while ticks[-1] < top:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            t = m * 10.0**e
            if lo <= t * (1 + 1e-9) and t <= hi * (1 + 1e-9):
                ticks.append(t)
    if len(ticks) > 7:
        ticks = [t for t in ticks if f"{t:e}".startswith("1")]
    return ticks


def _svg_frame(
    x_ticks: list[tuple[float, str]],
    y_ticks: list[tuple[float, str]],
    x_title: str,
    y_title: str,
    body: str,
    label: str,
) -> str:
    """An SVG chart: ``body`` inside axes with ticks at pixel positions."""
    x0, x1, y0, y1 = _LEFT, _W - _RIGHT, _H - _BOTTOM, _TOP
    parts = [
        f'<svg width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{html.escape(label)}">',
        f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="#fafafa"/>',
    ]
    for y, text in y_ticks:
        parts.append(f'<line x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        parts.append(f'<text x="{x0 - 5}" y="{y + 4:.1f}" text-anchor="end">{text}</text>')
    for x, text in x_ticks:
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y0}" y2="{y0 + 4}" stroke="#555"/>')
        parts.append(f'<text x="{x:.1f}" y="{y0 + 16}" text-anchor="middle">{text}</text>')
    parts.append(body)
    parts.append(f'<line x1="{x0}" x2="{x1}" y1="{y0}" y2="{y0}" stroke="#555"/>')
    parts.append(f'<line x1="{x0}" x2="{x0}" y1="{y0}" y2="{y1}" stroke="#555"/>')
    parts.append(
        f'<text x="{(x0 + x1) / 2:.1f}" y="{_H - 6}" text-anchor="middle">'
        f"{html.escape(x_title)}</text>"
    )
    parts.append(
        f'<text transform="translate(13 {(y0 + y1) / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{html.escape(y_title)}</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)


def histogram(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(counts, edges, log)`` of object sizes: logarithmic bins when the sizes span more
    than a factor of 20, between 5 and 30 bins (about the square root of the count)."""
    v = np.asarray(values, float)
    lo, hi = float(v.min()), float(v.max())
    log = lo > 0 and hi / lo > 20
    bins = int(np.clip(math.ceil(math.sqrt(len(v))), 5, 30))
    if hi == lo:
        edges = np.array([lo * 0.9, hi * 1.1]) if lo > 0 else np.array([lo - 0.5, hi + 0.5])
    elif log:
        edges = np.geomspace(lo, hi, bins + 1)
    else:
        edges = np.linspace(lo, hi, bins + 1)
    counts, edges = np.histogram(v, edges)
    return counts, edges, log


def svg_histogram(sizes: np.ndarray, unit: str, color: tuple[int, ...], what: str) -> str:
    """Histogram of object ``sizes`` (already in ``unit``) as inline SVG."""
    counts, edges, log = histogram(sizes)
    lo, hi = float(edges[0]), float(edges[-1])
    f = np.log10 if log else (lambda a: a)
    span = float(f(hi) - f(lo)) or 1.0

    def x(v: float) -> float:
        return _LEFT + (float(f(v)) - float(f(lo))) / span * (_W - _LEFT - _RIGHT)

    y_ticks = _cover_ticks(max(int(counts.max()), 1), 4)
    if y_ticks[1] != int(y_ticks[1]):  # counts are whole numbers
        y_ticks = [float(t) for t in range(int(y_ticks[-1]) + 1)]
    ymax = y_ticks[-1]

    def y(c: float) -> float:
        return _H - _BOTTOM - c / ymax * (_H - _BOTTOM - _TOP)

    fill = "#{:02x}{:02x}{:02x}".format(*color[:3])
    bars = []
    for c, a, b in zip(counts, edges[:-1], edges[1:], strict=True):
        if c:
            bars.append(
                f'<rect x="{x(a):.1f}" y="{y(c):.1f}" width="{max(x(b) - x(a) - 1, 1):.1f}" '
                f'height="{y(0) - y(c):.1f}" fill="{fill}" stroke="#333" stroke-width="0.5">'
                f"<title>{c} object{'s' if c != 1 else ''}, {format_number(a)} to "
                f"{format_number(b)} {html.escape(unit)}</title></rect>"
            )
    xt = _log_ticks(lo, hi) if log else _ticks(lo, hi, 5)
    return _svg_frame(
        [(x(t), format_number(t)) for t in xt if lo <= t <= hi],
        [(y(t), format_number(t)) for t in y_ticks],
        f"{what} ({unit}{', log scale' if log else ''})",
        "objects",
        "\n".join(bars),
        f"histogram of object sizes in {unit}",
    )


def svg_profile(
    areas: np.ndarray, colors: Sequence[tuple[int, ...]], unit: str, mark: int | None
) -> str:
    """Area per plane, one line per prompt: ``areas`` (Z, P) already in ``unit``."""
    nz = areas.shape[0]
    y_ticks = _cover_ticks(float(areas.max()) if areas.size and areas.max() > 0 else 1.0, 4)
    ymax = y_ticks[-1]

    def x(z: float) -> float:
        return _LEFT + z / max(nz - 1, 1) * (_W - _LEFT - _RIGHT)

    def y(a: float) -> float:
        return _H - _BOTTOM - a / ymax * (_H - _BOTTOM - _TOP)

    lines = []
    if mark is not None:
        lines.append(
            f'<line x1="{x(mark):.1f}" x2="{x(mark):.1f}" y1="{_TOP}" y2="{_H - _BOTTOM}" '
            f'stroke="#888" stroke-dasharray="4 3"><title>thumbnail plane {mark}</title></line>'
        )
    for p in range(areas.shape[1]):
        points = " ".join(f"{x(z):.1f},{y(a):.1f}" for z, a in enumerate(areas[:, p]))
        stroke = "#{:02x}{:02x}{:02x}".format(*colors[p][:3])
        lines.append(
            f'<polyline points="{points}" fill="none" stroke="{stroke}" stroke-width="1.8"/>'
        )
    x_ticks = [t for t in _ticks(0, nz - 1, 5) if t == int(t)]
    return _svg_frame(
        [(x(t), format_number(t)) for t in x_ticks],
        [(y(t), format_number(t)) for t in y_ticks],
        "plane (index along the first axis)",
        f"labelled area ({unit})",
        "\n".join(lines),
        f"labelled area per plane in {unit}",
    )


# --- HTML -----------------------------------------------------------------------------------
_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1d1d1f; margin: 0; background: #fff; }
main { max-width: 1000px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 14px; margin: 0 0 4px; }
.sub { color: #666; margin: 0 0 16px; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e6e6e6; text-align: left;
         vertical-align: top; }
th { background: #f4f4f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { background: none; width: 190px; color: #555; font-weight: 500; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px;
          margin-right: 6px; vertical-align: -1px; border: 1px solid rgba(0,0,0,.35); }
.note { color: #555; font-size: 13px; margin: 4px 0; }
.warn { background: #fff6e0; border: 1px solid #e8c46a; padding: 8px 12px; border-radius: 4px; }
.ok { color: #3b7a3b; }
figure { margin: 8px 0; }
figcaption { color: #555; font-size: 13px; margin-top: 4px; max-width: 640px; }
.charts { display: flex; flex-wrap: wrap; gap: 18px; }
svg { font: 11px system-ui, sans-serif; fill: #333; }
svg text { fill: #333; }
code, pre { font: 12px/1.4 ui-monospace, Menlo, Consolas, monospace; }
pre { background: #f6f6f8; padding: 10px; white-space: pre-wrap; word-break: break-all; }
details summary { cursor: pointer; color: #444; margin-top: 10px; }
img.thumb { border: 1px solid #ccc; background: #000; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def pretty_units(text: str) -> str:
    """Units as typeset for reading: ``13,645 um^3`` -> ``13,645 µm³``, ``km^2`` -> ``km²``.

    Only for text the report makes (sizes, axis titles); the CSV and the command line keep
    plain ASCII units.
    """
    return re.sub(r"\bum\b", "µm", text).replace("^2", "²").replace("^3", "³")


def _hex(label: int) -> str:
    return "#{:02x}{:02x}{:02x}".format(*label_color(label)[:3])


def _size_text(m: ClassMeasurement, value: float | None, word: str) -> str:
    if value is None:
        return "&ndash;"
    if m.unit in ("px", "voxel"):
        return f"{format_number(value)} {word}"
    return _e(pretty_units(format_size(value, m.unit)))


def _results_table(data: ReportData) -> str:
    ndim = len(data.shape)
    word, what, kind = ("voxels", "volume", "Volume") if ndim == 3 else ("pixels", "image", "Area")
    physical = bool(data.measurements) and data.measurements[0].unit not in ("px", "voxel")
    head = ["Prompt", f"{word.capitalize()}", f"% of {what}"]
    head += [kind] if physical else []
    head += ["Objects", "Median object size"]
    rows = []
    for m in data.measurements:
        if m.objects is None:
            count = "not counted"
        else:
            count = f"{m.objects:,}"
        cells = [
            f'<td><span class="swatch" style="background:{_hex(m.label)}"></span>'
            f"{_e(m.prompt)}</td>",
            f'<td class="num">{m.voxels:,}</td>',
            f'<td class="num">{100 * m.fraction:.2f} %</td>',
        ]
        if physical:
            cells.append(f'<td class="num">{_e(pretty_units(format_size(m.size, m.unit)))}</td>')
        cells.append(f'<td class="num">{count}</td>')
        cells.append(f'<td class="num">{_size_text(m, m.median_object_size, word)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(
        f'<th class="num">{h}</th>' if i else f"<th>{h}</th>" for i, h in enumerate(head)
    )
    notes = []
    if not physical:
        notes.append(f"The input has no pixel size with units: sizes are in {word}.")
    if data.objects_from == "instances":
        notes.append("Objects are the instances of the run (one id per object).")
    elif data.objects_from:
        notes.append(
            "Objects are connected components of each prompt's labels (pixels sharing a face)."
        )
    else:
        notes.append(
            f"Objects were not counted: the labels hold more than {MAX_LABEL_VOXELS:,} "
            f"{word}; run with instances=True (--instances) to count them chunk by chunk."
        )
    note = "".join(f'<p class="note">{_e(n)}</p>' for n in notes)
    return f"<table><tr>{header}</tr>\n" + "\n".join(rows) + f"\n</table>\n{note}"


def _thumbnail_html(data: ReportData) -> str:
    h, w = data.thumbnail.shape[:2]
    png = base64.b64encode(encode_png(data.thumbnail)).decode("ascii")
    zoom = min(THUMBNAIL_SIZE / max(w, h * data.aspect, 1), 4.0)
    dw, dh = round(w * zoom), round(h * data.aspect * zoom)
    style = ' style="image-rendering: pixelated"' if zoom > 1 else ""
    where = (
        "the image"
        if len(data.shape) == 2
        else (
            f"plane {data.thumbnail_plane} of {data.shape[0]} along the first axis ("
            + (
                "the plane with the largest labelled area)"
                if data.plane_pixels is not None and data.plane_pixels[:, 1:].any()
                else "the middle plane)"
            )
        )
    )
    step = "full resolution"
    if data.thumbnail_step > 1:
        how = "largest label per cell" + ("; image: mean" if data.thumbnail_has_image else "")
        step = f"reduced {data.thumbnail_step} times (labels: {how})"
    over = "over the input" if data.thumbnail_has_image else "(no image given: labels only)"
    caption = f"{where[0].upper()}{where[1:]}, {step}; labels in their colours {over}."
    return (
        f'<figure><img class="thumb" width="{dw}" height="{dh}"{style} '
        f'alt="thumbnail of the labels" src="data:image/png;base64,{png}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _histograms_html(data: ReportData) -> str:
    if data.sizes is None:
        return '<p class="note">Objects were not counted (see above), so there are no sizes.</p>'
    what, word = ("volume", "voxels") if len(data.shape) == 3 else ("area", "pixels")
    charts = []
    for m in data.measurements:
        sizes = data.sizes.get(m.label, np.zeros(0))
        n = len(sizes)
        title = f'<h3><span class="swatch" style="background:{_hex(m.label)}"></span>'
        title += f"{_e(m.prompt)}: {n:,} object{'s' if n != 1 else ''}"
        if not n:
            charts.append(f"<div>{title}</h3><p class='note'>No objects.</p></div>")
            continue
        median = float(np.median(sizes))
        title += f", median {_size_text(m, median, word)}</h3>"
        if m.unit in ("px", "voxel"):
            factor, shown = 1.0, word
        else:
            factor, shown = display_unit(median, m.unit)
        svg = svg_histogram(
            sizes * factor, pretty_units(shown), label_color(m.label), f"object {what}"
        )
        charts.append(f"<div>{title}{svg}</div>")
    return '<div class="charts">' + "\n".join(charts) + "</div>"


def _profile_html(data: ReportData) -> str:
    planes = data.plane_pixels
    assert planes is not None
    labels = [m.label for m in data.measurements]
    areas = planes[:, labels].astype(float) * data.pixel_area
    factor, unit = display_unit(float(areas.max()) if areas.size else 0.0, data.area_unit)
    if data.area_unit == "px":
        factor, unit = 1.0, "pixels"
    colors = [label_color(i) for i in labels]
    svg = svg_profile(areas * factor, colors, pretty_units(unit), data.thumbnail_plane)
    legend = " ".join(
        f'<span><span class="swatch" style="background:{_hex(m.label)}"></span>'
        f"{_e(m.prompt)}</span>&nbsp;&nbsp;"
        for m in data.measurements
    )
    busiest = planes[:, labels].sum(axis=1)
    geo = data.metadata.get("source_metadata") or {}
    scale, units = geo.get("scale"), geo.get("units")
    apart = ""
    if scale and units and len(scale) == 3 and data.area_unit != "px":
        apart = f"; planes are {format_number(float(scale[0]))} {short_unit(units[0])} apart"
    note = _e(
        pretty_units(
            f"Labelled area of each of the {planes.shape[0]} planes; the dashed line is the "
            f"thumbnail's plane. Most labelled: plane {int(np.argmax(busiest))}{apart}."
        )
    )
    return f"<p>{legend}</p>{svg}<p class='note'>{note}</p>"


def _model_text(model: Any) -> str:
    if not isinstance(model, Mapping):
        return _e(model)
    name = model.get("name", "?")
    rest = ", ".join(f"{k} {v}" for k, v in model.items() if k != "name")
    return f"<b>{_e(name)}</b>" + (f" ({_e(rest)})" if rest else "")


def _crs_name(wkt: str) -> str:
    match = re.search(r'^[A-Z_]+\["([^"]+)"', wkt)
    return match.group(1) if match else wkt[:80]


def _provenance_rows(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, plain text) rows describing how a result was made, from its run record."""
    geo = meta.get("source_metadata") or {}
    rows = [("Prompts", ", ".join(meta.get("prompts", []))), ("Input", str(meta.get("input", "")))]
    if meta.get("input_shape"):
        shape = " x ".join(str(s) for s in meta["input_shape"])
        rows.append(("Input shape, type", f"{shape}, {meta.get('input_dtype', '?')}"))
    if meta.get("channel_axis") is not None:
        rows.append(("Channel axis", str(meta["channel_axis"])))
    if meta.get("bands"):
        rows.append(("Bands", ", ".join(str(b) for b in meta["bands"])))
    if geo.get("scale") is not None:
        units = geo.get("units") or ["(no unit)"] * len(geo["scale"])
        sizes = [f"{format_number(float(s))} {short_unit(u)}" for s, u in zip(geo["scale"], units)]
        rows.append(("Pixel size", pretty_units(" x ".join(sizes))))
    if geo.get("crs_wkt"):
        rows.append(("CRS", _crs_name(str(geo["crs_wkt"]))))
    if geo.get("modality"):
        rows.append(("Modality", str(geo["modality"])))
    if meta.get("roi_size"):
        roi = " x ".join(str(r) for r in meta["roi_size"])
        rows.append(("Window", f"{roi} px, overlap {meta.get('overlap')}, "
                               f"{meta.get('blend')} blending"))  # fmt: skip
    if meta.get("batch_size") is not None:
        batch = str(meta["batch_size"])
        if meta.get("batch_size_used") not in (None, meta["batch_size"]):
            batch += f" (ran with {meta['batch_size_used']} after running out of GPU memory)"
        rows.append(("Batch size", batch))
    if meta.get("threshold") is not None:
        rows.append(("Threshold", str(meta["threshold"])))
    stats = meta.get("stats") or {}
    if meta.get("window"):
        level, width = meta["window"]
        rows.append(("Intensity window", f"CT window level {level:g}, width {width:g} HU"))
    elif stats:
        low = ", ".join(format_number(v) for v in stats.get("low", []))
        high = ", ".join(format_number(v) for v in stats.get("high", []))
        how = "" if stats.get("exact") else ", from a sample"
        rows.append(("Intensity range", f"{low} .. {high} (percentiles {stats.get('p_low')} "
                                        f"and {stats.get('p_high')}{how})"))  # fmt: skip
    rows.append(("Post-processing", _postprocess_text(meta)))
    rows.append(("Instances", "yes" if meta.get("instances") else "no"))
    if meta.get("objects"):
        kept, removed = meta["objects"].get("count", 0), meta["objects"].get("removed", 0)
        rows.append(("Objects", f"{kept:,} kept, {removed:,} removed by min_size"))
    rows.append(("napari-llmseg", str(meta.get("version", __version__))))
    if meta.get("status"):
        rows.append(("Status", str(meta["status"])))
    return rows


def _postprocess_text(meta: Mapping[str, Any]) -> str:
    """``min size 1,020 voxels, smoothing radius 2 px, fill holes, split`` (or ``none``)."""
    post = meta.get("postprocess") or {}
    word = "voxels" if len(meta.get("input_shape") or ()) == 3 else "pixels"
    done = []
    if post.get("min_size"):
        done.append(f"min size {format_number(float(post['min_size']))} {word}")
    if post.get("smooth"):
        done.append(f"smoothing radius {post['smooth']} px")
    if post.get("fill_holes"):
        done.append("fill holes")
    if post.get("split"):
        done.append("split touching objects")
    return ", ".join(done) if done else "none"


def _provenance_html(data: ReportData) -> str:
    meta = data.metadata
    rows = [("Model", _model_text(meta["model"]))] if meta.get("model") else []
    rows += [(k, _e(v)) for k, v in _provenance_rows(meta)]
    body = "\n".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    record = json.dumps(meta, indent=1, default=str)
    return (
        f'<table class="kv">{body}</table>'
        f"<details><summary>Full run record (as stored with the result)</summary>"
        f"<pre>{_e(record)}</pre></details>"
    )


def _files_html(data: ReportData) -> str:
    meta = data.metadata
    rows = [("Input", f"<code>{_e(meta.get('input', ''))}</code>")]
    output = (meta.get("output") or {}).get("path")
    if output:
        rows.append(("Output", f"<code>{_e(output)}</code>"))
    if data.store is not None and (output is None or Path(output) != data.store):
        rows.append(("Working store", f"<code>{_e(data.store)}</code>"))
    if data.files:
        rows.append(("Files written", "<br>".join(f"<code>{_e(f)}</code>" for f in data.files)))
    rows.append(("Report written", _e(data.created)))
    return (
        '<table class="kv">'
        + "\n".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
        + "</table>"
    )


def render(data: ReportData) -> str:
    """The report as one self-contained HTML document."""
    ndim = len(data.shape)
    shape = " x ".join(str(s) for s in data.shape)
    kind = "volume" if ndim == 3 else "image"
    if data.warnings:
        warnings = (
            '<div class="warn"><ul>'
            + "".join(f"<li>{_e(w)}</li>" for w in data.warnings)
            + "</ul></div>"
        )
    else:
        warnings = '<p class="ok">No warnings.</p>'
    sections = [
        f"<h1>napari-llmseg report: {_e(data.title)}</h1>",
        f'<p class="sub">{_e(", ".join(data.metadata.get("prompts", [])))} in a {shape} '
        f"{kind} &middot; {_e(data.created)}</p>",
        _files_html(data),
        "<h2>What was found</h2>",
        _results_table(data),
        "<h2>Warnings</h2>",
        warnings,
        "<h2>Thumbnail</h2>",
        _thumbnail_html(data),
        "<h2>Object sizes</h2>",
        _histograms_html(data),
    ]
    if data.plane_pixels is not None:
        sections += ["<h2>Labelled area per plane</h2>", _profile_html(data)]
    sections += ["<h2>How it was made</h2>", _provenance_html(data)]
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="generator" content="{GENERATOR} {_e(__version__)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>napari-llmseg report: {_e(data.title)}</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )
