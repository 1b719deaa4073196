"""SAM 3 (Meta, 2025): promptable concept segmentation, text to instance masks.

Sharp instance masks for every object matching a noun phrase; the weights (facebook/sam3) are
gated on the Hub behind Meta's SAM licence.

Cost. ``Sam3Model.get_text_features`` runs once per run for all prompts. Per window,
``get_vision_features`` (the ViT backbone and FPN, by far the largest part) runs once; the DETR
encoder and decoder and the mask decoder, which depend on the prompt, then run for the window's
P prompts at once on the shared vision features.

Outputs. Each of the model's queries gives a mask, a box and a score
``sigmoid(query logit) * sigmoid(presence logit)``, as ``Sam3Processor`` computes it. The
semantic probability of a prompt at a pixel is the largest, over that prompt's queries, of
``score * sigmoid(mask logit)``: the probability that the pixel belongs to an object the model
believes is there. Its logit is what the engine blends. :meth:`Sam3Backend.predict_instances`
returns the queries scoring above ``score_threshold`` with masks thresholded at
``mask_threshold``, the processor's defaults for instance segmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.normalize import IntensityStats
from .base import BackendSpec, ModelInfo, PromptSegmenter, WindowInstances
from .hf import (
    ImageSettings,
    ModelSource,
    PreparedWindows,
    autocast,
    check_rgb_channels,
    load_pretrained,
    load_tokenizer,
    prepare_windows,
    probability_to_logit,
    read_config,
    resolve_dtype,
    resolve_source,
    run_in_chunks,
    to_window,
)

NAME = "sam3"
DEFAULT_ID = "facebook/sam3"
MODEL_TYPES = ("sam3", "sam3_video")


@dataclass
class Sam3Prompts:
    """Text features of a run's prompts, computed once.

    Attributes
    ----------
    features : (P, L, D) tensor
        Projected token features (``get_text_features(...).pooler_output``).
    mask : (P, L) tensor
        Attention mask of the tokens.
    """

    features: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.features.shape[0])


@dataclass
class _Queries:
    """Raw per-query outputs for a chunk of windows: (b, P, Q, ...)."""

    scores: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor


def semantic_logits(scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-prompt logits ``(..., h, w)`` from scores ``(..., Q)`` and masks ``(..., Q, h, w)``.

    The probability is ``max_q score_q * sigmoid(mask_q)``; with no queries it is ~0.
    """
    if masks.shape[-3] == 0:
        return probability_to_logit(torch.zeros(masks.shape[:-3] + masks.shape[-2:]))
    prob = (scores[..., None, None] * masks.sigmoid()).amax(dim=-3)
    return probability_to_logit(prob)


def window_boxes(
    boxes: torch.Tensor,
    model_input: tuple[int, int],
    valid: tuple[int, int],
    window: tuple[int, int],
) -> np.ndarray:
    """Boxes normalised to the model input ``(x0, y0, x1, y1)`` -> window pixels, float32."""
    sx = model_input[1] / valid[1] * window[1]
    sy = model_input[0] / valid[0] * window[0]
    scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
    return (boxes.float().cpu() * scale).numpy().astype(np.float32)


class Sam3Backend(PromptSegmenter):
    """SAM 3 behind the :class:`~.base.PromptSegmenter` interface.

    Parameters
    ----------
    source : ModelSource
        Folder with config.json (``model_type`` "sam3", or "sam3_video" whose detector is
        used), safetensors weights, CLIP tokenizer files and the image processor configuration.
    device : torch.device
    dtype : torch.dtype or str, optional
        Weight precision; by default float32 weights, with half-precision autocast on GPUs.
    score_threshold : float
        Smallest object score kept by :meth:`predict_instances`.
    mask_threshold : float
        Mask probability above which a pixel belongs to an instance.
    """

    name = NAME
    gives_instances = True

    def __init__(
        self,
        source: ModelSource,
        *,
        device: torch.device | str = "cpu",
        dtype: Any = None,
        score_threshold: float = 0.3,
        mask_threshold: float = 0.5,
    ) -> None:
        from transformers import CLIPTokenizer, Sam3Model

        self.source = source
        self.config = read_config(source.folder, backend=NAME, model_types=MODEL_TYPES)
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype)
        self.model = load_pretrained(
            Sam3Model, source.folder, device=self.device, dtype=self.dtype
        )
        text_config: Any = self.model.config.text_config
        self.max_text = int(text_config.max_position_embeddings)
        self.tokenizer = load_tokenizer(CLIPTokenizer, source.folder)
        self.image = ImageSettings.from_folder(source.folder, ("Sam3ImageProcessor",))
        self.default_roi = self.image.edge
        self.score_threshold = float(score_threshold)
        self.mask_logit = float(np.log(mask_threshold / (1.0 - mask_threshold)))

    def weight_files(self) -> list[Path]:
        return self.source.files()

    def describe(self) -> dict:
        return {
            "name": self.name,
            **self.source.describe(),
            "score_threshold": self.score_threshold,
        }

    def check_channels(self, n_channels: int) -> None:
        check_rgb_channels(self.name, n_channels)

    def encode_prompts(self, prompts: Sequence[str]) -> Sam3Prompts:
        """Text features of all prompts, one text-encoder call (padded as Sam3Processor does)."""
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_text,
            truncation=True,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.dtype):
            out = self.model.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            )
        return Sam3Prompts(out.pooler_output.to(self.model.dtype), tokens["attention_mask"])

    def preprocess(self, windows: np.ndarray, stats: IntensityStats) -> PreparedWindows:
        return prepare_windows(self.image, windows, stats)

    def _queries(self, pixels: torch.Tensor, prompts: Sam3Prompts) -> _Queries:
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        b, p = pixels.shape[0], len(prompts)
        vision = self.model.get_vision_features(
            pixel_values=pixels.to(self.device, self.model.dtype)
        )
        # every window's features serve its P prompts: (b, ...) -> (b * P, ...)
        shared = Sam3VisionEncoderOutput(
            fpn_hidden_states=tuple(f.repeat_interleave(p, 0) for f in vision.fpn_hidden_states),
            fpn_position_encoding=tuple(
                f.repeat_interleave(p, 0) for f in vision.fpn_position_encoding
            ),
        )
        out = self.model(
            vision_embeds=shared,
            text_embeds=BaseModelOutputWithPooling(pooler_output=prompts.features.repeat(b, 1, 1)),
            attention_mask=prompts.mask.repeat(b, 1),
        )
        scores = out.pred_logits.float().sigmoid()
        if out.presence_logits is not None:
            scores = scores * out.presence_logits.float().sigmoid()
        q = scores.shape[-1]
        return _Queries(
            scores.reshape(b, p, q),
            out.pred_masks.float().reshape(b, p, q, *out.pred_masks.shape[-2:]),
            out.pred_boxes.float().reshape(b, p, q, 4),
        )

    def _run(
        self, batch: PreparedWindows, prompts: Sam3Prompts, instances: bool
    ) -> tuple[np.ndarray, list[WindowInstances]]:
        model_input = (int(batch.pixels.shape[-2]), int(batch.pixels.shape[-1]))

        def run(start: int, stop: int) -> tuple[np.ndarray, list[WindowInstances]]:
            with torch.inference_mode(), autocast(self.device, self.dtype):
                queries = self._queries(batch.pixels[start:stop], prompts)
            logits = to_window(
                semantic_logits(queries.scores, queries.masks),
                batch.valid,
                model_input,
                batch.window,
            )
            found = (
                [self._instances(queries, i, model_input, batch) for i in range(stop - start)]
                if instances
                else []
            )
            return logits.cpu().numpy(), found

        chunks = run_in_chunks(self, len(batch), run)
        return (
            np.concatenate([c[0] for c in chunks], axis=0),
            [w for c in chunks for w in c[1]],
        )

    def _instances(
        self, queries: _Queries, i: int, model_input: tuple[int, int], batch: PreparedWindows
    ) -> WindowInstances:
        keep = queries.scores[i] > self.score_threshold  # (P, Q)
        prompt_index, query = torch.nonzero(keep, as_tuple=True)
        if len(query) == 0:
            return WindowInstances.empty(batch.window)
        masks = to_window(
            queries.masks[i][prompt_index, query][None], batch.valid, model_input, batch.window
        )[0]
        return WindowInstances(
            masks=(masks > self.mask_logit).cpu().numpy(),
            scores=queries.scores[i][prompt_index, query].cpu().numpy().astype(np.float32),
            prompt_index=prompt_index.cpu().numpy().astype(np.int64),
            boxes=window_boxes(
                queries.boxes[i][prompt_index, query], model_input, batch.valid, batch.window
            ),
        )

    def predict(self, batch: PreparedWindows, encoded: Sam3Prompts) -> np.ndarray:
        return self._run(batch, encoded, instances=False)[0]

    def predict_instances(
        self, batch: PreparedWindows, encoded: Sam3Prompts
    ) -> list[WindowInstances]:
        return self._run(batch, encoded, instances=True)[1]

    def predict_with_instances(
        self, batch: PreparedWindows, encoded: Sam3Prompts
    ) -> tuple[np.ndarray, list[WindowInstances]]:
        return self._run(batch, encoded, instances=True)


def load(spec: str | None, *, device: Any, dtype: Any = None) -> Sam3Backend:
    """Registry loader: ``spec`` is a model id, a folder, or None for :data:`DEFAULT_ID`."""
    return Sam3Backend(
        resolve_source(spec, backend=NAME, default_id=DEFAULT_ID), device=device, dtype=dtype
    )


def _info() -> ModelInfo:
    from .hf import is_cached

    return ModelInfo(
        NAME, DEFAULT_ID, True, is_cached(DEFAULT_ID),
        "SAM 3: sharp instance masks from text; gated, SAM licence",
    )  # fmt: skip


#: Registered in pyproject.toml's ``napari_llmseg.backends`` entry points.
BACKEND = BackendSpec(NAME, load, _info, folder_types=MODEL_TYPES)
