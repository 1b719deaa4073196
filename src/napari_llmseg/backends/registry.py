"""Finding models by name, folder or entry point.

Built-in names: ``llmseg-tiny`` (embedded), ``clipseg``, ``sam3`` and ``grounded-sam``. A
name may be followed by a Hugging Face model id or a local folder (``clipseg:DIR``); a local
folder alone is dispatched on the ``model_type`` in its config.json (see :data:`_FOLDER_TYPES`).
Third-party packages add backends through the entry-point group ``napari_llmseg.backends``:
each entry point names a callable ``load(spec: str | None, *, device, dtype) ->
PromptSegmenter``, where ``spec`` is what came after ``name:`` (a model id or folder) or None.

Nothing here imports torch or transformers until a model is loaded, and :func:`model_info`
never touches the network: ``available_offline`` only looks in the Hugging Face cache.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from ..device import resolve_device
from .base import PromptSegmenter

ENTRY_POINT_GROUP = "napari_llmseg.backends"


@dataclass(frozen=True)
class ModelInfo:
    """What ``napari-llmseg models`` shows about a backend."""

    name: str
    default_id: str
    gives_instances: bool
    available_offline: bool
    description: str


def _load_tiny(spec: str | None, *, device: Any, dtype: Any = None) -> PromptSegmenter:
    from .tiny import LLMSegTiny

    return LLMSegTiny(spec, device=device)


def _tiny_info() -> ModelInfo:
    from .tiny import WEIGHTS_DIR

    return ModelInfo(
        "llmseg-tiny",
        "embedded",
        False,
        (WEIGHTS_DIR / "model.safetensors").is_file(),
        "small model shipped in the package; MiniLM text embedding + U-Net, works offline",
    )


def _load_clipseg(spec: str | None, *, device: Any, dtype: Any = None) -> PromptSegmenter:
    from .clipseg import load

    return load(spec, device=device, dtype=dtype)


def _load_sam3(spec: str | None, *, device: Any, dtype: Any = None) -> PromptSegmenter:
    from .sam3 import load

    return load(spec, device=device, dtype=dtype)


def _load_grounded_sam(spec: str | None, *, device: Any, dtype: Any = None) -> PromptSegmenter:
    from .grounded_sam import load

    return load(spec, device=device, dtype=dtype)


#: Default Hugging Face ids of the built-in foundation-model backends (kept here rather than
#: in the backend modules so that listing models does not import torch). The main branch of
#: CIDAS/clipseg-rd64-refined holds only pickle weights; its safetensors conversion
#: (SFconvertbot, the weights transformers itself would pick) is pinned by commit.
CLIPSEG_ID = "CIDAS/clipseg-rd64-refined@325a839908143a34b409ae6f2910fa015ea390e6"
SAM3_ID = "facebook/sam3"
GROUNDING_DINO_ID = "IDEA-Research/grounding-dino-tiny"
SAM_ID = "facebook/sam-vit-base"


def _hf_info(
    name: str, ids: tuple[str, ...], instances: bool, text: str
) -> Callable[[], ModelInfo]:
    def info() -> ModelInfo:
        from .hf import is_cached

        return ModelInfo(name, "+".join(ids), instances, all(map(is_cached, ids)), text)

    return info


_BUILTIN: dict[str, tuple[Callable[..., PromptSegmenter], Callable[[], ModelInfo]]] = {
    "llmseg-tiny": (_load_tiny, _tiny_info),
    "clipseg": (
        _load_clipseg,
        _hf_info(
            "clipseg", (CLIPSEG_ID,), False, "CLIPSeg: fast, coarse semantic masks (Apache-2.0)"
        ),
    ),
    "sam3": (
        _load_sam3,
        _hf_info(
            "sam3",
            (SAM3_ID,),
            True,
            "SAM 3: sharp instance masks from text; gated, SAM licence",
        ),
    ),
    "grounded-sam": (
        _load_grounded_sam,
        _hf_info(
            "grounded-sam",
            (GROUNDING_DINO_ID, SAM_ID),
            True,
            "Grounding DINO boxes, then SAM masks (Apache-2.0)",
        ),
    ),
}

#: config.json ``model_type`` -> registry name, for loading local folders. A grounded-sam
#: folder has a config.json of its own (``{"model_type": "grounded-sam", "detector": ...,
#: "segmenter": ...}``, see :mod:`.grounded_sam`).
_FOLDER_TYPES = {
    "llmseg-tiny": "llmseg-tiny",
    "clipseg": "clipseg",
    "sam3": "sam3",
    "sam3_video": "sam3",
    "grounded-sam": "grounded-sam",
}

#: Folders that hold half of a grounded-sam pair.
_PARTS = {"grounding-dino": "Grounding DINO detector", "sam": "SAM segmenter"}

DEFAULT_MODEL = "llmseg-tiny"


def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def list_models() -> list[str]:
    """Names of all available backends, built-in first, then those from other packages."""
    return list(_BUILTIN) + sorted(set(_plugins()) - set(_BUILTIN))


def model_info(name: str) -> ModelInfo:
    """Description of the backend called ``name``; looks in the local cache, never the network.

    Raises
    ------
    ValueError
        For a name that is not registered; the message lists the known names.
    """
    if name in _BUILTIN:
        return _BUILTIN[name][1]()
    plugins = _plugins()
    if name not in plugins:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return ModelInfo(name, "", False, False, f"from entry point {plugins[name].value}")


def get_model(
    name_or_path: str | Path | None = None, *, device: Any = "auto", dtype: Any = None
) -> PromptSegmenter:
    """Load a backend by registry name, ``name:model-id``, or local model folder.

    Parameters
    ----------
    name_or_path : str or Path, optional
        ``"llmseg-tiny"`` (the default), another name from :func:`list_models`, a name with a
        model id or folder after a colon (``"clipseg:CIDAS/clipseg-rd64-refined"``), or the
        path of a folder whose ``config.json`` says which architecture it holds.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    dtype : torch.dtype, optional
        Weight precision for backends that support it.

    Raises
    ------
    ValueError
        For a name that is neither registered nor an existing folder (the message lists the
        known names), a folder path that does not exist, a bad model id, or a folder without
        config.json or with an unsupported ``model_type``.
    napari_llmseg.backends.hf.WeightsUnavailableError
        When a model id is not in the Hugging Face cache and cannot be fetched (offline, no
        network, gated repository); the message names the id, the cache folder and how to
        download the folder elsewhere.
    """
    torch_device = resolve_device(device)
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    path = Path(name_or_path)
    if path.is_dir():
        return _load_folder(path, torch_device, dtype)
    text = str(name_or_path)
    name, _, spec = text.partition(":")
    if name in _BUILTIN:
        return _BUILTIN[name][0](spec or None, device=torch_device, dtype=dtype)
    plugins = _plugins()
    if name in plugins:
        return plugins[name].load()(spec or None, device=torch_device, dtype=dtype)
    if any(sep in text for sep in ("/", "\\")) or text.startswith((".", "~")):
        raise ValueError(f"model folder '{text}' does not exist")
    raise ValueError(
        f"unknown model {text!r}; known models: {', '.join(list_models())} "
        "(or the path of a local model folder)"
    )


def _load_folder(path: Path, device: Any, dtype: Any) -> PromptSegmenter:
    config = path / "config.json"
    if not config.is_file():
        raise ValueError(
            f"model folder '{path}' has no config.json, so its architecture is unknown"
        )
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type in _PARTS:
        raise ValueError(
            f"model folder '{path}' holds only a {_PARTS[model_type]}; grounded-sam needs both: "
            "make a folder with the two model folders inside and a config.json "
            '{"model_type": "grounded-sam", "detector": "DETECTOR_DIR", "segmenter": "SAM_DIR"} '
            "(see docs/backends.md)"
        )
    if model_type not in _FOLDER_TYPES:
        raise ValueError(
            f"model folder '{path}' holds a {model_type!r} model, which no backend loads; "
            f"supported: {', '.join(sorted(_FOLDER_TYPES))}"
        )
    return _BUILTIN[_FOLDER_TYPES[model_type]][0](str(path), device=device, dtype=dtype)
