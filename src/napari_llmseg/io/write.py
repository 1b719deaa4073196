"""Writing results: one entry point for every output format, chosen by suffix.

:func:`write_labels` writes a label array to any format (``.zarr`` OME-Zarr labels,
``.tif`` (Geo)TIFF, ``.nii``/``.nii.gz`` NIfTI) with the geometry it is given; the napari writer
uses it. :func:`export` writes the final files of a complete run (labels, probabilities,
polygons) from its zarr store; :func:`check_targets` refuses unusable targets before a run.
A new output format is one writer in ``_LABEL_WRITERS`` (see docs/architecture.md).

The engine always writes into a zarr store, chunk by chunk, because that is what makes a run
resumable with bounded memory. For a TIFF or NIfTI output the store is a working store next
to the requested file, and the file is written from it when the run is complete::

    out.tif                     labels: a Cloud-Optimised GeoTIFF with the input's CRS,
                                transform and size (0 background, i prompt i, 255 no input
                                data: the nodata value); a plain tiled TIFF for inputs
                                without georeferencing
    out.tif.aux.xml             GDAL category names and raster attribute table of out.tif
    out_probabilities.tif       with probabilities=True: float32 COG, one band per prompt,
                                NaN (nodata) where the input had no data
    out.tif.zarr/               working store (labels, probabilities, run record); --resume
                                completes it, and it can be deleted once the run is complete

    out.nii.gz                  labels: NIfTI with the input's affine and header geometry
    out_probabilities.nii.gz    with probabilities=True: 4D float32, one volume per prompt
    out.nii.gz.zarr/            working store

Final files are written to a temporary name and renamed when complete, so a file with the
requested name is always whole.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._files import check_file_target, remove_stale_temporaries
from .labels import BACKGROUND, NO_DATA, label_color, label_nodata
from .source import ImageSource, NoDataMask

#: Output kinds by suffix; a path without a suffix is a zarr store.
OUTPUT_SUFFIXES = {
    ".zarr": "zarr",
    "": "zarr",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".nii": "nifti",
    ".nii.gz": "nifti",
}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def output_kind(out: str | Path) -> str:
    """``"zarr"``, ``"tiff"`` or ``"nifti"`` for an output path, by its suffix."""
    out = Path(out)
    kind = OUTPUT_SUFFIXES.get(_suffix(out))
    if kind is None:
        raise ValueError(
            f"unsupported output '{out}': expected a .zarr store, a .tif/.tiff file or a "
            ".nii/.nii.gz file (vector outputs are written with --vector / write_vector)"
        )
    return kind


def working_store(out: str | Path) -> Path:
    """The zarr store a run writes into: ``out`` itself, or ``out + ".zarr"`` for files."""
    out = Path(out)
    return out if output_kind(out) == "zarr" else out.with_name(out.name + ".zarr")


def output_stem(out: str | Path) -> str:
    """The name of an output without its format suffix: ``ct.nii.gz`` -> ``ct``."""
    out = Path(out)
    suffix = _suffix(out)
    return out.name[: len(out.name) - len(suffix)] if suffix else out.name


def probabilities_path(out: str | Path) -> Path:
    """``water.tif`` -> ``water_probabilities.tif``, ``ct.nii.gz`` -> ``ct_probabilities.nii.gz``.

    Only the name changes: the folder and the suffix stay.
    """
    out = Path(out)
    stem = output_stem(out)
    return out.with_name(f"{stem}_probabilities{out.name[len(stem) :]}")


def final_files(out: Path, *, probabilities: bool) -> list[Path]:
    """The files an output may write besides its working store (none for a zarr store): for a
    TIFF, also GDAL's ``.aux.xml`` sidecars (a stale one would describe the new file)."""
    kind = output_kind(out)
    if kind == "zarr":
        return []
    files = [out, probabilities_path(out)] if probabilities else [out]
    if kind == "tiff":
        from .geotiff import pam_path

        files += [pam_path(f) for f in files]
    return files


def check_targets(
    out: Path | None,
    *,
    vector: Path | None = None,
    probabilities: bool = False,
    input_paths: Sequence[Path] = (),
    overwrite: bool,
    resume_existing: bool,
    spatial_shape: tuple[int, ...],
) -> None:
    """Refuse final files that overlap the input (any of its files) or exist (unless
    overwriting or resuming), a probabilities file the user did not name and this package did
    not write, and vector output for an image that is not 2D.

    ``resume_existing``: the run resumes an existing working store, so existing final files
    were written from it and are left as they are.
    """
    files = final_files(out, probabilities=probabilities) if out is not None else []
    if vector is not None:
        from .vector import check_vector_target

        if len(spatial_shape) != 2:
            raise ValueError(
                f"vector output ('{vector}') needs a 2D image; this one has spatial shape "
                f"{tuple(spatial_shape)}"
            )
        check_vector_target(vector, overwrite=overwrite or resume_existing)
        files.append(vector)
    for f in files:
        for input_path in input_paths:
            a, b = f.resolve(), input_path.resolve()
            if a == b or b in a.parents or a in b.parents:
                raise ValueError(
                    f"output '{f}' overlaps the input '{input_path}'; the input is never "
                    "written to, choose another output path"
                )
        check_file_target(f, overwrite=overwrite or resume_existing)
    if out is not None and probabilities and output_kind(out) != "zarr":
        extra = probabilities_path(out)
        if extra.exists() and not written_by_us(extra):
            raise FileExistsError(
                f"'{extra}' exists and was not written by napari-llmseg; probabilities=True "
                f"(--probabilities) would replace it, though it was never named: move it, or "
                "choose another output name"
            )


def export(
    store: Any,
    out: Path | None,
    *,
    label_names: Mapping[int, str],
    source_metadata: Mapping[str, Any],
    probabilities: bool = False,
    vector: Path | None = None,
    simplify: float | None = None,
    overwrite: bool = False,
    source: ImageSource | None = None,
) -> list[Path]:
    """Write the final files of a complete run from its working ``store`` (anything with
    ``labels`` and ``probabilities`` arrays): the labels (and probabilities) file of a TIFF or
    NIfTI ``out``, and the ``vector`` polygons.

    ``source`` is the image the run read: GeoTIFF outputs mark the pixels where it had no data
    (:meth:`ImageSource.no_data`, read again block by block) with their nodata value. Files
    that exist are left alone unless ``overwrite`` (a resumed run whose files were already
    written). Returns the files written.
    """
    invalid = None
    if (
        source is not None and source.may_be_invalid and out is not None
        and writes_geotiff(out, source.spatial_shape, source_metadata)
    ):  # fmt: skip
        invalid = NoDataMask(source)
    jobs: list[tuple[Path, Any, str]] = []
    if out is not None and output_kind(out) != "zarr":
        jobs.append((out, store.labels, "labels"))
        if probabilities:
            jobs.append((probabilities_path(out), store.probabilities, "probabilities"))
    written = []
    for path, data, what in jobs:
        remove_stale_temporaries(path)  # left by a run killed while writing this file
        if path.exists() and not overwrite:
            continue
        if what == "labels":
            write_labels(path, data, label_names=label_names, geometry=source_metadata,
                         overwrite=True, invalid=invalid)  # fmt: skip
        else:
            _PROBABILITY_WRITERS[output_kind(path)](
                path, data, label_names, source_metadata, invalid
            )
        written.append(path)
        if what == "labels" and writes_geotiff(path, data.shape, source_metadata):
            from .geotiff import pam_path

            written.append(pam_path(path))
    if vector is not None and (overwrite or not vector.exists()):
        from .vector import write_vector

        write_vector(
            vector, store.labels, label_names, transform=source_metadata.get("transform"),
            crs_wkt=source_metadata.get("crs_wkt"), simplify=simplify, overwrite=overwrite,
        )  # fmt: skip
        written.append(vector)
    return written


def write_labels(
    path: str | Path,
    labels: Any,
    *,
    label_names: Mapping[int, str],
    geometry: Mapping[str, Any] | None = None,
    name: str = "labels",
    overwrite: bool = False,
    invalid: Any = None,
) -> Path:
    """Write a label array (numpy, dask or zarr; read block by block) to ``path``, by suffix.

    Parameters
    ----------
    path : str or Path
        ``.zarr`` (an OME-Zarr store with ``labels/{name}``), ``.tif``/``.tiff`` (a
        Cloud-Optimised GeoTIFF with the CRS and transform in ``geometry`` and an
        ``.aux.xml`` sidecar naming the classes, else a plain tiled TIFF) or
        ``.nii``/``.nii.gz`` (NIfTI with ``geometry["affine"]``).
    labels : (Y, X) or (Z, Y, X) integer array-like
    label_names : mapping of int to str
        Name of every label value, kept in the file (image-label properties, TIFF tags,
        NIfTI description).
    geometry : mapping, optional
        The source's metadata: ``scale``, ``translate``, ``units``, ``crs_wkt``,
        ``transform``, ``affine`` (see docs/formats.md).
    name : str
        Name of the labels inside an OME-Zarr store.
    overwrite : bool
        Replace an existing file (for ``.zarr``: a store).
    invalid : (Y, X) bool array-like, optional
        True where the input had no data (e.g. ``io.source.NoDataMask(source)``), for a
        GeoTIFF: those pixels get the nodata value, the largest of the label type (255 for
        uint8), distinct from background 0. Other formats have no nodata and refuse it.

    Raises
    ------
    ValueError
        For ``invalid`` with an output that is not a GeoTIFF, or labels that use the
        nodata value.
    """
    path = Path(path)
    geometry = dict(geometry or {})
    if invalid is not None and not writes_geotiff(path, labels.shape, geometry):
        raise ValueError(
            f"invalid= marks pixels without input data in a GeoTIFF's nodata value; '{path}' "
            "is not a 2D GeoTIFF output (it needs a .tif/.tiff name and a transform in "
            "geometry)"
        )
    return _LABEL_WRITERS[output_kind(path)](
        path, labels, label_names, geometry, name, overwrite, invalid
    )


def writes_geotiff(path: Path, spatial_shape: Sequence[int], geometry: Mapping[str, Any]) -> bool:
    """Whether data of ``spatial_shape`` written to ``path`` becomes a GeoTIFF: a .tif/.tiff
    name, a transform in ``geometry``, two spatial axes."""
    return (
        output_kind(path) == "tiff"
        and geometry.get("transform") is not None
        and len(spatial_shape) == 2
    )


def _zarr_labels(
    path: Path, data: Any, names: Mapping[int, str], meta: dict, name: str, overwrite: bool,
    invalid: Any,
) -> Path:  # fmt: skip
    from .ome import write_labels_store

    return write_labels_store(
        path, data, name=name, label_names=names, scale=meta.get("scale"),
        translate=meta.get("translate"), units=meta.get("units"), overwrite=overwrite,
    )  # fmt: skip


def _tiff_labels(
    path: Path, data: Any, names: Mapping[int, str], meta: dict, name: str, overwrite: bool,
    invalid: Any,
) -> Path:  # fmt: skip
    check_file_target(path, overwrite=overwrite)
    ndim = len(data.shape)
    if not writes_geotiff(path, data.shape, meta):
        return _plain_tiff(path, data, "ZYX"[3 - ndim :], overwrite)
    from .geotiff import label_tags, write_geotiff

    nodata = label_nodata(data.dtype, names)
    if nodata is None and invalid is not None:
        raise ValueError(
            f"cannot mark pixels without data in '{path}': its labels ({np.dtype(data.dtype)}) "
            f"use every value up to {max(names)}, the no-data value {np.iinfo(data.dtype).max} "
            "included; write a wider label type"
        )
    classes = {0: (BACKGROUND, (0, 0, 0, 0))}
    classes.update({int(i): (str(n), label_color(int(i))) for i, n in names.items()})
    if nodata is not None:
        classes[nodata] = (NO_DATA, (0, 0, 0, 0))
    return write_geotiff(
        path,
        data,
        crs_wkt=meta.get("crs_wkt"),
        transform=meta["transform"],
        descriptions=["labels"],
        tags=label_tags(names, {"background": 0, "nodata": nodata}),
        classes=classes,
        nodata=nodata,
        invalid=invalid,
        overview_resampling="mode",
        overwrite=overwrite,
    )


def _tiff_probabilities(
    path: Path, data: Any, names: Mapping[int, str], meta: Mapping[str, Any], invalid: Any
) -> None:
    ndim = len(data.shape) - 1
    if writes_geotiff(path, data.shape[1:], meta):
        from .geotiff import label_tags, write_geotiff

        write_geotiff(
            path,
            data,
            crs_wkt=meta.get("crs_wkt"),
            transform=meta["transform"],
            descriptions=[names[i] for i in sorted(names)],
            tags=label_tags(names, {"content": "probabilities"}),
            nodata=float("nan"),
            invalid=invalid,
            overview_resampling="average",
            overwrite=True,
        )
        return
    _plain_tiff(path, data, "C" + "ZYX"[3 - ndim :], True)


def _plain_tiff(path: Path, data: Any, axes: str, overwrite: bool) -> Path:
    """A TIFF without georeferencing; a GDAL sidecar left by an earlier file of that name
    (which would describe this one) is removed, with ``overwrite``."""
    from .geotiff import pam_path

    check_file_target(pam_path(path), overwrite=overwrite)
    write_tiff(path, data, axes=axes)
    pam_path(path).unlink(missing_ok=True)
    return path


def write_tiff(path: Path, data: Any, *, axes: str, tile: int = 256) -> Path:
    """Write an array as a tiled, zlib-compressed TIFF, tile by tile (no georeferencing)."""
    import tifffile

    from ._files import atomic_path

    shape = tuple(int(s) for s in data.shape)
    lead_shape, (height, width) = shape[:-2], shape[-2:]

    def tiles():
        for lead in np.ndindex(*lead_shape):
            for y0 in range(0, height, tile):
                for x0 in range(0, width, tile):
                    key = (*lead, slice(y0, y0 + tile), slice(x0, x0 + tile))
                    yield np.asarray(data[key])

    with atomic_path(path, overwrite=True) as tmp:
        tifffile.imwrite(
            tmp,
            tiles(),
            shape=shape,
            dtype=np.dtype(data.dtype),
            tile=(tile, tile),
            compression="zlib",
            photometric="minisblack",
            metadata={"axes": axes, MARKER: True},
        )
    return path


#: Key that marks a file as written by this package (TIFF tags or image description).
MARKER = "napari_llmseg"


def written_by_us(path: Path) -> bool:
    """Whether an existing output file carries this package's mark (TIFF tag or description,
    NIfTI description); a file that cannot be read is not ours."""
    try:
        if output_kind(path) == "tiff":
            import tifffile

            with tifffile.TiffFile(path) as tif:
                tags: Any = tif.pages[0].tags  # type: ignore[union-attr]
                # ImageDescription (270) or GDAL_METADATA (42112)
                text = " ".join(str(t.value) for t in tags.values() if t.code in (270, 42112))
            return MARKER in text
        if output_kind(path) == "nifti":
            import nibabel as nib

            header: Any = nib.load(path).header
            return header["descrip"].item().decode("ascii", "replace").startswith("napari-llmseg")
    except Exception:
        return False
    return False


def _nifti_affine(path: Path, ndim: int, meta: Mapping[str, Any]) -> tuple[Any, Any]:
    """The affine to write and the NIfTI file whose header to copy geometry from, if any."""
    affine = meta.get("affine")
    template = meta.get("source") if meta.get("format") == "nifti" else None
    if affine is None:
        scale = list(meta.get("scale") or [1.0] * ndim)[-ndim:]
        affine = np.diag([*reversed([float(s) for s in scale]), *([1.0] * (4 - ndim))]).tolist()
        warnings.warn(
            f"the input has no voxel-to-world affine; '{path}' is written with voxel sizes "
            f"{scale[::-1]} (i, j, k) and its origin at 0",
            UserWarning,
            stacklevel=5,
        )
    if template is not None and not Path(template).is_file():
        template = None  # the input moved since the run started: write the recorded affine
    return affine, template


def _nifti_labels(
    path: Path, data: Any, names: Mapping[int, str], meta: dict, name: str, overwrite: bool,
    invalid: Any,
) -> Path:  # fmt: skip
    from .medical import label_description, write_nifti

    affine, template = _nifti_affine(path, len(data.shape), meta)
    return write_nifti(
        path, data, affine=affine, template=template, intent="label",
        descrip=label_description(names), overwrite=overwrite,
    )  # fmt: skip


def _nifti_probabilities(
    path: Path, data: Any, names: Mapping[int, str], meta: Mapping[str, Any], invalid: Any
) -> None:
    from .medical import write_nifti

    affine, template = _nifti_affine(path, len(data.shape) - 1, meta)
    prompts = " ".join(f"{i}={names[i]}" for i in sorted(names))
    write_nifti(
        path, data, affine=affine, template=template,
        descrip=f"napari-llmseg probabilities: {prompts}", overwrite=True,
    )  # fmt: skip


#: Output kind -> writer of a label array ``(path, data, names, geometry, name, overwrite,
#: invalid)``; ``invalid`` (pixels without input data) only ever reaches GeoTIFF outputs.
_LABEL_WRITERS = {"zarr": _zarr_labels, "tiff": _tiff_labels, "nifti": _nifti_labels}
#: Output kind -> writer of a (P, *spatial) probability array, beside a labels file
#: ``(path, data, names, geometry, invalid)``.
_PROBABILITY_WRITERS = {"tiff": _tiff_probabilities, "nifti": _nifti_probabilities}
