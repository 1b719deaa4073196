"""napari writer: a Labels layer to an OME-Zarr labels store (glue only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _label_names(attributes: dict[str, Any]) -> dict[int, str]:
    features = attributes.get("features")
    names: dict[int, str] = {}
    if features is not None and len(features) and "prompt" in features:
        index = features["index"] if "index" in features else range(len(features))
        for i, prompt in zip(list(index), list(features["prompt"]), strict=True):
            if int(i) > 0:
                names[int(i)] = str(prompt)
    return names


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write ``data`` as ``path/labels/{layer name}`` with the class names as properties."""
    import numpy as np

    from .io.write import write_labels as write_file

    names = _label_names(attributes)
    if not names:
        values = np.unique(np.asarray(data[...] if hasattr(data, "chunks") else data))
        names = {int(v): f"label {int(v)}" for v in values if v > 0}
    out = Path(path)
    if out.suffix.lower() != ".zarr":
        out = out.with_suffix(".zarr")
    geometry = {key: attributes.get(key) for key in ("scale", "translate", "units")}
    write_file(out, data, label_names=names, geometry=geometry,
               name=attributes.get("name", "labels"))  # fmt: skip
    return [str(out)]
