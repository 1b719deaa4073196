"""Intensity statistics computed once for a whole input, never per window.

Per-window min/max or percentile normalisation makes the same structure look different in
neighbouring windows and leaves seams. The engine computes robust percentiles once, from a
deterministic random sample of blocks spread over the whole input, and hands them to the
backend with every batch.

CT windowing replaces the percentiles with a fixed range: a window of level ``L`` and width
``W`` maps ``L - W/2 .. L + W/2`` Hounsfield units to the model's input range, for every
backend, because every backend's ``preprocess`` normalises with these statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..io.source import ImageSource

#: Inputs with at most this many values are measured exactly, without sampling.
EXACT_LIMIT = 1 << 24

#: CT window presets, name -> (level, width) in Hounsfield units.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "bone": (400.0, 1800.0),
    "soft-tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "brain": (40.0, 80.0),
}


@dataclass(frozen=True)
class IntensityStats:
    """Robust intensity range of an input, per channel.

    Attributes
    ----------
    low, high : tuple of float
        The ``p_low`` and ``p_high`` percentiles of the finite values, one per channel.
    p_low, p_high : float
        Percentiles used.
    n_values : int
        Number of values per channel the percentiles were taken from.
    exact : bool
        True when every value of the input was used.
    window : tuple of float, optional
        ``(level, width)`` when the range is a fixed CT window rather than percentiles; then
        ``p_low``, ``p_high`` and ``n_values`` are unused.
    moments : tuple of dict, optional
        Exact sums over every valid value, one dict per channel (:func:`compute_moments`),
        for models that normalise by the image's own mean, deviation or extremes (MONAI's
        ``NormalizeIntensity``, ``ScaleIntensity``); None unless asked for.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    p_low: float = 1.0
    p_high: float = 99.8
    n_values: int = 0
    exact: bool = True
    window: tuple[float, ...] | None = None
    moments: tuple[dict, ...] | None = None

    @classmethod
    def from_window(cls, level: float, width: float, n_channels: int) -> IntensityStats:
        """Fixed statistics of a CT window: ``level -/+ width / 2`` for every channel."""
        low, high = level - width / 2, level + width / 2
        return cls(
            (low,) * n_channels,
            (high,) * n_channels,
            n_values=0,
            exact=True,
            window=(float(level), float(width)),
        )

    def scale(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (offset, 1 / range): ``(x - offset) * inv`` maps low..high to 0..1."""
        low = np.asarray(self.low, dtype=np.float32)
        rng = np.asarray(self.high, dtype=np.float32) - low
        return low, (1.0 / np.where(rng > 0, rng, 1.0)).astype(np.float32)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IntensityStats:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**fields)


def parse_window(window: str | Sequence[float]) -> tuple[float, float]:
    """``"bone"``, ``"40,400"`` or ``(40, 400)`` -> ``(level, width)``.

    Raises
    ------
    ValueError
        For an unknown preset, text that is not ``"L,W"``, or a width that is not positive.
    """
    presets = ", ".join(WINDOW_PRESETS)
    if isinstance(window, str):
        text = window.strip().lower()
        if text in WINDOW_PRESETS:
            return WINDOW_PRESETS[text]
        parts = text.split(",")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 2:
            raise ValueError(
                f"window must be a preset ({presets}) or 'LEVEL,WIDTH' in HU, got {window!r}"
            )
    else:
        try:
            values = [float(v) for v in window]
        except (TypeError, ValueError):
            values = []
        if len(values) != 2:
            raise ValueError(
                f"window must be a preset ({presets}) or (level, width) in HU, got {window!r}"
            )
    level, width = values
    if not (math.isfinite(level) and math.isfinite(width)) or width <= 0:
        raise ValueError(
            f"window width must be a positive number and the level finite, got level={level}, "
            f"width={width}"
        )
    return level, width


def _sample_blocks(source: ImageSource, max_blocks: int) -> list[tuple[slice, ...]]:
    shape = source.spatial_shape
    block = source.chunks or tuple([1] * (len(shape) - 2) + [256, 256])
    # Keep each block modest even when the storage chunks are huge (e.g. whole planes).
    block = tuple(min(b, s) for b, s in zip(block, shape, strict=True))
    while math.prod(block) > (1 << 20):
        ax = int(np.argmax(block))
        block = tuple(b // 2 if i == ax else b for i, b in enumerate(block))
    grid = tuple(math.ceil(s / b) for s, b in zip(shape, block, strict=True))
    n = math.prod(grid)
    rng = np.random.default_rng(0)  # fixed seed: the same input always gives the same stats
    picks = np.sort(rng.choice(n, size=min(n, max_blocks), replace=False))
    regions = []
    for flat in picks:
        idx = np.unravel_index(int(flat), grid)
        regions.append(
            tuple(slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(idx, block, shape))
        )
    return regions


def compute_stats(
    source: ImageSource,
    *,
    p_low: float = 1.0,
    p_high: float = 99.8,
    max_blocks: int = 48,
    max_values: int = 2_000_000,
    moments: bool = False,
) -> IntensityStats:
    """Robust per-channel percentiles of ``source``, from all of it or a sample of blocks.

    Non-finite values (NaN, inf) and pixels without data (:meth:`ImageSource.invalid`) are
    ignored. A channel with no valid values gets the range (0, 1). With ``moments=True``,
    also the exact sums of :func:`compute_moments` (one more pass over the whole input).
    """
    shape = source.spatial_shape
    exact = math.prod(shape) <= EXACT_LIMIT
    if exact:
        lead = shape[0] if len(shape) == 3 else 1
        step = max(1, lead // 8)
        regions: list[tuple[slice, ...]] = [
            (slice(z, min(z + step, lead)),) + (slice(None),) * 2
            if len(shape) == 3
            else (slice(None),) * 2
            for z in range(0, lead, step)
        ]
    else:
        regions = _sample_blocks(source, max_blocks)
    per_channel: list[list[np.ndarray]] = [[] for _ in range(source.n_channels)]
    for region in regions:
        for c, v in enumerate(_valid_values(source, region)):
            per_channel[c].append(v)
    lows, highs, counts = [], [], []
    for values in per_channel:
        if not values or sum(x.size for x in values) == 0:
            counts.append(0)
            lows.append(0.0)
            highs.append(1.0)
            continue
        v = values[0] if len(values) == 1 else np.concatenate(values)  # no copy of one block
        if v.size > max_values and not exact:
            v = v[:: math.ceil(v.size / max_values)]
        counts.append(int(v.size))
        lo, hi = percentiles(v, (p_low, p_high))
        lows.append(lo)
        highs.append(hi)
    sums = compute_moments(source) if moments else None
    return IntensityStats(tuple(lows), tuple(highs), p_low, p_high, min(counts), exact,
                          moments=sums)  # fmt: skip


def _valid_values(source: ImageSource, region: tuple[slice, ...]) -> list[np.ndarray]:
    """Per channel, the finite values of ``region``'s pixels that carry data (1-D arrays);
    float64 values beyond the float32 range are refused (:func:`check_float_range`)."""
    data = source.read(region)
    bad = source.invalid(region, data)
    block = data.reshape(-1, source.n_channels)
    if bad is not None:
        block = block[~bad.reshape(-1)]
    check_float_range(block, source.name)
    out = []
    for c in range(source.n_channels):
        v = block[:, c]
        out.append(v[np.isfinite(v)] if v.dtype.kind == "f" else v)
    return out


#: Values read at a time by :func:`compute_moments` (bounded memory on any input).
MOMENT_BLOCK = 1 << 22


def compute_moments(source: ImageSource) -> tuple[dict, ...]:
    """Exact per-channel sums over every valid value of ``source``, read slab by slab.

    Returns one dict per channel: ``n``, ``sum``, ``sumsq``, ``min``, ``max`` over the
    finite values of pixels with data, and the same with ``nz_`` over the non-zero ones
    (MONAI's ``nonzero=True``). Sums are float64; ``min``/``max`` are None without values.
    Mean and deviation follow (:func:`moment_mean_std`), and so do the extremes a rescaling
    needs, for the whole input at once rather than per window (per-window statistics leave
    seams, see the module docstring).
    """
    shape = source.spatial_shape
    per_row = max(1, math.prod(shape[1:]) * source.n_channels)
    step = max(1, MOMENT_BLOCK // per_row)
    totals: list[dict[str, Any]] = [
        dict.fromkeys(("n", "sum", "sumsq", "nz_n", "nz_sum", "nz_sumsq"), 0.0)
        | dict.fromkeys(("min", "max", "nz_min", "nz_max"))
        for _ in range(source.n_channels)
    ]
    for start in range(0, shape[0], step):
        region = (slice(start, min(start + step, shape[0])),) + (slice(None),) * (len(shape) - 1)
        for total, v in zip(totals, _valid_values(source, region), strict=True):
            _accumulate(total, "", v)
            _accumulate(total, "nz_", v[v != 0])
    return tuple(t | {"n": int(t["n"]), "nz_n": int(t["nz_n"])} for t in totals)


def _accumulate(total: dict, prefix: str, values: np.ndarray) -> None:
    if values.size == 0:
        return
    v = values.astype(np.float64, copy=False)
    total[prefix + "n"] += int(v.size)
    total[prefix + "sum"] += float(v.sum())
    total[prefix + "sumsq"] += float(np.dot(v, v))
    lo, hi = float(v.min()), float(v.max())
    total[prefix + "min"] = lo if total[prefix + "min"] is None else min(total[prefix + "min"], lo)
    total[prefix + "max"] = hi if total[prefix + "max"] is None else max(total[prefix + "max"], hi)


def moment_mean_std(moments: Sequence[dict], *, nonzero: bool) -> tuple[float, float] | None:
    """Mean and population standard deviation over the channels of ``moments`` together
    (one channel: that channel's), over all values or the non-zero ones; None without
    values."""
    p = "nz_" if nonzero else ""
    n = sum(m[p + "n"] for m in moments)
    if n == 0:
        return None
    mean = sum(m[p + "sum"] for m in moments) / n
    var = max(0.0, sum(m[p + "sumsq"] for m in moments) / n - mean * mean)
    return mean, math.sqrt(var)


#: Largest finite float32: models compute in float32, so input values must fit.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_float_range(values: np.ndarray, name: str) -> None:
    """Raise ValueError when finite values of a float64 input do not fit in float32."""
    if values.dtype != np.float64 or values.size == 0:
        return
    with np.errstate(invalid="ignore"):
        big = np.abs(values) > FLOAT32_MAX
    if big.any():
        peak = float(np.nanmax(np.abs(values[big & np.isfinite(values)]), initial=0.0))
        raise ValueError(
            f"'{name}' holds values up to {peak:.3g}, beyond the float32 range "
            f"({FLOAT32_MAX:.3g}) the models compute in; rescale the image first"
        )


def percentiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """``np.percentile(values.astype(np.float64), qs)`` (its default, linear method), exactly.

    For 8- and 16-bit integers (most microscopy, CT and aerial imagery) the order statistics
    come from a histogram (``np.bincount``) instead of partitioning a float64 copy: several
    times faster on a 2048 x 2048 uint16 image and without the copy's 32 MiB, which matters
    because the statistics are computed before every run. The interpolation repeats numpy's
    arithmetic, so the results are identical (tested against numpy).
    """
    v = values.reshape(-1)
    if v.dtype.kind not in "iu" or v.dtype.itemsize > 2:
        return [float(x) for x in np.percentile(v.astype(np.float64), qs)]
    n = v.size
    if v.dtype.kind == "i":  # order-preserving map onto unsigned integers of the same size
        bits = 8 * v.dtype.itemsize
        unsigned = np.dtype(f"u{v.dtype.itemsize}")
        v, offset = v.view(unsigned) ^ unsigned.type(1 << (bits - 1)), -(1 << (bits - 1))
    else:
        offset = 0
    # Counted a million values at a time: np.bincount converts its input to int64, and a
    # smaller temporary stays on the heap instead of being mapped (and page-faulted) afresh.
    counts = np.zeros(1 << (8 * v.dtype.itemsize), np.int64)
    for i in range(0, n, 1 << 20):
        counts += np.bincount(v[i : i + (1 << 20)], minlength=counts.size)
    cumulative = np.cumsum(counts)

    def order_statistic(k: int) -> float:  # the k-th smallest value (0-based)
        return float(int(np.searchsorted(cumulative, k, side="right")) + offset)

    out = []
    for q in np.asarray(qs, dtype=np.float64) / 100:
        virtual = (n - 1) * q  # numpy's linear method, step by step
        below = float(np.floor(virtual))
        lo_k = min(max(int(below), 0), n - 1)
        hi_k = min(lo_k + 1, n - 1) if virtual < n - 1 else n - 1
        a, b = order_statistic(lo_k), order_statistic(hi_k)
        t = float(virtual - below)
        diff = b - a
        out.append(b - diff * (1 - t) if t >= 0.5 else a + diff * t)
    return out
