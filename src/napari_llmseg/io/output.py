"""Output formats chosen by the suffix of ``out=``: zarr store, (Geo)TIFF or NIfTI.

The engine always writes into a zarr store, chunk by chunk, because that is what makes a run
resumable with bounded memory. For a TIFF or NIfTI output the store is a working store next
to the requested file, and the file is written from it when the run is complete::

    out.tif                     labels: (Geo)TIFF, same CRS, transform and size as the input
    out_probabilities.tif       with probabilities=True: float32, one band per prompt
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._files import check_file_target

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


def probabilities_path(out: str | Path) -> Path:
    """``water.tif`` -> ``water_probabilities.tif``, ``ct.nii.gz`` -> ``ct_probabilities.nii.gz``.

    Only the name changes: the folder and the suffix stay.
    """
    out = Path(out)
    suffix = _suffix(out)
    stem = out.name[: len(out.name) - len(suffix)] if suffix else out.name
    return out.with_name(f"{stem}_probabilities{out.name[len(stem) :]}")


def final_files(out: Path, *, probabilities: bool) -> list[Path]:
    """The files an output writes besides its working store (none for a zarr store)."""
    if output_kind(out) == "zarr":
        return []
    return [out, probabilities_path(out)] if probabilities else [out]


def check_final_files(
    files: list[Path],
    *,
    input_path: Path | None,
    overwrite: bool,
    resume_existing: bool,
) -> None:
    """Refuse final files that overlap the input or exist (unless overwriting or resuming).

    ``resume_existing``: the run resumes an existing working store, so existing final files
    were written from it and are left as they are.
    """
    for f in files:
        if input_path is not None:
            a, b = f.resolve(), input_path.resolve()
            if a == b or b in a.parents or a in b.parents:
                raise ValueError(
                    f"output '{f}' overlaps the input '{input_path}'; the input is never "
                    "written to, choose another output path"
                )
        check_file_target(f, overwrite=overwrite or resume_existing)


def export(
    store: Any,
    out: Path,
    *,
    label_names: Mapping[int, str],
    source_metadata: Mapping[str, Any],
    probabilities: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Write the final files of a complete run from its working ``store``.

    Files that exist are left alone unless ``overwrite`` (a resumed run whose files were
    already written). Returns the files written.
    """
    kind = output_kind(out)
    if kind == "zarr":
        return []
    jobs: list[tuple[Path, Any, str]] = [(out, store.labels, "labels")]
    if probabilities:
        jobs.append((probabilities_path(out), store.probabilities, "probabilities"))
    written = []
    for path, data, what in jobs:
        if path.exists() and not overwrite:
            continue
        if kind == "tiff":
            _export_tiff(path, data, what, label_names, source_metadata)
        else:
            _export_nifti(path, data, what, label_names, source_metadata)
        written.append(path)
    return written


def _export_tiff(
    path: Path, data: Any, what: str, names: Mapping[int, str], meta: Mapping[str, Any]
) -> None:
    from .ome import label_color

    ndim = len(data.shape) - (what == "probabilities")
    if meta.get("transform") is not None and ndim == 2:
        from .geotiff import label_tags, write_geotiff

        if what == "labels":
            write_geotiff(
                path,
                data,
                crs_wkt=meta.get("crs_wkt"),
                transform=meta["transform"],
                descriptions=["labels"],
                tags=label_tags(names),
                colormap={0: (0, 0, 0, 0), **{int(i): label_color(int(i)) for i in names}},
                overwrite=True,
            )
        else:
            write_geotiff(
                path,
                data,
                crs_wkt=meta.get("crs_wkt"),
                transform=meta["transform"],
                descriptions=[names[i] for i in sorted(names)],
                tags=label_tags(names, {"content": "probabilities"}),
                overwrite=True,
            )
        return
    write_tiff(path, data, axes=("C" if what == "probabilities" else "") + "ZYX"[3 - ndim :])


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
            metadata={"axes": axes},
        )
    return path


def _export_nifti(
    path: Path, data: Any, what: str, names: Mapping[int, str], meta: Mapping[str, Any]
) -> None:
    from .medical import label_description, write_nifti

    ndim = len(data.shape) - (what == "probabilities")
    affine = meta.get("affine")
    template = meta.get("source") if meta.get("format") == "nifti" else None
    if affine is None:
        scale = list(meta.get("scale") or [1.0] * ndim)[-ndim:]
        affine = np.diag([*reversed([float(s) for s in scale]), *([1.0] * (4 - ndim))]).tolist()
        warnings.warn(
            f"the input has no voxel-to-world affine; '{path}' is written with voxel sizes "
            f"{scale[::-1]} (i, j, k) and its origin at 0",
            UserWarning,
            stacklevel=4,
        )
    if template is not None and not Path(template).is_file():
        template = None  # the input moved since the run started: write the recorded affine
    if what == "labels":
        write_nifti(
            path,
            data,
            affine=affine,
            template=template,
            intent="label",
            descrip=label_description(names),
            overwrite=True,
        )
    else:
        write_nifti(
            path,
            data,
            affine=affine,
            template=template,
            descrip="napari-llmseg probabilities: "
            + " ".join(f"{i}={names[i]}" for i in sorted(names)),
            overwrite=True,
        )
