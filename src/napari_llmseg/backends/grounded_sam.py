"""Grounding DINO + SAM ("Grounded SAM"): text to boxes, then boxes to masks.

Grounding DINO (IDEA-Research/grounding-dino-tiny) finds boxes for phrases; SAM
(facebook/sam-vit-base) turns each box into a mask. Good at countable objects the detector
knows; a mask is only as good as its box.

Prompts. As Grounding DINO is designed to be used, all P prompts go into one caption
``"p1 . p2 . ... ."``; the model keeps phrases from attending to each other in its text encoder,
and scores every query against every token. The score of a query for prompt ``k`` is the
largest sigmoid over the tokens of prompt ``k``. Because the fusion layers see the whole
caption, a prompt's boxes can change slightly with the other prompts of the run.

Cost. The caption is encoded once per run: the BERT text backbone runs in
:meth:`GroundedSamBackend.encode_prompts` and its output is reused for every batch (the
backbone is wrapped so that the detector's forward picks up the stored features). Per window,
the detector and SAM's image encoder run once whatever the number of prompts; only SAM's light
mask decoder runs per box.

Outputs. For each prompt, queries scoring above ``box_threshold`` are kept (at most
``max_objects``, best first, after non-maximum suppression at ``nms_threshold``); SAM gives each
box a mask. The semantic probability of a prompt at a pixel is the largest, over its boxes, of
``box score * sigmoid(mask logit)``; :meth:`GroundedSamBackend.predict_instances` returns the
boxes, scores and masks (thresholded at probability 0.5).

Folders. ``grounded-sam:DETECTOR+SEGMENTER`` takes two model ids or folders joined by ``+``. A
single folder works too when its config.json reads
``{"model_type": "grounded-sam", "detector": "...", "segmenter": "..."}``, each entry a
sub-folder (relative to that folder) or a model id.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

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

NAME = "grounded-sam"
DETECTOR_ID = "IDEA-Research/grounding-dino-tiny"
SEGMENTER_ID = "facebook/sam-vit-base"
DEFAULT_ID = f"{DETECTOR_ID}+{SEGMENTER_ID}"
MODEL_TYPES = ("grounded-sam",)

#: Boxes given to SAM's mask decoder at once.
SAM_BOX_CHUNK = 64


class CachedTextBackbone(nn.Module):
    """Stands in for Grounding DINO's text backbone and returns features computed once.

    :meth:`remember` stores the backbone's output for a caption; a later call with the same
    token ids (for any batch size) returns it without running the backbone. Any other input
    runs the real backbone.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.ids: torch.Tensor | None = None
        self.features: torch.Tensor | None = None

    def remember(self, ids: torch.Tensor, features: torch.Tensor) -> None:
        self.ids, self.features = ids, features

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_dict: bool | None = True,
        **kwargs: Any,
    ) -> Any:
        ids, features = self.ids, self.features
        if (
            ids is not None
            and features is not None
            and input_ids.shape[1] == ids.shape[1]
            and bool((input_ids == ids.to(input_ids.device)).all())
        ):
            from transformers.modeling_outputs import BaseModelOutput

            hidden = features.expand(input_ids.shape[0], -1, -1)
            return BaseModelOutput(last_hidden_state=hidden) if return_dict else (hidden,)
        return self.backbone(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            return_dict=return_dict,
            **kwargs,
        )


@dataclass
class Caption:
    """The run's prompts as one Grounding DINO caption, encoded once.

    Attributes
    ----------
    input_ids : (1, L) tensor
        ``[CLS] p1 . p2 . ... [SEP]``.
    members : (P, L) bool tensor
        Which tokens belong to which prompt.
    """

    input_ids: torch.Tensor
    members: torch.Tensor

    def __len__(self) -> int:
        return int(self.members.shape[0])


@dataclass
class GroundedWindows:
    """A batch prepared for both models: ``detector`` and ``segmenter`` pixel values."""

    detector: PreparedWindows
    segmenter: PreparedWindows

    def __len__(self) -> int:
        return len(self.detector)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix of boxes ``(N, 4)`` and ``(M, 4)`` in ``(x0, y0, x1, y1)``."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None] - inter).clamp(min=1e-12)


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of boxes kept by greedy non-maximum suppression, best score first."""
    order = torch.argsort(scores, descending=True)
    iou = box_iou(boxes[order], boxes[order])
    keep = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1 :] &= iou[i, i + 1 :] <= threshold
    return order[keep]


def _token_id(tokenizer: Any, token: str) -> int:
    value = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(value, int) or value == tokenizer.unk_token_id:
        raise ValueError(f"the Grounding DINO tokenizer has no token {token!r}")
    return value


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


class GroundedSamBackend(PromptSegmenter):
    """Grounding DINO + SAM behind the :class:`~.base.PromptSegmenter` interface.

    Parameters
    ----------
    detector : ModelSource
        Grounding DINO folder (``model_type`` "grounding-dino", BERT tokenizer, image
        processor configuration).
    segmenter : ModelSource
        SAM folder (``model_type`` "sam", image processor configuration).
    device : torch.device
    dtype : torch.dtype or str, optional
        Weight precision; by default float32 weights, with half-precision autocast on GPUs.
    box_threshold : float
        Smallest detection score of a box given to SAM (Grounded-SAM's demo uses 0.3).
    nms_threshold : float
        IoU above which the weaker of two boxes of one prompt is dropped.
    max_objects : int
        Most boxes per prompt and window.
    """

    name = NAME
    gives_instances = True

    def __init__(
        self,
        detector: ModelSource,
        segmenter: ModelSource,
        *,
        device: torch.device | str = "cpu",
        dtype: Any = None,
        box_threshold: float = 0.3,
        nms_threshold: float = 0.8,
        max_objects: int = 100,
    ) -> None:
        from transformers import BertTokenizer, GroundingDinoForObjectDetection, SamModel

        self.sources = (detector, segmenter)
        read_config(detector.folder, backend=f"{NAME} detector", model_types=("grounding-dino",))
        read_config(segmenter.folder, backend=f"{NAME} segmenter", model_types=("sam",))
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype)
        self.detector = load_pretrained(
            GroundingDinoForObjectDetection, detector.folder, device=self.device, dtype=self.dtype
        )
        self.segmenter = load_pretrained(
            SamModel, segmenter.folder, device=self.device, dtype=self.dtype
        )
        self.tokenizer = load_tokenizer(BertTokenizer, detector.folder)
        self.detector_image = ImageSettings.from_folder(
            detector.folder, ("GroundingDinoImageProcessorPil", "GroundingDinoImageProcessor")
        )
        self.segmenter_image = ImageSettings.from_folder(
            segmenter.folder, ("SamImageProcessorPil", "SamImageProcessor")
        )
        self.default_roi = self.detector_image.edge
        self.text = CachedTextBackbone(self.detector.model.text_backbone)
        self.detector.model.text_backbone = self.text
        self.max_text = int(self.detector.config.max_text_len)
        self.box_threshold = float(box_threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_objects = int(max_objects)

    def weight_files(self) -> list[Path]:
        return [f for source in self.sources for f in source.files()]

    def describe(self) -> dict:
        detector, segmenter = self.sources
        return {
            "name": self.name,
            "detector": detector.describe(),
            "segmenter": segmenter.describe(),
            "box_threshold": self.box_threshold,
            "nms_threshold": self.nms_threshold,
            "max_objects": self.max_objects,
        }

    def check_channels(self, n_channels: int) -> None:
        check_rgb_channels(self.name, n_channels)

    def caption(self, prompts: Sequence[str]) -> Caption:
        """Token ids of ``"p1 . p2 . ... ."`` and which tokens belong to which prompt."""
        tok = self.tokenizer
        dot = _token_id(tok, ".")
        ids: list[int] = [_token_id(tok, tok.cls_token)]
        owner: list[int] = [-1]
        for k, prompt in enumerate(prompts):
            pieces = tok(prompt.strip().rstrip(".").strip(), add_special_tokens=False)["input_ids"]
            if not pieces:
                raise ValueError(f"prompt {prompt!r} has no tokens for Grounding DINO")
            ids += [*pieces, dot]
            owner += [k] * len(pieces) + [-1]
        ids.append(_token_id(tok, tok.sep_token))
        owner.append(-1)
        if len(ids) > self.max_text:
            raise ValueError(
                f"the {len(prompts)} prompts make a caption of {len(ids)} tokens; Grounding "
                f"DINO reads at most {self.max_text}: use fewer or shorter prompts"
            )
        owners = torch.tensor(owner)
        members = owners[None, :] == torch.arange(len(prompts))[:, None]
        return Caption(torch.tensor([ids], device=self.device), members.to(self.device))

    def encode_prompts(self, prompts: Sequence[str]) -> Caption:
        """Encode the caption once; the detector reuses the features for every batch."""
        from transformers.models.grounding_dino.modeling_grounding_dino import (
            generate_masks_with_special_tokens_and_transfer_map,
        )

        caption = self.caption(prompts)
        ids = caption.input_ids
        # the same inputs GroundingDinoModel.forward gives its text backbone
        masks, position_ids = generate_masks_with_special_tokens_and_transfer_map(
            cast(torch.LongTensor, ids), special_tokens=self.detector.model.special_tokens
        )
        if masks.ndim == 3:
            masks = masks[:, None]
        with torch.inference_mode(), autocast(self.device, self.dtype):
            out = self.text.backbone(
                ids, masks, torch.zeros_like(ids), position_ids, return_dict=True
            )
        self.text.remember(ids, out.last_hidden_state)
        return caption

    def preprocess(self, windows: np.ndarray, stats: IntensityStats) -> GroundedWindows:
        return GroundedWindows(
            prepare_windows(self.detector_image, windows, stats),
            prepare_windows(self.segmenter_image, windows, stats),
        )

    def _detect(self, pixels: torch.Tensor, caption: Caption) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-prompt query scores ``(b, Q, P)`` and boxes ``(b, Q, 4)`` (normalised xyxy)."""
        b = pixels.shape[0]
        ids = caption.input_ids.expand(b, -1)
        out = self.detector(
            pixel_values=pixels.to(self.device, self.detector.dtype),
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            token_type_ids=torch.zeros_like(ids),
        )
        length = ids.shape[1]
        token_probs = out.logits[..., :length].float().sigmoid()  # (b, Q, L)
        members = caption.members.to(token_probs.device)
        scores = (token_probs[:, :, None, :] * members[None, None]).amax(-1)  # (b, Q, P)
        return scores, cxcywh_to_xyxy(out.pred_boxes.float())

    def _select(self, scores: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Boxes kept for one window: (query index, prompt index, score), best first per prompt."""
        queries, prompts, kept = [], [], []
        for k in range(scores.shape[1]):
            s = scores[:, k]
            idx = torch.nonzero(s > self.box_threshold, as_tuple=True)[0]
            if len(idx) == 0:
                continue
            idx = idx[torch.argsort(s[idx], descending=True)][: self.max_objects]
            idx = idx[nms(boxes[idx].cpu(), s[idx].cpu(), self.nms_threshold).to(idx.device)]
            queries.append(idx)
            prompts.append(torch.full_like(idx, k))
            kept.append(s[idx])
        if not queries:
            empty = torch.zeros(0, dtype=torch.long)
            return empty, empty, torch.zeros(0)
        return torch.cat(queries), torch.cat(prompts), torch.cat(kept)

    def _masks(self, embedding: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """SAM mask logits ``(N, h, w)`` for boxes ``(N, 4)`` in SAM input pixels."""
        out = []
        for start in range(0, len(boxes), SAM_BOX_CHUNK):
            chunk = boxes[start : start + SAM_BOX_CHUNK]
            res = self.segmenter(
                image_embeddings=embedding,
                input_boxes=chunk[None].to(self.device, embedding.dtype),
                multimask_output=False,
            )
            out.append(res.pred_masks[0, :, 0].float())
        return torch.cat(out)

    def _run(
        self, batch: GroundedWindows, caption: Caption, instances: bool
    ) -> tuple[np.ndarray, list[WindowInstances]]:
        seg = batch.segmenter
        sam_input = (int(seg.pixels.shape[-2]), int(seg.pixels.shape[-1]))
        window = batch.detector.window
        p = len(caption)

        def run(start: int, stop: int) -> tuple[np.ndarray, list[WindowInstances]]:
            logits, found = [], []
            with torch.inference_mode(), autocast(self.device, self.dtype):
                scores, boxes = self._detect(batch.detector.pixels[start:stop], caption)
                embeddings = self.segmenter.get_image_embeddings(
                    seg.pixels[start:stop].to(self.device, self.segmenter.dtype)
                )
                for i in range(stop - start):
                    query, prompt, score = self._select(scores[i], boxes[i])
                    box = boxes[i][query]  # normalised to the image, xyxy
                    scale = torch.tensor(
                        [seg.valid[1], seg.valid[0], seg.valid[1], seg.valid[0]],
                        device=box.device,
                    )
                    masks = (
                        self._masks(embeddings[i : i + 1], box * scale)
                        if len(query)
                        else torch.zeros(0, 1, 1, device=self.device)
                    )
                    logits.append(self._semantic(masks, prompt, score, p))
                    if instances:
                        found.append(
                            self._instances(masks, prompt, score, box, seg, sam_input, window)
                        )
            semantic = torch.stack(logits) if logits else torch.zeros(0, p, 1, 1)
            return to_window(semantic, seg.valid, sam_input, window).cpu().numpy(), found

        chunks = run_in_chunks(self, len(batch), run)
        return (
            np.concatenate([c[0] for c in chunks], axis=0),
            [w for c in chunks for w in c[1]],
        )

    def _semantic(
        self, masks: torch.Tensor, prompt: torch.Tensor, score: torch.Tensor, p: int
    ) -> torch.Tensor:
        """``(P, h, w)`` logits: per prompt, max over its boxes of score * sigmoid(mask)."""
        h, w = self.mask_shape
        if len(prompt) == 0:
            return probability_to_logit(torch.zeros(p, h, w, device=masks.device))
        prob = score.to(masks.device)[:, None, None] * masks.sigmoid()  # (N, h, w)
        out = torch.zeros(p, h * w, device=masks.device)
        index = prompt.to(masks.device)[:, None].expand(-1, h * w)
        out.scatter_reduce_(0, index, prob.reshape(len(prompt), -1), reduce="amax")
        return probability_to_logit(out.reshape(p, h, w))

    @property
    def mask_shape(self) -> tuple[int, int]:
        """Size of SAM's low-resolution masks (4 x its image embedding size)."""
        prompt_config: Any = self.segmenter.config.prompt_encoder_config
        size = int(prompt_config.image_embedding_size) * 4
        return size, size

    def _instances(
        self,
        masks: torch.Tensor,
        prompt: torch.Tensor,
        score: torch.Tensor,
        box: torch.Tensor,
        seg: PreparedWindows,
        sam_input: tuple[int, int],
        window: tuple[int, int],
    ) -> WindowInstances:
        if len(prompt) == 0:
            return WindowInstances.empty(window)
        full = to_window(masks[None], seg.valid, sam_input, window)[0]
        scale = torch.tensor([window[1], window[0], window[1], window[0]], dtype=torch.float32)
        return WindowInstances(
            masks=(full > 0).cpu().numpy(),
            scores=score.float().cpu().numpy().astype(np.float32),
            prompt_index=prompt.cpu().numpy().astype(np.int64),
            boxes=(box.float().cpu() * scale).numpy().astype(np.float32),
        )

    def predict(self, batch: GroundedWindows, encoded: Caption) -> np.ndarray:
        return self._run(batch, encoded, instances=False)[0]

    def predict_instances(self, batch: GroundedWindows, encoded: Caption) -> list[WindowInstances]:
        return self._run(batch, encoded, instances=True)[1]

    def predict_with_instances(
        self, batch: GroundedWindows, encoded: Caption
    ) -> tuple[np.ndarray, list[WindowInstances]]:
        return self._run(batch, encoded, instances=True)


def resolve_pair(spec: str | None) -> tuple[ModelSource, ModelSource]:
    """Detector and segmenter from ``DETECTOR+SEGMENTER``, a grounded-sam folder, or None."""
    if spec is None or spec == "":
        spec = DEFAULT_ID
    folder = Path(spec).expanduser()
    if folder.is_dir():
        config = read_config(folder, backend=NAME, model_types=MODEL_TYPES)
        parts = []
        for key in ("detector", "segmenter"):
            entry = config.get(key)
            if not isinstance(entry, str) or not entry:
                raise ValueError(
                    f"grounded-sam folder '{folder}': config.json needs a {key!r} entry (a "
                    f"sub-folder or model id), got {entry!r}"
                )
            parts.append(str(folder / entry) if (folder / entry).is_dir() else entry)
        detector, segmenter = parts
    elif "+" in spec:
        detector, _, segmenter = spec.partition("+")
    else:
        raise ValueError(
            f"bad grounded-sam model {spec!r}: expected DETECTOR+SEGMENTER (two model ids or "
            f"folders joined by '+', e.g. '{DEFAULT_ID}') or a grounded-sam folder"
        )
    return (
        resolve_source(detector, backend=f"{NAME} detector", default_id=DETECTOR_ID),
        resolve_source(segmenter, backend=f"{NAME} segmenter", default_id=SEGMENTER_ID),
    )


def write_folder(folder: Path, detector: str, segmenter: str) -> Path:
    """Write the config.json that makes ``folder`` a grounded-sam model folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(
        json.dumps(
            {"model_type": "grounded-sam", "detector": detector, "segmenter": segmenter}, indent=2
        )
    )
    return folder


def load(spec: str | None, *, device: Any, dtype: Any = None) -> GroundedSamBackend:
    """Registry loader: ``spec`` is ``DETECTOR+SEGMENTER``, a grounded-sam folder, or None."""
    detector, segmenter = resolve_pair(spec)
    return GroundedSamBackend(detector, segmenter, device=device, dtype=dtype)


def _info() -> ModelInfo:
    from .hf import is_cached

    return ModelInfo(
        NAME, DEFAULT_ID, True, is_cached(DETECTOR_ID) and is_cached(SEGMENTER_ID),
        "Grounding DINO boxes, then SAM masks (Apache-2.0)",
    )  # fmt: skip


_HALF = (
    "holds only a {part}; grounded-sam needs both: make a folder with the two model folders "
    'inside and a config.json {{"model_type": "grounded-sam", "detector": "DETECTOR_DIR", '
    '"segmenter": "SAM_DIR"}} (see docs/backends.md)'
)

#: Registered in pyproject.toml's ``napari_llmseg.backends`` entry points.
BACKEND = BackendSpec(
    NAME,
    load,
    _info,
    folder_types=MODEL_TYPES,
    folder_refusals={
        "grounding-dino": _HALF.format(part="Grounding DINO detector"),
        "sam": _HALF.format(part="SAM segmenter"),
    },
)
