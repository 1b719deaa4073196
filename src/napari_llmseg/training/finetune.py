"""Adapting a model to a user's own labels: parameter-efficient fine-tuning.

A user paints a few slices of a volume (or part of a 2D image) in napari, names what they
painted ("mitochondria", "cerebellum") and fine-tunes a model on it. Only the parts of the
model that turn a prompt into a mask train; the vision encoder stays frozen, so a handful of
slices is enough. The result is a model for the new concept: its answers to the base model's
other prompts change too (docs/finetune.md measures by how much), so keep the base model for
those. What trains:

* llmseg-tiny: the decoder half of the U-Net, the per-pixel projection and the MLP that maps
  the prompt's sentence embedding to the FiLM modulation and read-out (the encoder half and
  the text encoder are frozen);
* CLIPSeg: its decoder (about 1 M parameters, including the FiLM layers conditioned on the
  prompt); CLIP's vision and text transformers are frozen.

The images are normalised exactly as inference normalises them (whole-input statistics handed
to the backend's own ``preprocess``), training uses random crops with flips and rotations, and
training stops early when the Dice on a validation split of the labelled planes has not
improved for ``patience`` epochs; the best epoch's weights are saved. The saved folder loads
like any model folder: ``segment(..., model=FOLDER)``, ``napari-llmseg segment --model FOLDER``.
"""

from __future__ import annotations

import copy
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backends.base import FinetuneAdapter, PromptSegmenter
from ..engine.normalize import IntensityStats, compute_stats
from ..io.open import open_image
from ..io.source import ImageSource
from .folders import check_output_folder, clear_model_folder, mark_model_folder

#: Training progress: (epoch, epochs, mean training loss, validation Dice).
FinetuneProgress = Callable[[int, int, float, float], None]

#: Written into every fine-tuned folder, next to the weights.
RECORD_FILE = "llmseg_finetune.json"


@dataclass
class FinetuneResult:
    """What :func:`finetune` did.

    Attributes
    ----------
    folder : Path
        The saved model folder (load it with ``get_model(folder)`` or ``segment(model=...)``).
    base, prompt : str
    trainable_parameters, total_parameters : int
    train_planes, val_planes : list of int
        Planes (Z indices; ``[0]`` for a 2D image) used for training and for validation. A 2D
        image is cut into tiles; then these are tile indices.
    val_dice_before, val_dice : float
        Validation Dice of the base model and of the saved (best) epoch.
    best_epoch, epochs_run : int
    history : list of dict
        Per epoch: ``epoch``, ``loss``, ``val_dice``.
    seconds : float
    """

    folder: Path
    base: str
    prompt: str
    trainable_parameters: int
    total_parameters: int
    train_planes: list[int]
    val_planes: list[int]
    val_dice_before: float
    val_dice: float
    best_epoch: int
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def record(self) -> dict:
        out = asdict(self)
        out["folder"] = str(self.folder)
        return out


def parse_slices(text: str | None, n_planes: int) -> range | None:
    """``"z0:z1"`` -> ``range(z0, z1)`` (Python slice rules, end excluded), checked."""
    if text is None or text == "":
        return None
    parts = str(text).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        lo = int(parts[0]) if parts[0].strip() else 0
        hi = int(parts[1]) if parts[1].strip() else n_planes
    except ValueError:
        raise ValueError(f"slices must look like 'z0:z1' (e.g. '40:45'), got {text!r}") from None
    lo, hi, _ = slice(lo, hi).indices(n_planes)
    if hi <= lo:
        raise ValueError(f"slices {text!r} select no plane of a volume with {n_planes} planes")
    return range(lo, hi)


# --------------------------------------------------------------------------------------------
# Data


@dataclass
class _Sample:
    image: np.ndarray  # (C, H, W) raw values
    mask: np.ndarray  # (H, W) bool


def read_labels(labels: Any) -> np.ndarray:
    """A labels image (array, path or ImageSource) read whole, without its channel axis."""
    source = open_image(labels)  # an array, a path, or an ImageSource as it is
    return source.read(tuple(slice(None) for _ in source.spatial_shape))[..., 0]


def _tiles(n: int, size: int, at_least: int = 2) -> list[slice]:
    """Cover range(n) with equal tiles of at most about ``size`` (at least ``at_least`` when
    n >= 64)."""
    count = max(at_least, round(n / size)) if n >= 64 else 1
    edges = np.linspace(0, n, count + 1).astype(int)
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def _samples(
    source: ImageSource, labels: np.ndarray, slices: range | None
) -> tuple[list[_Sample], list[int]]:
    """Training planes (3D) or tiles (2D) with their masks, and their indices."""
    shape = source.spatial_shape
    fg = labels != 0
    if len(shape) == 3:
        if slices is None:
            planes = [int(z) for z in np.flatnonzero(fg.reshape(shape[0], -1).any(1))]
            what = "labels"
        else:
            planes = list(slices)
            what = f"labels in slices {slices.start}:{slices.stop}"
        if not planes or not fg[planes].any():
            raise ValueError(f"{what} are empty: paint the object in at least one plane")
        out = []
        for z in planes:
            plane = source.read((slice(z, z + 1), slice(None), slice(None)))[0]
            out.append(_Sample(np.moveaxis(plane, -1, 0), fg[z]))
        return out, planes
    if not fg.any():
        raise ValueError("labels are empty: paint the object in part of the image")
    image = np.moveaxis(source.read((slice(None), slice(None))), -1, 0)
    out = []
    for ys in _tiles(shape[0], 256):
        for xs in _tiles(shape[1], 256):
            out.append(_Sample(image[:, ys, xs], fg[ys, xs]))
    return out, list(range(len(out)))


def _split(n: int, fraction: float, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Indices for training and validation: every k-th sample validates (at least one when
    there are two or more); with a single sample, it is used for both."""
    if n == 1:
        return [0], [0]
    n_val = min(n - 1, max(1, round(n * fraction)))
    val = sorted(int(i) for i in np.linspace(0, n - 1, n_val + 2)[1:-1].round())
    val = sorted(set(val)) or [n // 2]
    return [i for i in range(n) if i not in val], val


class _Augment:
    """Random training crops with MONAI's transforms: half of the crops centred on a labelled
    pixel (RandCropByPosNegLabeld, so that small objects are seen often), random flips and
    quarter turns (RandFlipd, RandRotate90d). Foreground and background indices are computed
    once per sample, not once per crop: with them a crop takes about 0.5 ms instead of 7."""

    def __init__(self, samples: list[_Sample], size: int, seed: int) -> None:
        from monai.transforms import Compose, RandFlipd, RandRotate90d
        from monai.transforms.utils import map_binary_to_indices

        keys = ("image", "mask")
        self.size, self.seed = size, seed
        self.flips = Compose(
            [RandFlipd(keys, prob=0.5, spatial_axis=1), RandFlipd(keys, prob=0.5, spatial_axis=0)]
        ).set_random_state(seed=seed)
        self.turns: Any = RandRotate90d(keys, prob=0.75, max_k=3)
        self.turns.set_random_state(seed=seed + 1)
        self.items = []
        for sample in samples:
            mask = sample.mask[None].astype(np.float32)
            fg, bg = map_binary_to_indices(mask)
            image = np.ascontiguousarray(sample.image, dtype=np.float32)
            self.items.append({"image": image, "mask": mask, "fg": fg, "bg": bg})
        self._croppers: dict[tuple[int, int], Any] = {}

    def _cropper(self, shape: tuple[int, int]) -> Any:
        from monai.transforms import RandCropByPosNegLabeld

        if shape not in self._croppers:
            self._croppers[shape] = RandCropByPosNegLabeld(
                ("image", "mask"), label_key="mask", spatial_size=shape, pos=1, neg=1,
                num_samples=1, fg_indices_key="fg", bg_indices_key="bg", allow_smaller=True,
            ).set_random_state(seed=self.seed + 2 + len(self._croppers))  # fmt: skip
        return self._croppers[shape]

    def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """One augmented crop ``(image (C, h, w) float32, mask (h, w) bool)`` of a sample."""
        from monai.data import get_track_meta, set_track_meta

        item = self.items[index]
        h, w = item["image"].shape[-2:]
        shape = (min(self.size, h), min(self.size, w))
        tracking = get_track_meta()
        set_track_meta(False)  # plain tensors: MONAI's metadata costs more than the crop
        try:
            crop = self.flips(self._cropper(shape)(item)[0])
            if shape[0] == shape[1]:  # quarter turns keep the shape of square crops only
                crop = self.turns(crop)
        finally:
            set_track_meta(tracking)
        image = np.ascontiguousarray(np.asarray(crop["image"]), dtype=np.float32)
        return image, np.ascontiguousarray(np.asarray(crop["mask"])[0] > 0.5)


def _loss_function() -> Any:
    """Binary cross-entropy plus Dice over the whole batch (MONAI's DiceCELoss; smoothing 1
    keeps crops without the concept from dominating)."""
    from monai.losses import DiceCELoss

    return DiceCELoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0, batch=True)


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (MONAI's compute_dice; 1 when both are empty)."""
    from monai.metrics import compute_dice

    y_pred, y = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
                 for a in (pred, truth))  # fmt: skip
    return float(compute_dice(y_pred, y, include_background=True, ignore_empty=False)[0, 0])


def _predict_sample(
    adapter: FinetuneAdapter, sample: _Sample, stats: IntensityStats, text: torch.Tensor, tile: int
) -> np.ndarray:
    """Probability > 0.5 over a whole plane, in non-overlapping tiles (validation only)."""
    _, h, w = sample.image.shape
    out = np.zeros((h, w), bool)
    with torch.no_grad():
        for ys in _tiles(h, tile, at_least=1):
            for xs in _tiles(w, tile, at_least=1):
                window = sample.image[None, :, ys, xs].astype(np.float32)
                out[ys, xs] = (adapter.logits(window, stats, text)[0] > 0).cpu().numpy()
    return out


# --------------------------------------------------------------------------------------------
# The public function


def finetune(
    image: Any,
    labels: Any,
    prompt: str,
    *,
    out: str | Path,
    base: str | PromptSegmenter = "llmseg-tiny",
    epochs: int = 30,
    slices: str | range | None = None,
    channel_axis: int | None = None,
    patience: int = 6,
    lr: float | None = None,
    batch_size: int = 8,
    steps_per_epoch: int = 20,
    crop: int | None = None,
    val_fraction: float = 0.25,
    train_all: bool = False,
    seed: int = 0,
    overwrite: bool = False,
    device: str = "cpu",
    progress: FinetuneProgress | None = None,
) -> FinetuneResult:
    """Fine-tune ``base`` so that ``prompt`` segments what ``labels`` marks in ``image``.

    Parameters
    ----------
    image : array-like or path
        2D (Y, X[, C]) or 3D (Z, Y, X[, C]) image, anything :func:`napari_llmseg.segment`
        reads.
    labels : array-like or path
        Same spatial shape; nonzero marks the concept. In a volume only labelled planes train
        (or all planes of ``slices``: then unlabelled planes in the range count as "absent").
    prompt : str
        The name the concept will answer to after training.
    out : path
        Folder to save the model to; must be new or empty unless ``overwrite``.
    base : str or backend
        ``"llmseg-tiny"`` (default), ``"clipseg"`` (or ``clipseg:ID``), a model folder of
        either, or a loaded backend.
    epochs, patience : int
        At most ``epochs`` epochs of ``steps_per_epoch`` batches; stop when validation Dice has
        not improved for ``patience`` epochs. The best epoch is saved.
    slices : "z0:z1" or range, optional
        Planes of a volume to train on (end excluded).
    lr : float, optional
        Learning rate (AdamW); 3e-3 for llmseg-tiny, 1e-4 for CLIPSeg by default.
    crop : int, optional
        Training crop edge (default: the model's window, at most 256 for llmseg-tiny).
    train_all : bool
        Train every parameter, the vision encoder included (needs more labels).
    """
    from ..backends.registry import get_model, list_models, model_info

    t0 = time.perf_counter()
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must name what the labels mark, got {prompt!r}")
    prompt = prompt.strip()
    out = Path(out)
    check_output_folder(out, overwrite, [image, labels, base])
    name = base.split(":")[0] if isinstance(base, str) else None
    if name in list_models() and not model_info(name).can_finetune:
        able = [n for n in list_models() if model_info(n).can_finetune]
        raise ValueError(
            f"the {name} backend cannot be fine-tuned; fine-tuning supports {', '.join(able)}"
        )
    for name, value in (("epochs", epochs), ("batch_size", batch_size),
                        ("steps_per_epoch", steps_per_epoch), ("patience", patience)):  # fmt: skip
        if int(value) < 1:
            raise ValueError(f"{name} must be at least 1, got {value!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction!r}")
    source = open_image(image, channel_axis=channel_axis)
    label_array = read_labels(labels)
    if tuple(label_array.shape) != source.spatial_shape:
        raise ValueError(
            f"labels have shape {tuple(label_array.shape)} but the image's spatial shape is "
            f"{source.spatial_shape}; they must match"
        )
    if label_array.dtype.kind not in "biu":
        raise ValueError(f"labels must be integer or boolean, got dtype {label_array.dtype}")
    if slices not in (None, "") and len(source.spatial_shape) != 3:
        raise ValueError("slices= applies to a 3D volume; this image is 2D")
    n_planes = source.spatial_shape[0]
    planes = parse_slices(slices, n_planes) if isinstance(slices, str) else slices
    samples, indices = _samples(source, label_array, planes)

    # a backend passed in is copied: training must not change the caller's model
    backend = (
        copy.deepcopy(base)
        if isinstance(base, PromptSegmenter)
        else get_model(base, device=device)
    )
    backend.check_channels(source.n_channels)
    base_name = base if isinstance(base, str) else backend.name
    adapter = backend.finetune_adapter(train_all)
    stats = compute_stats(source)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    train_idx, val_idx = _split(len(samples), val_fraction, rng)
    edge = crop or min(int(backend.default_roi), adapter.max_crop)
    text = adapter.encode(prompt)
    tile = max(edge, 256)

    def validate() -> float:
        dices = [
            _dice(_predict_sample(adapter, samples[i], stats, text, tile), samples[i].mask)
            for i in val_idx
        ]
        return float(np.mean(dices))

    module = adapter.module()
    module.eval()  # BatchNorm/dropout as at inference: running statistics stay frozen
    before = validate()
    params = adapter.trainable()
    opt = torch.optim.AdamW(params, lr=lr or adapter.default_lr)
    loss_function = _loss_function()
    augment = _Augment(samples, edge, seed)
    # the best *trained* epoch is kept, even when the base model scored higher on the
    # validation planes (a base model that confuses the concept with a broader one, such as
    # "brain" for "cerebellum", can start high and dip before it learns the distinction)
    best, best_epoch, best_state = -1.0, 0, copy.deepcopy(module.state_dict())
    history: list[dict] = []
    since = 0
    epoch = 0
    for epoch in range(1, int(epochs) + 1):
        losses = []
        for _ in range(int(steps_per_epoch)):
            picks = [train_idx[int(rng.integers(len(train_idx)))] for _ in range(int(batch_size))]
            crops = [augment(i) for i in picks]
            shapes = {c[0].shape for c in crops}
            if len(shapes) > 1:  # planes of different sizes: crop all to the smallest
                h = min(s[1] for s in shapes)
                w = min(s[2] for s in shapes)
                crops = [(c[0][:, :h, :w], c[1][:h, :w]) for c in crops]
            windows = np.stack([c[0] for c in crops])
            target = torch.from_numpy(np.stack([c[1] for c in crops]).astype(np.float32))
            logits = adapter.logits(windows, stats, text)[:, None]
            loss = loss_function(logits, target.to(text.device)[:, None])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss.detach()))
        score = validate()
        history.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 4),
                        "val_dice": round(score, 4)})  # fmt: skip
        if progress is not None:
            progress(epoch, int(epochs), float(np.mean(losses)), score)
        if score > best:
            best, best_epoch, since = score, epoch, 0
            best_state = copy.deepcopy(module.state_dict())
        else:
            since += 1
            if since >= patience:
                break
    module.load_state_dict(best_state)
    total = sum(p.numel() for p in module.parameters())
    result = FinetuneResult(
        folder=out,
        base=str(base_name),
        prompt=prompt,
        trainable_parameters=int(sum(p.numel() for p in params)),
        total_parameters=int(total),
        train_planes=[indices[i] for i in train_idx],
        val_planes=[indices[i] for i in val_idx],
        val_dice_before=round(before, 4),
        val_dice=round(best, 4),
        best_epoch=best_epoch,
        epochs_run=epoch,
        history=history,
        seconds=round(time.perf_counter() - t0, 1),
    )
    check_output_folder(out, overwrite, [image, labels, base])  # again: it may have changed
    clear_model_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    adapter.save(out, result.record())
    (out / RECORD_FILE).write_text(json.dumps(result.record(), indent=2))
    mark_model_folder(out, f"{result.base} fine-tuned for {prompt!r}")
    return result


__all__: Sequence[str] = ["FinetuneResult", "finetune", "parse_slices"]
