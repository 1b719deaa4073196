"""Chunk-local clean-up of semantic labels: smoothing, hole filling, minimum object size.

Every operation here is local: the result at a pixel depends only on a neighbourhood of known
size (the *halo*). Computing it on a chunk extended by that halo and keeping the chunk's own
part therefore gives exactly the result of the same operation on the whole image, which is
what lets post-processing stream chunk by chunk. Smoothing (a morphological opening) is exact
this way; hole filling fills every hole that fits in the chunk plus its halo, in each plane,
and leaves larger holes as they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

#: Default halo for hole filling: holes up to about (chunk + 2 * 64) px across are filled.
FILL_HALO = 64

_UNITS = {
    "nm": 1e-3, "um": 1.0, "µm": 1.0, "micron": 1.0, "micrometer": 1.0, "mm": 1e3,
    "millimeter": 1e3, "cm": 1e4, "m": 1e6, "meter": 1e6,
}  # fmt: skip


@dataclass(frozen=True)
class PostProcess:
    """Options applied to semantic labels before instances are counted.

    Attributes
    ----------
    smooth : int
        Radius in pixels of a morphological opening of every class (0: none), applied in the
        window plane; removes specks and thin protrusions.
    fill_holes : bool
        Fill background enclosed by one class, plane by plane.
    min_size : float
        Objects smaller than this many pixels (voxels) are removed (0: keep all).
    """

    smooth: int = 0
    fill_holes: bool = False
    min_size: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.smooth or self.fill_holes or self.min_size)

    @property
    def halo(self) -> int:
        """Extra pixels around a chunk that make the chunk-local operations exact."""
        return (2 * self.smooth if self.smooth else 0) + (FILL_HALO if self.fill_holes else 0)

    def to_dict(self) -> dict:
        return {"smooth": self.smooth, "fill_holes": self.fill_holes, "min_size": self.min_size}


def _planes(labels: np.ndarray, plane_dims: int):
    """Iterate over the 2D (or plane_dims-D) planes of ``labels`` as writable views."""
    lead = labels.shape[: labels.ndim - plane_dims]
    for idx in np.ndindex(*lead):
        yield labels[idx]


def smooth_labels(labels: np.ndarray, radius: int, plane_dims: int = 2) -> np.ndarray:
    """Morphological opening of every class with a disk of ``radius`` px, plane by plane."""
    from scipy import ndimage
    from skimage.morphology import disk

    if radius <= 0:
        return labels
    footprint = disk(radius) if plane_dims == 2 else None
    out = labels.copy()
    for plane in _planes(out, plane_dims):
        result = np.zeros_like(plane)
        for c in np.unique(plane):
            if c == 0:
                continue
            opened = ndimage.binary_opening(plane == c, structure=footprint)
            result[opened] = c
        plane[...] = result
    return out


def fill_holes(labels: np.ndarray, plane_dims: int = 2) -> np.ndarray:
    """Fill background regions enclosed by a single class, plane by plane."""
    from scipy import ndimage

    out = labels.copy()
    for plane in _planes(out, plane_dims):
        for c in np.unique(plane):
            if c == 0:
                continue
            filled = ndimage.binary_fill_holes(plane == c)
            plane[filled & (plane == 0)] = c
    return out


def _split_size(value: float | int | str) -> tuple[float, str, str | None]:
    """``"20 um^3"`` -> ``(20.0, "um", "3")``; a plain number -> ``(value, "", None)``."""
    if isinstance(value, bool):
        raise ValueError(f"min_size must be a number of pixels or a size, got {value!r}")
    if isinstance(value, (int, float, np.integer, np.floating)):
        if value < 0 or not np.isfinite(value):
            raise ValueError(f"min_size must be a non-negative number, got {value!r}")
        return float(value), "", None
    text = str(value).strip()
    m = re.fullmatch(r"([0-9.eE+-]+)\s*([a-zA-Zµ]*)(?:\^([23]))?", text)
    number = None
    if m:
        try:
            number = float(m.group(1))
        except ValueError:
            number = None
    if m is None or number is None or not np.isfinite(number) or number < 0:
        raise ValueError(
            f"min_size {value!r} is not a size; expected a number of pixels or e.g. "
            "'20 um^3', '0.5 mL'"
        )
    unit = m.group(2)
    if unit not in ("", "px", "pixel", "pixels", "voxel", "voxels") and unit.lower() != "ml":
        if unit not in _UNITS:
            raise ValueError(
                f"unknown unit {unit!r} in min_size {value!r}; use nm, um, mm, cm, m or mL"
            )
    return number, unit, m.group(3)


def check_size(value: float | int | str) -> None:
    """Raise ValueError unless ``value`` is a valid ``min_size`` (before the image is known)."""
    _split_size(value)


def parse_size(
    value: float | int | str, *, scale: tuple | None, units: tuple | None, ndim: int
) -> float:
    """A minimum object size in pixels/voxels, from a number or a string with a unit.

    ``"20 um^3"``, ``"0.5 mL"``, ``"100 px"``, ``"1e3 voxels"``. Physical sizes need the
    image's ``scale`` and ``units``.
    """
    number, unit, power = _split_size(value)
    if unit in ("", "px", "pixel", "pixels", "voxel", "voxels"):
        return number
    if scale is None or units is None:
        raise ValueError(
            f"min_size {value!r} is in physical units, but the image has no physical scale; "
            "give it in pixels (voxels)"
        )
    if unit.lower() == "ml":
        unit, power, number = "mm", "3", number * 1000.0  # 1 mL = 1000 mm^3
    if unit not in _UNITS:
        raise ValueError(
            f"unknown unit {unit!r} in min_size {value!r}; use nm, um, mm, cm, m or mL"
        )
    k = int(power or ndim)
    if k != ndim:
        raise ValueError(f"min_size {value!r} is a {k}D size but the image is {ndim}D")
    image_units = {str(u) for u in units[-ndim:]}
    if len(image_units) != 1 or next(iter(image_units)) not in _UNITS:
        raise ValueError(
            f"min_size {value!r} needs known spatial units, the image has {tuple(units)}"
        )
    to_um = _UNITS[unit] / _UNITS[next(iter(image_units))]  # given unit -> image unit
    pixel = float(np.prod(scale[-ndim:]))
    return number * to_um**ndim / pixel
