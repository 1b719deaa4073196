"""A MONAI bundle's intensity preprocessing, applied window by window with whole-image numbers.

MONAI applies ``NormalizeIntensityd`` and ``ScaleIntensityd`` to the whole (resampled) image
at once: the mean and deviation, or the minimum and maximum, are the image's. Applied to each
window separately, the same tissue would come out differently in neighbouring windows (seams)
and differently from what the network was trained on. Here each transform becomes a fixed
per-value mapping, its numbers taken from the whole input once (exact sums from
:func:`napari_llmseg.engine.normalize.compute_moments`), and applied to every window:

* ``ScaleIntensityRanged(a_min, a_max, b_min, b_max, clip)``: fixed numbers;
* ``NormalizeIntensityd(nonzero, channel_wise)``: ``(x - mean) / std`` (population std, 1
  where it is 0), over the non-zero values only with ``nonzero`` (zeros stay 0), per channel
  with ``channel_wise``. Given ``subtrahend``/``divisor`` are used as they are. It must come
  first among the intensity transforms (its statistics are the input's own);
* ``ScaleIntensityd(minv, maxv)`` rescales the image's minimum..maximum, which is known
  exactly after the transforms before it (each maps the extremes to the new extremes), or
  ``factor`` (``x * (1 + factor)``).

The one difference from MONAI: it computes these statistics after ``Spacingd`` resampling,
here they come from the input at its own spacing (interpolation changes the mean and
deviation by a fraction of a percent, and can only narrow the extremes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine.normalize import IntensityStats, moment_mean_std

#: The transforms understood, MONAI's dictionary and array names.
RANGE = ("ScaleIntensityRanged", "ScaleIntensityRange")
NORMALIZE = ("NormalizeIntensityd", "NormalizeIntensity")
SCALE = ("ScaleIntensityd", "ScaleIntensity")


@dataclass(frozen=True)
class Step:
    """One intensity transform as read from the bundle: its MONAI name and parameters."""

    kind: str  # "range", "normalize" or "scale"
    params: dict


@dataclass(frozen=True)
class _Affine:
    """``x * gain + offset`` per channel, optionally only where ``x != 0``, then clipped."""

    gain: np.ndarray
    offset: np.ndarray
    nonzero: bool = False
    clip: tuple[float, float] | None = None


class IntensityPipeline:
    """The bundle's intensity steps; :meth:`bind` turns them into per-value mappings.

    Parameters
    ----------
    steps : sequence of Step
    """

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = list(steps)
        kinds = [s.kind for s in self.steps]
        if "normalize" in kinds[1:]:
            raise ValueError(
                "inference.json: NormalizeIntensityd after another intensity transform is not "
                "reproduced here (its mean and deviation would be those of the transformed "
                "image); only as the first intensity transform"
            )

    @property
    def needs_moments(self) -> bool:
        """Whether the input's own mean/deviation/extremes are needed."""
        return any(s.kind == "normalize" and not _given(s) for s in self.steps) or any(
            s.kind == "scale" and s.params.get("factor") is None for s in self.steps
        )

    @property
    def fixed_range(self) -> dict | None:
        """The parameters of a pipeline that is only a ScaleIntensityRanged, else None."""
        if len(self.steps) == 1 and self.steps[0].kind == "range":
            return self.steps[0].params
        return None

    def bind(self, stats: IntensityStats | None, n_channels: int) -> list[_Affine]:
        """The mappings for an input with these statistics (moments when needed).

        Raises
        ------
        ValueError
            When the statistics lack the moments a step needs.
        """
        moments = stats.moments if stats is not None else None
        if self.needs_moments and moments is None:
            raise ValueError(
                "this MONAI bundle normalises by the image's own statistics, which were not "
                "computed (compute_stats(source, moments=True))"
            )
        ones = np.ones(n_channels, np.float64)
        low = high = None
        if moments is not None:
            low = np.array([_or(m["min"], 0.0) for m in moments], np.float64)
            high = np.array([_or(m["max"], 0.0) for m in moments], np.float64)
        out: list[_Affine] = []
        for step in self.steps:
            p = step.params
            if step.kind == "range":
                gain = (p["b_max"] - p["b_min"]) / (p["a_max"] - p["a_min"])
                m = _Affine(gain * ones, (p["b_min"] - p["a_min"] * gain) * ones,
                            clip=_clip(p["b_min"], p["b_max"]) if p["clip"] else None)  # fmt: skip
            elif step.kind == "normalize":
                m = _normalize(p, moments, n_channels)
            else:
                m = _scale(p, low, high, n_channels)
            if moments is not None and low is not None and high is not None:
                if step.kind == "normalize" and p["nonzero"]:  # the first step (checked)
                    low, high = _nonzero_extremes(moments, m)
                else:  # every mapping is monotone: the extremes map to the extremes
                    a, b = _through(m, low), _through(m, high)
                    low, high = np.minimum(a, b), np.maximum(a, b)
            out.append(m)
        return out

    @staticmethod
    def apply(x: Any, mappings: Sequence[_Affine]) -> Any:
        """Apply bound mappings to a torch tensor ``(B, C, *spatial)``."""
        import torch

        shape = (1, -1) + (1,) * (x.ndim - 2)
        for m in mappings:
            gain = torch.as_tensor(m.gain, dtype=x.dtype, device=x.device).reshape(shape)
            offset = torch.as_tensor(m.offset, dtype=x.dtype, device=x.device).reshape(shape)
            y = x * gain + offset
            x = torch.where(x != 0, y, x) if m.nonzero else y
            if m.clip is not None:
                x = x.clamp(*m.clip)
        return x

    def pad_value(self, mappings: Sequence[_Affine], n_channels: int) -> np.ndarray:
        """The raw value the mappings send to what MONAI pads its preprocessed windows with:
        ``b_min`` for a ScaleIntensityRanged alone (0 for the usual 0..1), 0 otherwise."""
        fixed = self.fixed_range
        target = np.full(n_channels, fixed["b_min"] if fixed else 0.0, np.float64)
        for m in reversed(mappings):
            if m.nonzero and np.all(target == 0):
                continue  # raw zeros stay zero
            gain = np.where(m.gain != 0, m.gain, 1.0)
            target = (target - m.offset) / gain
        return target.astype(np.float32)

    def padding(self) -> float:
        """The preprocessed value network inputs are padded with (see :meth:`pad_value`)."""
        fixed = self.fixed_range
        return float(fixed["b_min"]) if fixed else 0.0


def _or(value: Any, default: float) -> float:
    return float(default if value is None else value)


def _given(step: Step) -> bool:
    return step.params.get("subtrahend") is not None and step.params.get("divisor") is not None


def _clip(a: float, b: float) -> tuple[float, float]:
    return (min(a, b), max(a, b))


def _through(m: _Affine, values: np.ndarray) -> np.ndarray:
    out = values * m.gain + m.offset
    if m.nonzero:
        out = np.where(values != 0, out, values)
    if m.clip is not None:
        out = np.clip(out, *m.clip)
    return out


def _per_channel(value: Any, n: int, name: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.size == 1:
        return np.full(n, float(arr[0]))
    if arr.size != n:
        raise ValueError(f"NormalizeIntensityd.{name} has {arr.size} values, the image {n} "
                         "channel(s)")  # fmt: skip
    return arr


def _normalize(p: dict, moments: Sequence[dict] | None, n: int) -> _Affine:
    """MONAI's NormalizeIntensity as ``x * gain + offset`` (only non-zero ``x`` with
    ``nonzero``)."""
    means, stds = np.zeros(n), np.ones(n)
    if moments is not None:
        groups = [[c] for c in range(n)] if p["channel_wise"] else [list(range(n))]
        for group in groups:
            found = moment_mean_std([moments[c] for c in group], nonzero=p["nonzero"])
            if found is not None:  # MONAI leaves an image without non-zero values as it is
                means[group], stds[group] = found
    if p.get("subtrahend") is not None:
        means = _per_channel(p["subtrahend"], n, "subtrahend")
    if p.get("divisor") is not None:
        stds = _per_channel(p["divisor"], n, "divisor")
    stds = np.where(stds == 0, 1.0, stds)
    return _Affine(1.0 / stds, -means / stds, nonzero=bool(p["nonzero"]))


def _nonzero_extremes(moments: Sequence[dict], m: _Affine) -> tuple[np.ndarray, np.ndarray]:
    """Extremes after a ``nonzero`` normalisation: the non-zero values' mapped, and 0 where
    the channel has zeros."""
    lows, highs = [], []
    for c, mo in enumerate(moments):
        values = [v * m.gain[c] + m.offset[c] for v in (mo["nz_min"], mo["nz_max"])
                  if v is not None]  # fmt: skip
        if mo["nz_n"] < mo["n"] or not values:
            values.append(0.0)
        lows.append(min(values))
        highs.append(max(values))
    return np.array(lows), np.array(highs)


def _scale(p: dict, low: np.ndarray | None, high: np.ndarray | None, n: int) -> _Affine:
    """MONAI's ScaleIntensity: rescale the image's extremes to ``minv..maxv`` (over all
    channels, or each with ``channel_wise``), or multiply by ``1 + factor``."""
    minv, maxv = p.get("minv"), p.get("maxv")
    if minv is None and maxv is None:
        factor = p.get("factor")
        gain = 1.0 + (factor or 0.0)
        return _Affine(np.full(n, gain), np.zeros(n))
    assert low is not None and high is not None
    if not p["channel_wise"]:
        low, high = np.full(n, low.min()), np.full(n, high.max())
    gains, offsets = np.zeros(n), np.zeros(n)
    for c in range(n):
        if low[c] == high[c]:  # MONAI: arr * minv
            gains[c] = 1.0 if minv is None else float(minv)
            continue
        span = (1.0, 0.0) if minv is None or maxv is None else (maxv - minv, minv)
        gains[c] = span[0] / (high[c] - low[c])
        offsets[c] = span[1] - low[c] * gains[c]
    return _Affine(gains, offsets)
