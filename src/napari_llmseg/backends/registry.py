"""Finding models by name, folder or entry point.

Every backend, built-in or third-party, registers a :class:`~.base.BackendSpec` in the
entry-point group ``napari_llmseg.backends`` (ours are in pyproject.toml); the registry knows
no backend by name. A name may be followed by a Hugging Face model id or a local folder
(``clipseg:DIR``); a local folder alone is dispatched on the ``model_type`` in its
config.json. An entry point may also name a plain callable ``load(spec, *, device, dtype)``
(the older form), which is wrapped in a spec.

:func:`list_models` reads entry-point names only: it imports no backend, torch or Qt.
:func:`model_info` imports the backend's module but never touches the network.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from .base import BackendSpec, ModelInfo, PromptSegmenter

ENTRY_POINT_GROUP = "napari_llmseg.backends"
DEFAULT_MODEL = "llmseg-tiny"
_OURS = "napari_llmseg."

__all__ = ["DEFAULT_MODEL", "ENTRY_POINT_GROUP", "ModelInfo", "get_model", "list_models",
           "model_info"]  # fmt: skip


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def list_models() -> list[str]:
    """Names of all available backends: the default first, then the package's own, then
    those of other packages (each sorted by name)."""
    eps = _entry_points()
    ours = sorted(n for n, ep in eps.items() if ep.value.startswith(_OURS))
    others = sorted(n for n in eps if n not in ours)
    ours.sort(key=lambda n: n != DEFAULT_MODEL)  # stable: the rest keep their order
    return ours + others


@cache
def backend_spec(name: str) -> BackendSpec:
    """The spec registered as ``name`` (its module is imported).

    Raises
    ------
    ValueError
        For a name that is not registered; the message lists the known names.
    """
    eps = _entry_points()
    if name not in eps:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    obj = eps[name].load()
    if isinstance(obj, BackendSpec):
        return obj
    if callable(obj):  # a plain loader
        value = eps[name].value
        return BackendSpec(
            name, obj, lambda: ModelInfo(name, "", False, False, f"from entry point {value}")
        )
    raise TypeError(f"entry point {name!r} ({eps[name].value}) is neither a BackendSpec nor "
                    "a loader function")  # fmt: skip


def model_info(name: str) -> ModelInfo:
    """Description of the backend called ``name``; looks in the local cache, never the network.

    Raises
    ------
    ValueError
        For a name that is not registered; the message lists the known names.
    """
    return backend_spec(name).info()


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
    from ..device import resolve_device

    torch_device = resolve_device(device)
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    path = Path(name_or_path)
    if path.is_dir():
        return _load_folder(path, torch_device, dtype)
    text = str(name_or_path)
    name, _, spec = text.partition(":")
    if name in _entry_points():
        return backend_spec(name).load(spec or None, device=torch_device, dtype=dtype)
    if any(sep in text for sep in ("/", "\\")) or text.startswith((".", "~")):
        raise ValueError(f"model folder '{text}' does not exist")
    raise ValueError(
        f"unknown model {text!r}; known models: {', '.join(list_models())} "
        "(or the path of a local model folder)"
    )


def _read_model_type(path: Path) -> Any:
    config = path / "config.json"
    if not config.is_file():
        for name in list_models():  # a folder recognised by its layout (a MONAI bundle)
            spec = backend_spec(name)
            if spec.folder_layout is not None and spec.folder_layout(path):
                return spec

        raise ValueError(
            f"model folder '{path}' has no config.json, so its architecture is unknown"
        )
    try:
        data = json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"'{config}' is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"'{config}' must hold a JSON object, got {type(data).__name__}")
    return data.get("model_type")


def _load_folder(path: Path, device: Any, dtype: Any) -> PromptSegmenter:
    """Load a model folder with the backend that declares its ``model_type``."""
    model_type = _read_model_type(path)
    if isinstance(model_type, BackendSpec):
        return model_type.load(str(path), device=device, dtype=dtype)
    if isinstance(model_type, str) and model_type in _entry_points():  # the usual case
        spec = backend_spec(model_type)
        if model_type in spec.folder_types:
            return spec.load(str(path), device=device, dtype=dtype)
    specs = [backend_spec(n) for n in list_models()]
    for spec in specs:
        if model_type in spec.folder_refusals:
            raise ValueError(f"model folder '{path}' {spec.folder_refusals[model_type]}")
    for spec in specs:
        if model_type in spec.folder_types:
            return spec.load(str(path), device=device, dtype=dtype)
    supported = sorted({t for spec in specs for t in spec.folder_types})
    raise ValueError(
        f"model folder '{path}' holds a {model_type!r} model, which no backend loads; "
        f"supported: {', '.join(supported)}"
    )
