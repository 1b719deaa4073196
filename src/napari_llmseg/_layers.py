"""napari layer data, built in one place for the widget and the readers.

Every function returns napari "layer data" tuples ``(data, kwargs, layer_type)``: plain tuples,
so this module imports neither napari nor Qt and the readers stay headless. Conventions:

* labels: label 0 and unknown values transparent, label ``i`` in :func:`.io.labels.label_color`,
  ``features`` naming each value's prompt, the source's scale/translate/units;
* probabilities and uncertainty: translucent images under the labels (never additive
  blending, which washes out the scene), contrast 0..1;
* units: only physical units are passed (napari rejects "px"), and the same units as the image
  they were computed from, so that napari never warns about inconsistent units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .io.labels import NO_DATA, label_color

LayerData = tuple[Any, dict, str]

#: Unit names that mean "no physical unit" and are left out of layer kwargs.
NO_UNITS = ("", "px", "pixel", "pixels", "voxel", "none", "None")


def geometry(
    ndim: int,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    units: Sequence[str] | None = None,
) -> dict[str, tuple]:
    """``scale``/``translate``/``units`` kwargs for a layer with ``ndim`` axes (the last
    ``ndim`` entries of each; units only when every one is physical)."""
    out: dict[str, tuple] = {}
    if scale is not None and len(scale) >= ndim:
        out["scale"] = tuple(float(s) for s in list(scale)[-ndim:])
    if translate is not None and len(translate) >= ndim:
        out["translate"] = tuple(float(t) for t in list(translate)[-ndim:])
    if units is not None and len(units) >= ndim:
        tail = [str(u) for u in list(units)[-ndim:]]
        if not any(u in NO_UNITS for u in tail):
            out["units"] = tuple(tail)
    return out


def labels_features(label_names: Mapping[int, str]) -> dict[str, list]:
    ids = [0, *sorted(int(i) for i in label_names)]
    return {"index": ids, "prompt": ["background"] + [str(label_names[i]) for i in ids[1:]]}


def labels_colormap(
    label_names: Mapping[int, str], colors: Mapping[int, Sequence[float]] | None = None
) -> dict:
    """napari colormap dict: background and unknown values transparent; ``colors`` (RGBA 0-1)
    when the file gave them, else the package palette."""
    cmap: dict[Any, tuple] = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for i in sorted(int(i) for i in label_names):
        given = (colors or {}).get(i)
        cmap[i] = tuple(given) if given is not None else tuple(c / 255 for c in label_color(i))
    return cmap


def labels_layer(
    data: Any,
    *,
    name: str,
    label_names: Mapping[int, str] | None = None,
    colors: Mapping[int, Sequence[float]] | None = None,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    units: Sequence[str] | None = None,
    metadata: dict | None = None,
    multiscale: bool | None = None,
    features: dict | None = None,
) -> LayerData:
    """A Labels layer; with ``label_names`` it carries their prompts and colours (without,
    napari's random colours, as for object ids)."""
    ndim = len((data[0] if multiscale else data).shape)
    kwargs: dict[str, Any] = {"name": name, **geometry(ndim, scale, translate, units)}
    if label_names:
        kwargs["features"] = labels_features(label_names)
        kwargs["colormap"] = labels_colormap(label_names, colors)
    if features is not None:
        kwargs["features"] = features
    if metadata:
        kwargs["metadata"] = metadata
    if multiscale is not None:
        kwargs["multiscale"] = multiscale
    return (data, kwargs, "labels")


def image_layer(
    data: Any,
    *,
    name: str | list[str],
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    units: Sequence[str] | None = None,
    channel_axis: int | None = None,
    rgb: bool | None = None,
    metadata: dict | None = None,
    multiscale: bool | None = None,
    **display: Any,
) -> LayerData:
    """An Image layer; ``display`` passes colormap, contrast_limits, opacity, visible..."""
    shape = (data[0] if multiscale else data).shape
    ndim = len(shape) - (channel_axis is not None) - bool(rgb)
    kwargs: dict[str, Any] = {"name": name, **geometry(ndim, scale, translate, units), **display}
    if channel_axis is not None:
        kwargs["channel_axis"] = channel_axis
    if rgb is not None:
        kwargs["rgb"] = rgb
    if metadata:
        kwargs["metadata"] = metadata
    if multiscale is not None:
        kwargs["multiscale"] = multiscale
    return (data, kwargs, "image")


def probability_layer(data: Any, prompt: str, *, visible: bool = True, **where: Any) -> LayerData:
    """Probabilities of one prompt (0..1), translucent over the image."""
    return image_layer(
        data, name=f"{prompt} probability", colormap="magma", contrast_limits=(0.0, 1.0),
        opacity=0.5, blending="translucent", visible=visible, **where,
    )  # fmt: skip


def uncertainty_layer(data: Any, name: str, *, visible: bool = True, **where: Any) -> LayerData:
    """Binary entropy of the least certain prompt (0..1), translucent: it never hides labels."""
    return image_layer(
        data, name=name, colormap="viridis", contrast_limits=(0.0, 1.0), opacity=0.5,
        blending="translucent", visible=visible, **where,
    )  # fmt: skip


# --- readers ------------------------------------------------------------------------------
def _name(path: str | Path, *suffixes: str) -> str:
    name = Path(path).name
    for suffix in suffixes:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def zarr_layers(path: str | Path) -> list[LayerData]:
    """Layers in a zarr store: a napari-llmseg result, an OME-Zarr image with its labels, a
    labels-only OME-Zarr store, or plain zarr arrays. Every array stays on disk (lazy)."""
    import zarr

    from .engine.store import result_layout
    from .io.ome import is_multiscale, label_groups, read_multiscale

    path = Path(path)
    node = zarr.open(path, mode="r")
    name = _name(path, ".zarr")
    if isinstance(node, zarr.Array):
        return [image_layer(node, name=name)]
    result = result_layout(node)
    if result is not None:
        return _result_store_layers(node, result, name)
    layers: list[LayerData] = []
    if is_multiscale(node):
        layers.append(_multiscale_layer(read_multiscale(node, path)))
    for label in label_groups(node):
        group: Any = node["labels"]
        layers.append(_multiscale_layer(read_multiscale(group[label], path / "labels" / label)))
    if layers:
        return layers
    arrays = sorted(n for n, _ in node.arrays())
    if not arrays:
        raise ValueError(f"'{path}' holds no arrays, images or labels that napari can show")
    return [image_layer(node[n], name=f"{name}/{n}") for n in arrays]


def _multiscale_layer(image: Any) -> LayerData:
    levels = image.levels if len(image.levels) > 1 else image.levels[0]
    multi = len(image.levels) > 1
    axes = list(image.axes)
    where: dict[str, Any] = {
        "scale": image.scale, "translate": image.translate, "units": image.units,
    }  # fmt: skip
    if image.is_label:
        return labels_layer(
            levels, name=image.name, label_names=image.label_names or {}, colors=image.colors,
            multiscale=multi, **where,
        )  # fmt: skip
    if "c" in axes:
        c = axes.index("c")
        keep = [i for i in range(len(axes)) if i != c]
        where = {k: None if v is None else tuple(v[i] for i in keep) for k, v in where.items()}
        return image_layer(
            levels, name=image.name, channel_axis=c, multiscale=multi,
            axis_labels=tuple(axes[i] for i in keep), **where,
        )  # fmt: skip
    return image_layer(levels, name=image.name, multiscale=multi, axis_labels=tuple(axes), **where)


def _result_store_layers(node: Any, layout: Any, name: str) -> list[LayerData]:
    where: dict[str, Any] = {
        "scale": layout.scale, "translate": layout.translate, "units": layout.units,
    }  # fmt: skip
    layers = []
    for i, prompt in sorted(layout.label_names.items()):
        if layout.probabilities is not None:
            layers.append(_store_probability_layer(layout, i, prompt, visible=False, **where))
    layers.append(
        _pyramid_labels(
            layout.labels,
            name=f"{name} labels",
            label_names=layout.label_names,
            metadata={"napari_llmseg": layout.attrs},
            **where,
        )
    )
    if layout.instances is not None:
        layers.append(_pyramid_labels(layout.instances, name=f"{name} instances", **where))
    return layers


def _pyramid_labels(levels: list[Any], **kwargs: Any) -> LayerData:
    """A Labels layer over a stored pyramid: multiscale when it has several levels."""
    if len(levels) > 1:
        return labels_layer(levels, multiscale=True, **kwargs)
    return labels_layer(levels[0], **kwargs)


def _store_probability_layer(layout: Any, index: int, prompt: str, **kwargs: Any) -> LayerData:
    """One prompt's stored probabilities (every pyramid level), shown 0..1 whatever the
    storage (uint8 ``round(p * 255)``: contrast 0..255)."""
    import dask.array as da

    levels = [da.from_array(a, chunks=a.chunks)[index - 1] for a in layout.probabilities]
    data: Any = levels if len(levels) > 1 else levels[0]
    layer = probability_layer(data, prompt, multiscale=len(levels) > 1, **kwargs)
    layer[1]["contrast_limits"] = (0.0, 1.0 / layout.probability_scale)
    return layer


def geotiff_layers(path: str | Path) -> list[LayerData]:
    """A GeoTIFF: lazy (dask) data with scale and translate from its transform, units from the
    CRS, the georeferencing in ``metadata``. A labels GeoTIFF written by napari-llmseg opens as
    Labels with its prompt names; 3 or 4 uint8 bands as one RGB(A) image; other multiband
    rasters as one image per band."""
    import dask.array as da

    from .io.geotiff import COPY_WINDOW, label_names_in, open_geotiff

    source = open_geotiff(path)
    array, meta = source.array, source.metadata
    data = da.from_array(array, chunks=(COPY_WINDOW, COPY_WINDOW, array.shape[2]))
    name = _name(path, ".tiff", ".tif", ".vrt", ".jp2")
    where = {key: meta.get(key) for key in ("scale", "translate", "units")}
    metadata = {"napari_llmseg_source": meta}
    n = array.shape[2]
    names = label_names_in(path) if n == 1 and source.dtype.kind in "ui" else None
    if names is not None:
        features = labels_features(names)
        nodata = (source.nodata or (None,))[0]
        if nodata is not None and nodata not in features["index"]:
            # pixels without input data: transparent (not in the colormap), named on hover
            features["index"].append(int(nodata))
            features["prompt"].append(NO_DATA)
        layer = labels_layer(
            data[..., 0], name=name, label_names=names, metadata=metadata, features=features,
            **where,
        )  # fmt: skip
        return [layer]
    if n == 1:
        return [image_layer(data[..., 0], name=name, metadata=metadata, **where)]
    if n in (3, 4) and source.dtype.kind == "u" and source.dtype.itemsize == 1:
        return [image_layer(data, name=name, rgb=True, metadata=metadata, **where)]
    band_names = [
        f"{name} {d}" if d else f"{name} band {i}"
        for i, d in zip(meta["band_indexes"], meta["band_descriptions"], strict=True)
    ]
    return [image_layer(data, name=band_names, channel_axis=2, metadata=metadata, **where)]


def nifti_layers(path: str | Path) -> list[LayerData]:
    """A NIfTI file: lazy (Z, Y, X) data with scale from the voxel spacing, translate from an
    axis-aligned affine, units in mm, the affine in ``metadata``. A label map (intent "label")
    opens as Labels, with the prompt names napari-llmseg writes into the header."""
    import dask.array as da

    from .io.medical import label_names_in, open_nifti

    source = open_nifti(path)
    data = da.from_array(source.array, chunks=source.array.chunks)
    meta = source.metadata
    name = _name(path, ".nii.gz", ".nii")
    where = {key: meta.get(key) for key in ("scale", "translate", "units")}
    metadata = {"napari_llmseg_source": meta}
    names = label_names_in(path) if source.dtype.kind in "ui" else None
    if names is not None:
        return [labels_layer(data, name=name, label_names=names, metadata=metadata, **where)]
    return [image_layer(data, name=name, colormap="gray", metadata=metadata, **where)]


# --- results ------------------------------------------------------------------------------
def result_layers(
    result: Any,
    *,
    name: str,
    outputs: set[str] | frozenset[str] = frozenset({"labels"}),
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    units: Sequence[str] | None = None,
    uncertainty: Any = None,
) -> list[LayerData]:
    """Layers of a :class:`~napari_llmseg.results.SegmentationResult`, bottom first:
    probabilities and uncertainty under the labels, instances on top; placed like the image
    (``scale``, ``translate``, ``units``) they were computed from."""
    where: dict[str, Any] = {"scale": scale, "translate": translate, "units": units}
    metadata = {
        "napari_llmseg": dict(result.metadata),
        "store": str(result.out) if result.out else None,
    }
    layers: list[LayerData] = []
    layout = _layout_of(result.out)
    if "probabilities" in outputs and result.probabilities is not None:
        for i, prompt in result.label_names.items():
            if layout is not None and layout.probabilities is not None:
                layers.append(_store_probability_layer(layout, i, prompt, **where))
            else:
                probs = _plane(result.probabilities, i - 1)
                layers.append(probability_layer(probs, prompt, **where))
    if uncertainty is not None:
        layers.append(uncertainty_layer(uncertainty, f"{name} uncertainty", **where))
    kwargs: dict[str, Any] = {"metadata": metadata, **where}
    if "labels" in outputs or not outputs:
        levels = layout.labels if layout is not None else [result.labels]
        kwargs["label_names"] = result.label_names
        layers.append(_pyramid_labels(levels, name=f"{name} labels", **kwargs))
        del kwargs["label_names"]
    if result.instances is not None:
        classes = result.instance_classes or {}
        kwargs["features"] = {"index": [0, *classes], "prompt": ["background", *classes.values()]}
        levels = (
            layout.instances if layout is not None and layout.instances else [result.instances]
        )
        layers.append(_pyramid_labels(levels, name=f"{name} instances", **kwargs))
    return layers


def _layout_of(store: Any) -> Any:
    """The layout of a result store, or None (an in-memory result)."""
    if store is None:
        return None
    import zarr

    from .engine.store import result_layout

    return result_layout(zarr.open_group(store, mode="r"))


def _plane(probabilities: Any, index: int) -> Any:
    """One prompt's probabilities, lazily for a zarr-backed result."""
    import numpy as np

    if isinstance(probabilities, np.ndarray):
        return probabilities[index]
    import dask.array as da

    return da.from_array(probabilities, chunks=probabilities.chunks)[index]
