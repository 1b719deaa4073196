"""OME-Zarr: read multiscale images and labels (through ome-zarr-py), write labels.

Reading goes through ome-zarr-py's :class:`ome_zarr.reader.Reader`, so every NGFF version it
knows is read the same way; :func:`read_multiscale` returns one image or label pyramid as a
:class:`Multiscale` (lazy dask levels plus scale, translation, units and, for labels, the
class names). Writing follows the same conventions: ``labels/{name}`` multiscale groups with
``image-label`` metadata (colours and, per label value, the ``prompt`` it stands for).

Attributes the package itself writes (provenance, resume bookkeeping) live under
:data:`ATTR_KEY` in a group's attributes, outside the ``ome`` namespace.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .labels import label_color

#: The package's own attribute namespace in zarr and OME-Zarr groups.
ATTR_KEY = "napari_llmseg"


@dataclass
class Multiscale:
    """One OME-Zarr image or label pyramid, read lazily.

    Attributes
    ----------
    name : str
    levels : list of dask arrays
        Full resolution first.
    axes : tuple of str
        Axis names (``"c"``, ``"z"``, ``"y"``, ``"x"``...).
    scale, translate : tuple of float or None
        Of the full-resolution level, one value per axis.
    units : tuple of str or None
        Per axis ("" for axes without a unit such as channels), when every space axis has one.
    label_names : dict of int to str, optional
        For an ``image-label``: label value -> name (its ``prompt`` or ``name`` property).
    colors : dict of int to RGBA tuple (0-1), optional
        For an ``image-label``: its colours.
    """

    name: str
    levels: list[Any]
    axes: tuple[str, ...]
    scale: tuple[float, ...] | None = None
    translate: tuple[float, ...] | None = None
    units: tuple[str, ...] | None = None
    label_names: dict[int, str] | None = None
    colors: dict[int, tuple[float, ...]] | None = field(default=None)

    @property
    def is_label(self) -> bool:
        return self.label_names is not None or self.colors is not None


def _ome(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    ome = attrs.get("ome", attrs)
    return ome if isinstance(ome, Mapping) else {}


def is_multiscale(group: Any) -> bool:
    """Whether a zarr group carries OME-Zarr ``multiscales`` metadata (any version)."""
    return "multiscales" in _ome(dict(group.attrs))


def _check_multiscales(attrs: Mapping[str, Any], path: Any) -> None:
    """Refuse metadata that could make a reader wander off: no datasets, absolute paths."""
    ms = _ome(attrs).get("multiscales")
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], Mapping):
        raise ValueError(f"'{path}' has OME-Zarr multiscales metadata that is not a list: {ms!r}")
    datasets = ms[0].get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise ValueError(f"'{path}' has an OME-Zarr multiscales entry without datasets")
    for ds in datasets:
        p = ds.get("path") if isinstance(ds, Mapping) else None
        if not isinstance(p, str) or not p or p.startswith("/") or ".." in p.split("/"):
            raise ValueError(
                f"'{path}' names an OME-Zarr dataset path {p!r}; expected a relative path "
                "inside the store (such as '0' or 's0')"
            )


def _transform(transforms: Any, kind: str) -> tuple[float, ...] | None:
    for t in transforms or []:
        if isinstance(t, Mapping) and t.get("type") == kind:
            values = t.get("scale" if kind == "scale" else "translation")
            if values is not None:
                return tuple(float(v) for v in values)
    return None


def read_multiscale(group: Any, path: str | Path) -> Multiscale:
    """The image or label pyramid in the OME-Zarr group ``group`` (stored at ``path``).

    Raises
    ------
    ValueError
        If the metadata is malformed (the message names the path and what is wrong).
    """
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    _check_multiscales(dict(group.attrs), path)
    try:
        location = parse_url(str(path))
        node = next(
            n for n in Reader(location)() if any(isinstance(s, Multiscales) for s in n.specs)
        )
    except StopIteration:
        raise ValueError(f"'{path}' holds no OME-Zarr image that ome-zarr-py can read") from None
    except Exception as err:  # ome-zarr-py raises KeyError, TypeError... on bad metadata
        raise ValueError(f"'{path}' has OME-Zarr metadata that cannot be read: {err!r}") from err
    meta = node.metadata
    axes = tuple(
        str(a.get("name")) if isinstance(a, Mapping) else str(a) for a in meta.get("axes", [])
    )
    first = (meta.get("coordinateTransformations") or [[]])[0]
    units = None
    axis_meta = [a for a in meta.get("axes", []) if isinstance(a, Mapping)]
    space = [a for a in axis_meta if a.get("type") == "space"]
    if space and all(a.get("unit") for a in space) and len(axis_meta) == len(axes):
        units = tuple(str(a.get("unit", "")) for a in axis_meta)
    image = Multiscale(
        name=str(meta.get("name") or Path(str(path)).name.removesuffix(".zarr")),
        levels=list(node.data),
        axes=axes,
        scale=_transform(first, "scale"),
        translate=_transform(first, "translation"),
        units=units,
    )
    if any(isinstance(s, Label) for s in node.specs):
        props = meta.get("properties") or {}
        image.label_names = {
            int(i): str(p.get("prompt", p.get("name", f"label {i}"))) for i, p in props.items()
        }
        colors = meta.get("color") or {}
        image.colors = {int(i): tuple(float(v) for v in c) for i, c in colors.items()}
    return image


def label_groups(root: Any) -> list[str]:
    """Names listed in a store's ``labels`` group (OME-Zarr image-labels)."""
    if "labels" not in root:
        return []
    names = _ome(dict(root["labels"].attrs)).get("labels", [])
    return [str(n) for n in names if isinstance(n, str)]


# --- writing ------------------------------------------------------------------------------
#: NGFF 0.5 version written.
NGFF_VERSION = "0.5"

#: Short unit names -> the UDUNITS-2 names NGFF requires for space axes.
NGFF_UNITS = {
    "nm": "nanometer", "nanometer": "nanometer", "um": "micrometer", "µm": "micrometer",
    "micron": "micrometer", "micrometer": "micrometer", "mm": "millimeter",
    "millimeter": "millimeter", "cm": "centimeter", "centimeter": "centimeter",
    "m": "meter", "meter": "meter", "metre": "meter", "km": "kilometer", "kilometer": "kilometer",
    "ft": "foot", "foot": "foot", "ftUS": "foot",
}  # fmt: skip


def spatial_axis_names(ndim: int) -> tuple[str, ...]:
    return ("z", "y", "x")[3 - ndim :]


def ngff_axes(ndim: int, units: Sequence[str] | None = None, *, channel: bool = False) -> list:
    """NGFF axes for ``ndim`` spatial axes (Z, Y, X), with units where they are NGFF units,
    after a channel axis when ``channel``."""
    names = spatial_axis_names(ndim)
    given = [str(u) for u in units][-ndim:] if units is not None and len(units) >= ndim else []
    mapped = [NGFF_UNITS.get(u) for u in given] if given else [None] * ndim
    if any(u is None for u in mapped):
        mapped = [None] * ndim  # all axes with a unit, or none: a half-known geometry misleads
    axes: list[dict[str, str]] = [{"name": "c", "type": "channel"}] if channel else []
    for name, unit in zip(names, mapped, strict=True):
        axes.append({"name": name, "type": "space", **({"unit": unit} if unit else {})})
    return axes


def multiscales_metadata(
    name: str,
    levels: Sequence[Any],
    *,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    units: Sequence[str] | None = None,
    channel: bool = False,
    paths: Sequence[str] | None = None,
) -> dict:
    """One NGFF ``multiscales`` entry: axes, and per level its path, scale and translation.

    ``levels`` are :class:`.pyramid.Level` (their ``factor``); level k's pixel centre 0 lies
    at ``translate + (factor - 1) * scale / 2``, as ome-zarr-py places them.
    """
    nd = len(levels[0].shape)
    base_scale = [float(s) for s in scale][-nd:] if scale is not None else [1.0] * nd
    base_shift = [float(t) for t in translate][-nd:] if translate is not None else [0.0] * nd
    if len(base_scale) != nd:
        base_scale = [1.0] * nd
    if len(base_shift) != nd:
        base_shift = [0.0] * nd
    lead_scale, lead_shift = ([1.0], [0.0]) if channel else ([], [])
    datasets = []
    for k, level in enumerate(levels):
        s = [b * f for b, f in zip(base_scale, level.factor, strict=True)]
        t = [
            o + (f - 1) * b / 2
            for o, b, f in zip(base_shift, base_scale, level.factor, strict=True)
        ]
        datasets.append(
            {
                "path": paths[k] if paths is not None else str(k),
                "coordinateTransformations": [
                    {"type": "scale", "scale": lead_scale + s},
                    {"type": "translation", "translation": lead_shift + t},
                ],
            }
        )
    return {"name": name, "axes": ngff_axes(nd, units, channel=channel), "datasets": datasets}


def image_label_metadata(label_names: Mapping[int, str]) -> dict:
    """NGFF ``image-label``: a colour and, as a property, the prompt of every label value."""
    return {
        "version": NGFF_VERSION,
        "colors": [
            {"label-value": int(i), "rgba": list(label_color(int(i)))} for i in label_names
        ],
        "properties": [{"label-value": int(i), "prompt": str(n)} for i, n in label_names.items()],
    }


def create_pyramid_arrays(
    group: Any,
    levels: Sequence[Any],
    *,
    dtype: Any,
    lead: Sequence[int] = (),
    fill_value: Any = 0,
    compressors: Any = "auto",
) -> list[Any]:
    """Create the arrays ``"0"``, ``"1"``... of a pyramid in ``group`` (leading axes, e.g. one
    per prompt, taken whole and chunked one by one)."""
    nd = len(levels[0].shape)
    names = ("c",) * len(lead) + spatial_axis_names(nd)
    return [
        group.create_array(
            str(k),
            shape=(*lead, *level.shape),
            chunks=(*(1 for _ in lead), *level.chunks),
            dtype=dtype,
            fill_value=fill_value,
            compressors=compressors,
            dimension_names=names,
        )
        for k, level in enumerate(levels)
    ]


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
    chunks: int = 512,
) -> Path:
    """Write labels as a standalone OME-Zarr (NGFF 0.5) image-label: a multiscale pyramid at
    the store's root, with the class names (``prompt`` properties) and colours, and the real
    scale, translation and units in its coordinate transformations.

    ``labels`` is numpy, dask or zarr, read chunk by chunk, or a list of such arrays (the
    levels of a napari multiscale layer, full resolution first), written as they are.
    """
    import zarr

    from ._files import check_file_target
    from .pyramid import Level, build_level, plan_levels

    path = Path(path)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"'{path}' already exists; choose another name or overwrite it")
        if path.is_dir() and not _is_labels_store(path):
            raise FileExistsError(
                f"refusing to overwrite '{path}': it is not an OME-Zarr labels store written "
                "by napari-llmseg"
            )
        check_file_target(path, overwrite=True) if path.is_file() else shutil.rmtree(path)
    given = list(labels) if isinstance(labels, (list, tuple)) else [labels]
    base = given[0]
    nd = len(base.shape)
    if nd not in (2, 3):
        raise ValueError(f"labels must be 2D or 3D to write as OME-Zarr, got shape {base.shape}")
    edge = (min(chunks, 64),) if nd == 3 else ()
    base_chunks = (*edge, chunks, chunks) if nd == 3 else (chunks, chunks)
    if len(given) > 1:  # a multiscale layer: its own levels, each relative to the one before
        levels: list[Level] = []
        for arr in given:
            shape = tuple(int(s) for s in arr.shape)
            if not levels:
                step = factor = (1,) * nd
            else:
                prev = levels[-1]
                step = tuple(max(1, round(p / s)) for p, s in zip(prev.shape, shape, strict=True))
                factor = tuple(a * b for a, b in zip(prev.factor, step, strict=True))
            chunk = tuple(min(c, s) for c, s in zip(base_chunks, shape, strict=True))
            levels.append(Level(shape, step, factor, chunk))
    else:
        levels = plan_levels(base.shape, base_chunks, scale)
    dtype = np.dtype(base.dtype)
    root = zarr.open_group(path, mode="w", zarr_format=3)
    arrays = create_pyramid_arrays(root, levels, dtype=dtype)
    for k, (level, target) in enumerate(zip(levels, arrays, strict=True)):
        if k < len(given):
            _copy_blocks(given[k], target, level)
        else:
            for _ in build_level(arrays[k - 1], target, level, "labels"):
                pass
    root.attrs["ome"] = {
        "version": NGFF_VERSION,
        "multiscales": [
            multiscales_metadata(name, levels, scale=scale, translate=translate, units=units)
        ],
        "image-label": image_label_metadata(label_names),
    }
    root.attrs[ATTR_KEY] = {
        "kind": "labels",
        "label_names": {str(k): v for k, v in label_names.items()},
    }
    return path


def _copy_blocks(source: Any, target: Any, level: Any) -> None:
    """Copy an array (numpy, dask, zarr) into ``target`` chunk by chunk (bounded memory)."""
    for index in np.ndindex(*level.grid):
        region = level.chunk_slices(index)
        block = source[region]
        if hasattr(block, "compute"):
            block = block.compute()
        target[region] = np.asarray(block)


def _is_labels_store(path: Path) -> bool:
    import zarr

    try:
        attrs: dict[str, Any] = dict(zarr.open_group(path, mode="r").attrs)
    except Exception:
        return False
    ours = attrs.get(ATTR_KEY)
    return isinstance(ours, dict) and ours.get("kind") == "labels"
