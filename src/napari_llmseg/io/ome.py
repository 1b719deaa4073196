"""OME-Zarr: open images and labels lazily, write labels with their class names.

Writing goes through ome-zarr-py, so the layout follows the OME-NGFF conventions:
``labels/{name}`` multiscale groups with ``image-label`` metadata (colours and, per label
value, the ``prompt`` it stands for). Reading returns napari "layer data" tuples
``(data, kwargs, layer_type)``; they are plain tuples, so this module does not import napari.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

LayerData = tuple[Any, dict, str]

#: Distinct colours for labels 1, 2, ... (Okabe-Ito, colour-blind safe), as RGBA 0-255.
PALETTE = [
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66),
    (0, 114, 178), (213, 94, 0), (204, 121, 167), (153, 153, 153),
]  # fmt: skip


def label_color(label: int) -> tuple[int, int, int, int]:
    """RGBA (0-255) colour of label value ``label`` (> 0)."""
    return (*PALETTE[(label - 1) % len(PALETTE)], 255)


def _axes_names(ndim: int) -> str:
    return "zyx"[3 - ndim :] if ndim <= 3 else "tczyx"[5 - ndim :]


def write_labels_store(
    path: str | Path,
    labels: Any,
    *,
    name: str,
    label_names: Mapping[int, str],
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    units: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``labels`` as an OME-Zarr labels image ``path/labels/{name}``.

    ``labels`` may be numpy, dask or zarr; zarr and dask inputs are written chunk by chunk.
    Class names go into ``image-label.properties`` as ``{"label-value": i, "prompt": name}``.
    """
    import dask.array as da
    import zarr
    from ome_zarr.writer import write_labels

    path = Path(path)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"'{path}' already exists; choose another name or overwrite it")
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    ndim = len(labels.shape)
    axes = _axes_names(ndim)
    data = (
        labels if isinstance(labels, np.ndarray) else da.from_array(labels, chunks=labels.chunks)
    )
    kwargs: dict[str, Any] = {}
    if scale is not None:
        kwargs["scale"] = {a: float(s) for a, s in zip(axes, scale[-ndim:], strict=True)}
    if units is not None:
        clean = [str(u) for u in units[-ndim:]]
        if all(u not in ("pixel", "px", "", "None") for u in clean):
            kwargs["axes_units"] = dict(zip(axes, clean, strict=True))
    root = zarr.open_group(path, mode="w", zarr_format=3)
    metadata = {
        "colors": [
            {"label-value": int(i), "rgba": list(label_color(int(i)))} for i in label_names
        ],
        "properties": [{"label-value": int(i), "prompt": str(n)} for i, n in label_names.items()],
    }
    # Pyramid levels halve Y and X until the smallest level is under 256 px.
    factors: list[int] = []
    edge = min(labels.shape[-2:])
    while edge > 256 and len(factors) < 6:
        edge //= 2
        factors.append(2 ** (len(factors) + 1))
    write_labels(
        data, root, name=name, axes=axes, label_metadata=metadata, scaler=None,
        scale_factors=tuple(factors), **kwargs,
    )  # fmt: skip
    if translate is not None and any(translate):
        root.attrs["napari_llmseg_translate"] = [float(t) for t in translate[-ndim:]]
    return path


def _ome(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    return attrs.get("ome", attrs)


def _multiscale(group: Any) -> tuple[list[Any], dict]:
    """Arrays of every level (lazy zarr arrays) and layer kwargs (scale, translate, units)."""
    ms = _ome(group.attrs)["multiscales"][0]
    axes = ms.get("axes", [])
    levels = [group[ds["path"]] for ds in ms["datasets"]]
    kwargs: dict[str, Any] = {}
    for t in ms["datasets"][0].get("coordinateTransformations", []):
        if t.get("type") == "scale":
            kwargs["scale"] = tuple(float(s) for s in t["scale"])
        if t.get("type") == "translation":
            kwargs["translate"] = tuple(float(s) for s in t["translation"])
    names = [a.get("name") if isinstance(a, dict) else str(a) for a in axes]
    units = [a.get("unit") for a in axes if isinstance(a, dict)]
    if units and all(units) and len(units) == len(axes):
        kwargs["units"] = tuple(units)
    if "c" in names:
        kwargs["channel_axis"] = names.index("c")
    if names:
        kwargs["axis_labels"] = tuple(n for n in names if n != "c")
    return levels, kwargs


def _labels_layers(root: Any) -> list[LayerData]:
    out: list[LayerData] = []
    if "labels" not in root:
        return out
    labels_group = root["labels"]
    for name in _ome(labels_group.attrs).get("labels", []):
        group = labels_group[name]
        levels, kwargs = _multiscale(group)
        kwargs.pop("channel_axis", None)
        meta = _ome(group.attrs).get("image-label", {})
        props = {int(p["label-value"]): p for p in meta.get("properties", [])}
        if props:
            ids = [0, *sorted(props)]
            kwargs["features"] = {
                "index": ids,
                "prompt": ["background"] + [str(props[i].get("prompt", i)) for i in ids[1:]],
            }
        colors = {
            int(c["label-value"]): tuple(v / 255 for v in c["rgba"])
            for c in meta.get("colors", [])
        }
        if colors:
            kwargs["colormap"] = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0), **colors}
        translate = root.attrs.get("napari_llmseg_translate")
        if translate:
            kwargs["translate"] = tuple(translate)
        data = levels if len(levels) > 1 else levels[0]
        out.append((data, {"name": name, "multiscale": len(levels) > 1, **kwargs}, "labels"))
    return out


def read_store(path: str | Path) -> list[LayerData]:
    """Layers in a zarr store: an OME-Zarr image and its labels, a napari-llmseg result, a
    labels-only OME-Zarr store, or a plain zarr array. Every array stays on disk (lazy)."""
    import zarr

    from ..engine.resume import ATTR_KEY

    path = Path(path)
    node = zarr.open(path, mode="r")
    name = path.name.removesuffix(".zarr")
    if isinstance(node, zarr.Array):
        return [(node, {"name": name}, "image")]
    attrs: dict[str, Any] = dict(node.attrs)
    layers: list[LayerData] = []
    if ATTR_KEY in attrs:
        meta = attrs[ATTR_KEY]
        labels: Any = node["labels"]
        names = {int(k): v for k, v in meta["label_names"].items()}
        scale = meta.get("source_metadata", {}).get("scale")
        common = {"scale": tuple(scale)} if scale and len(scale) == len(labels.shape) else {}
        ids = [0, *sorted(names)]
        layers.append(
            (
                labels,
                {
                    "name": f"{name} labels",
                    "features": {
                        "index": ids,
                        "prompt": ["background"] + [names[i] for i in ids[1:]],
                    },
                    "colormap": {
                        None: (0, 0, 0, 0),
                        0: (0, 0, 0, 0),
                        **{i: tuple(c / 255 for c in label_color(i)) for i in names},
                    },
                    "metadata": {"napari_llmseg": meta},
                    **common,
                },
                "labels",
            )
        )
        import dask.array as da

        probs: Any = node["probabilities"]
        lazy = da.from_array(probs, chunks=probs.chunks)
        for i in sorted(names):
            kwargs = {"name": f"{names[i]} probability", "visible": False, "colormap": "magma",
                      "contrast_limits": (0.0, 1.0), **common}  # fmt: skip
            layers.append((lazy[i - 1], kwargs, "image"))
        return layers
    if "multiscales" in _ome(attrs):
        levels, kwargs = _multiscale(node)
        data = levels if len(levels) > 1 else levels[0]
        layers.append((data, {"name": name, "multiscale": len(levels) > 1, **kwargs}, "image"))
    layers += _labels_layers(node)
    if layers:
        return layers
    arrays = sorted(n for n, _ in node.arrays())
    for n in arrays:
        layers.append((node[n], {"name": f"{name}/{n}"}, "image"))
    if not layers:
        raise ValueError(f"'{path}' holds no arrays, images or labels that napari can show")
    return layers
