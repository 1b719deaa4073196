"""Measurements of a segmentation in physical units, and a short plain-text report.

Per prompt: how many separate objects, their total and median size (area in 2D, volume in
3D) in the image's units, the fraction of the image they cover, and the mean intensity of the
image inside them. Sizes and intensities are accumulated block by block, so a zarr-backed
result is never loaded whole; counting objects needs connected components of the whole
mask, which is done in memory up to ``max_label_voxels`` and skipped (reported as unknown)
above it.

Volumes in mm^3 (NIfTI, DICOM) are also given in millilitres (1 mL = 1000 mm^3).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Largest label array whose objects are counted in memory.
MAX_LABEL_VOXELS = 64 * 1024**2


@dataclass
class ClassMeasurement:
    """Measurements of the pixels labelled with one prompt."""

    label: int
    prompt: str
    voxels: int
    fraction: float
    size: float
    unit: str
    objects: int | None
    median_object_size: float | None
    mean_intensity: float | None


#: Long unit names (napari/pint, OME-Zarr) -> the short names sizes are written with.
_SHORT_UNITS = {
    "micrometer": "um",
    "micron": "um",
    "micrometre": "um",
    "millimeter": "mm",
    "millimetre": "mm",
    "centimeter": "cm",
    "centimetre": "cm",
    "meter": "m",
    "metre": "m",
    "kilometer": "km",
    "nanometer": "nm",
}


def short_unit(unit: str) -> str:
    """``"micrometer"`` -> ``"um"``, ``"millimeter"`` -> ``"mm"``; other units unchanged."""
    return _SHORT_UNITS.get(str(unit), str(unit))


def _unit_power(units: Sequence[str] | None, ndim: int) -> tuple[str, bool]:
    """("um^3", True) for physical units, ("px", False) / ("voxel", False) otherwise."""
    if units:
        names = {str(u) for u in units[-ndim:]}
        if len(names) == 1:
            (u,) = names
            if u not in ("pixel", "px", ""):
                u = short_unit(u)
                return (f"{u}^{ndim}" if ndim > 1 else u), True
    return ("px" if ndim == 2 else "voxel"), False


#: Cubic units -> millilitres per unit.
_ML_PER_UNIT = {"mm^3": 1e-3, "cm^3": 1.0, "m^3": 1e6}


def millilitres(size: float, unit: str) -> float | None:
    """``size`` in mL when ``unit`` is a volume in mm^3, cm^3 or m^3, else None."""
    factor = _ML_PER_UNIT.get(unit)
    return None if factor is None else size * factor


def physical_size(
    voxels: int, scale: Sequence[float] | None, units: Sequence[str] | None, ndim: int
) -> tuple[float, str, float | None] | None:
    """``(size, unit, millilitres)`` of ``voxels`` pixels/voxels, or None without units.

    Parameters
    ----------
    voxels : int
        Number of pixels (2D) or voxels (3D).
    scale, units : sequence, optional
        Pixel size and unit per axis (the last ``ndim`` are used).
    ndim : int
        2 for areas, 3 for volumes.
    """
    if not scale or len(scale) < ndim:
        return None
    unit, physical = _unit_power(units, ndim)
    if not physical:
        return None
    size = voxels * float(np.prod([float(s) for s in scale[-ndim:]]))
    return size, unit, millilitres(size, unit)


@dataclass
class ObjectMeasurement:
    """Measurements of one object (an instance id)."""

    id: int
    prompt: str
    voxels: int
    size: float
    unit: str
    centroid: tuple[float, ...]
    mean_intensity: float | None


def _blocks(shape: tuple[int, ...]):
    step = max(1, (16 * 1024**2) // max(1, math.prod(shape[1:])))
    for z in range(0, shape[0], step):
        yield slice(z, min(z + step, shape[0]))


def measure_objects(
    instances: Any,
    instance_classes: Mapping[int, str],
    *,
    image: Any = None,
    scale: Sequence[float] | None = None,
    units: Sequence[str] | None = None,
) -> list[ObjectMeasurement]:
    """Size, centroid (in physical coordinates when ``scale`` is given) and mean intensity of
    every object of an instance label array, read block by block."""
    shape = tuple(int(s) for s in instances.shape)
    ndim = len(shape)
    unit, physical = _unit_power(units, ndim)
    spacing = np.asarray(scale[-ndim:] if scale is not None and physical else [1.0] * ndim)
    n = max((int(i) for i in instance_classes), default=0) + 1
    counts = np.zeros(n, dtype=np.int64)
    sums = np.zeros(n)
    coords = np.zeros((ndim, n))
    for zs in _blocks(shape):
        block = np.asarray(instances[zs]).astype(np.int64).ravel()
        inside = block < n
        ids = block[inside]
        counts += np.bincount(ids, minlength=n)
        grid = np.indices(tuple(zs.stop - zs.start if a == 0 else s for a, s in enumerate(shape)))
        for a in range(ndim):
            c = grid[a].ravel()[inside] + (zs.start if a == 0 else 0)
            coords[a] += np.bincount(ids, weights=c, minlength=n)
        if image is not None:
            img = np.asarray(image[zs], dtype=np.float64)
            if img.ndim == ndim + 1:
                img = img.mean(axis=-1)
            sums += np.bincount(ids, weights=img.ravel()[inside], minlength=n)
    pixel = float(np.prod(spacing))
    out = []
    for i in sorted(int(k) for k in instance_classes):
        c = max(counts[i], 1)
        out.append(
            ObjectMeasurement(
                id=i,
                prompt=str(instance_classes[i]),
                voxels=int(counts[i]),
                size=float(counts[i] * pixel),
                unit=unit,
                centroid=tuple(float(coords[a, i] / c * spacing[a]) for a in range(ndim)),
                mean_intensity=float(sums[i] / c) if image is not None and counts[i] else None,
            )
        )
    return out


def object_sizes(
    labels: Any,
    label_names: Mapping[int, str],
    *,
    scale: Sequence[float] | None = None,
    units: Sequence[str] | None = None,
    max_label_voxels: int = MAX_LABEL_VOXELS,
    objects: Sequence[ObjectMeasurement] | None = None,
) -> dict[int, np.ndarray] | None:
    """The size of every object of every label, or None when they cannot be counted.

    Parameters
    ----------
    labels : (Y, X) or (Z, Y, X) integer array-like
        0 is background, ``i`` is ``label_names[i]``.
    label_names : mapping of int to str
    scale, units : sequence, optional
        Pixel size and unit per axis; sizes are in pixels (voxels) without units.
    max_label_voxels : int
        Without ``objects``, objects are the connected components of each label, found in
        memory: above this many voxels they are not counted (None is returned).
    objects : sequence of ObjectMeasurement, optional
        The objects of an instance segmentation (:func:`measure_objects`), grouped by prompt.

    Returns
    -------
    dict of int to (N,) float64 ndarray, or None
        ``{label: sizes}`` in the unit of :func:`measure` (one entry per object).
    """
    ids = sorted(int(i) for i in label_names)
    if objects is not None:
        by_name: dict[str, list[float]] = {}
        for o in objects:
            by_name.setdefault(o.prompt, []).append(o.size)
        return {i: np.asarray(by_name.get(str(label_names[i]), []), float) for i in ids}
    shape = tuple(int(s) for s in labels.shape)
    if math.prod(shape) > max_label_voxels:
        return None
    from scipy import ndimage

    ndim = len(shape)
    _, physical = _unit_power(units, ndim)
    pixel = float(np.prod(scale[-ndim:])) if scale is not None and physical else 1.0
    full = np.asarray(labels[...])
    out = {}
    for i in ids:
        comp, n = ndimage.label(full == i)
        out[i] = np.bincount(comp.ravel(), minlength=n + 1)[1:].astype(float) * pixel
    return out


def measure(
    labels: Any,
    label_names: Mapping[int, str],
    *,
    image: Any = None,
    scale: Sequence[float] | None = None,
    units: Sequence[str] | None = None,
    max_label_voxels: int = MAX_LABEL_VOXELS,
    objects: Sequence[ObjectMeasurement] | None = None,
    sizes: Mapping[int, np.ndarray] | None = None,
    counts: Mapping[int, int] | None = None,
) -> list[ClassMeasurement]:
    """Measure every labelled class of ``labels``.

    Parameters
    ----------
    labels : (Y, X) or (Z, Y, X) integer array-like
        0 is background, ``i`` is ``label_names[i]``; numpy, dask or zarr.
    label_names : mapping of int to str
        Names of the labels to measure.
    image : array-like, optional
        Intensity image of the same spatial shape (a trailing channel axis is averaged).
    scale : sequence of float, optional
        Physical size of a pixel along each axis (napari's layer ``scale``).
    units : sequence of str, optional
        Unit of each axis (napari's layer ``units``); sizes are in pixels without them.
    objects : sequence of ObjectMeasurement, optional
        Per-object measurements of an instance segmentation (:func:`measure_objects`); object
        counts and median sizes then come from them instead of connected components.
    sizes : mapping of int to ndarray, optional
        The object sizes of every label, as :func:`object_sizes` gives them; saves finding the
        objects again.
    counts : mapping of int to int, optional
        Pixels (voxels) of every label, already counted (e.g. summed from
        :func:`napari_llmseg.report.area_per_plane`); without ``image`` the labels are then
        not read again.
    """
    shape = tuple(int(s) for s in labels.shape)
    ndim = len(shape)
    unit, physical = _unit_power(units, ndim)
    pixel = float(np.prod(scale[-ndim:])) if scale is not None and physical else 1.0
    ids = sorted(int(i) for i in label_names)
    if counts is not None and image is None:  # counted already: nothing to read
        tally, blocks = {i: int(counts[i]) for i in ids}, []
    else:
        tally, blocks = dict.fromkeys(ids, 0), list(_blocks(shape))
    sums = dict.fromkeys(ids, 0.0)
    for zs in blocks:
        block = np.asarray(labels[zs])
        flat = block.ravel()
        top = max(ids) + 1
        bc = np.bincount(flat[flat < top], minlength=top)
        for i in ids:
            tally[i] += int(bc[i])
        if image is not None:
            img = np.asarray(image[zs], dtype=np.float64)
            if img.ndim == block.ndim + 1:
                img = img.mean(axis=-1)
            sb = np.bincount(flat[flat < top], weights=img.ravel()[flat < top], minlength=top)
            for i in ids:
                sums[i] += float(sb[i])
    if sizes is None:
        sizes = object_sizes(labels, label_names, scale=scale, units=units,
                             max_label_voxels=max_label_voxels, objects=objects)  # fmt: skip
    per_class: dict[int, tuple[int | None, float | None]] = {}
    if sizes is not None:
        for i in ids:
            found = sizes.get(i, np.zeros(0))
            per_class[i] = (len(found), float(np.median(found)) if len(found) else None)
    total = math.prod(shape)
    out = []
    for i in ids:
        n_obj, med = per_class.get(i, (None, None))
        out.append(
            ClassMeasurement(
                label=i,
                prompt=str(label_names[i]),
                voxels=tally[i],
                fraction=tally[i] / total if total else 0.0,
                size=tally[i] * pixel,
                unit=unit,
                objects=n_obj,
                median_object_size=med,
                mean_intensity=(sums[i] / tally[i]) if image is not None and tally[i] else None,
            )
        )
    return out


def format_number(value: float) -> str:
    """A number for people: thousands separators, about four significant digits, never
    scientific notation (``1,737``, ``24.4``, ``0.0031``)."""
    v = float(value)
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    magnitude = math.floor(math.log10(abs(v)))
    decimals = max(0, 3 - magnitude)
    text = f"{v:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_size(size: float, unit: str) -> str:
    """A physical size in the unit its users read: mL for volumes in mm^3, cm^3 or m^3 (mm^3
    below 0.1 mL); hectares or km^2 for areas in m^2 (m^2 below 0.1 ha); otherwise ``unit``."""
    ml = millilitres(size, unit)
    if ml is not None and (ml >= 0.1 or unit != "mm^3"):
        return f"{format_number(ml)} mL"
    if unit == "m^2" and size >= 1e3:
        if size >= 1e6:
            return f"{format_number(size / 1e4)} ha ({format_number(size / 1e6)} km^2)"
        return f"{format_number(size / 1e4)} ha"
    if unit == "km^2":
        return f"{format_number(size * 100)} ha" if size < 1 else f"{format_number(size)} km^2"
    return f"{format_number(size)} {unit}"


def report(measurements: Sequence[ClassMeasurement], *, ndim: int = 3) -> str:
    """One line per prompt, e.g. ``brain: 1,737,193 voxels (24.44 % of the volume) =
    1,737 mL, 99 objects (median 2 mm^3)``."""
    what, word = ("volume", "voxels") if ndim == 3 else ("image", "pixels")
    lines = []
    for m in measurements:
        line = f"{m.prompt}: {m.voxels:,} {word} ({100 * m.fraction:.2f} % of the {what})"
        physical = m.unit not in ("px", "voxel")
        if physical:
            line += f" = {format_size(m.size, m.unit)}"
        if m.objects is None:
            line += ", objects not counted: too large (use instances=True / --instances)"
        else:
            line += f", {m.objects:,} object{'s' if m.objects != 1 else ''}"
            if m.median_object_size is not None and m.objects:
                median = (format_size(m.median_object_size, m.unit) if physical
                          else f"{format_number(m.median_object_size)} {word}")  # fmt: skip
                line += f" (median {median})"
        if m.mean_intensity is not None:
            line += f", mean intensity {format_number(m.mean_intensity)}"
        lines.append(line)
    return "\n".join(lines)


def display_unit(value: float, unit: str) -> tuple[float, str]:
    """``(factor, unit)`` to show sizes around ``value`` (in ``unit``) as people read them.

    The rule of :func:`format_size`, for a whole axis or column at once: mL for volumes of at
    least 0.1 mL, hectares (km^2 from 1 km^2) for areas in m^2 from 0.1 ha, cm^2 for slice
    areas in mm^2 from 1 cm^2; otherwise ``unit`` itself (factor 1).
    """
    ml = _ML_PER_UNIT.get(unit)
    if ml is not None and (value * ml >= 0.1 or unit != "mm^3"):
        return ml, "mL"
    if unit == "m^2" and value >= 1e6:
        return 1e-6, "km^2"
    if unit == "m^2" and value >= 1e3:
        return 1e-4, "ha"
    if unit == "mm^2" and value >= 100:
        return 1e-2, "cm^2"
    return 1.0, unit


def _digits(value: float) -> float:
    """``value`` to 15 significant digits: a converted size without float noise (1.44, not
    1.4400000000000002)."""
    return float(f"{value:.15g}")


def _column_unit(unit: str) -> str:
    """A unit as a column-name suffix: ``um^3`` -> ``um3``, ``voxel`` -> ``voxels``."""
    return {"px": "px", "voxel": "voxels"}.get(unit, unit.replace("^", ""))


def csv_rows(measurements: Sequence[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """Column names and rows of :func:`to_csv`: one value per cell, units in the names.

    ``size`` and ``median_object_size`` become ``size_{unit}`` (``size_um3``, ``size_mm3``,
    ``size_m2``, ``size_voxels``), plus ``size_mL`` for volumes in mm^3, cm^3 or m^3 and
    ``size_ha`` for areas in m^2; ``centroid`` becomes ``centroid_z``, ``centroid_y``,
    ``centroid_x`` with the length unit (``centroid_z_um``; ``_px`` without units).

    Raises
    ------
    ValueError
        If the measurements are in different units (they come from different images).
    """
    rows = [asdict(m) for m in measurements]
    if not rows:
        return ["label"], []
    units = sorted({r["unit"] for r in rows})
    if len(units) > 1:
        raise ValueError(
            f"measurements in different units ({', '.join(units)}) cannot share CSV columns; "
            "write each image's measurements to its own file"
        )
    (unit,) = units
    suffix = _column_unit(unit)
    length = suffix.rstrip("0123456789") if suffix not in ("px", "voxels") else "px"
    extra = {"mL": millilitres(1.0, unit), "ha": 1e-4 if unit == "m^2" else None}
    out = []
    for row in rows:
        flat: dict[str, Any] = {}
        for key, value in row.items():
            if key == "unit":
                continue
            if key in ("size", "median_object_size"):
                flat[f"{key}_{suffix}"] = value
                for name, factor in extra.items():
                    if factor is not None:
                        flat[f"{key}_{name}"] = None if value is None else _digits(value * factor)
            elif key == "centroid":
                axes = list("zyx"[-len(value) :]) if len(value) <= 3 else range(len(value))
                for axis, c in zip(axes, value):
                    flat[f"centroid_{axis}_{length}"] = c
            else:
                flat[key] = value
        out.append(flat)
    return list(out[0]), out


def to_csv(measurements: Sequence[Any], path: str | Path) -> Path:
    """Write measurements (per prompt or per object) as CSV, one row each; returns the path.

    One value per cell (no tuples), units in the column names; see :func:`csv_rows`. Empty
    cells are values that were not measured (objects not counted, no intensity image).
    """
    path = Path(path)
    names, rows = csv_rows(measurements)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    return path
