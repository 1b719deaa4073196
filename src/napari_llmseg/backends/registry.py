"""Finding models by name, folder or entry point.

Built-in names map to loader functions. Third-party packages add backends through the
entry-point group ``napari_llmseg.backends``: each entry point names a callable
``load(spec: str | None, *, device, dtype) -> PromptSegmenter``, where ``spec`` is what came
after ``name:`` (a model id or folder) or None.
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


_BUILTIN: dict[str, tuple[Callable[..., PromptSegmenter], Callable[[], ModelInfo]]] = {
    "llmseg-tiny": (_load_tiny, _tiny_info),
}

#: config.json ``model_type`` -> registry name, for loading local folders.
_FOLDER_TYPES = {"llmseg-tiny": "llmseg-tiny"}

DEFAULT_MODEL = "llmseg-tiny"


def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def list_models() -> list[str]:
    """Names of all available backends, built-in first, then those from other packages."""
    return list(_BUILTIN) + sorted(set(_plugins()) - set(_BUILTIN))


def model_info(name: str) -> ModelInfo:
    """Description of the backend called ``name``."""
    if name in _BUILTIN:
        return _BUILTIN[name][1]()
    return ModelInfo(name, "", False, False, f"from entry point {_plugins()[name].value}")


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
        For a name that is neither registered nor an existing folder; the message lists the
        known names.
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
    if any(sep in text for sep in ("/", "\\")) or text.startswith("."):
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
    if model_type not in _FOLDER_TYPES:
        raise ValueError(
            f"model folder '{path}' holds a {model_type!r} model, which no backend loads; "
            f"supported: {', '.join(sorted(_FOLDER_TYPES))}"
        )
    return _BUILTIN[_FOLDER_TYPES[model_type]][0](str(path), device=device, dtype=dtype)
