"""Multiscale pyramids: which levels, and how a level is computed from the one below.

Levels halve Y and X until the longer of the two is at most :data:`MIN_EDGE` pixels (about
256 px: what a viewer shows zoomed out). Z is halved too, but only where the spacing allows:
when a voxel is no deeper than it is wide, so that an anisotropic stack (CT slices 1.5 mm
apart with 0.96 mm pixels, a light-sheet stack with 2 um planes and 0.5 um pixels) keeps its
planes until its pixels have caught up. Each level is chunked like the level below.

A level is built chunk by chunk from the level below, reading a block of at most 2 x 2 (x 2)
of its chunks, so memory stays bounded whatever the size of the image:

* labels: the most frequent label of every 2 x 2 (x 2) block, ties going to the larger value
  (a one-pixel-wide object stays visible rather than background winning): every value of a
  level is a value of the level below, none is invented by interpolation;
* object ids: nearest (the block's first pixel), which keeps ids exact;
* probabilities and images: the block's mean, rounded for integer types.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Stop when the longer of Y and X is at most this many pixels.
MIN_EDGE = 256
#: At most this many levels (a 2^31-pixel-wide image needs 24).
MAX_LEVELS = 24


@dataclass(frozen=True)
class Level:
    """One level of a pyramid, in the spatial axes only.

    Attributes
    ----------
    shape : tuple of int
    step : tuple of int
        Reduction from the level below, per axis (1 or 2; all 1 for level 0).
    factor : tuple of int
        Reduction from level 0, per axis.
    chunks : tuple of int
    """

    shape: tuple[int, ...]
    step: tuple[int, ...]
    factor: tuple[int, ...]
    chunks: tuple[int, ...]

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(math.ceil(s / c) for s, c in zip(self.shape, self.chunks, strict=True))

    def chunk_slices(self, index: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(
            slice(i * c, min((i + 1) * c, s))
            for i, c, s in zip(index, self.chunks, self.shape, strict=True)
        )


def plan_levels(
    shape: Sequence[int],
    chunks: Sequence[int],
    scale: Sequence[float] | None = None,
    *,
    min_edge: int = MIN_EDGE,
) -> list[Level]:
    """The levels of a pyramid over a 2D (Y, X) or 3D (Z, Y, X) array.

    Parameters
    ----------
    shape, chunks : sequence of int
        Of level 0.
    scale : sequence of float, optional
        Pixel size per axis; decides whether Z is halved (Z is halved where it is no coarser
        than Y and X). Without it, pixels are cubes.
    """
    shape, chunks = tuple(int(s) for s in shape), tuple(int(c) for c in chunks)
    nd = len(shape)
    if nd not in (2, 3):
        raise ValueError(f"a pyramid needs a 2D or 3D array, got shape {shape}")
    spacing = [float(s) for s in scale][-nd:] if scale is not None else [1.0] * nd
    if len(spacing) != nd or not all(s > 0 and math.isfinite(s) for s in spacing):
        spacing = [1.0] * nd
    levels = [Level(shape, (1,) * nd, (1,) * nd, tuple(min(c, s) for c, s in zip(chunks, shape)))]
    while max(levels[-1].shape[-2:]) > min_edge and len(levels) < MAX_LEVELS:
        prev = levels[-1]
        step = [1] * nd
        step[-1] = step[-2] = 2
        if nd == 3 and prev.shape[0] > 1 and spacing[0] <= min(spacing[1:]):
            step[0] = 2
        spacing = [s * k for s, k in zip(spacing, step, strict=True)]
        new_shape = tuple(math.ceil(s / k) for s, k in zip(prev.shape, step, strict=True))
        factor = tuple(f * k for f, k in zip(prev.factor, step, strict=True))
        levels.append(
            Level(
                new_shape, tuple(step), factor, tuple(min(c, s) for c, s in zip(chunks, new_shape))
            )
        )
    return levels


def _reduced_shape(shape: Sequence[int], step: Sequence[int]) -> tuple[int, ...]:
    lead = len(shape) - len(step)
    return (*shape[:lead], *(-(-n // k) for n, k in zip(shape[lead:], step, strict=True)))


def _block_views(data: np.ndarray, step: Sequence[int]) -> list[np.ndarray]:
    """One strided view per position in a block, each shaped like the reduced array (edges
    shorter than a block repeat their last row); no copy of the data unless it is padded."""
    lead = data.ndim - len(step)
    pad = [(0, 0)] * lead + [(0, (-n) % k) for n, k in zip(data.shape[lead:], step, strict=True)]
    if any(p[1] for p in pad):
        data = np.pad(data, pad, mode="edge")
    views = []
    for offset in np.ndindex(*step):
        index: Any = (Ellipsis, *(slice(o, None, k) for o, k in zip(offset, step, strict=True)))
        views.append(data[index])
    return views


def reduce_labels(data: np.ndarray, step: Sequence[int]) -> np.ndarray:
    """The most frequent value of every block (ties: the larger value)."""
    # Written for speed (building the pyramid is the largest part of a light model's run
    # outside the model): strided views, one pass over the data per candidate value (a label
    # map holds few), counts in uint8 (a block has at most 8 pixels): 2.6 ms instead of 18 ms
    # (np.unique, then per-block counts over a copy of the blocks) for 8 x 512 x 512 labels.
    views = _block_views(data, step)
    values = _candidates(data)
    best = views[0].copy()
    if len(values) == 1:
        return best
    best_count = np.zeros(best.shape, np.uint8)
    count = np.empty(best.shape, np.uint8)
    hit = np.empty(best.shape, bool)
    for value in values:  # increasing: ties go to the larger value
        count[...] = 0
        for view in views:
            np.equal(view, value, out=hit)
            count += hit
        better = count >= best_count
        best[better] = value
        best_count[better] = count[better]
    return best


def _candidates(data: np.ndarray) -> np.ndarray:
    """Increasing candidates for the values of integer ``data``: every value from the smallest
    to the largest when they are few (a label map's classes; a value that does not occur
    counts 0 in every block and never wins), else the distinct values."""
    low, high = int(data.min()), int(data.max())
    if high - low < 64:
        return np.arange(low, high + 1).astype(data.dtype)
    return np.unique(data)


def reduce_nearest(data: np.ndarray, step: Sequence[int]) -> np.ndarray:
    """Every block's first value (keeps object ids exact)."""
    index: Any = (Ellipsis, *(slice(None, None, k) for k in step))
    return np.ascontiguousarray(data[index])


def reduce_mean(data: np.ndarray, step: Sequence[int]) -> np.ndarray:
    """Every block's mean, in the input's dtype (rounded for integers)."""
    total = np.zeros(_reduced_shape(data.shape, step), np.float32)
    for view in _block_views(data, step):  # summed in float32 (as reduce_labels, for speed)
        total += view
    mean = total / np.float32(math.prod(step))
    if data.dtype.kind in "ui":
        return np.rint(mean).astype(data.dtype)
    return mean.astype(data.dtype)


REDUCERS: dict[str, Callable[[np.ndarray, Sequence[int]], np.ndarray]] = {
    "labels": reduce_labels,
    "nearest": reduce_nearest,
    "mean": reduce_mean,
}


def reduce_chunk(
    source: Any,
    target: Any,
    level: Level,
    index: tuple[int, ...],
    reduce: str,
    *,
    lead: int = 0,
    copies: Sequence[Any] = (),
) -> None:
    """Compute chunk ``index`` of ``target`` (a level) from ``source`` (the level below).

    Both arrays have ``lead`` leading non-spatial axes (1 for the prompt axis of
    probabilities), taken whole; ``reduce`` is "labels", "nearest" or "mean". The same chunk
    is also written to every array of ``copies`` (arrays that mirror ``target``).
    """
    out = level.chunk_slices(index)
    region = tuple(
        slice(s.start * k, min(s.stop * k, n))
        for s, k, n in zip(out, level.step, source.shape[lead:], strict=True)
    )
    whole = (slice(None),) * lead
    block = np.asarray(source[(*whole, *region)])
    if not block.any():  # empty (most chunks of a sparse result): zarr stores no chunk
        reduced: Any = 0
    else:
        reduced = REDUCERS[reduce](block, level.step)
    for array in (target, *copies):
        array[(*whole, *out)] = reduced


def build_level(
    source: Any, target: Any, level: Level, reduce: str, *, lead: int = 0
) -> Generator[int, None, int]:
    """Fill ``target`` (a level) from ``source`` (the level below), chunk by chunk; yields the
    number of chunks built so far and returns it."""
    built = 0
    for index in np.ndindex(*level.grid):
        reduce_chunk(source, target, level, index, reduce, lead=lead)
        built += 1
        yield built
    return built
