"""The interface every segmentation backend implements.

The engine calls a backend in three steps, each with a clear cost:

1. :meth:`PromptSegmenter.encode_prompts` once per run, for all prompts (text encoders run
   once per prompt, never once per window);
2. :meth:`PromptSegmenter.preprocess` on every batch of raw windows, with the intensity
   statistics the engine computed once for the whole input (on the reader thread);
3. :meth:`PromptSegmenter.predict` on every prepared batch, returning logits for all prompts
   at once, so that a backend can encode each window once and reuse it for every prompt.

Instance models (``gives_instances = True``) also implement
:meth:`PromptSegmenter.predict_instances`, which returns the objects found in each window as
:class:`WindowInstances` (masks, scores, prompt index, boxes, in window pixels), for merging
instances across overlapping windows. Their :meth:`~PromptSegmenter.predict` logits are derived
from the same instances, so semantic and instance outputs agree.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.normalize import IntensityStats


@dataclass(frozen=True)
class WindowInstances:
    """The objects an instance model found in one window, in window pixel coordinates.

    Attributes
    ----------
    masks : (N, H, W) bool ndarray
        One mask per object, at window resolution.
    scores : (N,) float32 ndarray
        Confidence of each object, in [0, 1].
    prompt_index : (N,) int64 ndarray
        Which prompt (index into the run's prompts) each object answers.
    boxes : (N, 4) float32 ndarray
        Bounding boxes ``(x0, y0, x1, y1)`` in window pixels, as the model predicted them.
    """

    masks: np.ndarray
    scores: np.ndarray
    prompt_index: np.ndarray
    boxes: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.masks.ndim != 3 or self.masks.dtype != bool or len(self.masks) != n:
            raise ValueError(
                f"masks must be a bool (N, H, W) array with N = {n}, got "
                f"{self.masks.dtype} {self.masks.shape}"
            )
        if self.prompt_index.shape != (n,) or self.boxes.shape != (n, 4):
            raise ValueError(
                f"prompt_index must have shape ({n},) and boxes ({n}, 4), got "
                f"{self.prompt_index.shape} and {self.boxes.shape}"
            )

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> WindowInstances:
        """No objects in a window of ``shape`` (H, W)."""
        return cls(
            masks=np.zeros((0, *shape), dtype=bool),
            scores=np.zeros(0, dtype=np.float32),
            prompt_index=np.zeros(0, dtype=np.int64),
            boxes=np.zeros((0, 4), dtype=np.float32),
        )


class PromptSegmenter(ABC):
    """A text-prompted semantic segmentation model.

    Attributes
    ----------
    name : str
        Registry name (``"llmseg-tiny"``, ``"clipseg"``...).
    spatial_dims : int
        Number of axes a window has: 2 for image models (a volume runs plane by plane), 3 for
        volumetric ones (3D windows over a volume; ``roi_size`` then takes 3 entries).
    default_roi : int
        Window edge used when the caller gives no ``roi_size``.
    default_overlap : float or tuple of float
        Window overlap used when the caller gives no ``overlap`` (a MONAI bundle's inferer
        names its own).
    gives_instances : bool
        Whether the backend can also return per-window instance masks
        (:meth:`predict_instances`).
    batch_limit : int or None
        Most windows the backend runs at once, lowered after a GPU out-of-memory error
        (None: no limit found). The engine reports the batch size in effect as
        ``RunInfo.batch_size_used``.
    window_within_image : bool
        True for a model that takes windows of any size (fully convolutional): with no
        ``roi_size`` given, its default window is then cut to the image's extent instead of
        the image being padded up to it (MONAI's way, kept for every other model and for an
        explicit ``roi_size``).
    class_names : dict of int to str, or None
        For a model with fixed classes (a MONAI bundle): its output channels' names; prompts
        are then matched to classes (:mod:`.classes`) and :meth:`predict` returns one channel
        per class. None for a model that reads prompts itself.

    A backend may also define ``for_input(metadata) -> PromptSegmenter``: a copy set up for an
    input's geometry (``ImageSource.metadata``: spacing, affine), which the run uses instead
    (a MONAI bundle takes its window size in the input's voxels and its resampling from it).
    """

    name: str = "backend"
    spatial_dims: int = 2
    default_roi: int = 256
    default_overlap: float | tuple[float, ...] = 0.25
    gives_instances: bool = False
    batch_limit: int | None = None
    window_within_image: bool = False
    class_names: dict[int, str] | None = None

    @abstractmethod
    def encode_prompts(self, prompts: Sequence[str]) -> Any:
        """Encode all prompts of a run once; the result is passed to :meth:`predict`."""

    @abstractmethod
    def preprocess(self, windows: np.ndarray, stats: IntensityStats) -> Any:
        """Raw windows ``(B, C, *roi)`` float32 -> model input, using whole-input ``stats``."""

    @abstractmethod
    def predict(self, batch: Any, encoded: Any) -> np.ndarray:
        """Logits ``(B, P, *roi)`` float32 for a prepared batch and the encoded prompts."""

    def predict_instances(self, batch: Any, encoded: Any) -> list[WindowInstances]:
        """Objects found in each window of a prepared batch, one record per window.

        Only backends with ``gives_instances = True`` implement it.
        """
        raise NotImplementedError(f"the {self.name} backend gives no instances")

    def predict_with_instances(
        self, batch: Any, encoded: Any
    ) -> tuple[np.ndarray, list[WindowInstances]]:
        """Logits and instances of a prepared batch; instance backends do it in one pass."""
        return self.predict(batch, encoded), self.predict_instances(batch, encoded)

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

    def weight_files(self) -> list[Path]:
        """The files the model was loaded from (weights and configuration): what a resumed
        run checks has not changed. Empty for a model built in memory."""
        return []

    def concepts(self) -> list[str]:
        """What the model was trained or adapted on, if it knows (empty: open vocabulary or
        unknown)."""
        return []

    def concept_phrasings(self) -> tuple[dict[str, list[str]], list[str]] | None:
        """For a closed vocabulary: each concept's training phrasings, and the phrasings it
        was trained to answer with nothing (for :mod:`.knowledge`); None for an open one."""
        concepts = self.concepts()
        return ({c: [c] for c in concepts}, []) if concepts else None

    def finetune_adapter(self, train_all: bool = False) -> FinetuneAdapter:
        """What fine-tuning needs from this backend (:mod:`napari_llmseg.training.finetune`).

        Raises
        ------
        ValueError
            For a backend that cannot be fine-tuned.
        """
        raise ValueError(f"the {self.name} backend cannot be fine-tuned")


class FinetuneAdapter(ABC):
    """A backend's fine-tuning hook: which parameters train, a differentiable forward pass,
    and how the adapted model is saved as a model folder that the backend loads again.

    Attributes
    ----------
    default_lr : float
        Learning rate (AdamW) when the caller gives none.
    max_crop : int
        Largest training crop edge (the model's window, or less).
    """

    default_lr: float = 1e-4
    max_crop: int = 1024

    @abstractmethod
    def module(self) -> Any:
        """The torch module whose ``state_dict`` training keeps the best epoch of."""

    def trainable(self) -> list[Any]:
        return [p for p in self.module().parameters() if p.requires_grad]

    @abstractmethod
    def encode(self, prompt: str) -> Any:
        """The prompt's encoding, as an ordinary tensor autograd can use."""

    @abstractmethod
    def logits(self, windows: np.ndarray, stats: IntensityStats, text: Any) -> Any:
        """Logits (B, H, W) of raw windows (B, C, H, W), differentiable."""

    @abstractmethod
    def save(self, folder: Path, record: dict) -> None:
        """Write the adapted model into ``folder`` (safetensors and config) with ``record``."""


@dataclass(frozen=True)
class ModelInfo:
    """What ``napari-llmseg models`` and the widget show about a backend."""

    name: str
    default_id: str
    gives_instances: bool
    available_offline: bool
    description: str
    concepts: tuple[str, ...] = ()
    can_finetune: bool = False
    #: What prompts it answers when that is not a list of concepts (empty: any text).
    vocabulary: str = ""


@dataclass(frozen=True)
class BackendSpec:
    """How the registry finds, loads and describes a backend.

    A backend module defines one and names it in the ``napari_llmseg.backends`` entry-point
    group (built-in backends are registered that way too, in pyproject.toml).

    Attributes
    ----------
    name : str
        Registry name (``segment(model=NAME)``, ``NAME:MODEL_ID``).
    load : callable
        ``load(spec, *, device, dtype) -> PromptSegmenter``; ``spec`` is what followed
        ``NAME:`` (a model id or folder), or None for the backend's default.
    info : callable
        ``info() -> ModelInfo``; must not touch the network.
    folder_types : tuple of str
        ``model_type`` values in a model folder's config.json that this backend loads.
    folder_refusals : dict of str to str
        ``model_type`` values it recognises but cannot load alone, with the reason.
    folder_layout : callable, optional
        ``folder_layout(path) -> bool``: whether a folder without config.json is one this
        backend loads, recognised by its files (a MONAI bundle: ``configs/metadata.json``).
    """

    name: str
    load: Callable[..., PromptSegmenter]
    info: Callable[[], ModelInfo]
    folder_types: tuple[str, ...] = ()
    folder_refusals: dict[str, str] = field(default_factory=dict)
    folder_layout: Callable[[Path], bool] | None = None


#: Weight files that need pickle to load (and can run code when loaded): always refused.
PICKLE_WEIGHTS = ("pytorch_model.bin", "model.pt", "model.pth", "model.ckpt", "tf_model.h5")


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors file's header, without reading the weights.

    Raises
    ------
    ValueError
        If the file is not a readable safetensors file (a text file, a damaged header...).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(int(d) for d in f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # SafetensorError, OSError, ...
        raise ValueError(
            f"'{path}' is not a valid safetensors file ({type(err).__name__}: "
            f"{' '.join(str(err).split())})"
        ) from err


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
