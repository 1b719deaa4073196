"""llmseg-tiny: the small text-conditioned segmentation model shipped inside the package.

Architecture. A prompt-independent U-Net (BatchNorm, so predictions depend only on local
content and blend without seams) turns a window into per-pixel features. The prompt's frozen
MiniLM sentence embedding is mapped by a small MLP to a FiLM modulation (scale, shift) of those
features and to the weights of a linear read-out, giving one logit map per prompt. The costly
U-Net runs once per window whatever the number of prompts; each extra prompt costs only the
per-pixel head.

Weights are stored as safetensors next to a ``config.json`` that records the architecture, the
input normalisation and how the weights were trained.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..engine.normalize import IntensityStats
from .base import (
    BackendSpec,
    FinetuneAdapter,
    ModelInfo,
    PromptSegmenter,
    require_safetensors,
    safetensors_shapes,
)
from .text import EMBED_DIM, encode_texts

MODEL_TYPE = "llmseg-tiny"
WEIGHTS_DIR = Path(__file__).parent / "weights" / MODEL_TYPE


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int, n: int = 2) -> None:
        layers: list[nn.Module] = []
        for k in range(n):
            layers += [
                nn.Conv2d(cin if k == 0 else cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers)


class TinySegNet(nn.Module):
    """U-Net features + text-conditioned per-pixel head.

    Parameters
    ----------
    in_channels : int
        Channels of the normalised input (3; grayscale is repeated).
    widths : sequence of int
        Channels per U-Net level; the input must be divisible by ``2 ** (len(widths) - 1)``.
    head_dim : int
        Channels of the per-pixel features the prompt modulates.
    text_dim : int
        Size of the sentence embedding.
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (8, 16, 32, 64, 128),
        head_dim: int = 16,
        text_dim: int = EMBED_DIM,
        text_hidden: int = 256,
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        self.widths, self.head_dim = widths, head_dim
        self.enc = nn.ModuleList(
            _Block(in_channels if i == 0 else widths[i - 1], w) for i, w in enumerate(widths)
        )
        self.dec = nn.ModuleList(
            _Block(widths[i + 1] + widths[i], widths[i], 1 if i == 0 else 2)
            for i in range(len(widths) - 1)
        )
        self.proj = nn.Conv2d(widths[0], head_dim, 1)
        self.text = nn.Sequential(
            nn.Linear(text_dim, text_hidden), nn.ReLU(), nn.Linear(text_hidden, 3 * head_dim + 1)
        )

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Prompt-independent per-pixel features (B, head_dim, H, W)."""
        skips = []
        h = x
        for i, block in enumerate(self.enc):
            if i:
                h = F.max_pool2d(h, 2)
            h = block(h)
            skips.append(h)
        for i in range(len(self.dec) - 1, -1, -1):
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = self.dec[i](torch.cat([h, skips[i]], 1))
        return self.proj(h)

    def head(self, feats: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Logits (B, P, H, W) from features and P prompt embeddings (P, text_dim)."""
        d = self.head_dim
        p = self.text(text)
        gamma, beta, w, bias = p[:, :d], p[:, d : 2 * d], p[:, 2 * d : 3 * d], p[:, 3 * d]
        z = torch.relu(
            feats[:, None] * (1 + gamma[None, :, :, None, None]) + beta[None, :, :, None, None]
        )
        return torch.einsum("bpchw,pc->bphw", z, w) + bias[None, :, None, None]

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x), text)


def inference_net(net: TinySegNet) -> TinySegNet:
    """A copy of an eval-mode ``net`` made for prediction on the CPU.

    Every BatchNorm is folded into the convolution before it (torch's ``fuse_conv_bn_eval``)
    and the weights are in channels-last layout, which lets oneDNN run the narrow convolutions
    of this U-Net without reordering every activation. The function is the same up to float
    rounding; a forward pass takes 13.4 instead of 22.3 ms per 256 x 256 window on one CPU
    thread (``python benchmarks/tiny_inference.py``, figures in docs/benchmarks.md).
    """
    import copy

    from torch.nn.utils import fuse_conv_bn_eval

    fast = copy.deepcopy(net).eval()
    for block in (*fast.enc, *fast.dec):
        layers, fused = list(block), []
        while layers:
            layer = layers.pop(0)
            if isinstance(layer, nn.Conv2d) and layers and isinstance(layers[0], nn.BatchNorm2d):
                layer = fuse_conv_bn_eval(layer, layers.pop(0))
            fused.append(layer)
        block._modules.clear()
        for i, layer in enumerate(fused):
            block.add_module(str(i), layer)
    return fast.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def padded_forward(net: TinySegNet, batch: torch.Tensor, encoded: Any) -> torch.Tensor:
    """Logits ``(B, P, H, W)``: the batch padded to the U-Net's multiple and cropped back."""
    h, w = batch.shape[-2:]
    m = net.multiple
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        batch = F.pad(batch, (0, pw, 0, ph), mode="replicate")
    return net(batch, encoded)[..., :h, :w]


#: A 1st percentile at or below this many Hounsfield units means air: the input is a CT.
HU_AIR = -500.0


def model_stats(stats: IntensityStats, config: dict) -> IntensityStats:
    """The intensity range llmseg-tiny normalises with.

    CT in Hounsfield units is windowed, not percentile-stretched: when the input looks like
    CT (its low percentile is air, at most -500 HU) and the caller chose no window, the
    model's own training window (``normalization.ct_window`` in its config) is used. An
    explicit window (``segment(..., window=...)``) and every other input keep the engine's
    whole-input statistics.
    """
    ct = config.get("normalization", {}).get("ct_window")
    if ct and stats.window is None and min(stats.low) <= HU_AIR:
        return IntensityStats.from_window(float(ct[0]), float(ct[1]), len(stats.low))
    return stats


def model_input(windows: np.ndarray, stats: IntensityStats) -> np.ndarray:
    """Raw windows ``(B, C, H, W)`` -> the network's input: ``(x - low) / (high - low)`` per
    channel, grayscale repeated to three channels; float32, contiguous."""
    offset, inv = stats.scale()
    shape = (1, -1) + (1,) * (windows.ndim - 2)
    x = (windows - offset.reshape(shape)) * inv.reshape(shape)
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    return np.ascontiguousarray(x, dtype=np.float32)


def load_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in model folder '{folder}'")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"'{path}' is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"'{path}' must hold a JSON object, got {type(config).__name__}")
    return config


def _int_in(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


#: Bounds of a plausible llmseg-tiny architecture (the shipped one: widths 8..128, 5 levels).
_ARCH_LIMITS = {"in_channels": (1, 4), "head_dim": (1, 1024), "text_hidden": (1, 8192)}


def check_architecture(arch: Any, folder: Path) -> dict:
    """The ``architecture`` of a config.json as TinySegNet arguments, checked before anything
    is allocated: integers in plausible ranges, 1 to 8 U-Net levels of at most 4096 channels.

    Raises
    ------
    ValueError
        Naming the bad entry.
    """
    where = f"'{folder / 'config.json'}'"
    if not isinstance(arch, dict):
        raise ValueError(f"{where} has no 'architecture' object (got {arch!r})")
    out: dict[str, Any] = {}
    for key, (lo, hi) in _ARCH_LIMITS.items():
        value = arch.get(key, 256 if key == "text_hidden" else None)
        if not _int_in(value, lo, hi):
            raise ValueError(
                f"{where}: architecture.{key} must be an integer in [{lo}, {hi}], got {value!r}"
            )
        out[key] = value
    widths: Any = arch.get("widths")
    plausible = isinstance(widths, list) and 1 <= len(widths) <= 8
    if not plausible or not all(_int_in(w, 1, 4096) for w in widths):
        raise ValueError(
            f"{where}: architecture.widths must be a list of 1 to 8 integers in [1, 4096], got "
            f"{widths!r}"
        )
    out["widths"] = widths
    return out


class LLMSegTiny(PromptSegmenter):
    """The embedded default model; see :mod:`napari_llmseg.backends.tiny`."""

    name = MODEL_TYPE
    default_roi = 256

    def __init__(self, folder: Path | str | None = None, *, device: torch.device | str = "cpu"):
        from safetensors.torch import load_file

        self.folder = Path(folder) if folder is not None else WEIGHTS_DIR
        self.config = load_config(self.folder)
        if self.config.get("model_type") != MODEL_TYPE:
            raise ValueError(
                f"'{self.folder}' holds a {self.config.get('model_type')!r} model, "
                f"not {MODEL_TYPE}"
            )
        require_safetensors(self.folder)
        weights = self.folder / "model.safetensors"
        arch = check_architecture(self.config.get("architecture"), self.folder)
        with torch.device("meta"):  # the shapes it must have, without allocating anything
            expected = {k: tuple(v.shape) for k, v in TinySegNet(**arch).state_dict().items()}
        found = safetensors_shapes(weights)
        for name, shape in expected.items():
            if found.get(name) != shape:
                raise ValueError(
                    f"'{weights}' does not fit the architecture in config.json: tensor "
                    f"{name!r} should have shape {shape}, the file has "
                    f"{found.get(name, 'no such tensor')}"
                )
        self.net = TinySegNet(**arch)
        self.net.load_state_dict(load_file(weights))
        self.device = torch.device(device)
        self.net.to(self.device).eval()
        self.default_roi = int(self.config.get("default_roi", self.default_roi))
        self._fast: tuple[tuple, TinySegNet] | None = None

    def describe(self) -> dict:
        return {
            "name": self.name,
            "folder": "embedded" if self.folder == WEIGHTS_DIR else str(self.folder),
            "version": self.config.get("version"),
        }

    def concepts(self) -> list[str]:
        return [str(c) for c in self.config.get("concepts", [])]

    def weight_files(self) -> list[Path]:
        return [self.folder / "config.json", self.folder / "model.safetensors"]

    def concept_phrasings(self) -> tuple[dict[str, list[str]], list[str]] | None:
        prompts = self.config.get("training", {}).get("prompts", {})
        trained = prompts.get("concepts", {})
        concepts = {c: list(trained.get(c, {}).get("train", [])) or [c] for c in self.concepts()}
        negatives = list(prompts.get("negatives", {}).get("train", []))
        return (concepts, negatives) if concepts else None

    def finetune_adapter(self, train_all: bool = False) -> TinyAdapter:
        return TinyAdapter(self, train_all)

    def check_channels(self, n_channels: int) -> None:
        if n_channels not in (1, 3):
            raise ValueError(
                f"{self.name} takes 1 (grayscale) or 3 (RGB) channels, the image has "
                f"{n_channels}; pass a single channel or an RGB composite"
            )

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        return torch.from_numpy(encode_texts(prompts)).to(self.device)

    def preprocess(self, windows: np.ndarray, stats: IntensityStats) -> torch.Tensor:
        x = model_input(windows, model_stats(stats, self.config))
        return torch.from_numpy(x).to(self.device)

    def logits(self, batch: torch.Tensor, encoded: Any) -> torch.Tensor:
        """Logits ``(B, P, H, W)`` of a preprocessed batch from the network as trained;
        differentiable (fine-tuning calls it with gradients on)."""
        return padded_forward(self.net, batch, encoded)

    def _inference_net(self) -> TinySegNet:
        """:func:`inference_net` of ``self.net``, made again whenever its weights or
        statistics have changed (fine-tuning trains ``self.net`` in place)."""
        state = (*self.net.parameters(), *self.net.buffers())
        key = tuple((id(t), t._version) for t in state)
        if self._fast is None or self._fast[0] != key:
            self._fast = (key, inference_net(self.net))
        return self._fast[1]

    def predict(self, batch: torch.Tensor, encoded: Any) -> np.ndarray:
        with torch.inference_mode():
            if self.net.training:  # BatchNorm on batch statistics: nothing to fold
                logits = self.logits(batch, encoded)
            else:
                x = batch.contiguous(memory_format=torch.channels_last)
                logits = padded_forward(self._inference_net(), x, encoded)
        return np.ascontiguousarray(logits.float().cpu().numpy())


class TinyAdapter(FinetuneAdapter):
    """Fine-tuning llmseg-tiny: the U-Net decoder, the per-pixel projection and the prompt MLP
    train (everything with ``train_all``); the encoder half and the text encoder are frozen."""

    default_lr = 3e-3
    max_crop = 256

    def __init__(self, backend: LLMSegTiny, train_all: bool) -> None:
        self.backend = backend
        self.net = backend.net
        heads = [self.net.dec, self.net.proj, self.net.text]
        wanted = {id(p) for m in heads for p in m.parameters()}
        for p in self.net.parameters():
            p.requires_grad_(train_all or id(p) in wanted)

    def module(self) -> nn.Module:
        return self.net

    def encode(self, prompt: str) -> torch.Tensor:
        # encode_prompts may run under inference mode; a clone is an ordinary tensor that
        # autograd can save for the backward pass
        return self.backend.encode_prompts([prompt]).clone()

    def logits(self, windows: np.ndarray, stats: IntensityStats, text: Any) -> torch.Tensor:
        return self.backend.logits(self.backend.preprocess(windows, stats), text)[:, 0]

    def save(self, folder: Path, record: dict) -> None:
        from safetensors.torch import save_file

        config = copy.deepcopy(self.backend.config)
        config["version"] = f"{config.get('version', '?')}+finetuned"
        concepts = list(config.get("concepts", []))
        if record["prompt"] not in concepts:
            concepts.append(record["prompt"])
        config["concepts"] = concepts
        config["finetune"] = {k: v for k, v in record.items() if k != "history"}
        state = {k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(config, indent=2))


def _load(spec: str | None, *, device: Any, dtype: Any = None) -> LLMSegTiny:
    return LLMSegTiny(spec, device=device)


def _info() -> ModelInfo:
    concepts: tuple[str, ...] = ()
    if (WEIGHTS_DIR / "config.json").is_file():
        concepts = tuple(str(c) for c in load_config(WEIGHTS_DIR).get("concepts", []))
    return ModelInfo(
        MODEL_TYPE,
        "embedded",
        False,
        (WEIGHTS_DIR / "model.safetensors").is_file(),
        "small model shipped in the package; MiniLM text embedding + U-Net, works offline",
        concepts,
        can_finetune=True,
    )


#: Registered in pyproject.toml's ``napari_llmseg.backends`` entry points.
BACKEND = BackendSpec(MODEL_TYPE, _load, _info, folder_types=(MODEL_TYPE,))
