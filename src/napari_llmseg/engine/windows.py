"""Window geometry: where windows go, how they are weighted, which output chunks they touch.

Placement and weights come from MONAI (``dense_patch_slices``, ``compute_importance_map``) so
that the engine reproduces ``monai.inferers.sliding_window_inference`` exactly. What MONAI does
not have is the bookkeeping a streaming engine needs: for every output chunk, how many windows
touch it, so that a chunk can be finalised and written the moment its last window is blended.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from functools import cached_property

import numpy as np


class BlendMode(str, Enum):
    """How overlapping window predictions are combined (MONAI's ``mode``)."""

    GAUSSIAN = "gaussian"
    CONSTANT = "constant"


#: Gaussian sigma as a fraction of the window size (MONAI's default).
SIGMA_SCALE = 0.125


def per_axis(name: str, value: float | Sequence[float], n: int) -> tuple[float, ...]:
    """A scalar repeated ``n`` times, or a sequence of ``n`` numbers, as a tuple of floats.

    Raises
    ------
    ValueError
        For a sequence whose length is not ``n``.
    """
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (float(value),) * n
    items = tuple(float(v) for v in value)
    if len(items) != n:
        raise ValueError(
            f"{name} {tuple(value)!r} has {len(items)} entries for {n}D windows; give one "
            f"number, or one per window axis"
        )
    return items


def resolve_roi(roi: int | Sequence[int | None] | None, plane: tuple[int, ...]) -> tuple[int, ...]:
    """Window size on the tiled axes ``plane``, MONAI's ``fall_back_tuple`` way.

    Entries that are None or <= 0 mean the image's own extent along that axis, as in
    ``monai.inferers.sliding_window_inference``: ``resolve_roi((4, -1, 7), (16, 15, 7))`` is
    ``(4, 15, 7)``; a scalar applies to every axis.

    Raises
    ------
    ValueError
        For a sequence whose length is not ``len(plane)``.
    """
    scalar = roi is None or isinstance(roi, int | np.integer)
    items: tuple = (roi,) * len(plane) if scalar else tuple(roi)  # type: ignore[arg-type]
    if len(items) != len(plane):
        raise ValueError(
            f"roi_size {roi!r} has {len(items)} entries for the {len(plane)} window axes {plane}"
        )
    return tuple(s if r is None or r <= 0 else int(r) for r, s in zip(items, plane, strict=True))


def scan_interval(
    image_size: tuple[int, ...], roi: tuple[int, ...], overlap: float | Sequence[float]
) -> tuple:
    """Step between window starts, computed as MONAI's ``sliding_window_inference`` does.

    ``overlap`` is one fraction for every axis or one per axis, each in [0, 1).
    """
    overlaps = per_axis("overlap", overlap, len(roi))
    steps = []
    for size, r, o in zip(image_size, roi, overlaps, strict=True):
        steps.append(r if r == size else max(int(r * (1 - o)), 1))
    return tuple(steps)


def importance_map(
    roi: tuple[int, ...],
    mode: BlendMode | str,
    sigma_scale: float | Sequence[float] = SIGMA_SCALE,
) -> np.ndarray:
    """Per-pixel weight of a window's prediction, ``roi``-shaped float32, equal to MONAI's.

    ``sigma_scale`` is the gaussian's standard deviation as a fraction of the window size,
    one number or one per axis (MONAI's ``sigma_scale``; unused when ``mode`` is constant).
    """
    from monai.data.utils import compute_importance_map

    sigma = per_axis("sigma_scale", sigma_scale, len(roi))
    w = compute_importance_map(tuple(roi), mode=BlendMode(mode).value, sigma_scale=sigma)
    return w.numpy().astype(np.float32, copy=False)


@dataclass(frozen=True)
class WindowPlan:
    """Windows over an array whose last ``len(roi)`` axes are tiled and leading axes sliced.

    A 2D model on a (Z, Y, X) volume has one leading axis: every Z plane is tiled on its own.
    3D windows on the same volume leave no leading axis: Z is tiled too, and the windows are
    processed in slabs along Z (rows of windows along the first tiled axis), so that only the
    output chunks of one or two slabs are open at a time. Any number of axes works the same
    way (1D windows along the rows of a 2D image, 4D windows on a 4D array).
    Coordinates are those of the unpadded image. Where the image is smaller than ``roi``
    along an axis, windows reach past the image by ``pad_before`` on the low side (MONAI pads
    half before and the rest after); reads there return the pad value and predictions there
    are dropped.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape of the input, leading (slice) axes first.
    roi : tuple of int
        Window size along the last ``len(roi)`` axes (1 to ``len(shape)`` of them), each > 0
        (:func:`resolve_roi` turns MONAI's -1/None entries into sizes).
    overlap : float or tuple of float
        Overlap between neighbouring windows as a fraction of ``roi``, in [0, 1): one for
        every window axis or one per axis (stored as a tuple, one per axis).
    chunks : tuple of int
        Output chunk shape, one entry per axis of ``shape``; leading axes use chunk size 1.
    blend : {"gaussian", "constant"}
        How windows are weighted (MONAI's ``mode``).
    sigma_scale : float or tuple of float
        Gaussian standard deviation as a fraction of the window size, one for every axis or
        one per axis (stored as a tuple).
    """

    shape: tuple[int, ...]
    roi: tuple[int, ...]
    overlap: float | tuple[float, ...]
    chunks: tuple[int, ...]
    blend: str = BlendMode.GAUSSIAN.value
    sigma_scale: float | tuple[float, ...] = SIGMA_SCALE

    def __post_init__(self) -> None:
        if not 1 <= len(self.roi) <= len(self.shape):
            raise ValueError(
                f"roi {self.roi} must have 1 to {len(self.shape)} entries for an input of "
                f"shape {self.shape}"
            )
        if any(isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1
               for r in self.roi):  # fmt: skip
            raise ValueError(
                f"roi {self.roi} must hold window sizes >= 1; resolve MONAI's -1/None entries "
                "with resolve_roi()"
            )
        overlap = per_axis("overlap", self.overlap, len(self.roi))
        if not all(0.0 <= o < 1.0 for o in overlap):
            raise ValueError(f"overlap must be in [0.0, 1.0), got {self.overlap!r}")
        sigma = per_axis("sigma_scale", self.sigma_scale, len(self.roi))
        if not all(math.isfinite(s) and s > 0 for s in sigma):
            raise ValueError(f"sigma_scale must be > 0, got {self.sigma_scale!r}")
        object.__setattr__(self, "roi", tuple(int(r) for r in self.roi))
        object.__setattr__(self, "overlap", overlap)
        object.__setattr__(self, "sigma_scale", sigma)
        object.__setattr__(self, "blend", BlendMode(self.blend).value)
        if len(self.chunks) != len(self.shape):
            raise ValueError(f"chunks {self.chunks} must have one entry per axis of {self.shape}")
        if any(c != 1 for c in self.chunks[: self.n_lead]):
            raise ValueError(f"chunks {self.chunks} must be 1 along the sliced leading axes")

    def weights(self) -> np.ndarray:
        """``(*roi)`` float32 importance map of one window (MONAI's, for ``blend`` and
        ``sigma_scale``)."""
        return importance_map(self.roi, self.blend, self.sigma_scale)

    @property
    def n_lead(self) -> int:
        return len(self.shape) - len(self.roi)

    @property
    def plane(self) -> tuple[int, ...]:
        """Shape of the tiled axes."""
        return self.shape[self.n_lead :]

    @cached_property
    def pad_before(self) -> tuple[int, ...]:
        return tuple(max(r - s, 0) // 2 for s, r in zip(self.plane, self.roi, strict=True))

    @cached_property
    def starts(self) -> tuple[np.ndarray, ...]:
        """Window starts along each tiled axis, in image coordinates (negative when padded)."""
        from monai.data.utils import dense_patch_slices

        padded = tuple(max(s, r) for s, r in zip(self.plane, self.roi, strict=True))
        step = scan_interval(padded, self.roi, self.overlap)
        out = []
        for ax in range(len(self.roi)):
            # MONAI's windows form a product grid, so placing them axis by axis is exact.
            sl = dense_patch_slices((padded[ax],), (self.roi[ax],), (step[ax],))
            out.append(np.array([s[0].start for s in sl], dtype=np.int64) - self.pad_before[ax])
        return tuple(out)

    @cached_property
    def grid(self) -> tuple[int, ...]:
        """Number of output chunks along every axis."""
        return tuple(math.ceil(s / c) for s, c in zip(self.shape, self.chunks, strict=True))

    @cached_property
    def windows_per_chunk(self) -> tuple[np.ndarray, ...]:
        """Per tiled axis: how many window positions along that axis touch each chunk."""
        counts = []
        for ax, (starts, r) in enumerate(zip(self.starts, self.roi, strict=True)):
            c, size = self.chunks[self.n_lead + ax], self.plane[ax]
            lo = np.arange(0, size, c)[:, None]
            hi = np.minimum(lo + c, size)
            counts.append(((starts[None, :] < hi) & (starts[None, :] + r > lo)).sum(axis=1))
        return tuple(counts)

    def window_count(self, chunk: tuple[int, ...]) -> int:
        """Number of windows that touch the output chunk with grid index ``chunk``."""
        tiled = chunk[self.n_lead :]
        return int(np.prod([self.windows_per_chunk[a][i] for a, i in enumerate(tiled)]))

    def window_box(self, pos: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        """Unclipped (start, stop) of the window at grid position ``pos`` along each tiled axis."""
        return tuple(
            (int(self.starts[a][i]), int(self.starts[a][i]) + self.roi[a])
            for a, i in enumerate(pos)
        )

    def chunks_of_window(self, pos: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Tiled-axis chunk indices touched by the window at grid position ``pos``."""
        ranges = []
        for a, (lo, hi) in enumerate(self.window_box(pos)):
            lo, hi = max(lo, 0), min(hi, self.plane[a])
            c = self.chunks[self.n_lead + a]
            ranges.append(range(lo // c, (hi - 1) // c + 1))
        return list(itertools.product(*ranges))

    def open_voxels(self, group: int = 1) -> int:
        """Most output voxels whose chunks are open at once when windows go in :meth:`order`.

        While a row of windows along the first tiled axis is blended, the open chunks are
        those it touches and those an earlier row touched that a later row still will: along
        that axis fewer than ``roi + 2 * chunk`` rows (whole chunks), across the whole extent
        of the other tiled axes, for ``group`` planes at a time. Memory therefore grows with
        the cross-section of the input, not with its length along the first tiled axis.
        """
        c0 = self.chunks[self.n_lead]
        rows = min(c0 * math.ceil((self.roi[0] + c0) / c0), self.plane[0])
        planes = min(group, self.shape[0]) if self.n_lead == 1 else 1
        return planes * rows * math.prod(self.plane[1:])

    @property
    def windows_per_plane(self) -> int:
        return int(np.prod([len(s) for s in self.starts]))

    @property
    def n_planes(self) -> int:
        return int(np.prod(self.shape[: self.n_lead], dtype=np.int64))

    @property
    def n_windows(self) -> int:
        return self.windows_per_plane * self.n_planes

    def chunk_slices(self, chunk: tuple[int, ...]) -> tuple[slice, ...]:
        """Slices of the output array covered by the chunk with grid index ``chunk``."""
        return tuple(
            slice(i * c, min((i + 1) * c, s))
            for i, c, s in zip(chunk, self.chunks, self.shape, strict=True)
        )

    def order(self, group: int = 1) -> np.ndarray:
        """All windows in processing order, as rows ``(*lead_index, *grid_position)``.

        The order keeps the set of unfinished output chunks small. Leading indices are taken
        ``group`` at a time (a group shares one read of the source along the leading axis);
        inside a group, windows go row of windows by row of windows, and within one row plane
        by plane and then along the remaining tiled axes. For a 2D input this is MONAI's own
        row-major order.
        """
        n_rows = [len(s) for s in self.starts]
        rest = list(itertools.product(*[range(n) for n in n_rows[1:]]))
        lead_shape = self.shape[: self.n_lead]
        if self.n_lead == 0:
            leads: list[tuple[int, ...]] = [()]
            groups = [leads]
        elif self.n_lead == 1:
            leads = [(z,) for z in range(lead_shape[0])]
            groups = [leads[i : i + group] for i in range(0, len(leads), group)]
        else:
            # Several leading axes (a 2D model on a 4D stack) are walked plane by plane.
            groups = [[idx] for idx in np.ndindex(*lead_shape)]
        rows = [
            (*lead, r, *tail)
            for grp in groups
            for r in range(n_rows[0])
            for lead in grp
            for tail in rest
        ]
        return np.asarray(rows, dtype=np.int64).reshape(-1, len(self.shape))
