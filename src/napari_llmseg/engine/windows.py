"""Window geometry: where windows go, how they are weighted, which output chunks they touch.

Placement and weights come from MONAI (``dense_patch_slices``, ``compute_importance_map``) so
that the engine reproduces ``monai.inferers.sliding_window_inference`` exactly. What MONAI does
not have is the bookkeeping a streaming engine needs: for every output chunk, how many windows
touch it, so that a chunk can be finalised and written the moment its last window is blended.
"""

from __future__ import annotations

import itertools
import math
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
#: Smallest window edge the engine accepts.
MIN_ROI = 16


def scan_interval(image_size: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> tuple:
    """Step between window starts, computed as MONAI's ``sliding_window_inference`` does."""
    steps = []
    for size, r in zip(image_size, roi, strict=True):
        steps.append(r if r == size else max(int(r * (1 - overlap)), 1))
    return tuple(steps)


def importance_map(roi: tuple[int, ...], mode: BlendMode | str) -> np.ndarray:
    """Per-pixel weight of a window's prediction, ``roi``-shaped float32, equal to MONAI's."""
    from monai.data.utils import compute_importance_map

    w = compute_importance_map(tuple(roi), mode=BlendMode(mode).value, sigma_scale=SIGMA_SCALE)
    return w.numpy().astype(np.float32, copy=False)


@dataclass(frozen=True)
class WindowPlan:
    """Windows over an array whose last ``len(roi)`` axes are tiled and leading axes sliced.

    A 2D model on a (Z, Y, X) volume has one leading axis: every Z plane is tiled on its own.
    Coordinates are those of the unpadded image. Where the image is smaller than ``roi``
    along an axis, windows reach past the image by ``pad_before`` on the low side (MONAI pads
    half before and the rest after); reads there return the pad value and predictions there
    are dropped.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape of the input, leading (slice) axes first.
    roi : tuple of int
        Window size along the last ``len(roi)`` axes.
    overlap : float
        Overlap between neighbouring windows as a fraction of ``roi``, in [0, 1).
    chunks : tuple of int
        Output chunk shape, one entry per axis of ``shape``; leading axes use chunk size 1.
    """

    shape: tuple[int, ...]
    roi: tuple[int, ...]
    overlap: float
    chunks: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.chunks) != len(self.shape):
            raise ValueError(f"chunks {self.chunks} must have one entry per axis of {self.shape}")
        if any(c != 1 for c in self.chunks[: self.n_lead]):
            raise ValueError(f"chunks {self.chunks} must be 1 along the sliced leading axes")

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
