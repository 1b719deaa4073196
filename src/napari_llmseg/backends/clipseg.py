"""CLIPSeg (Lüddecke & Ecker, CVPR 2022): a frozen CLIP ViT-B/16 with a light FiLM decoder.

Fast, coarse, semantic: one logit map per prompt at 352 x 352 (patch 16), no instances.

Cost. The text encoder runs once per run, for all prompts (its projected embeddings are what
``CLIPSegForImageSegmentation`` accepts as ``conditional_embeddings``). The CLIP vision
transformer runs once per window; the decoder, a few 64-wide transformer layers, then runs on
the window's activations for all P prompts at once, so extra prompts cost only the decoder.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.normalize import IntensityStats
from .base import BackendSpec, FinetuneAdapter, ModelInfo, PromptSegmenter
from .hf import (
    ImageSettings,
    ModelSource,
    PreparedWindows,
    autocast,
    check_rgb_channels,
    load_pretrained,
    load_tokenizer,
    prepare_windows,
    read_config,
    resolve_dtype,
    resolve_source,
    run_in_chunks,
    to_window,
)

NAME = "clipseg"
#: The main branch of CIDAS/clipseg-rd64-refined holds only pickle weights; its safetensors
#: conversion (SFconvertbot, the weights transformers itself would pick) is pinned by commit.
DEFAULT_ID = "CIDAS/clipseg-rd64-refined@325a839908143a34b409ae6f2910fa015ea390e6"
MODEL_TYPES = ("clipseg",)


class CLIPSegBackend(PromptSegmenter):
    """CLIPSeg behind the :class:`~.base.PromptSegmenter` interface.

    Parameters
    ----------
    source : ModelSource
        Folder with the model (config.json with ``model_type`` "clipseg", safetensors weights,
        CLIP tokenizer files, image processor configuration).
    device : torch.device
    dtype : torch.dtype or str, optional
        Weight precision; by default float32 weights, with half-precision autocast on GPUs.
    """

    name = NAME
    gives_instances = False

    def __init__(
        self, source: ModelSource, *, device: torch.device | str = "cpu", dtype: Any = None
    ) -> None:
        from transformers import CLIPSegForImageSegmentation, CLIPTokenizer

        self.source = source
        self.config = read_config(source.folder, backend=NAME, model_types=MODEL_TYPES)
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype)
        self.model = load_pretrained(
            CLIPSegForImageSegmentation, source.folder, device=self.device, dtype=self.dtype
        )
        self.tokenizer = load_tokenizer(CLIPTokenizer, source.folder)
        self.image = ImageSettings.from_folder(
            source.folder, ("ViTImageProcessorPil", "ViTImageProcessor")
        )
        self.default_roi = self.image.edge
        self.extract_layers = list(self.model.config.extract_layers)

    def describe(self) -> dict:
        return {"name": self.name, **self.source.describe()}

    def weight_files(self) -> list[Path]:
        return self.source.files()

    def finetune_adapter(self, train_all: bool = False) -> CLIPSegAdapter:
        return CLIPSegAdapter(self, train_all)

    def check_channels(self, n_channels: int) -> None:
        check_rgb_channels(self.name, n_channels)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Projected CLIP text embeddings ``(P, projection_dim)``, one text-encoder call."""
        tokens = self.tokenizer(
            list(prompts), padding=True, truncation=True, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.dtype):
            out = self.model.clip.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            )
        return out.pooler_output.to(self.model.dtype)

    def preprocess(self, windows: np.ndarray, stats: IntensityStats) -> PreparedWindows:
        return prepare_windows(self.image, windows, stats)

    def _logits(self, pixels: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        """Logits ``(b, P, h, w)`` at the model's output size for a chunk of windows."""
        b, p = pixels.shape[0], encoded.shape[0]
        vision = self.model.clip.get_image_features(
            pixel_values=pixels.to(self.device, self.model.dtype), output_hidden_states=True
        )
        # hidden_states[0] is the embedding output, hence the + 1 (as CLIPSeg's forward does)
        activations = [
            vision.hidden_states[i + 1].repeat_interleave(p, dim=0) for i in self.extract_layers
        ]
        logits = self.model.decoder(activations, encoded.repeat(b, 1)).logits
        return logits.reshape(b, p, *logits.shape[-2:])

    def predict(self, batch: PreparedWindows, encoded: torch.Tensor) -> np.ndarray:
        model_input = tuple(batch.pixels.shape[-2:])

        def run(start: int, stop: int) -> np.ndarray:
            with torch.inference_mode(), autocast(self.device, self.dtype):
                logits = self._logits(batch.pixels[start:stop], encoded)
            resized = to_window(logits, batch.valid, model_input, batch.window)  # type: ignore[arg-type]
            return resized.cpu().numpy()

        return np.concatenate(run_in_chunks(self, len(batch), run), axis=0)


class CLIPSegAdapter(FinetuneAdapter):
    """Fine-tuning CLIPSeg: its decoder (with the FiLM layers conditioned on the prompt)
    trains; CLIP's vision and text transformers are frozen (unless ``train_all``)."""

    default_lr = 1e-4
    max_crop = 1024

    def __init__(self, backend: CLIPSegBackend, train_all: bool) -> None:
        self.backend = backend
        self.model = backend.model
        for p in self.model.parameters():
            p.requires_grad_(False)
        trained = self.model if train_all else self.model.decoder
        for p in trained.parameters():
            p.requires_grad_(True)

    def module(self) -> torch.nn.Module:
        return self.model

    def encode(self, prompt: str) -> torch.Tensor:
        return self.backend.encode_prompts([prompt]).clone()

    def logits(self, windows: np.ndarray, stats: IntensityStats, text: Any) -> torch.Tensor:
        prepared = self.backend.preprocess(windows, stats)
        height, width = prepared.pixels.shape[-2:]
        maps = self.backend._logits(prepared.pixels, text)
        return to_window(maps, prepared.valid, (int(height), int(width)), prepared.window)[:, 0]

    def save(self, folder: Path, record: dict) -> None:
        self.model.save_pretrained(folder, safe_serialization=True)
        self.backend.tokenizer.save_pretrained(folder)
        source = Path(self.backend.source.folder)
        for name in ("preprocessor_config.json", "processor_config.json"):
            if (source / name).is_file():
                shutil.copy2(source / name, folder / name)


def load(spec: str | None, *, device: Any, dtype: Any = None) -> CLIPSegBackend:
    """Registry loader: ``spec`` is a model id, a folder, or None for :data:`DEFAULT_ID`."""
    return CLIPSegBackend(
        resolve_source(spec, backend=NAME, default_id=DEFAULT_ID), device=device, dtype=dtype
    )


def _info() -> ModelInfo:
    from .hf import is_cached

    return ModelInfo(
        NAME, DEFAULT_ID, False, is_cached(DEFAULT_ID),
        "CLIPSeg: fast, coarse semantic masks (Apache-2.0)", can_finetune=True,
    )  # fmt: skip


#: Registered in pyproject.toml's ``napari_llmseg.backends`` entry points.
BACKEND = BackendSpec(NAME, load, _info, folder_types=MODEL_TYPES)
