"""Training llmseg-tiny: prompts with masks, absent-concept prompts with empty masks.

Each step draws a batch of random crops (random plane for volumes, random zoom, flips and
intensity changes) and a set of prompts: phrasings of concepts and phrasings of things that
are not in the images. The target of a prompt on a crop is the mask of its concept when the
image is annotated for that concept, and empty otherwise. The text encoder stays frozen;
prompt embeddings are computed once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .backends.text import encode_texts
from .backends.tiny import MODEL_TYPE, TinySegNet


@dataclass
class TrainImage:
    """One normalised training image and the concepts annotated in it.

    ``image`` is (Y, X, C) or (Z, Y, X, C) float32, already normalised the way inference will
    normalise it; ``masks`` maps a concept name to a bool array of the spatial shape. Every
    concept not in ``masks`` is treated as absent from the image.
    """

    name: str
    image: np.ndarray
    masks: dict[str, np.ndarray]


@dataclass
class TrainConfig:
    steps: int = 1200
    batch: int = 12
    crop: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    positives_per_step: int = 2
    negatives_per_step: int = 2
    zoom: tuple[float, float] = (0.5, 1.6)
    seed: int = 0
    architecture: dict = field(
        default_factory=lambda: {
            "in_channels": 3,
            "widths": [8, 16, 32, 64, 128],
            "head_dim": 16,
            "text_hidden": 256,
        }
    )


def _crop(rng: np.random.Generator, item: TrainImage, size: int, zoom: tuple[float, float]):
    """Random crop (C, size, size) and per-concept masks, zoomed by a random factor."""
    img, masks = item.image, item.masks
    if img.ndim == 4:
        z = int(rng.integers(img.shape[0]))
        img = img[z]
        masks = {k: m[z] for k, m in masks.items()}
    factor = float(np.exp(rng.uniform(np.log(zoom[0]), np.log(zoom[1]))))
    src = max(8, min(round(size / factor), img.shape[0], img.shape[1]))
    y = int(rng.integers(img.shape[0] - src + 1))
    x = int(rng.integers(img.shape[1] - src + 1))
    patch = torch.from_numpy(np.ascontiguousarray(img[y : y + src, x : x + src])).permute(2, 0, 1)
    patch = F.interpolate(patch[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    out_masks = {}
    for k, m in masks.items():
        mk = torch.from_numpy(np.ascontiguousarray(m[y : y + src, x : x + src], dtype=np.float32))
        mk = F.interpolate(mk[None, None], size=(size, size), mode="nearest")[0, 0]
        out_masks[k] = mk
    if rng.random() < 0.5:
        patch, out_masks = patch.flip(-1), {k: v.flip(-1) for k, v in out_masks.items()}
    if rng.random() < 0.5:
        patch, out_masks = patch.flip(-2), {k: v.flip(-2) for k, v in out_masks.items()}
    turns = int(rng.integers(4))
    patch = torch.rot90(patch, turns, (-2, -1))
    out_masks = {c: torch.rot90(v, turns, (-2, -1)) for c, v in out_masks.items()}
    # Intensity jitter around the global normalisation, and a little noise.
    gain, bias = rng.uniform(0.75, 1.3), rng.uniform(-0.1, 0.1)
    patch = patch * gain + bias + torch.randn_like(patch) * rng.uniform(0, 0.05)
    return patch, out_masks


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum((-2, -1))
    denom = (prob + target).sum((-2, -1))
    has_fg = target.sum((-2, -1)) > 0
    dice = 1 - (2 * inter + 1) / (denom + 1)
    dice = dice[has_fg].mean() if has_fg.any() else logits.new_zeros(())
    return bce + dice


def train_tiny(
    images: Sequence[TrainImage],
    concepts: dict[str, Sequence[str]],
    negatives: Sequence[str],
    config: TrainConfig,
    *,
    progress: Callable[[int, int, float], None] | None = None,
) -> TinySegNet:
    """Train a :class:`TinySegNet` from scratch; deterministic for a given config and data."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    net = TinySegNet(**config.architecture)
    phrasings = [(c, p) for c, ps in concepts.items() for p in ps]
    all_text = [p for _, p in phrasings] + list(negatives)
    emb = dict(zip(all_text, torch.from_numpy(encode_texts(all_text)), strict=True))
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=config.steps, pct_start=0.1
    )
    net.train()
    for step in range(config.steps):
        batch = [images[int(rng.integers(len(images)))] for _ in range(config.batch)]
        crops = [_crop(rng, item, config.crop, config.zoom) for item in batch]
        x = torch.stack([c[0] for c in crops])
        present = sorted({k for _, m in crops for k in m})
        pos = [phrasings[int(i)] for i in rng.permutation(len(phrasings))]
        pos = [cp for cp in pos if cp[0] in present][: config.positives_per_step]
        neg = [negatives[int(i)] for i in rng.permutation(len(negatives))]
        neg = neg[: config.negatives_per_step]
        prompts = [p for _, p in pos] + neg
        prompt_concepts = [c for c, _ in pos] + [None] * len(neg)
        target = torch.zeros(len(crops), len(prompts), config.crop, config.crop)
        for b, (_, masks) in enumerate(crops):
            for j, concept in enumerate(prompt_concepts):
                if concept is not None and concept in masks:
                    target[b, j] = masks[concept]
        text = torch.stack([emb[p] for p in prompts])
        loss = _loss(net(x, text), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step + 1, config.steps, float(loss.detach()))
    return net.eval()


def save_tiny(net: TinySegNet, folder: Path, config: dict) -> None:
    """Write ``config.json`` and ``model.safetensors`` (the only weight format we load)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": MODEL_TYPE, **config}, indent=2))


def count_parameters(net: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters()))


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __str__(self) -> str:
        s = time.perf_counter() - self.t0
        return f"{int(s // 60)}m{int(math.fmod(s, 60)):02d}s"
