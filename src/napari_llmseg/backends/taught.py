"""llmseg-taught: llmseg-tiny taught a concept from corrections painted on a few planes.

A taught model is the frozen llmseg-tiny network plus a small per-pixel classifier (one hidden
layer) trained on the painted pixels by :mod:`napari_llmseg.training.teach`. Its features are
computed from one window alone, as the engine presents it:

- llmseg-tiny's activations at every U-Net level (the decoder outputs at 1, 1/2, 1/4 and 1/8
  resolution, the bottleneck at 1/16, the per-pixel projection) and its text-conditioned
  logits for the concepts it knows and for the taught prompt (the "text prior");
- a classical filter bank on the normalised intensity (as ilastik's: gaussian, gradient
  magnitude, Laplacian of gaussian and Hessian eigenvalues at several scales, reflect-padded).

Coarse levels are upsampled to the window (bilinear), then standardised and clipped: the same
function at training time (on the painted pixels) and when the model runs (a group of channels
at a time; a channel stored unclipped runs its first layer at its level's resolution instead,
exactly, since a linear map commutes with the upsampling). The classifier is stored as plain
arrays in a safetensors file with its configuration in the file's metadata and in config.json
(``model_type: llmseg-taught``); no pickle anywhere.

Prompts other than the taught one are answered by llmseg-tiny itself, from the same pass.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ..engine.normalize import IntensityStats
from .base import BackendSpec, ModelInfo, PromptSegmenter, require_safetensors, safetensors_shapes
from .knowledge import prompt_key
from .tiny import MODEL_TYPE as TINY
from .tiny import LLMSegTiny

MODEL_TYPE = "llmseg-taught"
FORMAT_VERSION = 1

#: Label values of a corrections layer: the concept, and what it is not (0: unknown).
CONCEPT, NOT_CONCEPT = 1, 2

#: Logits are clipped to +-LOGIT_CLIP (probabilities 6e-6 .. 1 - 6e-6) for blending.
LOGIT_CLIP = 12.0

#: Standardised features are clipped to +-Z_CLIP: what was never seen at the painted pixels
#: cannot swing the answer far from them (2 against 6: CT strokes 0.66 -> 0.78 Dice, the
#: other cases of benchmarks/teach.py within +-0.02).
Z_CLIP = 2.0

#: Channels of a coarse level upsampled at once when predicting (bounds a batch's memory).
_UPSAMPLE_GROUP = 32

#: llmseg-tiny's levels, with their downsampling factor.
DEEP_LEVELS = {"proj": 1, "dec0": 1, "dec1": 2, "dec2": 4, "dec3": 8, "enc4": 16}


# --- classical filter bank (torch, separable, from the window alone) ---------------------


def _gauss_kernels(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """(3, 2r+1): a 1D gaussian and its first and second derivatives (as scipy defines them),
    as correlation kernels."""
    r = max(1, int(truncate * sigma + 0.5))
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    g1 = -x / sigma**2 * g
    g2 = (x**2 / sigma**4 - 1 / sigma**2) * g
    g2 = g2 - g2.mean()  # no response to a constant, as scipy's order-2 filter
    return torch.stack([g, -g1, g2]).float()


def _pad_reflect(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Mirror-pad ``x`` by ``r`` along ``dim`` (scipy's "reflect"), any ``r``."""
    n = x.shape[dim]
    if n == 1:
        reps = [1] * x.ndim
        reps[dim] = 2 * r + 1
        return x.repeat(*reps)
    idx = torch.arange(-r, n + r)
    period = 2 * n
    idx = torch.remainder(idx, period)
    idx = torch.where(idx >= n, period - 1 - idx, idx)
    return x.index_select(dim, idx)


def _correlate(x: torch.Tensor, k: torch.Tensor, dim: int) -> torch.Tensor:
    """Correlate (B, 1, H, W) with a 1D kernel along ``dim`` (-2: Y, -1: X)."""
    r = (k.numel() - 1) // 2
    xp = _pad_reflect(x, r, dim)
    w = k.view(1, 1, 1, -1) if dim == -1 else k.view(1, 1, -1, 1)
    return F.conv2d(xp, w)


def filter_bank(x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Per-pixel filter bank of (B, 1, H, W) intensities -> (B, 1 + 5 * len(sigmas), H, W):
    the intensity, then per scale the gaussian, gradient magnitude, Laplacian of gaussian and
    the two Hessian eigenvalues (larger first)."""
    out = [x]
    for s in sigmas:
        k = _gauss_kernels(float(s))
        along_y = [_correlate(x, k[o], -2) for o in range(3)]  # d^o / dy^o
        g = _correlate(along_y[0], k[0], -1)
        gx, gy = _correlate(along_y[0], k[1], -1), _correlate(along_y[1], k[0], -1)
        gxx, gyy = _correlate(along_y[0], k[2], -1), _correlate(along_y[2], k[0], -1)
        gxy = _correlate(along_y[1], k[1], -1)
        half_trace = (gxx + gyy) / 2
        spread = torch.sqrt(((gxx - gyy) / 2) ** 2 + gxy**2)
        out += [g, torch.sqrt(gx**2 + gy**2), gxx + gyy, half_trace + spread, half_trace - spread]
    return torch.cat(out, 1)


# --- features -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureConfig:
    """Which features a taught model uses (stored with it).

    Attributes
    ----------
    sigmas : tuple of float
        Scales of the filter bank, in pixels (empty: none).
    levels : tuple of str
        llmseg-tiny levels used (keys of :data:`DEEP_LEVELS`).
    concepts : tuple of str
        Prompts whose llmseg-tiny logits are features (the text prior).
    """

    sigmas: tuple[float, ...] = (1.0, 2.0, 4.0)
    levels: tuple[str, ...] = ("proj", "dec0", "dec1", "dec2", "dec3", "enc4")
    concepts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [n for n in self.levels if n not in DEEP_LEVELS]
        if unknown:
            raise ValueError(
                f"unknown feature levels {unknown}; expected some of {list(DEEP_LEVELS)}"
            )
        if any(not 0 < s <= 64 for s in self.sigmas):
            raise ValueError(f"filter scales must be in (0, 64] pixels, got {list(self.sigmas)}")

    def to_dict(self) -> dict:
        return {
            "sigmas": list(self.sigmas),
            "levels": list(self.levels),
            "concepts": list(self.concepts),
        }

    @classmethod
    def from_dict(cls, d: dict) -> FeatureConfig:
        return cls(
            tuple(float(s) for s in d["sigmas"]),
            tuple(str(n) for n in d["levels"]),
            tuple(str(c) for c in d["concepts"]),
        )


@dataclass
class Features:
    """Features of a batch of windows, the coarse levels at their own resolution.

    Attributes
    ----------
    coarse : list of torch.Tensor
        (B, C, H/f, W/f) maps of the window padded to ``padded_hw``, in channel order.
    full : torch.Tensor
        (B, C_full, h, w) full-resolution features, cropped to the window.
    hw, padded_hw : tuple of int
        The window's size, and the size the U-Net ran at (a multiple of 16).
    base_logits : torch.Tensor or None
        (B, P, h, w) llmseg-tiny's logits for the run's prompts, when asked for.
    """

    coarse: list[torch.Tensor]
    full: torch.Tensor
    hw: tuple[int, int]
    padded_hw: tuple[int, int]
    base_logits: torch.Tensor | None = None

    @property
    def n_channels(self) -> int:
        return sum(int(m.shape[1]) for m in self.coarse) + int(self.full.shape[1])

    def upsampled(self, level: torch.Tensor) -> torch.Tensor:
        h, w = self.hw
        up = F.interpolate(level, size=self.padded_hw, mode="bilinear", align_corners=False)
        return up[..., :h, :w]

    def rows(self, mask: torch.Tensor) -> torch.Tensor:
        """(N, C) feature rows at ``mask`` ((B, h, w) bool), in the classifier's order."""
        maps = [self.upsampled(m) for m in self.coarse] + [self.full]
        return torch.cat(maps, 1).permute(0, 2, 3, 1)[mask]


class FeatureExtractor:
    """Per-pixel features of preprocessed windows from llmseg-tiny and the filter bank.

    Parameters
    ----------
    base : LLMSegTiny
    config : FeatureConfig
    """

    def __init__(self, base: LLMSegTiny, config: FeatureConfig) -> None:
        self.base = base
        self.config = config
        concepts = list(config.concepts)
        self._text = base.encode_prompts(concepts) if concepts else None

    def layout(self) -> list[tuple[str, int]]:
        """(group, channels) in the classifier's channel order."""
        net = self.base.net
        channels = {
            "proj": net.head_dim,
            **{f"dec{i}": w for i, w in enumerate(net.widths)},
            "enc4": net.widths[-1],
        }
        coarse = [(n, channels[n]) for n in self.config.levels if DEEP_LEVELS[n] > 1]
        full = [(n, channels[n]) for n in self.config.levels if DEEP_LEVELS[n] == 1]
        if self.config.concepts:
            full.append(("concepts", len(self.config.concepts)))
        if self.config.sigmas:
            full.append(("filters", 1 + 5 * len(self.config.sigmas)))
        return coarse + full

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, prompts_encoded: Any = None) -> Features:
        """Features of a preprocessed batch ``x`` (B, 3, h, w) (:meth:`LLMSegTiny.preprocess`);
        with ``prompts_encoded``, also llmseg-tiny's own logits for those prompts."""
        h, w = x.shape[-2:]
        net = self.base._inference_net()
        m = net.multiple
        ph, pw = (-h) % m, (-w) % m
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x
        acts: dict[str, torch.Tensor] = {}
        cur = xp.contiguous(memory_format=torch.channels_last)
        skips = []
        for i, block in enumerate(net.enc):
            cur = block(F.max_pool2d(cur, 2) if i else cur)
            skips.append(cur)
        acts["enc4"] = cur
        for i in range(len(net.dec) - 1, -1, -1):
            cur = F.interpolate(cur, scale_factor=2, mode="nearest")
            cur = net.dec[i](torch.cat([cur, skips[i]], 1))
            acts[f"dec{i}"] = cur
        acts["proj"] = net.proj(cur)
        levels = self.config.levels
        coarse = [acts[n].contiguous() for n in levels if DEEP_LEVELS[n] > 1]
        full = [acts[n][..., :h, :w] for n in levels if DEEP_LEVELS[n] == 1]
        if self._text is not None:
            full.append(net.head(acts["proj"], self._text)[..., :h, :w])
        if self.config.sigmas:
            gray = x.mean(1, keepdim=True).float()  # grayscale repeated to 3 channels, or RGB
            full.append(filter_bank(gray, self.config.sigmas))
        base_logits = None
        if prompts_encoded is not None:
            base_logits = net.head(acts["proj"], prompts_encoded)[..., :h, :w].float()
        full_t = torch.cat([f.float().contiguous() for f in full], 1)
        return Features(coarse, full_t, (h, w), (h + ph, w + pw), base_logits)


# --- classifier ---------------------------------------------------------------------------


class Classifier:
    """A one-hidden-layer MLP on standardised features, held as plain float32 arrays.

    ``logit = w2 . relu(w1 . z + b1) + b2`` with ``z = clip((f - mean) / scale, -clip,
    clip)`` per channel; ``w1``'s columns follow :meth:`Features.rows`' channel order. The clip
    bounds what a feature never seen varying at the painted pixels (a level silent in a few
    strokes, then active elsewhere) can do to the answer. Teaching clips every channel at
    :data:`Z_CLIP`; a coarse channel is clipped after upsampling, as training saw it. A channel
    stored with an infinite clip is not clipped, and its first layer then runs at its level's
    own resolution (a linear map commutes with the bilinear upsampling).
    """

    ARRAYS = ("w1", "b1", "w2", "b2", "mean", "scale")

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        missing = [k for k in self.ARRAYS if k not in arrays]
        if missing:
            raise ValueError(
                f"a taught classifier needs arrays {list(self.ARRAYS)}; missing {missing}"
            )
        self.arrays = {k: np.ascontiguousarray(arrays[k], dtype=np.float32) for k in self.ARRAYS}
        hidden, n_in = self.arrays["w1"].shape
        # "clip" is optional: folders taught before it existed clipped every channel
        clip = arrays.get("clip")
        self.arrays["clip"] = np.ascontiguousarray(
            np.full(n_in, Z_CLIP) if clip is None else clip, dtype=np.float32
        )
        self._t = {k: torch.from_numpy(v) for k, v in self.arrays.items()}
        expected = {
            "b1": (hidden,),
            "w2": (1, hidden),
            "b2": (1,),
            "mean": (n_in,),
            "scale": (n_in,),
            "clip": (n_in,),
        }
        for k, shape in expected.items():
            if self.arrays[k].shape != shape:
                raise ValueError(
                    f"taught classifier array {k!r} should have shape {shape}, "
                    f"got {self.arrays[k].shape}"
                )
        for k in ("scale", "clip"):
            if not (self.arrays[k] > 0).all():
                raise ValueError(f"taught classifier array {k!r} must be positive")
        self.n_inputs = n_in

    def _standard(self, x: torch.Tensor, cols: slice | torch.Tensor, dim: int) -> torch.Tensor:
        shape = [1] * x.ndim
        shape[dim] = -1
        mean = self._t["mean"][cols].view(shape)
        scale = self._t["scale"][cols].view(shape)
        clip = self._t["clip"][cols].view(shape)
        return torch.minimum((x - mean) / scale, clip).maximum(-clip)

    @torch.inference_mode()
    def logits(self, feats: Features) -> torch.Tensor:
        """(B, h, w) float32 log-odds of the concept, clipped to +-:data:`LOGIT_CLIP`."""
        w1, b1, w2, b2 = (self._t[k] for k in ("w1", "b1", "w2", "b2"))
        if w1.shape[1] != feats.n_channels:
            raise ValueError(
                f"the classifier expects {w1.shape[1]} feature channels, the "
                f"features have {feats.n_channels}"
            )
        col, acc = 0, None
        for level in feats.coarse:
            n = level.shape[1]
            idx = torch.arange(col, col + n)
            free = torch.isinf(self._t["clip"][idx])
            if bool(free.any()):  # linear at the level's resolution, then upsample hidden units
                chosen = idx[free]
                z = self._standard(level[:, chosen - col], chosen, 1)
                part = feats.upsampled(F.conv2d(z, w1[:, chosen, None, None]))
                acc = part if acc is None else acc.add_(part)
            clipped = idx[~free]
            for start in range(0, len(clipped), _UPSAMPLE_GROUP):  # upsample, then clip
                chosen = clipped[start : start + _UPSAMPLE_GROUP]
                z = self._standard(feats.upsampled(level[:, chosen - col]), chosen, 1)
                part = F.conv2d(z, w1[:, chosen, None, None])
                acc = part if acc is None else acc.add_(part)
            col += n
        z = self._standard(feats.full, slice(col, None), 1)
        part = F.conv2d(z, w1[:, col:, None, None], b1)
        acc = part if acc is None else acc + part
        out = F.conv2d(torch.relu_(acc), w2[:, :, None, None], b2)[:, 0]
        return out.clamp_(-LOGIT_CLIP, LOGIT_CLIP)

    def logits_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Log-odds of (N, C) feature rows (what training sees)."""
        w1, b1, w2, b2 = (self._t[k] for k in ("w1", "b1", "w2", "b2"))
        z = self._standard(rows, slice(None), 1)
        return (torch.relu(z @ w1.T + b1) @ w2.T + b2)[:, 0].clamp(-LOGIT_CLIP, LOGIT_CLIP)


# --- the backend --------------------------------------------------------------------------


class TaughtModel(PromptSegmenter):
    """llmseg-tiny with a concept taught from painted corrections.

    Parameters
    ----------
    base : LLMSegTiny
        The frozen network the features come from.
    classifier : Classifier
    features : FeatureConfig
    prompt : str
        The taught concept: this prompt is answered by the classifier, any other by ``base``.
    record : dict
        Provenance (painted planes, pixels per class, training steps, seconds...).
    folder : Path, optional
        Where the model was saved or loaded from.
    """

    spatial_dims = 2
    # A plane smaller than the window is not padded: the features of a 256 x 80 plane padded
    # to 256 x 256 cost the microscopy case of benchmarks/teach.py 0.02-0.03 Dice.
    window_within_image = True

    def __init__(
        self,
        base: LLMSegTiny,
        classifier: Classifier,
        features: FeatureConfig,
        prompt: str,
        record: dict | None = None,
        folder: Path | None = None,
    ) -> None:
        self.base = base
        self.classifier = classifier
        self.features = features
        self.prompt = str(prompt)
        self.record = dict(record or {})
        self.folder = folder
        self.default_roi = base.default_roi
        self.name = f"{self.prompt} (taught)"
        self.extractor = FeatureExtractor(base, features)
        self.teacher: Any = None  # the Teacher that made it, for a further round
        n = sum(c for _, c in self.extractor.layout())
        if n != classifier.n_inputs:
            raise ValueError(
                f"the classifier takes {classifier.n_inputs} features, the feature "
                f"configuration gives {n}"
            )

    # what it knows
    def concepts(self) -> list[str]:
        known = self.base.concepts()
        return known + ([self.prompt] if self.prompt not in known else [])

    def concept_phrasings(self) -> tuple[dict[str, list[str]], list[str]] | None:
        base = self.base.concept_phrasings() or ({}, [])
        return {**base[0], self.prompt: [self.prompt]}, base[1]

    def summary(self) -> str:
        r = self.record
        planes = r.get("planes", [])
        where = f" on {len(planes)} plane(s)" if planes else ""
        return (
            f"{r.get('concept_pixels', 0):,} concept and {r.get('other_pixels', 0):,} other "
            f"painted pixels{where}, {r.get('seconds', 0):.1f} s"
        )

    def describe(self) -> dict:
        return {
            "name": MODEL_TYPE,
            "prompt": self.prompt,
            "base": self.base.describe(),
            "folder": str(self.folder) if self.folder else None,
        }

    def weight_files(self) -> list[Path]:
        own = (
            [self.folder / "config.json", self.folder / "model.safetensors"] if self.folder else []
        )
        return own + self.base.weight_files()

    # the engine's calls
    def check_channels(self, n_channels: int) -> None:
        self.base.check_channels(n_channels)

    def pad_value(self, stats: IntensityStats) -> np.ndarray:
        return self.base.pad_value(stats)

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[list[bool], Any]:
        taught = [prompt_key(p) == prompt_key(self.prompt) for p in prompts]
        return taught, self.base.encode_prompts(list(prompts))

    def preprocess(self, windows: np.ndarray, stats: IntensityStats) -> torch.Tensor:
        return self.base.preprocess(windows, stats)

    def predict(self, batch: torch.Tensor, encoded: Any) -> np.ndarray:
        taught, text = encoded
        with torch.inference_mode():
            feats = self.extractor(batch, None if all(taught) else text)
            out = torch.empty((batch.shape[0], len(taught), *feats.hw), dtype=torch.float32)
            mine = self.classifier.logits(feats)
            theirs = feats.base_logits
            for i, is_taught in enumerate(taught):
                out[:, i] = mine if is_taught or theirs is None else theirs[:, i]
        return np.ascontiguousarray(out.cpu().numpy())

    # saving and loading
    def config(self) -> dict:
        return {
            "model_type": MODEL_TYPE,
            "format_version": FORMAT_VERSION,
            "prompt": self.prompt,
            "concepts": self.concepts(),
            "base": self.base.describe(),
            "features": self.features.to_dict(),
            "hidden": int(self.classifier.arrays["w1"].shape[0]),
            "taught": self.record,
        }

    def save(self, folder: Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` into ``folder`` (which must exist)."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        config = self.config()
        save_file(
            self.classifier.arrays,
            str(folder / "model.safetensors"),
            metadata={"napari_llmseg": json.dumps({"model_type": MODEL_TYPE})},
        )
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        self.folder = folder


def load_folder(folder: Path | str, *, device: Any = "cpu") -> TaughtModel:
    """Load a taught model folder (config.json with ``model_type: llmseg-taught`` and
    model.safetensors). The base llmseg-tiny is the embedded one, or the folder recorded as
    its base when that was a model folder (it must still exist)."""
    from safetensors.numpy import load_file

    from .tiny import load_config

    folder = Path(folder)
    config = load_config(folder)
    if config.get("model_type") != MODEL_TYPE:
        raise ValueError(
            f"'{folder}' holds a {config.get('model_type')!r} model, not {MODEL_TYPE}"
        )
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"'{folder / 'config.json'}': format_version "
            f"{config.get('format_version')!r} is not {FORMAT_VERSION}; it was "
            "written by another version of napari-llmseg"
        )
    require_safetensors(folder)
    weights = folder / "model.safetensors"
    shapes = safetensors_shapes(weights)  # checks the header before anything is allocated
    known = set(Classifier.ARRAYS)
    if set(shapes) not in (known, known | {"clip"}) or any(
        np.prod(s) > 10**7 for s in shapes.values()
    ):
        raise ValueError(
            f"'{weights}' is not a taught classifier: it holds "
            f"{sorted(shapes)} with shapes {list(shapes.values())}"
        )
    try:
        features = FeatureConfig.from_dict(config["features"])
        prompt = str(config["prompt"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"'{folder / 'config.json'}' misses {err} for a taught model") from None
    base_folder = (config.get("base") or {}).get("folder")
    base_spec = None if base_folder in (None, "embedded") else base_folder
    base = LLMSegTiny(base_spec, device=device)
    classifier = Classifier(load_file(str(weights)))
    return TaughtModel(base, classifier, features, prompt, config.get("taught"), folder)


def _load(spec: str | None, *, device: Any, dtype: Any = None) -> TaughtModel:
    if not spec:
        raise ValueError(
            f"{MODEL_TYPE} needs the folder a taught model was saved in "
            f"(model='path/to/folder' or '{MODEL_TYPE}:path/to/folder'); teach one with "
            "napari_llmseg.teach or the widget's Teach button"
        )
    return load_folder(spec, device=device)


def _info() -> ModelInfo:
    return ModelInfo(
        MODEL_TYPE,
        "FOLDER",
        False,
        True,
        f"{TINY} taught a concept from painted corrections (napari_llmseg.teach)",
        can_finetune=False,
        vocabulary="what its folder's config.json lists under concepts",
    )


#: Registered in pyproject.toml's ``napari_llmseg.backends`` entry points.
BACKEND = BackendSpec(MODEL_TYPE, _load, _info, folder_types=(MODEL_TYPE,))
