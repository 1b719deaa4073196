"""The interface every segmentation backend implements.

The engine calls a backend in three steps, each with a clear cost:

1. :meth:`PromptSegmenter.encode_prompts` once per run, for all prompts (text encoders run
   once per prompt, never once per window);
2. :meth:`PromptSegmenter.preprocess` on every batch of raw windows, with the intensity
   statistics the engine computed once for the whole input (on the reader thread);
3. :meth:`PromptSegmenter.predict` on every prepared batch, returning logits for all prompts
   at once, so that a backend can encode each window once and reuse it for every prompt.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.normalize import IntensityStats


class PromptSegmenter(ABC):
    """A text-prompted semantic segmentation model.

    Attributes
    ----------
    name : str
        Registry name (``"llmseg-tiny"``, ``"clipseg"``...).
    spatial_dims : int
        Number of axes a window has (2 for image models; a 3D input runs plane by plane).
    default_roi : int
        Window edge used when the caller gives no ``roi_size``.
    gives_instances : bool
        Whether the backend can also return per-window instance masks.
    """

    name: str = "backend"
    spatial_dims: int = 2
    default_roi: int = 256
    gives_instances: bool = False

    @abstractmethod
    def encode_prompts(self, prompts: Sequence[str]) -> Any:
        """Encode all prompts of a run once; the result is passed to :meth:`predict`."""

    @abstractmethod
    def preprocess(self, windows: np.ndarray, stats: IntensityStats) -> Any:
        """Raw windows ``(B, C, *roi)`` float32 -> model input, using whole-input ``stats``."""

    @abstractmethod
    def predict(self, batch: Any, encoded: Any) -> np.ndarray:
        """Logits ``(B, P, *roi)`` float32 for a prepared batch and the encoded prompts."""

    def check_channels(self, n_channels: int) -> None:
        """Raise ValueError if the backend cannot take images with ``n_channels`` channels."""

    def pad_value(self, stats: IntensityStats) -> np.ndarray:
        """Raw per-channel value for pixels outside the image or not finite.

        The low percentile by default, which normalises to the darkest background.
        """
        return np.asarray(stats.low, dtype=np.float32)

    def describe(self) -> dict:
        """JSON-serialisable description recorded in output metadata."""
        return {"name": self.name}


#: Weight files that need pickle to load (and can run code when loaded): always refused.
PICKLE_WEIGHTS = ("pytorch_model.bin", "model.pt", "model.pth", "model.ckpt", "tf_model.h5")


def require_safetensors(folder: Path) -> list[Path]:
    """The ``*.safetensors`` files of a model folder; refuse folders with only pickle weights."""
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickled = [
        p.name
        for p in folder.iterdir()
        if p.name in PICKLE_WEIGHTS or p.suffix in (".bin", ".pt", ".pth", ".ckpt")
    ]
    if pickled:
        raise ValueError(
            f"model folder '{folder}' has only pickle-based weights "
            f"({', '.join(sorted(pickled))}); "
            "they are refused because loading a pickle can run arbitrary code. Convert them to "
            "safetensors (e.g. model.save_pretrained(folder, safe_serialization=True))"
        )
    raise FileNotFoundError(f"model folder '{folder}' has no .safetensors weights")
