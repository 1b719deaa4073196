"""Model -> the engine's :class:`Predictor`: batches of raw windows in, logits out.

Two kinds of models reach the engine, and the local and the Dask paths adapt both the same way
through :func:`make_predictor`:

* a :class:`~napari_llmseg.backends.base.PromptSegmenter` (llmseg-tiny, CLIPSeg, SAM 3, a
  taught model...): prompts are encoded once, every batch is normalised by the backend with
  the whole-input statistics (on the reader thread) and predicted;
* a plain callable ``f(batch, prompts) -> logits`` taking a float32 torch tensor of raw
  pixels, as MONAI's ``sliding_window_inference`` takes a network: no normalisation, pixels
  outside the image are 0 (MONAI pads with 0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from .normalize import IntensityStats


class Predictor(Protocol):
    """What the engine needs from a model.

    A predictor may also have a ``batch_limit`` attribute (int or None): the most windows its
    model runs at once, which the engine reports as ``RunInfo.batch_size_used``.
    """

    n_outputs: int

    def pad_value(self) -> np.ndarray:
        """Per-channel raw value for pixels outside the image and non-finite pixels."""

    def prepare(self, raw: np.ndarray) -> Any:
        """Turn raw windows (B, C, *roi) float32 into model input; runs on the reader thread."""

    def predict(self, prepared: Any) -> np.ndarray:
        """Logits (B, n_outputs, *roi) float32 for a prepared batch."""


class BackendPredictor:
    """Adapts a PromptSegmenter to the engine's Predictor protocol.

    ``encoded``: prompt encodings computed elsewhere (on the Dask client), to skip encoding.
    """

    def __init__(
        self, backend: Any, prompts: Sequence[str], stats: IntensityStats, encoded: Any = None
    ) -> None:
        self.backend, self.stats = backend, stats
        self.encoded = backend.encode_prompts(list(prompts)) if encoded is None else encoded
        self.n_outputs = len(prompts)

    @property
    def batch_limit(self) -> int | None:
        return self.backend.batch_limit

    def pad_value(self) -> np.ndarray:
        return self.backend.pad_value(self.stats)

    def prepare(self, raw: np.ndarray) -> Any:
        return self.backend.preprocess(raw, self.stats)

    def predict(self, prepared: Any) -> np.ndarray:
        return np.asarray(self.backend.predict(prepared, self.encoded), dtype=np.float32)

    def predict_with_instances(self, prepared: Any) -> tuple[np.ndarray, list]:
        logits, found = self.backend.predict_with_instances(prepared, self.encoded)
        return np.asarray(logits, dtype=np.float32), found


class CallablePredictor:
    """A plain ``f(batch, prompts) -> logits`` callable: raw float32 input, no normalisation."""

    def __init__(
        self, fn: Callable, prompts: Sequence[str], n_channels: int, device: Any = "cpu"
    ) -> None:
        self.fn, self.prompts, self.device = fn, list(prompts), device
        self.n_outputs = len(prompts)
        self._pad = np.zeros(n_channels, dtype=np.float32)

    def pad_value(self) -> np.ndarray:
        return self._pad  # MONAI pads with 0

    def prepare(self, raw: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(raw).to(self.device)

    def predict(self, prepared: Any) -> np.ndarray:
        out = self.fn(prepared, self.prompts)
        if hasattr(out, "detach"):
            out = out.detach().float().cpu().numpy()
        return np.asarray(out, dtype=np.float32)


def is_backend(model: Any) -> bool:
    """Whether ``model`` is a backend (has ``encode_prompts``) rather than a plain callable."""
    return hasattr(model, "encode_prompts") and hasattr(model, "preprocess")


def make_predictor(
    model: Any,
    prompts: Sequence[str],
    *,
    stats: IntensityStats,
    n_channels: int,
    device: Any = "cpu",
    encoded: Any = None,
) -> BackendPredictor | CallablePredictor:
    """The predictor for a loaded backend or a callable model."""
    if is_backend(model):
        return BackendPredictor(model, prompts, stats, encoded=encoded)
    return CallablePredictor(model, prompts, n_channels, device)
