"""What every Hugging Face backend shares: finding weights, loading them safely, preparing windows.

Finding weights (:func:`resolve_source`). A backend is given a local folder or a Hub model id,
optionally pinned to a revision as ``ID@REVISION`` (a branch, tag, ``refs/pr/N`` or commit).
An id is looked up in the Hugging Face cache first, with no network; only when the cache does
not hold it is it fetched, once, with ``snapshot_download`` restricted to configuration,
tokenizer and ``*.safetensors`` files (:data:`ALLOW_PATTERNS`), so pickle checkpoints are never
even downloaded. With ``HF_HUB_OFFLINE=1``, with no network, or for a gated repository the
user has no access to, :class:`WeightsUnavailableError` names the model id, the cache folder
that was searched and how to copy the folder from another machine.

Loading (:func:`read_config`, :func:`load_pretrained`, :func:`load_tokenizer`). Only concrete
transformers classes are used (never ``Auto*`` classes), so code shipped with a model
repository is never imported: ``trust_remote_code`` is never enabled, and a folder whose
config.json asks for its own code (``auto_map``) is refused. Weights load only from
safetensors (``use_safetensors=True``).

Preparing windows (:class:`ImageSettings`). Image size, resampling, rescale factor, mean and
standard deviation are read from the model's own preprocessor configuration. Raw windows are
mapped to [0, 1] with the intensity statistics of the whole input (never per window), treated as
0..255 pixel values, resized and normalised as the model's image processor would.

Running (:func:`run_in_chunks`, :func:`autocast`). A CUDA out-of-memory error halves the number
of windows run at once, and the smaller batch is kept for the rest of the run. On CUDA and MPS
the model runs under half-precision autocast unless a weight dtype was given.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .base import require_safetensors, safetensors_shapes

if TYPE_CHECKING:
    import torch

    from ..engine.normalize import IntensityStats
    from .base import PromptSegmenter

logger = logging.getLogger("napari_llmseg")

#: Files fetched from the Hub: configuration, tokenizer vocabularies and safetensors weights.
#: Pickle-based weights (``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``, ``*.h5``) and code are never
#: downloaded.
ALLOW_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model")

_TRUE = {"1", "on", "yes", "true"}


class WeightsUnavailableError(OSError):
    """Model weights are neither in a local folder nor in the cache, and cannot be fetched."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are.

    Attributes
    ----------
    folder : Path
        Folder holding config.json, the preprocessor configuration, tokenizer files and
        ``*.safetensors`` weights.
    model_id : str or None
        The Hugging Face model id, when the folder is a snapshot in the Hub cache.
    revision : str or None
        The commit of that snapshot.
    """

    folder: Path
    model_id: str | None = None
    revision: str | None = None

    @property
    def spec(self) -> str:
        """What to pass back to load the same files: ``ID@COMMIT`` or the folder."""
        if self.model_id is None:
            return str(self.folder)
        return f"{self.model_id}@{self.revision}" if self.revision else self.model_id

    def files(self) -> list[Path]:
        """config.json, preprocessor/tokenizer JSON and the safetensors weights."""
        return sorted(p for p in self.folder.glob("*") if p.suffix in (".json", ".safetensors"))

    def describe(self) -> dict:
        """JSON-serialisable provenance: the model id and commit, or the folder."""
        if self.model_id is None:
            return {"folder": str(self.folder)}
        return {"id": self.model_id, "revision": self.revision}


# --------------------------------------------------------------------------------------------
# Finding weights


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache folder (``HF_HUB_CACHE``, ``HF_HOME/hub`` or the default)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline_mode() -> bool:
    """Whether Hub access is switched off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    from huggingface_hub import constants

    env = (
        os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    ).lower()
    return bool(constants.HF_HUB_OFFLINE) or env in _TRUE


def _looks_like_path(text: str) -> bool:
    """A path rather than ``ID[@REVISION]`` (ids have at most one "/"; revisions may have more)."""
    model_id = text.partition("@")[0]
    return text.startswith(("/", ".", "~")) or "\\" in text or model_id.count("/") > 1


def resolve_source(spec: str | Path | None, *, backend: str, default_id: str) -> ModelSource:
    """Turn what came after ``backend:`` into a local folder.

    Parameters
    ----------
    spec : str, Path or None
        A local model folder, a Hugging Face model id (``ID`` or ``ID@REVISION``), or None for
        ``default_id``.
    backend : str
        Registry name, used in messages (``"clipseg"``...).
    default_id : str
        Model id used when ``spec`` is None.

    Raises
    ------
    ValueError
        For a path-like ``spec`` that is not an existing folder, or a ``spec`` that is
        neither a folder nor a valid model id.
    WeightsUnavailableError
        When the id is not cached and cannot be fetched (offline, no network, gated).
    """
    text = default_id if spec is None or str(spec) == "" else str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        return ModelSource(path)
    if _looks_like_path(text):
        raise ValueError(f"{backend} model folder '{text}' does not exist")
    model_id, revision = split_revision(text, backend=backend, default_id=default_id)
    folder = fetch_snapshot(model_id, backend=backend, revision=revision)
    return ModelSource(folder, model_id, folder.name)


def split_revision(text: str, *, backend: str, default_id: str) -> tuple[str, str | None]:
    """``"ID@REVISION"`` -> (id, revision); ``"ID"`` -> (id, None). Validates the id."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    model_id, at, revision = text.partition("@")
    try:
        validate_repo_id(model_id)
        if at and (not revision or any(c.isspace() for c in revision)):
            raise HFValidationError(revision)
    except HFValidationError:
        raise ValueError(
            f"bad {backend} model {text!r}: expected a Hugging Face model id such as "
            f"'{default_id}' (optionally ID@REVISION) or the path of a local model folder"
        ) from None
    return model_id, revision or None


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def cached_snapshot(model_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot folder of ``model_id`` if it holds config and weights; no network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        folder = Path(
            snapshot_download(
                model_id,
                revision=revision,
                cache_dir=hub_cache_dir(),
                allow_patterns=list(ALLOW_PATTERNS),
                local_files_only=True,
            )
        )
    except (OSError, HFValidationError):
        return None
    return folder if _complete(folder) else None


def is_cached(spec: str) -> bool:
    """Whether the weights of ``spec`` (``ID`` or ``ID@REVISION``) are cached (no network)."""
    model_id, _, revision = spec.partition("@")
    return cached_snapshot(model_id, revision or None) is not None


def unavailable_message(
    model_id: str, backend: str, reason: str, revision: str | None = None
) -> str:
    """The one-line explanation of why weights cannot be loaded, and what to do."""
    name = f"{model_id}@{revision}" if revision else model_id
    download = f"hf download {model_id}" + (f" --revision {revision}" if revision else "")
    return (
        f"cannot load the {backend} weights '{name}': {reason}. Looked in the Hugging Face "
        f"cache '{hub_cache_dir()}'. To use them here, download the model folder on a machine "
        f"that can reach the Hub (`{download} --local-dir DIR`), copy DIR to this machine and "
        f"pass --model {backend}:DIR (in Python model='{backend}:DIR', or the folder itself)"
    )


def fetch_snapshot(model_id: str, *, backend: str, revision: str | None = None) -> Path:
    """Local folder with the files of ``model_id``: from the cache, else fetched once.

    The fetch is a single ``snapshot_download`` that gives up on the first connection error
    (and within the Hub's timeouts), so nothing hangs when there is no network.
    """
    cached = cached_snapshot(model_id, revision)
    if cached is not None:
        return cached
    if offline_mode():
        raise WeightsUnavailableError(
            unavailable_message(
                model_id,
                backend,
                "they are not cached and offline mode is on (HF_HUB_OFFLINE=1)",
                revision,
            )
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = Path(
            snapshot_download(
                model_id,
                revision=revision,
                cache_dir=hub_cache_dir(),
                allow_patterns=list(ALLOW_PATTERNS),
            )
        )
    except GatedRepoError:
        reason = (
            "the repository is gated and this machine has no access to it: accept its licence "
            f"on https://huggingface.co/{model_id} and log in with `hf auth login`"
        )
    except RevisionNotFoundError:
        reason = f"the repository has no revision {revision!r}"
    except RepositoryNotFoundError:
        reason = (
            "no such model on the Hugging Face Hub (or it is private and you are not logged in)"
        )
    except (OSError, ConnectionError, TimeoutError) as err:
        reason = f"they are not cached and the Hub could not be reached ({type(err).__name__})"
    except Exception as err:  # the HTTP client's own transport errors
        if type(err).__module__.split(".")[0] not in ("httpx", "httpx2", "httpcore"):
            raise
        reason = f"they are not cached and the Hub could not be reached ({type(err).__name__})"
    else:
        if not (folder / "config.json").is_file():
            raise ValueError(f"'{model_id}' has no config.json, so its architecture is unknown")
        if not any(folder.glob("*.safetensors")):
            raise ValueError(
                f"'{model_id}' offers no .safetensors weights; napari-llmseg refuses pickle-based "
                "weights (pytorch_model.bin, *.pt) because loading a pickle can run arbitrary "
                "code. If the repository has a safetensors conversion (a pull request by "
                f"SFconvertbot), pass its revision: {backend}:{model_id}@refs/pr/N"
            )
        return folder
    raise WeightsUnavailableError(unavailable_message(model_id, backend, reason, revision))


# --------------------------------------------------------------------------------------------
# Loading


def read_config(folder: Path, *, backend: str, model_types: Sequence[str]) -> dict:
    """config.json of a model folder, checked to hold one of ``model_types`` and no custom code."""
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(
            f"model folder '{folder}' has no config.json, so its architecture is unknown"
        )
    config = json.loads(path.read_text())
    if config.get("auto_map"):
        raise ValueError(
            f"model folder '{folder}' asks to run its own code (auto_map in config.json: "
            f"{sorted(config['auto_map'])}); napari-llmseg never enables trust_remote_code and "
            "loads only architectures that ship with transformers"
        )
    model_type = config.get("model_type")
    if model_type not in model_types:
        raise ValueError(
            f"model folder '{folder}' holds a {model_type!r} model, not a {backend} model "
            f"(config.json model_type must be {' or '.join(map(repr, model_types))})"
        )
    return config


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def resolve_dtype(dtype: Any) -> torch.dtype | None:
    """None, a torch dtype, or a name (``"float16"``, ``"fp16"``, ``"bfloat16"``, ...)."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "half": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    key = str(dtype).lower().removeprefix("torch.")
    if key not in names:
        raise ValueError(
            f"unknown dtype {dtype!r}; expected float32, float16 or bfloat16 (or a torch.dtype)"
        )
    return names[key]


M = TypeVar("M")


def load_pretrained(cls: type[M], folder: Path, *, device: Any, dtype: Any = None) -> M:
    """``cls.from_pretrained(folder)`` from safetensors only, in eval mode on ``device``.

    Weights are float32 unless ``dtype`` is given. ``cls`` is a concrete transformers model
    class, so no code from the folder is ever run.
    """
    for weights in require_safetensors(folder):
        safetensors_shapes(weights)  # a damaged file fails here, with its name
    import torch

    try:
        with _quiet_progress():
            model = cls.from_pretrained(  # type: ignore[attr-defined]
                str(folder),
                use_safetensors=True,
                local_files_only=True,
                dtype=resolve_dtype(dtype) or torch.float32,
            )
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise ValueError(
            f"cannot load the model in '{folder}': {type(err).__name__}: "
            f"{' '.join(str(err).split())[:400]}"
        ) from err
    return model.to(device).eval()


def load_tokenizer(cls: type[M], folder: Path, **kwargs: Any) -> M:
    """A tokenizer of the concrete class ``cls`` from the files in ``folder``."""
    with _quiet_progress():
        return cls.from_pretrained(str(folder), local_files_only=True, **kwargs)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# Preparing windows

#: PIL resampling codes used in preprocessor configs -> torch interpolation modes.
_RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "area", 5: "bilinear"}

_SETTING_KEYS = (
    "size",
    "resample",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_pad",
    "pad_size",
)


def read_image_processor_config(folder: Path) -> dict:
    """Image processor settings saved with a model.

    ``preprocessor_config.json`` (what Hub repositories hold) or the ``image_processor``
    entry of ``processor_config.json`` (what transformers 5 writes).
    """
    path = folder / "preprocessor_config.json"
    if path.is_file():
        return json.loads(path.read_text())
    path = folder / "processor_config.json"
    if path.is_file():
        config = json.loads(path.read_text())
        if isinstance(config.get("image_processor"), dict):
            return config["image_processor"]
    raise FileNotFoundError(
        f"model folder '{folder}' has no preprocessor_config.json (nor processor_config.json "
        "with an image_processor entry), so its input size and normalisation are unknown"
    )


def _class_defaults(class_names: Sequence[str]) -> dict:
    """Defaults of the first importable image processor class among ``class_names``."""
    import transformers

    for name in class_names:
        try:
            cls = getattr(transformers, name)
            return {k: getattr(cls, k) for k in _SETTING_KEYS if hasattr(cls, k)}
        except (AttributeError, ImportError):  # missing, or a placeholder needing torchvision
            continue
    return {}


def _size_dict(value: Any) -> dict:
    if value is None:
        return {}
    if isinstance(value, int):
        return {"height": value, "width": value}
    if hasattr(value, "items"):
        return {k: v for k, v in dict(value).items() if v is not None}
    return {k: getattr(value, k) for k in ("height", "width", "shortest_edge", "longest_edge")}


@dataclass(frozen=True)
class ImageSettings:
    """How a model's image processor turns an image into ``pixel_values``.

    Attributes
    ----------
    size : dict
        ``{"height", "width"}`` (fixed size), ``{"shortest_edge"[, "longest_edge"]}`` or
        ``{"longest_edge"}`` (aspect ratio kept), as in the preprocessor config.
    resample : str
        Torch interpolation mode matching the processor's PIL resampling.
    rescale_factor : float or None
        Factor applied to 0..255 pixel values (1/255), or None when the processor does not
        rescale.
    mean, std : tuple of float or None
        Per-channel normalisation, or None when the processor does not normalise.
    pad_size : tuple of int or None
        ``(height, width)`` the resized image is zero-padded to at the bottom and right (SAM).
    """

    size: dict
    resample: str
    rescale_factor: float | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    pad_size: tuple[int, int] | None = None

    @classmethod
    def from_folder(cls, folder: Path, class_names: Sequence[str] = ()) -> ImageSettings:
        """Read the settings of the image processor saved in ``folder``.

        Keys the file leaves out take the defaults of the processor class (the first of
        ``class_names`` that imports), as the processor itself would.
        """
        config = {**_class_defaults(class_names), **read_image_processor_config(folder)}
        missing = [k for k in ("size", "image_mean", "image_std") if config.get(k) is None]
        if missing:
            raise ValueError(
                f"the image processor configuration in '{folder}' does not give "
                f"{', '.join(missing)}"
            )
        size = _size_dict(config["size"])
        if not ({"height", "width"} <= set(size) or {"shortest_edge", "longest_edge"} & set(size)):
            raise ValueError(f"unsupported image processor size {config['size']!r} in '{folder}'")
        pad = _size_dict(config.get("pad_size")) if config.get("do_pad") else {}
        do_rescale = config.get("do_rescale", True)
        do_normalize = config.get("do_normalize", True)
        return cls(
            size=size,
            resample=_RESAMPLE.get(int(config.get("resample", 2)), "bilinear"),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)) if do_rescale else None,
            mean=tuple(float(v) for v in config["image_mean"]) if do_normalize else None,
            std=tuple(float(v) for v in config["image_std"]) if do_normalize else None,
            pad_size=(int(pad["height"]), int(pad["width"]))
            if {"height", "width"} <= set(pad)
            else None,
        )

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """Shape an image of ``(height, width)`` is resized to, before padding."""
        size = self.size
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        if "shortest_edge" in size:  # DETR-style processors (Grounding DINO)
            from transformers.image_transforms import get_size_with_aspect_ratio

            oh, ow = get_size_with_aspect_ratio(
                (height, width), int(size["shortest_edge"]), size.get("longest_edge")
            )
            return int(oh), int(ow)
        scale = float(size["longest_edge"]) / max(height, width)  # SAM
        return int(height * scale + 0.5), int(width * scale + 0.5)

    @property
    def edge(self) -> int:
        """Natural window edge for this model: the edge a square image is resized to."""
        size = self.size
        if "height" in size:
            return int(min(size["height"], size["width"]))
        if "shortest_edge" in size:
            return int(size["shortest_edge"])
        return int(size["longest_edge"])

    def prepare(self, windows: np.ndarray, stats: IntensityStats) -> torch.Tensor:
        """Raw windows ``(B, C, H, W)`` -> ``pixel_values`` ``(B, 3, h, w)`` float32 on the CPU.

        Intensities are mapped to [0, 1] with the whole-input percentiles in ``stats``
        (clipped), and read as 0..255 pixel values. Grayscale is repeated to RGB. A 3-channel
        image uses one range for all channels (the lowest low and highest high percentile), so
        colours keep their balance. The image is then resized, rescaled, normalised and padded
        as the model's image processor specifies.
        """
        import torch
        from torch.nn import functional as F

        c, h, w = windows.shape[1:]
        low = np.asarray(stats.low, dtype=np.float32)
        high = np.asarray(stats.high, dtype=np.float32)
        if c == 3:
            low, high = np.full(3, low.min(), np.float32), np.full(3, high.max(), np.float32)
        span = np.where(high > low, high - low, 1.0).astype(np.float32)
        x = (windows - low[None, :, None, None]) / span[None, :, None, None]
        np.clip(x, 0.0, 1.0, out=x)
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        th, tw = self.resized_shape(h, w)
        if (th, tw) != (h, w):
            mode = self.resample
            kwargs: dict[str, Any] = {}
            if mode in ("bilinear", "bicubic"):
                kwargs = {"align_corners": False, "antialias": th < h or tw < w}
            t = F.interpolate(t, size=(th, tw), mode=mode, **kwargs)
        if c == 1:
            t = t.expand(-1, 3, -1, -1)
        t = t * 255.0
        if self.rescale_factor is not None:
            t = t * self.rescale_factor
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
            t = (t - mean) / std
        if self.pad_size is not None:
            ph, pw = self.pad_size
            t = F.pad(t, (0, max(pw - tw, 0), 0, max(ph - th, 0)))
        return t.contiguous()


@dataclass
class PreparedWindows:
    """A batch of windows ready for a Hugging Face model.

    Attributes
    ----------
    pixels : (B, 3, h, w) float32 tensor
        Model input on the CPU (moved to the device chunk by chunk in ``predict``).
    window : tuple of int
        ``(H, W)`` of the engine's windows, the size logits are returned at.
    valid : tuple of int
        ``(h, w)`` part of ``pixels`` that holds the image (the rest is padding).
    """

    pixels: torch.Tensor
    window: tuple[int, int]
    valid: tuple[int, int]

    def __len__(self) -> int:
        return int(self.pixels.shape[0])


def prepare_windows(
    settings: ImageSettings, windows: np.ndarray, stats: IntensityStats
) -> PreparedWindows:
    """Apply ``settings`` to a batch of raw windows and remember the shapes."""
    h, w = windows.shape[-2:]
    return PreparedWindows(
        settings.prepare(windows, stats), (int(h), int(w)), settings.resized_shape(h, w)
    )


def check_rgb_channels(name: str, n_channels: int) -> None:
    """Backends on RGB models take grayscale (repeated) or RGB images."""
    if n_channels not in (1, 3):
        raise ValueError(
            f"{name} takes 1 (grayscale) or 3 (RGB) channels, the image has {n_channels}; "
            "pass a single channel or an RGB composite"
        )


# --------------------------------------------------------------------------------------------
# Running

T = TypeVar("T")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Half-precision autocast on CUDA (bf16 where supported, else fp16) and MPS (fp16).

    Nothing on the CPU, and nothing when the caller chose the weight ``dtype`` explicitly.
    """
    import torch

    if dtype is not None:
        return contextlib.nullcontext()
    if device.type == "cuda":
        half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=half)
    if device.type == "mps":
        return torch.autocast("mps", dtype=torch.float16)
    return contextlib.nullcontext()


def run_in_chunks(backend: PromptSegmenter, n: int, fn: Callable[[int, int], T]) -> list[T]:
    """Call ``fn(start, stop)`` over ``range(n)`` in chunks, halving them on CUDA OOM.

    Chunks hold at most ``backend.batch_limit`` windows. When a chunk raises
    ``torch.cuda.OutOfMemoryError`` its size is halved, ``backend.batch_limit`` is lowered to
    it (so later batches start there) and the chunk is retried; a single window that does not
    fit raises a RuntimeError that says what to change.
    """
    import torch

    size = n if backend.batch_limit is None else max(1, min(n, backend.batch_limit))
    out: list[T] = []
    start = 0
    while start < n:
        stop = min(start + size, n)
        try:
            out.append(fn(start, stop))
        except torch.cuda.OutOfMemoryError as err:
            if stop - start == 1:
                raise RuntimeError(
                    f"{backend.name}: one window does not fit in GPU memory; use a smaller "
                    "roi_size (--roi), a half-precision dtype, or device='cpu'"
                ) from err
            size = (stop - start) // 2
            backend.batch_limit = size
            logger.warning(
                "%s: CUDA out of memory with %d windows at once; retrying with %d",
                backend.name,
                stop - start,
                size,
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        start = stop
    return out


def probability_to_logit(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``log(p / (1 - p))`` with ``p`` clipped to ``[eps, 1 - eps]``, in float32."""
    p = p.float().clamp(eps, 1.0 - eps)
    return (p.log() - (-p).log1p()).float()


def to_window(
    maps: torch.Tensor,
    valid: tuple[int, int],
    model_input: tuple[int, int],
    window: tuple[int, int],
) -> torch.Tensor:
    """Resize ``(B, K, h, w)`` maps covering the model input to the window's ``(H, W)``.

    ``model_input`` is the (padded) input size the maps cover and ``valid`` the part of it
    that holds the image; the padding is cropped before resizing.
    """
    from torch.nn import functional as F

    h, w = maps.shape[-2:]
    vh = max(1, round(h * valid[0] / model_input[0]))
    vw = max(1, round(w * valid[1] / model_input[1]))
    maps = maps[..., :vh, :vw].float()
    if (vh, vw) == tuple(window):
        return maps
    return F.interpolate(maps, size=window, mode="bilinear", align_corners=False)
