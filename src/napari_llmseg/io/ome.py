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
